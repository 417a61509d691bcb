"""`Recurrent`: the one recurrent layer every rnnkit task uses, and helpers for its state.

What is here: running a cell over time with variable lengths and an explicit initial state; stacking
and both directions; dropout between layers (per element as torch.nn does, or variational: one mask
per sequence); regularisers on the recurrent path for any cell (variational recurrent dropout,
zoneout, DropConnect on the recurrent weights), in one loop over layers and directions that runs each on
the path rnnkit.kernels chooses once per call (or hands the whole stack to PyTorch's fused kernel); a hook on
every step (for diagnostics) and a mode for export; `detach_state` for truncated BPTT and `reset_state` for
streams whose rows end at different times. What is not: the cells' equations (cells.py), the paths
themselves and the choice between them (rnnkit.kernels), and anything about tasks.

State has torch.nn's layout: `h (L*D, B, H)`, and the pair `(h, c)` for LSTM-type cells. It is passed
in and returned; nothing recurrent is stored on the module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.cells import CELLS, Cell, State, make_cell
from rnnkit.kernels import dispatch
from rnnkit.kernels.streaming import native_step

LayerState = Tensor | tuple[Tensor, ...]


def detach_state(state: Any) -> Any:
    """The same state cut from the autograd graph (truncated BPTT keeps values, drops history)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach_state(s) for s in state)


def reset_state(state: Any, rows: Tensor) -> Any:
    """Zero the state of chosen batch rows (a stream whose sequence ended starts afresh).

    Args:
        state: `h (L*D, B, H)` or a tuple of such tensors.
        rows: bool (B,) mask or int64 indices of the rows to reset.
    Returns:
        A new state of the same structure; the input is not modified.
    """
    if state is None:
        return None
    if isinstance(state, Tensor):
        if rows.dtype == torch.bool:
            keep = (~rows).to(state.dtype).view(1, -1, 1)  # (1, B, 1)
            return state * keep
        out = state.clone()
        out[:, rows] = 0
        return out
    return type(state)(reset_state(s, rows) for s in state)


def select_state(state: Any, index: Tensor) -> Any:
    """Keep (or repeat) batch rows of a state in the order of `index` (B',); batch is dim 1."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.index_select(1, index)
    return type(state)(select_state(s, index) for s in state)


def _reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each row of x (B, T, ...) within its own length; padding stays where it is."""
    if lengths is None:
        return x.flip(1)
    B, T = x.shape[:2]
    t = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    lens = lengths.to(x.device).unsqueeze(1)  # (B, 1)
    index = torch.where(t < lens, lens - 1 - t, t)  # (B, T)
    index = index.view(B, T, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, index)


