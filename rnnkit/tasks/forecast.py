"""Forecasting end to end: a CSV of time series to a trained run, and a run to forecasts, scores and flags.

What is here: the window batch source, `train` (time-ordered split, scaling fitted on the training part,
the anomaly threshold learned on validation data), `load`, `forecast` (the model's forecasts from given
origins, in the data's units), `evaluate` (every origin whose whole horizon lies after the last
timestamp seen in training, or, for a series in row order, after the first rows that repeat rows seen in
training; against the naive and seasonal-naive baselines), `predict` (the horizon after
the end of a series, with intervals and a plot) and the one-step-ahead anomaly scores behind
`predict --anomalies`. What is not: the network (models/forecaster.py), reading and checking CSV files,
scaling and windows (data/series.py), the metrics and baselines themselves (metrics.py), the plots (viz.py),
the loop (train.py).

A run directory holds, beside the usual files: `scaler.json` (means and standard deviations of the
training part), `series.json` (columns, time step, season, the last timestamp seen in training),
`insample.npy` (the training part's target values, the MASE scale's in-sample data), `anomaly.json`
(the validation residual scale and the threshold) and, for a series in row order, `seen.npz` (the values of
every row seen in training: the training file's, then the validation file's, so that `evaluate` can tell
which rows of a file were seen).
"""

from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from rnnkit import distributed, metrics, viz
from rnnkit.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    load_weights,
    read_run_config,
    versions,
)
from rnnkit.config import RunConfig, UserError
from rnnkit.data import epoch_generator
from rnnkit.data.series import (
    Scaler,
    Series,
    calendar_features,
    calendar_names,
    future_times,
    infer_season,
    infer_step,
    leading_rows_seen,
    read_series,
    window_origins,
)
from rnnkit.device import resolve_device
from rnnkit.io import atomic_write, atomic_write_text, read_json, write_json
from rnnkit.models.forecaster import Forecaster, normal_quantile
from rnnkit.train import Trainer, open_run

SCALER_FILE = "scaler.json"
SERIES_FILE = "series.json"
INSAMPLE_FILE = "insample.npy"
ANOMALY_FILE = "anomaly.json"
SEEN_FILE = "seen.npz"
SERIES_KEYS = ("target", "covariates", "time_column", "time_kind", "step", "season", "calendar", "input_size",
               "last_seen")
EVAL_BATCH = 512  # windows per forward pass when forecasting (no gradients)


