"""Whole-sequence forward and hand-written backward through time for cells without a fused kernel.

Under autograd, a layer-normalised or peephole LSTM run step by step records a dozen small nodes per
step, and the backward pass walks them one by one. The functions here run a layer over the whole
sequence in one `autograd.Function`:

- the forward keeps what the backward needs in (T, B, ...) buffers allocated once, that every step writes
  into (no per-step tensors to stack afterwards);
- the backward goes through time with the gradient of a step written out by hand, in a few ATen calls
  (PyTorch's own layer-norm, sigmoid and tanh backward kernels among them);
- the gradients of the recurrent weights and of the gains are summed over all steps at once after the
  loop: one (G*H x T*B) @ (T*B x H) matrix product instead of T small ones.

The input half of each gate (W_ih x + b_ih, and b_hh) stays outside, computed for all steps at once
under ordinary autograd; the functions take it time-major as `xp` (T, B, G*H). (CellSequence, the plain
cells' native function, takes the bias apart and adds it in its steps.)

All three support `recurrent_mask` (B, H), a dropout mask on the state where it enters the recurrent
product, and `mask` (T, B, 1) bool for variable lengths: a row past its end keeps its state and
outputs zeros. The gradients are checked against autograd through the step-by-step cells in float64
(tests/test_sequences.py).
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from rnnkit.kernels import native

aten = torch.ops.aten
LN_EPS = 1e-5  # as cells._layer_norm


def _first_order_only() -> None:
    """Refuse a backward pass that would itself be differentiated (create_graph=True): the gradient here
    is written out by hand for the first order only, and constants in its place would be silently wrong."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            "rnnkit's whole-sequence cells (layer-norm and peephole LSTM/GRU) have a first-order backward only; "
            "for second-order gradients (create_graph=True) set `layer.whole_sequence = False` on the Recurrent "
            "layer, which then runs the cell step by step under autograd")


