"""How a cell runs over time: everything between a cell's equations (cells.py) and a layer (layers.py).

What is here: `sequences` (whole-sequence autograd functions with a hand-written backward, on ATen or on the
native kernels, and the scratch pool of buffers kept between training steps), `scan` (the linear recurrence
of minGRU/minLSTM: a log-space parallel scan and a loop), and `native` (the C++ kernels, built or loaded on
first use, and their bindings). What is not: the cells' equations and parameters (cells.py) or lengths,
stacking and directions (layers.py).
"""
