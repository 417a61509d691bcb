"""The `rnnkit` command line: every subcommand's --help, a language model end to end, options, user mistakes.

Commands run in-process through `rnnkit.cli.main` (output read with capsys); two user mistakes also run
as `python -m rnnkit` in a subprocess to show that no traceback reaches the user. Models are tiny and
texts are generated here, so the whole file takes seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rnnkit.cli import COMMANDS, main
from rnnkit.config import CELL_NAMES

# One thread: a tiny model gains nothing from more, and loses a lot when other work shares the cores.
TINY_NO_HIDDEN = ["--embed", "8", "--layers", "1", "--batch-size", "4", "--bptt", "16", "--epochs", "1",
                  "--threads", "1"]
TINY = ["--hidden", "16", *TINY_NO_HIDDEN]
RUN_FILES = ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "curves.png", "checkpoint.pt")
SENTENCES = (
    "the cat sat on the mat.",
    "a dog ran in the park.",
    "we like to read good books.",
    "she sells sea shells by the shore.",
    "the quick brown fox jumps over the lazy dog.",
)


def corpus_text(n_lines: int = 150, seed: int = 0) -> str:
    """A few KB of lower-case sentences: no capital letter ever appears."""
    rng = random.Random(seed)
    return "\n".join(rng.choice(SENTENCES) for _ in range(n_lines)) + "\n"


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    """Run `rnnkit argv...` in-process; returns (exit code, stdout, stderr). argparse exits become codes."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def cli_quiet(*argv: object) -> tuple[int, str, str]:
    """`cli` for fixtures wider than one test, where capsys is not available."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def error_line(code: int, err: str) -> str:
    """Check a user mistake was reported as exit 2 with exactly one `rnnkit: error:` line; return that line."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("rnnkit: error:")]
    assert len(errors) == 1, err
    # Nothing after the error line: the message is one line, not a line and a dump.
    assert err.rstrip("\n").endswith(errors[0])
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def read_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "config.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    """`--threads` sets PyTorch's thread count for the process; give later test files theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "corpus.txt"
    path.write_text(corpus_text(), encoding="utf-8")
    assert 2_000 < path.stat().st_size < 10_000
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> tuple[Path, int, str]:
    """One character-level run shared by the read-only tests: (run dir, exit code, stdout of train)."""
    run_dir = tmp_path_factory.mktemp("runs") / "lm"
    code, out, _ = cli_quiet("train", "lm", "--train", corpus, "--out", run_dir, *TINY)
    return run_dir, code, out


@pytest.fixture
def lm_run(trained: tuple[Path, int, str]) -> Path:
    run_dir, code, _ = trained
    assert code == 0
    return run_dir


# ------------------------------------------------------------------------------------------ help


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    assert out.startswith("usage: rnnkit")
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_subcommand_has_help(capsys, command):
    code, out, err = cli(capsys, command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: rnnkit {command}")
    assert COMMANDS[command][0] in out  # the table's description


# ------------------------------------------------------------------------------ lm end to end


def test_train_writes_a_complete_run(trained):
    run_dir, code, out = trained
    assert code == 0
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    assert json.loads(out)["steps"] > 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records and math.isfinite(records[-1]["valid_loss"])


def test_config_json_records_options_and_versions(lm_run):
    cfg = read_config(lm_run)
    assert cfg["task"] == "lm"
    assert cfg["model"]["hidden_size"] == 16
    assert cfg["model"]["embedding_size"] == 8
    assert cfg["model"]["num_layers"] == 1
    assert cfg["train"]["batch_size"] == 4
    assert cfg["train"]["bptt"] == 16
    assert cfg["train"]["epochs"] == 1
    assert cfg["data"]["tokenizer"] == "char"
    assert {"rnnkit", "torch", "python"} <= set(cfg["versions"])


def test_evaluate_json(capsys, lm_run, corpus):
    code, out, err = cli(capsys, "evaluate", lm_run, "--data", corpus, "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert isinstance(figures, dict)
    assert {"loss", "perplexity", "bits_per_token"} <= set(figures)
    assert 0 < figures["loss"] < math.log(read_config(lm_run)["vocab_size"]) + 1
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]), rel=1e-6, abs=1e-6)
    assert figures["bits_per_token"] == pytest.approx(figures["loss"] / math.log(2), rel=1e-6, abs=1e-6)


def test_evaluate_plain_text(capsys, lm_run, corpus):
    code, out, _ = cli(capsys, "evaluate", lm_run, "--data", corpus)
    assert code == 0
    names = {line.split()[0] for line in out.strip().splitlines()}
    assert {"loss", "perplexity", "bits_per_token"} <= names


def test_generate_is_reproducible_with_a_seed(capsys, lm_run):
    args = ("generate", lm_run, "--prompt", "the cat", "--max-tokens", 20, "--seed", 3)
    code1, out1, err1 = cli(capsys, *args)
    code2, out2, _ = cli(capsys, *args)
    assert code1 == code2 == 0, err1
    assert out1 == out2
    assert out1.startswith("the cat")
    assert len(out1.rstrip("\n")) > len("the cat")
    assert "warning" not in err1  # every character of the prompt was seen in training


