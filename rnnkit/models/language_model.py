"""The language model: embedding -> `Recurrent` -> output layer, predicting the next token.

What is here: `LanguageModel` with its loss for the trainer, its metrics (loss, perplexity, bits per
token) and the `step` / `reorder_state` interface that decoding.py drives. What is not: tokenizers,
files and batching (data/), sampling and beam search (decoding.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent, select_state
from rnnkit.models.base import LossOutput, SequenceDropout

IGNORE_INDEX = -100  # target value of padding positions: not predicted, not counted


class LanguageModel(nn.Module):
    """Next-token model over a vocabulary of V tokens.

    Args:
        vocab_size: V.
        embedding_size: E, size of the token embeddings.
        hidden_size: H, size of the recurrent state.
        num_layers: L, stacked recurrent layers.
        cell: any cell name `Recurrent` takes.
        dropout: between recurrent layers.
        embedding_dropout: on the embeddings.
        output_dropout: on the last layer's outputs, before the output layer.
        variational: one dropout mask per sequence for all its steps, everywhere above.
        tie_weights: the output layer reuses the embedding matrix (with a projection H -> E when H != E).
        fused: passed to `Recurrent`.
        adaptive_softmax: cutoffs of an adaptive softmax output layer for large vocabularies sorted by
            frequency (e.g. (2000, 10000)); None for a plain linear output layer.
        recurrent_options: more keyword arguments of `Recurrent` (recurrent_dropout, zoneout, weight_drop).
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_size: int = 128,
        hidden_size: int = 256,
        num_layers: int = 2,
        cell: str = "lstm",
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        variational: bool = False,
        tie_weights: bool = False,
        fused: bool | None = None,
        adaptive_softmax: tuple[int, ...] | None = None,
        recurrent_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_size)
        self.embedding_dropout = SequenceDropout(embedding_dropout, variational)
        self.rnn = Recurrent(cell, embedding_size, hidden_size, num_layers=num_layers, dropout=dropout,
                             variational_dropout=variational, fused=fused, **(recurrent_options or {}))
        self.output_dropout = SequenceDropout(output_dropout, variational)
        out_features = hidden_size
        self.projection: nn.Module = nn.Identity()
        if tie_weights and hidden_size != embedding_size:
            self.projection = nn.Linear(hidden_size, embedding_size, bias=False)
            out_features = embedding_size
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        self.adaptive = adaptive_softmax is not None
        if self.adaptive:
            if tie_weights:
                raise ValueError("tie_weights and adaptive_softmax cannot be combined")
            cutoffs = list(adaptive_softmax)
            if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= vocab_size:
                raise ValueError(f"adaptive_softmax: expected increasing cutoffs in 1..{vocab_size - 1}; got {cutoffs}")
            # Frequent tokens (low ids: the vocabularies are sorted by frequency) get the full-size head,
            # rare ones share smaller clusters: the output layer's cost falls several-fold (Grave et al. 2017).
            self.decoder: nn.Module = nn.AdaptiveLogSoftmaxWithLoss(out_features, vocab_size, cutoffs, div_value=4.0)
        else:
            self.decoder = nn.Linear(out_features, vocab_size)
            nn.init.zeros_(self.decoder.bias)
            if tie_weights:
                self.decoder.weight = self.embedding.weight

    def features(self, tokens: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """The vectors the output layer reads: (B, T, F), and the final state."""
        x = self.embedding_dropout(self.embedding(tokens))  # (B, T, E)
        out, state = self.rnn(x, state, lengths=lengths)  # (B, T, H)
        return self.projection(self.output_dropout(out)), state  # (B, T, F)

    def output(self, features: Tensor) -> Tensor:
        """Logits (..., V) from features (..., F); log-probabilities for the adaptive softmax."""
        if self.adaptive:
            return self.decoder.log_prob(features.reshape(-1, features.shape[-1])).view(*features.shape[:-1], -1)
        return self.decoder(features)

    def forward(self, tokens: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """Logits for the token after each position.

        Args:
            tokens: (B, T) int64.
            state: recurrent state to start from (zeros when None).
            lengths: (B,) true lengths of padded rows, or None.
        Returns:
            logits (B, T, V) and the final state.
        """
        features, state = self.features(tokens, state, lengths)
        return self.output(features), state

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Cross-entropy summed over time steps, averaged per predicted token.

        Args:
            batch: `inputs` (B, T) and `targets` (B, T) with IGNORE_INDEX at padding; `lengths` (B,)
                for padded batches.
            state: the state carried from the previous chunk of the stream (truncated BPTT), or None.
        """
        features, state = self.features(batch["inputs"], state, lengths=batch.get("lengths"))
        targets = batch["targets"].flatten()
        features = features.flatten(0, 1)  # (B*T, F)
        if self.adaptive:
            keep = targets != IGNORE_INDEX
            count = int(keep.sum())
            losses = self.decoder(features[keep], targets[keep]).loss * count
        else:
            losses = F.cross_entropy(self.decoder(features), targets, ignore_index=IGNORE_INDEX, reduction="sum")
            count = int((targets != IGNORE_INDEX).sum())
        return LossOutput(loss=losses / max(count, 1), count=count, stats={"loss_sum": float(losses.detach())},
                          state=state)

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Loss (nats per token), perplexity and bits per token from summed statistics."""
        loss = stats["loss_sum"] / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2)}

    monitor = ("loss", "min")  # the validation figure that picks the best weights

    # ------------------------------------------------------------------ the decoding interface

    @torch.no_grad()
    def prefill(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Read a prompt (B, T) and return the logits for the next token (B, V) and the state."""
        features, state = self.features(tokens, state)
        return self.output(features[:, -1]), state

    def logits_from_state(self, state: Any) -> Tensor:
        """Logits for the next token (B, V) from a state alone: the top layer's h is the last output."""
        h = state[0] if isinstance(state, tuple) else state  # (L, B, H)
        return self.output(self.projection(h[-1]))

    def step(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One token per row (B,) in, logits for the next token (B, V) and the new state out."""
        x = self.embedding(tokens)  # (B, E)
        out, state = self.rnn.step(x, state)  # (B, H)
        return self.output(self.projection(out)), state

    @staticmethod
    def reorder_state(state: Any, index: Tensor) -> Any:
        return select_state(state, index)
