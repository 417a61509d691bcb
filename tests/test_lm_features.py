"""Contextual features for tagging: frozen forward and backward language models' states at each token's ends."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch.testing import assert_close

from rnnkit.cli import main
from rnnkit.config import UserError
from rnnkit.tasks import runner
from rnnkit.tasks.contextual import LMFeatures, lm_states

TEXT = "Omar Diaz visited Oslo today .\nyesterday Li Wei saw Lima .\nthe cat sat on the mat .\n" * 20
LM = ["--tokenizer", "char", "--hidden", "10", "--embed", "6", "--layers", "1", "--epochs", "1", "--bptt", "20",
      "--batch-size", "4", "--threads", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    root = tmp_path_factory.mktemp("lms")
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    assert main(["train", "lm", "--train", str(corpus), "--out", str(root / "fwd"), *LM]) == 0
    assert main(["train", "lm", "--train", str(corpus), "--out", str(root / "bwd"), "--reverse", *LM]) == 0
    return root / "fwd", root / "bwd"


def _last_state(lm, ids):
    return lm_states(lm.model, torch.tensor([ids]))[0, -1]


def test_features_are_the_states_at_each_tokens_ends(lms):
    fwd, bwd = (runner.load(p, task="lm") for p in lms)
    features = LMFeatures(fwd, bwd)
    tokens = ["Li", "Wei", "saw", "Lima", "."]
    [got] = features([tokens])
    assert got.shape == (5, 20)
    tok = fwd.tokenizer
    for k in range(len(tokens)):
        # Forward: the model that has read the line up to and including the token.
        prefix = tok.encode("\n" + " ".join(tokens[:k + 1]))
        assert_close(got[k, :10], _last_state(fwd, prefix))
        # Backward: the model that has read the line from its end back to the token's first character.
        suffix = tok.encode("\n" + " ".join(tokens))[len(tok.encode("\n" + " ".join(tokens[:k]) + (" " if k else ""))):]
        assert_close(got[k, 10:], _last_state(bwd, suffix[::-1]))


def test_a_tokens_features_do_not_depend_on_its_batch(lms):
    features = LMFeatures(*(runner.load(p, task="lm") for p in lms), batch_size=3)
    short = ["the", "cat"]
    others = [["a", "much", "longer", "sentence", "than", "the", "first", "one"], ["x"], ["Oslo", "today"]]
    [alone] = features([short])
    together = features([others[0], short, *others[1:]])
    assert_close(together[1], alone)
    assert [t.shape[0] for t in together] == [8, 2, 1, 2]


def test_directions_are_checked(lms):
    fwd, bwd = lms
    with pytest.raises(UserError, match=r"is backward; the first run must be a forward model"):
        LMFeatures.load(f"{bwd},{bwd}")
    with pytest.raises(UserError, match=r"is forward; the second run must be a backward model"):
        LMFeatures.load(f"{fwd},{fwd}")
    with pytest.raises(UserError, match=r"expected one or two language-model runs"):
        LMFeatures.load(f"{fwd},{bwd},{fwd}")


def _ner(path, n):
    rows = []
    names = [("Omar Diaz", "Oslo"), ("Li Wei", "Lima"), ("Ana Ruiz", "Rome"), ("Tom Berg", "Bonn")]
    for i in range(n):
        person, place = names[i % 4]
        first, last = person.split()
        rows += [f"{first}\tB-PER", f"{last}\tI-PER", "visited\tO", f"{place}\tB-LOC", "today\tO", ".\tO", ""]
    path.write_text("\n".join(rows))
    return path


def test_tagger_with_lm_features_trains_serves_and_stands_alone(lms, tmp_path, capsys):
    fwd, bwd = lms
    train = _ner(tmp_path / "train.conll", 40)
    run = tmp_path / "run"
    assert main(["train", "tag", "--train", str(train), "--valid", str(train), "--out", str(run),
                 "--lm-features", f"{fwd},{bwd}", "--embed", "8", "--hidden", "8", "--char-encoder", "none",
                 "--epochs", "6", "--lr", "0.02", "--batch-size", "8", "--threads", "1"]) == 0
    assert "--lm-features: 20 features per token" in capsys.readouterr().err
    config = json.loads((run / "config.json").read_text())
    assert [r["run"] for r in config["lm_features"]] == [str(fwd), str(bwd)]
    assert (run / "lm_features" / "forward" / "model.safetensors").exists()
    assert (run / "lm_features" / "backward" / "tokenizer.json").exists()
    # The run keeps its language models: it works with the originals gone.
    moved = tmp_path / "elsewhere"
    shutil.move(str(fwd.parent), str(moved))
    try:
        loaded = runner.load(run)
        assert loaded.model.context_size == 20 and loaded.features is not None
        assert main(["evaluate", str(run), "--data", str(train), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["f1"] > 0.8
        raw = tmp_path / "raw.txt"
        raw.write_text("Li Wei visited Rome today .\n")
        assert main(["predict", str(run), "--input", str(raw), "--format", "conll"]) == 0
        tags = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines() if line]
        assert len(tags) == 6
    finally:
        shutil.move(str(moved), str(fwd.parent))


def test_export_carries_the_language_models(lms, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    fwd, bwd = lms
    train = _ner(tmp_path / "train.conll", 8)
    run = tmp_path / "run"
    assert main(["train", "tag", "--train", str(train), "--valid", str(train), "--out", str(run),
                 "--lm-features", f"{fwd},{bwd}", "--embed", "8", "--hidden", "8", "--char-embed", "4",
                 "--char-hidden", "4", "--epochs", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["graphs"]) == {"emissions", "lm_forward_states", "lm_backward_states"}
    assert all(g["max_abs_diff"] < 1e-4 for g in report["graphs"].values())
    assert report["lm_features"]["graphs"] == ["lm_forward_states", "lm_backward_states"]
