"""Export: ONNX run in onnxruntime and torch.export programs match PyTorch on sizes never traced."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rnnkit.cli import main
from rnnkit.config import ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks import runner
from rnnkit.tasks.training import train


@pytest.fixture(scope="module", params=["lstm", "layernorm-gru"])
def run_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    rng = random.Random(0)
    (root / "t.txt").write_text("\n".join(rng.choice(["the cat sat", "a dog ran"]) for _ in range(100)) + "\n",
                                encoding="utf-8")
    cfg = RunConfig(task="lm", model=ModelConfig(cell=request.param, embedding_size=8, hidden_size=12, num_layers=2),
                    train=TrainConfig(epochs=1, batch_size=4, bptt=16, log_every=10_000))
    train(cfg, root / "t.txt", root / "run", log=lambda line: None)
    return root / "run"


def test_onnx_matches_pytorch_in_onnxruntime_on_new_lengths(run_dir, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["graphs"]) == {"sequence", "step"}
    assert all(g["max_abs_diff"] < 1e-4 for g in report["graphs"].values())
    # Independently of the built-in check: a batch and a length never traced, from a non-zero state.
    loaded = runner.load(run_dir)
    model, rnn = loaded.model, loaded.model.rnn
    tokens = torch.randint(0, loaded.tokenizer.vocab_size, (4, 37))
    state = tuple(torch.randn(2, 4, 12) for _ in range(rnn.num_states))
    with torch.no_grad():
        logits, new = model(tokens, state if len(state) > 1 else state[0])
    session = ort.InferenceSession(str(tmp_path / "onnx" / "sequence.onnx"), providers=["CPUExecutionProvider"])
    feed = {"tokens": tokens.numpy(), **{n: s.numpy() for n, s in zip(["h", "c"], state, strict=False)}}
    out = session.run(None, feed)
    torch.testing.assert_close(torch.from_numpy(out[0]), logits, atol=1e-4, rtol=0)
    new = new if isinstance(new, tuple) else (new,)
    for got, want in zip(out[1:], new, strict=True):
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)
    # The step graph streams: feeding tokens one at a time equals the sequence graph.
    step = ort.InferenceSession(str(tmp_path / "onnx" / "step.onnx"), providers=["CPUExecutionProvider"])
    s = [x.numpy() for x in state]
    for t in range(tokens.shape[1]):
        res = step.run(None, {"token": tokens[:, t].numpy(), **dict(zip(["h", "c"], s, strict=False))})
        s = res[1:]
    torch.testing.assert_close(torch.from_numpy(res[0]), logits[:, -1], atol=1e-4, rtol=0)


def test_pt2_program_loads_and_matches(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--format", "pt2", "--out", str(tmp_path / "pt2")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert all(g["max_abs_diff"] < 1e-4 for g in report["graphs"].values())
    program = torch.export.load(str(tmp_path / "pt2" / "sequence.pt2"))
    loaded = runner.load(run_dir)
    tokens = torch.randint(0, loaded.tokenizer.vocab_size, (2, 9))
    state = tuple(torch.zeros(2, 2, 12) for _ in range(loaded.model.rnn.num_states))
    with torch.no_grad():
        want = loaded.model(tokens, state if len(state) > 1 else state[0])[0]
    torch.testing.assert_close(program.module()(tokens, *state)[0], want, atol=1e-5, rtol=0)


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2
    assert "not a run directory" in capsys.readouterr().err
