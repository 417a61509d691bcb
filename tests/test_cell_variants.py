"""The cells no fused kernel offers, and the recurrent-path regularisers, against references written out here.

Each reference is a plain step-by-step implementation of the published equations in float64, run over
time by hand (per row, so that variable lengths need no masking logic); `Recurrent` must match it in
outputs, final states and every gradient, in one and two layers, both directions, with lengths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from rnnkit import Recurrent
from rnnkit.cells import CELLS, make_cell
from rnnkit.kernels.scan import linear_scan_log, linear_scan_loop

B, T, I, H = 3, 6, 4, 5
DT = torch.float64


def ln(v, gain, shift=None, eps=1e-5):
    mean = v.mean(-1, keepdim=True)
    var = ((v - mean) ** 2).mean(-1, keepdim=True)
    out = (v - mean) / torch.sqrt(var + eps) * gain
    return out if shift is None else out + shift


def g(v):
    return torch.where(v >= 0, v + 0.5, 1 / (1 + torch.exp(-v)))


def ref_step(name, p, x, state):
    """One step of the published equations; p holds the cell's parameters by their cell names."""
    sig = torch.sigmoid
    if name == "layernorm-lstm":
        h, c = state
        gates = ln(x @ p["weight_ih"].T, p["ln_ih_weight"]) + p["bias_ih"] + ln(h @ p["weight_hh"].T, p["ln_hh_weight"]) + p["bias_hh"]
        i, f, gg, o = gates.chunk(4, -1)
        c = sig(f) * c + sig(i) * torch.tanh(gg)
        return sig(o) * torch.tanh(ln(c, p["ln_c_weight"], p["ln_c_bias"])), c
    if name == "layernorm-gru":
        (h,) = state
        xr, xz, xn = (ln(x @ p["weight_ih"].T, p["ln_ih_weight"]) + p["bias_ih"]).chunk(3, -1)
        hr, hz, hn = (ln(h @ p["weight_hh"].T, p["ln_hh_weight"]) + p["bias_hh"]).chunk(3, -1)
        r, z = sig(xr + hr), sig(xz + hz)
        n = torch.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)
    if name == "peephole-lstm":
        h, c = state
        i, f, gg, o = (x @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]).chunk(4, -1)
        i = sig(i + p["weight_ci"] * c)
        f = sig(f + p["weight_cf"] * c)
        c = f * c + i * torch.tanh(gg)
        o = sig(o + p["weight_co"] * c)
        return o * torch.tanh(c), c
    if name == "indrnn":
        (h,) = state
        return (torch.relu(x @ p["weight_ih"].T + p["bias_ih"] + p["weight_hh"] * h),)
    if name == "mingru":
        (h,) = state
        zx, hx = (x @ p["weight_ih"].T + p["bias_ih"]).chunk(2, -1)
        z = sig(zx)
        return ((1 - z) * h + z * g(hx),)
    if name == "minlstm":
        (h,) = state
        fx, ix, hx = (x @ p["weight_ih"].T + p["bias_ih"]).chunk(3, -1)
        f, i = sig(fx), sig(ix)
        return (f / (f + i) * h + i / (f + i) * g(hx),)
    raise AssertionError(name)


NEW_CELLS = ["layernorm-lstm", "layernorm-gru", "peephole-lstm", "indrnn", "mingru", "minlstm"]
TWO_STATES = {"layernorm-lstm", "peephole-lstm"}


