"""Parallel scan for cells whose recurrence is linear in the state: h_t = a_t * h_{t-1} + b_t.

What is here: `linear_scan_log`, which computes every h_t at once from log a_t and log b_t (b_t > 0)
with cumulative sums in log space (Heinsen 2023; used by minGRU and minLSTM), chunk by chunk so that
float32 keeps its precision on long sequences; `linear_recurrence`, the same recurrence step by step
with a hand-written backward pass (one fused multiply-add per step each way, no autograd graph per
step), which is the fast path on CPUs; and `linear_scan_loop`, the plain reference. What is not: the
cells (cells.py) or the choice between them (layers.py).
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


def _native(a: Tensor):
    """rnnkit's native kernels for the loops below, where they apply (float32/float64 on the CPU)."""
    if a.device.type != "cpu" or a.dtype not in (torch.float32, torch.float64):
        return None
    from rnnkit.kernels import native

    return native.library()


class _LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over time, with backpropagation through time written out.

    Backward: the gradient reaching h_t is g_t = dL/dh_t (from the outputs) + a_{t+1} * g_{t+1};
    then dL/db_t = g_t, dL/da_t = g_t * h_{t-1} and dL/dh_0 = a_1 * g_1. Only the g recurrence runs
    step by step; the rest is one element-wise product over the whole sequence.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        # a, b: (T, B, H) contiguous, time-major, so each step reads and writes one contiguous block.
        out = torch.empty_like(b)
        lib = _native(a)
        if lib is not None:  # the loop in C++ (rnnkit/kernels/native/cells.cpp)
            T, N = a.shape[0], a[0].numel()
            f = lib.rnnkit_linear_forward_f64 if a.dtype == torch.float64 else lib.rnnkit_linear_forward_f32
            f(a.data_ptr(), b.data_ptr(), h0.data_ptr(), out.data_ptr(), T, N, torch.get_num_threads())
        else:
            h = h0
            for t in range(a.shape[0]):
                h = torch.addcmul(b[t], a[t], h, out=out[t])
        ctx.save_for_backward(a, h0, out)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, h0, out = ctx.saved_tensors  # (T, B, H), (B, H), (T, B, H)
        grad_out = grad_out.contiguous()
        T = a.shape[0]
        g = torch.empty_like(grad_out)
        lib = _native(a)
        if lib is not None:
            f = lib.rnnkit_linear_backward_f64 if a.dtype == torch.float64 else lib.rnnkit_linear_backward_f32
            f(grad_out.data_ptr(), a.data_ptr(), g.data_ptr(), T, a[0].numel(), torch.get_num_threads())
        else:
            running = g[T - 1].copy_(grad_out[T - 1])
            for t in range(T - 2, -1, -1):
                running = torch.addcmul(grad_out[t], a[t + 1], running, out=g[t])
        grad_a = torch.empty_like(g)
        torch.mul(g[1:], out[:-1], out=grad_a[1:])
        torch.mul(g[0], h0, out=grad_a[0])
        return grad_a, g, a[0] * g[0]


def linear_recurrence(a: Tensor, b: Tensor, h0: Tensor, mask: Tensor | None = None,
                      time_major: bool = False) -> Tensor:
    """All states of h_t = a_t h_{t-1} + b_t, sequentially, with a hand-written backward pass.

    Args:
        a, b: (B, T, H), or (T, B, H) with `time_major` (no copy is needed then).
        h0: (B, H).
        mask: (B, T) bool, False at padding: there the state is carried unchanged.
    Returns:
        (B, T, H) (a view of a time-major tensor), or (T, B, H) with `time_major`.
    """
    if not time_major:
        a, b = a.transpose(0, 1), b.transpose(0, 1)  # (T, B, H)
    if mask is not None:
        m = mask.transpose(0, 1).unsqueeze(-1)  # (T, B, 1)
        a = torch.where(m, a, torch.ones_like(a))
        b = torch.where(m, b, torch.zeros_like(b))
    out = _LinearRecurrence.apply(a.contiguous(), b.contiguous(), h0.contiguous())  # (T, B, H)
    return out if time_major else out.transpose(0, 1)
