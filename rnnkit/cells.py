"""Recurrent cells: one time step each, batch-first, with torch.nn's parameter names and gate order.

What is here: `RNNCell` (tanh or relu), `LSTMCell`, `GRUCell`, the `Cell` base they share, and the
table of cell names (`CELLS`, `make_cell`). What is not: running a cell over time, stacking,
directions and lengths (layers.py).

Every cell splits its step in two so that a layer can hoist the input work out of the time loop:

    xp = cell.project(x, params)             # x (B, T, I) or (B, I) -> (B, T, G*H) or (B, G*H)
    state = cell.recurrence(xp_t, state, params)   # xp_t (B, G*H), state tuple of (B, H)

`params` maps the cell's own parameter names (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`) to
tensors. A cell used on its own passes its own parameters; `Recurrent` owns the parameters under
torch.nn's layer names (`weight_ih_l0`, ...) and passes them in, so the same cell code serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class Cell(nn.Module):
    """Base class of the cells: parameters, input projection and one step of the recurrence.

    Subclasses set `num_gates` (G, the multiple of H in the weight rows) and `num_states`
    (1 for h, 2 for (h, c)) and implement `recurrence`.
    """

    num_gates: int = 1
    num_states: int = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ValueError(
                f"input_size and hidden_size must be >= 1; got input_size={input_size}, "
                f"hidden_size={hidden_size}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        rows = self.num_gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(rows, input_size))
        self.weight_hh = nn.Parameter(torch.empty(rows, hidden_size))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch.nn initialises recurrent layers."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def own_params(self) -> dict[str, Tensor]:
        """This cell's parameters by name (None biases left out)."""
        return {name: p for name, p in self.named_parameters(recurse=False)}

    def project(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """Input half of the gates for every step at once: x W_ih^T + b_ih.

        Args:
            x: (B, T, I) or (B, I).
        Returns:
            (B, T, G*H) or (B, G*H).
        """
        return F.linear(x, params["weight_ih"], params.get("bias_ih"))

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        """One step given the projected input xp (B, G*H) and the previous state; returns the new state."""
        raise NotImplementedError

    def zero_state(self, batch_size: int, like: Tensor) -> State:
        """All-zero state for `batch_size` rows, on `like`'s device and dtype."""
        h = like.new_zeros(batch_size, self.hidden_size)
        return tuple(h for _ in range(self.num_states))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


class RNNCell(Cell):
    """Elman cell: h_t = f(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), f = tanh or relu.

    Same parameters as `torch.nn.RNNCell`; `forward(input, hx) -> h'` as there.
    """

    num_gates = 1
    num_states = 1

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)
        self._activation: Callable[[Tensor], Tensor] = torch.tanh if nonlinearity == "tanh" else torch.relu

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        return (self._activation(xp + F.linear(h, params["weight_hh"], params.get("bias_hh"))),)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        params = self.own_params()
        state = self.zero_state(input.shape[0], input) if hx is None else (hx,)
        return self.recurrence(self.project(input, params), state, params)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTMCell(Cell):
    """Long short-term memory cell, torch's gate order (input, forget, cell, output):

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        o = sigmoid(W_io x + b_io + W_ho h + b_ho)
        c' = f * c + i * g
        h' = o * tanh(c')

    Same parameters as `torch.nn.LSTMCell`; `forward(input, (h, c)) -> (h', c')` as there.

    Args:
        forget_bias: if given, the forget gate's input bias starts at this value (and its recurrent
            bias at 0), which helps gradients flow early in training (Jozefowicz et al. 2015 use 1.0).
    """

    num_gates = 4
    num_states = 2

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = None
    ) -> None:
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.forget_bias is not None and self.bias:
            H = self.hidden_size
            with torch.no_grad():
                self.bias_ih[H : 2 * H].fill_(self.forget_bias)
                self.bias_hh[H : 2 * H].zero_()

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        h, c = state
        gates = xp + F.linear(h, params["weight_hh"], params.get("bias_hh"))  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        params = self.own_params()
        state = self.zero_state(input.shape[0], input) if hx is None else tuple(hx)
        return self.recurrence(self.project(input, params), state, params)


class GRUCell(Cell):
    """Gated recurrent unit, torch's formulation (reset gate applied after the recurrent product):

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Same parameters as `torch.nn.GRUCell`; `forward(input, hx) -> h'` as there.
    """

    num_gates = 3
    num_states = 1

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        hp = F.linear(h, params["weight_hh"], params.get("bias_hh"))  # (B, 3H)
        xr, xz, xn = xp.chunk(3, dim=1)
        hr, hz, hn = hp.chunk(3, dim=1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (n + z * (h - n),)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        params = self.own_params()
        state = self.zero_state(input.shape[0], input) if hx is None else (hx,)
        return self.recurrence(self.project(input, params), state, params)[0]


def _rnn_tanh(i: int, h: int, bias: bool = True, **kw) -> Cell:
    return RNNCell(i, h, bias, nonlinearity="tanh", **kw)


def _rnn_relu(i: int, h: int, bias: bool = True, **kw) -> Cell:
    return RNNCell(i, h, bias, nonlinearity="relu", **kw)


# Cell name -> constructor (input_size, hidden_size, bias, **options).
CELLS: dict[str, Callable[..., Cell]] = {
    "rnn": _rnn_tanh,
    "rnn-relu": _rnn_relu,
    "lstm": LSTMCell,
    "gru": GRUCell,
}

# Cell name -> the mode of PyTorch's fused kernel that computes exactly the same function.
FUSED_MODES: dict[str, str] = {"rnn": "RNN_TANH", "rnn-relu": "RNN_RELU", "lstm": "LSTM", "gru": "GRU"}


def make_cell(name: str, input_size: int, hidden_size: int, bias: bool = True, **options) -> Cell:
    """Build the cell called `name` (one of `CELLS`)."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(CELLS)}")
    return CELLS[name](input_size, hidden_size, bias, **options)
