"""Distributed data parallel training through PyTorch's own engine (`torchrun`), for every task.

What is here: `setup` (join the process group that torchrun describes in the environment: gloo on
CPU, NCCL on GPU), `Context` (this process's rank and the world size, with the few collective
operations the trainer needs), and `shard` (this rank's rows of a global batch). What is not: the
training loop (train.py uses these) or anything about tasks.

Every rank reads the same data and builds the same batches; each takes an equal share of the rows
of every global batch (the first ranks one row more when it does not divide), so a stream for
truncated BPTT is split by rows (each rank carries the state of its own rows) and `--batch-size`
stays the global batch size. Gradients are averaged by DDP with each rank's loss weighted by its
share of the weight of the counted units, so N processes compute the same update as one process with
the whole batch.

Only rank 0 writes a run's files and prints; where a decision depends on what a rank sees on disk
(does --out already hold a run?), rank 0 decides and the others follow (`Context.from_main`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist


def requested() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: torch.device) -> str:
    """The process-group backend for a training device: NCCL for CUDA, gloo otherwise."""
    return "nccl" if device.type == "cuda" else "gloo"


def local_device(device: torch.device) -> torch.device:
    """The device this process trains on: under torchrun a CUDA device is the GPU `LOCAL_RANK` names, so
    that the processes of a machine take one GPU each."""
    if requested() and device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def setup(device: torch.device) -> Context | None:
    """Join the process group described by the environment; None when training in one process.

    Args:
        device: the resolved training device (not "auto"): it picks the backend.
    """
    assert isinstance(device, torch.device), "resolve the device (device.resolve_device) before choosing a backend"
    if not requested():
        return None
    device = local_device(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's collectives run on the current device
        dist.init_process_group(backend=backend_for(device))
    return current()


def close() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> Context | None:
    """The context of an initialised process group, else None."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return Context(dist.get_rank(), dist.get_world_size(), device)
    return None


def is_main() -> bool:
    """True in single-process training and on rank 0: the process that writes files and logs."""
    ctx = current()
    return ctx is None or ctx.rank == 0


@dataclass
class Context:
    rank: int
    world: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, total: int) -> tuple[int, int]:
        """This rank's [start, end) of `total` rows: equal shares, the first ranks one more when uneven."""
        base, extra = divmod(total, self.world)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def sum(self, values: list[float], device: torch.device | str | None = None) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device or self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | str | None = None) -> bool:
        t = torch.tensor([1.0 if flag else 0.0], device=device or self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def from_main(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank (a decision about what rank 0 sees, which every rank then follows)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item() > 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order."""
        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, obj)
        return found

    def gather_rows(self, state: Any) -> Any:
        """All ranks' rows of a recurrent state (batch on dim 1), in rank order.

        The shares may differ by a row (a batch size the world size does not divide): each rank's part is
        padded to the largest share for the collective and cut back after it.
        """
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return type(state)(self.gather_rows(s) for s in state)
        state = state.contiguous()
        sizes = torch.tensor([state.shape[1]], dtype=torch.int64, device=state.device)
        found = [torch.empty_like(sizes) for _ in range(self.world)]
        dist.all_gather(found, sizes)
        counts = [int(n) for n in found]
        width = max(counts)
        padded = state
        if state.shape[1] < width:
            pad = state.new_zeros(state.shape[0], width - state.shape[1], *state.shape[2:])
            padded = torch.cat([state, pad], dim=1)
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:, :n] for p, n in zip(parts, counts, strict=True)], dim=1)

    def take_rows(self, state: Any) -> Any:
        """This rank's rows of a whole recurrent state (batch on dim 1)."""
        if state is None:
            return None
        if isinstance(state, tuple | list):
            return type(state)(self.take_rows(s) for s in state)
        start, end = self.rows(state.shape[1])
        return state[:, start:end]

    def barrier(self) -> None:
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
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
