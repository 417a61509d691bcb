"""Whole-sequence forward and hand-written backward through time for cells without a fused kernel.

Under autograd, a layer-normalised or peephole LSTM run step by step records a dozen small nodes per
step, and the backward pass walks them one by one. The functions here run a layer over the whole
sequence in one `autograd.Function`:

- the forward keeps what the backward needs in (T, B, ...) buffers that every step writes into, lent by a
  workspace that takes them back when the graph is freed (on CPU, fresh memory faults on its first write,
  page by page, and at these sizes that cost more than a step's arithmetic);
- the backward goes through time with the gradient of a step written out by hand, in a few ATen calls
  (PyTorch's own layer-norm, sigmoid and tanh backward kernels among them);
- the gradients of the recurrent weights and of the gains are summed over all steps at once after the
  loop: one (G*H x T*B) @ (T*B x H) matrix product instead of T small ones.

The input half of each gate (W_ih x + b_ih, and b_hh) stays outside, computed for all steps at once
under ordinary autograd; the functions take it time-major as `xp` (T, B, G*H).

Both support `recurrent_mask` (B, H), a dropout mask on the state where it enters the recurrent
product, and `mask` (T, B, 1) bool for variable lengths: a row past its end keeps its state and
outputs zeros. The gradients are checked against autograd through the step-by-step cells in float64
(tests/test_sequences.py).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import Tensor

aten = torch.ops.aten
LN_EPS = 1e-5  # as cells._layer_norm


class Workspace:
    """CPU buffers lent to a forward pass and taken back when its graph is freed, to be lent again.

    A large block freshly allocated on CPU arrives unmapped, and the first write to each 4 KiB page
    faults: writing a step's gates (32 x 1024 floats) into fresh memory took 70-90 us here, into reused
    memory 20 us. Training calls the same shapes again and again, so the buffers of one call serve the
    next. At most `per_shape` idle buffers of each shape, dtype and device are kept; `clear` drops them.
    Buffers on other devices are allocated plainly (CUDA's caching allocator already reuses memory).
    """

    def __init__(self, per_shape: int = 16) -> None:
        self.per_shape = per_shape
        self._idle: dict[tuple, list[Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, like: Tensor, *shape: int) -> Tensor:
        """An uninitialised (shape) tensor of like's dtype and device."""
        if like.device.type == "cpu":
            with self._lock:
                idle = self._idle.get((shape, like.dtype, like.device))
                if idle:
                    return idle.pop()
        return like.new_empty(shape)

    def give(self, *tensors: Tensor | None) -> None:
        """Take buffers back (they must not be used again by the giver)."""
        with self._lock:
            for t in tensors:
                if t is None or t.device.type != "cpu":
                    continue
                idle = self._idle.setdefault((tuple(t.shape), t.dtype, t.device), [])
                if len(idle) < self.per_shape:
                    idle.append(t)

    def give_when_freed(self, owner: object, *tensors: Tensor | None) -> None:
        """Take buffers back once `owner` (an autograd context) is garbage: after its backward pass
        and the graph's release, or at once for a forward run without autograd."""
        weakref.finalize(owner, self.give, *tensors)

    def clear(self) -> None:
        with self._lock:
            self._idle.clear()


WORKSPACE = Workspace()


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _stack_stats(stats: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-step (mean, 1/std) pairs of a layer norm as two (T, B, 1) tensors."""
    return torch.stack([m for m, _ in stats]), torch.stack([s for _, s in stats])


def _advance(h_t, c_t, h, c, m, out, hs, cs):
    """Record a step of a two-state cell: the output (zero past a row's end) and the state (kept past it)."""
    if m is None:
        h, c = h_t, c_t
        out.append(h_t)
    else:
        h, c = torch.where(m, h_t, h), torch.where(m, c_t, c)
        out.append(h_t * m)
    hs.append(h)
    cs.append(c)
    return h, c


def _into_step(dh, dc, grad_out, m):
    """Split the gradients of the state after a step: what reaches the cell's new (h, c), and what passes
    straight to the state before it for rows past their end (None, None without a mask)."""
    d_new_h = dh + grad_out
    if m is None:
        return d_new_h, dc, None, None
    return d_new_h * m, dc * m, dh * ~m, dc * ~m


class LayerNormLSTMSequence(torch.autograd.Function):
    """LayerNormLSTMCell over a sequence (equations in its docstring).

    forward(xp (T, B, 4H) = LN(W_ih x; a_ih) + b_ih + b_hh, h0 (B, H), c0 (B, H), weight_hh (4H, H),
            ln_hh_weight (4H), ln_c_weight (H), ln_c_bias (H), recurrent_mask (B, H) or None,
            mask (T, B, 1) or None) -> outputs (T, B, H), h_T, c_T
    """

    @staticmethod
    def forward(ctx, xp, h0, c0, weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias, recurrent_mask, mask):
        T, B, G = xp.shape
        H = G // 4

        def new(*shape):
            return WORKSPACE.take(xp, *shape)

        # Every step writes into slices of these (no copies or stacking afterwards).
        hs, cs = new(T + 1, B, H), new(T + 1, B, H)  # the state before each step, and the last
        hs[0], cs[0] = h0, c0
        act = new(T, B, G)  # sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)
        c_new = cs[1:] if mask is None else new(T, B, H)  # each step's c' (rows past their end differ)
        tanh_c = new(T, B, H)
        out = hs[1:] if mask is None else new(T, B, H)
        r_hat = new(T, B, G)  # the recurrent products after their layer norm, before its gain
        product, gates = new(B, G), new(B, G)
        r_rstd, c_stats = [], []  # 1/std of the recurrent products' rows; mean and 1/std of c's
        weight_t = weight_hh.t()
        xs, acts, cns, tcs, outs, rhs = (v.unbind(0) for v in (xp, act, c_new, tanh_c, out, r_hat))
        a_i, a_f, a_g, a_o = (act[:, :, k * H:(k + 1) * H].unbind(0) for k in range(4))
        hss, css = hs.unbind(0), cs.unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        for t in range(T):
            h = hss[t] if recurrent_mask is None else hss[t] * recurrent_mask
            torch.mm(h, weight_t, out=product)
            normed, _, rstd = torch.native_layer_norm(product, [G], None, None, LN_EPS)
            rhs[t].copy_(normed)
            r_rstd.append(rstd)
            torch.addcmul(xs[t], normed, ln_hh_weight, out=gates)
            torch.sigmoid(gates, out=acts[t])
            torch.tanh(gates[:, 2 * H:3 * H], out=a_g[t])
            c_t = cns[t]
            torch.mul(a_f[t], css[t], out=c_t)
            c_t.addcmul_(a_i[t], a_g[t])
            ln_c, mean, rstd = torch.native_layer_norm(c_t, [H], ln_c_weight, ln_c_bias, LN_EPS)
            c_stats.append((mean, rstd))
            torch.tanh(ln_c, out=tcs[t])
            torch.mul(a_o[t], tcs[t], out=outs[t])
            if ms is not None:
                torch.where(ms[t], outs[t], hss[t], out=hss[t + 1])
                torch.where(ms[t], c_t, css[t], out=css[t + 1])
                outs[t].mul_(ms[t])
        WORKSPACE.give(product, gates)
        ctx.steps = (hs, cs, r_hat, torch.stack(r_rstd), act, c_new, tanh_c, _stack_stats(c_stats))
        ctx.save_for_backward(weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias, recurrent_mask, mask)
        WORKSPACE.give_when_freed(ctx, hs, cs, r_hat, act, tanh_c, *((c_new, out) if mask is not None else ()))
        return out.clone(), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias, recurrent_mask, mask = ctx.saved_tensors
        hs, cs, r_hat, r_rstd, act, c_new, tanh_c, c_stats = ctx.steps
        T, B, G = act.shape
        H = G // 4
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        dc = _zeros_if_none(grad_c, cs[0])
        d_gates = torch.empty_like(act)  # gradient of the pre-activations, = gradient of xp (returned)
        d_r = WORKSPACE.take(act, T, B, G)  # gradient of the recurrent products
        d_ln_c = WORKSPACE.take(act, T, B, H)  # gradient of LN(c') before the tanh
        d_act = WORKSPACE.take(act, B, G)
        d_i, d_f, d_g, d_o = (d_act[:, k * H:(k + 1) * H] for k in range(4))
        acts, cns, tcs, css = act.unbind(0), c_new.unbind(0), tanh_c.unbind(0), cs.unbind(0)
        a_i, a_f, a_g, a_o = (act[:, :, k * H:(k + 1) * H].unbind(0) for k in range(4))
        dgs, drs, dls = d_gates.unbind(0), d_r.unbind(0), d_ln_c.unbind(0)
        dgs_g = d_gates[:, :, 2 * H:3 * H].unbind(0)
        r_hats, r_rstds = r_hat.unbind(0), r_rstd.unbind(0)
        c_mean, c_rstd = (v.unbind(0) for v in c_stats)
        # The normalised products are saved, not the products: LN's backward is given them with mean 0
        # and 1/std 1, and the true 1/std is applied to its result.
        zero, one = act.new_zeros(B, 1), act.new_ones(B, 1)
        keep = [True, False, False]
        for t in range(T - 1, -1, -1):
            if ms is None:
                d_new_h, d_new_c = dh + gs[t], dc
            else:
                d_new_h, d_new_c, keep_h, keep_c = _into_step(dh, dc, gs[t], ms[t])
            torch.mul(d_new_h, tcs[t], out=d_o)
            aten.tanh_backward.grad_input(d_new_h * a_o[t], tcs[t], grad_input=dls[t])
            dc_t = aten.native_layer_norm_backward(dls[t], cns[t], [H], c_mean[t], c_rstd[t], ln_c_weight,
                                                   ln_c_bias, keep)[0]
            dc_t += d_new_c
            torch.mul(dc_t, a_g[t], out=d_i)
            torch.mul(dc_t, css[t], out=d_f)
            torch.mul(dc_t, a_i[t], out=d_g)
            aten.sigmoid_backward.grad_input(d_act, acts[t], grad_input=dgs[t])
            aten.tanh_backward.grad_input(d_g, a_g[t], grad_input=dgs_g[t])
            d_normed = aten.native_layer_norm_backward(dgs[t], r_hats[t], [G], zero, one, ln_hh_weight, None,
                                                       keep)[0]
            torch.mul(d_normed, r_rstds[t], out=drs[t])
            dh = torch.mm(drs[t], weight_hh)
            if recurrent_mask is not None:
                dh *= recurrent_mask
            dc = dc_t * a_f[t]
            if ms is not None:
                dh += keep_h
                dc += keep_c
        # The gradients of the weights and gains, for all steps at once.
        h_in = hs[:T] if recurrent_mask is None else hs[:T] * recurrent_mask
        d_weight_hh = d_r.view(T * B, G).t().mm(h_in.reshape(T * B, H))
        d_ln_hh = (d_gates * r_hat).sum((0, 1))
        d_ln_c_weight = (d_ln_c * ((c_new - c_stats[0]) * c_stats[1])).sum((0, 1))
        d_ln_c_bias = d_ln_c.sum((0, 1))
        WORKSPACE.give(d_r, d_ln_c, d_act)
        return d_gates, dh, dc, d_weight_hh, d_ln_hh, d_ln_c_weight, d_ln_c_bias, None, None


class LayerNormGRUSequence(torch.autograd.Function):
    """LayerNormGRUCell over a sequence (equations in its docstring).

    forward(xp (T, B, 3H) = LN(W_ih x; a_ih) + b_ih, h0 (B, H), weight_hh (3H, H), ln_hh_weight (3H),
            bias_hh (3H) or None, recurrent_mask (B, H) or None, mask (T, B, 1) or None)
            -> outputs (T, B, H), h_T
    """

    @staticmethod
    def forward(ctx, xp, h0, weight_hh, ln_hh_weight, bias_hh, recurrent_mask, mask):
        T, B, G = xp.shape
        H = G // 3
        weight_t = weight_hh.t()
        xs = xp.unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        hs, r, r_stats, hh, rz, n, out = [h0], [], [], [], [], [], []
        h = h0
        for t in range(T):
            r_t = torch.mm(h if recurrent_mask is None else h * recurrent_mask, weight_t)
            hh_t, mean, rstd = aten.native_layer_norm(r_t, [G], ln_hh_weight, bias_hh, LN_EPS)
            rz_t = torch.sigmoid(xs[t][:, :2 * H] + hh_t[:, :2 * H])
            n_t = torch.tanh(torch.addcmul(xs[t][:, 2 * H:], rz_t[:, :H], hh_t[:, 2 * H:]))
            h_t = torch.addcmul(n_t, rz_t[:, H:], h - n_t)
            if ms is None:
                out.append(h_t)
            else:
                out.append(h_t * ms[t])
                h_t = torch.where(ms[t], h_t, h)
            h = h_t
            hs.append(h)
            r.append(r_t)
            r_stats.append((mean, rstd))
            hh.append(hh_t)
            rz.append(rz_t)
            n.append(n_t)
        ctx.steps = (hs, r, r_stats, hh, rz, n)
        ctx.save_for_backward(weight_hh, ln_hh_weight, bias_hh, recurrent_mask, mask)
        return torch.stack(out), h

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        weight_hh, ln_hh_weight, bias_hh, recurrent_mask, mask = ctx.saved_tensors
        hs, r, r_stats, hh, rz, n = ctx.steps
        T = len(r)
        B, G = r[0].shape
        H = G // 3
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        d_xp, d_hh, d_r = [None] * T, [None] * T, [None] * T
        for t in range(T - 1, -1, -1):
            d_new = dh + gs[t]
            if ms is not None:
                keep = dh * ~ms[t]
                d_new = d_new * ms[t]
            z = rz[t][:, H:]
            d_pre = r[t].new_empty(B, G)  # d(x_r + h_r), d(x_z + h_z), d(x_n + r * h_n)
            torch.mul(d_new, hs[t] - n[t], out=d_pre[:, H:2 * H])  # d z
            aten.tanh_backward.grad_input(d_new - d_new * z, n[t], grad_input=d_pre[:, 2 * H:])
            torch.mul(d_pre[:, 2 * H:], hh[t][:, 2 * H:], out=d_pre[:, :H])  # d r
            aten.sigmoid_backward.grad_input(d_pre[:, :2 * H], rz[t], grad_input=d_pre[:, :2 * H])
            d_xp[t] = d_pre
            d_hh[t] = dg = d_pre.clone()
            dg[:, 2 * H:] *= rz[t][:, :H]
            mean, rstd = r_stats[t]
            d_r[t] = aten.native_layer_norm_backward(dg, r[t], [G], mean, rstd, ln_hh_weight, bias_hh,
                                                     [True, False, False])[0]
            back = torch.mm(d_r[t], weight_hh)
            if recurrent_mask is not None:
                back *= recurrent_mask
            dh = torch.addcmul(back, d_new, z)
            if ms is not None:
                dh += keep
        h_in = torch.stack(hs[:T])
        if recurrent_mask is not None:
            h_in = h_in * recurrent_mask
        d_weight_hh = torch.cat(d_r).t().mm(h_in.view(T * B, H))
        d_hh_all = torch.stack(d_hh)
        r_all = torch.stack(r)
        mean, rstd = torch.stack([m for m, _ in r_stats]), torch.stack([s for _, s in r_stats])
        d_ln_hh = (d_hh_all * ((r_all - mean) * rstd)).sum((0, 1))
        d_bias_hh = d_hh_all.sum((0, 1)) if bias_hh is not None else None
        return torch.stack(d_xp), dh, d_weight_hh, d_ln_hh, d_bias_hh, None, None


class PeepholeLSTMSequence(torch.autograd.Function):
    """PeepholeLSTMCell over a sequence (equations in its docstring).

    forward(xp (T, B, 4H) = W_ih x + b_ih + b_hh, h0 (B, H), c0 (B, H), weight_hh (4H, H),
            weight_ci, weight_cf, weight_co (H), recurrent_mask (B, H) or None, mask (T, B, 1) or None)
            -> outputs (T, B, H), h_T, c_T
    """

    @staticmethod
    def forward(ctx, xp, h0, c0, weight_hh, weight_ci, weight_cf, weight_co, recurrent_mask, mask):
        T, B, G = xp.shape
        H = G // 4
        weight_t = weight_hh.t()
        peep_if = torch.stack([weight_ci, weight_cf])  # (2, H)
        xs = xp.unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        hs, cs, c_new, i_f, g, o, tanh_c, out = [h0], [c0], [], [], [], [], [], []
        h, c = h0, c0
        for t in range(T):
            pre = torch.addmm(xs[t], h if recurrent_mask is None else h * recurrent_mask, weight_t)
            if_t = torch.sigmoid(torch.addcmul(pre[:, :2 * H].view(B, 2, H), c.unsqueeze(1), peep_if))
            g_t = torch.tanh(pre[:, 2 * H:3 * H])
            c_t = torch.addcmul(if_t[:, 1] * c, if_t[:, 0], g_t)
            o_t = torch.sigmoid(torch.addcmul(pre[:, 3 * H:], weight_co, c_t))
            tc = torch.tanh(c_t)
            h_t = o_t * tc
            h, c = _advance(h_t, c_t, h, c, None if ms is None else ms[t], out, hs, cs)
            c_new.append(c_t)
            i_f.append(if_t)
            g.append(g_t)
            o.append(o_t)
            tanh_c.append(tc)
        ctx.steps = (hs, cs, c_new, i_f, g, o, tanh_c)
        ctx.save_for_backward(weight_hh, peep_if, weight_co, recurrent_mask, mask)
        return torch.stack(out), h, c

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        weight_hh, peep_if, weight_co, recurrent_mask, mask = ctx.saved_tensors
        hs, cs, c_new, i_f, g, o, tanh_c = ctx.steps
        T = len(g)
        B, H = g[0].shape
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        dc = _zeros_if_none(grad_c, cs[0])
        d_pre = [None] * T
        for t in range(T - 1, -1, -1):
            d_new_h, d_new_c, keep_h, keep_c = _into_step(dh, dc, gs[t], None if ms is None else ms[t])
            dp = g[t].new_empty(B, 4 * H)  # gradients of the gate pre-activations i, f, g, o
            aten.sigmoid_backward.grad_input(d_new_h * tanh_c[t], o[t], grad_input=dp[:, 3 * H:])
            dc_t = aten.tanh_backward(d_new_h * o[t], tanh_c[t])
            dc_t += d_new_c
            dc_t.addcmul_(dp[:, 3 * H:], weight_co)
            d_if = dp[:, :2 * H].view(B, 2, H)
            torch.mul(dc_t, g[t], out=d_if[:, 0])
            torch.mul(dc_t, cs[t], out=d_if[:, 1])
            aten.sigmoid_backward.grad_input(d_if, i_f[t], grad_input=d_if)
            aten.tanh_backward.grad_input(dc_t * i_f[t][:, 0], g[t], grad_input=dp[:, 2 * H:3 * H])
            d_pre[t] = dp
            dh = torch.mm(dp, weight_hh)
            if recurrent_mask is not None:
                dh *= recurrent_mask
            dc = (d_if * peep_if).sum(1).addcmul_(dc_t, i_f[t][:, 1])
            if ms is not None:
                dh += keep_h
                dc += keep_c
        d_pre_all = torch.stack(d_pre)  # (T, B, 4H)
        h_in = torch.stack(hs[:T])
        if recurrent_mask is not None:
            h_in = h_in * recurrent_mask
        d_weight_hh = d_pre_all.view(T * B, 4 * H).t().mm(h_in.view(T * B, H))
        c_in = torch.stack(cs[:T])
        d_peep_if = (d_pre_all[..., :2 * H].view(T, B, 2, H) * c_in.unsqueeze(2)).sum((0, 1))
        d_weight_co = (d_pre_all[..., 3 * H:] * torch.stack(c_new)).sum((0, 1))
        return d_pre_all, dh, dc, d_weight_hh, d_peep_if[0], d_peep_if[1], d_weight_co, None, None