def test_complete_json(capsys, lm_run):
    code, out, err = cli(capsys, "complete", lm_run, "--prefix", "the c", "--n", 3, "--json")
    assert code == 0, err
    items = json.loads(out)
    assert isinstance(items, list)
    assert 1 <= len(items) <= 3
    probs = [item["probability"] for item in items]
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert probs == sorted(probs, reverse=True)
    for item in items:
        assert item["text"] == "c" + item["completion"]  # the typed part of the word, then the completion


def test_generate_warns_about_unseen_characters(capsys, lm_run):
    code, out, err = cli(capsys, "generate", lm_run, "--prompt", "the Q", "--max-tokens", 5, "--seed", 1)
    assert code == 0, err
    assert out.startswith("the Q")
    warnings = [line for line in err.splitlines() if line.startswith("rnnkit: warning:")]
    assert len(warnings) == 1, err
    assert "'Q'" in warnings[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- options


@pytest.mark.parametrize("options", [["--tokenizer", "word"], ["--tokenizer", "bpe", "--vocab-size", "300"]])
def test_other_tokenizers_train(capsys, tmp_path, corpus, options):
    out_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", out_dir, *TINY, *options)
    assert code == 0, err
    cfg = read_config(out_dir)
    assert cfg["data"]["tokenizer"] == options[1]
    if options[1] == "bpe":
        assert cfg["data"]["vocab_size"] == 300
        assert cfg["vocab_size"] <= 300
    for name in RUN_FILES:
        assert (out_dir / name).is_file(), name


def test_toml_config_is_honoured_and_the_command_line_wins(capsys, tmp_path, corpus):
    toml = tmp_path / "small.toml"
    toml.write_text('[model]\nhidden_size = 12\ncell = "gru"\n')
    from_file, overridden = tmp_path / "from_file", tmp_path / "overridden"

    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", from_file, "--config", toml, *TINY_NO_HIDDEN)
    assert code == 0, err
    assert read_config(from_file)["model"]["hidden_size"] == 12
    assert read_config(from_file)["model"]["cell"] == "gru"

    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", overridden, "--config", toml,
                       *TINY_NO_HIDDEN, "--hidden", "10")
    assert code == 0, err
    assert read_config(overridden)["model"]["hidden_size"] == 10
    assert read_config(overridden)["model"]["cell"] == "gru"  # what the command line left alone still applies


@pytest.mark.parametrize(("content", "key"), [("[model]\nhidden_sise = 12\n", "hidden_sise"), ("bogus = 1\n", "bogus")])
def test_unknown_toml_key(capsys, tmp_path, corpus, content, key):
    toml = tmp_path / "typo.toml"
    toml.write_text(content)
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", tmp_path / "run", "--config", toml, *TINY)
    line = error_line(code, err)
    assert str(toml) in line
    assert key in line
    assert not (tmp_path / "run").exists()


def test_full_bptt_over_lines(capsys, tmp_path, corpus):
    out_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", out_dir, *TINY, "--bptt", "0")
    assert code == 0, err
    assert read_config(out_dir)["train"]["bptt"] == 0
    assert (out_dir / "model.safetensors").is_file()


def test_resume_a_finished_run_and_train_further(capsys, tmp_path, lm_run, trained, corpus):
    run_dir = tmp_path / "copy"
    shutil.copytree(lm_run, run_dir)
    first_steps = json.loads(trained[2])["steps"]
    lines_before = len((run_dir / "metrics.jsonl").read_text().splitlines())

    code, out, err = cli(capsys, "train", "lm", "--train", corpus, "--out", run_dir, *TINY, "--resume")
    assert code == 0, err
    assert "Traceback" not in err
    assert json.loads(out)["steps"] == first_steps  # nothing left to do: same number of steps
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == lines_before

    code, out, err = cli(capsys, "train", "lm", "--train", corpus, "--out", run_dir, *TINY, "--resume",
                         "--epochs", "2")
    assert code == 0, err
    assert json.loads(out)["steps"] > first_steps
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) > lines_before


# ----------------------------------------------------------------------------------- user mistakes


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"", ["empty"], id="empty"),
        pytest.param(b"  \n\t\n   \n", ["whitespace"], id="whitespace-only"),
        pytest.param(b"hello\nwor\xffld\n" + corpus_text().encode(), ["byte offset 9", "0xff"], id="not-utf8"),
        pytest.param(b"tiny.\n", ["too short", "bptt"], id="shorter-than-a-chunk"),
    ],
)
def test_bad_training_text(capsys, tmp_path, content, expected):
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    out_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--train", data, "--out", out_dir, *TINY)
    line = error_line(code, err)
    for text in expected:
        assert text in line
    if expected[0] != "too short":  # the stream error comes from batching, which does not know the file
        assert str(data) in line
    assert not out_dir.exists()  # a mistake leaves no half-made run behind


