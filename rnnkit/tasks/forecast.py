"""Forecasting: CSV time series to a trained run, and a run to forecasts, scores and anomaly flags.

What is here: the window batch source, the `forecast` task (a time-ordered hold-out, scaling fitted on
the training part, the anomaly threshold learned on validation data after training; scoring every origin
whose whole horizon lies after the last timestamp seen in training, or, for a series in row order, after
the first rows that repeat rows seen in training, against the naive and seasonal-naive baselines; the
horizon after the end of a series, with intervals and a plot; its answers over HTTP, its exported graph
and its windows for `inspect`), `forecast` (the model's forecasts from given origins, in the data's units)
and the one-step-ahead anomaly scores behind `predict --anomalies`. What is not: the network
(models/forecaster.py), reading and checking CSV files, scaling and windows (data/series.py), the metrics
and baselines themselves (metrics.py), the plots (viz.py), the runner that trains and loads runs
(training.py, runner.py).

A run directory holds, beside the usual files: `scaler.json` (means and standard deviations of the
training part), `series.json` (columns, time step, season, the last timestamp seen in training),
`insample.npy` (the training part's target values, the MASE scale's in-sample data), `anomaly.json`
(the validation residual scale and the threshold) and, for a series in row order, `seen.npz` (the values of
every row seen in training: the training file's, then the validation file's, so that `evaluate` can tell
which rows of a file were seen).
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from rnnkit import metrics, viz
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
from rnnkit.data.split import hold_out
from rnnkit.io import atomic_write, read_json, write_json, write_output
from rnnkit.models.forecaster import Forecaster, normal_quantile
from rnnkit.tasks.base import GraphModule, LoadedRun, Prepared, Say, Task, text_inputs

if TYPE_CHECKING:
    from rnnkit.serve.config import ServeConfig

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


# ------------------------------------------------------------------------------------------- reading


def _read(cfg: RunConfig, path: str | Path) -> Series:
    o = cfg.options
    return read_series(path, o.target or [], o.time_column, o.covariates, o.impute, o.gaps)


def read_for_run(run: LoadedForecaster, path: Any) -> Series:
    """Read a CSV (a path or an open text stream) with the columns and settings the run was trained with."""
    info = run.series_info
    o = run.config.options
    series = read_series(path, info["target"], info["time_column"], info["covariates"], o.impute, o.gaps)
    _check_same_kind(info, series)
    return series


def _check_same_kind(info: dict[str, Any], series: Series) -> None:
    kind = "row" if info["time_column"] is None else ("datetime" if series.is_datetime else "index")
    if kind != info["time_kind"]:
        raise UserError(f"{series.path}: the time column {info['time_column']} holds {kind} values; the run was "
                        f"trained on {info['time_kind']} values")


def _features(series: Series, scaler: Scaler, calendar: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(N, F) model inputs (scaled targets, scaled covariates, calendar) and the (N, K) calendar."""
    cal = calendar_features(series.times, calendar)
    scaled = scaler.transform(series.values()).astype(np.float32)
    return np.concatenate([scaled, cal], axis=1), cal


def _time_value(series: Series, i: int) -> Any:
    t = series.times[i]
    return str(t) if series.is_datetime else int(t)


def _time_label(run: LoadedForecaster) -> str:
    return run.series_info["time_column"] or "step"


# ------------------------------------------------------------------------ rows seen in training


def _seen_until(run: LoadedForecaster, series: Series, seen_rows: int | None = None) -> int:
    """How many first rows of `series` were seen in training.

    With a time column: the rows at or before the last timestamp seen in training. In row order: the first
    rows that repeat rows seen in training (`leading_rows_seen`), or `seen_rows` when the user gives more.
    """
    info = run.series_info
    if info["time_kind"] != "row":
        if seen_rows is not None:
            raise UserError(f"--seen-rows: the run has a time column ({info['time_column']}), so forecasts start "
                            f"after the last timestamp seen in training ({info['last_seen']}); drop the option")
        key = pd.Timestamp(info["last_seen"]) if series.is_datetime else int(info["last_seen"])
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
    width = len(run.series_info["target"]) + len(run.series_info["covariates"])
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


