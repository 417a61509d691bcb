"""Gradient flow through time against finite differences, and `rnnkit inspect` end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from rnnkit.cli import main
from rnnkit.diagnostics import gradient_flow
from rnnkit.models.language_model import LanguageModel


def _loss_with_nudge(model, tokens, at, delta):
    """The last-step loss when the state after step `at` (0-based) is moved by delta (L, B, H)."""
    state = None
    for t in range(tokens.shape[1] - 1):
        _, state = model.step(tokens[:, t], state)
        if t == at:
            h = state[0] if isinstance(state, tuple) else state
            h = h + delta
            state = (h, *state[1:]) if isinstance(state, tuple) else h
    logits = model.logits_from_state(state)
    return F.cross_entropy(logits, tokens[:, -1], reduction="sum")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_gradient_norms_match_finite_differences(cell):
    torch.manual_seed(0)
    model = LanguageModel(7, 5, 4, 2, cell).double().eval()
    tokens = torch.randint(0, 7, (1, 6))
    norms = gradient_flow(model, tokens)
    assert norms.shape == (5,)
    eps = 1e-6
    for at in range(5):
        grad = torch.zeros(2, 1, 4, dtype=torch.float64)
        for idx in range(grad.numel()):
            delta = torch.zeros_like(grad).view(-1)
            delta[idx] = eps
            delta = delta.view_as(grad)
            with torch.no_grad():
                up = _loss_with_nudge(model, tokens, at, delta)
                down = _loss_with_nudge(model, tokens, at, -delta)
            grad.view(-1)[idx] = (up - down) / (2 * eps)
        assert float(norms[at]) == pytest.approx(float(grad.norm()), rel=1e-5, abs=1e-9)


def test_inspect_command_writes_plots_and_figures(tmp_path, capsys):
    rng = random.Random(0)
    text = "\n".join(rng.choice(["the cat sat on the mat", "a dog ran in the park"]) for _ in range(200)) + "\n"
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    assert main(["train", "lm", "--train", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"), "--cell", "rnn",
                 "--embed", "8", "--hidden", "16", "--layers", "1", "--epochs", "1", "--batch-size", "4",
                 "--bptt", "16", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "run"), "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "ins"),
                 "--steps", "30", "--rows", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["cell"] == "rnn" and len(figures["gradient_norm_by_distance"]) == 30
    assert 0 <= figures["clip_fraction"] <= 1
    for name in ("gradient_flow.png", "activations.png", "inspect.json"):
        assert (tmp_path / "ins" / name).read_bytes()[:4] in (b"\x89PNG", b"{\n  ")
    code = main(["inspect", str(tmp_path / "run"), "--data", str(tmp_path / "t.txt"), "--steps", "100000"])
    assert code == 2


def test_inspect_draws_seq2seq_attention_maps(task_runs, tmp_path, capsys):
    data = task_runs["seq2seq"].parent / "p.tsv"
    assert main(["inspect", str(task_runs["seq2seq"]), "--data", str(data), "--out", str(tmp_path),
                 "--rows", "2"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert len(figures["attention_maps"]) == 2
    for m in figures["attention_maps"]:
        assert (tmp_path / m["file"]).read_bytes()[:4] == b"\x89PNG"
    assert main(["inspect", str(task_runs["classify"]), "--data", str(data)]) == 2
