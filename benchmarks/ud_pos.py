"""UD English EWT, universal parts of speech: test accuracy of a BiLSTM tagger with character features.

Trains on en_ewt-ud-train.conllu, picks the best epoch on dev, and reports UPOS accuracy on test
(target: 95.0%, no external resources: no pretrained embeddings). Writes the figures to
benchmarks/results/ud_pos.json.

    python benchmarks/ud_pos.py --data ../shared/data --out runs/bench-ud-pos --threads 1
    # with pretrained word vectors and the states of pretrained character language models
    python benchmarks/ud_pos.py --data ../shared/data --out runs/bench-ud-pos-lmf-vec --threads 1 \
        --embed 350 --embeddings runs/vectors/both350.txt \
        --lm-features runs/pretrain-char/forward,runs/pretrain-char/backward \
        --results benchmarks/results/ud_pos_lm_features_vectors.json
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

TARGET = 0.95
TARGET_LM_FEATURES = 0.96  # with the states of pretrained language models as features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding ud_english_ewt/")
    ap.add_argument("--out", default="runs/bench-ud-pos")
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "ud_pos.json"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--max-minutes", type=float, default=40.0)
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embed", type=int, default=100)
    ap.add_argument("--char-hidden", type=int, default=100)
    ap.add_argument("--dropout", type=float, default=0.33)
    ap.add_argument("--word-dropout", type=float, default=0.05)
    ap.add_argument("--crf", action="store_true")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lm-features", default=None,
                    help="FORWARD_RUN[,BACKWARD_RUN]: language models whose states join each token's features")
    ap.add_argument("--embeddings", default=None,
                    help="pre-trained word vectors (text format; see benchmarks/word_vectors.py); --embed must match")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out (raise --epochs or "
                                                          "--max-minutes: both count from the run's start)")
    args = ap.parse_args()

    folder = Path(args.data) / "ud_english_ewt"
    run = Path(args.out)
    if run.exists() and not args.resume:
        raise SystemExit(f"{run} exists: choose another --out, or pass --resume to continue it")
    cfg = RunConfig(
        task="tag",
        model=ModelConfig(cell=args.cell, embedding_size=args.embed, hidden_size=args.hidden, num_layers=args.layers,
                          bidirectional=True, dropout=args.dropout, embedding_dropout=args.dropout,
                          output_dropout=args.dropout, embeddings=args.embeddings),
        data=DataConfig(tokenizer="space"),
        train=TrainConfig(epochs=args.epochs, max_minutes=args.max_minutes, batch_size=args.batch_size, lr=args.lr,
                          clip=5.0, scheduler="plateau", lr_patience=1, early_stopping=4, seed=args.seed,
                          threads=args.threads, log_every=200),
        options=TagConfig(column="upos", crf=args.crf, scheme="none", char_encoder="lstm",
                          char_hidden=args.char_hidden, word_dropout=args.word_dropout,
                          lm_features=args.lm_features),
    )
    start = time.monotonic()
    result = train(cfg, folder / "en_ewt-ud-train.conllu", run, valid_path=folder / "en_ewt-ud-dev.conllu",
                   resume=args.resume)
    wall = time.monotonic() - start
    test = runner.evaluate(run, folder / "en_ewt-ud-test.conllu")
    epochs = len((run / "metrics.jsonl").read_text().splitlines())
    summary = {
        "benchmark": "ud-english-ewt-upos",
        "test_accuracy": round(test["token_accuracy"], 4),
        "test_macro_f1": round(test["macro_f1"], 4),
        "best_dev_accuracy": round(result["best_valid_token_accuracy"], 4),
        "target": TARGET_LM_FEATURES if args.lm_features else TARGET,
        "met": test["token_accuracy"] >= (TARGET_LM_FEATURES if args.lm_features else TARGET),
        "per_tag_f1": {k: round(v["f1"], 4) for k, v in test["per_type"].items()},
        "lm_features": args.lm_features,
        "embeddings": args.embeddings,
        "epochs": epochs,
        "steps": result["steps"],
        "wall_seconds_this_session": round(wall, 1),
        "train_seconds": train_seconds(run),
        "model": f"{args.cell} {args.layers}x{args.hidden} bidirectional, word {args.embed} + char BiLSTM "
                 f"{args.char_hidden} + shape, dropout {args.dropout}, word dropout {args.word_dropout}, "
                 f"{'CRF' if args.crf else 'softmax'}",
        "command": "python benchmarks/ud_pos.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}") for k, v in vars(args).items()
            if v not in (None, False)),
        **environment(),
    }
    atomic_write_text(args.results, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
