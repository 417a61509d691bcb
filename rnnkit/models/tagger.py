"""The sequence tagger: one tag per token, read with the whole sentence in both directions.

What is here: `CharEncoder` (a word's vector from its characters, by a BiLSTM or a CNN with max
pooling, so that unseen words still get one) and `Tagger` (word embedding + shape embedding +
character vector -> bidirectional `Recurrent` -> per-token scores -> softmax or linear-chain CRF),
with its loss, metrics and decoding. What is not: vocabularies, files, tag names and schemes (the
task, tasks/tag.py, turns those into ids and hands the model a function that finds entities in a
tag-id sequence), nor the CRF algorithms themselves (crf.py).

Batch keys (all int64): `words` (B, T) with 0 = padding and 1 = unknown, `shapes` (B, T), `chars`
(B, T, C) with 0 = padding, `lengths` (B,), and for the loss `tags` (B, T) with IGNORE_INDEX at padding. A
tagger made with `context_size` F > 0 also reads `context` (B, T, F) float32: vectors given from outside (the
states of frozen language models), joined to each token's own features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.crf import CRF
from rnnkit.layers import Recurrent
from rnnkit.models.base import LossOutput, SequenceDropout

IGNORE_INDEX = -100
PAD, UNK = 0, 1  # ids shared by the word and character vocabularies

SpanFinder = Callable[[list[int]], list[tuple[Any, int, int]]]


class CharEncoder(nn.Module):
    """A vector per word from its characters.

    Args:
        num_chars: character vocabulary size (0 = padding).
        embedding_size: size of the character embeddings.
        hidden_size: size of the word vector out (split between the two directions for `lstm`).
        kind: `lstm` (final states of a BiLSTM over the characters) or `cnn` (width-3 convolution,
            max over the characters).
    Shape:
        forward(chars (N, C), lengths (N,)) -> (N, hidden_size)
    """

    def __init__(self, num_chars: int, embedding_size: int, hidden_size: int, kind: str = "lstm") -> None:
        super().__init__()
        if kind not in ("lstm", "cnn"):
            raise ValueError(f"kind: expected 'lstm' or 'cnn'; got {kind!r}")
        if kind == "lstm" and hidden_size % 2:
            raise ValueError(f"hidden_size: a BiLSTM character encoder needs an even size; got {hidden_size}")
        self.kind = kind
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(num_chars, embedding_size, padding_idx=PAD)
        if kind == "lstm":
            self.rnn = Recurrent("lstm", embedding_size, hidden_size // 2, bidirectional=True)
        else:
            self.conv = nn.Conv1d(embedding_size, hidden_size, kernel_size=3, padding=1)

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding(chars)  # (N, C, E)
        if self.kind == "lstm":
            _, (h, _) = self.rnn(x, lengths=lengths.clamp(min=1))  # h (2, N, H/2)
            return torch.cat([h[0], h[1]], dim=1)  # (N, H)
        y = self.conv(x.transpose(1, 2))  # (N, H, C)
        pad = (chars == PAD).unsqueeze(1)  # (N, 1, C)
        return y.masked_fill(pad, float("-inf")).amax(dim=2).clamp(min=-1e4)  # (N, H); all-padding rows stay finite


class Tagger(nn.Module):
    """Per-token tags from words, their shapes and their characters.

    Args:
        vocab_size: word vocabulary size (0 = padding, 1 = unknown).
        num_chars: character vocabulary size (0 = padding, 1 = unknown); 0 turns characters off.
        num_shapes: word-shape vocabulary size (0 = padding); 0 turns shapes off.
        num_tags: K.
        embedding_size: size of the word embeddings.
        hidden_size: H, per direction.
        num_layers: stacked recurrent layers.
        cell: any cell name `Recurrent` takes.
        bidirectional: read both directions (the usual for tagging).
        char_encoder: `lstm`, `cnn` or `none`.
        char_embedding_size, char_hidden_size: sizes of the character encoder.
        shape_embedding_size: size of the word-shape embeddings.
        dropout: between recurrent layers.
        embedding_dropout: on the concatenated word representation.
        output_dropout: on the encoder's outputs.
        word_dropout: in training, each word is replaced by the unknown word with this probability,
            so that the unknown vector learns from real contexts and the characters carry rare words.
        crf: a linear-chain CRF over the scores (else a softmax per token).
        allowed: (allowed (K, K), allowed_start (K,), allowed_end (K,)) transitions for the CRF, or None.
        span_finder: maps one sentence's tag ids to its entities; when given, evaluation counts
            entities and the model reports precision, recall and F1 and is selected by F1.
        fused: passed to `Recurrent`.
        context_size: F, the size of the outside vectors in `context` (0: none).
    """

    def __init__(
        self,
        vocab_size: int,
        num_chars: int,
        num_shapes: int,
        num_tags: int,
        embedding_size: int = 100,
        hidden_size: int = 200,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        char_encoder: str = "lstm",
        char_embedding_size: int = 32,
        char_hidden_size: int = 64,
        shape_embedding_size: int = 8,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        word_dropout: float = 0.0,
        crf: bool = False,
        allowed: tuple[Tensor, Tensor, Tensor] | None = None,
        span_finder: SpanFinder | None = None,
        fused: bool | None = None,
        context_size: int = 0,
    ) -> None:
        super().__init__()
        self.num_tags = num_tags
        self.context_size = int(context_size)
        self.word_dropout = float(word_dropout)
        self.embedding = nn.Embedding(vocab_size, embedding_size, padding_idx=PAD)
        features = embedding_size
        self.shape_embedding: nn.Embedding | None = None
        if num_shapes:
            self.shape_embedding = nn.Embedding(num_shapes, shape_embedding_size, padding_idx=PAD)
            features += shape_embedding_size
        self.char_encoder: CharEncoder | None = None
        if char_encoder != "none" and num_chars:
            self.char_encoder = CharEncoder(num_chars, char_embedding_size, char_hidden_size, char_encoder)
            features += char_hidden_size
        features += self.context_size
        self.embedding_dropout = SequenceDropout(embedding_dropout)
        self.rnn = Recurrent(cell, features, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                             dropout=dropout, fused=fused)
        self.output_dropout = SequenceDropout(output_dropout)
        self.output = nn.Linear(hidden_size * (2 if bidirectional else 1), num_tags)
        self.crf: CRF | None = CRF(num_tags, *(allowed or (None, None, None))) if crf else None
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                _init_embedding(module)
        self.span_finder = span_finder
        # The validation figure that picks the best weights: entity F1 when entities are counted.
        self.monitor = ("f1", "max") if span_finder is not None else ("token_accuracy", "max")

    # ------------------------------------------------------------------------------ scores

    def emissions(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-token tag scores (B, T, K)."""
        words, lengths = batch["words"], batch["lengths"]
        B, T = words.shape
        if self.training and self.word_dropout > 0:
            drop = (torch.rand(words.shape, device=words.device) < self.word_dropout) & (words != PAD)
            words = words.masked_fill(drop, UNK)
        parts = [self.embedding(words)]  # (B, T, E)
        if self.shape_embedding is not None:
            parts.append(self.shape_embedding(batch["shapes"]))  # (B, T, S)
        if self.char_encoder is not None and self.rnn.export_mode:
            # A graph being captured cannot pick a data-dependent number of words: encode every slot
            # (padding too) and zero the padding, which gives the same vectors as below.
            flat = batch["chars"].flatten(0, 1)  # (B*T, C)
            vectors = self.char_encoder(flat, (flat != PAD).sum(1)).view(B, T, -1)  # (B, T, Hc)
            parts.append(vectors * _mask(lengths, T).unsqueeze(-1).to(vectors.dtype))
        elif self.char_encoder is not None:
            chars = batch["chars"]  # (B, T, C)
            mask = _mask(lengths, T)  # (B, T)
            word_chars = chars[mask]  # (N, C): the real words only
            vectors = self.char_encoder(word_chars, (word_chars != PAD).sum(1))  # (N, Hc)
            out = vectors.new_zeros(B, T, vectors.shape[1])
            out[mask] = vectors
            parts.append(out)  # (B, T, Hc)
        if self.context_size:
            parts.append(batch["context"].to(parts[0].dtype))  # (B, T, F)
        x = self.embedding_dropout(torch.cat(parts, dim=2))  # (B, T, F)
        h, _ = self.rnn(x, lengths=lengths)  # (B, T, D*H)
        return self.output(self.output_dropout(h))  # (B, T, K)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.emissions(batch)

    @torch.no_grad()
    def decode(self, batch: dict[str, Tensor], emissions: Tensor | None = None) -> Tensor:
        """The predicted tag ids (B, T): Viterbi with a CRF, the best tag per token otherwise (0 past the end)."""
        if emissions is None:
            emissions = self.emissions(batch)
        mask = _mask(batch["lengths"], emissions.shape[1])
        if self.crf is not None:
            return self.crf.viterbi(emissions, mask)[0]
        return emissions.argmax(2).masked_fill(~mask, 0)

    # ------------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Negative log-likelihood per token (CRF: of the whole path, divided by the tokens).

        In evaluation mode the batch is also decoded, and the stats count correct tokens and, with a
        span finder, gold, predicted and correct entities.
        """
        emissions = self.emissions(batch)  # (B, T, K)
        tags = batch["tags"]
        mask = _mask(batch["lengths"], tags.shape[1])
        count = int(mask.sum())
        if self.crf is not None:
            total = self.crf.nll(emissions, tags.masked_fill(~mask, 0), mask).sum()
        else:
            total = F.cross_entropy(emissions.flatten(0, 1), tags.flatten(), ignore_index=IGNORE_INDEX,
                                    reduction="sum")
        stats = {"loss_sum": float(total.detach())}
        if not self.training:
            predicted = self.decode(batch, emissions)
            stats["correct"] = float(((predicted == tags) & mask).sum())
            if self.span_finder is not None:
                for k, v in self.count_entities(predicted, tags, batch["lengths"]).items():
                    stats[k] = float(v)
        return LossOutput(loss=total / max(count, 1), count=count, stats=stats)

    def count_entities(self, predicted: Tensor, gold: Tensor, lengths: Tensor) -> dict[str, int]:
        """Gold, predicted and exactly matching entities (same type and span) over a batch."""
        assert self.span_finder is not None
        counts = {"gold_entities": 0, "predicted_entities": 0, "correct_entities": 0}
        for p, g, n in zip(predicted.tolist(), gold.tolist(), lengths.tolist(), strict=True):
            ps, gs = set(self.span_finder(p[:n])), set(self.span_finder(g[:n]))
            counts["gold_entities"] += len(gs)
            counts["predicted_entities"] += len(ps)
            counts["correct_entities"] += len(ps & gs)
        return counts

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Loss per token and token accuracy; entity precision, recall and F1 when entities were counted."""
        figures = {"loss": stats["loss_sum"] / max(count, 1)}
        if "correct" in stats:
            figures["token_accuracy"] = stats["correct"] / max(count, 1)
        if "gold_entities" in stats:
            correct = stats["correct_entities"]
            precision = correct / stats["predicted_entities"] if stats["predicted_entities"] else 0.0
            recall = correct / stats["gold_entities"] if stats["gold_entities"] else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            figures.update({"precision": precision, "recall": recall, "f1": f1})
        return figures


def _init_embedding(embedding: nn.Embedding) -> None:
    """Uniform in +-sqrt(3 / size) (unit variance over the vector, not per entry), padding zero.

    torch's default N(0, 1) gives 100-dimensional vectors of norm 10 that drown the character
    vector next to them and take many epochs to move; this scale learns faster.
    """
    bound = (3.0 / embedding.embedding_dim) ** 0.5
    with torch.no_grad():
        embedding.weight.uniform_(-bound, bound)
        if embedding.padding_idx is not None:
            embedding.weight[embedding.padding_idx].zero_()


def _mask(lengths: Tensor, steps: int) -> Tensor:
    """(B, T) bool, True within each row's length."""
    return torch.arange(steps, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)
