"""Which path runs a recurrent layer over time, and the paths that are not autograd functions of their own.

`Recurrent` asks `choose_path` once per call, then runs every layer and direction with `run_layer` (or the
whole stack with `run_fused`). The paths:

- `FUSED`: PyTorch's fused op for the plain cells (torch.nn's own kernels), every layer and direction in one
  call;
- `SEQUENCE`: the cell's whole-sequence function with a hand-written backward through time (`cell_sequence`
  picks it: rnnkit's native kernels where they build, ATen calls otherwise; sequences.py);
- `SCAN`: the log-space parallel scan of the linear-recurrence cells (scan.py);
- `RECURRENCE`: the same recurrence step by step, with a hand-written backward (scan.py);
- `STEPS`: the cell's own step under autograd, one call per step (zoneout, a hook on every step, second-order
  gradients, and inference where a whole-sequence function would only prepare a backward pass);
- `EXPORT`: the same steps as one scan operator of torch's, while a graph is captured for export.

Also here: ATen's one-step functions of the plain cells (`STEP_FUNCTIONS`, for streaming). What is not here:
lengths, initial states, stacking, directions and the regularisers (layers.py), and the cells' equations
(cells.py), which the paths call through a cell's `project`, `recurrence`, `coefficients` and
`log_coefficients` and read its `sequence_kind`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF, Tensor
from torch._higher_order_ops.scan import scan as scan_operator
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from rnnkit.kernels.scan import linear_recurrence, linear_scan_log
from rnnkit.kernels.sequences import (
    LN_EPS,
    CellSequence,
    LayerNormGRUSequence,
    LayerNormLSTMSequence,
    NativeLayerNormLSTMSequence,
    PeepholeLSTMSequence,
    input_product,
    native_cell_sequence_possible,
    native_sequence_possible,
)

State = tuple[Tensor, ...]
# Called after each step t of a layer with the new state; returns the state handed on to step t+1.
StepHook = Callable[[int, State], State]
# Mixes a step's new state with the previous one (zoneout): (new, old) -> the state kept.
StepMix = Callable[[State, State], State]

FUSED, SEQUENCE, SCAN, RECURRENCE, STEPS, EXPORT = "fused", "sequence", "scan", "recurrence", "steps", "export"

# Cell name -> PyTorch's fused op computing exactly the same function over a whole stack.
FUSED_FUNCTIONS = {"rnn": _VF.rnn_tanh, "rnn-relu": _VF.rnn_relu, "lstm": _VF.lstm, "gru": _VF.gru}

# Cell name -> ATen's one-step function for it: one call per layer, its element-wise work in C++.
STEP_FUNCTIONS = {"rnn": _VF.rnn_tanh_cell, "rnn-relu": _VF.rnn_relu_cell, "lstm": _VF.lstm_cell,
                  "gru": _VF.gru_cell}

# The plain cells' whole-sequence function exists only in rnnkit's native kernels (CellSequence).
_PLAIN_KINDS = ("rnn", "rnn-relu", "lstm", "gru")


# ------------------------------------------------------------------------------------ the choice


def choose_path(cell: Any, x: Tensor, *, fused: bool | None = None, fused_possible: bool = False,
                whole_sequence: bool = True, scan: str | None = None, stepwise: bool = False,
                export: bool = False) -> str:
    """Which path runs a layer over x (B, T, I), decided once per call for all its layers and directions
    (they share one kind of cell, dtype and device).

    Args:
        cell: the first layer's cell.
        fused: the layer's `fused` option: None (where it pays), True (always), False (never).
        fused_possible: whether PyTorch's fused op computes the layer's function (a plain cell, nothing
            acting inside the time loop).
        whole_sequence: whether whole-sequence functions may run (their backward is first-order only).
        scan: for linear-recurrence cells, "parallel", "loop", or None to choose by device and length.
        stepwise: whether every step must be a call of the cell's own step (zoneout, a hook on each step).
        export: whether a graph is being captured.
    Returns:
        FUSED, SEQUENCE, SCAN, RECURRENCE, STEPS or EXPORT.
    """
    if export:
        return EXPORT
    if stepwise:
        return STEPS
    if (fused_possible and fused is not False and not (fused is None and native_preferred(cell, x, whole_sequence))
            and fused_runs(x)):
        return FUSED
    if getattr(cell, "parallel", False):
        if scan is not None:
            return SCAN if scan == "parallel" else RECURRENCE
        # Measured: on CPUs the step loop of these element-wise cells beats the scan at every length;
        # on GPUs the scan wins once sequences are long enough to fill the device.
        return SCAN if x.is_cuda and x.shape[1] >= 64 else RECURRENCE
    # Without autograd the plain step loop is faster than a whole-sequence function of ATen calls (that
    # saves what a backward pass would need), but not than one in rnnkit's native kernels (measured in
    # benchmarks/speed.py).
    if whole_sequence and sequence_possible(cell, x) and (torch.is_grad_enabled() or sequence_native(cell, x)):
        return SEQUENCE
    return STEPS


def fused_runs(x: Tensor) -> bool:
    """Whether PyTorch's fused op runs on x here. It does, except under bfloat16 autocast on a CPU whose oneDNN
    has no bfloat16 recurrent primitive (CPUs without AVX-512 refuse to create one): there the layer steps
    through time instead, its products still in bfloat16."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return True
    return torch.get_autocast_dtype("cpu") != torch.bfloat16 or _cpu_bf16_fused_works()