# ------------------------------------------------------------------------------------------ the task


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


def _validation(cfg: RunConfig, series: Series, train_path: str | Path, valid_path: str | Path | None,
                say: Say) -> tuple[int, Series, np.ndarray]:
    """The rows of `series` to train on, the validation series (the --valid file's, or `series` itself with
    its last rows held out) and the origins of its validation windows."""
    o = cfg.options
    L, H = o.lookback, o.horizon
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
        kept, held = hold_out(range(n), cfg.data.valid_fraction, "tail", minimum=H, source=str(train_path),
                              unit="rows")
        n_train, n_valid = len(kept), len(held)
        if n_train < L + H:
            raise UserError(f"{train_path}: {n} rows is too short: --lookback {L} + --horizon {H} = {L + H} "
                            f"rows for one training window, plus {n_valid} held out for validation "
                            f"(--valid-fraction {cfg.data.valid_fraction}, at least one horizon); give more "
                            "rows, a --valid file or a shorter --lookback/--horizon")
        valid, valid_origins = series, window_origins(n, L, H, n_train)
        say(f"no --valid given: holding out the last {n_valid} rows of {train_path} for validation")
    return n_train, valid, valid_origins


def _save_numpy(path: Path, save: Callable[..., None], *arrays: np.ndarray, **named: np.ndarray) -> None:
    """np.save or np.savez into `path`, atomically."""
    buf = io.BytesIO()
    save(buf, *arrays, **named)
    atomic_write(path, buf.getvalue())


@dataclass
class LoadedForecaster(LoadedRun):
    """A trained forecaster with what it needs to read new data: the scaler and the series description
    (series.json: columns, time step, season, calendar, the last timestamp seen in training)."""

    scaler: Scaler
    series_info: dict[str, Any]

    @property
    def target_size(self) -> int:
        return len(self.series_info["target"])


