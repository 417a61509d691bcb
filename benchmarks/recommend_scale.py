"""Cost of a recommender as the catalogue grows: training step time and memory, full against sampled loss, and
the latency of a top-K answer, at 10k, 100k and 1M items (synthetic catalogues and random histories).

Each setting runs in a fresh process, so that its peak resident memory is its own. A training step is the
forward pass, the loss, the backward pass and an Adam update on a batch of B histories of T events (a GRU
of 64 units, item embeddings of 64); `ce` scores every item at every position, `sampled` scores the batch's
targets and 1,024 items drawn by popularity (a Zipf law here) with the logQ correction. The top-K latency is
one history's scores over the catalogue and its 10 best items: one event through a session's state (`step`),
and a whole history of 50 events re-read.

    python benchmarks/recommend_scale.py --threads 1

Writes benchmarks/results/recommend_scale.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_common import cpu_name

SIZES = (10_000, 100_000, 1_000_000)


def measure(items: int, loss: str, batch: int, steps: int, length: int, repeats: int) -> dict[str, float]:
    """One setting, in this process."""
    from rnnkit.models.recommender import Recommender

    torch.manual_seed(0)
    popularity = 1.0 / torch.arange(1, items + 1, dtype=torch.float32)  # Zipf
    model = Recommender(items + 1, 64, 64, loss=loss, num_negatives=1024, popularity=torch.cat([torch.zeros(1),
                                                                                                 popularity]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    draw = model.sample_probs
    times = []
    for _ in range(steps + 1):
        rows = torch.multinomial(draw, batch * (length + 1), replacement=True).view(batch, length + 1)
        b = {"items": rows[:, :-1], "lengths": torch.full((batch,), length), "targets": rows[:, 1:]}
        t0 = time.perf_counter()
        out = model.loss(b)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    times = times[1:]  # the first step warms up
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    model.eval()
    with torch.no_grad():
        history = torch.multinomial(draw, 50, replacement=True).view(1, 50)
        _, state = model.prefill(history[:, :-1])
        step_ms, reread_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            scores, _ = model.step(history[:, -1], state)
            scores.topk(10)
            step_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            model(history).topk(10)
            reread_ms.append((time.perf_counter() - t0) * 1000)
    return {"items": items, "loss": loss, "batch": f"{batch}x{length}",
            "step_s_median": round(statistics.median(times), 4), "step_s_min": round(min(times), 4),
            "step_s_max": round(max(times), 4), "peak_rss_mb": round(peak), "model_rss_mb": round(rss_before),
            "topk_event_ms_median": round(statistics.median(step_ms), 3),
            "topk_event_ms_p99": round(sorted(step_ms)[int(0.99 * (len(step_ms) - 1))], 3),
            "topk_history50_ms_median": round(statistics.median(reread_ms), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32, help="histories per training batch")
    ap.add_argument("--length", type=int, default=20, help="events per history in a training batch")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    ap.add_argument("--repeats", type=int, default=200, help="timed top-K answers per setting")
    ap.add_argument("--one", nargs=2, metavar=("ITEMS", "LOSS"), help=argparse.SUPPRESS)
    ap.add_argument("--result", default=str(Path(__file__).resolve().parent / "results" / "recommend_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], args.batch, args.steps, args.length, args.repeats)))
        return
    rows = []
    for items in SIZES:
        for loss in ("ce", "sampled"):
            cmd = [sys.executable, __file__, "--one", str(items), loss, "--threads", str(args.threads),
                   "--batch", str(args.batch), "--length", str(args.length), "--steps", str(args.steps),
                   "--repeats", str(args.repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                row = {"items": items, "loss": loss, "error": done.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"benchmark": "recommend_scale", "model": "gru 1x64, item embeddings 64", "negatives": 1024,
              "results": rows, "threads": args.threads, "cpu": cpu_name(), "torch": torch.__version__}
    Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.result}")


if __name__ == "__main__":
    main()