@functools.cache
def _cpu_bf16_fused_works() -> bool:
    """Try the fused LSTM once on a tiny input under CPU bfloat16 autocast (the answer is the machine's)."""
    weights = [torch.zeros(8, 2), torch.zeros(8, 2), torch.zeros(8), torch.zeros(8)]
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            _VF.lstm(torch.zeros(1, 1, 2), (torch.zeros(1, 1, 2), torch.zeros(1, 1, 2)), weights, True, 1, 0.0,
                     False, False, True)
    except RuntimeError:
        return False
    return True


def native_preferred(cell: Any, x: Tensor, whole_sequence: bool = True) -> bool:
    """Whether a plain cell that PyTorch's fused op could run trains in rnnkit's native kernels instead:
    measured faster on the CPU for every plain cell under autograd (benchmarks/speed.py); PyTorch's op stays
    for inference (it saves nothing for a backward pass) and GPUs."""
    return whole_sequence and torch.is_grad_enabled() and sequence_possible(cell, x)


def sequence_possible(cell: Any, x: Tensor) -> bool:
    """Whether `cell` has a whole-sequence function that runs on x: the plain cells only in rnnkit's native
    kernels; the layer-normalised and peephole cells there or in ATen calls."""
    kind = cell.sequence_kind
    if kind in _PLAIN_KINDS:
        return native_cell_sequence_possible(x)
    return kind in _SEQUENCES


def sequence_native(cell: Any, x: Tensor) -> bool:
    """Whether `cell`'s whole-sequence function runs in rnnkit's native kernels on x (then it pays for
    inference too)."""
    kind = cell.sequence_kind
    if kind in _PLAIN_KINDS:
        return native_cell_sequence_possible(x)
    return kind in _SEQUENCES and native_sequence_possible(x, cell.hidden_size)


# ------------------------------------------------------------------------------------ the paths


