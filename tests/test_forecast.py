"""The forecaster and its task: losses against references, causality, no leak from the future, anomalies, CLI."""

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch.testing import assert_close

from rnnkit.cli import main
from rnnkit.config import DataConfig, ForecastConfig, ModelConfig, RunConfig, TrainConfig, UserError
from rnnkit.data.series import Series
from rnnkit.metrics import naive_forecast, seasonal_naive_forecast
from rnnkit.models.forecaster import Forecaster
from rnnkit.tasks import forecast, runner
from rnnkit.tasks.training import train

# ----------------------------------------------------------------------------------------- the model


@pytest.mark.parametrize("mode", ["direct", "autoregressive"])
@pytest.mark.parametrize("loss, P", [("mse", 1), ("mae", 1), ("gaussian", 2), ("quantile", 3)])
def test_shapes_and_intervals(mode, loss, P):
    model = Forecaster(5, 2, horizon=4, hidden_size=8, mode=mode, loss=loss, calendar_size=2).eval()
    params = model(torch.randn(3, 7, 5), torch.randn(3, 4, 2))
    assert params.shape == (3, 4, 2, P)
    bounds = model.interval(params)
    if P == 1:
        assert bounds is None
    else:
        point = model.point(params)
        assert bool((bounds[0] <= point).all()) and bool((point <= bounds[1]).all())


def test_gaussian_loss_is_the_normal_negative_log_likelihood():
    model = Forecaster(3, 1, horizon=5, hidden_size=8, loss="gaussian")
    batch = {"history": torch.randn(4, 6, 3), "targets": torch.randn(4, 5, 1)}
    params = model(batch["history"])
    expected = -torch.distributions.Normal(params[..., 0], params[..., 1]).log_prob(batch["targets"]).mean()
    assert_close(model.loss(batch).loss, expected)


def test_quantile_loss_is_the_pinball_loss():
    model = Forecaster(3, 2, horizon=2, hidden_size=8, loss="quantile", quantiles=(0.2, 0.5, 0.7))
    batch = {"history": torch.randn(3, 6, 3), "targets": torch.randn(3, 2, 2)}
    params = model(batch["history"]).detach()
    total = 0.0
    for b in range(3):
        for h in range(2):
            for c in range(2):
                for k, q in enumerate((0.2, 0.5, 0.7)):
                    d = float(batch["targets"][b, h, c] - params[b, h, c, k])
                    total += q * d if d >= 0 else (q - 1) * d
    assert math.isclose(float(model.loss(batch).loss.detach()), total / 12, rel_tol=1e-5)


@pytest.mark.parametrize("mode", ["direct", "autoregressive"])
@pytest.mark.parametrize("level", ["mean", "last", "season"])
def test_the_forecast_follows_the_level(mode, level):
    model = Forecaster(2, 2, horizon=3, hidden_size=8, mode=mode, level=level, season=4).eval()
    x = torch.randn(2, 6, 2)
    with torch.no_grad():
        assert_close(model(x + 5.0), model(x) + 5.0, atol=1e-5, rtol=1e-5)
        plain = Forecaster(2, 2, horizon=3, hidden_size=8, mode=mode, level="none").eval()
        assert not torch.allclose(plain(x + 5.0), plain(x) + 5.0, atol=1e-3)


@pytest.mark.parametrize("mode", ["direct", "autoregressive"])
def test_season_level_adds_to_the_seasonal_naive_forecast(mode):
    model = Forecaster(3, 2, horizon=7, hidden_size=8, mode=mode, level="season", season=3).eval()
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)  # the network adds nothing: the forecast is seasonal naive
    history = torch.randn(4, 9, 3, dtype=torch.float64)
    with torch.no_grad():
        got = model.double()(history)[..., 0]  # (B, H, C)
    y = history[..., :2].numpy()
    for b in range(4):
        expected = seasonal_naive_forecast(y[b], np.array([9]), 7, 3)[0]  # (H, C)
        np.testing.assert_allclose(got[b].numpy(), expected)


def test_autoregressive_steps_read_no_later_calendar():
    model = Forecaster(4, 1, horizon=6, hidden_size=8, mode="autoregressive", calendar_size=3).eval()
    history, future = torch.randn(2, 5, 4), torch.randn(2, 6, 3)
    changed = future.clone()
    changed[:, 3:] = torch.randn(2, 3, 3)
    with torch.no_grad():
        a, b = model(history, future), model(history, changed)
    assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("mode, loss", [("direct", "gaussian"), ("autoregressive", "quantile")])