def ref_layer(name, layer, x, state, lengths, num_layers, bidirectional):
    """Run the reference over (B, T, I) row by row, each row over its own length."""
    D = 2 if bidirectional else 1
    parts = state if isinstance(state, tuple) else (state,)
    outputs, finals = [], [[None] * (num_layers * D) for _ in parts]
    rows = []
    for b in range(x.shape[0]):
        n = int(lengths[b]) if lengths is not None else x.shape[1]
        inp = x[b, :n]  # (n, I)
        for l in range(num_layers):
            outs = []
            for d in range(D):
                index = l * D + d
                suffix = f"_l{l}" + ("_reverse" if d else "")
                p = {k[: -len(suffix)]: v for k, v in layer.named_parameters() if k.endswith(suffix)}
                s = tuple(part[index, b] for part in parts)
                seq = inp if d == 0 else inp.flip(0)
                out = []
                for t in range(n):
                    s = ref_step(name, p, seq[t], s)
                    out.append(s[0])
                out = torch.stack(out)
                outs.append(out if d == 0 else out.flip(0))
                for k in range(len(parts)):
                    finals[k][index] = (finals[k][index] or []) + [s[k]]
            inp = torch.cat(outs, -1)
        pad = x.new_zeros(x.shape[1] - n, inp.shape[1])
        rows.append(torch.cat([inp, pad]))
    outputs = torch.stack(rows)
    final = tuple(torch.stack([torch.stack(f) for f in fk]) for fk in finals)
    return outputs, final


def _state(name, num_layers, D, batch=B):
    h0 = torch.randn(num_layers * D, batch, H, dtype=DT)
    return (h0, torch.randn_like(h0)) if name in TWO_STATES else h0


@pytest.mark.parametrize(("name", "scan"), [(n, None) for n in NEW_CELLS] + [("mingru", "parallel"),
                                                                           ("minlstm", "parallel")])
