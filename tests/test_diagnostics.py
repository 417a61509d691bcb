"""Gradient flow through time against finite differences and against a run split at each step, the step-by-step
encoder against the layer's own forward, and `rnnkit inspect` end to end for every task."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

from rnnkit.cli import main
from rnnkit.diagnostics import encoder_gradient_flow, gradient_flow, unrolled
from rnnkit.layers import Recurrent
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
    assert figures["task"] == "seq2seq" and figures["bidirectional"]
    assert len(figures["gradient_norm_by_distance"]) == 4  # three words and <eos>
    for name in ("gradient_flow.png", "activations.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "inspect.json").read_text())["attention_maps"] == figures["attention_maps"]


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_unrolled_encoder_computes_what_the_layer_does(cell, bidirectional):
    torch.manual_seed(0)
    layer = Recurrent(cell, 3, 5, num_layers=2, bidirectional=bidirectional).double().eval()
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    lengths = torch.tensor([7, 3, 5, 1])
    expected, expected_final = layer(x, lengths=lengths)
    with unrolled(layer) as found:
        got, final = layer(x, lengths=lengths)
    torch.testing.assert_close(got, expected)
    for a, b in zip(final if isinstance(final, tuple) else (final,),
                    expected_final if isinstance(expected_final, tuple) else (expected_final,), strict=True):
        torch.testing.assert_close(a, b)
    assert len(found.states) == 7 and all(len(step) == 2 for step in found.states)  # every step, both layers
    assert "forward" not in vars(layer)  # the layer is itself again


def test_encoder_gradient_norms_match_a_run_split_at_each_step():
    # The reference: read steps 1..t, make the state after step t a leaf, read the rest from it; the task's
    # output (here a weighted sum of every output step, as pooling does) is then differentiated by the leaf.
    torch.manual_seed(0)
    layer = Recurrent("gru", 3, 4, num_layers=2).double().eval()
    x = torch.randn(1, 6, 3, dtype=torch.float64)
    w = torch.randn(6, 4, dtype=torch.float64)

    def task_output(outputs):
        return (outputs[0] * w).sum().tanh()

    norms, output = encoder_gradient_flow(layer, lambda: task_output(layer(x)[0]))
    torch.testing.assert_close(output, layer(x)[0].detach())
    for t in range(6):
        first, state = layer(x[:, : t + 1])
        leaf = state.detach().requires_grad_(True)  # (L, 1, H): every layer's state after step t
        rest = layer(x[:, t + 1 :], leaf)[0] if t < 5 else x.new_zeros(1, 0, 4)
        outputs = torch.cat([first[:, :t].detach(), leaf[-1:].transpose(0, 1), rest], dim=1)
        (grad,) = torch.autograd.grad(task_output(outputs), leaf)
        assert float(norms[t]) == pytest.approx(float(grad.norm()), rel=1e-9)


@pytest.mark.parametrize("task, data", [("classify", "c.csv"), ("tag", "t.conll"), ("forecast", "s.csv")])
def test_inspect_covers_every_task(task, data, task_runs, tmp_path, capsys):
    run = task_runs[task]
    assert main(["inspect", str(run), "--data", str(run.parent / data), "--out", str(tmp_path), "--rows", "3"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["task"] == task and figures["rows"] == 3
    norms = figures["gradient_norm_by_distance"]
    assert len(norms) >= 4 and all(v >= 0 for v in norms.values()) and norms["0"] > 0
    assert 0 <= figures["clip_fraction"] <= 1
    for name in ("gradient_flow.png", "activations.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "inspect.json").read_text())["gradient_norm_by_distance"] == norms


def test_activation_panels_draw_several_models_over_one_passage(tmp_path):
    from rnnkit.viz import plot_activation_panels

    panels = {"a": torch.rand(12, 5) * 2 - 1, "b": torch.rand(12, 7) * 2 - 1}
    path = plot_activation_panels(panels, list("hello, world"), tmp_path / "acts.png", max_units=6)
    assert path.read_bytes()[:4] == b"\x89PNG"