class ForecastTask(Task):
    """A CSV of time series in, the next --horizon steps out; anomaly flags from one-step-ahead residuals."""

    name = "forecast"
    summary = "time-series forecasting with anomaly flags (CSV with a header)"
    loaded_type = LoadedForecaster
    limits_input_chars = False  # a CSV input is bounded by the request's size, not by characters
    inspect_spread = True

    # ---------------------------------------------------------------------------------- training

    def prepare(self, cfg: RunConfig, train_path: str | Path, valid_path: str | Path | None, out: Path,
                resume: bool, say: Say) -> Prepared:
        o, tc = cfg.options, cfg.train
        if not o.target:
            raise UserError("--target: name the column(s) to forecast, e.g. --target OT")
        if cfg.model.bidirectional:
            raise UserError("--bidirectional: a forecaster reads the past left to right; drop the option")
        L, H = o.lookback, o.horizon

        series = _read(cfg, train_path)
        n_train, valid, valid_origins = _validation(cfg, series, train_path, valid_path, say)
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

        last_seen = valid.times[-1] if valid_path is not None and o.time_column is not None else series.times[-1]
        info = {
            "target": series.target_names, "covariates": series.covariate_names, "time_column": o.time_column,
            "time_kind": "row" if o.time_column is None else ("datetime" if series.is_datetime else "index"),
            "step": step.total_seconds() if isinstance(step, pd.Timedelta) else int(step),
            "season": infer_season(step), "calendar": cal_names, "input_size": feats.shape[1],
            "last_seen": None if o.time_column is None else (str(last_seen) if series.is_datetime
                                                             else int(last_seen)),
            "train_rows": n_train, "train_windows": len(train_origins), "valid_windows": len(valid_origins),
        }
        m = cfg.model
        return Prepared(
            train_src, valid_src, {"scaler": scaler, "series_info": info},
            describe=f"forecaster: {o.mode} {m.cell} {m.num_layers}x{m.hidden_size}, {C} target(s), "
                     f"{feats.shape[1]} inputs per step, lookback {L}, horizon {H}, {{params}} parameters; "
                     f"{len(train_origins)} training windows, {len(valid_origins)} validation windows",
            state={"series": series, "valid": valid, "valid_features": vfeats,
                   "valid_start": valid_origins[0] if len(valid_origins) else n_train})

    def build_model(self, cfg: RunConfig, series_info: dict[str, Any]) -> Forecaster:
        return build_model(cfg, series_info["input_size"], len(series_info["target"]), len(series_info["calendar"]),
                           series_info["season"])

    def model_assets(self, assets: dict[str, Any]) -> dict[str, Any]:
        return {"series_info": assets["series_info"]}

    def save(self, out: Path, prepared: Prepared) -> None:
        info, series, valid = prepared.assets["series_info"], prepared.state["series"], prepared.state["valid"]
        prepared.assets["scaler"].save(out / SCALER_FILE)
        write_json(out / SERIES_FILE, info)
        _save_numpy(out / INSAMPLE_FILE, np.save, series.targets[:info["train_rows"]])
        if info["time_column"] is None:
            _save_numpy(out / SEEN_FILE, np.savez, train=series.values(),
                        **({} if valid is series else {"valid": valid.values()}))

    def after_training(self, out: Path, prepared: Prepared, say: Say) -> None:
        """The anomaly threshold, from the best weights' one-step-ahead residuals on the validation data."""
        from rnnkit.tasks import runner

        run = runner.load(out)
        o = run.config.options
        rows = np.arange(max(prepared.state["valid_start"], o.lookback), len(prepared.state["valid"]))
        residuals = _one_step_residuals(run, prepared.state["valid_features"], rows)
        _fit_anomaly_threshold(out, residuals, o.anomaly_quantile)

    # ------------------------------------------------------------------------------ using a run

    def load_assets(self, run_dir: Path, cfg: RunConfig, meta: dict[str, Any]) -> dict[str, Any]:
        info = read_json(run_dir / SERIES_FILE)
        missing = [k for k in SERIES_KEYS if k not in info] if isinstance(info, dict) else SERIES_KEYS
        if missing:
            raise UserError(f"{run_dir / SERIES_FILE}: not a forecast run's series description (missing "
                            f"{', '.join(missing)})")
        scaler = Scaler.load(run_dir / SCALER_FILE)
        width = len(info["target"]) + len(info["covariates"])
        if len(scaler.mean) != width or len(scaler.std) != width:
            raise UserError(f"{run_dir / SCALER_FILE}: {len(scaler.mean)} columns; {SERIES_FILE} names {width} "
                            "(targets and covariates)")
        return {"scaler": scaler, "series_info": info}

    def evaluate(self, run: LoadedForecaster, data_path: str | Path, stride: int | None = None,
                 season: int | None = None, plot: str | None = None, seen_rows: int | None = None) -> dict[str, Any]:
        """Forecast from every origin whose horizon lies after the rows seen in training, and score.

        The rows seen in training are those at or before the last timestamp seen in training; for a run in
        row order (no time column), the first rows of the file that repeat, value for value, rows seen in
        training (a file that continues the training file, or starts with its last rows as history), or the
        first `seen_rows` rows when that is more. Origins step by `stride` (default: the horizon). Returns mae,
        rmse, mase, smape (data units; sMAPE a fraction in [0, 2]), mse_scaled and mae_scaled (standardised
        units, as the ETT papers report), the interval coverage for probabilistic runs, the number of origins
        and of rows taken as seen, and the same figures for the naive and seasonal-naive forecasts under
        `baselines`.
        """
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
            seen = (f"after the last timestamp seen in training ({run.series_info['last_seen']})"
                    if run.series_info["time_kind"] != "row" else "after the rows seen in training")
            raise UserError(f"{data_path}: no forecast origin: each needs {L} rows of history (--lookback) and {H} "
                            f"rows (--horizon) {seen}; the file has {len(series)} rows, "
                            f"{len(series) - first} of them after those seen")
        m = season or run.series_info["season"]
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
            viz.plot_forecast_evaluation(plot, series.times, series.targets, origins, found, H,
                                         run.series_info["target"])
        return figures

    def predict(self, run: LoadedForecaster, input_path: str | Path, output_path: str | Path,
                plot: str | None = None, anomalies: bool | None = None, format: str | None = None) -> pd.DataFrame:
        """Forecast the horizon after the end of the series in `input_path` ("-": standard input), or, with
        `anomalies`, flag its points whose one-step-ahead residual passes the run's threshold; write CSV or
        JSON to `output_path` ("-": standard output)."""
        source: Any = sys.stdin if str(input_path) == "-" else input_path
        series = read_for_run(run, source)
        L, H = run.config.options.lookback, run.config.options.horizon
        if len(series) < L + (1 if anomalies else 0):
            need = L + 1 if anomalies else L
            raise UserError(f"{series.path}: {len(series)} rows; the run reads --lookback {L} rows of history, so "
                            f"at least {need} are needed")
        names = run.series_info["target"]
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
        ahead = _times_ahead(run, series)
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

    # ------------------------------------------------------------------ serving, export, inspect

    def answer(self, run: LoadedForecaster, inputs: list[Any], config: ServeConfig) -> list[dict[str, Any]]:
        """Each input is the text of a CSV file with the run's columns; the answer forecasts past its end and
        sends back the last rows of its first target as history."""
        out = []
        L, H = run.config.options.lookback, run.config.options.horizon
        names = run.series_info["target"]
        for i, text in enumerate(text_inputs(inputs)):
            buf = io.StringIO(text)
            buf.name = f"inputs.{i}"
            try:
                series = read_for_run(run, buf)
            except UserError as e:
                raise UserError(f"inputs.{i}: {e}") from None
            if len(series) < L:
                raise UserError(f"inputs.{i}: {len(series)} rows; the run reads {L} rows of history")
            found = forecast(run, series, np.array([len(series)]))
            keep = min(len(series), max(L, 3 * H))
            answer: dict[str, Any] = {
                "target": names[0],
                "times": [str(t) for t in _times_ahead(run, series)],
                "history": [float(v) for v in series.targets[-keep:, 0]],
                "forecast": [float(v) for v in found["point"][0, :, 0]],
                "series": {name: [float(v) for v in found["point"][0, :, c]] for c, name in enumerate(names)},
            }
            if "lower" in found:
                answer["lower"] = [float(v) for v in found["lower"][0, :, 0]]
                answer["upper"] = [float(v) for v in found["upper"][0, :, 0]]
            out.append(answer)
        return out

    def describe_run(self, run: LoadedForecaster) -> dict[str, Any]:
        o, info = run.config.options, run.series_info
        return {"target": list(info["target"]), "lookback": o.lookback, "horizon": o.horizon,
                "columns": [c for c in [info.get("time_column"), *info["target"], *(info.get("covariates") or [])]
                            if c]}

    def export_graphs(self, run: LoadedForecaster) -> list[Any]:
        """One graph in the model's scaled units (scaler.json holds the scaling): the history length is free,
        the horizon is the run's."""
        from rnnkit.export import Graph

        model = run.model.eval()
        o = run.config.options
        F_in, K = run.series_info["input_size"], len(run.series_info["calendar"])
        shortest = model.season if model.level == "season" else 1

        def make(sizes: dict[str, int]) -> tuple[torch.Tensor, ...]:
            return torch.randn(sizes["B"], sizes["L"], F_in), torch.randn(sizes["B"], o.horizon, K)

        traced = max(o.lookback, shortest + 2)  # a size the checks below do not use
        return [Graph("forecast", _ForecastGraph(model), make({"B": 3, "L": traced}), ["history", "future"],
                      ["params"], {"history": {0: "B", 1: "L"}, "future": {0: "B"}}, make,
                      check_sizes=[{"B": 1, "L": shortest}, {"B": 6, "L": traced + 9}], smallest={"L": shortest})]

    def encoder_sequences(self, run: LoadedForecaster, data_path: str | Path
                          ) -> tuple[nn.Module, list[Any], Callable[..., torch.Tensor]]:
        """Every window of the file (a lookback of history, labelled by row, then the horizon's targets); the
        loss is the forecast's over the horizon after the history."""
        from rnnkit.diagnostics import InspectSequence

        o = run.config.options
        series = read_for_run(run, data_path)
        feats, cal = _features(series, run.scaler, run.series_info["calendar"])
        origins = window_origins(len(series), o.lookback, o.horizon)
        source = WindowSource(feats, cal, feats[:, :run.target_size], origins, o.lookback, o.horizon, 1)
        found = [InspectSequence(batch, [str(int(i)) for i in range(int(at) - o.lookback, int(at))])
                 for at, batch in zip(origins, source.batches(0), strict=True)]

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            return run.model.loss(batch).loss

        return run.model.encoder, found, loss