class WindowSource:
    """Windows (history, future calendar, targets) at given origins; shuffled per epoch when training.

    Args:
        features: (N, F) float32: scaled targets, scaled covariates, calendar features.
        calendar: (N, K) float32 calendar features (the future part a decoder may read).
        targets: (N, C) float32 scaled target values.
        origins: (M,) the index of the first forecast step of each window.
    """

    stateful = False

    def __init__(self, features: np.ndarray, calendar: np.ndarray, targets: np.ndarray, origins: np.ndarray,
                 lookback: int, horizon: int, batch_size: int, shuffle: bool = False, seed: int = 0) -> None:
        self.features = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.calendar = torch.from_numpy(np.ascontiguousarray(calendar, dtype=np.float32))
        self.targets = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        self.origins = torch.from_numpy(np.asarray(origins, dtype=np.int64))
        self.lookback, self.horizon = lookback, horizon
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        n = len(self.features)
        self.past = torch.arange(-lookback, 0)  # (L,)
        self.ahead = torch.arange(horizon)  # (H,)
        assert len(self.origins) == 0 or (int(self.origins.min()) >= lookback
                                          and int(self.origins.max()) + horizon <= n)

    def __len__(self) -> int:
        return -(-len(self.origins) // self.batch_size)

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.arange(len(self.origins))
        if self.shuffle:
            order = torch.randperm(len(self.origins), generator=epoch_generator(self.seed, epoch))
        for b in range(start, len(self)):
            o = self.origins[order[b * self.batch_size:(b + 1) * self.batch_size]]  # (B,)
            past = o[:, None] + self.past  # (B, L)
            ahead = o[:, None] + self.ahead  # (B, H)
            yield {"history": self.features[past], "future": self.calendar[ahead], "targets": self.targets[ahead]}


# ------------------------------------------------------------------------------------------ training


def _read(cfg: RunConfig, path: str | Path) -> Series:
    o = cfg.options
    return read_series(path, o.target or [], o.time_column, o.covariates, o.impute, o.gaps)


def _time_value(series: Series, i: int) -> Any:
    t = series.times[i]
    return str(t) if series.is_datetime else int(t)


def _seen_until(run: LoadedForecaster, series: Series, seen_rows: int | None = None) -> int:
    """How many first rows of `series` were seen in training.

    With a time column: the rows at or before the last timestamp seen in training. In row order: the first
    rows that repeat rows seen in training (`leading_rows_seen`), or `seen_rows` when the user gives more.
    """
    meta = run.meta
    if meta["time_kind"] != "row":
        if seen_rows is not None:
            raise UserError(f"--seen-rows: the run has a time column ({meta['time_column']}), so forecasts start "
                            f"after the last timestamp seen in training ({meta['last_seen']}); drop the option")
        key = pd.Timestamp(meta["last_seen"]) if series.is_datetime else int(meta["last_seen"])
        return int(series.times.searchsorted(key, side="right"))
    if seen_rows is not None and seen_rows < 0:
        raise UserError(f"--seen-rows: expected an integer >= 0; got {seen_rows}")
    path = run.run_dir / SEEN_FILE
    if not path.exists():
        if seen_rows is None:
            raise UserError(f"{path}: not found, so which rows of {series.path} were seen in training is unknown "
                            "(the run has no time column); give --seen-rows N, the number of first rows of the "
                            "file seen in training (0: none)")
        return seen_rows
    repeated = leading_rows_seen(series.values(), _seen_values(run, path))
    if seen_rows is not None and seen_rows < repeated:
        raise UserError(f"--seen-rows {seen_rows}: the first {repeated} rows of {series.path} (lines 2 to "
                        f"{repeated + 1}) repeat rows seen in training; forecasts of them would score the "
                        "training data")
    return max(repeated, seen_rows or 0)


def _seen_values(run: LoadedForecaster, path: Path) -> list[np.ndarray]:
    """The values of the rows seen in training, per file, from `seen.npz`."""
    try:
        with np.load(path) as saved:
            parts = [saved[k] for k in ("train", "valid") if k in saved.files]
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable numpy file ({e})") from None
    width = len(run.meta["target"]) + len(run.meta["covariates"])
    if not parts or any(p.ndim != 2 or p.shape[1] != width for p in parts):
        raise UserError(f"{path}: expected the arrays 'train' (and 'valid') of rows with {width} values; got "
                        f"{', '.join(str(p.shape) for p in parts) or 'none'}")
    return parts


def _insample(run: LoadedForecaster) -> np.ndarray:
    """(N, C) the training part's target values, the MASE scale's in-sample data."""
    path = run.run_dir / INSAMPLE_FILE
    try:
        y = np.load(path)
    except FileNotFoundError:
        raise UserError(f"{path}: not found (is this a forecast run directory?)") from None
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"{path}: not a readable numpy file ({e})") from None
    if y.ndim != 2 or y.shape[1] != run.target_size or not np.issubdtype(y.dtype, np.number):
        raise UserError(f"{path}: expected a numeric array of shape (rows, {run.target_size}); got "
                        f"{y.dtype} {y.shape}")
    return y


def _check_same_kind(meta: dict[str, Any], series: Series) -> None:
    kind = "row" if meta["time_column"] is None else ("datetime" if series.is_datetime else "index")
    if kind != meta["time_kind"]:
        raise UserError(f"{series.path}: the time column {meta['time_column']} holds {kind} values; the run was "
                        f"trained on {meta['time_kind']} values")