def run_layer(path: str, cell: Any, params: Mapping[str, Tensor], x: Tensor, state: State, mask: Tensor | None,
              zoneout: StepMix | None = None, on_step: StepHook | None = None) -> tuple[Tensor, State]:
    """One layer in one direction over x (B, T, I) from `state`, on `path` (any but FUSED).

    Args:
        params: the cell's parameters by its own names (and `recurrent_mask`, if any).
        state: tuple of (B, H).
        mask: (B, T) bool, False past a row's end (that row keeps its state and outputs zeros), or None.
        zoneout: on STEPS and EXPORT, mixes each step's new state with the old one.
        on_step: on STEPS, sees each step's new state and returns the state handed on.
    Returns:
        outputs (B, T, H) and the final state.
    """
    if path == SCAN:
        log_a, log_b = cell.log_coefficients(cell.project(x, params))  # (B, T, H) each
        return _outputs_and_final(linear_scan_log(log_a, log_b, state[0], mask), mask)
    if path == RECURRENCE:
        # Time-major from the projection on: the coefficients come out laid out as the loop reads them.
        a, b = cell.coefficients(cell.project(x.transpose(0, 1), params))  # (T, B, H) each
        h = linear_recurrence(a, b, state[0], mask, time_major=True).transpose(0, 1)  # (B, T, H)
        return _outputs_and_final(h, mask)
    if path == SEQUENCE:
        return _whole_sequence(cell, params, x, state, mask)
    if path == EXPORT:
        return _scan_operator(cell, params, x, state, mask, zoneout)
    if path == STEPS:
        return step_loop(cell, params, x, state, mask, zoneout, on_step)
    raise ValueError(f"run_layer: unknown path {path!r}")


def step_loop(cell: Any, params: Mapping[str, Tensor], x: Tensor, state: State, mask: Tensor | None,
              zoneout: StepMix | None = None, on_step: StepHook | None = None) -> tuple[Tensor, State]:
    """The STEPS path: the cell's own step at every t under autograd (arguments as `run_layer`); each step's
    output is its new h, before `on_step` sees it."""
    xp = cell.project(x, params)  # (B, T, G*H)
    outputs = []
    for t in range(x.shape[1]):
        new = cell.recurrence(xp[:, t], state, params)
        if zoneout is not None:
            new = zoneout(new, state)
        out = new[0]
        if on_step is not None:
            new = on_step(t, new)
        if mask is None:
            state = new
            outputs.append(out)
        else:
            m = mask[:, t].unsqueeze(1)  # (B, 1)
            state = _keep_past_end(m, new, state)
            outputs.append(out * m)
    return torch.stack(outputs, dim=1), state  # (B, T, H)


def _keep_past_end(m: Tensor, new: State, old: State) -> State:
    """The state after a step: the new one where m (B, 1) is True, the old one in rows past their end."""
    return tuple(torch.where(m, n, o) for n, o in zip(new, old, strict=True))


def _scan_operator(cell: Any, params: Mapping[str, Tensor], x: Tensor, state: State, mask: Tensor | None,
                   zoneout: StepMix | None) -> tuple[Tensor, State]:
    """The EXPORT path: the steps of `step_loop` as torch's scan operator, so that an exported graph takes any
    sequence length (a Python loop would be unrolled to the traced one)."""
    B, T, _ = x.shape
    xp = cell.project(x, params).transpose(0, 1)  # (T, B, G*H)
    m = mask if mask is not None else torch.ones(B, T, dtype=torch.bool, device=x.device)
    m = m.transpose(0, 1).unsqueeze(-1)  # (T, B, 1)

    def combine(carry: list[Tensor], step: tuple[Tensor, Tensor]) -> tuple[list[Tensor], Tensor]:
        xt, mt = step
        old = tuple(carry)
        new = cell.recurrence(xt, old, params)
        if zoneout is not None:
            new = zoneout(new, old)
        return list(_keep_past_end(mt, new, old)), (new[0] * mt).clone()

    final, out = scan_operator(combine, list(state), (xp, m))
    return out.transpose(0, 1), tuple(final)  # (B, T, H)


def _whole_sequence(cell: Any, params: Mapping[str, Tensor], x: Tensor, state: State, mask: Tensor | None
                    ) -> tuple[Tensor, State]:
    """The SEQUENCE path: `cell_sequence`, time-major from the projection on, as its loop reads the steps."""
    time_mask = None if mask is None else mask.t().unsqueeze(2)  # (T, B, 1)
    device = x.device.type
    if torch.is_autocast_enabled(device):
        # The hand-written recurrences keep their state and saved values in one dtype: under autocast they
        # run in float32, outside it (their products would come out in bfloat16).
        with torch.autocast(device, enabled=False):
            out, state = cell_sequence(cell, x.float().transpose(0, 1), tuple(s.float() for s in state),
                                       {k: v.float() for k, v in params.items()}, time_mask)
    else:
        out, state = cell_sequence(cell, x.transpose(0, 1), state, params, time_mask)
    return out.transpose(0, 1), state  # (B, T, H)


