"""Distributed data parallel: two CPU processes (gloo) train to the weights of one process with the same
global batch, for padded variable-length batches and for truncated-BPTT streams; and `torchrun` runs
`rnnkit train` end to end.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rnnkit.config import TrainConfig
from rnnkit.models.language_model import LanguageModel
from rnnkit.tasks.lm import LineSource, StreamSource
from rnnkit.train import Trainer, seed_everything

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sources(kind: str):
    g = torch.Generator().manual_seed(3)
    if kind == "stream":
        ids = torch.randint(4, 20, (3000,), generator=g)
        return StreamSource(ids[:2600], 8, 12), StreamSource(ids[2600:], 4, 12)
    lines = [torch.randint(4, 20, (int(torch.randint(3, 15, (1,), generator=g)),), generator=g).tolist()
             for _ in range(120)]
    return (LineSource(lines[:100], 8, shuffle=True, seed=0), LineSource(lines[100:], 4, shuffle=False, seed=0))


def _train(kind: str, run_dir: Path) -> tuple[dict[str, torch.Tensor], object]:
    torch.set_num_threads(1)
    seed_everything(0)
    model = LanguageModel(20, 8, 16, 2, "gru")
    train, valid = _sources(kind)
    cfg = TrainConfig(epochs=5, batch_size=8, bptt=12 if kind == "stream" else 0, lr=1e-2, max_steps=STEPS,
                      eval_every=5, log_every=1000, checkpoint_minutes=100.0)
    trainer = Trainer(model, train, valid, cfg, run_dir, log=lambda line: None)
    trainer.fit()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer.state


def _worker(rank: int, world: int, port: int, kind: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    weights, state = _train(kind, Path(out) / "ddp")
    torch.save({"weights": weights, "best": state.best, "step": state.step}, Path(out) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("kind", ["padded", "stream"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, kind):
    single, state = _train(kind, tmp_path / "single")
    mp.start_processes(_worker, args=(2, _free_port(), kind, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in results:
        assert r["step"] == state.step == STEPS
        assert r["best"] == pytest.approx(state.best, rel=1e-5)  # validation reduced over both ranks
        for k, v in single.items():
            torch.testing.assert_close(r["weights"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    # Only rank 0 writes the run directory's files.
    assert (tmp_path / "ddp" / "metrics.jsonl").exists()
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((tmp_path / "single" / "metrics.jsonl").read_text().splitlines())


def test_torchrun_trains_a_language_model(tmp_path):
    rng = random.Random(0)
    corpus = tmp_path / "t.txt"
    corpus.write_text("\n".join(rng.choice(["the cat sat", "a dog ran", "we read"]) for _ in range(300)) + "\n",
                      encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
           "-m", "rnnkit", "train", "lm", "--train", str(corpus), "--out", str(tmp_path / "run"), "--embed", "8",
           "--hidden", "16", "--layers", "1", "--batch-size", "8", "--bptt", "16", "--epochs", "1", "--threads", "1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "metrics.jsonl", "checkpoint.pt", "tokenizer.json"):
        assert (tmp_path / "run" / name).exists(), name
    # One process logs: each evaluation line appears once.
    assert done.stderr.count("epoch 1.00") == 1
