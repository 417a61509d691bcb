"""What every task model shares: the loss record the trainer reads, sequence dropout, option checks.

What is here: `LossOutput` (the one thing a model's `loss(batch, state)` returns to the trainer),
`SequenceDropout` (dropout on (B, T, F) with an optional single mask per sequence) and `check_choice`
(a named option must be one of a few values), `layer_groups` (a model's parameters from input to output, for
discriminative learning rates and gradual unfreezing). What is not: any particular task.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LossOutput:
    """A model's report on one batch.

    Attributes:
        loss: the scalar to minimise: the mean over the batch's counted units (tokens, sequences), or their
            weighted mean when the units carry weights.
        count: how many units the mean is over.
        stats: sums over the batch that the model's `metrics` turns into figures (e.g. summed loss).
        state: the recurrent state to carry into the next chunk (truncated BPTT), else None.
        weight: for a weighted mean, the sum of the weights it divides by (e.g. class weights); None when
            every unit weighs 1. The trainer weights batches, and the shares of a batch in distributed
            training, by it (by `count` when None), so that the loss of several shares is the loss of the
            whole batch.
    """

    loss: Tensor
    count: int
    stats: dict[str, float] = field(default_factory=dict)
    state: Any = None
    weight: float | None = None


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """A model's parameters in groups from the input side to the output side.

    A model may say its own (a `layer_groups()` method); otherwise one with an `embedding` and a recurrent
    stack `rnn` (a `layers.Recurrent`) has: the embedding, each recurrent layer in turn, then everything else
    (the head: pooling, attention, output layers). Other models are one group. Every parameter is in exactly
    one group.
    """
    own = getattr(model, "layer_groups", None)
    if callable(own):
        return own()
    embedding, rnn = getattr(model, "embedding", None), getattr(model, "rnn", None)
    if rnn is None or not hasattr(rnn, "layer_parameters"):
        return [list(model.parameters())]
    groups = [list(embedding.parameters())] if isinstance(embedding, nn.Module) else []
    groups += [rnn.layer_parameters(layer) for layer in range(rnn.num_layers)]
    taken = {id(p) for group in groups for p in group}
    groups.append([p for p in model.parameters() if id(p) not in taken])
    return [group for group in groups if group]


def check_choice(name: str, value: Any, choices: Collection[str]) -> None:
    """Raise ValueError naming the option `name` where `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}; got {value!r}")


class SequenceDropout(nn.Module):
    """Dropout on (B, T, F); with `variational=True` one mask per sequence is reused at every step."""

    def __init__(self, p: float, variational: bool = False) -> None:
        super().__init__()
        self.p = float(p)
        self.variational = variational

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if not self.variational or x.dim() != 3:
            return F.dropout(x, self.p, training=True)
        keep = 1.0 - self.p
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(keep) / keep  # (B, 1, F)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}" + (", variational" if self.variational else "")


def masked_token_mean(values: Tensor, lengths: Tensor | None) -> tuple[Tensor, int]:
    """Mean of per-token values (B, T) over the tokens inside each row's length; returns (mean, count)."""
    if lengths is None:
        return values.mean(), values.numel()
    mask = torch.arange(values.shape[1], device=values.device).unsqueeze(0) < lengths.to(values.device).unsqueeze(1)
    count = int(mask.sum())
    return (values * mask).sum() / count, count