def _outputs_and_final(h: Tensor, mask: Tensor | None) -> tuple[Tensor, State]:
    """Outputs (B, T, H) zeroed past each row's length, and each row's state at its last true step."""
    if mask is None:
        return h, (h[:, -1],)
    last = (mask.sum(dim=1) - 1).clamp(min=0)  # (B,)
    final = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
    return h * mask.unsqueeze(-1), (final,)


def run_fused(cell_name: str, x: Tensor, parts: State, weights: list[Tensor], lengths: Tensor | None, *,
              bias: bool, num_layers: int, dropout: float, training: bool, bidirectional: bool
              ) -> tuple[Tensor, State]:
    """The FUSED path: a whole stack in PyTorch's fused op (packed where rows have their own lengths).

    Args:
        x: (B, T, I).
        parts: the state as (L*D, B, H) tensors.
        weights: every layer's and direction's parameters in torch.nn's order.
        lengths: (B,) or None.
    Returns:
        output (B, T, D*H) and the final state parts.
    """
    fn = FUSED_FUNCTIONS[cell_name]
    args = (weights, bias, num_layers, dropout, training, bidirectional)
    if lengths is None:
        result = fn(x, parts if len(parts) > 1 else parts[0], *args, True)
        return result[0], tuple(result[1:])
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = tuple(h.index_select(1, order) for h in parts)
    result = fn(packed.data, packed.batch_sizes, hx if len(parts) > 1 else hx[0], *args)
    output, _ = pad_packed_sequence(packed._replace(data=result[0]), batch_first=True, total_length=x.shape[1])
    return output, tuple(h.index_select(1, unorder) for h in result[1:])


# --------------------------------------------------------------------- whole-sequence functions


def cell_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor], mask: Tensor | None
                  ) -> tuple[Tensor, State]:
    """`cell` over a whole time-major sequence with a hand-written backward through time, in rnnkit's native
    kernels where they run on x, else in ATen calls (sequences.py).

    Args:
        cell: a cell whose `sequence_kind` names one of the functions here.
        x: (T, B, I).
        state: tuple of (B, H).
        params: the cell's parameters by its own names (and `recurrent_mask`, if any).
        mask: (T, B, 1) bool or None.
    Returns:
        outputs (T, B, H) and the final state.
    """
    run = _SEQUENCES.get(cell.sequence_kind)
    if run is None:
        raise ValueError(f"{type(cell).__name__} has no whole-sequence function")
    return run(cell, x, state, params, mask)


def _native(kind: str, u: Tensor, state: State, params: Mapping[str, Tensor], mask: Tensor | None,
            bias_hn: Tensor | None = None, norms: tuple = (None, None, None), peepholes: tuple = (None, None, None),
            bias: Tensor | None = None) -> tuple[Tensor, State]:
    """A cell over a time-major sequence in CellSequence, from the bare input product u = W_ih x; `bias` is
    the input half's, added in the kernel."""
    c0 = state[1] if kind == "lstm" else None
    # u is this layer's own temporary (the input product just computed): the kernel may overwrite it.
    out, *final = CellSequence.apply(kind, u, state[0], c0, params["weight_hh"], bias_hn,
                                     params.get("recurrent_mask"), mask, *norms, *peepholes, bias, True)
    return out, tuple(final)


def _both_biases(params: Mapping[str, Tensor]) -> Tensor | None:
    """b_ih + b_hh, for cells whose two biases only ever appear summed (None without biases)."""
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    if b_ih is None or b_hh is None:
        return b_ih if b_hh is None else b_hh
    return b_ih + b_hh