def test_missing_training_file(capsys, tmp_path):
    missing = tmp_path / "nope.txt"
    code, _, err = cli(capsys, "train", "lm", "--train", missing, "--out", tmp_path / "run", *TINY)
    line = error_line(code, err)
    assert str(missing) in line
    assert "no such file" in line


def test_out_holding_a_run_needs_resume(capsys, tmp_path, lm_run, corpus):
    before = snapshot(lm_run)
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", lm_run, *TINY)
    line = error_line(code, err)
    assert "--out" in line and "--resume" in line
    assert snapshot(lm_run) == before


@pytest.mark.parametrize("command", [["generate", "--prompt", "hi"], ["evaluate", "--data", "x.txt"],
                                     ["complete", "--prefix", "th"]])
def test_commands_on_a_folder_that_is_not_a_run(capsys, tmp_path, command):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    code, _, err = cli(capsys, command[0], folder, *command[1:])
    line = error_line(code, err)
    assert str(folder) in line
    assert "not a run" in line


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path, corpus):
    folder = tmp_path / "empty"
    folder.mkdir()
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", folder, *TINY, "--resume")
    line = error_line(code, err)
    assert str(folder) in line
    assert list(folder.iterdir()) == []


def test_evaluate_with_a_missing_data_file(capsys, tmp_path, lm_run):
    missing = tmp_path / "valid.txt"
    code, _, err = cli(capsys, "evaluate", lm_run, "--data", missing, "--json")
    line = error_line(code, err)
    assert str(missing) in line


def test_bidirectional_language_model_is_refused(capsys, tmp_path, corpus):
    out_dir = tmp_path / "run"
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", out_dir, *TINY, "--bidirectional")
    line = error_line(code, err)
    assert "--bidirectional" in line
    assert not out_dir.exists()


def test_unavailable_task(capsys, tmp_path, corpus, monkeypatch):
    from rnnkit import tasks

    monkeypatch.setitem(tasks.REGISTRY, "classify", "rnnkit.tasks.no_such_module")
    code, _, err = cli(capsys, "train", "classify", "--train", corpus, "--out", tmp_path / "run")
    line = error_line(code, err)
    assert "classify" in line
    assert "not available" in line


def test_task_options_belong_to_their_task(capsys, tmp_path, corpus):
    # --pooling is a classify option: `train lm` does not know it.
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", tmp_path / "run", *TINY, "--pooling", "max")
    assert code == 2
    assert "--pooling" in err


def test_predict_refuses_options_of_other_tasks(capsys, lm_run):
    code, _, err = cli(capsys, "predict", lm_run, "--beam", "3")
    line = error_line(code, err)
    assert "predict" in line or "--beam" in line


def test_unknown_cell_lists_the_choices(capsys, tmp_path, corpus):
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", tmp_path / "run", *TINY, "--cell", "tcn")
    assert code == 2
    assert "Traceback" not in err
    assert "--cell" in err and "tcn" in err
    for name in CELL_NAMES:
        assert name in err


@pytest.mark.parametrize(("option", "value"), [("--max-tokens", "0"), ("--top-p", "2"), ("--temperature", "-1")])
def test_refused_generate_writes_nothing_to_stdout(capsys, lm_run, option, value):
    args = ["generate", lm_run, "--prompt", "the cat", "--max-tokens", "5", option, value]
    code, out, err = cli(capsys, *args)
    line = error_line(code, err)
    assert option.lstrip("-").replace("-", "_") in line.replace("-", "_")
    assert out == ""  # not the prompt: a pipeline must not get output from a failed command


def test_dropout_out_of_range_names_the_flag(capsys, tmp_path, corpus):
    code, _, err = cli(capsys, "train", "lm", "--train", corpus, "--out", tmp_path / "run", *TINY, "--dropout", "1.5")
    line = error_line(code, err)
    assert "--dropout" in line and "1.5" in line


@pytest.mark.parametrize("content", [None, b"abc\n\x80def\n"], ids=["missing-file", "not-utf8"])
def test_console_script_prints_no_traceback(tmp_path, content):
    data = tmp_path / "data.txt"
    if content is not None:
        data.write_bytes(content)
    proc = subprocess.run(
        [sys.executable, "-m", "rnnkit", "train", "lm", "--train", str(data), "--out", str(tmp_path / "run"), *TINY],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("rnnkit: error:")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert str(data) in proc.stderr
    assert proc.stdout == ""


@pytest.mark.parametrize("toml, flag", [('[train]\nclip = "high"\n', "--clip"), ("[train]\ndevice = 5\n", "--device"),
                                        ("[train]\nepochs = true\n", "--epochs")])
def test_toml_values_of_the_wrong_type_are_refused(tmp_path, capsys, toml, flag):
    from rnnkit.cli import main

    (tmp_path / "c.toml").write_text(toml)
    (tmp_path / "t.txt").write_text("hello world\n" * 50)
    code = main(["train", "lm", "--train", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"),
                 "--config", str(tmp_path / "c.toml")])
    err = capsys.readouterr().err
    assert code == 2 and f"rnnkit: error: {flag}: expected" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
