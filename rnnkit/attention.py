"""Attention over a sequence of encoder outputs: additive (Bahdanau) and multiplicative (Luong).

What is here: `AdditiveAttention` (score = v^T tanh(W q + U k)), `MultiplicativeAttention` (score =
q^T k, "dot", or q^T W k, "general"), the base `Attention` and the masked softmax they share, and
`make_attention`. Each module splits its work in two: `prepare(keys)` once per source sequence (the key
projection, which does not depend on the decoder step), then `forward(query, keys, prepared, mask)`,
which `Attention` gives both, once per decoder step.
What is not here: the decoder that uses them (models/seq2seq.py) and plotting.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

ATTENTION_KINDS = ("additive", "dot", "general")


def masked_softmax(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Softmax over the last dimension of scores (B, S), with positions where mask (B, S) is False at zero."""
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return scores.softmax(dim=-1)


class Attention(nn.Module):
    """What both kinds share: a subclass gives `prepare(keys)` and `scores(query, prepared)`."""

    def prepare(self, keys: Tensor) -> Tensor:
        raise NotImplementedError

    def scores(self, query: Tensor, prepared: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(
        self, query: Tensor, keys: Tensor, prepared: Tensor | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attend from query (B, Q) over keys (B, S, K).

        Args:
            query: (B, Q).
            keys: (B, S, K), the encoder outputs (they are also the values).
            prepared: `prepare(keys)`, to reuse across decoder steps (computed when None).
            mask: (B, S) bool, True at real positions; every row needs at least one.
        Returns:
            context (B, K) and weights (B, S) summing to 1 over the unmasked positions.
        """
        if prepared is None:
            prepared = self.prepare(keys)
        weights = masked_softmax(self.scores(query, prepared), mask)  # (B, S)
        context = torch.bmm(weights.unsqueeze(1), keys).squeeze(1)  # (B, K)
        return context, weights


class AdditiveAttention(Attention):
    """Bahdanau's additive attention: score(q, k) = v^T tanh(W_q q + W_k k).

    Args:
        query_size: Q, size of the decoder state that asks.
        key_size: K, size of each encoder output.
        attention_size: A, size of the hidden layer of the score (default: Q).
    """

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None) -> None:
        super().__init__()
        attention_size = attention_size or query_size
        self.query_size, self.key_size, self.attention_size = query_size, key_size, attention_size
        self.query_proj = nn.Linear(query_size, attention_size, bias=False)
        self.key_proj = nn.Linear(key_size, attention_size, bias=True)
        self.v = nn.Linear(attention_size, 1, bias=False)

    def prepare(self, keys: Tensor) -> Tensor:
        """W_k k for every key: (B, S, K) -> (B, S, A)."""
        return self.key_proj(keys)

    def scores(self, query: Tensor, prepared: Tensor) -> Tensor:
        """Unnormalised scores (B, S) of query (B, Q) against prepared keys (B, S, A)."""
        hidden = torch.tanh(prepared + self.query_proj(query).unsqueeze(1))  # (B, S, A)
        return self.v(hidden).squeeze(2)  # (B, S)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, attention_size={self.attention_size}"


class MultiplicativeAttention(Attention):
    """Luong's multiplicative attention: score = q^T k ("dot") or q^T W k ("general").

    Args:
        query_size: Q.
        key_size: K; "dot" needs K == Q.
        score: "dot" or "general".
    """

    def __init__(self, query_size: int, key_size: int, score: str = "general") -> None:
        super().__init__()
        if score not in ("dot", "general"):
            raise ValueError(f"score: expected 'dot' or 'general'; got {score!r}")
        if score == "dot" and query_size != key_size:
            raise ValueError(f"dot attention needs query_size == key_size; got {query_size} and {key_size}")
        self.query_size, self.key_size, self.score = query_size, key_size, score
        # W k is applied to the keys once per sequence rather than W^T q at every step.
        self.key_proj = nn.Linear(key_size, query_size, bias=False) if score == "general" else None

    def prepare(self, keys: Tensor) -> Tensor:
        """W k for every key ("general") or the keys themselves ("dot"): (B, S, K) -> (B, S, Q)."""
        return keys if self.key_proj is None else self.key_proj(keys)

    def scores(self, query: Tensor, prepared: Tensor) -> Tensor:
        """Unnormalised scores (B, S) of query (B, Q) against prepared keys (B, S, Q)."""
        return torch.bmm(prepared, query.unsqueeze(2)).squeeze(2)  # (B, S)

    def extra_repr(self) -> str:
        return f"query_size={self.query_size}, key_size={self.key_size}, score={self.score}"


def make_attention(kind: str, query_size: int, key_size: int) -> AdditiveAttention | MultiplicativeAttention:
    """An attention module by name: "additive", "dot" or "general"."""
    if kind == "additive":
        return AdditiveAttention(query_size, key_size)
    if kind in ("dot", "general"):
        return MultiplicativeAttention(query_size, key_size, kind)
    raise ValueError(f"attention: expected one of {', '.join(ATTENTION_KINDS)}; got {kind!r}")
