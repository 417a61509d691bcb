"""How a cell runs over time: everything between a cell's equations (cells.py) and a layer (layers.py).

What is here: `dispatch` (which path runs a layer, decided once per call: PyTorch's fused op, a whole-sequence
function, the parallel scan or the linear recurrence, the step loop, the scan operator for export; and the
paths themselves), `sequences` (whole-sequence autograd functions with a hand-written backward, on ATen or on
the native kernels, and the scratch pool of buffers kept between training steps), `scan` (the linear
recurrence of minGRU/minLSTM: a log-space parallel scan and a loop), `streaming` (one step of a stack of plain
cells in the native step kernel), and `native` (the C++ kernels, built or loaded on first use, and their
bindings). `release_buffers` empties the scratch pool. What is not: the cells'
equations and parameters (cells.py) or lengths, stacking, directions and regularisers (layers.py).
"""

from rnnkit.kernels.dispatch import (
    EXPORT,
    FUSED,
    FUSED_FUNCTIONS,
    RECURRENCE,
    SCAN,
    SEQUENCE,
    STEP_FUNCTIONS,
    STEPS,
    cell_sequence,
    choose_path,
    native_preferred,
    run_fused,
    run_layer,
)
from rnnkit.kernels.sequences import SCRATCH

__all__ = ["EXPORT", "FUSED", "FUSED_FUNCTIONS", "RECURRENCE", "SCAN", "SEQUENCE", "STEP_FUNCTIONS", "STEPS",
           "cell_sequence", "choose_path", "native_preferred", "release_buffers", "run_fused", "run_layer"]


def release_buffers() -> None:
    """Give back the large CPU buffers the native kernels keep from one training step to the next (the scratch
    pool, sequences.SCRATCH); a later training step allocates afresh. The trainer calls it when training ends."""
    SCRATCH.clear()