class Recurrent(nn.Module):
    """A stack of recurrent layers over batch-first sequences, in one or both directions.

    Parameters carry torch.nn's names and shapes (`weight_ih_l0`, `weight_hh_l0_reverse`, ...), so
    `layer.load_state_dict(nn.LSTM(...).state_dict())` works and the reverse as well.

    Args:
        cell: a cell name (`rnn`, `rnn-relu`, `lstm`, `gru`) or a `Cell` subclass.
        input_size: I, features per step of the input.
        hidden_size: H, features of the state.
        num_layers: L, stacked layers.
        bias: use the b_ih and b_hh biases.
        bidirectional: D = 2 when True: a second pass reads each sequence backwards from its own end.
        dropout: dropout on the outputs of every layer but the last, in training mode only.
        variational_dropout: use one dropout mask per sequence for all its steps (Gal & Ghahramani)
            instead of a fresh mask at every step; needs the loop path.
        fused: which implementation runs the plain cells (`rnn`, `rnn-relu`, `lstm`, `gru`). None (the
            default) picks, by measurement (benchmarks/speed.py): for training on the CPU, rnnkit's native
            kernels (kernels.sequences.CellSequence: the time loop in C++, MKL's packed GEMM, a hand-written
            backward), where they build; otherwise PyTorch's fused kernel when it computes the same
            function, and rnnkit's loop when it does not. False forces rnnkit's loop (native kernels
            included); True forces PyTorch's fused kernel and fails if it cannot.
            In rnnkit's loop, cells with a whole-sequence function (the plain cells through the native
            kernels; `layernorm-lstm`, `layernorm-gru`, `peephole-lstm`: a hand-written backward through
            time, kernels/sequences.py) use it, except with zoneout, which needs the step-by-step path, or
            when `layer.whole_sequence = False` (for second-order gradients, which the hand-written backward
            refuses). `kernels.dispatch.choose_path` makes the choice, once per call.
        recurrent_dropout: variational dropout on the state where it enters the recurrent product
            (Gal & Ghahramani 2016): one mask per sequence and layer, training only.
        zoneout: probability that a unit keeps its previous value at a step (Krueger et al. 2017),
            applied to every part of the state; at evaluation the expected mix is used.
        weight_drop: DropConnect on the recurrent weights `weight_hh` (Merity et al. 2017): one mask
            per forward call, training only; keeps the fused kernel available.
        scan: for cells with a linear recurrence (`mingru`, `minlstm`): "parallel" (log-space scan),
            "loop" (step by step) or None to choose by device: the scan pays on GPUs, the loop on CPUs.
        cell_options: passed to the cell constructor (e.g. `forget_bias=1.0` for LSTM).

    Shape:
        forward(input (B, T, I), state, lengths (B,)) -> output (B, T, D*H), state
    """

    def __init__(
        self,
        cell: str | type[Cell] = "lstm",
        input_size: int = 1,
        hidden_size: int = 1,
        num_layers: int = 1,
        bias: bool = True,
        bidirectional: bool = False,
        dropout: float = 0.0,
        variational_dropout: bool = False,
        fused: bool | None = None,
        recurrent_dropout: float = 0.0,
        zoneout: float = 0.0,
        weight_drop: float = 0.0,
        scan: str | None = None,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"cell: unknown cell {cell!r}; expected one of: {', '.join(CELLS)}")
            self.cell_name = cell
        elif isinstance(cell, type) and issubclass(cell, Cell):
            self.cell_name = cell.__name__
        else:
            raise ValueError(f"cell: expected a cell name or a Cell subclass; got {cell!r}")
        for name, value, low in (("input_size", input_size, 1), ("hidden_size", hidden_size, 1),
                                 ("num_layers", num_layers, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}; got {value!r}")
        for name, value in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout), ("zoneout", zoneout),
                            ("weight_drop", weight_drop)):
            if not isinstance(value, int | float) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1); got {value!r}")
        if scan not in (None, "parallel", "loop"):
            raise ValueError(f"scan: expected None, 'parallel' or 'loop'; got {scan!r}")
        if fused not in (None, True, False):
            raise ValueError(f"fused: expected None, True or False; got {fused!r}")

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.bidirectional = bidirectional
        self.num_directions = 2 if bidirectional else 1
        self.dropout = float(dropout)
        self.variational_dropout = variational_dropout
        self.recurrent_dropout = float(recurrent_dropout)
        self.zoneout = float(zoneout)
        self.weight_drop = float(weight_drop)
        self.scan = scan
        self.cell_options = dict(cell_options)
        # Cells with a whole-sequence function use it (False: step by step under autograd, e.g. for
        # second-order gradients, which the hand-written backward does not give).
        self.whole_sequence = True

        fused_reason = self._fused_unavailable_reason(cell)
        if fused is True and fused_reason is not None:
            raise ValueError(f"fused=True is impossible here: {fused_reason}; use fused=None or fused=False")
        self.fused = fused
        self._fused_possible = fused_reason is None

        # The cells are kept out of the module tree: the layer owns their parameters under
        # torch.nn's names and hands them to the cell code at every call.
        self._cells: list[Cell] = []
        self._param_names: list[list[tuple[str, str]]] = []  # per (layer, direction): (cell name, layer name)
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.num_directions
            for direction in range(self.num_directions):
                if isinstance(cell, str):
                    c = make_cell(cell, layer_input, hidden_size, bias, **cell_options)
                else:
                    c = cell(layer_input, hidden_size, bias, **cell_options)
                suffix = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                names = []
                for pname, p in c.named_parameters(recurse=False):
                    self.register_parameter(pname + suffix, p)
                    names.append((pname, pname + suffix))
                self._cells.append(c)
                self._param_names.append(names)
        self.num_states = self._cells[0].num_states

    def layer_parameters(self, layer: int) -> list[nn.Parameter]:
        """The parameters of one stacked layer (both directions), bottom layer 0."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer: expected 0..{self.num_layers - 1}; got {layer}")
        names = self._param_names[layer * self.num_directions:(layer + 1) * self.num_directions]
        return [getattr(self, full) for group in names for _, full in group]

    def _fused_unavailable_reason(self, cell: str | type[Cell]) -> str | None:
        if not isinstance(cell, str) or cell not in dispatch.FUSED_FUNCTIONS:
            return f"cell {self.cell_name!r} has no PyTorch fused kernel"
        unsupported = {k for k in self.cell_options if k != "forget_bias"}
        if unsupported:
            return f"the fused kernel does not support the cell options {sorted(unsupported)}"
        if self.variational_dropout and self.dropout > 0:
            return "variational dropout between layers needs the loop path"
        if self.recurrent_dropout > 0 or self.zoneout > 0:
            return "recurrent dropout and zoneout act inside the time loop and need the loop path"
        return None

    def extra_repr(self) -> str:
        s = f"{self.cell_name!r}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.dropout:
            s += f", dropout={self.dropout}" + (", variational" if self.variational_dropout else "")
        for name in ("recurrent_dropout", "zoneout", "weight_drop"):
            if getattr(self, name):
                s += f", {name}={getattr(self, name)}"
        if self.fused is not None:
            s += f", fused={self.fused}"
        return s

    # ----------------------------------------------------------------------------------- state

    def _params(self, index: int, dropped: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The parameters of one (layer, direction) under the cell's names; `dropped` replaces some."""
        dropped = dropped or {}
        return {cell_name: dropped.get(layer_name, getattr(self, layer_name))
                for cell_name, layer_name in self._param_names[index]}

    def _dropped_weights(self) -> dict[str, Tensor]:
        """DropConnect: the recurrent weights with this call's mask, by layer name (training only)."""
        if not (self.weight_drop > 0 and self.training):
            return {}
        return {layer_name: F.dropout(getattr(self, layer_name), self.weight_drop, training=True)
                for names in self._param_names for cell_name, layer_name in names if cell_name == "weight_hh"}

    def _flat_weights(self, dropped: dict[str, Tensor] | None = None) -> list[Tensor]:
        dropped = dropped or {}
        return [dropped.get(layer_name, getattr(self, layer_name))
                for names in self._param_names for _, layer_name in names]

    def zero_state(self, batch_size: int, like: Tensor | None = None) -> LayerState:
        """All-zero state for `batch_size` rows in torch.nn's layout."""
        p = self.weight_ih_l0 if like is None else like
        h = p.new_zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size)
        return h if self.num_states == 1 else tuple(h.clone() for _ in range(self.num_states))

    def _state_parts(self, state: LayerState | None, batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        """The state as a tuple of (L*D, B, H) tensors: zeros when None, else checked."""
        if state is None:
            z = self.zero_state(batch_size, like)
            return (z,) if self.num_states == 1 else tuple(z)
        return self._check_state(state, batch_size, like)

    def _check_state(self, state: LayerState, batch_size: int, like: Tensor) -> tuple[Tensor, ...]:
        expected = (self.num_layers * self.num_directions, batch_size, self.hidden_size)
        if self.num_states == 1:
            if not isinstance(state, Tensor):
                raise ValueError(f"state: expected a tensor of shape {expected}; got {type(state).__name__}")
            parts: tuple[Tensor, ...] = (state,)
        else:
            if isinstance(state, Tensor) or len(state) != self.num_states:
                raise ValueError(
                    f"state: expected a tuple of {self.num_states} tensors (h, c) each of shape {expected}; "
                    f"got {type(state).__name__}"
                )
            parts = tuple(state)
        if torch.is_autocast_enabled(like.device.type):
            # Under mixed precision the state carried from the last chunk may come back in bf16.
            parts = tuple(p.to(like.dtype) if isinstance(p, Tensor) and p.is_floating_point() else p for p in parts)
        for i, s in enumerate(parts):
            if not isinstance(s, Tensor) or tuple(s.shape) != expected:
                got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
                which = "state" if self.num_states == 1 else f"state[{i}]"
                raise ValueError(f"{which}: expected shape (L*D, B, H) = {expected}; got {got}")
            if s.dtype != like.dtype or s.device != like.device:
                raise ValueError(
                    f"state: expected dtype {like.dtype} on {like.device} like the input; "
                    f"got {s.dtype} on {s.device}"
                )
        return parts

    # --------------------------------------------------------------------------------- forward

    def forward(
        self, input: Tensor, state: LayerState | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, LayerState]:
        """Run the stack over `input`.

        Args:
            input: (B, T, I) float.
            state: initial state in torch.nn's layout (zeros when None).
            lengths: (B,) integer lengths in 1..T; outputs past a row's end are zero, its final state is
                taken at its last true step, and the backward direction starts at its own end.
        Returns:
            output (B, T, D*H) and the final state in torch.nn's layout.
        """
        if not isinstance(input, Tensor) or input.dim() != 3:
            got = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input: expected shape (B, T, I={self.input_size}); got {got}")
        B, T, I = input.shape
        if I != self.input_size:
            raise ValueError(f"input: expected shape (B, T, I={self.input_size}); got {tuple(input.shape)}")
        if not self.export_mode and (T == 0 or B == 0):  # (a graph's sizes may be unknown until run)
            raise ValueError(f"input: expected at least one row and one step; got shape {tuple(input.shape)}")
        if not input.is_floating_point():
            raise ValueError(f"input: expected a floating-point tensor; got {input.dtype}")
        if lengths is not None and self.export_mode:
            lengths = lengths.to(torch.int64)  # a graph being captured cannot branch on the values
        elif lengths is not None:
            lengths = self._check_lengths(lengths, B, T)
            if bool((lengths == T).all()):
                lengths = None  # all rows full: no masking needed
        parts = self._state_parts(state, B, input)
        output, parts = self._run(input, parts, lengths)
        return output, (parts[0] if self.num_states == 1 else tuple(parts))

    def _check_lengths(self, lengths: Tensor, batch_size: int, steps: int) -> Tensor:
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        if lengths.dim() != 1 or lengths.shape[0] != batch_size:
            raise ValueError(f"lengths: expected shape (B,) = ({batch_size},); got {tuple(lengths.shape)}")
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"lengths: expected an integer tensor; got {lengths.dtype}")
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > steps:
            raise ValueError(f"lengths: expected values in 1..T = 1..{steps}; got min {low}, max {high}")
        return lengths.to(torch.int64)

    # Set by export.py while a graph is captured: every layer runs as the evaluation-mode function, its time
    # loop one scan operator, so that the exported graph takes any sequence length (a Python loop would be
    # unrolled to the traced length).
    export_mode: bool = False

    # Set by diagnostics.unrolled to see every step: called as `step_hook(layer, direction, t, state)` with
    # the state after step t of that layer and direction (t counts in the direction's own order), it returns
    # the state handed on to step t+1. With a hook every layer runs step by step, and the training-only
    # regularisers (dropout between layers, recurrent dropout, DropConnect) are left out.
    step_hook: Callable[[int, int, int, State], State] | None = None

    def _run(
        self, x: Tensor, parts: tuple[Tensor, ...], lengths: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """The stack over x (B, T, I) from the state parts (L*D, B, H): one loop over layers and directions,
        each run on the path the kernels choose for this call, or the whole stack in PyTorch's fused kernel."""
        hook = self.step_hook
        path = dispatch.choose_path(self._cells[0], x, fused=self.fused, fused_possible=self._fused_possible,
                                    whole_sequence=self.whole_sequence, scan=self.scan,
                                    stepwise=self.zoneout > 0 or hook is not None, export=self.export_mode)
        if path == dispatch.FUSED:
            weights = self._flat_weights(self._dropped_weights())
            return dispatch.run_fused(self.cell_name, x, parts, weights, lengths, bias=self.bias,
                                      num_layers=self.num_layers, dropout=self.dropout, training=self.training,
                                      bidirectional=self.bidirectional)
        training = self.training and not self.export_mode
        noisy = training and hook is None  # whether the training-only regularisers act
        zoneout = functools.partial(self._zoneout, training=training) if self.zoneout > 0 else None
        B, T, _ = x.shape
        mask = None
        if lengths is not None:
            mask = torch.arange(T, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)  # (B, T)
        D = self.num_directions
        finals: list[list[Tensor]] = [[] for _ in range(self.num_states)]
        layer_input = x
        dropped = self._dropped_weights() if noisy else {}
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(D):
                index = layer * D + direction
                params = self._params(index, dropped)
                if noisy:
                    self._add_recurrent_mask(params, x, B)
                inp = layer_input if direction == 0 else _reverse_padded(layer_input, lengths)
                on_step = None if hook is None else functools.partial(hook, layer, direction)
                start = tuple(p[index] for p in parts)
                out, final = dispatch.run_layer(path, self._cells[index], params, inp, start, mask, zoneout, on_step)
                if direction == 1:
                    out = _reverse_padded(out, lengths)
                outputs.append(out)
                for k, s in enumerate(final):
                    finals[k].append(s)
            layer_input = outputs[0] if D == 1 else torch.cat(outputs, dim=2)  # (B, T, D*H)
            if noisy and layer < self.num_layers - 1 and self.dropout > 0:
                layer_input = self._dropout(layer_input)
        return layer_input, tuple(torch.stack(f, dim=0) for f in finals)

    def _use_fused(self) -> bool:
        """Whether PyTorch's fused kernel may run this layer (it can, and `fused` is not False)."""
        return self._fused_possible and self.fused is not False

    def _prefer_native(self, x: Tensor) -> bool:
        """Whether `fused=None` trains a plain cell in rnnkit's native kernels rather than PyTorch's fused
        kernel on x (kernels.dispatch.native_preferred)."""
        return self.fused is None and dispatch.native_preferred(self._cells[0], x, self.whole_sequence)

    def _dropout(self, x: Tensor) -> Tensor:
        if not self.variational_dropout:
            return F.dropout(x, self.dropout, training=True)
        keep = 1.0 - self.dropout
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep) / keep  # (B, 1, D*H)
        return x * mask

    def _add_recurrent_mask(self, params: dict[str, Tensor], like: Tensor, batch_size: int) -> None:
        """Variational recurrent dropout: one (B, H) mask for a whole call, in training only."""
        if self.recurrent_dropout > 0 and self.training:
            keep = 1.0 - self.recurrent_dropout
            params["recurrent_mask"] = like.new_empty(batch_size, self.hidden_size).bernoulli_(keep) / keep

    def _zoneout(self, new: State, old: State, training: bool) -> State:
        """Each unit keeps its previous value with probability `zoneout` (training) or in expectation."""
        z = self.zoneout
        if training:
            return tuple(torch.where(torch.rand_like(n) < z, o, n) for n, o in zip(new, old, strict=True))
        return tuple(z * o + (1 - z) * n for n, o in zip(new, old, strict=True))

    def step(self, input: Tensor, state: LayerState | None = None) -> tuple[Tensor, LayerState]:
        """One time step for every layer (streaming generation); unidirectional only.

        Uses the cells directly: small matrix products per layer, cheaper at B=1 than a fused
        sequence kernel called with T=1.

        Args:
            input: (B, I).
        Returns:
            output (B, H) and the new state.
        """
        if self.bidirectional:
            raise ValueError("step: a bidirectional layer needs the whole sequence; call forward instead")
        if input.dim() != 2 or input.shape[1] != self.input_size:
            raise ValueError(f"input: expected shape (B, I={self.input_size}); got {tuple(input.shape)}")
        B = input.shape[0]
        parts = self._state_parts(state, B, input)
        if self._torch_cell_step_possible() and (native_step := self._native_step(input, parts)) is not None:
            return native_step
        # A plain cell with nothing random steps through ATen's one-step function (lstm_cell, gru_cell, ...):
        # one call per layer, its element-wise work in C++ rather than one Python call per operation
        # (`benchmarks/probes.py streaming` times both paths).
        aten = dispatch.STEP_FUNCTIONS[self.cell_name] if self._torch_cell_step_possible() else None
        dropped = {} if aten is not None else self._dropped_weights()
        h = input
        new_parts: list[list[Tensor]] = [[] for _ in range(self.num_states)]
        for layer in range(self.num_layers):
            old = tuple(p[layer] for p in parts)
            if aten is not None:
                weights = [self._parameters[name] for _, name in self._param_names[layer]]  # torch.nn's order
                out = aten(h, old[0] if len(old) == 1 else old, *weights)
                new = (out,) if isinstance(out, Tensor) else tuple(out)
            else:
                cell, params = self._cells[layer], self._params(layer, dropped)
                self._add_recurrent_mask(params, input, B)
                new = cell.recurrence(cell.project(h, params), old, params)
                if self.zoneout > 0:
                    new = self._zoneout(new, old, self.training)
            for k, s in enumerate(new):
                new_parts[k].append(s)
            h = new[0]
        stacked = tuple(torch.stack(p, dim=0) for p in new_parts)
        return h, (stacked[0] if self.num_states == 1 else stacked)

    def _native_step(self, input: Tensor, parts: tuple[Tensor, ...]) -> tuple[Tensor, LayerState] | None:
        """`step` for a plain cell in rnnkit's native step kernel (kernels.streaming): one C++ call for every
        layer's products and gates. None where the kernels or the BLAS are not to be had (the caller takes
        ATen's one-step cells)."""
        weights = (self._parameters[name] for names in self._param_names for _, name in names)
        new = native_step(self, self.cell_name, weights, input, parts, self.hidden_size)
        if new is None:
            return None
        h, c = new
        return h[-1], (h if c is None else (h, c))

    def _torch_cell_step_possible(self) -> bool:
        """Whether `step` may call ATen's one-step cell functions: a plain cell, no autograd, nothing random."""
        return (self.cell_name in dispatch.STEP_FUNCTIONS and not torch.is_grad_enabled() and not self.export_mode
                and self.zoneout == 0
                and not (self.training and (self.recurrent_dropout > 0 or self.weight_drop > 0)))

