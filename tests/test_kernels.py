"""The whole-sequence functions with a hand-written backward (rnnkit.kernels.sequences) against autograd through
the cells' own step-by-step recurrence, in float64: outputs, final states and every gradient, with
variable lengths, a recurrent dropout mask and gradients flowing into the final state.

The layer-normalised LSTM and GRU and the peephole LSTM have two implementations of their steps: the fused C++ kernels
(rnnkit.kernels.native), used wherever they build (with the time loop in C++ where PyTorch's library offers a GEMM,
in Python otherwise), and the ATen one; `name:python-loop` and `name:aten` run the same checks on the other
two."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import torch
from torch.testing import assert_close

from rnnkit.cells import make_cell
from rnnkit.kernels import native

B, T, I, H = 3, 7, 4, 5
DT = torch.float64
NAMES = ["layernorm-lstm", "layernorm-lstm:python-loop", "layernorm-lstm:aten", "layernorm-gru",
         "layernorm-gru:python-loop", "layernorm-gru:aten", "peephole-lstm", "peephole-lstm:python-loop",
         "peephole-lstm:aten"]
CONTEXTS = {"python-loop": native.python_loop, "aten": native.disabled}


@pytest.fixture(autouse=True)
def _kernel_path(request):
    """`name:aten` runs the test with rnnkit's native kernels switched off; `name:python-loop` with the
    native kernels driven from a Python time loop (torch.mm for the products)."""
    name = request.node.callspec.params.get("name", "") if hasattr(request.node, "callspec") else ""
    with CONTEXTS.get(name.partition(":")[2], contextlib.nullcontext)():
        yield


def _cell(name, seed=0):
    name = name.split(":")[0]
    torch.manual_seed(seed)
    cell = make_cell(name, I, H).to(DT)
    with torch.no_grad():  # gains, shifts and peepholes away from their 1/0 start
        for pname, p in cell.named_parameters():
            if pname.startswith(("ln_", "weight_c")):
                p.add_(0.3 * torch.randn_like(p))
    return cell


def _reference(cell, params, x, state, mask):
    """Autograd through `cell.recurrence`, step by step; mask (T, B, 1) or None."""
    xp = cell.project(x, params)  # (B, T, G*H)
    outputs = []
    for t in range(x.shape[1]):
        new = cell.recurrence(xp[:, t], state, params)
        if mask is None:
            state = new
            outputs.append(new[0])
        else:
            m = mask[t]
            state = tuple(torch.where(m, n, s) for n, s in zip(new, state, strict=True))
            outputs.append(new[0] * m)
    return torch.stack(outputs), state  # (T, B, H)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("lengths", [None, [T, 3, 5]])
@pytest.mark.parametrize("recurrent_dropout", [False, True])
def test_matches_autograd_through_the_steps(name, lengths, recurrent_dropout):
    cell = _cell(name)
    params = dict(cell.own_params())
    if recurrent_dropout:
        params["recurrent_mask"] = torch.bernoulli(torch.full((B, H), 0.6, dtype=DT)) / 0.6
    mask = None if lengths is None else (torch.arange(T).unsqueeze(1) < torch.tensor(lengths)).unsqueeze(2)
    x = torch.randn(B, T, I, dtype=DT)
    state = tuple(torch.randn(B, H, dtype=DT) for _ in range(cell.num_states))
    inputs = [x, *state, *cell.parameters()]
    for t in inputs:
        t.requires_grad_(True)
    out, final = cell.sequence(x.transpose(0, 1), state, params, mask)
    ref_out, ref_final = _reference(cell, params, x, state, mask)
    assert_close(out, ref_out)
    for a, b in zip(final, ref_final, strict=True):
        assert_close(a, b)
    weights = [torch.randn_like(out)] + [torch.randn_like(f) for f in final]

    def loss(o, f):
        return (o * weights[0]).sum() + sum((s * w).sum() for s, w in zip(f, weights[1:], strict=True))

    grads = torch.autograd.grad(loss(out, final), inputs)
    ref_grads = torch.autograd.grad(loss(ref_out, ref_final), inputs)
    names = ["x", *(f"state{k}" for k in range(len(state))), *(n for n, _ in cell.named_parameters())]
    for n, a, b in zip(names, grads, ref_grads, strict=True):
        assert_close(a, b, msg=n)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_with_lengths_and_recurrent_mask(name):
    cell = _cell(name, seed=1)
    params = {k: v.detach().clone().requires_grad_() for k, v in cell.own_params().items()}
    params["recurrent_mask"] = torch.tensor([[1.5, 0.0, 1.5, 1.5, 0.0]] * 2, dtype=DT)
    mask = (torch.arange(4).unsqueeze(1) < torch.tensor([4, 2])).unsqueeze(2)
    x = torch.randn(4, 2, I, dtype=DT, requires_grad=True)  # time-major
    state = tuple(torch.randn(2, H, dtype=DT, requires_grad=True) for _ in range(cell.num_states))
    trained = [k for k in params if k != "recurrent_mask"]

    def run(x, *tensors):
        p = {**params, **dict(zip(trained, tensors[cell.num_states:], strict=True))}
        out, final = cell.sequence(x, tensors[:cell.num_states], p, mask)
        return (out, *final)

    assert torch.autograd.gradcheck(run, (x, *state, *(params[k] for k in trained)))


@pytest.mark.parametrize("name", NAMES)
def test_without_biases(name):
    torch.manual_seed(2)
    cell = make_cell(name.split(":")[0], I, H, bias=False).to(DT)
    params = dict(cell.own_params())
    x = torch.randn(B, T, I, dtype=DT)
    state = tuple(torch.randn(B, H, dtype=DT) for _ in range(cell.num_states))
    out, final = cell.sequence(x.transpose(0, 1), state, params, None)
    ref_out, ref_final = _reference(cell, params, x, state, None)
    assert_close(out, ref_out)
    for a, b in zip(final, ref_final, strict=True):
        assert_close(a, b)


def test_second_order_gradients_are_refused_not_wrong():
    from rnnkit import Recurrent

    layer = Recurrent("layernorm-lstm", I, H).to(DT)
    x = torch.randn(B, T, I, dtype=DT, requires_grad=True)
    with pytest.raises(RuntimeError, match="whole_sequence = False"):
        torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    layer.whole_sequence = False  # the step loop: second order works
    (g,) = torch.autograd.grad(layer(x)[0].sum(), x, create_graph=True)
    g.square().sum().backward()
    assert layer.weight_hh_l0.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_inference_takes_the_step_loop_and_agrees(name):
    from rnnkit import Recurrent

    torch.manual_seed(3)
    layer = Recurrent(name.split(":")[0], I, H, num_layers=2, bidirectional=True).to(DT)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([T, 2, 5])
    trained, final = layer(x, lengths=lengths)  # whole-sequence functions (autograd on)
    assert trained.grad_fn is not None
    with torch.no_grad():  # no backward to prepare: the plain loop
        inferred, final_inferred = layer(x, lengths=lengths)
    assert_close(inferred, trained)
    for a, b in zip(final_inferred if isinstance(final_inferred, tuple) else (final_inferred,),
                    final if isinstance(final, tuple) else (final,), strict=True):
        assert_close(a, b)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
def test_native_kernels_build_and_are_used_where_a_compiler_is():
    """Where a compiler is, the layer-normalised LSTM's steps run in the fused C++ kernels (the checks
    above then cover them in float64). In float32 over 50 steps, both paths stay within 1e-4 of a float64
    run, relative to each tensor's largest value (measured: up to 2e-5 fused, 1e-5 ATen; the kernels'
    vectorised exp and tanh round a little differently from ATen's)."""
    assert native.status().startswith("native ("), native.status()
    import copy

    from rnnkit import Recurrent

    torch.manual_seed(4)
    layer = Recurrent("layernorm-lstm", 6, 32, num_layers=2)
    x = torch.randn(4, 50, 6)
    lengths = torch.tensor([50, 17, 1, 33])

    def run(layer, x):
        x = x.clone().requires_grad_()
        out, (h, c) = layer(x, lengths=lengths)
        grads = torch.autograd.grad((out.square().sum() + h.sum() + c.sum()), [x, *layer.parameters()])
        return [out, h, c, *grads]

    reference = run(copy.deepcopy(layer).double(), x.double())
    fused = run(layer, x)
    with native.disabled():
        aten = run(layer, x)
    for f, a, r in zip(fused, aten, reference, strict=True):
        scale = r.abs().max().item() + 1e-12
        err_fused = (f.double() - r).abs().max().item() / scale
        err_aten = (a.double() - r).abs().max().item() / scale
        assert err_fused < 1e-4 and err_aten < 1e-4, (err_fused, err_aten)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="no C++ compiler")
