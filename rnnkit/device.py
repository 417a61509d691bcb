"""Choosing the device a model runs on.

What is here: `resolve_device` (cpu, cuda, mps or auto, checked to exist) and `training_device` (the same,
and under torchrun the GPU of this process's LOCAL_RANK). What is not: the process group and its
collectives (distributed.py, which also reads the launcher's environment in `local_device`).
"""

from __future__ import annotations

import torch

from rnnkit import distributed
from rnnkit.config import UserError


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; a named device is checked to exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available on this machine; use --device cpu or auto")
    return torch.device(name)


def training_device(name: str) -> torch.device:
    """The device this process trains on: `resolve_device`, and under torchrun the GPU of this process's
    LOCAL_RANK for a CUDA device."""
    return distributed.local_device(resolve_device(name))
