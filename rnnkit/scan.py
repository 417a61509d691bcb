"""Parallel scan for cells whose recurrence is linear in the state: h_t = a_t * h_{t-1} + b_t.

What is here: `linear_scan_log`, which computes every h_t at once from log a_t and log b_t (b_t > 0)
with cumulative sums in log space (Heinsen 2023; used by minGRU and minLSTM), chunk by chunk so that
float32 keeps its precision on long sequences, and `linear_scan_loop`, the same recurrence step by
step. What is not: the cells (cells.py) or the choice between the two (layers.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_scan_log(
    log_a: Tensor, log_b: Tensor, h0: Tensor, mask: Tensor | None = None, chunk_size: int = 256
) -> Tensor:
    """All states of h_t = a_t h_{t-1} + b_t, computed in parallel over time.

    Within a chunk, h_t = A_t h_start + A_t * sum_{k<=t} b_k / A_k with A_t = prod_{j<=t} a_j, every
    product taken as a cumulative sum of logs and the sum as a cumulative log-sum-exp. Chunks run one
    after another, carrying the state; shorter chunks keep the log-magnitudes (and float32 rounding)
    small, longer ones give more parallel work.

    Args:
        log_a: (B, T, H) log of the decay a_t in (0, 1].
        log_b: (B, T, H) log of the input term b_t > 0.
        h0: (B, H) the state before the first step (any sign).
        mask: (B, T) bool, False at padding: there the state is carried unchanged.
        chunk_size: steps per chunk.
    Returns:
        (B, T, H) the state after every step.
    """
    if mask is not None:
        m = mask.unsqueeze(-1)  # (B, T, 1)
        log_a = log_a.masked_fill(~m, 0.0)
        # A finite stand-in for log 0 keeps the backward pass of logcumsumexp free of NaN.
        log_b = log_b.masked_fill(~m, torch.finfo(log_b.dtype).min / 4)
    outputs = []
    h = h0
    for start in range(0, log_a.shape[1], chunk_size):
        la, lb = log_a[:, start : start + chunk_size], log_b[:, start : start + chunk_size]
        log_A = la.cumsum(dim=1)  # (B, C, H)
        decay = log_A.exp()
        out = decay * h.unsqueeze(1) + (log_A + torch.logcumsumexp(lb - log_A, dim=1)).exp()  # (B, C, H)
        outputs.append(out)
        h = out[:, -1]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)


def linear_scan_loop(a: Tensor, b: Tensor, h0: Tensor, mask: Tensor | None = None) -> Tensor:
    """The same recurrence one step at a time from a (B, T, H), b (B, T, H) and h0 (B, H)."""
    outputs = []
    h = h0
    for t in range(a.shape[1]):
        new = a[:, t] * h + b[:, t]
        h = new if mask is None else torch.where(mask[:, t].unsqueeze(1), new, h)
        outputs.append(h)
    return torch.stack(outputs, dim=1)  # (B, T, H)