@pytest.mark.parametrize("cell", ["layernorm-lstm", "layernorm-gru", "peephole-lstm", "gru", "lstm", "mingru"])
def test_native_kernels_on_two_threads_agree_with_one_and_repeat_exactly(cell):
    """With several threads the kernels split a step's rows (and minGRU's columns) between them, and sum the
    gains' gradients per thread; the result equals the one-thread run to rounding, and repeats bit for bit.
    The sizes are above the kernels' threshold for threading (B * 4H >= 16384)."""
    from rnnkit import Recurrent

    torch.manual_seed(5)
    layer = Recurrent(cell, 6, 512, recurrent_dropout=0.3 if cell == "gru" else 0.0).double()
    x = torch.randn(8, 9, 6, dtype=DT)
    lengths = torch.tensor([9, 3, 9, 1, 5, 9, 9, 2])

    def run():
        torch.manual_seed(6)  # the same recurrent dropout mask on every run
        out, state = layer(x, lengths=lengths)
        state = state if isinstance(state, tuple) else (state,)
        loss = out.square().sum() + sum(s.sum() for s in state)
        return [out, *state, *torch.autograd.grad(loss, list(layer.parameters()))]

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two, again = run(), run()
    finally:
        torch.set_num_threads(previous)
    for a, b, c in zip(one, two, again, strict=True):
        assert_close(b, a, rtol=1e-10, atol=1e-10)
        assert torch.equal(b, c)


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole-lstm", "layernorm-gru", "layernorm-lstm"])
def test_a_kept_graph_gives_the_same_gradients_twice(cell):
    """The native backward writes the gates' gradient over the saved gates, and gives its buffers back to
    the scratch pool, when the graph is freed after it; with retain_graph=True it must leave them intact, so
    a second backward gives the same gradients as the first, and both equal a backward through a fresh
    graph."""
    from rnnkit import Recurrent

    torch.manual_seed(8)
    layer = Recurrent(cell, I, H, num_layers=2).double()
    x = torch.randn(B, T, I, dtype=DT)

    def loss():
        out, _ = layer(x)
        return (out * torch.linspace(-1, 1, H, dtype=DT)).sum()

    params = list(layer.parameters())
    fresh = torch.autograd.grad(loss(), params)
    kept = loss()
    first = torch.autograd.grad(kept, params, retain_graph=True)
    second = torch.autograd.grad(kept, params)
    for a, b, c in zip(fresh, first, second, strict=True):
        assert torch.equal(a, b)
        assert torch.equal(a, c)