def _features(series: Series, scaler: Scaler, calendar: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) model inputs (scaled targets, scaled covariates, calendar) and the (N, K) calendar."""
    cal = calendar_features(series.times, calendar)
    scaled = scaler.transform(series.values()).astype(np.float32)
    return np.concatenate([scaled, cal], axis=1), cal


def build_model(cfg: RunConfig, input_size: int, target_size: int, calendar_size: int, season: int) -> Forecaster:
    m, o = cfg.model, cfg.options
    if m.bidirectional:
        raise UserError("--bidirectional: a forecaster reads the past left to right; drop the option")
    if m.embeddings:
        raise UserError("--embeddings: a forecaster reads numbers, not words; drop the option")
    if o.level == "season" and not 1 < season <= o.lookback:
        raise UserError(f"--level season: the season inferred from the time step is {season} steps; it needs a "
                        f"season of 2 to --lookback {o.lookback} steps (a time column of dates, a longer --lookback, "
                        "or another --level)")
    return Forecaster(input_size, target_size, o.horizon, m.hidden_size, m.num_layers, m.cell, m.dropout, o.mode,
                      o.loss, o.quantile_values(), calendar_size, o.level, season, m.fused, m.recurrent_options())


def train(
    cfg: RunConfig,
    train_path: str | Path,
    out: str | Path,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a forecaster and write its run directory; returns the final figures."""
    cfg, out, say = open_run(cfg, out, resume, log)
    o, tc = cfg.options, cfg.train
    if not o.target:
        raise UserError("--target: name the column(s) to forecast, e.g. --target OT")
    if cfg.model.bidirectional:
        raise UserError("--bidirectional: a forecaster reads the past left to right; drop the option")
    L, H = o.lookback, o.horizon

    series = _read(cfg, train_path)
    n = len(series)
    if valid_path is not None:
        n_train = n
        if n < L + H:
            raise UserError(f"{train_path}: {n} rows; --lookback {L} + --horizon {H} need at least {L + H}")
        # the training file's columns, so that `--covariates all` cannot pick other ones here
        valid = read_series(valid_path, series.target_names, o.time_column, series.covariate_names, o.impute,
                            o.gaps)
        if valid.is_datetime != series.is_datetime:
            raise UserError(f"{valid_path}: the time column holds other values than in {train_path}")
        if o.time_column is not None:
            first = int(valid.times.searchsorted(series.times[-1], side="right"))
        else:  # in row order, the first rows that repeat the training file's are not validation targets
            first = leading_rows_seen(valid.values(), [series.values()])
        valid_origins = window_origins(len(valid), L, H, first)
        if len(valid_origins) == 0:
            raise UserError(f"{valid_path}: no validation window: it needs --lookback {L} rows of history and "
                            f"--horizon {H} rows after the end of {train_path}; it has {len(valid)} rows, "
                            f"{len(valid) - first} of them after it")
    else:
        n_valid = max(math.ceil(cfg.data.valid_fraction * n), H)
        n_train = n - n_valid
        if n_train < L + H:
            raise UserError(f"{train_path}: {n} rows is too short: --lookback {L} + --horizon {H} = {L + H} rows "
                            f"for one training window, plus {n_valid} held out for validation (--valid-fraction "
                            f"{cfg.data.valid_fraction}, at least one horizon); give more rows, a --valid file or "
                            "a shorter --lookback/--horizon")
        valid, valid_origins = series, window_origins(n, L, H, n_train)
        say(f"no --valid given: holding out the last {n_valid} rows of {train_path} for validation")
    train_origins = window_origins(n_train, L, H)

    step = infer_step(series.times)
    cal_names = calendar_names(step) if o.calendar and series.is_datetime else []
    scaler = Scaler.fit(series.values()[:n_train], series.target_names + series.covariate_names)
    feats, cal = _features(series, scaler, cal_names)
    C = len(series.target_names)
    train_src = WindowSource(feats, cal, feats[:, :C], train_origins, L, H, tc.batch_size, shuffle=True,
                             seed=tc.seed)
    vfeats, vcal = (feats, cal) if valid is series else _features(valid, scaler, cal_names)
    valid_src = WindowSource(vfeats, vcal, vfeats[:, :C], valid_origins, L, H, max(tc.batch_size, EVAL_BATCH))

    season = infer_season(step)
    model = build_model(cfg, feats.shape[1], C, len(cal_names), season)
    last_seen = valid.times[-1] if valid_path is not None and o.time_column is not None else series.times[-1]
    meta = {
        "target": series.target_names, "covariates": series.covariate_names, "time_column": o.time_column,
        "time_kind": "row" if o.time_column is None else ("datetime" if series.is_datetime else "index"),
        "step": step.total_seconds() if isinstance(step, pd.Timedelta) else int(step),
        "season": season, "calendar": cal_names, "input_size": feats.shape[1],
        "last_seen": None if o.time_column is None else (str(last_seen) if series.is_datetime else int(last_seen)),
        "train_rows": n_train, "train_windows": len(train_origins), "valid_windows": len(valid_origins),
    }
    if not resume and distributed.is_main():  # under torchrun, rank 0 writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        scaler.save(out / SCALER_FILE)
        write_json(out / SERIES_FILE, meta)
        buf = io.BytesIO()
        np.save(buf, series.targets[:n_train])
        atomic_write(out / INSAMPLE_FILE, buf.getvalue())
        if o.time_column is None:
            buf = io.BytesIO()
            np.savez(buf, train=series.values(), **({} if valid is series else {"valid": valid.values()}))
            atomic_write(out / SEEN_FILE, buf.getvalue())
        write_json(out / CONFIG_FILE, {**cfg.to_dict(), "versions": versions()})
    n_params = sum(p.numel() for p in model.parameters())
    say(f"forecaster: {o.mode} {cfg.model.cell} {cfg.model.num_layers}x{cfg.model.hidden_size}, "
        f"{C} target(s), {feats.shape[1]} inputs per step, lookback {L}, horizon {H}, {n_params:,} parameters; "
        f"{len(train_origins)} training windows, {len(valid_origins)} validation windows")

    trainer = Trainer(model, train_src, valid_src, tc, out, log=log)
    state = trainer.run(resume)
    if not trainer.main:  # under torchrun, rank 0 alone fits the anomaly threshold and scores the test file
        return trainer.summary()

    # The anomaly threshold comes from the best weights' one-step-ahead residuals on validation data.
    run = load(out)
    start = valid_origins[0] if len(valid_origins) else n_train
    residuals = _one_step_residuals(run, vfeats, np.arange(max(start, L), len(valid)))
    _fit_anomaly_threshold(out, residuals, o.anomaly_quantile)
    result: dict[str, Any] = {**trainer.summary(), "best_valid_loss": state.best}
    if test_path is not None:
        result["test"] = evaluate(out, test_path)
        say("test: " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items() if isinstance(v, float)))
    return result