def test_gradients_match_finite_differences(mode, loss):
    torch.manual_seed(0)
    model = Forecaster(3, 2, horizon=3, hidden_size=4, mode=mode, loss=loss, calendar_size=1, fused=False).double()
    history = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    future = torch.randn(2, 3, 1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda h: model(h, future), (history,))


# ------------------------------------------------------------------------------------- the task


def make_series(n=700, seed=0, spikes=()):
    """An hourly series with a daily cycle, noise and a covariate; `spikes` are (row, size) pairs."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    load = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.2, n)
    for row, size in spikes:
        load[row] += size
    temp = np.cos(2 * np.pi * t / 24) + rng.normal(0, 0.1, n)
    times = pd.date_range("2022-05-01", periods=n, freq="h")
    return pd.DataFrame({"time": times.strftime("%Y-%m-%d %H:%M:%S"), "load": load, "temp": temp})


def config(**options):
    base = {"target": ["load"], "time_column": "time", "covariates": ["temp"], "lookback": 24, "horizon": 6}
    return RunConfig("forecast", model=ModelConfig(hidden_size=16, num_layers=1), data=DataConfig(valid_fraction=0.2),
                     train=TrainConfig(epochs=3, batch_size=32, lr=1e-2, seed=0, log_every=1000),
                     options=ForecastConfig(**{**base, **options}))


def train_run(tmp_path, name="run", frame=None, **options):
    data = tmp_path / f"{name}.csv"
    (make_series() if frame is None else frame).to_csv(data, index=False)
    out = tmp_path / name
    train(config(**options), data, out, log=lambda _line: None)
    return out, data


@pytest.fixture(scope="module")
def direct_run(tmp_path_factory):
    return train_run(tmp_path_factory.mktemp("direct"))


def perturbed(series: Series, start: int, seed: int) -> Series:
    rng = np.random.default_rng(seed)
    targets, covariates = series.targets.copy(), series.covariates.copy()
    targets[start:] = rng.normal(50, 10, targets[start:].shape)
    covariates[start:] = rng.normal(-5, 3, covariates[start:].shape)
    return Series(series.path, series.times, targets, covariates, series.target_names, series.covariate_names)


@pytest.mark.parametrize("mode", ["direct", "autoregressive"])
def test_no_future_value_leaks_into_a_forecast(tmp_path, direct_run, mode):
    run_dir = direct_run[0] if mode == "direct" else train_run(tmp_path, mode="autoregressive")[0]
    run = runner.load(run_dir)
    series = forecast.read_for_run(run, direct_run[1])
    for o in (30, 200, 500):
        # one origin per call, so that both forecasts take the same arithmetic path (bitwise equal)
        before = forecast.forecast(run, series, np.array([o]))["point"]
        after = forecast.forecast(run, perturbed(series, o, seed=o), np.array([o]))["point"]
        np.testing.assert_array_equal(after, before)
        # and the check can fail: a change from one row before the origin does move the forecast
        moved = forecast.forecast(run, perturbed(series, o - 1, seed=o), np.array([o]))["point"]
        assert not np.allclose(moved, before)


def test_anomaly_scores_read_nothing_after_their_point(direct_run):
    run = runner.load(direct_run[0])
    series = forecast.read_for_run(run, direct_run[1])
    cut = 400
    short = Series(series.path, series.times[:cut + 1], series.targets[:cut + 1], series.covariates[:cut + 1],
                   series.target_names, series.covariate_names)
    full, head = forecast.anomaly_scores(run, series), forecast.anomaly_scores(run, short)
    assert head["rows"][-1] == cut
    np.testing.assert_allclose(full["scores"][:len(head["scores"])], head["scores"], rtol=1e-5, atol=1e-6)


def test_scaler_is_fitted_on_the_training_part_only(tmp_path):
    frame = make_series()
    first, _ = train_run(tmp_path, "a", frame)
    changed = frame.copy()
    changed.loc[len(frame) - 30:, "load"] += 100.0  # inside the held-out validation part
    second, _ = train_run(tmp_path, "b", changed)
    assert json.loads((first / "scaler.json").read_text()) == json.loads((second / "scaler.json").read_text())
    meta = json.loads((first / "series.json").read_text())
    assert meta["train_rows"] == 700 - 140 and meta["season"] == 24  # 20% held out (valid_fraction 0.2)


def test_a_valid_file_is_forecast_only_after_the_training_file(tmp_path):
    frame = make_series(n=600)
    frame.iloc[:500].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[500 - 24:].to_csv(tmp_path / "valid.csv", index=False)  # a lookback of history, then 100 new rows
    cfg = config()
    cfg.train.epochs = 1
    train(cfg, tmp_path / "train.csv", tmp_path / "run", valid_path=tmp_path / "valid.csv",
                   log=lambda _line: None)
    meta = json.loads((tmp_path / "run" / "series.json").read_text())
    assert meta["train_rows"] == 500 and meta["train_windows"] == 500 - 24 - 6 + 1
    assert meta["valid_windows"] == 100 - 6 + 1 and meta["last_seen"] == frame["time"].iloc[-1]
    assert json.loads((tmp_path / "run" / "anomaly.json").read_text())["validation_points"] == 100


def test_planted_spikes_are_flagged(tmp_path, direct_run):
    spikes = [(330, 3.0), (410, -3.5), (520, 2.5), (610, 4.0)]
    data = tmp_path / "spiky.csv"
    make_series(seed=3, spikes=spikes).to_csv(data, index=False)
    out = tmp_path / "flags.csv"
    frame = runner.predict(direct_run[0], data, out, anomalies=True)
    flagged = set((frame["line"] - 2).tolist())
    assert {row for row, _ in spikes} <= flagged
    assert len(flagged) <= len(spikes) + 6  # a few false alarms at most among ~680 points
    top = frame.nlargest(len(spikes), "score")
    assert set((top["line"] - 2).tolist()) == {row for row, _ in spikes}
    assert pd.read_csv(out).shape[0] == len(frame)


def test_evaluate_scores_after_training_and_baselines(tmp_path, direct_run):
    run_dir, train_csv = direct_run
    full = make_series(n=800)
    data = tmp_path / "full.csv"
    full.to_csv(data, index=False)  # the same first 700 rows, then 100 unseen
    figures = runner.evaluate(run_dir, data)
    assert figures["origins"] == len(range(700, 800 - 6 + 1, 6))  # whole horizons after the last seen row
    y = full[["load"]].to_numpy()
    origins = np.arange(700, 795, 6)
    truth = np.stack([y[o:o + 6] for o in origins])
    naive_mae = float(np.abs(naive_forecast(y, origins, 6) - truth).mean())
    seasonal_mae = float(np.abs(seasonal_naive_forecast(y, origins, 6, 24) - truth).mean())
    assert math.isclose(figures["baselines"]["naive"]["mae"], naive_mae)
    assert math.isclose(figures["baselines"]["seasonal_naive"]["mae"], seasonal_mae)
    assert figures["mae"] < figures["baselines"]["naive"]["mae"]
    assert set(figures) >= {"mae", "rmse", "mase", "smape", "mse_scaled", "mae_scaled", "baselines"}
    with pytest.raises(UserError, match="no forecast origin"):
        runner.evaluate(run_dir, train_csv)  # every row was seen in training


def test_cli_train_evaluate_predict_with_intervals(tmp_path, capsys):
    data = tmp_path / "series.csv"
    make_series().to_csv(data, index=False)
    run = tmp_path / "run"
    code = main(["train", "forecast", "--train", str(data), "--out", str(run), "--target", "load",
                 "--time-column", "time", "--covariates", "temp", "--lookback", "24", "--horizon", "6",
                 "--loss", "gaussian", "--epochs", "2", "--hidden", "16", "--lr", "0.01", "--threads", "1"])
    assert code == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(data.with_name("later.csv"))]) == 2
    make_series(n=760).to_csv(tmp_path / "later.csv", index=False)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "later.csv"), "--json", "--stride", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["origins"] == 760 - 700 - 6 + 1 and 0 <= figures["interval_coverage"] <= 1
    out = tmp_path / "next.csv"
    assert main(["predict", str(run), "--input", str(data), "--output", str(out), "--plot",
                 str(tmp_path / "p.png")]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["time", "load", "load_q0.1", "load_q0.9"] and len(table) == 6
    assert table["time"].iloc[0] == "2022-05-30 04:00:00"  # the hour after the last row
    assert (table["load_q0.1"] <= table["load"]).all() and (table["load"] <= table["load_q0.9"]).all()
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refuses_missing_values_without_impute_and_short_series(tmp_path, capsys):
    frame = make_series(n=100)
    frame.loc[40, "load"] = np.nan
    data = tmp_path / "gappy.csv"
    frame.to_csv(data, index=False)
    args = ["train", "forecast", "--train", str(data), "--target", "load", "--time-column", "time",
            "--lookback", "24", "--horizon", "6", "--epochs", "1", "--hidden", "8"]
    assert main([*args, "--out", str(tmp_path / "r1"), "--no-impute"]) == 2
    assert "1 missing value(s), the first at line 42, column load" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "r2"), "--lookback", "90"]) == 2
    assert "100 rows is too short: --lookback 90 + --horizon 6" in capsys.readouterr().err


def test_cli_refuses_gaps_with_no_gaps(tmp_path, capsys):
    frame = make_series(n=120).drop(index=range(40, 50))  # ten hours missing
    data = tmp_path / "gaps.csv"
    frame.to_csv(data, index=False)
    args = ["train", "forecast", "--train", str(data), "--out", str(tmp_path / "run"), "--target", "load",
            "--time-column", "time", "--lookback", "24", "--horizon", "6", "--epochs", "1", "--hidden", "8"]
    assert main([*args, "--no-gaps"]) == 2
    err = capsys.readouterr().err
    assert ("1 gap(s) in column time, about 10 missing step(s) in all (steps of 1.5 or more times the usual "
            "1 hour), the first between line 41 (2022-05-02 15:00:00) and line 42 (2022-05-03 02:00:00)") in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


# ------------------------------------------------------------------------- series in row order


@pytest.fixture(scope="module")
def row_run(tmp_path_factory):
    """A run without a time column, trained on the first 300 rows of a 420-row series."""
    tmp = tmp_path_factory.mktemp("rows")
    frame = make_series(n=420)[["load", "temp"]]
    frame.iloc[:300].to_csv(tmp / "train.csv", index=False)
    cfg = config(time_column=None)
    cfg.train.epochs = 1
    train(cfg, tmp / "train.csv", tmp / "run", log=lambda _line: None)
    return tmp / "run", frame, tmp


@pytest.mark.parametrize("rows, seen", [
    (slice(0, 420), 300),  # the training file and 120 new rows
    (slice(300 - 24, 420), 24),  # a lookback of training rows as history, then the new rows
    (slice(300, 420), 0),  # new rows only
    (slice(100, 420), 200),  # from the middle of the training rows on
])
def test_row_order_evaluation_starts_after_the_rows_seen_in_training(row_run, rows, seen):
    run_dir, frame, tmp = row_run
    data = tmp / f"rows{rows.start}.csv"
    frame.iloc[rows].to_csv(data, index=False)
    figures = runner.evaluate(run_dir, data)
    n = rows.stop - rows.start
    assert figures["seen_rows"] == seen
    assert figures["origins"] == len(range(max(seen, 24), n - 6 + 1, 6))
    y = frame[["load"]].to_numpy()[rows]
    origins = np.arange(max(seen, 24), n - 6 + 1, 6)
    truth = np.stack([y[o:o + 6] for o in origins])
    assert math.isclose(figures["baselines"]["naive"]["mae"], float(np.abs(naive_forecast(y, origins, 6) - truth).mean()))


def test_row_order_evaluation_refuses_the_training_rows(row_run, capsys):
    run_dir, frame, tmp = row_run
    train_csv = tmp / "train.csv"
    assert main(["evaluate", str(run_dir), "--data", str(train_csv)]) == 2
    err = capsys.readouterr().err
    assert "no forecast origin" in err and "after the rows seen in training; the file has 300 rows, 0 of them" in err
    frame.to_csv(tmp / "all.csv", index=False)
    assert main(["evaluate", str(run_dir), "--data", str(tmp / "all.csv"), "--seen-rows", "100"]) == 2
    assert ("--seen-rows 100: the first 300 rows of " in capsys.readouterr().err)
    assert main(["evaluate", str(run_dir), "--data", str(tmp / "all.csv"), "--seen-rows", "360", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["seen_rows"] == 360 and figures["origins"] == len(range(360, 415, 6))


def test_row_order_run_without_its_seen_rows_asks_for_them(row_run, tmp_path, capsys):
    run_dir, frame, tmp = row_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / "seen.npz").unlink()
    data = tmp_path / "all.csv"
    frame.to_csv(data, index=False)
    assert main(["evaluate", str(copy), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "seen.npz: not found" in err and "give --seen-rows N" in err
    assert runner.evaluate(copy, data, seen_rows=300)["origins"] == len(range(300, 415, 6))
    (copy / "seen.npz").write_bytes(b"not numpy")
    with pytest.raises(UserError, match=r"seen\.npz: not a readable numpy file"):
        runner.evaluate(copy, data)


def test_row_order_validation_file_is_forecast_after_the_training_rows(tmp_path):
    frame = make_series(n=400)[["load", "temp"]]
    frame.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "valid.csv", index=False)  # the training rows again, then 100 new ones
    cfg = config(time_column=None)
    cfg.train.max_steps = 1
    train(cfg, tmp_path / "train.csv", tmp_path / "run", valid_path=tmp_path / "valid.csv",
                   log=lambda _line: None)
    assert json.loads((tmp_path / "run" / "series.json").read_text())["valid_windows"] == 100 - 6 + 1
    with pytest.raises(UserError, match="no forecast origin"):  # every row was seen, in one file or the other
        runner.evaluate(tmp_path / "run", tmp_path / "valid.csv")


def test_seen_rows_is_refused_for_a_run_with_a_time_column(direct_run):
    with pytest.raises(UserError, match=r"--seen-rows: the run has a time column \(time\)"):
        runner.evaluate(direct_run[0], direct_run[1], seen_rows=0)


# -------------------------------------------------------------------------------- run directories


RUN_FILES = ["config.json", "series.json", "scaler.json", "model.safetensors", "insample.npy", "anomaly.json"]


@pytest.mark.parametrize("name, damage", [(name, damage) for name in RUN_FILES for damage in ("missing", "garbage")]
                         + [(name, "wrong content") for name in RUN_FILES[1:] if name != "model.safetensors"])
def test_a_damaged_run_directory_gives_a_message(tmp_path, capsys, direct_run, name, damage):
    run = tmp_path / "run"
    shutil.copytree(direct_run[0], run)
    if damage == "missing":
        (run / name).unlink()
    elif damage == "garbage":
        (run / name).write_text("garbage {")
    elif name.endswith(".json"):
        (run / name).write_text('{"columns": ["load"]}\n')
    else:
        np.save(run / name, np.zeros(5))  # a 1-D array where (rows, targets) is expected
    data = tmp_path / "later.csv"
    make_series(n=730).to_csv(data, index=False)
    command = (["predict", str(run), "--input", str(data), "--anomalies", "--output", str(tmp_path / "f.csv")]
               if name == "anomaly.json" else ["evaluate", str(run), "--data", str(data)])
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("rnnkit: error: ") and name in err and err.count("\n") == 1, err


# ---------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """An autoregressive run with two target columns, trained through the command line."""
    tmp = tmp_path_factory.mktemp("cli")
    frame = make_series(n=400)
    frame["humidity"] = 60 + 10 * np.sin(np.arange(400) / 11.0)
    frame.to_csv(tmp / "series.csv", index=False)
    code = main(["train", "forecast", "--train", str(tmp / "series.csv"), "--out", str(tmp / "run"), "--target",
                 "load", "humidity", "--time-column", "time", "--covariates", "temp", "--mode", "autoregressive",
                 "--lookback", "24", "--horizon", "6", "--epochs", "2", "--hidden", "8", "--lr", "0.01",
                 "--threads", "1"])
    assert code == 0
    return tmp / "run", tmp / "series.csv", frame


def test_cli_several_targets(cli_run, tmp_path, capsys):
    run_dir, data, frame = cli_run
    out = tmp_path / "next.csv"
    assert main(["predict", str(run_dir), "--input", str(data), "--output", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["time", "load", "humidity"] and len(table) == 6
    # each column in its own units: the load near 10, the humidity near 60
    assert table["load"].between(0, 20).all() and table["humidity"].between(40, 80).all()
    assert np.load(run_dir / "insample.npy").shape == (400 - 20, 2)  # 5% held out for validation
    later = tmp_path / "later.csv"
    longer = make_series(n=460, seed=1)
    longer["humidity"] = 60 + 10 * np.sin(np.arange(460) / 11.0)
    pd.concat([frame, longer.iloc[400:]]).to_csv(later, index=False)  # the training rows, then 60 new ones
    assert main(["evaluate", str(run_dir), "--data", str(later), "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["origins"] == len(range(400, 455, 6)) and figures["seen_rows"] == 400
    run = runner.load(run_dir)
    series = forecast.read_for_run(run, later)
    got = forecast.forecast(run, series, np.array([400]))["point"]  # (1, H, C)
    assert got.shape == (1, 6, 2)
    np.testing.assert_allclose(got[0], table[["load", "humidity"]].to_numpy(), rtol=1e-4, atol=1e-4)


def test_cli_autoregressive_mode(cli_run):
    run_dir, data, _ = cli_run
    assert json.loads((run_dir / "config.json").read_text())["forecast"]["mode"] == "autoregressive"
    run = runner.load(run_dir)
    assert run.model.mode == "autoregressive" and run.model.decoder is not None
    series = forecast.read_for_run(run, data)
    o = 300  # the decoder reads no value after the origin
    before = forecast.forecast(run, series, np.array([o]))["point"]
    after = forecast.forecast(run, perturbed(series, o, seed=1), np.array([o]))["point"]
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("rows, horizon, held_out", [(682, 6, 34), (700, 6, 35), (700, 48, 48), (100, 6, 6)])
def test_the_hold_out_is_the_last_rounded_fraction_and_one_horizon_at_least(tmp_path, rows, horizon, held_out):
    data = tmp_path / "series.csv"
    make_series(n=rows).to_csv(data, index=False)
    cfg = config(horizon=horizon)
    cfg.data.valid_fraction = 0.05  # 682 rows: 34.1 rounds to 34
    said = []
    prepared = forecast.TASK.prepare(cfg, data, None, tmp_path / "run", False, said.append)
    assert said == [f"no --valid given: holding out the last {held_out} rows of {data} for validation"]
    info = prepared.assets["series_info"]
    assert info["train_rows"] == rows - held_out and info["valid_windows"] == held_out - horizon + 1
    assert info["train_windows"] == rows - held_out - 24 - horizon + 1
    assert len(prepared.valid) == 1 and len(prepared.train) == -(-info["train_windows"] // 32)


@pytest.mark.parametrize("horizon, held_out", [(6, 35), (48, 48)])  # 5% of 700 rows, or one horizon
def test_cli_valid_fraction_default_and_its_one_horizon_minimum(tmp_path, capsys, horizon, held_out):
    data = tmp_path / "series.csv"
    make_series().to_csv(data, index=False)
    assert main(["train", "forecast", "--train", str(data), "--out", str(tmp_path / "run"), "--target", "load",
                 "--time-column", "time", "--lookback", "24", "--horizon", str(horizon), "--max-steps", "1",
                 "--hidden", "8", "--threads", "1"]) == 0
    assert f"holding out the last {held_out} rows of" in capsys.readouterr().err
    meta = json.loads((tmp_path / "run" / "series.json").read_text())
    assert meta["train_rows"] == 700 - held_out and meta["valid_windows"] == held_out - horizon + 1


def test_cli_predict_anomalies(tmp_path, capsys, direct_run):
    spikes = [(330, 3.0), (520, -3.5)]
    data = tmp_path / "spiky.csv"
    make_series(seed=4, spikes=spikes).to_csv(data, index=False)
    out = tmp_path / "flags.json"
    assert main(["predict", str(direct_run[0]), "--input", str(data), "--anomalies", "--output", str(out)]) == 0
    flagged = json.loads(out.read_text())
    assert {r["line"] - 2 for r in flagged} >= {row for row, _ in spikes}
    assert set(flagged[0]) == {"time", "line", "column", "value", "predicted", "score"}
    assert re.search(rf"^{len(flagged)} of {700 - 24} points flagged \(score > threshold \d+\.\d+\)$",
                     capsys.readouterr().err, re.MULTILINE)


def test_cli_evaluate_plot_and_plain_report(tmp_path, capsys, direct_run):
    data = tmp_path / "later.csv"
    make_series(n=760).to_csv(data, index=False)
    png = tmp_path / "forecasts.png"
    assert main(["evaluate", str(direct_run[0]), "--data", str(data), "--plot", str(png)]) == 0
    image = png.read_bytes()
    assert image[:8] == b"\x89PNG\r\n\x1a\n" and len(image) > 1000
    lines = capsys.readouterr().out.splitlines()
    assert "{" not in "".join(lines)  # no raw JSON
    assert re.fullmatch(r" +origins  10", lines[[line.split()[0] for line in lines].index("origins")])
    naive = [line for line in lines if line.split()[0] == "naive"]
    assert len(naive) == 1 and re.fullmatch(r" +naive  mae \d+\.\d{4}  rmse \d+\.\d{4}  mase .*", naive[0])


def test_cli_help_describes_the_forecast_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "forecast", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "hold out this fraction of the training data (forecast: its last rows, at least one horizon's worth)" \
        in text and "--gaps, --no-gaps" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--seen-rows N forecast runs without a time column" in " ".join(capsys.readouterr().out.split())
