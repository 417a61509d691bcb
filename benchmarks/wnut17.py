"""WNUT-17 emerging entities: test entity F1 of a BiLSTM-CRF with character features, per type.

Trains on wnut17train.conll, picks the best epoch by dev entity F1 (emerging.dev.conll), and reports
entity-level precision, recall and F1 (CoNLL-eval semantics, through seqeval) on
emerging.test.annotated, overall and per type. Target: F1 >= 42.0 (the best shared-task system,
41.86, used external resources; this uses no gazetteers, and pre-trained word vectors only when
--embeddings names them). Writes the figures, the vectors file and the command to --results
(default benchmarks/results/wnut17.json).

    python benchmarks/wnut17.py --data ../shared/data --out runs/bench-wnut17 --threads 1
    python benchmarks/wnut17.py --data ../shared/data --out runs/bench-wnut17-vec-both --embed 350 \
        --embeddings runs/vectors/both350.txt --results benchmarks/results/wnut17_vectors_both.json --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import environment, train_seconds

from rnnkit.config import DataConfig, ModelConfig, RunConfig, TagConfig, TrainConfig
from rnnkit.io import atomic_write_text
from rnnkit.tasks import runner
from rnnkit.tasks.training import train

TARGET = 0.42


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding wnut17/")
    ap.add_argument("--out", default="runs/bench-wnut17")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "wnut17.json"))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--early-stopping", type=int, default=10, help="epochs without a better dev F1 before stopping")
    ap.add_argument("--max-minutes", type=float, default=40.0)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=200)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--embed", type=int, default=100)
    ap.add_argument("--char-hidden", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--word-dropout", type=float, default=0.1)
    ap.add_argument("--min-freq", type=int, default=1, help="rarer training words are unknown: the characters and "
                                                             "the shape carry them (as they must for new entities)")
    ap.add_argument("--scheme", default="bioes", choices=["bio", "bioes"])
    ap.add_argument("--softmax", action="store_true", help="a softmax per token instead of the CRF")
    ap.add_argument("--embeddings", default=None,
                    help="pre-trained word vectors (text format; see benchmarks/word_vectors.py); --embed must match")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-features", default=None,
                    help="FORWARD_RUN[,BACKWARD_RUN]: language models whose states join each token's features")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (raise --epochs or "
                                                          "--max-minutes: both count from the run's start)")
    args = ap.parse_args()

    folder = Path(args.data) / "wnut17"
    run = Path(args.out)
    if run.exists() and not args.resume:
        raise SystemExit(f"{run} exists: choose another --out, or pass --resume to continue it")
    cfg = RunConfig(
        task="tag",
        model=ModelConfig(cell=args.cell, embedding_size=args.embed, hidden_size=args.hidden, num_layers=args.layers,
                          bidirectional=True, dropout=args.dropout, embedding_dropout=args.dropout,
                          output_dropout=args.dropout, embeddings=args.embeddings),
        data=DataConfig(tokenizer="space", min_freq=args.min_freq),
        train=TrainConfig(epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
                          clip=5.0, scheduler="plateau", lr_patience=2, early_stopping=args.early_stopping,
                          seed=args.seed, threads=args.threads, log_every=200),
        options=TagConfig(crf=not args.softmax, scheme=args.scheme, char_encoder="lstm",
                          char_hidden=args.char_hidden, word_dropout=args.word_dropout,
                          lm_features=args.lm_features),
    )
    start = time.monotonic()
    result = train(cfg, folder / "wnut17train.conll", run, valid_path=folder / "emerging.dev.conll",
                   resume=args.resume)
    wall = time.monotonic() - start
    test = runner.evaluate(run, folder / "emerging.test.annotated")
    dev = runner.evaluate(run, folder / "emerging.dev.conll")
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    summary = {
        "benchmark": "wnut17-entities",
        "test_f1": round(test["f1"], 4),
        "test_precision": round(test["precision"], 4),
        "test_recall": round(test["recall"], 4),
        "test_token_accuracy": round(test["token_accuracy"], 4),
        "dev_f1": round(dev["f1"], 4),
        "target": TARGET,
        "met": test["f1"] >= TARGET,
        "per_type": {k: {m: round(v[m], 4) for m in ("precision", "recall", "f1")} | {"support": v["support"]}
                     for k, v in test["per_type"].items()},
        "epochs": epochs,
        "steps": result["steps"],
        "wall_seconds_this_session": round(wall, 1),
        "train_seconds": train_seconds(run),
        "model": f"{args.cell} {args.layers}x{args.hidden} bidirectional, word {args.embed} + char BiLSTM "
                 f"{args.char_hidden} + shape, dropout {args.dropout}, word dropout {args.word_dropout}, "
                 f"min freq {args.min_freq}, "
                 f"{'softmax' if args.softmax else 'CRF'}, {args.scheme.upper()}",
        "embeddings": args.embeddings,
        "lm_features": args.lm_features,
        "command": "python benchmarks/wnut17.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
            if v not in (None, False)),
        **environment(),
    }
    atomic_write_text(args.results, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