# ------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedForecaster:
    """A trained forecaster with what it needs to read new data."""

    model: Forecaster
    config: RunConfig
    scaler: Scaler
    meta: dict[str, Any]
    run_dir: Path
    device: torch.device

    @property
    def target_size(self) -> int:
        return len(self.meta["target"])


def load(run_dir: str | Path, device: str = "cpu") -> LoadedForecaster:
    """Load a forecast run (config, scaler, series description, best weights) after checking it."""
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir, task="forecast")
    cfg = RunConfig.from_dict(meta, str(run_dir / CONFIG_FILE))
    series_meta = read_json(run_dir / SERIES_FILE)
    missing = [k for k in SERIES_KEYS if k not in series_meta] if isinstance(series_meta, dict) else SERIES_KEYS
    if missing:
        raise UserError(f"{run_dir / SERIES_FILE}: not a forecast run's series description (missing "
                        f"{', '.join(missing)})")
    scaler = Scaler.load(run_dir / SCALER_FILE)
    width = len(series_meta["target"]) + len(series_meta["covariates"])
    if len(scaler.mean) != width or len(scaler.std) != width:
        raise UserError(f"{run_dir / SCALER_FILE}: {len(scaler.mean)} columns; {SERIES_FILE} names {width} "
                        "(targets and covariates)")
    model = build_model(cfg, series_meta["input_size"], len(series_meta["target"]), len(series_meta["calendar"]),
                        series_meta["season"])
    load_weights(run_dir / MODEL_FILE, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return LoadedForecaster(model, cfg, scaler, series_meta, run_dir, dev)


def read_for_run(run: LoadedForecaster, path: str | Path) -> Series:
    """Read a CSV with the columns and settings the run was trained with."""
    m = run.meta
    o = run.config.options
    series = read_series(path, m["target"], m["time_column"], m["covariates"], o.impute, o.gaps)
    _check_same_kind(m, series)
    return series


@torch.no_grad()
def _model_params(run: LoadedForecaster, feats: np.ndarray, origins: np.ndarray, horizon_calendar: np.ndarray
                  ) -> torch.Tensor:
    """(B, H, C, P) model outputs (scaled units) from histories feats[o-L:o] and calendars (B, H, K)."""
    L = run.config.options.lookback
    out = []
    for i in range(0, len(origins), EVAL_BATCH):
        o = origins[i:i + EVAL_BATCH]
        past = o[:, None] + np.arange(-L, 0)[None, :]  # (B, L)
        history = torch.from_numpy(np.ascontiguousarray(feats[past], dtype=np.float32)).to(run.device)
        future = torch.from_numpy(np.ascontiguousarray(horizon_calendar[i:i + EVAL_BATCH], dtype=np.float32))
        out.append(run.model(history, future.to(run.device)).cpu())
    return torch.cat(out) if out else torch.zeros(0, run.config.options.horizon, run.target_size,
                                                  run.model.num_params)


def forecast(run: LoadedForecaster, series: Series, origins: np.ndarray) -> dict[str, np.ndarray]:
    """Forecasts of the H steps from each origin, in the series' units.

    Only rows before an origin are read (and the calendar of the steps ahead, known from the time step).
    Returns:
        {"point": (B, H, C)} and, for probabilistic runs, "lower" and "upper" (B, H, C).
    """
    L, H = run.config.options.lookback, run.config.options.horizon
    origins = np.asarray(origins, dtype=np.int64)
    if len(origins) and int(origins.min()) < L:
        raise UserError(f"{series.path}: a forecast from row {int(origins.min())} needs {L} rows of history")
    feats, _ = _features(series, run.scaler, run.meta["calendar"])
    times = series.times
    cal_all = np.zeros((len(origins), H, len(run.meta["calendar"])), dtype=np.float32)
    if run.meta["calendar"]:
        step = pd.Timedelta(seconds=run.meta["step"])
        for i, o in enumerate(origins):
            ahead = pd.DatetimeIndex([times[o - 1] + step * (k + 1) for k in range(H)])
            cal_all[i] = calendar_features(ahead, run.meta["calendar"])
    params = _model_params(run, feats, origins, cal_all)
    C = run.target_size
    cols = slice(0, C)
    result = {"point": run.scaler.inverse(run.model.point(params).numpy().astype(np.float64), cols)}
    bounds = run.model.interval(params)
    if bounds is not None:
        result["lower"] = run.scaler.inverse(bounds[0].numpy().astype(np.float64), cols)
        result["upper"] = run.scaler.inverse(bounds[1].numpy().astype(np.float64), cols)
    return result


# ---------------------------------------------------------------------------------------- evaluation


def evaluate(run_dir: str | Path, data_path: str | Path, stride: int | None = None, season: int | None = None,
             plot: str | None = None, seen_rows: int | None = None) -> dict[str, Any]:
    """Forecast from every origin whose horizon lies after the rows seen in training, and score.

    The rows seen in training are those at or before the last timestamp seen in training; for a run in row
    order (no time column), the first rows of the file that repeat, value for value, rows seen in training
    (a file that continues the training file, or starts with its last rows as history), or the first
    `seen_rows` rows when that is more. Origins step by `stride` (default: the horizon). Returns mae, rmse,
    mase, smape (data units; sMAPE a fraction in [0, 2]), mse_scaled and mae_scaled (standardised units, as
    the ETT papers report), the interval coverage for probabilistic runs, the number of origins and of rows
    taken as seen, and the same figures for the naive and seasonal-naive forecasts under `baselines`.
    """
    run = load(run_dir)
    L, H = run.config.options.lookback, run.config.options.horizon
    if stride is not None and stride < 1:
        raise UserError(f"--stride: expected an integer >= 1; got {stride}")
    if season is not None and season < 1:
        raise UserError(f"--season: expected an integer >= 1; got {season}")
    insample = _insample(run)
    series = read_for_run(run, data_path)
    first = _seen_until(run, series, seen_rows)
    origins = window_origins(len(series), L, H, first, stride or H)
    if len(origins) == 0:
        seen = (f"after the last timestamp seen in training ({run.meta['last_seen']})"
                if run.meta["time_kind"] != "row" else "after the rows seen in training")
        raise UserError(f"{data_path}: no forecast origin: each needs {L} rows of history (--lookback) and {H} "
                        f"rows (--horizon) {seen}; the file has {len(series)} rows, "
                        f"{len(series) - first} of them after those seen")
    m = season or run.meta["season"]
    y = series.targets
    truth = y[origins[:, None] + np.arange(H)[None, :]]  # (B, H, C)
    found = forecast(run, series, origins)
    scale = metrics.mase_scale(insample, m)
    std = run.scaler.std[:run.target_size]

    def scores(f: np.ndarray) -> dict[str, float]:
        return metrics.forecast_scores(truth, f, scale, std)

    figures: dict[str, Any] = scores(found["point"])
    if "lower" in found:
        inside = (truth >= found["lower"]) & (truth <= found["upper"])
        figures["interval_coverage"] = float(inside.mean())
        qs = run.config.options.quantile_values()
        figures["interval_nominal"] = qs[-1] - qs[0]
    figures["origins"] = len(origins)
    figures["seen_rows"] = first
    figures["season"] = m
    figures["baselines"] = {
        "naive": scores(metrics.naive_forecast(y, origins, H)),
        "seasonal_naive": scores(metrics.seasonal_naive_forecast(y, origins, H, m)),
    }
    if plot:
        viz.plot_forecast_evaluation(plot, series.times, series.targets, origins, found, H, run.meta["target"])
    return figures


# -------------------------------------------------------------------------------------------- anomalies


def _one_step_residuals(run: LoadedForecaster, feats: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, C) scaled residuals y[t] - forecast of y[t] from the L rows before t, for each point t."""
    if len(points) == 0:
        return np.zeros((0, run.target_size))
    H, K = run.config.options.horizon, len(run.meta["calendar"])
    cal = np.zeros((len(points), H, K), dtype=np.float32)
    if K:
        cal[:, 0] = feats[points, -K:]  # the first step's calendar is the point's own row
    params = _model_params(run, feats, points, cal)
    predicted = run.model.point(params)[:, 0].numpy().astype(np.float64)  # (M, C)
    return feats[points, :run.target_size].astype(np.float64) - predicted


def _fit_anomaly_threshold(run_dir: Path, residuals: np.ndarray, quantile: float) -> dict[str, Any]:
    """Scale residuals per series (robust: 1.4826 * MAD) and learn the threshold on the scores (the largest
    absolute scaled residual over the series at each validation point).

    The threshold is the `quantile` of the validation scores, but never below the score a Gaussian residual
    passes with probability 1 - `quantile`: a short validation set alone would put it too low.
    """
    if len(residuals) == 0:
        scale = np.ones(residuals.shape[1])
        threshold = float("inf")
    else:
        centre = np.median(residuals, axis=0)
        mad = 1.4826 * np.median(np.abs(residuals - centre), axis=0)
        scale = np.where(mad > 1e-9, mad, residuals.std(axis=0) + 1e-9)
        scores = np.abs(residuals / scale).max(axis=1)
        C = residuals.shape[1]
        gaussian = normal_quantile(1 - (1 - quantile) / (2 * C))  # P(max_c |z_c| > t) ~ 1 - quantile
        threshold = max(float(np.quantile(scores, quantile)), gaussian)
    d = {"scale": scale.tolist(), "threshold": threshold, "quantile": quantile,
         "validation_points": int(len(residuals))}
    write_json(run_dir / ANOMALY_FILE, d)
    return d


def anomaly_scores(run: LoadedForecaster, series: Series) -> dict[str, np.ndarray]:
    """One-step-ahead scores for every point with a full history (rows L..N-1).

    Returns {"rows", "scores", "column" (index of the series with the largest scaled residual),
    "predicted" (M, C) in data units, "threshold" (0-d)}.
    """
    L = run.config.options.lookback
    path = run.run_dir / ANOMALY_FILE
    info = read_json(path)
    try:
        scale, threshold = np.asarray(info["scale"], dtype=np.float64), float(info["threshold"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{path}: not a valid anomaly threshold file ({e!r})") from None
    if scale.shape != (run.target_size,):
        raise UserError(f"{path}: {scale.size} residual scale(s); the run forecasts {run.target_size} series")
    feats, _ = _features(series, run.scaler, run.meta["calendar"])
    rows = np.arange(L, len(series))
    residuals = _one_step_residuals(run, feats, rows)
    z = np.abs(residuals / scale)
    C = run.target_size
    predicted = run.scaler.inverse(feats[rows, :C].astype(np.float64) - residuals, slice(0, C))
    return {"rows": rows, "scores": z.max(axis=1) if len(rows) else np.zeros(0),
            "column": z.argmax(axis=1) if len(rows) else np.zeros(0, dtype=np.int64),
            "predicted": predicted, "threshold": np.asarray(threshold)}


# -------------------------------------------------------------------------------------------- predict


def _write_table(frame: pd.DataFrame, output_path: str | Path, fmt: str | None) -> None:
    kind = fmt or ("json" if str(output_path).endswith((".json", ".jsonl")) else "csv")
    if kind not in ("csv", "json"):
        raise UserError(f"--format {fmt}: expected csv or json for forecast runs")
    text = frame.to_csv(index=False) if kind == "csv" else frame.to_json(orient="records", indent=2) + "\n"
    if str(output_path) == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(output_path, text)


def _time_label(run: LoadedForecaster) -> str:
    return run.meta["time_column"] or "step"


def predict(run_dir: str | Path, input_path: str | Path, output_path: str | Path, plot: str | None = None,
            anomalies: bool | None = None, format: str | None = None) -> pd.DataFrame:
    """Forecast the horizon after the end of the series in `input_path` (or, with `anomalies`, flag its
    points whose one-step-ahead residual passes the run's threshold) and write CSV or JSON."""
    run = load(run_dir)
    source: Any = sys.stdin if str(input_path) == "-" else input_path
    series = read_for_run(run, source)
    L, H = run.config.options.lookback, run.config.options.horizon
    if len(series) < L + (1 if anomalies else 0):
        need = L + 1 if anomalies else L
        raise UserError(f"{series.path}: {len(series)} rows; the run reads --lookback {L} rows of history, so at "
                        f"least {need} are needed")
    names = run.meta["target"]
    times = series.times
    if anomalies:
        found = anomaly_scores(run, series)
        flagged = np.flatnonzero(found["scores"] > found["threshold"])
        rows = found["rows"][flagged]
        cols = found["column"][flagged]
        frame = pd.DataFrame({
            _time_label(run): [_time_value(series, int(r)) for r in rows],
            "line": rows + 2,
            "column": [names[int(c)] for c in cols],
            "value": series.targets[rows, cols],
            "predicted": found["predicted"][flagged, cols],
            "score": found["scores"][flagged],
        })
        print(f"{len(rows)} of {len(found['rows'])} points flagged (score > threshold "
              f"{float(found['threshold']):.3f})", file=sys.stderr)
        _write_table(frame, output_path, format)
        if plot:
            viz.plot_anomalies(plot, series.times, series.targets, rows, cols, names)
        return frame
    step: Any = pd.Timedelta(seconds=run.meta["step"]) if series.is_datetime else run.meta["step"]
    ahead = future_times(times, H, step)
    found = forecast(run, series, np.array([len(series)]))
    columns: dict[str, Any] = {_time_label(run): [str(t) for t in ahead] if series.is_datetime else list(ahead)}
    qs = run.config.options.quantile_values()
    for c, name in enumerate(names):
        columns[name] = found["point"][0, :, c]
        if "lower" in found:
            columns[f"{name}_q{qs[0]:g}"] = found["lower"][0, :, c]
            columns[f"{name}_q{qs[-1]:g}"] = found["upper"][0, :, c]
    frame = pd.DataFrame(columns)
    _write_table(frame, output_path, format)
    if plot:
        viz.plot_forecast(plot, series.times, series.targets, ahead, found, names, history=max(L, 3 * H))
    return frame
