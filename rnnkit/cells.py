"""Recurrent cells: one time step each, batch-first, with torch.nn's parameter names and gate order.

What is here: `RNNCell` (tanh or relu), `LSTMCell`, `GRUCell`; the variants no fused kernel offers:
`LayerNormLSTMCell`, `LayerNormGRUCell`, `PeepholeLSTMCell`, `IndRNNCell`, and the parallel-scan cells
`MinGRUCell` and `MinLSTMCell`; the `Cell` base they share (and, within it, `_LSTMFamily` for the
forget-bias LSTMs and `_LayerNormProducts` for the layer-normalised cells), and the table of cell names
(`CELLS`, `make_cell`). What is not: running a cell over time (rnnkit.kernels: whole-sequence functions,
scans, the choice between them) and stacking, directions and lengths (layers.py).

Every cell splits its step in two so that a layer can hoist the input work out of the time loop:

    xp = cell.project(x, params)             # x (B, T, I) or (B, I) -> (B, T, G*H) or (B, G*H)
    state = cell.recurrence(xp_t, state, params)   # xp_t (B, G*H), state tuple of (B, H)

`params` maps the cell's own parameter names (`weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`, and a
variant's extra ones) to tensors; it may also hold `recurrent_mask` (B, H), a dropout mask a layer
applies to the previous state where it enters the recurrent product (variational recurrent dropout).
A cell used on its own passes its own parameters; `Recurrent` owns the parameters under torch.nn's
layer names (`weight_ih_l0`, ...) and passes them in, so the same cell code serves both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.kernels.dispatch import cell_sequence

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
        hh_shape = self.recurrent_shape()
        if hh_shape is not None:
            self.weight_hh = nn.Parameter(torch.empty(*hh_shape))
        if bias:
            self.bias_ih = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_ih", None)
        if bias and hh_shape is not None and self.recurrent_bias:
            self.bias_hh = nn.Parameter(torch.empty(rows))
        else:
            self.register_parameter("bias_hh", None)
        self.add_extra_parameters()
        self.reset_parameters()

    # Whether the cell has a recurrent bias b_hh besides b_ih (torch.nn's cells do).
    recurrent_bias: bool = True

    def recurrent_shape(self) -> tuple[int, ...] | None:
        """Shape of weight_hh: (G*H, H) for a full recurrent matrix; None for a cell without one."""
        return (self.num_gates * self.hidden_size, self.hidden_size)

    def add_extra_parameters(self) -> None:
        """Hook for a variant's own parameters (layer-norm gains, peepholes), registered before init."""

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

    @staticmethod
    def hh(h: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """The recurrent product h W_hh^T + b_hh, with the layer's recurrent dropout mask on h if any."""
        mask = params.get("recurrent_mask")
        return F.linear(h if mask is None else h * mask, params["weight_hh"], params.get("bias_hh"))

    # The name of the cell's whole-sequence function in rnnkit.kernels (the cell over a whole sequence with a
    # hand-written backward through time), or None where it has none; the kernels decide where it runs.
    sequence_kind: str | None = None

    def sequence(self, x: Tensor, state: State, params: Mapping[str, Tensor], mask: Tensor | None
                 ) -> tuple[Tensor, State]:
        """The cell over a whole time-major sequence in its whole-sequence function (`sequence_kind`).

        Args:
            x: (T, B, I).
            mask: (T, B, 1) bool or None.
        Returns:
            outputs (T, B, H) and the final state.
        """
        return cell_sequence(self, x, state, params, mask)

    def forward(self, input: Tensor, hx: Tensor | tuple[Tensor, ...] | None = None) -> Tensor | State:
        """One step on its own: input (B, I) and the state (h, or (h, c)) in, the new state out."""
        params = self.own_params()
        if hx is None:
            state = self.zero_state(input.shape[0], input)
        else:
            state = (hx,) if isinstance(hx, Tensor) else tuple(hx)
        new = self.recurrence(self.project(input, params), state, params)
        return new[0] if self.num_states == 1 else new

    def zero_state(self, batch_size: int, like: Tensor) -> State:
        """All-zero state for `batch_size` rows, on `like`'s device and dtype."""
        h = like.new_zeros(batch_size, self.hidden_size)
        return tuple(h for _ in range(self.num_states))

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, bias={self.bias}"


def _init_forget_bias(cell: Cell) -> None:
    """LSTM-type cells: start the forget gate's input bias at `forget_bias` and its recurrent bias at 0."""
    if getattr(cell, "forget_bias", None) is not None and cell.bias:
        H = cell.hidden_size
        with torch.no_grad():
            cell.bias_ih[H : 2 * H].fill_(cell.forget_bias)
            cell.bias_hh[H : 2 * H].zero_()


class _LSTMFamily(Cell):
    """What the LSTM-type cells share: four gates in torch's order, the state (h, c), `forget_bias`."""

    num_gates = 4
    num_states = 2

    def __init__(
        self, input_size: int, hidden_size: int, bias: bool = True, forget_bias: float | None = None
    ) -> None:
        self.forget_bias = forget_bias
        super().__init__(input_size, hidden_size, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        _init_forget_bias(self)


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
        self.sequence_kind = "rnn" if nonlinearity == "tanh" else "rnn-relu"
        super().__init__(input_size, hidden_size, bias)
        self._activation: Callable[[Tensor], Tensor] = torch.tanh if nonlinearity == "tanh" else torch.relu

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        return (self._activation(xp + self.hh(h, params)),)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        params = self.own_params()
        state = self.zero_state(input.shape[0], input) if hx is None else (hx,)
        return self.recurrence(self.project(input, params), state, params)[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


class LSTMCell(_LSTMFamily):
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

    sequence_kind = "lstm"

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        h, c = state
        gates = xp + self.hh(h, params)  # (B, 4H)
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
    sequence_kind = "gru"

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        hp = self.hh(h, params)  # (B, 3H)
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


def _layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last dimension with a gain (and optional shift)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


class _LayerNormProducts(Cell):
    """What the layer-normalised cells share: the input and recurrent products each normalised over all G*H
    gates, with gains `ln_ih_weight` and `ln_hh_weight` (G*H) that start at 1, before their biases."""

    # The normalisation parameters, in the order they are registered: name, whether there is one per gate
    # row (G*H) or per unit (H), and the value they start at.
    norm_parameters: tuple[tuple[str, bool, float], ...] = (("ln_ih_weight", True, 1.0), ("ln_hh_weight", True, 1.0))

    def add_extra_parameters(self) -> None:
        for name, per_gate, _ in self.norm_parameters:
            size = self.num_gates * self.hidden_size if per_gate else self.hidden_size
            setattr(self, name, nn.Parameter(torch.empty(size)))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            for name, _, start in self.norm_parameters:
                getattr(self, name).fill_(start)

    def project(self, x: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        xp = _layer_norm(F.linear(x, params["weight_ih"]), params["ln_ih_weight"])
        b = params.get("bias_ih")
        return xp if b is None else xp + b

    def hh(self, h: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        mask = params.get("recurrent_mask")
        hp = _layer_norm(F.linear(h if mask is None else h * mask, params["weight_hh"]), params["ln_hh_weight"])
        b = params.get("bias_hh")
        return hp if b is None else hp + b


class LayerNormLSTMCell(_LayerNormProducts, _LSTMFamily):
    """LSTM with layer normalisation (Ba, Kiros & Hinton 2016), gate order as torch's LSTM:

        [i, f, g, o] = LN(W_ih x; a_ih) + b_ih + LN(W_hh h; a_hh) + b_hh
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h' = sigmoid(o) * tanh(LN(c'; a_c, s_c))

    LN(v; a, s) = a * (v - mean(v)) / sqrt(var(v) + eps) + s over the features of each row. The input
    and recurrent products are normalised separately (each over all 4H gates), so the input half still
    comes out of the time loop. Extra parameters: `ln_ih_weight`, `ln_hh_weight` (4H), `ln_c_weight`,
    `ln_c_bias` (H); gains start at 1, the shift at 0.
    """

    sequence_kind = "layernorm-lstm"
    norm_parameters = (*_LayerNormProducts.norm_parameters, ("ln_c_weight", False, 1.0), ("ln_c_bias", False, 0.0))

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        h, c = state
        i, f, g, o = (xp + self.hh(h, params)).chunk(4, dim=1)  # (B, H) each
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(_layer_norm(c, params["ln_c_weight"], params["ln_c_bias"]))
        return h, c


class LayerNormGRUCell(_LayerNormProducts):
    """GRU with layer normalisation on the input and recurrent products (torch's GRU otherwise):

        [r_x, z_x, n_x] = LN(W_ih x; a_ih) + b_ih        [r_h, z_h, n_h] = LN(W_hh h; a_hh) + b_hh
        r = sigmoid(r_x + r_h)    z = sigmoid(z_x + z_h)    n = tanh(n_x + r * n_h)
        h' = (1 - z) * n + z * h

    Extra parameters: `ln_ih_weight`, `ln_hh_weight` (3H), starting at 1.
    """

    num_gates = 3
    num_states = 1
    sequence_kind = "layernorm-gru"

    recurrence = GRUCell.recurrence


class PeepholeLSTMCell(_LSTMFamily):
    """LSTM whose gates also look at the cell state (Gers & Schmidhuber 2000):

        i = sigmoid(W_ii x + b_ii + W_hi h + b_hi + p_i * c)
        f = sigmoid(W_if x + b_if + W_hf h + b_hf + p_f * c)
        g = tanh(W_ig x + b_ig + W_hg h + b_hg)
        c' = f * c + i * g
        o = sigmoid(W_io x + b_io + W_ho h + b_ho + p_o * c')
        h' = o * tanh(c')

    Extra parameters: the diagonal peephole weights `weight_ci`, `weight_cf`, `weight_co` (H).
    """

    sequence_kind = "peephole-lstm"

    def add_extra_parameters(self) -> None:
        H = self.hidden_size
        self.weight_ci = nn.Parameter(torch.empty(H))
        self.weight_cf = nn.Parameter(torch.empty(H))
        self.weight_co = nn.Parameter(torch.empty(H))

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        h, c = state
        i, f, g, o = (xp + self.hh(h, params)).chunk(4, dim=1)  # (B, H) each
        forget = torch.sigmoid(f + params["weight_cf"] * c)
        c_new = forget * c + torch.sigmoid(i + params["weight_ci"] * c) * torch.tanh(g)
        h = torch.sigmoid(o + params["weight_co"] * c_new) * torch.tanh(c_new)
        return h, c_new


class IndRNNCell(Cell):
    """Independently recurrent cell (Li et al. 2018): each unit sees only its own past.

        h' = f(W_ih x + b_ih + u * h),  f = relu (default) or tanh

    `weight_hh` is the vector u (H,), not a matrix; it starts uniform in [0, 1] so that relu units
    neither explode nor vanish at first. Stack layers for units to interact.
    """

    num_gates = 1
    num_states = 1
    recurrent_bias = False

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "relu"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu'; got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__(input_size, hidden_size, bias)
        self._activation: Callable[[Tensor], Tensor] = torch.tanh if nonlinearity == "tanh" else torch.relu

    def recurrent_shape(self) -> tuple[int, ...]:
        return (self.hidden_size,)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        with torch.no_grad():
            nn.init.uniform_(self.weight_hh, 0.0, 1.0)

    def hh(self, h: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        mask = params.get("recurrent_mask")
        return (h if mask is None else h * mask) * params["weight_hh"]

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        return (self._activation(xp + self.hh(h, params)),)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"


def _g(v: Tensor) -> Tensor:
    """The positive activation of the minimal cells: v + 0.5 for v >= 0, sigmoid(v) below.

    Written as max(v + 0.5, sigmoid(v)), which is the same function (the line lies above the sigmoid
    for v > 0 and below it for v < 0, touching at 0) and cheaper than a select.
    """
    return torch.maximum(v + 0.5, torch.sigmoid(v))


def _log_g(v: Tensor) -> Tensor:
    """log(_g(v)), computed stably."""
    return torch.where(v >= 0, torch.log(v.clamp(min=0) + 0.5), -F.softplus(-v))


class ScanCell(Cell):
    """A cell whose recurrence is linear in the state, h' = a * h + b, with a and b from the input only.

    Such a cell can run over a whole sequence as a parallel scan (kernels/scan.py) as well as step by step;
    `log_coefficients` gives log a and log b (b > 0) for all steps at once.
    """

    num_states = 1
    recurrent_bias = False
    parallel = True

    def recurrent_shape(self) -> None:
        return None

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """log a and log b (..., H) from the projected input (..., G*H)."""
        raise NotImplementedError

    def coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        """a and b (..., H) from the projected input (..., G*H)."""
        raise NotImplementedError

    def recurrence(self, xp: Tensor, state: State, params: Mapping[str, Tensor]) -> State:
        (h,) = state
        a, b = self.coefficients(xp)
        return (a * h + b,)


class MinGRUCell(ScanCell):
    """Minimal GRU (Feng et al. 2024): gates from the input alone, so training can scan in parallel.

        z = sigmoid(W_z x + b_z)        h~ = g(W_h x + b_h)
        h' = (1 - z) * h + z * h~

    with g(v) = v + 0.5 for v >= 0 and sigmoid(v) below (positive, for the log-space scan).
    `weight_ih` stacks [W_z; W_h] (2H, I); there is no weight_hh.
    """

    num_gates = 2

    def coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        zx, hx = xp.chunk(2, dim=-1)
        z = torch.sigmoid(zx)
        return 1 - z, z * _g(hx)

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        zx, hx = xp.chunk(2, dim=-1)
        return -F.softplus(zx), -F.softplus(-zx) + _log_g(hx)


class MinLSTMCell(ScanCell):
    """Minimal LSTM (Feng et al. 2024), with the forget and input gates normalised to sum to one:

        f = sigmoid(W_f x + b_f)    i = sigmoid(W_i x + b_i)    h~ = g(W_h x + b_h)
        h' = f / (f + i) * h + i / (f + i) * h~

    `weight_ih` stacks [W_f; W_i; W_h] (3H, I); there is no weight_hh and no cell state.
    """

    num_gates = 3

    def log_coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        fx, ix, hx = xp.chunk(3, dim=-1)
        log_f, log_i = -F.softplus(-fx), -F.softplus(-ix)
        total = torch.logaddexp(log_f, log_i)
        return log_f - total, log_i - total + _log_g(hx)

    def coefficients(self, xp: Tensor) -> tuple[Tensor, Tensor]:
        fx, ix, hx = xp.chunk(3, dim=-1)
        f, i = torch.sigmoid(fx), torch.sigmoid(ix)
        total = f + i
        return f / total, i / total * _g(hx)


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
    "layernorm-lstm": LayerNormLSTMCell,
    "layernorm-gru": LayerNormGRUCell,
    "peephole-lstm": PeepholeLSTMCell,
    "indrnn": IndRNNCell,
    "mingru": MinGRUCell,
    "minlstm": MinLSTMCell,
}


def make_cell(name: str, input_size: int, hidden_size: int, bias: bool = True, **options) -> Cell:
    """Build the cell called `name` (one of `CELLS`)."""
    if name not in CELLS:
        raise ValueError(f"unknown cell {name!r}; expected one of: {', '.join(CELLS)}")
    return CELLS[name](input_size, hidden_size, bias, **options)
