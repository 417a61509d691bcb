"""Task metrics against brute force: edit distance, the forecast baselines and errors, the MASE scale."""

import itertools
import math
import random

import numpy as np

from rnnkit.metrics import (
    edit_distance,
    forecast_errors,
    forecast_scores,
    mase_scale,
    naive_forecast,
    seasonal_naive_forecast,
)

# ---------------------------------------------------------------------------------------- sequences


def _brute_distance(a, b):
    if not a or not b:
        return len(a) + len(b)
    return min(_brute_distance(a[1:], b) + 1, _brute_distance(a, b[1:]) + 1,
               _brute_distance(a[1:], b[1:]) + (a[0] != b[0]))


def test_edit_distance_equals_brute_force():
    rng = random.Random(0)
    for _ in range(60):
        a = [rng.choice("abc") for _ in range(rng.randrange(6))]
        b = [rng.choice("abc") for _ in range(rng.randrange(6))]
        assert edit_distance(a, b) == _brute_distance(a, b)


def test_brute_force_helper_is_itself_right():
    assert _brute_distance("kitten", "sitting") == 3
    assert all(_brute_distance(a, a) == 0 for a in map("".join, itertools.product("ab", repeat=3)))


# ---------------------------------------------------------------------------------------- forecasting


def test_baselines_and_metrics_against_brute_force():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 2)) + 5
    origins, H, m = np.array([12, 20, 31]), 5, 4
    naive = naive_forecast(y, origins, H)
    seasonal = seasonal_naive_forecast(y, origins, H, m)
    for i, o in enumerate(origins):
        for h in range(H):
            assert np.array_equal(naive[i, h], y[o - 1])
            k = 1
            while o + h - k * m >= o:
                k += 1
            assert np.array_equal(seasonal[i, h], y[o + h - k * m])  # the latest value one season back
    truth = np.stack([y[o:o + H] for o in origins])
    f = truth + rng.normal(size=truth.shape)
    scale = mase_scale(y[:30], m)
    got = forecast_errors(truth, f, scale)
    errors = [(f[i, h, c] - truth[i, h, c], truth[i, h, c], f[i, h, c], c)
              for i in range(3) for h in range(H) for c in range(2)]
    assert math.isclose(got["mae"], sum(abs(e) for e, *_ in errors) / len(errors))
    assert math.isclose(got["rmse"], math.sqrt(sum(e * e for e, *_ in errors) / len(errors)))
    assert math.isclose(got["smape"], sum(2 * abs(e) / (abs(t) + abs(p)) for e, t, p, _ in errors) / len(errors))
    insample = [sum(abs(y[t, c] - y[t - m, c]) for t in range(m, 30)) / (30 - m) for c in range(2)]
    per_col = [sum(abs(e) for e, *_, cc in errors if cc == c) / (len(errors) / 2) / insample[c] for c in range(2)]
    assert math.isclose(got["mase"], sum(per_col) / 2)


def test_mase_scale_falls_back_to_lag_one_below_two_seasonal_differences():
    y = np.random.default_rng(1).normal(size=(10, 2))
    lag = {k: np.abs(y[k:] - y[:-k]).mean(axis=0) for k in (1, 4)}
    np.testing.assert_allclose(mase_scale(y[:5], 4), np.abs(y[1:5] - y[:4]).mean(axis=0))  # season + 1 values
    np.testing.assert_allclose(mase_scale(y[:6], 4), np.abs(y[4:6] - y[:2]).mean(axis=0))  # season + 2 values
    np.testing.assert_allclose(mase_scale(y, 4), lag[4])
    np.testing.assert_allclose(mase_scale(y, 1), lag[1])


def test_forecast_scores_add_the_errors_in_standardised_units():
    rng = np.random.default_rng(3)
    std = np.array([2.0, 5.0])
    truth = rng.normal(size=(4, 3, 2)) * std + 1
    f = truth + rng.normal(size=truth.shape)
    scale = np.array([0.5, 2.0])
    got = forecast_scores(truth, f, scale, std)
    assert {k: got[k] for k in ("mae", "rmse", "mase", "smape")} == forecast_errors(truth, f, scale)
    scaled = [(f[i, h, c] - truth[i, h, c]) / std[c] for i in range(4) for h in range(3) for c in range(2)]
    assert math.isclose(got["mse_scaled"], sum(e * e for e in scaled) / len(scaled))
    assert math.isclose(got["mae_scaled"], sum(abs(e) for e in scaled) / len(scaled))
