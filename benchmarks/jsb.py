"""JSB Chorales: test negative log-likelihood (nats per frame, summed over the 88 keys) and frame accuracy of
the `music` task, on the published split (229 / 76 / 77 chorales, one frame per quarter note).

The pieces are read from `jsb_chorales/jsb-chorales-quarter.json` ({"train", "valid", "test"}: lists of
frames of MIDI pitches) and written as three piano-roll JSON files, which `rnnkit train music` reads. The
best weights by validation NLL (early stopping) are scored on the test pieces.

    python benchmarks/jsb.py --data ../shared/data --output autoregressive
    python benchmarks/jsb.py --data ../shared/data --output independent

Published (test NLL): RNN 8.71, LSTM 8.45, GRU 8.43, TCN 8.10, RNN-RBM 6.27, RNN-NADE 5.83 (5.56 with
Hessian-free training); targets here: independent <= 8.10, autoregressive <= 5.5, each within 30 CPU minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from bench_common import cpu_name, environment, train_seconds

from rnnkit.config import RunConfig
from rnnkit.tasks import runner, training

TARGETS = {"independent": 8.10, "autoregressive": 5.5}
PUBLISHED = {"RNN": 8.71, "LSTM": 8.45, "GRU": 8.43, "TCN": 8.10, "RNN-RBM": 6.27, "RNN-NADE": 5.83,
             "RNN-NADE (HF)": 5.56}


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig.create(
        "music",
        model={"cell": args.cell, "hidden_size": args.hidden, "num_layers": args.layers,
               "dropout": args.dropout if args.layers > 1 else 0.0, "output_dropout": args.dropout,
               "weight_drop": args.weight_drop},
        train={"epochs": args.epochs, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
               "clip": 1.0, "scheduler": "plateau", "lr_patience": args.lr_patience, "lr_factor": 0.5,
               "early_stopping": args.early_stopping, "seed": args.seed, "threads": args.threads, "bptt": 0,
               "log_every": 1000},
        music={"frames_per_beat": 1, "output": args.output, "pitch_hidden": args.pitch_hidden,
               "pitch_window": args.pitch_window, "input_dropout": args.input_dropout},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding jsb_chorales/")
    ap.add_argument("--output", choices=["autoregressive", "independent"], default="autoregressive")
    ap.add_argument("--out", default=None, help="output folder (default: runs/bench-jsb-OUTPUT)")
    ap.add_argument("--results", default=None, help="JSON of results (default: benchmarks/results/jsb_OUTPUT.json)")
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=None, help="default: 300 (independent), 200 (autoregressive)")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=None, help="default: 0.4 (independent), 0.3 (autoregressive)")
    ap.add_argument("--input-dropout", type=float, default=0.0)
    ap.add_argument("--weight-drop", type=float, default=None, help="DropConnect on the recurrent weights "
                                                                     "(default: 0.7 independent, 0 autoregressive)")
    ap.add_argument("--pitch-hidden", type=int, default=64)
    ap.add_argument("--pitch-window", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=500)
    ap.add_argument("--max-minutes", type=float, default=30.0, help="training time limit (the target's budget)")
    ap.add_argument("--early-stopping", type=int, default=20)
    ap.add_argument("--lr-patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 (independent), 16 (autoregressive)")
    ap.add_argument("--lr", type=float, default=None, help="default: 5e-3 (independent), 2e-3 (autoregressive)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frame-beam", type=int, default=16, help="beam over the keys for the second frame accuracy")
    ap.add_argument("--force", action="store_true", help="replace an existing --out")
    args = ap.parse_args()
    independent = args.output == "independent"
    args.hidden = args.hidden or (300 if independent else 200)
    args.dropout = args.dropout if args.dropout is not None else (0.4 if independent else 0.3)
    args.weight_drop = args.weight_drop if args.weight_drop is not None else (0.7 if independent else 0.0)
    args.batch_size = args.batch_size or (8 if independent else 16)
    args.lr = args.lr or (5e-3 if independent else 2e-3)

    out = Path(args.out or f"runs/bench-jsb-{args.output}")
    if out.exists():
        if not args.force:
            raise SystemExit(f"{out} exists: choose another --out or pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    source = Path(args.data) / "jsb_chorales" / "jsb-chorales-quarter.json"
    splits = json.loads(source.read_text())
    paths = {}
    for name in ("train", "valid", "test"):
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(splits[name]))

    start = time.monotonic()
    result = training.train(_config(args), paths["train"], out / "run", valid_path=paths["valid"])
    wall = time.monotonic() - start
    seconds = train_seconds(out / "run")
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = max((r.get("epoch", 0) for r in records), default=0)
    scored = [r for r in records if "valid_nll" in r]
    best_epoch = min(scored, key=lambda r: r["valid_nll"])["epoch"] if scored else None
    # frames per second of each epoch (its training and its validation pass), median and range
    per_epoch = [result["train_frames"] * (b["epoch"] - a["epoch"]) / (b["elapsed_s"] - a["elapsed_s"])
                 for a, b in zip([{"epoch": 0.0, "elapsed_s": 0.0}, *scored], scored, strict=False)
                 if b["elapsed_s"] > a["elapsed_s"]]
    test = runner.evaluate(out / "run", paths["test"])
    # the most likely frame searched with a beam over the keys rather than greedily (autoregressive output)
    searched = runner.evaluate(out / "run", paths["test"], beam=args.frame_beam) if not independent else test
    valid = runner.evaluate(out / "run", paths["valid"])
    frames_seen = result["train_frames"] * epochs
    target = TARGETS[args.output]
    summary = {
        "benchmark": "JSB Chorales (Boulanger-Lewandowski et al. 2012 split, quarter-note frames)",
        "output": args.output,
        "test_nll": round(test["nll"], 4),
        "test_frame_accuracy": round(test["frame_accuracy"], 4),
        "valid_nll": round(valid["nll"], 4),
        "valid_frame_accuracy": round(valid["frame_accuracy"], 4),
        "frame_accuracy_decoding": test["decoding"],
        "test_frame_accuracy_beam": {"beam": args.frame_beam, "frame_accuracy": round(searched["frame_accuracy"], 4),
                                     "decoding": searched["decoding"]},
        "target_nll": target,
        "target_met": test["nll"] <= target and seconds <= 30 * 60,
        "published_test_nll": PUBLISHED,
        "pieces": {"train": len(splits["train"]), "valid": len(splits["valid"]), "test": len(splits["test"])},
        "frames": {"train": result["train_frames"], "test": test["frames"]},
        "epochs": epochs,
        "steps": result["steps"],
        "train_seconds": round(seconds, 1),
        "wall_seconds": round(wall, 1),
        "best_epoch": best_epoch,
        "train_frames_per_second": round(frames_seen / seconds, 1) if seconds else None,
        "epoch_frames_per_second": {"median": round(statistics.median(per_epoch), 1), "min": round(min(per_epoch), 1),
                                    "max": round(max(per_epoch), 1)} if per_epoch else None,
        "model": f"{args.cell} 1x{args.hidden}" if args.layers == 1 else f"{args.cell} {args.layers}x{args.hidden}",
        "config": {k: v for k, v in vars(args).items() if k not in ("data", "out", "results", "force")},
        "cpu": cpu_name(),
        **environment(),
        "command": "python benchmarks/jsb.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                          if k in ("output", "max_minutes", "seed")),
    }
    results = Path(args.results or Path(__file__).parent / "results" / f"jsb_{args.output}.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
