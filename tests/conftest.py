"""Shared test settings: deterministic, single-threaded numerics for stable comparisons."""

import pytest
import torch

# Small tensors gain nothing from a second thread, and a single thread cannot be slowed by another
# process taking the other core (OpenMP threads waiting on each other).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
