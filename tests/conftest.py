"""Shared test settings (deterministic, single-threaded numerics) and small trained runs of every task."""

import math
import random

import pytest
import torch

# Small tensors gain nothing from a second thread, and a single thread cannot be slowed by another
# process taking the other core (OpenMP threads waiting on each other).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


TINY = ["--embed", "8", "--hidden", "12", "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1"]


@pytest.fixture(scope="session")
def task_runs(tmp_path_factory):
    """One tiny trained run of classify, tag (with a CRF), seq2seq and forecast, from data made here.

    Returns {task: run directory, "series": the text of a CSV the forecast run can read}.
    """
    from rnnkit.cli import main

    tmp = tmp_path_factory.mktemp("task-runs")
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

    def train(task, data, *extra):
        out = tmp / f"{task}-run"
        assert main(["train", task, "--train", str(data), "--out", str(out), *TINY, *extra]) == 0
        return out

    return {
        "classify": train("classify", tmp / "c.csv"),
        "tag": train("tag", tmp / "t.conll", "--char-embed", "4", "--char-hidden", "8", "--crf"),
        "seq2seq": train("seq2seq", tmp / "p.tsv"),
        "forecast": train("forecast", tmp / "s.csv", "--target", "value", "--time-column", "time",
                          "--lookback", "12", "--horizon", "4"),
        "series": "\n".join(lines[:101]) + "\n",
    }
