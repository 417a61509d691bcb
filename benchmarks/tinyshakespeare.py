"""Tiny Shakespeare, character level: best validation loss of a character LSTM within a time budget.

Split as nanoGPT does: the first 90% of input.txt for training, the last 10% for validation. Prints the
best validation loss in nats per character (the figure nanoGPT reports: 1.88 for its small CPU model,
1.47 for its GPU transformer) and writes result.json in the output folder.

    python benchmarks/tinyshakespeare.py --data ../shared/data --minutes 30 --out runs/bench-shakespeare
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import environment

from rnnkit.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding tinyshakespeare/input.txt")
    ap.add_argument("--out", default="runs/bench-shakespeare")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embed", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.25)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bptt", type=int, default=100)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    text = (Path(args.data) / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(text[:cut], encoding="utf-8")
    (out / "valid.txt").write_text(text[cut:], encoding="utf-8")
    run = out / "run"
    if run.exists():
        raise SystemExit(f"{run} exists: choose another --out")

    cfg = RunConfig(
        task="lm",
        model=ModelConfig(cell=args.cell, embedding_size=args.embed, hidden_size=args.hidden, num_layers=args.layers,
                          dropout=args.dropout, output_dropout=args.dropout),
        data=DataConfig(tokenizer="char"),
        train=TrainConfig(epochs=1000, max_minutes=args.minutes, batch_size=args.batch_size, bptt=args.bptt,
                          lr=args.lr, clip=1.0, scheduler="plateau", lr_patience=1, eval_every=300,
                          seed=args.seed, threads=args.threads, log_every=100, checkpoint_minutes=10),
    )
    start = time.monotonic()
    result = train(cfg, out / "train.txt", run, valid_path=out / "valid.txt")
    wall = time.monotonic() - start
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = min(r["valid_loss"] for r in records)
    summary = {
        "benchmark": "tinyshakespeare-char",
        "best_valid_loss_nats_per_char": round(best, 4),
        "target": 1.55,
        "steps": result["steps"],
        "train_minutes": args.minutes,
        "wall_seconds": round(wall, 1),
        "model": f"{args.cell} {args.layers}x{args.hidden}, embed {args.embed}, dropout {args.dropout}",
        **environment(),
    }
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
