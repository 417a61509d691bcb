"""Cells against torch.nn's cells with copied weights, and gradcheck in float64."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from rnnkit import GRUCell, LSTMCell, RNNCell, make_cell

CASES = [
    (lambda i, h, b=True: RNNCell(i, h, b, nonlinearity="tanh"),
     lambda i, h, b=True: nn.RNNCell(i, h, b, nonlinearity="tanh")),
    (lambda i, h, b=True: RNNCell(i, h, b, nonlinearity="relu"),
     lambda i, h, b=True: nn.RNNCell(i, h, b, nonlinearity="relu")),
    (lambda i, h, b=True: LSTMCell(i, h, b), lambda i, h, b=True: nn.LSTMCell(i, h, b)),
    (lambda i, h, b=True: GRUCell(i, h, b), lambda i, h, b=True: nn.GRUCell(i, h, b)),
]


@pytest.mark.parametrize("make_ours, make_ref", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_torch_both_ways(make_ours, make_ref, bias):
    ours, ref = make_ours(5, 6, bias), make_ref(5, 6, bias)
    assert sorted(ours.state_dict()) == sorted(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 5, requires_grad=True)
    if isinstance(ref, nn.LSTMCell):
        hx = (torch.randn(4, 6), torch.randn(4, 6))
        out_ref, out = ref(x, hx), ours(x, hx)
        assert_close(out[0], out_ref[0])
        assert_close(out[1], out_ref[1])
        loss_ref, loss = out_ref[0].sum() + out_ref[1].square().sum(), out[0].sum() + out[1].square().sum()
    else:
        hx = torch.randn(4, 6)
        out_ref, out = ref(x, hx), ours(x, hx)
        assert_close(out, out_ref)
        loss_ref, loss = out_ref.square().sum(), out.square().sum()
    g_ref = torch.autograd.grad(loss_ref, [x, *ref.parameters()])
    g = torch.autograd.grad(loss, [x, *ours.parameters()])
    for a, b in zip(g, g_ref, strict=True):
        assert_close(a, b)
    # and the other way: our weights into torch's cell
    ref.load_state_dict(ours.state_dict())


@pytest.mark.parametrize("make_ours", [c[0] for c in CASES])
def test_cell_gradcheck_float64(make_ours):
    cell = make_ours(3, 4).double()
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    if isinstance(cell, LSTMCell):
        c = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, h, c: cell(x, (h, c)), (x, h, c))
    else:
        assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x, h))


def test_zero_state_default_equals_explicit_zeros():
    cell = LSTMCell(3, 4)
    x = torch.randn(2, 3)
    h, c = cell(x)
    h2, c2 = cell(x, (torch.zeros(2, 4), torch.zeros(2, 4)))
    assert_close(h, h2)
    assert_close(c, c2)


def test_forget_bias_initialisation():
    cell = LSTMCell(3, 4, forget_bias=1.0)
    assert torch.all(cell.bias_ih[4:8] == 1.0)
    assert torch.all(cell.bias_hh[4:8] == 0.0)
    # other gates keep the uniform initialisation
    assert cell.bias_ih[:4].abs().max() <= 0.5


def test_unknown_cell_and_bad_sizes():
    with pytest.raises(ValueError, match="unknown cell 'lstn'.*lstm"):
        make_cell("lstn", 3, 4)
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMCell(3, 0)
    with pytest.raises(ValueError, match="nonlinearity"):
        RNNCell(3, 4, nonlinearity="sigmoid")
