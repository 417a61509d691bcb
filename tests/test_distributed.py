"""Distributed data parallel: two CPU processes (gloo) train to the weights of one process with the same
global batch, for padded variable-length batches and for truncated-BPTT streams, and `rnnkit train` of
every task does so too, writing and printing from rank 0 only; `torchrun` runs `rnnkit train` end to end;
the backend follows the resolved device.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from rnnkit import distributed
from rnnkit.config import RunConfig, TrainConfig
from rnnkit.device import training_device
from rnnkit.models.language_model import LanguageModel
from rnnkit.tasks.lm import LineSource, StreamSource
from rnnkit.train import Trainer, open_run, seed_everything

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


# ---------------------------------------------------------------------- every task, through `rnnkit train`

COMMON = ["--embed", "8", "--hidden", "12", "--layers", "1", "--epochs", "1", "--batch-size", "8", "--threads", "1",
          "--max-steps", "6", "--eval-every", "3", "--seed", "0"]


def _task_data(tmp: Path) -> None:
    rng = random.Random(0)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "dull", "poor", "bad"]
    for name, share in (("c.csv", 0.5), ("c_imbalanced.csv", 0.8)):
        rows = ["text,label"]
        for _ in range(120):
            label = "neg" if rng.random() < share else "pos"
            words = rng.sample(good if label == "pos" else bad, 2)
            rows.append(f"a {words[0]} and {words[1]} film {rng.choice(['', 'indeed', 'really so'])},{label}")
        (tmp / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    names, others = ["Anna", "Paul", "Marie"], ["met", "saw", "the", "cat", "in", "Paris"]
    sentences = []
    for _ in range(80):
        n = rng.randint(1, 3)
        tokens = [rng.choice(names), *(rng.choice(others) for _ in range(n)), rng.choice(names)]
        tags = ["B-PER", *["O"] * n, "B-PER"]
        sentences.append("\n".join(f"{t}\t{g}" for t, g in zip(tokens, tags, strict=True)))
    (tmp / "t.conll").write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    words = ["one", "two", "three", "four", "five"]
    pairs = []
    for _ in range(150):
        src = rng.sample(words, rng.randint(2, 4))
        pairs.append(" ".join(src) + "\t" + " ".join(reversed(src)))
    (tmp / "p.tsv").write_text("\n".join(pairs) + "\n", encoding="utf-8")
    lines = ["time,value"] + [f"{t},{math.sin(t / 4) + 0.1 * rng.random():.4f}" for t in range(360)]
    (tmp / "s.csv").write_text("\n".join(lines[:301]) + "\n", encoding="utf-8")
    (tmp / "s_test.csv").write_text("\n".join(lines[:1] + lines[281:]) + "\n", encoding="utf-8")  # goes on after it
    (tmp / "t.txt").write_text("\n".join(rng.choice(["the cat sat on the mat", "a dog ran in the park"])
                                         for _ in range(300)) + "\n", encoding="utf-8")


# name -> (task, data file, options); dropout off, so that the ranks' different random streams do not matter.
CASES = {
    "classify": ("classify", "c.csv", ["--test", "@c.csv"]),  # @: a file in the data folder
    "classify-weights": ("classify", "c_imbalanced.csv", ["--class-weights"]),
    "tag": ("tag", "t.conll", ["--embedding-dropout", "0", "--output-dropout", "0", "--word-dropout", "0",
                               "--char-embed", "4", "--char-hidden", "8", "--crf"]),
    "seq2seq": ("seq2seq", "p.tsv", []),
    "forecast": ("forecast", "s.csv", ["--target", "value", "--time-column", "time", "--lookback", "12", "--horizon",
                                       "4", "--test", "@s_test.csv"]),
    "lm-odd-rows": ("lm", "t.txt", ["--batch-size", "5", "--bptt", "8"]),  # 5 rows: shares of 3 and 2
}


def _train_args(data: Path, name: str, out: Path) -> list[str]:
    task, file, extra = CASES[name]
    extra = [str(data / e[1:]) if e.startswith("@") else e for e in extra]
    return ["train", task, "--train", str(data / file), "--out", str(out), *COMMON, *extra]


def _task_worker(rank: int, world: int, ports: list[int], data: str) -> None:
    from rnnkit.cli import main

    torch.set_num_threads(1)
    data_dir = Path(data)
    # Each rank gets its own --out, as if each had a disk of its own: whatever rank 1 writes would show.
    base = data_dir / f"rank{rank}"
    codes = {}
    for (name, port) in zip(CASES, ports, strict=True):
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                           "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
        stdout, stderr = (open(data_dir / f"{name}.rank{rank}.{kind}", "w") for kind in ("out", "err"))  # noqa: SIM115
        with stdout, stderr, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            codes[name] = main(_train_args(data_dir, name, base / name))
        distributed.close()
    torch.save({"codes": codes, "draws": torch.rand(4)}, data_dir / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def task_ddp(tmp_path_factory):
    """Every case trained by two processes (each with its own --out) and by one; returns the data folder."""
    from rnnkit.cli import main

    data = tmp_path_factory.mktemp("ddp-tasks")
    _task_data(data)
    for name in CASES:
        with open(data / f"{name}.single.out", "w") as out, contextlib.redirect_stdout(out):
            assert main(_train_args(data, name, data / "single" / name)) == 0
    ports = [_free_port() for _ in CASES]
    mp.start_processes(_task_worker, args=(2, ports, str(data)), nprocs=2, start_method="spawn")
    return data


def _assert_same_figures(found: dict, expected: dict) -> None:
    assert found.keys() == expected.keys()
    for k, v in expected.items():
        if isinstance(v, dict):
            _assert_same_figures(found[k], v)
        elif isinstance(v, float):
            assert found[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
        else:
            assert found[k] == v, k


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(CASES))
def test_every_task_trains_under_ddp_as_in_one_process(task_ddp, name):
    data = task_ddp
    ranks = [torch.load(data / f"rank{r}.pt") for r in range(2)]
    assert all(r["codes"][name] == 0 for r in ranks), (data / f"{name}.rank0.err").read_text()[-2000:]
    single, ddp = data / "single" / name, data / "rank0" / name
    a = torch.load(single / "checkpoint.pt", weights_only=False)
    b = torch.load(ddp / "checkpoint.pt", weights_only=False)
    assert a["train_state"]["step"] == b["train_state"]["step"] == 6
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, atol=2e-5, rtol=1e-4, msg=k)
    if a["carried"] is not None:  # a stream's state: every rank's rows, gathered in order
        torch.testing.assert_close(b["carried"], a["carried"], atol=2e-5, rtol=1e-4)
    # The logged training loss and token count are those of the global batch, not of rank 0's share.
    assert b["train_state"]["tokens"] == a["train_state"]["tokens"]
    ma, mb = _metrics(single), _metrics(ddp)
    assert len(ma) == len(mb) == 2
    for x, y in zip(ma, mb, strict=True):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        for k in x:
            if k.startswith("valid_"):
                assert y[k] == pytest.approx(x[k], rel=1e-4, abs=1e-6), k
    # Rank 0 alone writes files and prints: rank 1's --out is never made, its output is empty.
    assert not (data / "rank1" / name).exists()
    printed = json.loads((data / f"{name}.rank0.out").read_text())
    _assert_same_figures(printed, json.loads((data / f"{name}.single.out").read_text()))
    assert (data / f"{name}.rank1.out").read_text() == ""
    shown = [line for line in (data / f"{name}.rank1.err").read_text().splitlines()
             if not line.startswith(("rnnkit: warning", "[rank"))]
    assert shown == []


def test_ranks_draw_different_dropout_but_start_from_the_same_weights(task_ddp):
    # Same initial weights and batches (the equivalence above); the random streams differ from rank to rank.
    draws = [torch.load(task_ddp / f"rank{r}.pt")["draws"] for r in range(2)]
    assert not torch.equal(draws[0], draws[1])


def _refusing_worker(rank: int, world: int, port: int, out: str, corpus: str) -> None:
    from rnnkit.cli import main

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        code = main(["train", "lm", "--train", corpus, "--out", out, "--embed", "8", "--hidden", "8", "--layers",
                     "1", "--epochs", "1", "--threads", "1"])
    distributed.close()
    (Path(out).parent / f"code{rank}").write_text(str(code))


def test_every_rank_refuses_an_out_that_holds_a_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"an": "earlier run"}\n')
    (run / "tokenizer.json").write_text('{"kind": "char"}\n')
    corpus = tmp_path / "t.txt"
    corpus.write_text("the cat sat on the mat\n" * 50, encoding="utf-8")
    mp.start_processes(_refusing_worker, args=(2, _free_port(), str(run), str(corpus)), nprocs=2,
                       start_method="spawn")
    assert [(tmp_path / f"code{r}").read_text() for r in range(2)] == ["2", "2"]
    assert (run / "config.json").read_text() == '{"an": "earlier run"}\n'
    assert (run / "tokenizer.json").read_text() == '{"kind": "char"}\n'
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "tokenizer.json"]


def test_the_backend_follows_the_resolved_device(monkeypatch, tmp_path):
    # "--device auto" on a GPU machine under torchrun: NCCL, and each process on the GPU of its LOCAL_RANK.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_device("auto") == torch.device("cuda", 1)
    assert training_device("cuda") == torch.device("cuda", 1)
    assert distributed.backend_for(training_device("auto")) == "nccl"
    assert distributed.backend_for(torch.device("cpu")) == "gloo"

    joined = {}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: joined.setdefault("device", device))
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend: joined.setdefault("backend", backend))
    monkeypatch.setattr(distributed, "current", lambda: None)
    distributed.setup(training_device("auto"))
    assert joined == {"device": torch.device("cuda", 1), "backend": "nccl"}

    # Every task's train joins through open_run, with the device resolved first.
    seen = []
    monkeypatch.setattr(distributed, "setup", lambda device: seen.append(device))
    open_run(RunConfig(task="lm", train=TrainConfig(device="auto")), tmp_path / "run", resume=False)
    assert seen == [torch.device("cuda", 1)]
