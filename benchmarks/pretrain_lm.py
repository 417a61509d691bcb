"""Pretraining language models for transfer: the runs that `--init-from` and `--lm-features` start from.

Plain text on hand: WikiText-2's training text (`wikitext2/train.txt`, 2.1M words, 10.8M characters) and, with
`--extra FILE ...` (plain text) or `--labelled FILE ...` (labelled lines), the text of the task files themselves
(their labels are never read). The time spent here is
reported apart from the tasks' own training.

    # a forward and a backward character model, for tag --lm-features
    python benchmarks/pretrain_lm.py --data ../shared/data --kind char --out runs/pretrain-char --minutes 30
    # a word model for classify --init-from (ULMFiT's first stage), then a pass on SST's own text
    python benchmarks/pretrain_lm.py --data ../shared/data --kind word --out runs/pretrain-word --minutes 60
    # the same, lower-cased with SST's training sentences, embeddings started from word vectors
    python benchmarks/pretrain_lm.py --data ../shared/data --kind word --out runs/pretrain-word-sst --minutes 45 \
        --lowercase --labelled ../shared/data/sst/stsa.binary.train --embeddings runs/vectors/both350.txt \
        --embed 350 --hidden 512 --layers 1

Results: benchmarks/results/pretrain_<kind>.json (each model's minutes, steps and validation figures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench_common import environment

from rnnkit.config import RunConfig
from rnnkit.io import atomic_write_text
from rnnkit.tasks.training import train


def corpus(args: argparse.Namespace, out: Path) -> tuple[Path, Path]:
    """The training text (WikiText-2's, then each --extra file's) and the validation text."""
    wt2 = Path(args.data) / "wikitext2"
    text = (wt2 / "train.txt").read_text(encoding="utf-8")
    for path in args.extra or []:
        text += "\n" + Path(path).read_text(encoding="utf-8")
    for path in args.labelled or []:
        text += "\n" + "\n".join(labelled_text(Path(path)))
    if args.lowercase:
        text = text.lower()
    out.mkdir(parents=True, exist_ok=True)
    train_path = out / "train.txt"
    atomic_write_text(train_path, text)
    if not args.lowercase:
        return train_path, wt2 / "test.txt"
    valid_path = out / "valid.txt"
    atomic_write_text(valid_path, (wt2 / "test.txt").read_text(encoding="utf-8").lower())
    return train_path, valid_path


def labelled_text(path: Path) -> list[str]:
    """The text of a labelled file, labels dropped: `label<TAB>sentence` lines (a `label\tsentence` header
    skipped) or SST's `label sentence` lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].lower().startswith("label\t"):
        lines = lines[1:]
    out = []
    for line in lines:
        parts = line.split("\t", 1) if "\t" in line else line.split(None, 1)
        if len(parts) == 2 and parts[1].strip():
            out.append(parts[1].strip())
    return out


def config(args: argparse.Namespace, reverse: bool) -> RunConfig:
    char = args.kind == "char"
    return RunConfig.create(
        "lm",
        model={"cell": "lstm", "embedding_size": args.embed or (64 if char else 400),
               "hidden_size": args.hidden or (512 if char else 400), "num_layers": args.layers or (1 if char else 2),
               "dropout": 0.1 if char else 0.3, "output_dropout": 0.1 if char else 0.3,
               "embedding_dropout": 0.0 if char else 0.3,
               "adaptive_softmax": None if char else "2000,10000", "embeddings": args.embeddings},
        data={"tokenizer": "char" if char else "space"},
        train={"epochs": 100, "max_minutes": args.minutes, "batch_size": args.batch_size,
               "bptt": args.bptt or (150 if char else 70), "lr": args.lr, "scheduler": "plateau",
               "eval_every": args.eval_every, "seed": args.seed, "threads": args.threads, "log_every": 100},
        lm={"reverse": reverse},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding wikitext2/")
    ap.add_argument("--kind", choices=["char", "word"], default="char")
    ap.add_argument("--out", default=None, help="runs go to OUT/forward (and OUT/backward for --kind char)")
    ap.add_argument("--extra", nargs="*", help="more plain-text files to learn from (task files' text)")
    ap.add_argument("--labelled", nargs="*",
                    help="labelled task files whose text (never their labels) is learnt from: `label<TAB>text` "
                         "(with a header) or SST's `label text` lines")
    ap.add_argument("--lowercase", action="store_true", help="learn from lower-cased text (for lower-cased tasks)")
    ap.add_argument("--embeddings", default=None,
                    help="pre-trained word vectors to start a word model's embeddings from (--embed must match)")
    ap.add_argument("--minutes", type=float, default=30.0, help="training time per model")
    ap.add_argument("--directions", choices=["both", "forward", "backward"], default=None,
                    help="default: both for char, forward for word")
    ap.add_argument("--embed", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--bptt", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=None)
    args = ap.parse_args()

    out = Path(args.out or f"runs/pretrain-{args.kind}")
    directions = args.directions or ("both" if args.kind == "char" else "forward")
    train_path, valid_path = corpus(args, out)
    models = {}
    for name in (["forward", "backward"] if directions == "both" else [directions]):
        run = out / name
        if run.exists():
            raise SystemExit(f"{run} exists: choose another --out")
        start = time.monotonic()
        result = train(config(args, name == "backward"), train_path, run, valid_path=valid_path)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        best = min(records, key=lambda r: r["valid_loss"])
        models[name] = {"run": str(run), "minutes": round((time.monotonic() - start) / 60, 1),
                        "steps": result["steps"], "epochs": round(records[-1]["epoch"], 2),
                        "best_valid_loss": round(best["valid_loss"], 4),
                        "best_valid_bits_per_token": round(best["valid_loss"] / 0.6931471805599453, 4)}
        print(json.dumps({name: models[name]}), flush=True)
    summary = {"benchmark": f"pretrain-{args.kind}",
               "text": ["wikitext2/train.txt", *(args.extra or []), *(args.labelled or [])],
               "lowercase": args.lowercase,
               "train_characters": train_path.stat().st_size, "models": models,
               "command": "python benchmarks/pretrain_lm.py " + " ".join(
                   f"--{k.replace('_', '-')}" + ("" if v is True else " " + (" ".join(v) if isinstance(v, list)
                                                                         else str(v)))
                   for k, v in vars(args).items() if v not in (None, False, [])), **environment()}
    results = Path(args.results or Path(__file__).resolve().parent / "results" / f"pretrain_{args.kind}.json")
    atomic_write_text(results, json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