def _gru_biases(params: Mapping[str, Tensor], H: int) -> tuple[Tensor | None, Tensor | None]:
    """A GRU's biases as its native kernel takes them: b_hr and b_hz join the input half's; b_hn stays inside
    the reset gate's product. Returns (the input half's bias, b_hn), None where there is none."""
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    if b_hh is None:
        return b_ih, None
    rz = torch.cat([b_hh[:2 * H], b_hh.new_zeros(H)])
    return (rz if b_ih is None else b_ih + rz), b_hh[2 * H:]


def _plain_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor], mask: Tensor | None
                    ) -> tuple[Tensor, State]:
    """RNN (tanh or relu) and LSTM: CellSequence with both biases added in the kernel."""
    return _native(cell.sequence_kind, input_product(x, params["weight_ih"]), state, params, mask,
                   bias=_both_biases(params))


def _gru_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor], mask: Tensor | None
                  ) -> tuple[Tensor, State]:
    bias, bias_hn = _gru_biases(params, cell.hidden_size)
    return _native("gru", input_product(x, params["weight_ih"]), state, params, mask, bias_hn, bias=bias)


def _layernorm_lstm_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor],
                             mask: Tensor | None) -> tuple[Tensor, State]:
    """Both biases folded into the input half's shift; natively, the input product's layer norm happens inside
    the kernel's steps."""
    u = F.linear(x, params["weight_ih"])  # (T, B, 4H)
    rest = (params["weight_hh"], params["ln_hh_weight"], params["ln_c_weight"], params["ln_c_bias"],
            params.get("recurrent_mask"), mask)
    if sequence_native(cell, x):
        out, h, c = NativeLayerNormLSTMSequence.apply(u, params["ln_ih_weight"], _both_biases(params), *state,
                                                      *rest)
    else:
        xp = F.layer_norm(u, (u.shape[-1],), params["ln_ih_weight"], _both_biases(params), LN_EPS)
        out, h, c = LayerNormLSTMSequence.apply(xp, *state, *rest)
    return out, (h, c)


def _layernorm_gru_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor],
                            mask: Tensor | None) -> tuple[Tensor, State]:
    """Natively, both layer norms happen inside the kernel's steps."""
    if sequence_native(cell, x):
        shift, bias_hn = _gru_biases(params, cell.hidden_size)
        return _native("gru", input_product(x, params["weight_ih"]), state, params, mask, bias_hn,
                       (params["ln_ih_weight"], shift, params["ln_hh_weight"]))
    xp = cell.project(x, params)  # b_hh stays inside: the reset gate scales the recurrent candidate with it
    out, h = LayerNormGRUSequence.apply(xp, state[0], params["weight_hh"], params["ln_hh_weight"],
                                        params.get("bias_hh"), params.get("recurrent_mask"), mask)
    return out, (h,)


def _peephole_lstm_sequence(cell: Any, x: Tensor, state: State, params: Mapping[str, Tensor],
                            mask: Tensor | None) -> tuple[Tensor, State]:
    """Natively, the LSTM kernel with peepholes."""
    peepholes = (params["weight_ci"], params["weight_cf"], params["weight_co"])
    if sequence_native(cell, x):
        return _native("lstm", input_product(x, params["weight_ih"]), state, params, mask, peepholes=peepholes,
                       bias=_both_biases(params))
    xp = F.linear(x, params["weight_ih"], _both_biases(params))
    out, h, c = PeepholeLSTMSequence.apply(xp, *state, params["weight_hh"], *peepholes,
                                           params.get("recurrent_mask"), mask)
    return out, (h, c)


# A cell's `sequence_kind` -> its whole-sequence function.
_SEQUENCES: dict[str, Callable[..., tuple[Tensor, State]]] = {
    "rnn": _plain_sequence,
    "rnn-relu": _plain_sequence,
    "lstm": _plain_sequence,
    "gru": _gru_sequence,
    "layernorm-lstm": _layernorm_lstm_sequence,
    "layernorm-gru": _layernorm_gru_sequence,
    "peephole-lstm": _peephole_lstm_sequence,
}
