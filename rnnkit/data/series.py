"""Time series from CSV files: reading with checks, imputation, scaling, calendar features and windows.

What is here: `read_series` (a CSV with a header read by pandas into a checked `Series`: numeric
cells, sorted unique timestamps, missing values interpolated with a counted warning or refused, gaps in a
regular time grid counted with a warning or refused),
`calendar_features` derived from timestamps, `infer_step` / `infer_season` / `future_times`,
`Scaler` (per-column standardisation fitted on training rows only, saved as JSON), `window_origins`
(where forecasts may start: a whole history before, a whole horizon after) and `leading_rows_seen` (how
many first rows of a file repeat rows seen before, for series in row order). What is not: the forecast
metrics and baselines (metrics.py), models, training, or anything that touches the command line.

Rows are counted as in the file: the header is line 1, so the first data row is line 2.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from rnnkit.config import UserError
from rnnkit.io import atomic_write_text

DAY = pd.Timedelta(days=1)


@dataclass
class Series:
    """A checked multivariate time series.

    Attributes:
        path: the file it came from (for messages).
        times: (N,) timestamps: a DatetimeIndex, or an integer index (the time column's values or row order).
        targets: (N, C) float64 values of the target columns.
        covariates: (N, K) float64 values of the covariate columns (K may be 0).
        target_names, covariate_names: the column names, in order.
        imputed: how many cells were filled by interpolation.
    """

    path: str
    times: pd.Index
    targets: np.ndarray
    covariates: np.ndarray
    target_names: list[str]
    covariate_names: list[str]
    imputed: int = 0

    def __len__(self) -> int:
        return len(self.times)

    @property
    def is_datetime(self) -> bool:
        return isinstance(self.times, pd.DatetimeIndex)

    def values(self) -> np.ndarray:
        """(N, C + K): targets then covariates."""
        return np.concatenate([self.targets, self.covariates], axis=1)


def _line(row: int) -> int:
    """File line of a 0-based data row (the header is line 1)."""
    return row + 2


def read_series(
    path: str | Path | IO[str],
    target: list[str],
    time_column: str | None = None,
    covariates: list[str] | None = None,
    impute: bool = True,
    gaps: bool = True,
) -> Series:
    """Read a CSV with a header into a checked `Series`.

    Args:
        path: the CSV file, or an open text stream (standard input).
        target: the column(s) to forecast.
        time_column: the timestamps (parsed as dates, or integers used as an index); None: row order.
        covariates: other numeric columns read as inputs; ["all"]: every other column whose cells are
            mostly numbers (a few bad cells in one are reported like those of a named column; the
            columns left out are named in a warning); None: none.
        impute: fill missing cells by linear interpolation (edges by the nearest value) with a warning;
            False: refuse them.
        gaps: accept gaps in a regular time grid (steps longer than the usual one) with a warning that
            counts them; False: refuse them.
    Raises:
        UserError naming the file, line and column for unreadable files, unknown columns, non-numeric
        cells, missing cells (with impute off), unparseable, unsorted or duplicate timestamps, gaps (with
        gaps off).
    """
    source = path
    path = Path(path) if isinstance(path, str | Path) else Path(getattr(path, "name", "<stdin>"))
    if not target:
        raise UserError("--target: name the column(s) to forecast, e.g. --target OT")
    try:
        frame = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable CSV file: {e}") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty; expected a CSV with a header") from None
    if frame.empty:
        raise UserError(f"{path}: no data rows after the header")
    columns = list(frame.columns)
    for name, flag in [(c, "--target") for c in target] + (
            [(time_column, "--time-column")] if time_column else []):
        if name not in columns:
            raise UserError(f"{path}: {flag} {name}: no such column; the header has: {', '.join(columns)}")
    if len(set(target)) != len(target):
        raise UserError(f"--target: a column is named twice: {' '.join(target)}")
    if time_column in target:
        raise UserError(f"--target {time_column}: this is the --time-column; choose the value column(s)")

    if covariates == ["all"]:
        rest = [c for c in columns if c not in target and c != time_column]
        covariates = [c for c in rest if _mostly_numeric(frame[c])]
        left_out = [_first_text_cell(frame[c], c) for c in rest if c not in covariates]
        if left_out:
            warnings.warn(f"{path}: --covariates all: left out {len(left_out)} column(s) that do not hold "
                          f"numbers: {'; '.join(left_out)}", stacklevel=2)
    covariates = list(covariates or [])
    for c in covariates:
        if c not in columns:
            raise UserError(f"{path}: --covariates {c}: no such column; the header has: {', '.join(columns)}")
        if c in target or c == time_column:
            raise UserError(f"--covariates {c}: this column is already the target or the time column")

    times = _parse_times(frame, time_column, path)
    if time_column is not None:
        _check_gaps(times, frame[time_column].str.strip(), time_column, path, gaps)
    values, missing = _parse_numbers(frame, list(target) + covariates, path)
    imputed = int(missing.sum())
    if imputed:
        rows, cols = np.nonzero(missing)
        first = f"line {_line(int(rows[0]))}, column {(list(target) + covariates)[int(cols[0])]}"
        if not impute:
            raise UserError(f"{path}: {imputed} missing value(s), the first at {first}; fill them or drop "
                            "--no-impute to interpolate")
        for j in range(values.shape[1]):
            if missing[:, j].all():
                name = (list(target) + covariates)[j]
                raise UserError(f"{path}: column {name} has no values at all")
        filled = pd.DataFrame(values).interpolate(method="linear", limit_area="inside").ffill().bfill()
        values = filled.to_numpy(dtype=np.float64)
        warnings.warn(f"{path}: {imputed} missing value(s) filled by linear interpolation (the first at {first})",
                      stacklevel=2)
    C = len(target)
    return Series(str(path), times, values[:, :C], values[:, C:], list(target), covariates, imputed)


MISSING_CELLS = ["", "NA", "NaN", "nan", "N/A", "null", "NULL", "None"]
NUMERIC_SHARE = 0.9  # `--covariates all` takes a column when this share of its filled cells are numbers


def _mostly_numeric(column: pd.Series) -> bool:
    """Whether most filled cells are numbers: a column of numbers with a few typos is still one (and the
    typos are then reported by line), a column of names or codes is not."""
    cells = column.str.strip()
    cells = cells[~cells.isin(MISSING_CELLS)]
    return len(cells) > 0 and float(pd.to_numeric(cells, errors="coerce").notna().mean()) >= NUMERIC_SHARE


def _first_text_cell(column: pd.Series, name: str) -> str:
    """'NAME (line N: 'cell')' for the first filled cell that is not a number, or 'NAME (empty)'."""
    cells = column.str.strip()
    text = (~cells.isin(MISSING_CELLS) & pd.to_numeric(cells, errors="coerce").isna()).to_numpy()
    if not text.any():
        return f"{name} (empty)"
    row = int(np.flatnonzero(text)[0])
    return f"{name} (line {_line(row)}: {cells.iloc[row]!r})"


def _parse_numbers(frame: pd.DataFrame, names: list[str], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, len(names)) float64 values and a mask of the missing (empty or NaN) cells."""
    values = np.empty((len(frame), len(names)))
    missing = np.zeros((len(frame), len(names)), dtype=bool)
    for j, name in enumerate(names):
        cells = frame[name].str.strip()
        empty = cells.isin(MISSING_CELLS)
        numbers = pd.to_numeric(cells.where(~empty), errors="coerce")
        bad = numbers.isna() & ~empty
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise UserError(f"{path}: line {_line(row)}, column {name}: expected a number; got {cells.iloc[row]!r}"
                            + (f" ({int(bad.sum())} such cells)" if bad.sum() > 1 else ""))
        inf = np.isinf(numbers.to_numpy(dtype=np.float64))
        if inf.any():
            row = int(np.flatnonzero(inf)[0])
            raise UserError(f"{path}: line {_line(row)}, column {name}: expected a finite number; got "
                            f"{cells.iloc[row]!r}")
        values[:, j] = numbers.to_numpy(dtype=np.float64)
        missing[:, j] = np.isnan(values[:, j])
    return values, missing


def _parse_times(frame: pd.DataFrame, time_column: str | None, path: Path) -> pd.Index:
    """The time column as a DatetimeIndex or an integer index, checked sorted and unique."""
    if time_column is None:
        return pd.RangeIndex(len(frame))
    cells = frame[time_column].str.strip()
    empty = np.flatnonzero((cells == "").to_numpy())
    if len(empty):
        raise UserError(f"{path}: line {_line(int(empty[0]))}, column {time_column}: missing timestamp")
    numbers = pd.to_numeric(cells, errors="coerce")
    times: pd.Index
    if numbers.notna().all():
        if not (numbers == numbers.round()).all():
            row = int(np.flatnonzero((numbers != numbers.round()).to_numpy())[0])
            raise UserError(f"{path}: line {_line(row)}, column {time_column}: an index must be an integer; "
                            f"got {cells.iloc[row]!r}")
        times = pd.Index(numbers.astype(np.int64).to_numpy())
    else:
        parsed = pd.to_datetime(cells, errors="coerce", format="mixed")
        if parsed.isna().any():
            row = int(np.flatnonzero(parsed.isna().to_numpy())[0])
            raise UserError(f"{path}: line {_line(row)}, column {time_column}: expected a date/time or an integer "
                            f"index; got {cells.iloc[row]!r}")
        if getattr(parsed.dt, "tz", None) is not None:
            parsed = parsed.dt.tz_convert("UTC").dt.tz_localize(None)
        times = pd.DatetimeIndex(parsed)
    step = np.diff(_ticks(times))
    if (step <= 0).any():
        i = int(np.flatnonzero(step <= 0)[0]) + 1
        what = "duplicate timestamp" if step[i - 1] == 0 else "timestamps not sorted"
        raise UserError(f"{path}: line {_line(i)}, column {time_column}: {what}: {cells.iloc[i]!r} after "
                        f"{cells.iloc[i - 1]!r} on line {_line(i - 1)}; expected strictly increasing times")
    return times


GAP_FACTOR = 1.5  # a step this many times the usual one or more is a gap (a missing row doubles it)
REGULAR_SHARE = 0.5  # a grid is regular when this share of its steps lie within 10% of the usual step


def _check_gaps(times: pd.Index, cells: pd.Series, time_column: str, path: Path, allow: bool) -> None:
    """Count the steps of a regular time grid that are longer than the usual one; warn, or refuse.

    The rows either side of a gap are read as neighbours, so a model sees a jump it was not trained for.
    Irregular timestamps (events) have no usual step and are not checked.
    """
    if len(times) < 3:
        return
    steps = np.diff(_ticks(times)).astype(np.float64)
    usual = float(np.median(steps))
    if np.mean(np.abs(steps - usual) <= 0.1 * usual) < REGULAR_SHARE:
        return
    gap = np.flatnonzero(steps >= GAP_FACTOR * usual)
    if len(gap) == 0:
        return
    i = int(gap[0])
    first = (f"the first between line {_line(i)} ({cells.iloc[i]}) and line {_line(i + 1)} "
             f"({cells.iloc[i + 1]})")
    missed = int(np.maximum(np.round(steps[gap] / usual) - 1, 1).sum())
    what = (f"{len(gap)} gap(s) in column {time_column}, about {missed} missing step(s) in all (steps of "
            f"{GAP_FACTOR:g} or more times the usual {_step_text(infer_step(times))}), {first}")
    if not allow:
        raise UserError(f"{path}: {what}; add the missing rows (empty cells are interpolated) or drop --no-gaps "
                        "to read the rows either side as neighbours")
    warnings.warn(f"{path}: {what}; the rows either side are read as neighbours", stacklevel=3)


# ----------------------------------------------------------------------------- time and calendar


def _step_text(step: pd.Timedelta | int) -> str:
    """'1 hour', '15 minutes', '7 days' for a Timedelta; the number for an index."""
    if not isinstance(step, pd.Timedelta):
        return str(step)
    for unit, size in (("day", DAY), ("hour", pd.Timedelta(hours=1)), ("minute", pd.Timedelta(minutes=1)),
                       ("second", pd.Timedelta(seconds=1))):
        if step >= size and step % size == pd.Timedelta(0):
            n = int(step // size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return str(step)


def _ticks(times: pd.Index) -> np.ndarray:
    """Timestamps as int64 nanoseconds (whatever resolution pandas chose), or the index itself."""
    if isinstance(times, pd.DatetimeIndex):
        return times.to_numpy().astype("datetime64[ns]").astype(np.int64)
    return times.to_numpy().astype(np.int64)


def infer_step(times: pd.Index) -> pd.Timedelta | int:
    """The usual distance between neighbouring timestamps (the median), a Timedelta or an integer."""
    if len(times) < 2:
        return pd.Timedelta(hours=1) if isinstance(times, pd.DatetimeIndex) else 1
    diffs = np.diff(_ticks(times))
    median = int(np.median(diffs))
    return pd.Timedelta(median, unit="ns") if isinstance(times, pd.DatetimeIndex) else max(median, 1)


def infer_season(step: pd.Timedelta | int) -> int:
    """Season length in steps from the time step: a day of sub-daily steps, a week of days, a year of
    weeks, months or quarters; 1 (no season) for an index."""
    if not isinstance(step, pd.Timedelta):
        return 1
    if step < DAY and DAY % step == pd.Timedelta(0):
        return int(DAY / step)
    days = step / DAY
    if days == 1:
        return 7
    if days == 7:
        return 52
    if 28 <= days <= 31:
        return 12
    if 89 <= days <= 92:
        return 4
    return 1


def future_times(times: pd.Index, horizon: int, step: pd.Timedelta | int) -> pd.Index:
    """The `horizon` timestamps after the last one, `step` apart."""
    last = times[-1]
    if isinstance(times, pd.DatetimeIndex):
        return pd.DatetimeIndex([last + step * (k + 1) for k in range(horizon)])
    return pd.Index([int(last) + int(step) * (k + 1) for k in range(horizon)])


def calendar_names(step: pd.Timedelta | int | None) -> list[str]:
    """The calendar features for a time step: hour of day below daily steps, day of week below weekly
    steps, day of year always; each as a sine/cosine pair. None for integer indexes."""
    if not isinstance(step, pd.Timedelta):
        return []
    names = []
    if step < DAY:
        names.append("hour")
    if step < 7 * DAY:
        names.append("weekday")
    names.append("yearday")
    return [f"{n}_{f}" for n in names for f in ("sin", "cos")]


def calendar_features(times: pd.Index, names: list[str]) -> np.ndarray:
    """(N, len(names)) float32 calendar features of `times` (see `calendar_names`)."""
    if not names:
        return np.zeros((len(times), 0), dtype=np.float32)
    t = pd.DatetimeIndex(times)
    phase = {
        "hour": (t.hour + t.minute / 60 + t.second / 3600) / 24,
        "weekday": (t.day_of_week + t.hour / 24) / 7,
        "yearday": (t.day_of_year - 1) / 365.25,
    }
    out = []
    for name in names:
        base, fn = name.rsplit("_", 1)
        angle = 2 * math.pi * np.asarray(phase[base], dtype=np.float64)
        out.append(np.sin(angle) if fn == "sin" else np.cos(angle))
    return np.stack(out, axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------- scaling


@dataclass
class Scaler:
    """Per-column standardisation: (x - mean) / std, fitted on training rows only."""

    mean: np.ndarray
    std: np.ndarray
    names: list[str]

    @classmethod
    def fit(cls, values: np.ndarray, names: list[str]) -> Scaler:
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)  # a constant column is shifted, not divided by zero
        return cls(mean, std, list(names))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.std

    def inverse(self, values: np.ndarray, columns: slice | None = None) -> np.ndarray:
        """Undo the scaling on values whose last axis holds `columns` of the fitted columns."""
        cols = columns or slice(None)
        return values * self.std[cols] + self.mean[cols]

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps({"columns": self.names, "mean": self.mean.tolist(),
                                            "std": self.std.tolist()}, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Scaler:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(np.asarray(d["mean"], dtype=np.float64), np.asarray(d["std"], dtype=np.float64),
                       list(d["columns"]))
        except FileNotFoundError:
            raise UserError(f"{path}: not found (is this a forecast run directory?)") from None
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{path}: not a valid scaler file ({e})") from None


# ------------------------------------------------------------------------------------- windows


def window_origins(n: int, lookback: int, horizon: int, first: int = 0, stride: int = 1) -> np.ndarray:
    """Origins o (index of the first forecast step) with o >= max(first, lookback) and o + horizon <= n."""
    start = max(first, lookback)
    return np.arange(start, n - horizon + 1, stride, dtype=np.int64)


def leading_rows_seen(values: np.ndarray, seen: list[np.ndarray]) -> int:
    """How many first rows of `values` repeat rows seen before, compared value for value.

    The rows must repeat a run of consecutive rows of one of the `seen` arrays; when that run reaches the end of
    its array, the rows after it may repeat a run of another (a validation file after the training file).
    Used for series in row order, where no timestamp says which rows are new.

    Args:
        values: (N, F) the rows of a file.
        seen: arrays (M, F) of rows seen before, in their order.
    """
    ids: dict[bytes, int] = {}

    def codes(a: np.ndarray) -> list[int]:
        rows = np.ascontiguousarray(a, dtype=np.float64) + 0.0  # + 0.0: -0.0 and 0.0 read alike
        return [ids.setdefault(row.tobytes(), len(ids)) for row in rows]

    rows = codes(values)
    runs = [codes(s) for s in seen if len(s)]
    pos = 0
    while pos < len(rows):
        best, to_end = 0, False
        for run in runs:
            common = _z_array(rows[pos:] + [-1] + run)[len(rows) - pos + 1:]  # (M,) match length at each start
            for start, length in enumerate(common):
                if length > best or (length == best and length and start + length == len(run)):
                    best, to_end = length, start + length == len(run)
        pos += best
        if not to_end:
            break
    return pos


def _z_array(seq: list[int]) -> list[int]:
    """z[i]: the length of the longest common prefix of seq and seq[i:] (z[0] = len(seq))."""
    n = len(seq)
    z = [0] * n
    if n:
        z[0] = n
    left = right = 0
    for i in range(1, n):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < n and seq[z[i]] == seq[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z


def to_jsonable(x: Any) -> Any:
    """numpy scalars and arrays to plain Python for json."""
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x
