"""Typed configuration for rnnkit: the error type for user mistakes, and dataclass configs.

What is here: `UserError` (bad input a person can fix; the CLI prints it without a traceback),
the model/data/train/decode dataclasses with validation, and TOML loading. What is not: argument
parsing (cli.py) and anything that touches tensors.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input: a file, an option or a value. Printed without a traceback."""
