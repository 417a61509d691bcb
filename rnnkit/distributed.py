"""Distributed data parallel training through PyTorch's own engine (`torchrun`), for every task.

What is here: `setup` (join the process group that torchrun describes in the environment: gloo on
CPU, NCCL on GPU), `Context` (this process's rank and the world size, with the few collective
operations the trainer needs), and `shard` (this rank's rows of a global batch). What is not: the
training loop (train.py uses these) or anything about tasks.

Every rank reads the same data and builds the same batches; each takes an equal share of the rows
of every global batch, so a stream for truncated BPTT is split by rows (each rank carries the state
of its own rows) and `--batch-size` stays the global batch size. Gradients are averaged by DDP with
each rank's loss weighted by its share of the counted units, so N processes compute the same update
as one process with the whole batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def requested() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "cpu") -> Context | None:
    """Join the process group described by the environment; None when training in one process."""
    if not requested():
        return None
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return Context(dist.get_rank(), dist.get_world_size())


def current() -> Context | None:
    """The context of an initialised process group, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return Context(dist.get_rank(), dist.get_world_size())
    return None


def is_main() -> bool:
    """True in single-process training and on rank 0: the process that writes files and logs."""
    ctx = current()
    return ctx is None or ctx.rank == 0


@dataclass
class Context:
    rank: int
    world: int

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int) -> tuple[int, int]:
        """This rank's [start, end) of `total` rows: equal shares, the first ranks one more when uneven."""
        base, extra = divmod(total, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum(self, values: list[float], device: torch.device | str = "cpu") -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def gather_rows(self, state: Any) -> Any:
        """All ranks' rows of a recurrent state (batch on dim 1), in rank order; equal shares assumed."""
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return type(state)(self.gather_rows(s) for s in state)
        parts = [torch.empty_like(state) for _ in range(self.world)]
        dist.all_gather(parts, state.contiguous())
        return torch.cat(parts, dim=1)

    def take_rows(self, state: Any) -> Any:
        """This rank's rows of a whole recurrent state (batch on dim 1)."""
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return type(state)(self.take_rows(s) for s in state)
        start, end = self.rows(state.shape[1])
        return state[:, start:end]

    def barrier(self) -> None:
        dist.barrier()


def batch_rows(batch: dict[str, Any]) -> int:
    """The number of rows of a batch: the length of `inputs`, else the commonest leading dimension."""
    if torch.is_tensor(batch.get("inputs")):
        return int(batch["inputs"].shape[0])
    sizes = [int(v.shape[0]) for v in batch.values() if torch.is_tensor(v) and v.dim() > 0]
    return max(set(sizes), key=sizes.count) if sizes else 0


def shard(batch: dict[str, Any], ctx: Context, source: Any = None) -> dict[str, Any]:
    """This rank's rows of a global batch.

    Tensors whose leading dimension is the batch's rows are sliced; others pass through. A batch
    source whose batches hold tensors of another layout (e.g. words of all sentences flattened)
    provides `shard(batch, start, end)` itself.
    """
    start, end = ctx.rows(batch_rows(batch))
    if source is not None and hasattr(source, "shard"):
        return source.shard(batch, start, end)
    rows = batch_rows(batch)
    return {k: v[start:end] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == rows else v
            for k, v in batch.items()}
