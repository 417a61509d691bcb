"""The encoder-decoder: a recurrent encoder, an attentional recurrent decoder with input feeding.

What is here: `Seq2Seq` (encoder of any cell, optionally bidirectional; a bridge from the encoder's
final state to the decoder's first; a decoder of the same cell that attends over the encoder outputs
with additive, dot or general attention, or reads one fixed context vector when attention is "none"),
its loss with teacher forcing and optional scheduled sampling, its metrics, and the `start` / `step` /
`reorder_state` interface decoding.py drives. What is not: tokenizers and files (data/), search
(decoding.py), BLEU and other text metrics (tasks/seq2seq.py).

One decoder step (Luong et al. 2015, with input feeding)::

    h_t      = RNN([embed(y_{t-1}); a_{t-1}], h_{t-1})
    c_t, w_t = attention(h_t, encoder outputs)          # w_t (B, S): where the step looks
    a_t      = tanh(W_c [c_t; h_t])                      # the attentional vector, fed to the next step
    logits_t = W_o a_t
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.attention import make_attention
from rnnkit.layers import Recurrent, select_state
from rnnkit.models.base import LossOutput, SequenceDropout

IGNORE_INDEX = -100  # target value of padding positions: not predicted, not counted


class Seq2SeqState(NamedTuple):
    """Decoder state for a batch of B rows (every field has B first, except the recurrent state)."""

    rnn: Any  # the decoder's recurrent state in torch.nn's layout: (L, B, H) or a tuple of them
    feed: Tensor  # (B, H): the previous attentional vector (input feeding)
    memory: Tensor  # (B, S, C): encoder outputs attended over (S = 1, the fixed context, without attention)
    prepared: Tensor | None  # (B, S, A): the attention's key projection of memory, computed once
    mask: Tensor  # (B, S) bool: True at real source positions


class Seq2Seq(nn.Module):
    """Encoder-decoder with attention over a source vocabulary of Vs and a target vocabulary of Vt tokens.

    Args:
        source_vocab_size: Vs.
        target_vocab_size: Vt.
        embedding_size: E, for both embeddings.
        hidden_size: H, of encoder and decoder (each direction of a bidirectional encoder has H).
        num_layers: L, of encoder and decoder alike.
        cell: any cell name `Recurrent` takes.
        bidirectional: the encoder reads both ways (D = 2).
        attention: "additive", "dot", "general" or "none" (one fixed context vector: the encoder's
            final state, as in the plain encoder-decoder).
        dropout: between the encoder's recurrent layers (the decoder runs step by step, without it).
        embedding_dropout: on both embeddings.
        output_dropout: on the attentional vector before the output layer.
        scheduled_sampling: in training, the probability that a step is fed the model's own previous
            prediction instead of the true token.
        bos_id: the token that starts every target.
        fused: passed to the encoder's `Recurrent`.
        adaptive_softmax: cutoffs of an adaptive softmax output layer over a target vocabulary sorted by
            frequency (e.g. (2000, 6000)): the output layer, most of the cost of a step, becomes several
            times cheaper; None for a plain linear output layer.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        embedding_size: int = 128,
        hidden_size: int = 256,
        num_layers: int = 1,
        cell: str = "lstm",
        bidirectional: bool = True,
        attention: str = "additive",
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        scheduled_sampling: float = 0.0,
        bos_id: int = 2,
        fused: bool | None = None,
        adaptive_softmax: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= scheduled_sampling <= 1.0:
            raise ValueError(f"scheduled_sampling: expected a probability in [0, 1]; got {scheduled_sampling}")
        self.source_vocab_size, self.target_vocab_size = source_vocab_size, target_vocab_size
        self.hidden_size, self.num_layers = hidden_size, num_layers
        self.attention_kind = attention
        self.scheduled_sampling = scheduled_sampling
        self.bos_id = bos_id
        D = 2 if bidirectional else 1
        self.num_directions = D

        self.source_embedding = nn.Embedding(source_vocab_size, embedding_size)
        self.target_embedding = nn.Embedding(target_vocab_size, embedding_size)
        self.embedding_dropout = SequenceDropout(embedding_dropout)
        self.encoder = Recurrent(cell, embedding_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                                 dropout=dropout, fused=fused)
        memory_size = D * hidden_size
        # Dot attention compares the decoder state with the memory directly, so sizes must agree.
        self.memory_projection: nn.Module = nn.Identity()
        if attention == "dot" and memory_size != hidden_size:
            self.memory_projection = nn.Linear(memory_size, hidden_size, bias=False)
            memory_size = hidden_size
        self.attention = None if attention == "none" else make_attention(attention, hidden_size, memory_size)
        # The bridge maps each part of the encoder's final state (h, and c for LSTM) to the decoder's.
        self.bridge = nn.ModuleList(
            nn.Linear(D * hidden_size, hidden_size) for _ in range(self.encoder.num_states)
        ) if D > 1 else None
        self.decoder = Recurrent(cell, embedding_size + hidden_size, hidden_size, num_layers=num_layers, fused=False)
        self.combine = nn.Linear(memory_size + hidden_size, hidden_size, bias=False)
        self.output_dropout = SequenceDropout(output_dropout)
        self.adaptive = adaptive_softmax is not None
        if self.adaptive:
            cutoffs = list(adaptive_softmax)
            if not cutoffs or cutoffs != sorted(set(cutoffs)) or cutoffs[0] < 1 or cutoffs[-1] >= target_vocab_size:
                raise ValueError(f"adaptive_softmax: expected increasing cutoffs in 1..{target_vocab_size - 1}; "
                                 f"got {cutoffs}")
            self.output: nn.Module = nn.AdaptiveLogSoftmaxWithLoss(hidden_size, target_vocab_size, cutoffs,
                                                                   div_value=4.0)
        else:
            self.output = nn.Linear(hidden_size, target_vocab_size)
            nn.init.zeros_(self.output.bias)
        for emb in (self.source_embedding, self.target_embedding):
            nn.init.uniform_(emb.weight, -0.1, 0.1)

    # ------------------------------------------------------------------------------ encoding

    def _bridge(self, final: Any) -> Any:
        """The decoder's initial state from the encoder's final state (L*D, B, H) per part."""
        parts = final if isinstance(final, tuple) else (final,)
        if self.bridge is None:
            return final
        L, D, H = self.num_layers, self.num_directions, self.hidden_size
        out = []
        for k, (part, linear) in enumerate(zip(parts, self.bridge, strict=True)):
            B = part.shape[1]
            both = part.view(L, D, B, H).permute(0, 2, 1, 3).reshape(L, B, D * H)  # (L, B, D*H)
            mapped = linear(both)  # (L, B, H)
            out.append(torch.tanh(mapped) if k == 0 else mapped)  # h lives in (-1, 1); an LSTM's c need not
        return out[0] if len(out) == 1 else tuple(out)

    def encode(self, source: Tensor, source_lengths: Tensor) -> Seq2SeqState:
        """Read the source and return the decoder's state before its first step.

        Args:
            source: (B, S) int64 token ids, right-padded.
            source_lengths: (B,) true lengths, each >= 1.
        """
        x = self.embedding_dropout(self.source_embedding(source))  # (B, S, E)
        outputs, final = self.encoder(x, None, lengths=source_lengths)  # (B, S, D*H)
        B, S = source.shape
        if self.attention is None:
            h = final[0] if isinstance(final, tuple) else final  # (L*D, B, H)
            top = h.view(self.num_layers, self.num_directions, B, self.hidden_size)[-1]  # (D, B, H)
            memory = top.permute(1, 0, 2).reshape(B, 1, -1)  # (B, 1, D*H): the fixed context vector
            mask = torch.ones(B, 1, dtype=torch.bool, device=source.device)
            prepared = None
        else:
            memory = self.memory_projection(outputs)  # (B, S, C)
            positions = torch.arange(S, device=source.device).unsqueeze(0)  # (1, S)
            mask = positions < source_lengths.to(source.device).unsqueeze(1)  # (B, S)
            prepared = self.attention.prepare(memory)  # (B, S, A)
        feed = memory.new_zeros(B, self.hidden_size)  # (B, H)
        return Seq2SeqState(self._bridge(final), feed, memory, prepared, mask)

    # ------------------------------------------------------------------------------ decoding

    def logits(self, vectors: Tensor) -> Tensor:
        """Logits (..., Vt) from attentional vectors (..., H); log-probabilities for the adaptive softmax."""
        if self.adaptive:
            return self.output.log_prob(vectors.reshape(-1, vectors.shape[-1])).view(*vectors.shape[:-1], -1)
        return self.output(vectors)

    def _decode_step(self, embedded: Tensor, state: Seq2SeqState) -> tuple[Tensor, Tensor | None, Seq2SeqState]:
        """One decoder step from embedded tokens (B, E): attentional vector (B, H), weights (B, S), state."""
        h, rnn = self.decoder.step(torch.cat([embedded, state.feed], dim=1), state.rnn)  # (B, H)
        if self.attention is None:
            context, weights = state.memory[:, 0], None  # (B, C)
        else:
            context, weights = self.attention(h, state.memory, state.prepared, state.mask)  # (B, C), (B, S)
        vector = torch.tanh(self.combine(torch.cat([context, h], dim=1)))  # (B, H)
        return vector, weights, state._replace(rnn=rnn, feed=vector)

    def forward(
        self, source: Tensor, source_lengths: Tensor, target_inputs: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher-forced logits for every target position.

        Args:
            source: (B, S) int64; source_lengths: (B,).
            target_inputs: (B, T) int64: `<bos>` then the target tokens but the last.
        Returns:
            logits (B, T, Vt) and attention weights (B, T, S) (None without attention).
        """
        state = self.encode(source, source_lengths)
        embedded = self.embedding_dropout(self.target_embedding(target_inputs))  # (B, T, E)
        sampling = self.training and self.scheduled_sampling > 0
        vectors, weights, logits = [], [], []
        for t in range(target_inputs.shape[1]):
            x = embedded[:, t]  # (B, E)
            if sampling and t > 0:
                own = logits[-1].detach().argmax(dim=-1)  # (B,)
                use_own = torch.rand(own.shape, device=own.device) < self.scheduled_sampling  # (B,)
                x = torch.where(use_own.unsqueeze(1), self.embedding_dropout(self.target_embedding(own)), x)
            vector, w, state = self._decode_step(x, state)
            vectors.append(vector)
            weights.append(w)
            if sampling:
                logits.append(self.logits(self.output_dropout(vector)))
        if sampling:
            out = torch.stack(logits, dim=1)  # (B, T, Vt)
        else:
            out = self.logits(self.output_dropout(torch.stack(vectors, dim=1)))  # (B, T, Vt)
        attn = None if self.attention is None else torch.stack(weights, dim=1)  # (B, T, S)
        return out, attn

    def _vectors(self, source: Tensor, source_lengths: Tensor, target_inputs: Tensor) -> Tensor:
        """Teacher-forced attentional vectors (B, T, H) after output dropout, for the adaptive softmax loss."""
        state = self.encode(source, source_lengths)
        embedded = self.embedding_dropout(self.target_embedding(target_inputs))  # (B, T, E)
        vectors = []
        for t in range(target_inputs.shape[1]):
            vector, _, state = self._decode_step(embedded[:, t], state)
            vectors.append(vector)
        return self.output_dropout(torch.stack(vectors, dim=1))  # (B, T, H)

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Cross-entropy per target token (`<eos>` included), teacher forced.

        Args:
            batch: `source` (B, S), `source_lengths` (B,), `target_inputs` (B, T) and `targets` (B, T)
                with IGNORE_INDEX at padding.
            state: unused (every pair starts afresh); present for the trainer's interface.
        """
        targets = batch["targets"].flatten()  # (B*T,)
        keep = targets != IGNORE_INDEX
        count = int(keep.sum())
        if self.adaptive and not (self.training and self.scheduled_sampling > 0):
            # Only the clusters of the true tokens are computed: the point of the adaptive softmax.
            vectors = self._vectors(batch["source"], batch["source_lengths"], batch["target_inputs"])
            kept = vectors.flatten(0, 1)[keep]  # (N, H)
            loss_sum = self.output(kept, targets[keep]).loss * count
            with torch.no_grad():
                correct = 0 if self.training else int((self.output.predict(kept) == targets[keep]).sum())
        else:
            logits, _ = self(batch["source"], batch["source_lengths"], batch["target_inputs"])
            flat = logits.flatten(0, 1)  # (B*T, Vt)
            loss_sum = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, reduction="sum")
            correct = int((flat.detach().argmax(dim=-1)[keep] == targets[keep]).sum())
        return LossOutput(loss=loss_sum / max(count, 1), count=count,
                          stats={"loss_sum": float(loss_sum.detach()), "correct": float(correct)})

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Loss (nats per target token), perplexity and teacher-forced token accuracy."""
        loss = stats["loss_sum"] / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
                "token_accuracy": stats.get("correct", 0.0) / max(count, 1)}

    monitor = ("loss", "min")  # the validation figure that picks the best weights

    # ------------------------------------------------------------------ the decoding interface

    @torch.no_grad()
    def start(self, source: Tensor, source_lengths: Tensor) -> tuple[Tensor, Seq2SeqState]:
        """Encode the source and take the `<bos>` step: logits for the first target token (B, Vt) and state."""
        state = self.encode(source, source_lengths)
        bos = torch.full((source.shape[0],), self.bos_id, dtype=torch.long, device=source.device)  # (B,)
        return self.step(bos, state)

    def step(self, tokens: Tensor, state: Seq2SeqState) -> tuple[Tensor, Seq2SeqState]:
        """One target token per row (B,) in, logits for the next one (B, Vt) and the new state out."""
        vector, _, state = self._decode_step(self.target_embedding(tokens), state)
        return self.logits(vector), state

    @staticmethod
    def reorder_state(state: Seq2SeqState, index: Tensor) -> Seq2SeqState:
        """Keep or repeat rows of the state in the order of `index` (B',)."""
        return Seq2SeqState(
            rnn=select_state(state.rnn, index),
            feed=state.feed.index_select(0, index),
            memory=state.memory.index_select(0, index),
            prepared=None if state.prepared is None else state.prepared.index_select(0, index),
            mask=state.mask.index_select(0, index),
        )
