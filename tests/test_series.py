"""Time-series reading and helpers: checks with line and column, imputation, calendar, scaling, windows."""

import io
import warnings

import numpy as np
import pandas as pd
import pytest

from rnnkit.config import UserError
from rnnkit.data.series import (
    Scaler,
    calendar_features,
    calendar_names,
    future_times,
    infer_season,
    infer_step,
    leading_rows_seen,
    read_series,
    window_origins,
)


def write(tmp_path, text, name="s.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_targets_covariates_and_dates(tmp_path):
    path = write(tmp_path, "t,a,b,c\n2020-01-01 00:00,1,2,x\n2020-01-01 01:00,2,4,y\n2020-01-01 02:00,3,6,z\n")
    with pytest.warns(UserWarning, match=r"--covariates all: left out 1 column\(s\) that do not hold numbers: "
                                         r"c \(line 2: 'x'\)$"):
        s = read_series(path, ["a"], "t", ["all"])
    assert s.is_datetime and s.covariate_names == ["b"]  # c is not numeric: not a covariate
    np.testing.assert_array_equal(s.values(), [[1, 2], [2, 4], [3, 6]])
    assert infer_step(s.times) == pd.Timedelta(hours=1)
    s = read_series(path, ["a", "b"], None)
    assert list(s.times) == [0, 1, 2] and s.targets.shape == (3, 2) and s.covariates.shape == (3, 0)


@pytest.mark.parametrize("text, expected", [
    ("t,a\n1,1\n2,oops\n3,3\n", r"s\.csv: line 3, column a: expected a number; got 'oops'"),
    ("t,a\n1,1\n1,2\n", r"line 3, column t: duplicate timestamp: '1' after '1' on line 2"),
    ("t,a\n2,1\n1,2\n", r"line 3, column t: timestamps not sorted"),
    ("t,a\n2020-01-01,1\nnever,2\n", r"line 3, column t: expected a date/time or an integer index; got 'never'"),
    ("t,a\n1,1\n2,inf\n", r"line 3, column a: expected a finite number"),
    ("t,b\n1,1\n", r"--target a: no such column; the header has: t, b"),
])
def test_bad_files_name_line_and_column(tmp_path, text, expected):
    with pytest.raises(UserError, match=expected):
        read_series(write(tmp_path, text), ["a"], "t")


def test_missing_values_interpolated_with_a_count_or_refused(tmp_path):
    path = write(tmp_path, "t,a,b\n1,1,10\n2,,20\n3,,\n4,4,40\n5,5,\n")
    with pytest.warns(UserWarning, match=r"4 missing value\(s\) filled by linear interpolation \(the first at line 3, "
                                         r"column a\)"):
        s = read_series(path, ["a"], "t", ["b"])
    np.testing.assert_allclose(s.targets[:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_allclose(s.covariates[:, 0], [10, 20, 30, 40, 40])  # a trailing gap takes the last value
    assert s.imputed == 4
    with pytest.raises(UserError, match=r"4 missing value\(s\), the first at line 3, column a.*--no-impute"):
        read_series(path, ["a"], "t", ["b"], impute=False)


def test_step_season_and_future_times():
    hours = pd.date_range("2021-03-01", periods=5, freq="h")
    assert infer_season(infer_step(hours)) == 24
    assert infer_season(infer_step(pd.date_range("2021-03-01", periods=5, freq="15min"))) == 96
    assert infer_season(infer_step(pd.date_range("2021-03-01", periods=5, freq="D"))) == 7
    assert infer_season(infer_step(pd.date_range("2021-01-01", periods=5, freq="MS"))) == 12
    assert infer_season(infer_step(pd.Index([3, 5, 7]))) == 1
    assert list(future_times(hours, 2, pd.Timedelta(hours=1))) == [pd.Timestamp("2021-03-01 05:00"),
                                                                  pd.Timestamp("2021-03-01 06:00")]
    assert list(future_times(pd.Index([3, 5, 7]), 2, 2)) == [9, 11]


def test_calendar_features_are_periodic_phases():
    names = calendar_names(pd.Timedelta(hours=1))
    assert names == ["hour_sin", "hour_cos", "weekday_sin", "weekday_cos", "yearday_sin", "yearday_cos"]
    assert calendar_names(pd.Timedelta(days=1)) == names[2:] and calendar_names(1) == []
    t = pd.DatetimeIndex(["2021-03-01 06:00", "2021-03-02 06:00", "2021-03-08 06:00"])  # Monday, Tuesday, Monday
    f = calendar_features(t, names)
    np.testing.assert_allclose(f[:, 0], 1.0, atol=1e-6)  # 06:00 is a quarter of the day: sin = 1
    np.testing.assert_allclose(f[0, 2:4], f[2, 2:4], atol=1e-6)  # a week apart: the same weekday phase
    assert not np.allclose(f[0, 2:4], f[1, 2:4])


def test_scaler_fits_and_round_trips(tmp_path):
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    s = Scaler.fit(x, ["a", "b"])
    np.testing.assert_allclose(s.transform(x)[:, 0], (x[:, 0] - 3) / np.std(x[:, 0]))
    np.testing.assert_allclose(s.transform(x)[:, 1], 0.0)  # a constant column is shifted, not divided by 0
    s.save(tmp_path / "scaler.json")
    back = Scaler.load(tmp_path / "scaler.json")
    np.testing.assert_allclose(back.inverse(back.transform(x)), x)


def test_window_origins_keep_history_and_horizon_inside():
    assert list(window_origins(10, 3, 2)) == [3, 4, 5, 6, 7, 8]
    assert list(window_origins(10, 3, 2, first=6)) == [6, 7, 8]
    assert list(window_origins(10, 3, 2, stride=2)) == [3, 5, 7]
    assert len(window_origins(4, 3, 2)) == 0


def test_reading_warns_nothing_on_clean_files(tmp_path):
    path = write(tmp_path, "t,a\n1,1\n2,2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_series(path, ["a"], "t")


def test_reads_an_open_stream_and_names_it_in_messages():
    stream = io.StringIO("t,a\n1,1\n2,x\n")
    stream.name = "inputs.0"
    with pytest.raises(UserError, match=r"^inputs\.0: line 3, column a: expected a number"):
        read_series(stream, ["a"], "t")
    assert read_series(io.StringIO("a\n1\n2\n"), ["a"]).targets.shape == (2, 1)


def hourly_csv(n=60, drop=(), extra_column=None):
    """An hourly CSV (t, a, b) of n rows without the rows in `drop`; `extra_column` maps row -> cell of b."""
    times = pd.date_range("2021-03-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M")
    lines = ["t,a,b"]
    for i, t in enumerate(times):
        if i not in drop:
            lines.append(f"{t},{i % 7},{(extra_column or {}).get(i, i * 0.5)}")
    return "\n".join(lines) + "\n"


def test_covariates_all_keeps_a_numeric_column_with_a_bad_cell_and_names_it(tmp_path):
    path = write(tmp_path, hourly_csv(extra_column={57: '"12,5x"'}))
    expected = r"s\.csv: line 59, column b: expected a number; got '12,5x'$"
    with pytest.raises(UserError, match=expected):
        read_series(path, ["a"], "t", ["b"])
    with pytest.raises(UserError, match=expected):  # the same message as naming the column
        read_series(path, ["a"], "t", ["all"])


def test_covariates_all_names_the_columns_it_leaves_out(tmp_path):
    codes = {i: "x" if i % 2 else "" for i in range(60)}  # codes and empty cells: not a numeric column
    with pytest.warns(UserWarning, match=r"left out 1 column\(s\) that do not hold numbers: b \(line 3: 'x'\)"):
        s = read_series(write(tmp_path, hourly_csv(extra_column=codes)), ["a"], "t", ["all"])
    assert s.covariate_names == []


def test_gaps_in_the_time_grid_are_counted_or_refused(tmp_path):
    path = write(tmp_path, hourly_csv(drop=range(20, 30)))  # 10 hours missing after line 21
    expected = (r"s\.csv: 1 gap\(s\) in column t, about 10 missing step\(s\) in all \(steps of 1\.5 or more times "
                r"the usual 1 hour\), the first between line 21 \(2021-03-01 19:00\) and line 22 "
                r"\(2021-03-02 06:00\)")
    with pytest.warns(UserWarning, match=expected + "; the rows either side are read as neighbours"):
        s = read_series(path, ["a"], "t")
    assert len(s) == 50
    with pytest.raises(UserError, match=expected + ".*drop --no-gaps"):
        read_series(path, ["a"], "t", gaps=False)
    path = write(tmp_path, hourly_csv(drop=[5, 40, 41]), "two.csv")
    with pytest.warns(UserWarning, match=r"2 gap\(s\) in column t, about 3 missing step\(s\).* line 6 "):
        read_series(path, ["a"], "t")


@pytest.mark.parametrize("times", [
    pd.date_range("2021-01-01", periods=30, freq="MS"),  # months of 28 to 31 days: no gap
    pd.DatetimeIndex(np.datetime64("2021-01-01") + np.cumsum(np.random.default_rng(0).exponential(3600, 40))
                     .astype("timedelta64[s]")),  # irregular events: no usual step
    pd.Index([0, 2, 4, 6, 8]),  # an index in steps of 2
])
def test_regular_grids_and_irregular_events_have_no_gaps(tmp_path, times):
    cells = times.strftime("%Y-%m-%d %H:%M:%S") if isinstance(times, pd.DatetimeIndex) else times.astype(str)
    text = "t,a\n" + "".join(f"{t},{i}\n" for i, t in enumerate(cells))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = read_series(write(tmp_path, text), ["a"], "t", gaps=False)
    assert len(s) == len(times)


def test_leading_rows_seen_against_brute_force():
    rng = np.random.default_rng(2)
    train, valid, new = rng.normal(size=(40, 2)), rng.normal(size=(15, 2)), rng.normal(size=(9, 2))

    def brute(values, seen):
        # the longest run of first rows equal to consecutive seen rows, chained while a run ends its array
        pos = 0
        while True:
            best, to_end = 0, False
            for s in seen:
                for start in range(len(s)):
                    k = 0
                    while pos + k < len(values) and start + k < len(s) and np.array_equal(values[pos + k], s[start + k]):
                        k += 1
                    if k > best or (k == best and k and start + k == len(s)):
                        best, to_end = k, start + k == len(s)
            pos += best
            if not to_end or pos == len(values):
                return pos

    cases = {
        "the training file": (train, 40),
        "the training file, then new rows": (np.vstack([train, new]), 40),
        "its last rows as history, then new rows": (np.vstack([train[-6:], new]), 6),
        "rows from its middle": (np.vstack([train[10:30], new]), 20),
        "new rows only": (new, 0),
        "the training then the validation file, then new rows": (np.vstack([train, valid, new]), 55),
        "the validation file's later rows after the training file": (np.vstack([train, valid[5:], new]), 50),
        "new rows, then the training file": (np.vstack([new, train]), 0),
    }
    for name, (values, expected) in cases.items():
        assert leading_rows_seen(values, [train, valid]) == expected == brute(values, [train, valid]), name
    assert leading_rows_seen(np.full((3, 2), -0.0), [np.zeros((4, 2))]) == 3  # -0.0 and 0.0 are the same value
    assert leading_rows_seen(np.zeros((5, 1)), [np.zeros((8, 1))]) == 5  # a constant series: all seen