TASK = ForecastTask()


class _ForecastGraph(GraphModule):
    """Export: history (B, L, F), calendar of the steps ahead (B, H, K) -> distribution parameters (B, H, C, P).

    L is free: the encoder reads a history of any length (the run was trained on --lookback rows; a level
    'season' model needs at least one season of them). H is the run's --horizon, fixed by the output layer.
    """

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.model(inputs[0], inputs[1]),)


# ------------------------------------------------------------------------------------------ forecasts


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
    calendar = run.series_info["calendar"]
    origins = np.asarray(origins, dtype=np.int64)
    if len(origins) and int(origins.min()) < L:
        raise UserError(f"{series.path}: a forecast from row {int(origins.min())} needs {L} rows of history")
    feats, _ = _features(series, run.scaler, calendar)
    times = series.times
    cal_all = np.zeros((len(origins), H, len(calendar)), dtype=np.float32)
    if calendar:
        step = pd.Timedelta(seconds=run.series_info["step"])
        for i, o in enumerate(origins):
            ahead = pd.DatetimeIndex([times[o - 1] + step * (k + 1) for k in range(H)])
            cal_all[i] = calendar_features(ahead, calendar)
    params = _model_params(run, feats, origins, cal_all)
    C = run.target_size
    cols = slice(0, C)
    result = {"point": run.scaler.inverse(run.model.point(params).numpy().astype(np.float64), cols)}
    bounds = run.model.interval(params)
    if bounds is not None:
        result["lower"] = run.scaler.inverse(bounds[0].numpy().astype(np.float64), cols)
        result["upper"] = run.scaler.inverse(bounds[1].numpy().astype(np.float64), cols)
    return result


def _times_ahead(run: LoadedForecaster, series: Series) -> Any:
    """The times of the H steps after the end of the series."""
    step: Any = run.series_info["step"]
    if series.is_datetime:
        step = pd.Timedelta(seconds=step)
    return future_times(series.times, run.config.options.horizon, step)


# -------------------------------------------------------------------------------------------- anomalies


def _one_step_residuals(run: LoadedForecaster, feats: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, C) scaled residuals y[t] - forecast of y[t] from the L rows before t, for each point t."""
    if len(points) == 0:
        return np.zeros((0, run.target_size))
    H, K = run.config.options.horizon, len(run.series_info["calendar"])
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
    feats, _ = _features(series, run.scaler, run.series_info["calendar"])
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
    write_output(output_path, frame.to_csv(index=False) if kind == "csv"
                 else frame.to_json(orient="records", indent=2) + "\n")

