"""One time step of a whole stack of plain-cell layers, for streaming: the binding of rnnkit's native step
kernel (native/cells.cpp), which makes every layer's products (PyTorch's BLAS) and gates in one C++ call.

What is not here: the choice between this, ATen's one-step functions (dispatch.STEP_FUNCTIONS) and the cells'
own step (layers.py, `Recurrent.step`).
"""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Iterable

import torch
from torch import Tensor

from rnnkit.kernels import native

# The slot arrays, per owner (a layer); kept out of the owner, so that copying or pickling a layer never meets
# a ctypes array.
_SLOTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def native_step(owner: object, cell_name: str, weights: Iterable[Tensor], input: Tensor, parts: tuple[Tensor, ...],
                hidden_size: int) -> tuple[Tensor, Tensor | None] | None:
    """One step of a stack of plain cells in the native step kernel, the new state written straight into the
    stacked (L, B, H) result. None where the kernels or the BLAS are not to be had.

    The slot array's fixed part is kept between calls for the same `owner`, weights (by their data pointers,
    which the in-place updates of optimizers keep) and batch size; each call fills a copy of it with its own
    tensors.

    Args:
        owner: the object the slot array is kept for (the layer).
        cell_name: `rnn`, `rnn-relu`, `lstm` or `gru`.
        weights: per layer, w_ih, w_hh and, with biases, b_ih, b_hh (torch.nn's order); read only where the
            kernel applies (a generator spares a GPU step the list).
        input: (B, I).
        parts: the state as (L, B, H) tensors: h, or h and c.
    Returns:
        h (L, B, H) and c (L, B, H) (None but for the LSTM).
    """
    if input.device.type != "cpu" or input.dtype not in (torch.float32, torch.float64):
        return None
    weights = list(weights)
    B, H, L = input.shape[0], hidden_size, parts[0].shape[0]
    key = (input.dtype, B, *(w.data_ptr() for w in weights))
    cached = _SLOTS.get(owner)
    if cached is None or cached[0] != key:
        gemm = native.step_gemm(input.dtype)
        lib = native.library() if gemm else None
        if lib is None or any(w.dtype != input.dtype or not w.is_contiguous() for w in weights):
            return None
        per_layer = len(weights) // L
        layer_slots = []
        for layer in range(L):
            w = [x.data_ptr() for x in weights[per_layer * layer:per_layer * (layer + 1)]]
            layer_slots += (w + [0, 0])[:4]
        values = dict(cell=native.CELL_KINDS[cell_name], B=B, I=input.shape[1], H=H, layers=L, gemm_fn=gemm)
        head = [values.get(name, 0) for name in native.STEP_SLOTS]
        run = lib.rnnkit_cell_step_f64 if input.dtype == torch.float64 else lib.rnnkit_cell_step_f32
        array = (ctypes.c_int64 * (len(head) + len(layer_slots)))(*head, *layer_slots)
        dynamic = [native.STEP_SLOTS.index(n) for n in ("x", "h0", "c0", "h_out", "c_out", "scratch")]
        cached = _SLOTS[owner] = (key, array, run, dynamic)
    _, static, run, (sx, sh0, sc0, sh, sc, sscratch) = cached
    array = type(static).from_buffer_copy(static)  # this call's own copy: threads may step the same layer
    lstm = len(parts) == 2
    G = H * {"lstm": 4, "gru": 3}.get(cell_name, 1)
    x = input.contiguous()
    old = [p.contiguous() for p in parts]
    h_out = input.new_empty(L, B, H)
    c_out = input.new_empty(L, B, H) if lstm else None
    scratch = input.new_empty(2, B, G)
    array[sx], array[sh0], array[sh], array[sscratch] = (x.data_ptr(), old[0].data_ptr(), h_out.data_ptr(),
                                                         scratch.data_ptr())
    if lstm:
        array[sc0], array[sc] = old[1].data_ptr(), c_out.data_ptr()
    run(array)
    return h_out, c_out
