"""The forecaster: a recurrent encoder over the last L steps, and a head for the next H steps of C series.

What is here: `Forecaster` in two modes, direct (the encoder's last output maps to all H steps at once)
and autoregressive (an encoder-decoder whose decoder is fed its own previous prediction and the known
calendar features of each future step), with four losses (MSE, MAE, Gaussian likelihood, quantile/pinball)
of which the last two give prediction intervals; its metrics for the trainer. What is not: reading
files, scaling, windows and the forecast metrics (data/series.py), the loop (train.py).

Shapes: B windows, L lookback steps, F input features per step (the C targets first, then covariates
and calendar features), H horizon steps, K calendar features per future step, C target series,
P parameters per forecast value (1 for MSE/MAE, 2 for Gaussian: mean and standard deviation,
Q quantiles).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent
from rnnkit.models.base import LossOutput, check_choice

MODES = ("direct", "autoregressive")
LOSSES = ("mse", "mae", "gaussian", "quantile")
LEVELS = ("mean", "last", "season", "none")
MIN_SCALE = 1e-3  # lower bound of the Gaussian standard deviation (scaled units): keeps the likelihood finite


def normal_quantile(q: float) -> float:
    """The standard normal quantile z with P(Z <= z) = q."""
    return math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * q - 1.0, dtype=torch.float64)).item()


class Forecaster(nn.Module):
    """Multi-step forecaster of C series from L steps of F features.

    Args:
        input_size: F, features per history step (targets first).
        target_size: C, the series forecast (the first C input features).
        horizon: H, steps forecast.
        hidden_size, num_layers, cell, dropout, fused: of the recurrent encoder (and decoder).
        mode: `direct` or `autoregressive`.
        loss: `mse`, `mae`, `gaussian` or `quantile`.
        quantiles: the quantiles predicted with the quantile loss; with the Gaussian loss the lowest and
            highest give the interval.
        calendar_size: K, calendar features known for every future step (fed to the decoder).
        level: `mean` or `last`: subtract each window's mean (or last value) from its target columns before
            the encoder and add it back to the forecast, which makes the model indifferent to the series'
            level (instance normalisation without scaling); `season`: subtract the mean as well, but add the
            network's output to the seasonal-naive forecast (the value one season back) instead;
            `none`: read the values as they are.
        season: the season length in steps, for level `season` (at most L, which `forward` checks).
    """

    def __init__(
        self,
        input_size: int,
        target_size: int,
        horizon: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "lstm",
        dropout: float = 0.0,
        mode: str = "direct",
        loss: str = "mse",
        quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
        calendar_size: int = 0,
        level: str = "mean",
        season: int = 1,
        fused: bool | None = None,
        recurrent_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("mode", mode, MODES)
        check_choice("loss", loss, LOSSES)
        if not 1 <= target_size <= input_size:
            raise ValueError(f"target_size: expected 1..input_size={input_size}; got {target_size}")
        qs = tuple(float(q) for q in quantiles)
        if loss in ("gaussian", "quantile") and (len(qs) < 2 or list(qs) != sorted(set(qs))
                                                 or not all(0 < q < 1 for q in qs)):
            raise ValueError(f"quantiles: expected two or more increasing values in (0, 1); got {quantiles}")
        self.input_size, self.target_size, self.horizon = input_size, target_size, horizon
        self.mode, self.loss_name, self.quantiles = mode, loss, qs
        self.calendar_size = calendar_size
        check_choice("level", level, LEVELS)
        if level == "season" and not 1 < season <= 10**6:
            raise ValueError(f"season: level 'season' needs a season length >= 2; got {season}")
        self.level, self.season = level, season
        self.num_params = {"mse": 1, "mae": 1, "gaussian": 2, "quantile": len(qs)}[loss]
        extra = recurrent_options or {}  # recurrent_dropout, zoneout, weight_drop
        self.encoder = Recurrent(cell, input_size, hidden_size, num_layers=num_layers, dropout=dropout, fused=fused,
                                 **extra)
        C, P = target_size, self.num_params
        if mode == "direct":
            self.head = nn.Linear(hidden_size, horizon * C * P)
            self.decoder = None
        else:
            self.decoder = Recurrent(cell, C + calendar_size, hidden_size, num_layers=num_layers, fused=fused, **extra)
            self.head = nn.Linear(hidden_size, C * P)
        self.register_buffer("_quantiles", torch.tensor(qs if loss == "quantile" else (0.5,)), persistent=False)
        self.monitor = ("loss", "min")

    # ----------------------------------------------------------------------------------- forward

    def forward(self, history: Tensor, future: Tensor | None = None) -> Tensor:
        """Distribution parameters of the next H steps.

        Args:
            history: (B, L, F) the last L steps, targets in the first C features.
            future: (B, H, K) calendar features of the steps ahead (K may be 0; None when K = 0).
        Returns:
            (B, H, C, P): the point forecast (P=1), mean and standard deviation (gaussian) or the
            quantiles in increasing order (quantile), in the units of the input.
        """
        B, L, _ = history.shape
        if self.level == "season" and self.season > L:
            raise ValueError(f"history: level 'season' needs at least season={self.season} steps; got L={L}")
        C = self.target_size
        targets = history[:, :, :C]  # (B, L, C)
        level = history.new_zeros(B, 1, C)
        if self.level == "last":
            level = targets[:, -1:]  # (B, 1, C)
        elif self.level != "none":
            level = targets.mean(dim=1, keepdim=True)  # (B, 1, C)
        base = level.expand(B, self.horizon, C)  # (B, H, C): what the network's output is added to
        if self.level == "season":
            h = torch.arange(self.horizon, device=history.device)
            back = self.season * torch.div(h + self.season, self.season, rounding_mode="floor")  # (H,) >= h + 1
            base = targets[:, L + h - back]  # (B, H, C): the seasonal-naive forecast
        history = torch.cat([targets - level, history[:, :, C:]], dim=2)  # (B, L, F)
        out, state = self.encoder(history)  # (B, L, Hd)
        if self.decoder is None:
            raw = self.head(out[:, -1]).view(B, self.horizon, C, self.num_params)  # (B, H, C, P)
        else:
            if future is None:
                future = history.new_zeros(B, self.horizon, 0)
            prev = history[:, -1, :C]  # (B, C): the last observed values, normalised
            steps = []
            for k in range(self.horizon):
                h, state = self.decoder.step(torch.cat([prev, future[:, k]], dim=1), state)  # (B, Hd)
                raw_k = self.head(h).view(B, C, self.num_params)  # (B, C, P)
                steps.append(raw_k)
                # its own prediction, fed back on the encoder's scale
                prev = self._point(raw_k.unsqueeze(1)).squeeze(1) + base[:, k] - level[:, 0]  # (B, C)
            raw = torch.stack(steps, dim=1)  # (B, H, C, P)
        return self._denormalise(raw, base)

    def _denormalise(self, raw: Tensor, base: Tensor) -> Tensor:
        level = base.unsqueeze(-1)  # (B, H, C, 1)
        if self.loss_name == "gaussian":
            mean = raw[..., :1] + level
            scale = F.softplus(raw[..., 1:]) + MIN_SCALE
            return torch.cat([mean, scale], dim=-1)
        if self.loss_name == "quantile":
            return raw.sort(dim=-1).values + level  # sorted: quantiles never cross
        return raw + level

    def _point(self, params: Tensor) -> Tensor:
        """(B, H, C) point forecast from (B, H, C, P) parameters (before or after denormalising)."""
        if self.loss_name == "quantile":
            middle = int(torch.argmin((self._quantiles - 0.5).abs()))
            return params.sort(dim=-1).values[..., middle]
        return params[..., 0]

    def point(self, params: Tensor) -> Tensor:
        """(B, H, C): the point forecast: the mean, or the quantile nearest the median."""
        return self._point(params)

    def interval(self, params: Tensor) -> tuple[Tensor, Tensor] | None:
        """(lower, upper) each (B, H, C) at the lowest and highest quantiles; None for MSE/MAE models."""
        if self.loss_name == "quantile":
            return params[..., 0], params[..., -1]
        if self.loss_name == "gaussian":
            mean, scale = params[..., 0], params[..., 1]
            return (mean + normal_quantile(self.quantiles[0]) * scale,
                    mean + normal_quantile(self.quantiles[-1]) * scale)
        return None

    # -------------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Mean loss over every forecast value of the batch: {history, future, targets (B, H, C)}."""
        params = self(batch["history"], batch.get("future"))
        y = batch["targets"]  # (B, H, C)
        point = self._point(params)
        err = point - y
        if self.loss_name == "mse":
            loss = err.pow(2).mean()
        elif self.loss_name == "mae":
            loss = err.abs().mean()
        elif self.loss_name == "gaussian":
            loss = F.gaussian_nll_loss(params[..., 0], y, params[..., 1].pow(2), full=True)
        else:
            q = torch.tensor(self.quantiles, dtype=y.dtype, device=y.device)  # (Q,)
            diff = y.unsqueeze(-1) - params  # (B, H, C, Q)
            loss = torch.maximum(q * diff, (q - 1) * diff).mean(dim=(0, 1, 2)).sum()
        n = y.numel()
        stats = {"loss_sum": float(loss.detach()) * n, "se": float(err.detach().pow(2).sum()),
                 "ae": float(err.detach().abs().sum())}
        return LossOutput(loss, n, stats)

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Mean loss, MSE and MAE per forecast value (scaled units)."""
        n = max(count, 1)
        return {"loss": stats["loss_sum"] / n, "mse": stats["se"] / n, "mae": stats["ae"] / n}
