"""The one loop of `Recurrent` and the kernels' choice of path (rnnkit.kernels.dispatch): the path each
configuration takes, decided once per call; the export mode (torch's scan operator) against the ordinary
forward; the hook on every step; and releasing the kernels' buffers."""

import contextlib

import pytest
import torch
from torch.testing import assert_close

from rnnkit import Recurrent, kernels
from rnnkit.kernels import dispatch, native

B, T, I, H = 3, 6, 4, 5
DT = torch.float64
NATIVE = native.library() is not None


def _flat(state):
    return list(state) if isinstance(state, tuple) else [state]


def _path(layer, x, grad=True, context=contextlib.nullcontext):
    with torch.set_grad_enabled(grad), context():
        return kernels.choose_path(layer._cells[0], x, fused=layer.fused, fused_possible=layer._fused_possible,
                                   whole_sequence=layer.whole_sequence, scan=layer.scan,
                                   stepwise=layer.zoneout > 0 or layer.step_hook is not None,
                                   export=layer.export_mode)


def test_each_configuration_takes_its_path():
    x = torch.randn(B, T, I)
    lstm = Recurrent("lstm", I, H)
    assert _path(lstm, x) == (kernels.SEQUENCE if NATIVE else kernels.FUSED)  # training on the CPU
    assert _path(lstm, x, grad=False) == kernels.FUSED  # inference: PyTorch's kernel
    assert _path(lstm, x, context=native.disabled) == kernels.FUSED
    assert _path(Recurrent("lstm", I, H, fused=True), x) == kernels.FUSED
    forced_loop = Recurrent("lstm", I, H, fused=False)
    assert _path(forced_loop, x, grad=False) == (kernels.SEQUENCE if NATIVE else kernels.STEPS)
    assert _path(forced_loop, x, context=native.disabled) == kernels.STEPS
    assert _path(Recurrent("lstm", I, H, zoneout=0.1), x) == kernels.STEPS
    norm = Recurrent("layernorm-lstm", I, H)
    assert _path(norm, x) == kernels.SEQUENCE  # native or ATen calls
    assert _path(norm, x, grad=False, context=native.disabled) == kernels.STEPS
    norm.whole_sequence = False
    assert _path(norm, x) == kernels.STEPS
    assert _path(Recurrent("indrnn", I, H), x) == kernels.STEPS
    assert _path(Recurrent("mingru", I, H), x) == kernels.RECURRENCE  # on the CPU
    assert _path(Recurrent("mingru", I, H, scan="parallel"), x) == kernels.SCAN
    assert _path(Recurrent("minlstm", I, H, zoneout=0.2), x) == kernels.STEPS
    lstm.export_mode = True
    assert _path(lstm, x) == kernels.EXPORT


@pytest.mark.parametrize("cell", ["lstm", "layernorm-gru", "mingru"])
def test_the_path_is_chosen_once_per_call(cell, monkeypatch):
    calls = []
    choose = dispatch.choose_path

    def counted(*args, **kwargs):
        calls.append(choose(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(dispatch, "choose_path", counted)
    layer = Recurrent(cell, I, H, num_layers=3, bidirectional=True)
    layer(torch.randn(B, T, I))
    assert len(calls) == 1


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "layernorm-lstm", "layernorm-gru", "peephole-lstm",
                                  "indrnn", "mingru", "minlstm"])
@pytest.mark.parametrize("zoneout", [0.0, 0.3])
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # torch's scan operator, run eagerly
def test_export_mode_computes_the_ordinary_forward(cell, zoneout):
    """The scan operator that export captures runs eagerly too: it equals the evaluation-mode forward (every
    path it replaces), with lengths, both directions, two layers and zoneout in expectation."""
    torch.manual_seed(0)
    layer = Recurrent(cell, I, H, num_layers=2, bidirectional=True, zoneout=zoneout).to(DT).eval()
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([T, 2, 4])
    state = tuple(torch.randn(4, B, H, dtype=DT) for _ in range(layer.num_states))
    state = state if len(state) > 1 else state[0]
    expected, expected_final = layer(x, state, lengths)
    layer.export_mode = True
    got, final = layer(x, state, lengths)
    assert_close(got, expected)
    for a, b in zip(_flat(final), _flat(expected_final), strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("cell", ["lstm", "gru", "mingru"])
def test_the_step_hook_sees_every_step_of_every_layer_and_direction(cell):
    torch.manual_seed(1)
    layer = Recurrent(cell, I, H, num_layers=2, bidirectional=True).to(DT)
    x = torch.randn(B, T, I, dtype=DT)
    lengths = torch.tensor([T, 1, 4])
    expected, expected_final = layer(x, lengths=lengths)
    seen = []

    def hook(index_layer, direction, t, new):
        seen.append((index_layer, direction, t))
        assert len(new) == layer.num_states and new[0].shape == (B, H)
        return new

    layer.step_hook = hook
    got, final = layer(x, lengths=lengths)
    assert seen == [(n, d, t) for n in range(2) for d in range(2) for t in range(T)]
    assert_close(got, expected)
    for a, b in zip(_flat(final), _flat(expected_final), strict=True):
        assert_close(a, b)


def test_the_state_a_step_hook_returns_is_handed_on():
    """A hook that gives back zeros after step k: the outputs up to k are the ordinary ones (a step's output
    is its own new state), and the rest are those of the layer run from a zero state after step k."""
    torch.manual_seed(2)
    layer = Recurrent("lstm", I, H).to(DT)
    x = torch.randn(B, T, I, dtype=DT)
    k = 2
    layer.step_hook = lambda index_layer, direction, t, new: tuple(map(torch.zeros_like, new)) if t == k else new
    got, (h, c) = layer(x)
    del layer.step_hook
    ordinary, _ = layer(x[:, : k + 1])
    rest, (rest_h, rest_c) = layer(x[:, k + 1 :])
    assert_close(got, torch.cat([ordinary, rest], dim=1))
    assert_close(h, rest_h)
    assert_close(c, rest_c)


def test_release_buffers_empties_the_scratch_pool():
    from rnnkit.kernels.sequences import SCRATCH

    kept = torch.empty(16, 16)
    SCRATCH.give(kept)
    kernels.release_buffers()
    assert SCRATCH.take((16, 16), kept).data_ptr() != kept.data_ptr()
