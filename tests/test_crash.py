"""Crash safety: a run killed with SIGKILL mid-training resumes and ends with the weights of an unbroken run.

The training runs as `python -m rnnkit train lm` in a subprocess that saves a checkpoint every few
milliseconds; the test kills it without warning once some checkpoints exist, resumes with --resume,
and compares the final weights with a run that was never interrupted, bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rnnkit.checkpoint import CHECKPOINT_FILE, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--embed", "8", "--hidden", "24", "--layers", "2", "--batch-size", "4", "--bptt", "16", "--epochs", "3",
        "--threads", "1", "--eval-every", "40", "--dropout", "0.2", "--seed", "5"]


def _train(corpus: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "rnnkit", "train", "lm", "--train", str(corpus), "--out", str(out),
                             *ARGS, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / CHECKPOINT_FILE)["model"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = ["the cat sat", "on the mat", "a dog ran", "in the park", "we read books"]
    path = tmp_path_factory.mktemp("crash") / "train.txt"
    path.write_text("\n".join(rng.choice(words) for _ in range(400)) + "\n", encoding="utf-8")
    return path


def test_sigkill_then_resume_equals_an_unbroken_run(tmp_path, corpus):
    whole = _train(corpus, tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()

    broken = tmp_path / "broken"
    proc = _train(corpus, broken, "--checkpoint-minutes", "0.0005")
    deadline = time.monotonic() + 300
    # Wait until training is well under way (a checkpoint past the first evaluation), then kill it.
    while time.monotonic() < deadline:
        if (broken / CHECKPOINT_FILE).exists():
            try:
                if load_checkpoint(broken / CHECKPOINT_FILE)["train_state"]["step"] >= 60:
                    break
            except Exception:  # caught mid-write: the atomic rename has not happened yet
                pass
        if proc.poll() is not None:
            pytest.fail("training ended before it could be killed: " + proc.stderr.read().decode()[-500:])
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(broken / CHECKPOINT_FILE)["train_state"]["step"]
    assert killed_at >= 60

    resumed = _train(corpus, broken, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    a, b = _final_weights(tmp_path / "whole"), _final_weights(broken)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=k)
    # The metrics log has no duplicated evaluation from the stretch that was replayed.
    steps = [line for line in (broken / "metrics.jsonl").read_text().splitlines()]
    whole_steps = [line for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(whole_steps)


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path, corpus):
    run = tmp_path / "run"
    proc = _train(corpus, run, "--checkpoint-minutes", "0.0005", "--epochs", "1")
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert (run / (CHECKPOINT_FILE + ".prev")).exists()
    good_prev = load_checkpoint(run / (CHECKPOINT_FILE + ".prev"))["train_state"]["step"]
    (run / CHECKPOINT_FILE).write_bytes((run / CHECKPOINT_FILE).read_bytes()[:100])  # truncated
    assert load_checkpoint(run / CHECKPOINT_FILE)["train_state"]["step"] == good_prev
    resumed = _train(corpus, run, "--resume", "--checkpoint-minutes", "0.0005", "--epochs", "1")
    assert resumed.wait(timeout=300) == 0
    err = resumed.stderr.read().decode()
    assert f"rnnkit: warning: {run / CHECKPOINT_FILE} is damaged (truncated or corrupted); resuming from the " \
           f"previous checkpoint, {run / CHECKPOINT_FILE}.prev" in err
    assert f"resuming at epoch 1, step {good_prev}" in err
    # The damaged file was overwritten, never kept as the previous checkpoint.
    for name in (CHECKPOINT_FILE, CHECKPOINT_FILE + ".prev"):
        assert load_checkpoint(run / name)["train_state"]["step"] >= good_prev