def test_the_input_half_is_left_alone_unless_the_caller_gives_it_up():
    """CellSequence writes the LSTM's gates over xp only with xp_scratch=True (the layers' own temporary);
    by default the caller's xp is untouched and the results are the same either way."""
    from rnnkit.kernels.sequences import CellSequence

    torch.manual_seed(9)
    xp = torch.randn(T, B, 4 * H, dtype=DT)
    h0, c0, w = torch.randn(B, H, dtype=DT), torch.randn(B, H, dtype=DT), torch.randn(4 * H, H, dtype=DT)
    args = (h0, c0, w, None, None, None, None, None, None, None, None, None)
    kept = xp.clone()
    out = CellSequence.apply("lstm", xp, *args)
    assert torch.equal(xp, kept)
    scratch = xp.clone()
    again = CellSequence.apply("lstm", scratch, *args, None, True)
    assert not torch.equal(scratch, kept)  # now holds the gates
    for a, b in zip(out, again, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["rnn", "rnn-relu", "lstm", "gru"])
def test_a_bias_added_in_the_kernel_equals_one_added_to_xp(kind):
    """CellSequence's `bias` (the input half's, added in the kernel's steps, its gradient summed there)
    gives what the same bias added to xp beforehand gives, gradients included, with lengths."""
    from rnnkit.kernels.sequences import CellSequence

    torch.manual_seed(10)
    G = {"lstm": 4, "gru": 3}.get(kind, 1) * H
    u = torch.randn(T, B, G, dtype=DT, requires_grad=True)
    bias = torch.randn(G, dtype=DT, requires_grad=True)
    h0, w = torch.randn(B, H, dtype=DT), torch.randn(G, H, dtype=DT) * 0.5
    c0 = torch.randn(B, H, dtype=DT) if kind == "lstm" else None
    b_hn = torch.randn(H, dtype=DT) if kind == "gru" else None
    mask = (torch.arange(T).unsqueeze(1) < torch.tensor([T, 3, 5])).unsqueeze(2)
    rest = (None, mask, None, None, None, None, None, None)
    inside = CellSequence.apply(kind, u, h0, c0, w, b_hn, *rest, bias)
    outside = CellSequence.apply(kind, u + bias, h0, c0, w, b_hn, *rest)
    weights = [torch.randn_like(o) for o in inside]

    def grads(outs):
        return torch.autograd.grad(sum((o * k).sum() for o, k in zip(outs, weights, strict=True)), [u, bias])

    for a, b in zip(inside, outside, strict=True):
        assert_close(a, b)
    for a, b in zip(grads(inside), grads(outside), strict=True):
        assert_close(a, b)


