"""`Recurrent` against nn.RNN / nn.LSTM / nn.GRU with copied weights, on every path: PyTorch's fused kernel
(`fused=True`), the default (for training on the CPU: rnnkit's native kernels with the time loop in C++),
the native kernels driven from a Python time loop (where PyTorch's library has no usable GEMM), and rnnkit's
loop of ATen calls (where the native kernels cannot be built)."""

import contextlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.testing import assert_close

from rnnkit import Recurrent, detach_state, reset_state
from rnnkit.kernels import native

TORCH = {
    "rnn": lambda **kw: nn.RNN(nonlinearity="tanh", **kw),
    "rnn-relu": lambda **kw: nn.RNN(nonlinearity="relu", **kw),
    "lstm": lambda **kw: nn.LSTM(**kw),
    "gru": lambda **kw: nn.GRU(**kw),
}
B, T, I, H = 4, 6, 5, 7
LENGTHS = {
    "none": None,
    "all-equal": torch.tensor([T, T, T, T]),
    "variable": torch.tensor([T, 1, 3, 5]),
}


# path -> (the layer's `fused` argument, the context it runs in)
PATHS = {
    "fused": (True, contextlib.nullcontext),
    "default": (None, contextlib.nullcontext),
    "native-python-loop": (False, native.python_loop),
    "aten-loop": (False, native.disabled),
}


def _pair(cell, num_layers, bidirectional, fused, dtype=torch.float32):
    ref = TORCH[cell](input_size=I, hidden_size=H, num_layers=num_layers, batch_first=True,
                      bidirectional=bidirectional).to(dtype)
    ours = Recurrent(cell, input_size=I, hidden_size=H, num_layers=num_layers, bidirectional=bidirectional,
                     fused=fused).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


def _run_ref(ref, x, state, lengths):
    if lengths is None:
        return ref(x, state)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = ref(packed, state)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, state


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("lengths_kind", list(LENGTHS))
def test_matches_torch(cell, num_layers, bidirectional, path, lengths_kind):
    fused, context = PATHS[path]
    with context():
        _check_matches_torch(cell, num_layers, bidirectional, fused, lengths_kind)


def _check_matches_torch(cell, num_layers, bidirectional, fused, lengths_kind):
    ours, ref = _pair(cell, num_layers, bidirectional, fused)
    lengths = LENGTHS[lengths_kind]
    D = 2 if bidirectional else 1
    x = torch.randn(B, T, I)
    h0 = torch.randn(num_layers * D, B, H)
    state = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    x_ref = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    out_ref, st_ref = _run_ref(ref, x_ref, state, lengths)
    out, st = ours(x_ours, state, lengths=lengths)
    assert out.shape == (B, T, D * H)
    assert_close(out, out_ref)
    for a, b in zip(_flat(st), _flat(st_ref), strict=True):
        assert_close(a, b)
    if lengths is not None:  # outputs past each end are exactly zero
        for b, n in enumerate(lengths.tolist()):
            assert torch.all(out[b, n:] == 0)
    # gradients of a loss touching the outputs and every part of the final state
    weights = torch.randn_like(out)
    loss_ref = (out_ref * weights).sum() + sum(s.square().sum() for s in _flat(st_ref))
    loss = (out * weights).sum() + sum(s.square().sum() for s in _flat(st))
    loss_ref.backward()
    loss.backward()
    assert_close(x_ours.grad, x_ref.grad)
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert_close(p.grad, ref_params[name].grad, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("cell", list(TORCH))
def test_state_dict_keys_shapes_both_ways(cell):
    ref = TORCH[cell](input_size=I, hidden_size=H, num_layers=2, batch_first=True, bidirectional=True)
    ours = Recurrent(cell, input_size=I, hidden_size=H, num_layers=2, bidirectional=True)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, I)
    assert_close(ours(x)[0], ref(x)[0])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("path", ["default", "native-python-loop", "aten-loop"])
