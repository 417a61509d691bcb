"""`POST /predict` for classify, tag, seq2seq and forecast runs: answers equal the task's own, bad inputs
are refused by name, and the page offers its form.

Each run is trained for one short epoch on data made here; what is checked is the service, against the
same run's answers through the task module.
"""

from __future__ import annotations

import math
import random

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from rnnkit.cli import main  # noqa: E402
from rnnkit.serve import create_app  # noqa: E402

TINY = ["--embed", "8", "--hidden", "12", "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


def _train(tmp, task, data, *extra):
    out = tmp / f"{task}-run"
    assert main(["train", task, "--train", str(data), "--out", str(out), *TINY, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tasks")
    rng = random.Random(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "dull", "poor", "bad"]
    rows = ["text,label"]
    for _ in range(120):
        label = rng.choice(["pos", "neg"])
        words = rng.sample(good if label == "pos" else bad, 2)
        rows.append(f"a {words[0]} and {words[1]} film,{label}")
    (tmp / "c.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")

    names, others = ["Anna", "Paul", "Marie"], ["met", "saw", "the", "cat", "in", "Paris"]
    sentences = []
    for _ in range(80):
        tokens = [rng.choice(names), rng.choice(others), rng.choice(others), rng.choice(names)]
        tags = ["B-PER", "O", "O", "B-PER"]
        sentences.append("\n".join(f"{t}\t{g}" for t, g in zip(tokens, tags, strict=True)))
    (tmp / "t.conll").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")

    words = ["one", "two", "three", "four", "five"]
    pairs = []
    for _ in range(150):
        src = rng.sample(words, 3)
        pairs.append(" ".join(src) + "\t" + " ".join(reversed(src)))
    (tmp / "p.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")

    lines = ["time,value"] + [f"{t},{math.sin(t / 4) + 0.1 * rng.random():.4f}" for t in range(300)]
    (tmp / "s.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {
        "classify": _train(tmp, "classify", tmp / "c.csv"),
        "tag": _train(tmp, "tag", tmp / "t.conll", "--char-embed", "4", "--char-hidden", "8"),
        "seq2seq": _train(tmp, "seq2seq", tmp / "p.tsv"),
        "forecast": _train(tmp, "forecast", tmp / "s.csv", "--target", "value", "--time-column", "time",
                           "--lookback", "12", "--horizon", "4"),
        "series": "\n".join(lines[:101]) + "\n",
    }


def test_classify(runs):
    from rnnkit.tasks import classify

    with TestClient(create_app(runs["classify"])) as c:
        info = c.get("/info").json()
        assert info["task"] == "classify" and sorted(info["labels"]) == ["neg", "pos"]
        got = c.post("/predict", json={"inputs": ["a great and lovely film", "a dull film"]}).json()["predictions"]
        assert got == classify.classify(runs["classify"], ["a great and lovely film", "a dull film"])
        r = c.post("/predict", json={"inputs": ["fine", "  "]})
        assert r.status_code == 422 and "inputs.1" in r.json()["error"]
        r = c.post("/predict", json={"inputs": [3]})
        assert r.status_code == 422 and "inputs.0" in r.json()["error"]
        assert 'id="predict"' in c.get("/").text


def test_tag(runs):
    from rnnkit.tasks import tag

    with TestClient(create_app(runs["tag"])) as c:
        got = c.post("/predict", json={"inputs": ["Anna met Paul in Paris"]}).json()["predictions"][0]
        assert got["tokens"] == ["Anna", "met", "Paul", "in", "Paris"]
        assert got["tags"] == tag.load(runs["tag"]).tag([got["tokens"]])[0]
        assert got["offsets"][2] == [9, 13]
        for e in got["entities"]:
            assert "Anna met Paul in Paris"[e["start"]:e["end"]] == e["text"]


def test_seq2seq_with_attention(runs):
    from rnnkit.tasks import seq2seq

    with TestClient(create_app(runs["seq2seq"])) as c:
        got = c.post("/predict", json={"inputs": ["one two three"]}).json()["predictions"][0]
        expected = seq2seq.translate(seq2seq.load(runs["seq2seq"]), ["one two three"])[0]
        assert got["output"] == expected.text
        assert len(got["attention"]) == len(got["output_tokens"])
        assert all(len(row) == len(got["source_tokens"]) for row in got["attention"])
        assert all(abs(sum(row) - 1) < 1e-2 for row in got["attention"])


def test_forecast(runs):
    with TestClient(create_app(runs["forecast"])) as c:
        info = c.get("/info").json()
        assert info["horizon"] == 4 and info["target"] == ["value"]
        got = c.post("/predict", json={"inputs": [runs["series"]]}).json()["predictions"][0]
        assert len(got["forecast"]) == 4 and len(got["times"]) == 4 and got["times"][0] == "100"
        assert all(math.isfinite(v) for v in got["forecast"])
        r = c.post("/predict", json={"inputs": ["time,value\n0,1\n1,2\n"]})
        assert r.status_code == 422 and "inputs.0" in r.json()["error"]
        r = c.post("/predict", json={"inputs": ["time,other\n0,1\n"]})
        assert r.status_code == 422 and "inputs.0" in r.json()["error"]
