"""Games (Amazon video games, SASRec's "Games" set): next-item recommendation under SASRec's protocol.

The protocol (Kang & McAuley 2018): each user's events in order; leave-one-out, the last event for test and
the one before for validation, the rest for training; a history is read by its latest 50 events; the true
test item is ranked against 100 items drawn uniformly among those the user never touched (fixed seed), and
Hit@10 / NDCG@10 are averaged over users. rnnkit trains on the file itself (`rnnkit train recommend --train
Video.txt`, which splits it leave-one-out), picks the epoch by validation NDCG@10 over the whole catalogue,
and scores the held-out last events with the best weights; the same figures come from `rnnkit evaluate RUN
--data Video.txt`. Beside the sampled figures: full-ranking hit@10, ndcg@10, MRR, hit@20, coverage@10 (the
user's own items excluded) and the most-popular baseline.

Two differences from SASRec's evaluation script, both small: every user with a test event is scored (SASRec
scores a random 10,000 when there are more), and users with two events are scored on their second (SASRec
keeps them for training only: 82 of 31,013 users here).

    python benchmarks/games.py --data ../shared/data --out runs/bench-games --threads 1

Writes benchmarks/results/games.json (or games_TAG.json with --tag) and prints the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_common import cpu_name, environment, train_seconds

from rnnkit.config import RunConfig
from rnnkit.tasks.training import train

# Published Hit@10 / NDCG@10 on Games (SASRec paper, Table III).
REFERENCE = {"GRU4Rec": (0.2938, 0.1837), "GRU4Rec+": (0.6599, 0.4759), "Caser": (0.5282, 0.3214),
             "SASRec": (0.7410, 0.5360)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="../shared/data", help="the folder holding sasrec_games/Video.txt")
    ap.add_argument("--out", default="runs/bench-games", help="the run directory to write")
    ap.add_argument("--tag", default="", help="results go to games_TAG.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cell", default="gru")
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0, help="between stacked recurrent layers")
    ap.add_argument("--embedding-dropout", type=float, default=0.6)
    ap.add_argument("--output-dropout", type=float, default=0.6)
    ap.add_argument("--loss", default="ce")
    ap.add_argument("--negatives", type=int, default=1024, help="sampled losses: negatives drawn per batch")
    ap.add_argument("--sample-alpha", type=float, default=0.75,
                    help="sampled losses: draw negatives by count ** alpha (0: uniformly)")
    ap.add_argument("--batch-negatives", action=argparse.BooleanOptionalAction, default=True,
                    help="sampled losses: the batch's own targets are negatives too")
    ap.add_argument("--residual", action=argparse.BooleanOptionalAction, default=True,
                    help="add each event's own item embedding to the query after it")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="ce loss: share of each target's mass "
                                                                       "spread over the catalogue")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--monitor", default="full", choices=["full", "sampled"],
                    help="the validation NDCG@10 that keeps the best epoch: over the catalogue, or SASRec's sampled")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=8, help="at about 180 CPU seconds an epoch at 256-d in batches of "
                                                      "32 (validation included) on one thread, 8 take about 24 "
                                                      "CPU minutes")
    ap.add_argument("--early-stopping", type=int, default=3)
    ap.add_argument("--max-minutes", type=float, default=None, help="a wall-clock limit on training as well")
    ap.add_argument("--scheduler", default="cosine")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    data = Path(args.data) / "sasrec_games" / "Video.txt"
    out = Path(args.out)
    cfg = RunConfig.create(
        "recommend",
        model={"cell": args.cell, "embedding_size": args.embed, "hidden_size": args.hidden, "num_layers": args.layers,
               "dropout": args.dropout,
               "embedding_dropout": args.embedding_dropout, "output_dropout": args.output_dropout},
        train={"lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs, "seed": args.seed,
               "early_stopping": args.early_stopping, "max_minutes": args.max_minutes, "threads": args.threads,
               "scheduler": args.scheduler, "weight_decay": args.weight_decay},
        recommend={"loss": args.loss, "max_length": 50, "negatives": args.negatives,
                   "sample_alpha": args.sample_alpha, "batch_negatives": args.batch_negatives, "monitor": args.monitor,
                   "residual": args.residual, "label_smoothing": args.label_smoothing},
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    result = train(cfg, data, out)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    figures = json.loads((out / "test.json").read_text())
    sasrec = REFERENCE["SASRec"]
    summary = {
        "benchmark": "games",
        "command": "python benchmarks/games.py " + " ".join(
            (f"--{k.replace('_', '-')}" if v is True else f"--no-{k.replace('_', '-')}" if v is False
             else f"--{k.replace('_', '-')} {v}") for k, v in vars(args).items() if k not in ("data", "out")),
        "data": str(data),
        "protocol": "leave-one-out; history = latest 50 events; true item vs 100 uniformly drawn items the user "
                    "never touched (seed 0); full ranking excludes the user's own items",
        "config": cfg.to_dict(),
        "train_seconds": round(train_seconds(out), 1),
        "wall_seconds": round(wall, 1),
        # CPU time of the whole call: reading, training, every validation and the final scoring (the machine is
        # shared, so wall-clock time overstates what the run needed)
        "cpu_seconds": round(cpu, 1),
        "within_30_cpu_minutes": cpu <= 30 * 60,
        "epochs_run": len((out / "metrics.jsonl").read_text().splitlines()),
        "best_valid_ndcg@10_full": result.get("best_valid_ndcg@10"),
        "best_valid_ndcg@10_sampled": result.get("best_valid_sampled_ndcg@10"),
        "test": figures,
        "reference": {name: {"hit@10": h, "ndcg@10": n} for name, (h, n) in REFERENCE.items()},
        "target_met": (figures["sampled"]["hit@10"] >= sasrec[0] and figures["sampled"]["ndcg@10"] >= sasrec[1]
                       and cpu <= 30 * 60),
        "cpu": cpu_name(),
        **environment(),
    }
    name = f"games_{args.tag}.json" if args.tag else "games.json"
    path = Path(__file__).resolve().parent / "results" / name
    path.write_text(json.dumps(summary, indent=2) + "\n")
    s, b = figures["sampled"], figures["baselines"]["most_popular"]
    print(f"sampled hit@10 {s['hit@10']:.4f} ndcg@10 {s['ndcg@10']:.4f} (SASRec {sasrec[0]} / {sasrec[1]}); full "
          f"hit@10 {figures['hit@10']:.4f} ndcg@10 {figures['ndcg@10']:.4f} mrr {figures['mrr']:.4f}; most popular "
          f"sampled {b['sampled']['hit@10']:.4f} / {b['sampled']['ndcg@10']:.4f}; trained "
          f"{summary['train_seconds']:.0f} s ({cpu:.0f} CPU s); written to {path}")


if __name__ == "__main__":
    main()