def test_input_projection_matches_linear_and_its_buffer_is_reused():
    """InputProjection is x W^T with F.linear's gradients (gradcheck in float64); in training its output
    buffer, which the LSTM kernel turns into the gates and then their gradient, goes back to the pool after
    the backward and the next step takes it again, with the same results."""
    from rnnkit import Recurrent
    from rnnkit.kernels.sequences import SCRATCH, InputProjection

    x = torch.randn(4, 3, 5, dtype=DT, requires_grad=True)
    w = torch.randn(6, 5, dtype=DT, requires_grad=True)
    assert_close(InputProjection.apply(x, w), torch.nn.functional.linear(x, w))
    assert torch.autograd.gradcheck(lambda a, b: InputProjection.apply(a, b) * 1.0, (x, w))

    SCRATCH.clear()
    torch.manual_seed(11)
    layer = Recurrent("lstm", I, H, num_layers=2).double()
    x = torch.randn(B, T, I, dtype=DT)
    seen = []
    original = InputProjection.forward

    def spy(ctx, *args):
        out = original(ctx, *args)
        seen.append(out.data_ptr())
        return out

    results = []
    try:
        InputProjection.forward = staticmethod(spy)
        for _ in range(2):
            out, _ = layer(x)
            grads = torch.autograd.grad(out.square().sum(), list(layer.parameters()))
            results.append([out.detach(), *grads])
    finally:
        InputProjection.forward = staticmethod(original)
    assert set(seen[2:]) <= set(seen[:2])  # the second step reused the first step's buffers
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_the_scratch_pool_keeps_only_whole_tensors_within_its_limit():
    from rnnkit.kernels.sequences import ScratchPool

    pool = ScratchPool(limit_bytes=1000)
    whole, big = torch.empty(10, 10), torch.empty(20, 20)  # 400 and 1600 bytes
    pool.give(whole[:5], whole.t(), big)  # a view, a transposed view, and one over the limit: all refused
    assert pool.take((5, 10), whole).data_ptr() != whole.data_ptr()
    pool.give(whole)
    assert pool.take((10, 10), whole).data_ptr() == whole.data_ptr()
    assert pool.take((10, 10), whole).data_ptr() != whole.data_ptr()  # taken once only
