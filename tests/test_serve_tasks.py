"""`POST /predict` for classify, tag, seq2seq and forecast runs: answers equal the task's own, bad inputs
are refused by name, and the page offers its form.

The runs (`task_runs`, conftest.py) are trained for one short epoch on data made there; what is checked
is the service, against the same run's answers through the task module.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rnnkit.serve import ServeConfig, create_app  # noqa: E402


def test_classify(task_runs):
    runs = task_runs
    from rnnkit.tasks import classify

    with TestClient(create_app(runs["classify"])) as c:
        info = c.get("/info").json()
        assert info["task"] == "classify" and sorted(info["labels"]) == ["neg", "pos"]
        got = c.post("/predict", json={"inputs": ["a great and lovely film", "a dull film"]}).json()["predictions"]
        assert got == classify.classify(runs["classify"], ["a great and lovely film", "a dull film"])
        r = c.post("/predict", json={"inputs": ["fine", "  "]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.1" and "empty" in r.json()["error"]
        r = c.post("/predict", json={"inputs": [3]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.0"
        assert 'id="predict"' in c.get("/").text


def test_tag(task_runs):
    runs = task_runs
    from rnnkit.tasks import runner

    with TestClient(create_app(runs["tag"])) as c:
        got = c.post("/predict", json={"inputs": ["Anna met Paul in Paris"]}).json()["predictions"][0]
        assert got["tokens"] == ["Anna", "met", "Paul", "in", "Paris"]
        assert got["tags"] == runner.load(runs["tag"]).tag([got["tokens"]])[0]
        assert got["offsets"][2] == [9, 13]
        for e in got["entities"]:
            assert "Anna met Paul in Paris"[e["start"]:e["end"]] == e["text"]


def test_seq2seq_with_attention(task_runs):
    runs = task_runs
    from rnnkit.tasks import runner, seq2seq

    with TestClient(create_app(runs["seq2seq"])) as c:
        got = c.post("/predict", json={"inputs": ["one two three"]}).json()["predictions"][0]
        expected = seq2seq.translate(runner.load(runs["seq2seq"]), ["one two three"])[0]
        assert got["output"] == expected.text
        assert len(got["attention"]) == len(got["output_tokens"])
        assert all(len(row) == len(got["source_tokens"]) for row in got["attention"])
        assert all(abs(sum(row) - 1) < 1e-2 for row in got["attention"])


def test_forecast(task_runs):
    runs = task_runs
    with TestClient(create_app(runs["forecast"])) as c:
        info = c.get("/info").json()
        assert info["horizon"] == 4 and info["target"] == ["value"]
        got = c.post("/predict", json={"inputs": [runs["series"]]}).json()["predictions"][0]
        assert len(got["forecast"]) == 4 and len(got["times"]) == 4 and got["times"][0] == "100"
        assert all(math.isfinite(v) for v in got["forecast"])
        r = c.post("/predict", json={"inputs": ["time,value\n0,1\n1,2\n"]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.0"
        r = c.post("/predict", json={"inputs": [runs["series"], "time,other\n0,1\n"]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.1"


@pytest.mark.parametrize("task", ["classify", "tag", "seq2seq"])
def test_an_input_past_the_length_limit_is_refused_by_name(task_runs, task):
    with TestClient(create_app(task_runs[task])) as c:
        assert c.get("/info").json()["max_input_chars"] == 2000
        long = " ".join(["one two three"] * 200)  # 2,799 characters
        r = c.post("/predict", json={"inputs": ["one two three", long]})
        assert r.status_code == 422, r.text
        assert r.json()["field"] == "inputs.1" and "2,799 characters" in r.json()["error"]
    with TestClient(create_app(task_runs[task], ServeConfig(max_input_chars=5))) as c:
        r = c.post("/predict", json={"inputs": ["one two three"]})
        assert r.status_code == 422 and r.json()["field"] == "inputs.0"


def test_a_large_attention_map_is_left_out(task_runs):
    body = {"inputs": ["one two three four five one two"]}
    with TestClient(create_app(task_runs["seq2seq"])) as c:
        got = c.post("/predict", json=body).json()["predictions"][0]
        cells = len(got["attention"]) * len(got["source_tokens"])
    with TestClient(create_app(task_runs["seq2seq"], ServeConfig(max_attention_cells=cells - 1))) as c:
        smaller = c.post("/predict", json=body).json()["predictions"][0]
        assert "attention" not in smaller and smaller["output"] == got["output"]


def test_predictions_have_their_task_schema(task_runs):
    for task, model in (("classify", "ClassifyPrediction"), ("tag", "TagPrediction"),
                        ("seq2seq", "TranslationPrediction"), ("forecast", "ForecastPrediction")):
        with TestClient(create_app(task_runs[task])) as c:
            schema = c.get("/openapi.json").json()
            answer = schema["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]
            ref = answer["schema"]["$ref"].split("/")[-1]
            items = schema["components"]["schemas"][ref]["properties"]["predictions"]["items"]
            assert items["$ref"].endswith("/" + model)