def test_gradcheck_loop_float64(cell, bidirectional, path):
    with PATHS[path][1]():
        _check_gradcheck(cell, bidirectional)


def _check_gradcheck(cell, bidirectional):
    layer = Recurrent(cell, input_size=3, hidden_size=4, num_layers=2, bidirectional=bidirectional,
                      fused=False).double()
    x = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 1, 2])
    D = 2 if bidirectional else 1
    h0 = torch.randn(2 * D, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(x, h0):
        state = (h0, h0 * 0.5) if cell == "lstm" else h0
        out, st = layer(x, state, lengths=lengths)
        return out, *_flat(st)

    assert torch.autograd.gradcheck(f, (x, h0))


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("fused", [True, False])
def test_two_halves_equal_the_whole(cell, fused):
    layer = Recurrent(cell, input_size=I, hidden_size=H, num_layers=2, fused=fused)
    x = torch.randn(B, 10, I)
    whole, st_whole = layer(x)
    first, st = layer(x[:, :4])
    second, st = layer(x[:, 4:], st)
    assert_close(torch.cat([first, second], dim=1), whole)
    for a, b in zip(_flat(st), _flat(st_whole), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell", list(TORCH))
def test_step_equals_forward(cell):
    layer = Recurrent(cell, input_size=I, hidden_size=H, num_layers=3)
    x = torch.randn(B, 5, I)
    whole, st_whole = layer(x)
    state = None
    for t in range(5):
        out, state = layer.step(x[:, t], state)
        assert_close(out, whole[:, t])
    for a, b in zip(_flat(state), _flat(st_whole), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_step_without_autograd_matches_nn_lstm_and_follows_weight_changes(bias):
    # Under no_grad a plain LSTM steps through ATen's one-step function, on the weights as they are now.
    torch.manual_seed(0)
    layer = Recurrent("lstm", I, H, num_layers=2, bias=bias).double().eval()
    ref = nn.LSTM(I, H, num_layers=2, bias=bias, batch_first=True).double().eval()
    x = torch.randn(B, 5, I, dtype=torch.float64)
    for _ in range(2):  # before and after an update
        ref.load_state_dict(layer.state_dict())
        whole, (h_ref, c_ref) = ref(x)
        state = None
        with torch.no_grad():
            for t in range(5):
                out, state = layer.step(x[:, t], state)
                assert_close(out, whole[:, t])
        assert_close(state[0], h_ref)
        assert_close(state[1], c_ref)
        with torch.no_grad():  # an in-place update, as an optimizer makes: the cached product must follow
            for p in layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
    with torch.no_grad():
        layer.load_state_dict(ref.state_dict())
        assert_close(layer.step(x[:, 0])[0], ref(x[:, :1])[0][:, 0])


@pytest.mark.parametrize("optimizer", ["fused adam", "fused sgd", "adam"])
@pytest.mark.parametrize("cell", list(TORCH))
def test_step_without_autograd_matches_torch_nn_and_follows_every_optimizer_step(cell, optimizer):
    # Under no_grad the plain cells step through ATen's one-step functions on the live weights; fused
    # optimizers update those in place without bumping version counters, and the step must see it.
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=2).eval()
    params = list(layer.parameters())
    opt = {"fused adam": lambda: torch.optim.Adam(params, lr=0.1, fused=True),
           "fused sgd": lambda: torch.optim.SGD(params, lr=0.1, fused=True),
           "adam": lambda: torch.optim.Adam(params, lr=0.1)}[optimizer]()
    x = torch.randn(B, I)
    with torch.no_grad():
        before = layer.step(x)[0]
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    ref = TORCH[cell](input_size=I, hidden_size=H, num_layers=2, batch_first=True).eval()
    ref.load_state_dict(layer.state_dict())
    with torch.no_grad():
        out, state = layer.step(x)
        ref_out, ref_state = ref(x.unsqueeze(1))
    assert_close(out, ref_out[:, 0])
    for a, b in zip(_flat(state), _flat(ref_state), strict=True):
        assert_close(a, b)
    assert not torch.allclose(out, before)


@pytest.mark.parametrize("cell", list(TORCH))
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("path", ["native", "aten"])
def test_streaming_step_matches_torch_nn_on_every_path(cell, bias, dtype, path):
    """Under no_grad a plain cell steps through rnnkit's native step kernel (where it builds and PyTorch's
    library has a GEMM) or ATen's one-step functions; both equal torch.nn over several steps."""
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=2, bias=bias).to(dtype).eval()
    ref = TORCH[cell](input_size=I, hidden_size=H, num_layers=2, batch_first=True, bias=bias).to(dtype).eval()
    ref.load_state_dict(layer.state_dict())
    xs = torch.randn(B, 5, I, dtype=dtype)
    ref_out, ref_state = ref(xs)
    state = None
    with torch.no_grad(), native.disabled() if path == "aten" else contextlib.nullcontext():
        for t in range(xs.shape[1]):
            out, state = layer.step(xs[:, t], state)
            assert_close(out, ref_out[:, t])
    for a, b in zip(_flat(state), _flat(ref_state), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell", list(TORCH))
def test_step_without_autograd_equals_step_with_autograd(cell):
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=3, weight_drop=0.3).eval()
    x = torch.randn(B, 4, I)
    s_fast = s_slow = None
    for t in range(4):
        with torch.no_grad():
            fast, s_fast = layer.step(x[:, t], s_fast)
        slow, s_slow = layer.step(x[:, t], s_slow)
        assert_close(fast, slow.detach())
    for a, b in zip(_flat(s_fast), _flat(s_slow), strict=True):
        assert_close(a, b.detach())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("variational", [False, True])
def test_dropout_between_layers_train_only(fused, variational):
    if fused and variational:
        pytest.skip("variational dropout needs the loop path")
    layer = Recurrent("lstm", input_size=I, hidden_size=H, num_layers=2, dropout=0.5, fused=fused,
                      variational_dropout=variational)
    x = torch.randn(B, T, I)
    layer.train()
    a, _ = layer(x)
    b, _ = layer(x)
    assert not torch.allclose(a, b)
    layer.eval()
    c, _ = layer(x)
    d, _ = layer(x)
    assert_close(c, d)
    nodrop = Recurrent("lstm", input_size=I, hidden_size=H, num_layers=2, fused=fused)
    nodrop.load_state_dict(layer.state_dict())
    assert_close(c, nodrop(x)[0])


def test_variational_mask_is_shared_over_time():
    layer = Recurrent("rnn", input_size=I, hidden_size=H, dropout=0.5, variational_dropout=True)
    x = torch.randn(3, 8, 2 * H)
    y = layer._dropout(x)
    dropped = y == 0
    assert torch.equal(dropped, dropped[:, :1].expand_as(dropped))
    assert dropped.any()


def test_fused_choice():
    x = torch.randn(B, T, I)
    layer = Recurrent("lstm", I, H)
    assert layer._use_fused()
    # Training on the CPU goes to the native kernels where they build; inference stays with PyTorch's.
    assert layer._prefer_native(x) == (native.library() is not None)
    with torch.no_grad():
        assert not layer._prefer_native(x)
    assert not Recurrent("lstm", I, H, fused=True)._prefer_native(x)
    with native.disabled():
        assert not layer._prefer_native(x)
    assert not Recurrent("lstm", I, H, fused=False)._use_fused()
    assert not Recurrent("lstm", I, H, num_layers=2, dropout=0.3, variational_dropout=True)._use_fused()
    with pytest.raises(ValueError, match="fused=True is impossible.*variational"):
        Recurrent("lstm", I, H, num_layers=2, dropout=0.3, variational_dropout=True, fused=True)


def test_forget_bias_passes_to_cells_and_fused_path():
    layer = Recurrent("lstm", I, H, num_layers=2, forget_bias=1.0)
    assert torch.all(layer.bias_ih_l1[H : 2 * H] == 1.0)
    assert layer._use_fused()


def test_detach_and_reset_state():
    layer = Recurrent("lstm", I, H, num_layers=2)
    x = torch.randn(3, 4, I, requires_grad=True)
    _, (h, c) = layer(x)
    dh, dc = detach_state((h, c))
    assert not dh.requires_grad and not dc.requires_grad
    assert_close(dh, h.detach())
    rh, rc = reset_state((h, c), torch.tensor([False, True, False]))
    assert torch.all(rh[:, 1] == 0) and torch.all(rc[:, 1] == 0)
    assert_close(rh[:, 0], h[:, 0])
    rh2, _ = reset_state((h, c), torch.tensor([1]))
    assert_close(rh2, rh)
    # a reset row continues exactly like a fresh sequence
    y = torch.randn(3, 2, I)
    out, _ = layer(y, (rh, rc))
    fresh, _ = layer(y[1:2])
    assert_close(out[1:2], fresh)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(4, I)), r"input: expected shape \(B, T, I=5\); got \(4, 5\)"),
        (lambda m: m(torch.randn(2, 3, I + 1)), r"input: expected shape \(B, T, I=5\); got \(2, 3, 6\)"),
        (lambda m: m(torch.randn(2, 3, I), lengths=torch.tensor([3, 4])), r"lengths: expected values in 1\.\.T = 1\.\.3"),
        (lambda m: m(torch.randn(2, 3, I), lengths=torch.tensor([0, 3])), r"lengths: expected values in 1\.\.T"),
        (lambda m: m(torch.randn(2, 3, I), lengths=torch.tensor([3, 3, 3])), r"lengths: expected shape \(B,\) = \(2,\); got \(3,\)"),
        (lambda m: m(torch.randn(2, 3, I), lengths=torch.tensor([3.0, 2.0])), r"lengths: expected an integer tensor"),
        (lambda m: m(torch.randn(2, 3, I), (torch.zeros(2, 2, H), torch.zeros(2, 2, H))), r"state\[0\]: expected shape \(L\*D, B, H\) = \(4, 2, 7\); got \(2, 2, 7\)"),
        (lambda m: m(torch.randn(2, 3, I), torch.zeros(2, 2, H)), r"state: expected a tuple of 2 tensors"),
        (lambda m: m(torch.randn(2, 3, I), (torch.zeros(4, 3, H), torch.zeros(4, 2, H))), r"state\[0\]: expected shape \(L\*D, B, H\) = \(4, 2, 7\); got \(4, 3, 7\)"),
    ],
)
def test_bad_input_messages(call, message):
    layer = Recurrent("lstm", I, H, num_layers=2, bidirectional=True)
    with pytest.raises(ValueError, match=message):
        call(layer)


def test_state_dtype_must_match_input():
    layer = Recurrent("gru", I, H)
    with pytest.raises(ValueError, match=r"state: expected dtype torch.float32"):
        layer(torch.randn(2, 3, I), torch.zeros(1, 2, H, dtype=torch.float64))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="cell: unknown cell 'lstn'"):
        Recurrent("lstn", I, H)
    with pytest.raises(ValueError, match="num_layers: expected an integer >= 1; got 0"):
        Recurrent("lstm", I, H, num_layers=0)
    with pytest.raises(ValueError, match="dropout"):
        Recurrent("lstm", I, H, dropout=1.5)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "layernorm-lstm", "layernorm-gru", "peephole-lstm", "indrnn",
                                  "mingru", "minlstm"])
def test_every_cell_trains_under_bfloat16_autocast(cell):
    """Under CPU autocast the products come out in bfloat16; the hand-written recurrences run in float32
    outside it, the others under it. Outputs stay close to a float32 run and every weight gets a gradient."""
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=2)
    x = torch.randn(B, T, I)
    reference, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x, lengths=torch.tensor([T, 2, 4, 6]))
        out.float().square().sum().backward()
    assert_close(out[0].float(), reference[0], atol=0.05, rtol=0.05)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
