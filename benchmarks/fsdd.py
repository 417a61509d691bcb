"""Free Spoken Digit Dataset: test accuracy of a recurrent spoken-digit classifier on log-mel features.

Two splits, both built here as manifests (`path,label`) from `recordings/{digit}_{speaker}_{index}.wav`:

- official: recordings with index 0-4 are the test set (300 files); of the rest, index 5-9 is the
  validation set that picks the best epoch (300) and 10-49 the training set (2,400). Every speaker
  appears in all three, so this measures new recordings of known voices.
- speakers: for each of the six speakers, train on the other five (their index 5-49 for training,
  0-4 for validation) and test on all 500 recordings of the held-out speaker: unknown voices.

    python benchmarks/fsdd.py --data ../shared/data --split official --out runs/bench-fsdd --threads 1
    python benchmarks/fsdd.py --data ../shared/data --split speakers --out runs/bench-fsdd-speakers --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from bench_common import environment

from rnnkit.config import RunConfig
from rnnkit.tasks import runner, training

TARGET = 0.98


def _recordings(folder: Path) -> list[tuple[Path, str, str, int]]:
    """(path, digit, speaker, index) of every recording."""
    out = []
    for wav in sorted((folder / "recordings").glob("*.wav")):
        digit, speaker, index = wav.stem.split("_")
        out.append((wav.resolve(), digit, speaker, int(index)))
    if not out:
        raise SystemExit(f"no recordings in {folder / 'recordings'}")
    return out


def _manifest(path: Path, rows: list[tuple[Path, str, str, int]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # quotes a path that holds a comma or a quote
        writer.writerow(["path", "label"])
        writer.writerows((p, digit) for p, digit, _, _ in rows)
    return path


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig.create(
        "classify",
        model={"cell": args.cell, "hidden_size": args.hidden, "num_layers": args.layers, "bidirectional": True,
               "dropout": args.dropout if args.layers > 1 else 0.0, "embedding_dropout": args.input_dropout,
               "output_dropout": args.dropout},
        train={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "clip": 5.0,
               "scheduler": "plateau", "lr_patience": 2, "early_stopping": args.early_stopping, "seed": args.seed,
               "threads": args.threads, "log_every": 100},
        classify={"audio": True, "features": args.features, "sample_rate": 8000, "n_mels": args.n_mels,
                  "n_mfcc": args.n_mfcc, "pooling": args.pooling, "recording_mean": args.recording_mean},
    )


def _run(args: argparse.Namespace, out: Path, train: list, valid: list, test: list) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: _manifest(out / f"{name}.csv", rows) for name, rows in
             (("train", train), ("valid", valid), ("test", test))}
    start = time.monotonic()
    result = training.train(_config(args), paths["train"], out / "run", valid_path=paths["valid"])
    wall = time.monotonic() - start
    report = runner.evaluate(out / "run", paths["test"], plot=str(out / "confusion.png"))
    return {"test_accuracy": round(report["accuracy"], 4), "test_macro_f1": round(report["macro_f1"], 4),
            "best_valid_accuracy": round(result["best_valid_accuracy"], 4), "steps": result["steps"],
            "train": len(train), "valid": len(valid), "test": len(test), "wall_seconds": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding fsdd/recordings")
    ap.add_argument("--split", choices=["official", "speakers"], default="official")
    ap.add_argument("--out", default=None, help="output folder (default: runs/bench-fsdd[-speakers])")
    ap.add_argument("--results", default=None, help="JSON of results (default: benchmarks/results/fsdd*.json)")
    ap.add_argument("--features", choices=["logmel", "mfcc"], default="logmel")
    ap.add_argument("--n-mels", type=int, default=40)
    ap.add_argument("--n-mfcc", type=int, default=13)
    ap.add_argument("--recording-mean", action="store_true", help="subtract each recording's mean per feature")
    ap.add_argument("--cell", default="gru")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--pooling", default="attention")
    ap.add_argument("--dropout", type=float, default=0.3)
    ap.add_argument("--input-dropout", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--early-stopping", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speakers", nargs="*", default=None, help="speakers split: which to hold out (default: all)")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args()

    name = "fsdd" if args.split == "official" else "fsdd_speakers"
    out = Path(args.out or f"runs/bench-{name.replace('_', '-')}")
    if out.exists():
        if not args.force:
            raise SystemExit(f"{out} exists: choose another --out or pass --force")
        shutil.rmtree(out)
    rows = _recordings(Path(args.data) / "fsdd")
    summary: dict = {"benchmark": f"fsdd ({args.split} split)"}
    if args.split == "official":
        test = [r for r in rows if r[3] <= 4]
        valid = [r for r in rows if 5 <= r[3] <= 9]
        train = [r for r in rows if r[3] >= 10]
        summary.update(_run(args, out, train, valid, test))
        summary.update({"target_accuracy": TARGET, "target_met": summary["test_accuracy"] >= TARGET})
    else:
        speakers = args.speakers or sorted({r[2] for r in rows})
        folds = {}
        for held in speakers:
            others = [r for r in rows if r[2] != held]
            train = [r for r in others if r[3] >= 5]
            valid = [r for r in others if r[3] <= 4]
            test = [r for r in rows if r[2] == held]
            folds[held] = _run(args, out / held, train, valid, test)
            print(f"held-out speaker {held}: test accuracy {folds[held]['test_accuracy']:.4f}", flush=True)
            summary["folds"] = folds
            summary["folds_done"] = f"{len(folds)} of {len(speakers)}"
            summary["mean_test_accuracy"] = round(sum(f["test_accuracy"] for f in folds.values()) / len(folds), 4)
            summary["wall_seconds"] = round(sum(f["wall_seconds"] for f in folds.values()), 1)
            _write(args, name, out, summary)
    _write(args, name, out, summary)
    print(json.dumps(summary, indent=2))


def _write(args: argparse.Namespace, name: str, out: Path, summary: dict) -> None:
    """Write the results so far (the speakers split rewrites them after every fold)."""
    summary.update({
        "model": f"bi{args.cell} {args.layers}x{args.hidden}, {args.pooling} pooling, {args.features} "
                 f"{args.n_mels if args.features == 'logmel' else args.n_mfcc}"
                 f"{' less each recording mean' if args.recording_mean else ''}, dropout {args.dropout}",
        "command": "python benchmarks/fsdd.py " + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(v) if isinstance(v, list) else v}")
            for k, v in vars(args).items() if v not in (None, False) and k != "results"),
        **environment(),
    })
    results = Path(args.results or f"benchmarks/results/{name}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2) + "\n")
    (out / "result.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
