"""Configuration: task sections and their defaults, round trips through config.json, TOML, type checks."""

from __future__ import annotations

import pytest

from rnnkit.config import (
    TASK_SECTIONS,
    TASKS,
    ClassifyConfig,
    ForecastConfig,
    RunConfig,
    UserError,
    default_of,
    load_toml,
)


@pytest.mark.parametrize("task", TASKS)
def test_round_trip_through_a_dict(task):
    cfg = RunConfig.create(task, train={"lr": 0.01})
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.train.lr == 0.01
    if task in TASK_SECTIONS:
        assert isinstance(again.options, TASK_SECTIONS[task])
        assert task in cfg.to_dict()
    else:
        assert again.options is None


def test_task_defaults_apply_unless_overridden():
    assert RunConfig.create("lm").data.tokenizer == "char"
    assert RunConfig.create("classify").data.tokenizer == "word"
    assert default_of("classify", "data", "tokenizer") == "word"
    assert default_of("lm", "data", "tokenizer") == "char"
    assert RunConfig.create("classify", data={"tokenizer": "bpe"}).data.tokenizer == "bpe"


def test_list_fields_accept_one_name_or_several():
    assert ForecastConfig(target="OT").target == ["OT"]
    assert ForecastConfig(target=("a", "b")).target == ["a", "b"]
    with pytest.raises(UserError, match="--target"):
        ForecastConfig(target=[1, 2])


def test_bad_values_name_the_flag():
    with pytest.raises(UserError, match="--pooling"):
        ClassifyConfig(pooling="median")
    with pytest.raises(UserError, match="--horizon"):
        ForecastConfig(horizon=0)
    with pytest.raises(UserError, match="task"):
        RunConfig.create("translate")


def test_unknown_key_in_a_task_section(tmp_path):
    with pytest.raises(UserError, match="poling"):
        RunConfig.from_dict({"task": "classify", "classify": {"poling": "max"}})


def test_toml_reads_the_task_section_and_routes_flat_keys(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('hidden_size = 64\npooling = "mean"\n[classify]\nlabel_column = "y"\n')
    values = load_toml(path, "classify")
    assert values["model"] == {"hidden_size": 64}
    assert values["classify"] == {"pooling": "mean", "label_column": "y"}
    cfg = RunConfig.from_dict({"task": "classify", **values})
    assert cfg.options.pooling == "mean" and cfg.model.hidden_size == 64


def test_toml_section_of_another_task_is_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[forecast]\nhorizon = 3\n')
    with pytest.raises(UserError, match=r"\[forecast\].*classify"):
        load_toml(path, "classify")
    path.write_text('pooling = "mean"\n')
    with pytest.raises(UserError, match="pooling"):
        load_toml(path, "lm")
