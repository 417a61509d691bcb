"""Scoring a task model over a batch source, for validation during training and for `evaluate` after it.

What is here: `BatchSource` (what the trainer and the evaluation need of data) and `evaluate_model` (a
task model's metrics over every batch of a source, in eval mode, summed over the ranks in distributed
training). What is not: the training loop (train.py) and the task metrics computed from predictions
(metrics.py). Loading and evaluating a run import this module, never train.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import nn

from rnnkit import distributed


class BatchSource(Protocol):
    """What the trainer needs of training or validation data."""

    stateful: bool  # True for a continuous stream whose state carries from batch to batch

    def __len__(self) -> int: ...

    def batches(self, epoch: int, start: int = 0) -> Iterator[dict[str, torch.Tensor]]: ...


@torch.no_grad()
def evaluate_model(model: nn.Module, source: BatchSource, device: torch.device | str = "cpu",
                   dist: distributed.Context | None = None) -> dict[str, float]:
    """A task model's metrics over every batch of `source`, in eval mode (state carried for streams).

    In distributed training each rank scores its share of every batch and the sums are added up.
    """
    was_training = model.training
    model.eval()
    stats: dict[str, float] = {}
    count = 0
    state = None
    for batch in source.batches(0):
        if dist is not None:
            if distributed.batch_rows(batch) < dist.world:
                batch = batch if dist.main else None  # rank 0 scores a batch too small to share
                if batch is None:
                    continue
            else:
                batch = distributed.shard(batch, dist, source)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        out = model.loss(batch, state)
        state = out.state if source.stateful else None
        count += out.count
        for k, v in out.stats.items():
            stats[k] = stats.get(k, 0.0) + v
    if dist is not None:
        keys = sorted(stats)
        totals = [torch.as_tensor(stats[k], dtype=torch.float64, device=device).clone() for k in keys]
        counted = torch.tensor([float(count)], dtype=torch.float64, device=device)
        for t in [*totals, counted]:
            torch.distributed.all_reduce(t)
        stats = {k: (float(t) if t.dim() == 0 else t.cpu()) for k, t in zip(keys, totals, strict=True)}
        count = int(counted.item())
    model.train(was_training)
    return model.metrics(stats, count)