@pytest.mark.parametrize(("num_layers", "bidirectional"), [(1, False), (2, True)])
@pytest.mark.parametrize("lengths", [None, torch.tensor([T, 2, 4])])
def test_matches_the_written_out_equations(name, num_layers, bidirectional, lengths, scan):
    torch.manual_seed(0)
    layer = Recurrent(name, I, H, num_layers=num_layers, bidirectional=bidirectional, scan=scan).to(DT)
    with torch.no_grad():  # move the layer-norm gains and shifts off their 1/0 start
        for pname, p in layer.named_parameters():
            if pname.startswith("ln_"):
                p.add_(0.3 * torch.randn_like(p))
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, I, dtype=DT)
    state = _state(name, num_layers, D)
    if name in ("mingru", "minlstm"):
        state = state.abs() if scan == "parallel" else state
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, final = layer(x1, state, lengths)
    ref_out, ref_final = ref_layer(name, layer, x2, state, lengths, num_layers, bidirectional)
    assert_close(out, ref_out)
    for a, b in zip(final if isinstance(final, tuple) else (final,), ref_final, strict=True):
        assert_close(a, b)
    # Gradients: with respect to the input and every parameter.
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), [x1, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref_out * weight).sum(), [x2, *layer.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("name", NEW_CELLS)
def test_gradcheck(name):
    torch.manual_seed(1)
    layer = Recurrent(name, 3, 4, num_layers=2, bidirectional=True).to(DT)
    x = torch.randn(2, 4, 3, dtype=DT, requires_grad=True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradcheck(lambda inp: layer(inp, None, lengths)[0], (x,))


@pytest.mark.parametrize("name", NEW_CELLS)
def test_step_equals_forward(name):
    torch.manual_seed(2)
    layer = Recurrent(name, I, H, num_layers=2).to(DT).eval()
    x = torch.randn(B, T, I, dtype=DT)
    out, final = layer(x)
    state, steps = None, []
    for t in range(T):
        h, state = layer.step(x[:, t], state)
        steps.append(h)
    assert_close(torch.stack(steps, 1), out[..., :H])
    for a, b in zip(final if isinstance(final, tuple) else (final,), state if isinstance(state, tuple) else (state,),
                    strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("name", NEW_CELLS)
def test_standalone_cell_is_one_step_of_the_layer(name):
    torch.manual_seed(3)
    cell = make_cell(name, I, H).to(DT)
    x = torch.randn(B, I, dtype=DT)
    state = tuple(torch.randn(B, H, dtype=DT) for _ in range(cell.num_states))
    out = cell(x, state if len(state) > 1 else state[0])
    ref = ref_step(name, dict(cell.named_parameters()), x, state)
    assert_close(out if isinstance(out, tuple) else (out,), ref)


def test_every_cell_name_is_known_to_the_config():
    from rnnkit.config import CELL_NAMES

    assert set(CELLS) == set(CELL_NAMES)


# --------------------------------------------------------------------------- the parallel scan


@pytest.mark.parametrize("name", ["mingru", "minlstm"])
def test_scan_and_loop_agree_in_float64(name):
    torch.manual_seed(4)
    layer = Recurrent(name, I, H, num_layers=2, bidirectional=True).to(DT)
    x = torch.randn(2, 300, I, dtype=DT)
    lengths = torch.tensor([300, 123])
    h0 = torch.randn(4, 2, H, dtype=DT)  # any sign: the scan carries h0 outside the logs
    layer.scan = "loop"
    a, fa = layer(x, h0, lengths)
    layer.scan = "parallel"
    b, fb = layer(x, h0, lengths)
    assert (a - b).abs().max() < 1e-10
    assert (fa - fb).abs().max() < 1e-10


def test_scan_drift_in_float32_stays_within_the_loop_drift():
    # float32 against a float64 reference over a long sequence: the chunked log-space scan must stay
    # within a small multiple of the drift of the float32 step loop (both are rounding, not error).
    torch.manual_seed(5)
    B2, T2, H2 = 2, 4096, 16
    log_a = -torch.rand(B2, T2, H2, dtype=DT) * 0.2
    log_b = torch.randn(B2, T2, H2, dtype=DT) - 2
    h0 = torch.randn(B2, H2, dtype=DT)
    exact = linear_scan_loop(log_a.exp(), log_b.exp(), h0)
    scan32 = linear_scan_log(log_a.float(), log_b.float(), h0.float()).double()
    loop32 = linear_scan_loop(log_a.exp().float(), log_b.exp().float(), h0.float()).double()
    scale = exact.abs().max()
    scan_err = float((scan32 - exact).abs().max() / scale)
    loop_err = float((loop32 - exact).abs().max() / scale)
    assert scan_err < 1e-4, (scan_err, loop_err)
    assert scan_err < 50 * max(loop_err, 1e-7), (scan_err, loop_err)


def test_log_scan_matches_the_loop_with_masks():
    torch.manual_seed(6)
    log_a = -torch.rand(3, 50, 2, dtype=DT)
    log_b = torch.randn(3, 50, 2, dtype=DT)
    h0 = torch.randn(3, 2, dtype=DT)
    mask = torch.arange(50)[None] < torch.tensor([50, 7, 1])[:, None]
    for chunk in (1, 8, 256):
        assert_close(linear_scan_log(log_a, log_b, h0, mask, chunk), linear_scan_loop(log_a.exp(), log_b.exp(), h0, mask))


# ----------------------------------------------------------------- regularisers on the recurrent path


def _lstm_pair(**options):
    torch.manual_seed(7)
    ref = nn.LSTM(I, H, batch_first=True).to(DT)
    ours = Recurrent("lstm", I, H, **options).to(DT)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("fused", [None, False])
def test_weight_drop_equals_an_lstm_with_dropped_recurrent_weights(fused):
    ours, ref = _lstm_pair(weight_drop=0.4, fused=fused)
    x = torch.randn(B, T, I, dtype=DT)
    torch.manual_seed(11)
    out, _ = ours.train()(x)
    torch.manual_seed(11)
    dropped = F.dropout(ref.weight_hh_l0, 0.4, training=True)
    with torch.no_grad():
        ref.weight_hh_l0.copy_(dropped)
    ref_out, _ = ref(x)
    assert_close(out, ref_out)
    # At evaluation nothing is dropped.
    ours2, ref2 = _lstm_pair(weight_drop=0.4, fused=fused)
    assert_close(ours2.eval()(x)[0], ref2(x)[0])


def test_recurrent_dropout_masks_the_state_in_the_recurrent_product_only():
    ours, ref = _lstm_pair(recurrent_dropout=0.5)
    x = torch.randn(B, T, I, dtype=DT)
    torch.manual_seed(12)
    out, (h_final, c_final) = ours.train()(x)
    torch.manual_seed(12)
    mask = x.new_empty(B, H).bernoulli_(0.5) / 0.5
    p = {k[:-3]: v for k, v in ours.named_parameters()}
    h, c = torch.zeros(B, H, dtype=DT), torch.zeros(B, H, dtype=DT)
    outs = []
    for t in range(T):
        i, f, gg, o = (x[:, t] @ p["weight_ih"].T + p["bias_ih"] + (h * mask) @ p["weight_hh"].T + p["bias_hh"]).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    assert_close(out, torch.stack(outs, 1))
    assert_close(h_final[0], h)
    # Evaluation: the plain LSTM.
    assert_close(ours.eval()(x)[0], ref(x)[0])


def test_zoneout_mixes_in_expectation_at_evaluation():
    ours, _ = _lstm_pair(zoneout=0.25)
    x = torch.randn(B, T, I, dtype=DT)
    out, _ = ours.eval()(x)
    p = {k[:-3]: v for k, v in ours.named_parameters()}
    h, c = torch.zeros(B, H, dtype=DT), torch.zeros(B, H, dtype=DT)
    outs = []
    for t in range(T):
        i, f, gg, o = (x[:, t] @ p["weight_ih"].T + p["bias_ih"] + h @ p["weight_hh"].T + p["bias_hh"]).chunk(4, -1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        h, c = 0.25 * h + 0.75 * h_new, 0.25 * c + 0.75 * c_new
        outs.append(h)
    assert_close(out, torch.stack(outs, 1))


def test_zoneout_keeps_the_old_value_at_the_given_rate_in_training():
    torch.manual_seed(13)
    layer = Recurrent("gru", 8, 64, zoneout=0.3).to(DT).train()
    x = torch.randn(16, 40, 8, dtype=DT)
    out, _ = layer(x)
    kept = (out[:, 1:] == out[:, :-1]).to(DT).mean()
    assert abs(float(kept) - 0.3) < 0.03


def test_options_that_need_the_loop_refuse_the_fused_kernel():
    with pytest.raises(ValueError, match="loop path"):
        Recurrent("lstm", I, H, zoneout=0.1, fused=True)
    with pytest.raises(ValueError, match="recurrent_dropout"):
        Recurrent("lstm", I, H, recurrent_dropout=1.5)
    with pytest.raises(ValueError, match="scan"):
        Recurrent("mingru", I, H, scan="fast")


def test_indrnn_recurrent_weight_is_a_vector():
    layer = Recurrent("indrnn", I, H, num_layers=2)
    assert layer.weight_hh_l0.shape == (H,)
    assert not hasattr(layer, "bias_hh_l0") or layer.bias_hh_l0 is None
    assert float(layer.weight_hh_l0.detach().min()) >= 0.0


@pytest.mark.parametrize("path", ["native", "aten"])
def test_linear_recurrence_backward_passes_gradcheck(path):
    """The loop and its backward, in rnnkit's native kernels (where they build) and in ATen calls."""
    import contextlib

    from rnnkit.kernels import native

    with native.disabled() if path == "aten" else contextlib.nullcontext():
        _check_linear_recurrence()


def _check_linear_recurrence():
    from rnnkit.kernels.scan import linear_recurrence

    torch.manual_seed(8)
    a = torch.rand(2, 6, 3, dtype=DT, requires_grad=True)
    b = torch.randn(2, 6, 3, dtype=DT, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=DT, requires_grad=True)
    mask = torch.arange(6)[None] < torch.tensor([6, 4])[:, None]
    assert torch.autograd.gradcheck(lambda a, b, h0: linear_recurrence(a, b, h0, mask), (a, b, h0))
    assert_close(linear_recurrence(a, b, h0, mask), linear_scan_loop(a, b, h0, mask))
