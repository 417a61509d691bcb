"""rnnkit: recurrent neural networks on PyTorch, from the cell to the application."""

from rnnkit.cells import CELLS, Cell, GRUCell, LSTMCell, RNNCell, make_cell
from rnnkit.layers import Recurrent, detach_state, reset_state, select_state

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "Cell",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "Recurrent",
    "detach_state",
    "make_cell",
    "reset_state",
    "select_state",
    "__version__",
]