class ScratchPool:
    """Large CPU scratch tensors kept from one training step to the next.

    A training step allocates the same big buffers every time: the input product (which the LSTM and GRU
    kernels turn into the gates, then into the gates' gradient), the states saved for the backward, tens of
    MB per layer. Fresh from the C allocator, memory of that size comes as new pages from the operating
    system, each zeroed and mapped on first touch (some 5 ms per training step of a 2-layer LSTM at B=32,
    T=100, H=512: benchmarks/speed.py). A buffer is given back once the backward that last reads it is done
    and the graph freed (not with retain_graph), and the next forward takes it again. At most `limit_bytes`
    are kept; GPU tensors never come here (PyTorch's caching allocator already does this there).
    """

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        self.limit_bytes = limit_bytes
        self._free: dict[tuple, list[Tensor]] = {}
        self._bytes = 0
        self._lock = threading.Lock()

    def take(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """An uninitialised tensor of `shape`, `like`'s dtype and device: a kept one where there is one."""
        key = (tuple(shape), like.dtype, like.device)
        with self._lock:
            kept = self._free.get(key)
            if kept:
                tensor = kept.pop()
                self._bytes -= tensor.nbytes
                return tensor
        return like.new_empty(shape)

    def give(self, *tensors: Tensor | None) -> None:
        """Keep these for a later take(); each must be a whole contiguous CPU tensor nobody reads again."""
        with self._lock:
            for tensor in tensors:
                if (tensor is None or tensor.device.type != "cpu" or not tensor.is_contiguous()
                        or tensor.storage_offset() != 0 or tensor.untyped_storage().nbytes() != tensor.nbytes
                        or self._bytes + tensor.nbytes > self.limit_bytes):
                    continue
                self._free.setdefault((tuple(tensor.shape), tensor.dtype, tensor.device), []).append(tensor)
                self._bytes += tensor.nbytes

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


SCRATCH = ScratchPool()


class InputProjection(torch.autograd.Function):
    """x W^T for every step at once, x (T, B, I) -> (T, B, G), into a buffer of SCRATCH: the input half of
    the gates for the native cells. Their kernels may write the gates, then the gates' gradient, over it;
    when that gradient comes back here (the same buffer), it returns to SCRATCH after the weight's and the
    input's gradients are taken from it."""

    @staticmethod
    def forward(ctx, x, weight):
        T, B, I = x.shape
        G = weight.shape[0]
        rows = x.reshape(T * B, I)
        out = SCRATCH.take((T, B, G), x)
        torch.mm(rows, weight.t(), out=out.view(T * B, G))
        ctx.save_for_backward(rows, weight)
        ctx.out_ptr = out.data_ptr()
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        rows, weight = ctx.saved_tensors
        T, B, G = grad.shape
        flat = grad.reshape(T * B, G)
        d_x = flat.mm(weight).view(T, B, -1) if ctx.needs_input_grad[0] else None
        d_weight = flat.t().mm(rows) if ctx.needs_input_grad[1] else None
        if grad.data_ptr() == ctx.out_ptr and not _graph_kept():
            SCRATCH.give(grad)
        return d_x, d_weight


def input_product(x: Tensor, weight: Tensor) -> Tensor:
    """x (T, B, I) W^T: through InputProjection where a CPU backward will follow, else F.linear."""
    if torch.is_grad_enabled() and x.device.type == "cpu" and (x.requires_grad or weight.requires_grad):
        return InputProjection.apply(x, weight)
    return torch.nn.functional.linear(x, weight)


def _graph_kept() -> bool:
    """Whether the backward pass now running keeps the graph for another one (retain_graph=True), so that
    the values saved for it must stay intact; True where PyTorch cannot say."""
    try:
        return bool(torch._C._autograd._get_current_graph_task_keep_graph())
    except (AttributeError, RuntimeError):
        return True


def _zeros_if_none(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _stack_stats(stats: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-step (mean, 1/std) pairs of a layer norm as two (T, B, 1) tensors."""
    return torch.stack([m for m, _ in stats]), torch.stack([s for _, s in stats])


def _normalised_product(h, recurrent_mask, weight_t, product, saved, rstds):
    """A step's recurrent product (h * mask) W_hh^T, layer-normalised without gain or shift: written into
    `product` (scratch), normalised into `saved` (the step's slice of a buffer), 1/std appended to `rstds`;
    returns the normalised product."""
    torch.mm(h if recurrent_mask is None else h * recurrent_mask, weight_t, out=product)
    normed, _, rstd = torch.native_layer_norm(product, [product.shape[1]], None, None, LN_EPS)
    saved.copy_(normed)
    rstds.append(rstd)
    return normed


def _keep_past_end(m, t, out_t, hss, c_t=None, css=None):
    """After step t, rows past their end (m False) keep the state from before it and output zeros."""
    torch.where(m, out_t, hss[t], out=hss[t + 1])
    if c_t is not None:
        torch.where(m, c_t, css[t], out=css[t + 1])
    out_t.mul_(m)


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
        new = xp.new_empty  # buffers of xp's dtype and device

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
            normed = _normalised_product(hss[t], recurrent_mask, weight_t, product, rhs[t], r_rstd)
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
                _keep_past_end(ms[t], t, outs[t], hss, c_t, css)
        ctx.steps = (hs, cs, r_hat, torch.stack(r_rstd), act, c_new, tanh_c, _stack_stats(c_stats))
        ctx.save_for_backward(weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias, recurrent_mask, mask)
        return out.clone(), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        _first_order_only()
        weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias, recurrent_mask, mask = ctx.saved_tensors
        hs, cs, r_hat, r_rstd, act, c_new, tanh_c, c_stats = ctx.steps
        T, B, G = act.shape
        H = G // 4
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        dc = _zeros_if_none(grad_c, cs[0])
        d_gates = torch.empty_like(act)  # gradient of the pre-activations, = gradient of xp (returned)
        d_r = act.new_empty(T, B, G)  # gradient of the recurrent products
        d_ln_c = act.new_empty(T, B, H)  # gradient of LN(c') before the tanh
        d_act = act.new_empty(B, G)
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
        return d_gates, dh, dc, d_weight_hh, d_ln_hh, d_ln_c_weight, d_ln_c_bias, None, None


def _native_library(xp: Tensor, H: int):
    """rnnkit's fused C++ step kernels (rnnkit/kernels/native) where they apply: float32 or float64 on the CPU,
    H <= 4096; None otherwise, or where they cannot be built (the ATen path below then runs)."""
    if xp.device.type != "cpu" or xp.dtype not in (torch.float32, torch.float64) or H > 4096:
        return None
    return native.library()


def _states(h0: Tensor, c0: Tensor | None, T: int, recurrent_mask: Tensor | None, pooled: bool = False):
    """The (T+1, B, H) buffers the native kernels keep the state in, the first row set: h, c (or None), and
    h * recurrent_mask (the products' input, or None without a mask); from SCRATCH with `pooled`."""
    B, H = h0.shape
    empty = (lambda: SCRATCH.take((T + 1, B, H), h0)) if pooled else (lambda: h0.new_empty(T + 1, B, H))
    hs = empty()
    hs[0] = h0
    cs = None
    if c0 is not None:
        cs = empty()
        cs[0] = c0
    h_in = None
    if recurrent_mask is not None:
        h_in = empty()
        torch.mul(h0, recurrent_mask, out=h_in[0])
    return hs, cs, h_in


def _run_forward(kind: str, slots, gemm, dtype, weight_hh: Tensor, inputs: Tensor, product: Tensor, *args):
    """The kernels' forward over all T steps: in one C++ call where PyTorch's BLAS is at hand (`gemm`),
    else a Python loop with torch.mm for each step's product and one kernel call for the rest."""
    lib, suffix = native.library(), "f64" if dtype == torch.float64 else "f32"
    if gemm is not None:
        getattr(lib, f"rnnkit_{kind}_forward_sequence_{suffix}")(slots, *args)
        return
    step, weight_t = getattr(lib, f"rnnkit_{kind}_forward_{suffix}"), weight_hh.t()
    for t, x in enumerate(inputs.unbind(0)[:-1]):
        torch.mm(x, weight_t, out=product)
        step(slots, t, *args)


def _run_backward(kind: str, slots, gemm, dtype, weight_hh: Tensor, d_product: Tensor, dh_mm: Tensor,
                  recurrent_mask: Tensor | None, keep_h: Tensor | None) -> Tensor:
    """The kernels' backward over all T steps, as `_run_forward`; returns the gradient of h_0."""
    lib, suffix = native.library(), "f64" if dtype == torch.float64 else "f32"
    if gemm is not None:
        getattr(lib, f"rnnkit_{kind}_backward_sequence_{suffix}")(slots)
    else:
        step, T = getattr(lib, f"rnnkit_{kind}_backward_{suffix}"), d_product.shape[0]
        for t, d in zip(range(T - 1, -1, -1), reversed(d_product.unbind(0)), strict=True):
            step(slots, t, int(t == T - 1))
            torch.mm(d, weight_hh, out=dh_mm)
    dh = dh_mm if recurrent_mask is None else dh_mm * recurrent_mask
    return dh if keep_h is None else dh + keep_h


def _recurrent_weight_gradient(d_product: Tensor, hs: Tensor, h_in: Tensor | None) -> Tensor:
    """dL/dW_hh for all steps in one product: d_product (T, B, G) against the products' inputs."""
    T, B, G = d_product.shape
    inputs = hs[:T] if h_in is None else h_in[:T]
    return d_product.view(T * B, G).t().mm(inputs.reshape(T * B, -1))


class NativeLayerNormLSTMSequence(torch.autograd.Function):
    """LayerNormLSTMCell over a sequence in rnnkit's native kernels (native/lnlstm.cpp): the time loop in
    C++, each step's recurrent product through PyTorch's BLAS (or torch.mm from a Python loop where there is
    none), and all of a step's element-wise work in one pass over each row, the input product's layer norm
    included; the gains' and shifts' gradients are summed in the kernel.

    forward(u (T, B, 4H) = W_ih x, ln_ih_weight (4H), shift_ih (4H) = b_ih + b_hh or None, h0 (B, H),
            c0 (B, H), weight_hh (4H, H), ln_hh_weight (4H), ln_c_weight (H), ln_c_bias (H),
            recurrent_mask (B, H) or None, mask (T, B, 1) or None) -> outputs (T, B, H), h_T, c_T
    """

    @staticmethod
    def forward(ctx, u, ln_ih_weight, shift_ih, h0, c0, weight_hh, ln_hh_weight, ln_c_weight, ln_c_bias,
                recurrent_mask, mask):
        T, B, G = u.shape
        H = G // 4
        new = u.new_empty
        u = u.contiguous()
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()
        # Where a backward will follow, the big buffers come from SCRATCH and go back at its end.
        pooled = any(ctx.needs_input_grad) and u.device.type == "cpu"
        big = (lambda *shape: SCRATCH.take(shape, u)) if pooled else new
        hs, cs, h_in = _states(h0, c0, T, recurrent_mask, pooled)
        step_mask = None if mask is None else mask.reshape(T, B).contiguous()
        buffers = dict(r_hat=big(T, B, G), r_rstd=new(T, B), act=big(T, B, G), c_mean=new(T, B), c_rstd=new(T, B),
                       tanh_c=big(T, B, H), c_new=cs[1:] if mask is None else new(T, B, H),
                       out=hs[1:] if mask is None else new(T, B, H), u_mean=new(T, B), u_rstd=new(T, B))
        product = new(B, G)
        weights = dict(gain_hh=ln_hh_weight.contiguous(), gain_c=ln_c_weight.contiguous(),
                       bias_c=ln_c_bias.contiguous(), gain_ih=ln_ih_weight.contiguous(),
                       shift_ih=None if shift_ih is None else shift_ih.contiguous())
        keep: list[Tensor] = []
        gemm = native.gemm_slots(weight_hh, B, keep, backward=any(ctx.needs_input_grad))
        slots = native.Slots(native.LNLSTM_SLOTS, T=T, B=B, H=H, xp=u, prod=product, mask=step_mask,
                             rmask=recurrent_mask, hs=hs, cs=cs, h_in=h_in, **buffers, **weights, **(gemm or {}))
        _run_forward("lnlstm", slots, gemm, u.dtype, weight_hh, hs if h_in is None else h_in, product, LN_EPS)
        ctx.gemm = (gemm, keep)
        ctx.steps = (u, hs, cs, h_in, buffers, weights, step_mask)
        ctx.save_for_backward(weight_hh, recurrent_mask)
        return buffers["out"].clone(), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        _first_order_only()
        weight_hh, recurrent_mask = ctx.saved_tensors
        u, hs, cs, h_in, buffers, weights, step_mask = ctx.steps
        T, B, G = u.shape
        H = G // 4
        new = u.new_empty
        dh_mm = _zeros_if_none(grad_h, hs[0]).clone()  # the gradient of h_T enters where the product's would
        dc = _zeros_if_none(grad_c, cs[0]).clone()
        keep_h = None if step_mask is None else u.new_zeros(B, H)
        d_u, d_r = new(T, B, G), SCRATCH.take((T, B, G), u)
        # g_hh, g_c, b_c, g_ih, shift_ih: summed over the steps in the kernel, in float64
        d_gains = u.new_zeros(3 * G + 2 * H, dtype=torch.float64)
        d_ln_hh, d_ln_c_weight, d_ln_c_bias, d_ln_ih, d_shift = d_gains.split([G, H, H, G, G])
        has_shift = weights["shift_ih"] is not None
        slots = native.Slots(native.LNLSTM_SLOTS, T=T, B=B, H=H, xp=u, mask=step_mask, rmask=recurrent_mask, cs=cs,
                             grad_out=None if grad_out is None else grad_out.contiguous(), dh_mm=dh_mm, keep_h=keep_h,
                             dc=dc, d_gates=d_u, d_r=d_r, d_gain_hh=d_ln_hh, d_gain_c=d_ln_c_weight,
                             d_bias_c=d_ln_c_bias, d_gain_ih=d_ln_ih, d_shift_ih=d_shift if has_shift else None,
                             **buffers, **weights, **(ctx.gemm[0] or {}))
        dh = _run_backward("lnlstm", slots, ctx.gemm[0], u.dtype, weight_hh, d_r, dh_mm, recurrent_mask, keep_h)
        d_weight_hh = _recurrent_weight_gradient(d_r, hs, h_in)
        grads = [g.to(u.dtype) for g in (d_ln_ih, d_shift, d_ln_hh, d_ln_c_weight, d_ln_c_bias)]
        if not _graph_kept():  # nothing reads the saved buffers again: they go back for the next forward
            SCRATCH.give(hs, cs, h_in, buffers["r_hat"], buffers["act"], buffers["tanh_c"], d_r)
            ctx.steps = None
        return (d_u, grads[0], grads[1] if has_shift else None, dh, dc, d_weight_hh, *grads[2:], None, None)


class CellSequence(torch.autograd.Function):
    """A plain cell (`rnn`, `rnn-relu`, `lstm`, `gru`; torch.nn's equations, in native/cells.cpp) over a
    sequence in rnnkit's native kernels: the time loop in C++, each step's recurrent product through
    PyTorch's BLAS, one fused pass for its element-wise work, forward and backward, and the recurrent
    weights' gradient for all steps in one product at the end. With the three layer-norm arguments, the
    GRU is LayerNormGRUCell; with the three peephole weights, the LSTM is PeepholeLSTMCell.

    forward(kind, xp (T, B, G) = W_ih x + b_ih + b_hh (GRU: + [b_hr, b_hz, 0]), h0 (B, H), c0 (B, H) or
            None (LSTM only), weight_hh (G, H), bias_hn (H) or None (GRU only), recurrent_mask (B, H) or
            None, mask (T, B, 1) or None, ln_ih_weight (G) or None, shift_ih (G) or None, ln_hh_weight (G)
            or None, weight_ci, weight_cf, weight_co (H each) or None, bias (G) or None, xp_scratch=False)
            -> outputs (T, B, H), h_T[, c_T]
    `bias`, where given, is the input half's bias (b_ih + b_hh; the GRU's b_ih + [b_hr, b_hz, 0]), added
    in the kernel's steps, xp then the bare product W_ih x: that saves a pass over a (T, B, G) tensor each
    way (adding the bias, and summing its gradient, which the kernel sums as it goes). Not with the layer
    norms, whose input bias is `shift_ih`.
    With `ln_ih_weight` (GRU only), xp is the bare product u = W_ih x and the input half is
    LN(u; ln_ih_weight) + shift_ih (shift_ih = b_ih + [b_hr, b_hz, 0]); with `ln_hh_weight`, the recurrent
    product enters as LN(W_hh h; ln_hh_weight), b_hh added after it as before.

    Memory traffic: with `xp_scratch` (xp is the caller's own temporary, which nothing else reads), the
    LSTM and GRU write their gates over xp, each step's row in place of the row it has just read, rather
    than into a buffer of their own; and a backward pass that frees the graph (no `retain_graph`) writes
    the gates' gradient over the saved gates the same way. Each saves a (T, B, G) buffer and a stream of
    cache misses per step (measured in benchmarks/speed.py).
    """

    @staticmethod
    def forward(ctx, kind, xp, h0, c0, weight_hh, bias_hn, recurrent_mask, mask, ln_ih_weight, shift_ih,
                ln_hh_weight, weight_ci, weight_cf, weight_co, bias=None, xp_scratch=False):
        T, B, G = xp.shape
        H = h0.shape[1]
        new = xp.new_empty
        lstm, gru = kind == "lstm", kind == "gru"
        # The gates may replace xp where the caller allows it and the backward does not read xp (it does
        # for the input layer norm of LayerNormGRUCell).
        in_place = xp_scratch and xp.is_contiguous() and ln_ih_weight is None
        xp = xp.contiguous()
        recurrent_mask = None if recurrent_mask is None else recurrent_mask.contiguous()
        # Where a backward will follow, the saved states come from SCRATCH and go back at its end.
        pooled = any(ctx.needs_input_grad) and xp.device.type == "cpu"
        hs, cs, h_in = _states(h0, c0 if lstm else None, T, recurrent_mask, pooled)
        step_mask = None if mask is None else mask.reshape(T, B).contiguous()
        gates = (xp if in_place else new(T, B, G)) if lstm or gru else None
        aux = (SCRATCH.take((T, B, H), xp) if pooled else new(T, B, H)) if lstm or gru else None
        buffers = dict(act=gates, aux=aux,
                       c_new=(cs[1:] if mask is None else new(T, B, H)) if lstm else None,
                       out=hs[1:] if mask is None else new(T, B, H))
        norms = {}
        if ln_ih_weight is not None:
            norms.update(gain_ih=ln_ih_weight.contiguous(), u_mean=new(T, B), u_rstd=new(T, B),
                         shift_ih=None if shift_ih is None else shift_ih.contiguous())
        if ln_hh_weight is not None:
            norms.update(gain_hh=ln_hh_weight.contiguous(), r_hat=new(T, B, G), r_rstd=new(T, B))
        if weight_ci is not None:
            norms.update(peep_i=weight_ci.contiguous(), peep_f=weight_cf.contiguous(), peep_o=weight_co.contiguous())
        if bias is not None and (ln_ih_weight is not None or ln_hh_weight is not None):
            raise ValueError("CellSequence: the layer-normalised GRU takes its input bias as shift_ih, not bias")
        bias_hn = None if bias_hn is None else bias_hn.contiguous()
        bias = None if bias is None else bias.contiguous()
        product = new(B, G)
        keep: list[Tensor] = []
        gemm = native.gemm_slots(weight_hh, B, keep, backward=any(ctx.needs_input_grad))
        slots = native.Slots(native.CELL_SLOTS, T=T, B=B, H=H, cell=native.CELL_KINDS[kind], xp=xp, prod=product,
                             bias_hn=bias_hn, mask=step_mask, rmask=recurrent_mask, hs=hs, cs=cs, h_in=h_in,
                             bias_x=bias, **buffers, **norms, **(gemm or {}))
        _run_forward("cell", slots, gemm, xp.dtype, weight_hh, hs if h_in is None else h_in, product, LN_EPS)
        ctx.gemm = (gemm, keep)
        ctx.kind = kind
        ctx.steps = (xp, hs, cs, h_in, buffers, norms, step_mask, bias_hn is not None, bias is not None)
        ctx.save_for_backward(weight_hh, recurrent_mask)
        out = buffers["out"].clone()
        return (out, hs[T].clone(), cs[T].clone()) if lstm else (out, hs[T].clone())

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c=None):
        _first_order_only()
        weight_hh, recurrent_mask = ctx.saved_tensors
        xp, hs, cs, h_in, buffers, norms, step_mask, has_bias_hn, has_bias = ctx.steps
        kind = ctx.kind
        T1, B, H = hs.shape
        T, G = T1 - 1, weight_hh.shape[0]
        new = hs.new_empty
        dh_mm = _zeros_if_none(grad_h, hs[0]).clone()  # the gradient of h_T enters where the product's would
        keep_h = hs.new_zeros(B, H)
        dc = _zeros_if_none(grad_c, hs[0]).clone() if kind == "lstm" else None
        kept = _graph_kept()
        # The saved gates are read for the last time at their own step, just before that step's gradient
        # is written: the gradient can take their place, unless the graph is kept for another backward.
        d_xp = buffers["act"] if buffers["act"] is not None and not kept else new(T, B, G)
        d_prod = SCRATCH.take((T, B, G), hs) if kind == "gru" else d_xp
        # b_hn, ln_ih_weight, shift_ih, ln_hh_weight, the peepholes, the bias: summed over the steps in the
        # kernel, in float64
        d_sums = hs.new_zeros(4 * H + 4 * G, dtype=torch.float64)
        d_bias_hn, d_ln_ih, d_shift, d_ln_hh, d_ci, d_cf, d_co, d_bias = d_sums.split([H, G, G, G, H, H, H, G])
        peep = "peep_i" in norms
        has = dict(bias_hn=has_bias_hn, ln_ih="gain_ih" in norms, shift=norms.get("shift_ih") is not None,
                   ln_hh="gain_hh" in norms, ci=peep, cf=peep, co=peep, bias=has_bias)
        slots = native.Slots(native.CELL_SLOTS, T=T, B=B, H=H, cell=native.CELL_KINDS[kind], xp=xp, mask=step_mask,
                             rmask=recurrent_mask, hs=hs, cs=cs,
                             grad_out=None if grad_out is None else grad_out.contiguous(), dh_mm=dh_mm, keep_h=keep_h,
                             dc=dc, d_xp=d_xp, d_prod=d_prod, d_bias_hn=d_bias_hn if has["bias_hn"] else None,
                             d_gain_ih=d_ln_ih if has["ln_ih"] else None, d_shift_ih=d_shift if has["shift"] else None,
                             d_gain_hh=d_ln_hh if has["ln_hh"] else None, d_peep_i=d_ci if peep else None,
                             d_peep_f=d_cf if peep else None, d_peep_o=d_co if peep else None,
                             d_bias_x=d_bias if has_bias else None, **buffers, **norms, **(ctx.gemm[0] or {}))
        dh = _run_backward("cell", slots, ctx.gemm[0], hs.dtype, weight_hh, d_prod, dh_mm, recurrent_mask, keep_h)
        d_weight_hh = _recurrent_weight_gradient(d_prod, hs, h_in)
        sums = [g.to(hs.dtype) if has[name] else None
                for name, g in zip(("bias_hn", "ln_ih", "shift", "ln_hh", "ci", "cf", "co", "bias"),
                                   (d_bias_hn, d_ln_ih, d_shift, d_ln_hh, d_ci, d_cf, d_co, d_bias), strict=True)]
        if not kept:  # nothing reads the saved states again: they go back for the next forward
            SCRATCH.give(hs, cs, h_in, buffers["aux"], d_prod if d_prod is not d_xp else None)
            ctx.steps = None
        return (None, d_xp, dh, dc, d_weight_hh, sums[0], None, None, *sums[1:], None)


def native_sequence_possible(x: Tensor, H: int) -> bool:
    """Whether the layer-normalised cells run in the native kernels on x (else their ATen steps)."""
    return _native_library(x, H) is not None


def native_cell_sequence_possible(x: Tensor) -> bool:
    """Whether CellSequence can run on x: float32 or float64 on the CPU, outside autocast (whose products
    come out in bfloat16), with the native kernels built."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and native.library() is not None)


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
        new = xp.new_empty  # buffers of xp's dtype and device


        hs = new(T + 1, B, H)  # the state before each step, and the last
        hs[0] = h0
        r_hat = new(T, B, G)  # the recurrent products after their layer norm, before its gain and shift
        hh = new(T, B, G)  # after them: [h_r, h_z, h_n]
        rz = new(T, B, 2 * H)  # the reset and update gates
        n = new(T, B, H)  # the candidate
        out = hs[1:] if mask is None else new(T, B, H)
        product = new(B, G)
        r_rstd = []
        weight_t = weight_hh.t()
        xs, rhs, hhs, rzs, ns, outs, hss = (v.unbind(0) for v in (xp, r_hat, hh, rz, n, out, hs))
        ms = mask.unbind(0) if mask is not None else None
        for t in range(T):
            normed = _normalised_product(hss[t], recurrent_mask, weight_t, product, rhs[t], r_rstd)
            if bias_hh is None:
                torch.mul(normed, ln_hh_weight, out=hhs[t])
            else:
                torch.addcmul(bias_hh, normed, ln_hh_weight, out=hhs[t])
            torch.sigmoid(torch.add(xs[t][:, :2 * H], hhs[t][:, :2 * H]), out=rzs[t])
            torch.tanh(torch.addcmul(xs[t][:, 2 * H:], rzs[t][:, :H], hhs[t][:, 2 * H:]), out=ns[t])
            torch.addcmul(ns[t], rzs[t][:, H:], hss[t] - ns[t], out=outs[t])
            if ms is not None:
                _keep_past_end(ms[t], t, outs[t], hss)
        ctx.steps = (hs, r_hat, torch.stack(r_rstd), hh, rz, n)
        ctx.save_for_backward(weight_hh, ln_hh_weight, bias_hh, recurrent_mask, mask)
        return out.clone(), hs[T].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        _first_order_only()
        weight_hh, ln_hh_weight, bias_hh, recurrent_mask, mask = ctx.saved_tensors
        hs, r_hat, r_rstd, hh, rz, n = ctx.steps
        T, B, G = r_hat.shape
        H = G // 3
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        d_xp = r_hat.new_empty(T, B, G)  # d(x_r + h_r), d(x_z + h_z), d(x_n + r * h_n) (returned)
        d_hh = r_hat.new_empty(T, B, G)
        d_r = r_hat.new_empty(T, B, G)
        dxs, dhhs, drs = d_xp.unbind(0), d_hh.unbind(0), d_r.unbind(0)
        rhs, hhs, rzs, ns, hss, rstds = (v.unbind(0) for v in (r_hat, hh, rz, n, hs, r_rstd))
        zero, one = r_hat.new_zeros(B, 1), r_hat.new_ones(B, 1)
        keep = [True, False, False]
        for t in range(T - 1, -1, -1):
            d_new = dh + gs[t]
            if ms is not None:
                passed = dh * ~ms[t]
                d_new = d_new * ms[t]
            z = rzs[t][:, H:]
            dx = dxs[t]
            torch.mul(d_new, hss[t] - ns[t], out=dx[:, H:2 * H])  # d z
            aten.tanh_backward.grad_input(d_new - d_new * z, ns[t], grad_input=dx[:, 2 * H:])
            torch.mul(dx[:, 2 * H:], hhs[t][:, 2 * H:], out=dx[:, :H])  # d r
            aten.sigmoid_backward.grad_input(dx[:, :2 * H], rzs[t], grad_input=dx[:, :2 * H])
            d_hh_t = dhhs[t]
            d_hh_t[:, :2 * H] = dx[:, :2 * H]
            torch.mul(dx[:, 2 * H:], rzs[t][:, :H], out=d_hh_t[:, 2 * H:])
            d_normed = aten.native_layer_norm_backward(d_hh_t, rhs[t], [G], zero, one, ln_hh_weight, None, keep)[0]
            torch.mul(d_normed, rstds[t], out=drs[t])
            back = torch.mm(drs[t], weight_hh)
            if recurrent_mask is not None:
                back *= recurrent_mask
            dh = torch.addcmul(back, d_new, z)
            if ms is not None:
                dh += passed
        h_in = hs[:T] if recurrent_mask is None else hs[:T] * recurrent_mask
        d_weight_hh = d_r.view(T * B, G).t().mm(h_in.reshape(T * B, H))
        d_ln_hh = (d_hh * r_hat).sum((0, 1))
        d_bias_hh = d_hh.sum((0, 1)) if bias_hh is not None else None
        return d_xp, dh, d_weight_hh, d_ln_hh, d_bias_hh, None, None


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
        new = xp.new_empty  # buffers of xp's dtype and device


        hs, cs = new(T + 1, B, H), new(T + 1, B, H)
        hs[0], cs[0] = h0, c0
        i_f = new(T, B, 2, H)  # the input and forget gates
        g, o, tanh_c = new(T, B, H), new(T, B, H), new(T, B, H)
        c_new = cs[1:] if mask is None else new(T, B, H)
        out = hs[1:] if mask is None else new(T, B, H)
        pre, pre_if, pre_o = new(B, G), new(B, 2, H), new(B, H)
        peep_if = torch.stack([weight_ci, weight_cf])  # (2, H)
        weight_t = weight_hh.t()
        xs, ifs, gs_, os_, tcs, cns, outs, hss, css = (
            v.unbind(0) for v in (xp, i_f, g, o, tanh_c, c_new, out, hs, cs))
        ms = mask.unbind(0) if mask is not None else None
        for t in range(T):
            h = hss[t] if recurrent_mask is None else hss[t] * recurrent_mask
            torch.addmm(xs[t], h, weight_t, out=pre)
            torch.addcmul(pre[:, :2 * H].view(B, 2, H), css[t].unsqueeze(1), peep_if, out=pre_if)
            torch.sigmoid(pre_if, out=ifs[t])
            torch.tanh(pre[:, 2 * H:3 * H], out=gs_[t])
            c_t = cns[t]
            torch.mul(ifs[t][:, 1], css[t], out=c_t)
            c_t.addcmul_(ifs[t][:, 0], gs_[t])
            torch.addcmul(pre[:, 3 * H:], weight_co, c_t, out=pre_o)
            torch.sigmoid(pre_o, out=os_[t])
            torch.tanh(c_t, out=tcs[t])
            torch.mul(os_[t], tcs[t], out=outs[t])
            if ms is not None:
                _keep_past_end(ms[t], t, outs[t], hss, c_t, css)
        ctx.steps = (hs, cs, c_new, i_f, g, o, tanh_c)
        ctx.save_for_backward(weight_hh, peep_if, weight_co, recurrent_mask, mask)
        return out.clone(), hs[T].clone(), cs[T].clone()

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        _first_order_only()
        weight_hh, peep_if, weight_co, recurrent_mask, mask = ctx.saved_tensors
        hs, cs, c_new, i_f, g, o, tanh_c = ctx.steps
        T, B, H = g.shape
        gs = _zeros_if_none(grad_out, hs[0].expand(T, B, H)).unbind(0)
        ms = mask.unbind(0) if mask is not None else None
        dh = _zeros_if_none(grad_h, hs[0])
        dc = _zeros_if_none(grad_c, cs[0])
        d_pre = g.new_empty(T, B, 4 * H)  # gradients of the gate pre-activations i, f, g, o (returned)
        dps = d_pre.unbind(0)
        ifs, gs_, os_, tcs, css = (v.unbind(0) for v in (i_f, g, o, tanh_c, cs))
        for t in range(T - 1, -1, -1):
            if ms is None:
                d_new_h, d_new_c = dh + gs[t], dc
            else:
                d_new_h, d_new_c, keep_h, keep_c = _into_step(dh, dc, gs[t], ms[t])
            dp = dps[t]
            aten.sigmoid_backward.grad_input(d_new_h * tcs[t], os_[t], grad_input=dp[:, 3 * H:])
            dc_t = aten.tanh_backward(d_new_h * os_[t], tcs[t])
            dc_t += d_new_c
            dc_t.addcmul_(dp[:, 3 * H:], weight_co)
            d_if = dp[:, :2 * H].view(B, 2, H)
            torch.mul(dc_t, gs_[t], out=d_if[:, 0])
            torch.mul(dc_t, css[t], out=d_if[:, 1])
            aten.sigmoid_backward.grad_input(d_if, ifs[t], grad_input=d_if)
            aten.tanh_backward.grad_input(dc_t * ifs[t][:, 0], gs_[t], grad_input=dp[:, 2 * H:3 * H])
            dh = torch.mm(dp, weight_hh)
            if recurrent_mask is not None:
                dh *= recurrent_mask
            dc = (d_if * peep_if).sum(1).addcmul_(dc_t, ifs[t][:, 1])
            if ms is not None:
                dh += keep_h
                dc += keep_c
        h_in = hs[:T] if recurrent_mask is None else hs[:T] * recurrent_mask
        d_weight_hh = d_pre.view(T * B, 4 * H).t().mm(h_in.reshape(T * B, H))
        d_peep_if = (d_pre[..., :2 * H].view(T, B, 2, H) * cs[:T].unsqueeze(2)).sum((0, 1))
        d_weight_co = (d_pre[..., 3 * H:] * c_new).sum((0, 1))
        return d_pre, dh, dc, d_weight_hh, d_peep_if[0], d_peep_if[1], d_weight_co, None, None
