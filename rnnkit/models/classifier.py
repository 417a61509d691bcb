"""Many-to-one: a recurrent encoder whose outputs are pooled into one vector and classified.

What is here: `AttentionPooling` (learned additive scores over time), `pool` (last state, mean, max or
attention over the valid steps of padded outputs) and `SequenceClassifier` (token ids through an
embedding, or feature frames such as log-mel spectra, into a `Recurrent` stack, pooled, then a linear
layer), with its loss, metrics and class-probability prediction. What is not: reading files, audio
features and vocabularies (data/), the training loop (train.py) and the evaluation report (metrics.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent
from rnnkit.models.base import LossOutput, SequenceDropout, check_choice

POOLINGS = ("last", "mean", "max", "attention")


def _mask(lengths: Tensor | None, B: int, T: int, device: torch.device) -> Tensor:
    """(B, T) bool: True at the valid steps of each row."""
    if lengths is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    return torch.arange(T, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)


class AttentionPooling(nn.Module):
    """Weighted sum over time with learned weights: a_t = softmax_t(v^T tanh(W o_t + b)) (Yang et al. 2016)."""

    def __init__(self, input_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        attention_size = attention_size or input_size
        self.proj = nn.Linear(input_size, attention_size)
        self.score = nn.Linear(attention_size, 1, bias=False)

    def forward(self, outputs: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """outputs (B, T, F), mask (B, T) -> pooled (B, F) and weights (B, T) (zero at padding)."""
        scores = self.score(torch.tanh(self.proj(outputs))).squeeze(-1)  # (B, T)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)  # (B, T)
        return torch.bmm(weights.unsqueeze(1), outputs).squeeze(1), weights  # (B, F)


def pool(outputs: Tensor, lengths: Tensor | None, mode: str, num_directions: int = 1,
         attention: AttentionPooling | None = None) -> Tensor:
    """One vector per sequence from the encoder's outputs.

    Args:
        outputs: (B, T, D*H), zero past each row's length.
        lengths: (B,) true lengths, or None when every row is full.
        mode: `last` (the forward direction's output at the row's last step, concatenated with the
            backward direction's output at step 0: each direction's final state), `mean`, `max` or `attention`.
        num_directions: D.
        attention: the module for `attention` pooling.
    Returns:
        (B, D*H).
    """
    B, T, _ = outputs.shape
    mask = _mask(lengths, B, T, outputs.device)  # (B, T)
    if mode == "last":
        if lengths is None:
            last = torch.full((B,), T - 1, dtype=torch.long, device=outputs.device)
        else:
            last = lengths.to(outputs.device) - 1  # (B,)
        rows = torch.arange(B, device=outputs.device)
        forward = outputs[rows, last]  # (B, D*H)
        if num_directions == 1:
            return forward
        H = outputs.shape[2] // 2
        return torch.cat([forward[:, :H], outputs[:, 0, H:]], dim=1)  # (B, 2H)
    if mode == "mean":
        counts = mask.sum(dim=1, keepdim=True).to(outputs.dtype)  # (B, 1)
        return (outputs * mask.unsqueeze(-1)).sum(dim=1) / counts  # (B, D*H)
    if mode == "max":
        return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(dim=1)  # (B, D*H)
    if mode == "attention":
        assert attention is not None, "attention pooling needs its module"
        return attention(outputs, mask)[0]
    raise ValueError(f"pooling: expected one of {', '.join(POOLINGS)}; got {mode!r}")


class SequenceClassifier(nn.Module):
    """Sequence in, one of C classes out.

    Args:
        num_classes: C.
        vocab_size: V for token-id inputs; None for feature inputs (then `input_size` is needed).
        input_size: F, features per frame of float inputs (audio); ignored with `vocab_size`.
        embedding_size: E, size of the token embeddings.
        hidden_size: H.
        num_layers: L.
        cell: any cell name `Recurrent` takes.
        bidirectional: D = 2 when True.
        dropout: between recurrent layers.
        embedding_dropout: on the embeddings (or input frames).
        output_dropout: on the pooled vector, before the output layer.
        pooling: `last`, `mean`, `max` or `attention`.
        class_weights: (C,) weights of the cross-entropy per class, or None.
        fused: passed to `Recurrent`.
    """

    def __init__(
        self,
        num_classes: int,
        vocab_size: int | None = None,
        input_size: int | None = None,
        embedding_size: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        pooling: str = "max",
        class_weights: Tensor | None = None,
        fused: bool | None = None,
        recurrent_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("pooling", pooling, POOLINGS)
        if num_classes < 2:
            raise ValueError(f"num_classes: expected at least 2; got {num_classes}")
        if vocab_size is None and input_size is None:
            raise ValueError("give vocab_size (token inputs) or input_size (feature inputs)")
        self.num_classes = num_classes
        self.pooling = pooling
        self.embedding: nn.Embedding | None = None
        if vocab_size is not None:
            self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=0)
            nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
            with torch.no_grad():
                self.embedding.weight[0].zero_()
            rnn_input = embedding_size
        else:
            rnn_input = int(input_size)
        self.input_dropout = SequenceDropout(embedding_dropout)
        self.rnn = Recurrent(cell, rnn_input, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                             dropout=dropout, fused=fused, **(recurrent_options or {}))
        self.num_directions = 2 if bidirectional else 1
        features = self.num_directions * hidden_size
        self.attention = AttentionPooling(features) if pooling == "attention" else None
        self.output_dropout = nn.Dropout(output_dropout)
        self.output = nn.Linear(features, num_classes)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.shape != (num_classes,):
                raise ValueError(f"class_weights: expected shape ({num_classes},); got {tuple(class_weights.shape)}")
        # A buffer, so that the weights travel with the model's device and are saved with its weights.
        self.register_buffer("class_weights", class_weights if class_weights is not None
                             else torch.ones(num_classes))

    def encode(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """The pooled sequence vector (B, D*H) of token ids (B, T) or feature frames (B, T, F)."""
        x = self.embedding(inputs) if self.embedding is not None else inputs  # (B, T, E|F)
        x = self.input_dropout(x)
        outputs, _ = self.rnn(x, lengths=lengths)  # (B, T, D*H)
        return pool(outputs, lengths, self.pooling, self.num_directions, self.attention)

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class logits (B, C)."""
        return self.output(self.output_dropout(self.encode(inputs, lengths)))

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Weighted cross-entropy per sequence; stats carry summed loss and the count of correct answers.

        Args:
            batch: `inputs` (B, T) or (B, T, F), `lengths` (B,), `targets` (B,) class indices.
            state: unused (every sequence starts from a zero state).
        """
        logits = self(batch["inputs"], batch.get("lengths"))  # (B, C)
        targets = batch["targets"]
        losses = F.cross_entropy(logits, targets, weight=self.class_weights, reduction="none")  # (B,)
        weights = self.class_weights[targets]  # (B,)
        loss = losses.sum() / weights.sum()
        correct = int((logits.argmax(dim=1) == targets).sum())
        unweighted = float(F.cross_entropy(logits.detach(), targets, reduction="sum"))
        return LossOutput(loss=loss, count=targets.shape[0], stats={"loss_sum": unweighted, "correct": correct},
                          weight=float(weights.sum()))

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Mean cross-entropy (unweighted) and accuracy."""
        n = max(count, 1)
        return {"loss": stats["loss_sum"] / n, "accuracy": stats["correct"] / n}

    monitor = ("accuracy", "max")  # the validation figure that picks the best weights

    @torch.no_grad()
    def predict_proba(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Class probabilities (B, C)."""
        return self(inputs, lengths).softmax(dim=-1)
