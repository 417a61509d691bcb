"""ETTh1 (electricity transformer temperature, hourly): test MSE and MAE of the forecaster, Informer protocol.

The Informer split (Zhou et al. 2021): 12 months for training, 4 for validation, 4 for testing, each later
part preceded by `lookback` rows of history; every column standardised with the training part's mean and
standard deviation; test windows at every origin (stride 1). Univariate: OT in, OT out. Multivariate: all
seven columns in and out, MSE and MAE averaged over them. The figures are `rnnkit evaluate RUN --data
test.csv --stride 1`'s `mse_scaled` and `mae_scaled`: the run forecasts from every origin of test.csv after the
last timestamp seen in training, which is exactly the test part. The naive and seasonal-naive (24 h) figures
come from the same call.

The level the network's output is added to (`--level`: the window's mean, its last value, the value a season
back, or none) defaults to the one with the best validation MSE at horizon 24 for each setting; `--levels mean
last season none --horizons 24` compares them.

    python benchmarks/etth1.py --data ../shared/data --out runs/bench-etth1 --threads 1

Writes benchmarks/results/etth1.json and prints one line per run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from bench_common import environment

from rnnkit.config import DataConfig, ForecastConfig, ModelConfig, RunConfig, TrainConfig
from rnnkit.tasks import runner
from rnnkit.tasks.training import train

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
LEVELS = ["mean", "last", "season", "none"]
MONTH = 30 * 24  # rows: the Informer code counts 30-day months
# Published test MSE / MAE (Informer paper, tables 1 and 2): LSTMa and Informer.
REFERENCE = {
    "univariate": {"LSTMa": {24: (0.114, 0.272), 48: (0.193, 0.358), 168: (0.236, 0.392)},
                   "Informer": {24: (0.098, 0.247), 48: (0.158, 0.319), 168: (0.183, 0.346)}},
    "multivariate": {"LSTMa": {24: (0.650, 0.624), 48: (0.702, 0.675), 168: (1.212, 0.867)},
                     "Informer": {24: (0.577, 0.549), 48: (0.685, 0.625), 168: (0.931, 0.752)}},
}


def split(csv: Path, out: Path, lookback: int) -> dict[str, Path]:
    """Write train.csv, valid.csv and test.csv of the Informer split (later parts with `lookback` rows before)."""
    frame = pd.read_csv(csv)
    borders = {"train": (0, 12 * MONTH), "valid": (12 * MONTH - lookback, 16 * MONTH),
               "test": (16 * MONTH - lookback, 20 * MONTH)}
    paths = {}
    for name, (lo, hi) in borders.items():
        paths[name] = out / f"{name}.csv"
        frame.iloc[lo:hi].to_csv(paths[name], index=False)
    return paths


def _flag(name: str, value: object) -> str:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data", help="folder holding ett/ETTh1.csv")
    ap.add_argument("--out", default="runs/bench-etth1")
    ap.add_argument("--settings", nargs="+", default=["univariate", "multivariate"])
    ap.add_argument("--horizons", nargs="+", type=int, default=[24, 48, 168])
    ap.add_argument("--lookback", type=int, default=168)
    ap.add_argument("--mode", default="direct", choices=["direct", "autoregressive"])
    ap.add_argument("--cell", default="lstm")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--early-stopping", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    # The defaults are the levels with the best validation MSE at horizon 24 (`--levels` compares them).
    ap.add_argument("--level-univariate", default="mean", choices=LEVELS)
    ap.add_argument("--level-multivariate", default="last", choices=LEVELS)
    ap.add_argument("--levels", nargs="+", choices=LEVELS, help="run every one of these levels instead")
    ap.add_argument("--calendar", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(Path(__file__).resolve().parent / "results" / "etth1.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    if out.exists() and any(out.glob("*/config.json")):
        raise SystemExit(f"{out} holds runs: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = split(Path(args.data) / "ett" / "ETTh1.csv", out, args.lookback)
    rows = []
    begin = time.monotonic()
    for setting in args.settings:
        targets = ["OT"] if setting == "univariate" else COLUMNS
        for horizon, level in [(h, v) for h in args.horizons
                               for v in (args.levels or [getattr(args, f"level_{setting}")])]:
            run = out / f"{setting}-{horizon}-{level}"
            cfg = RunConfig(
                task="forecast",
                model=ModelConfig(cell=args.cell, hidden_size=args.hidden, num_layers=args.layers,
                                  dropout=args.dropout if args.layers > 1 else 0.0),
                data=DataConfig(),
                train=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, clip=1.0,
                                  scheduler="plateau", lr_patience=0, early_stopping=args.early_stopping,
                                  seed=args.seed, threads=args.threads, log_every=1000),
                options=ForecastConfig(target=targets, time_column="date", lookback=args.lookback, horizon=horizon,
                                       mode=args.mode, loss="mse", calendar=args.calendar,
                                       level=level),
            )
            start = time.monotonic()
            trained = train(cfg, paths["train"], run, valid_path=paths["valid"], log=lambda _line: None)
            train_s = time.monotonic() - start
            figures = runner.evaluate(run, paths["test"], stride=1)
            lstma, informer = (REFERENCE[setting][name][horizon] for name in ("LSTMa", "Informer"))
            row = {
                "setting": setting, "horizon": horizon, "level": level,
                "test_mse": round(figures["mse_scaled"], 4), "test_mae": round(figures["mae_scaled"], 4),
                "naive_mse": round(figures["baselines"]["naive"]["mse_scaled"], 4),
                "naive_mae": round(figures["baselines"]["naive"]["mae_scaled"], 4),
                "seasonal_naive_mse": round(figures["baselines"]["seasonal_naive"]["mse_scaled"], 4),
                "seasonal_naive_mae": round(figures["baselines"]["seasonal_naive"]["mae_scaled"], 4),
                "lstma_mse": lstma[0], "informer_mse": informer[0],
                "below_lstma": figures["mse_scaled"] < lstma[0],
                "mse_minus_informer": round(figures["mse_scaled"] - informer[0], 4),
                "test_windows": figures["origins"], "steps": trained["steps"],
                "best_valid_mse": round(trained["best_valid_loss"], 4), "train_seconds": round(train_s, 1),
                "epochs_run": len((run / "metrics.jsonl").read_text().splitlines()),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "benchmark": "etth1-informer-split",
        "command": "python benchmarks/etth1.py " + " ".join(_flag(k, v) for k, v in vars(args).items()
                                                             if k not in ("results", "out", "data") and v is not None),
        "results": rows,
        "model": f"{args.mode} {args.cell} {args.layers}x{args.hidden}, lookback {args.lookback}, "
                 f"calendar {args.calendar}",
        "wall_seconds": round(time.monotonic() - begin, 1),
        **environment(),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
