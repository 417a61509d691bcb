"""The polyphonic music model: a recurrent network over time whose output at each frame is a distribution
over the keys of a keyboard.

What is here: `MusicModel`, an RNN over time read from the previous frame, with one of two output heads:

* `independent`: a Bernoulli per key given the time state (the classic RNN baseline of the piano-roll
  benchmarks);
* `autoregressive`: the keys of a frame predicted one after another from the lowest, each conditioned on
  the time state and on the keys already chosen, through a small second recurrence over pitch (the idea
  of RNN-NADE and of the biaxial models). Each key also sees the previous frame around its own pitch and
  the keys just below it in the frame, so that what is learnt about intervals carries across the
  keyboard. The conditionals multiply to an exact distribution over all 2^K frames.

Its loss for the trainer (the negative log-likelihood in nats per frame, summed over the keys), the most
likely frames (greedy key by key for the autoregressive head) and sampling. What is not: reading MIDI or
piano rolls (data/music.py), the task (tasks/music.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent, select_state
from rnnkit.models.base import LossOutput, SequenceDropout, check_choice

OUTPUTS = ("autoregressive", "independent")


class MusicModel(nn.Module):
    """Piano rolls (B, T, K) of 0/1 in, a distribution over the next frame at every step out.

    Args:
        n_keys: K, keys of the keyboard (88 for the piano; fewer in tests).
        hidden_size: H, size of the time recurrence's state.
        num_layers: stacked layers of the time recurrence.
        cell: any cell name `Recurrent` takes (the pitch recurrence uses the same cell).
        dropout: between the time recurrence's layers.
        output_dropout: on the time recurrence's outputs (the head's input).
        output: "autoregressive" or "independent".
        pitch_hidden: P, size of the pitch recurrence's state (autoregressive head).
        pitch_window: W, the keys either side of a key read from the previous frame, and the keys below
            it read from the frame being chosen (autoregressive head).
        input_dropout: dropout on the previous frame fed to the time recurrence.
        fused, recurrent_options: passed to the time recurrence (`Recurrent`).
    """

    def __init__(self, n_keys: int = 88, hidden_size: int = 256, num_layers: int = 1, cell: str = "lstm",
                 dropout: float = 0.0, output_dropout: float = 0.0, output: str = "autoregressive",
                 pitch_hidden: int = 64, pitch_window: int = 12, input_dropout: float = 0.0,
                 fused: bool | None = None, recurrent_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_choice("output", output, OUTPUTS)
        if n_keys < 1 or pitch_hidden < 1 or pitch_window < 0:
            raise ValueError(f"n_keys, pitch_hidden >= 1 and pitch_window >= 0; got {n_keys}, {pitch_hidden}, "
                             f"{pitch_window}")
        self.n_keys, self.output, self.pitch_window = n_keys, output, pitch_window
        self.input_dropout = SequenceDropout(input_dropout)
        self.rnn = Recurrent(cell, n_keys, hidden_size, num_layers=num_layers, dropout=dropout, fused=fused,
                             **(recurrent_options or {}))
        self.output_dropout = SequenceDropout(output_dropout)
        self.key_logits = nn.Linear(hidden_size, n_keys)  # the independent head, and the autoregressive one's base
        if output == "autoregressive":
            W, P = pitch_window, pitch_hidden
            self.condition = nn.Linear(hidden_size, P)  # the time state, once per frame
            self.key_embedding = nn.Parameter(torch.zeros(n_keys, P))  # which key
            self.previous_window = nn.Linear(2 * W + 1, P, bias=False)  # the previous frame around the key
            self.below_window = nn.Linear(max(W, 1), P, bias=False)  # the keys just below, already chosen
            self.pitch_rnn = Recurrent(cell, P, P, num_layers=1)
            self.pitch_out = nn.Linear(P, 1)
            nn.init.normal_(self.key_embedding, std=0.1)

    # ----------------------------------------------------------------------------------- time

    def time_features(self, rolls: Tensor, state: Any = None, lengths: Tensor | None = None) -> tuple[Tensor, Any]:
        """The time state before each frame: step t reads frame t-1 (zeros before the first).

        Args:
            rolls: (B, T, K) float 0/1.
        Returns:
            (B, T, H) features for predicting frames 0..T-1, and the state after reading frames 0..T-2.
        """
        previous = F.pad(rolls[:, :-1], (0, 0, 1, 0))  # (B, T, K)
        out, state = self.rnn(self.input_dropout(previous), state, lengths=lengths)  # (B, T, H)
        return self.output_dropout(out), state

    # ------------------------------------------------------------------------------ the heads

    def _pitch_inputs(self, features: Tensor, previous: Tensor) -> tuple[Tensor, Tensor]:
        """What the pitch recurrence reads at each key that does not depend on the frame being chosen.

        Args:
            features: (N, H) time features of N frames; previous: (N, K) the frames before them.
        Returns:
            (N, K, P) inputs and (N, K) base logits.
        """
        W = self.pitch_window
        around = F.pad(previous, (W, W)).unfold(1, 2 * W + 1, 1)  # (N, K, 2W+1)
        fixed = self.condition(features)[:, None, :] + self.key_embedding + self.previous_window(around)  # (N, K, P)
        return fixed, self.key_logits(features)

    def _below(self, frames: Tensor) -> Tensor:
        """(N, K, max(W, 1)): for each key, the values of the W keys just below it (zeros off the keyboard)."""
        W = max(self.pitch_window, 1)
        if not self.pitch_window:
            return torch.zeros_like(frames)[..., None]
        return F.pad(frames, (W, 0))[:, :-1].unfold(1, W, 1)

    def frame_logits(self, features: Tensor, previous: Tensor, frames: Tensor) -> Tensor:
        """Logits (N, K) of every key of the given frames, each conditioned on the keys below it (teacher forcing).

        Args:
            features: (N, H); previous: (N, K) the frames before; frames: (N, K) the frames scored.
        """
        if self.output == "independent":
            return self.key_logits(features)
        fixed, base = self._pitch_inputs(features, previous)
        inputs = fixed + self.below_window(self._below(frames))  # (N, K, P)
        out, _ = self.pitch_rnn(inputs)  # (N, K, P)
        return base + self.pitch_out(out).squeeze(-1)  # (N, K)

    def _flat(self, batch: dict[str, Tensor], state: Any = None) -> tuple[Tensor, Tensor, Tensor, Any]:
        """Features, previous frames and frames of every real (unpadded) frame of a batch: (N, H), (N, K), (N, K)."""
        rolls, lengths = batch["rolls"], batch.get("lengths")
        features, state = self.time_features(rolls, state, lengths)
        previous = F.pad(rolls[:, :-1], (0, 0, 1, 0))  # (B, T, K)
        if lengths is None:
            keep = torch.ones(rolls.shape[:2], dtype=torch.bool, device=rolls.device)
        else:
            keep = torch.arange(rolls.shape[1], device=rolls.device)[None, :] < lengths.to(rolls.device)[:, None]
        return features[keep], previous[keep], rolls[keep], state

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Negative log-likelihood in nats summed over the keys, averaged over the batch's frames.

        Args:
            batch: `rolls` (B, T, K) float 0/1 and `lengths` (B,).
        """
        features, previous, frames, state = self._flat(batch, state)
        logits = self.frame_logits(features, previous, frames)  # (N, K)
        nll = F.binary_cross_entropy_with_logits(logits, frames, reduction="sum")
        count = frames.shape[0]
        return LossOutput(loss=nll / max(count, 1), count=count, stats={"nll_sum": float(nll.detach())}, state=state)

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """nll: nats per frame summed over the keys."""
        return {"nll": stats["nll_sum"] / max(count, 1)}

    monitor = ("nll", "min")

    @torch.no_grad()
    def log_likelihood(self, rolls: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Log-probability (B,) of each whole piece (nats), summed over its frames."""
        features, state = self.time_features(rolls, None, lengths)
        B, T, K = rolls.shape
        previous = F.pad(rolls[:, :-1], (0, 0, 1, 0))
        logits = self.frame_logits(features.reshape(B * T, -1), previous.reshape(B * T, K), rolls.reshape(B * T, K))
        lp = -F.binary_cross_entropy_with_logits(logits, rolls.reshape(B * T, K), reduction="none").sum(-1)
        lp = lp.view(B, T)
        if lengths is not None:
            lp = lp * (torch.arange(T, device=rolls.device)[None, :] < lengths[:, None])
        return lp.sum(1)

    # --------------------------------------------------------------------- choosing frames

    @torch.no_grad()
    def choose(self, features: Tensor, previous: Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
        """Frames (N, K) chosen key by key from the lowest: the most likely value of each key given the keys
        below it (temperature 0: greedy), or a sample at the given temperature.

        Args:
            features: (N, H) time features; previous: (N, K) the frames before.
        """
        def pick(logits: Tensor) -> Tensor:
            if temperature <= 0:
                return (logits > 0).to(features.dtype)
            p = torch.sigmoid(logits / temperature)
            return (torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) < p).to(features.dtype)

        if self.output == "independent":
            return pick(self.key_logits(features))
        fixed, base = self._pitch_inputs(features, previous)
        N, K = previous.shape
        W = max(self.pitch_window, 1)
        chosen = features.new_zeros(N, K + W)  # W zeros below the keyboard, then the keys as chosen
        state = None
        below = self.below_window.weight  # (P, W)
        for k in range(K):
            x = fixed[:, k] + (chosen[:, k:k + W] @ below.T if self.pitch_window else 0.0)  # (N, P)
            out, state = self.pitch_rnn.step(x, state)
            chosen[:, W + k] = pick(base[:, k] + self.pitch_out(out).squeeze(-1))
        return chosen[:, W:]

    @torch.no_grad()
    def beam_choose(self, features: Tensor, previous: Tensor, beam: int) -> Tensor:
        """The most likely frames (N, K) found by a beam search over the keys, from the lowest: after each key the
        `beam` likeliest partial frames are kept. With a beam of 2^(K-1) or more the search is exact; with 1 it is
        the greedy choice. The independent head's most likely frame is exact at any beam (keys above one half).

        Args:
            features: (N, H) time features; previous: (N, K) the frames before.
        """
        if self.output == "independent" or beam <= 1:
            return self.choose(features, previous)
        fixed, base = self._pitch_inputs(features, previous)  # (N, K, P), (N, K)
        N, K = previous.shape
        W = max(self.pitch_window, 1)
        below = self.below_window.weight  # (P, W)
        chosen = features.new_zeros(N, 1, K + W)  # (N, b, W + K): the partial frames of each row's beam
        score = features.new_zeros(N, 1)  # (N, b) their log-probabilities
        state = None
        for k in range(K):
            b = chosen.shape[1]
            x = fixed[:, k, None, :] + (chosen[:, :, k:k + W] @ below.T if self.pitch_window else 0.0)  # (N, b, P)
            out, state = self.pitch_rnn.step(x.reshape(N * b, -1), state)
            logits = base[:, k, None] + self.pitch_out(out).view(N, b)  # (N, b)
            candidates = torch.cat([score + F.logsigmoid(-logits), score + F.logsigmoid(logits)], dim=1)  # (N, 2b)
            score, index = candidates.topk(min(beam, 2 * b), dim=1)  # (N, b')
            parent = index % b
            chosen = chosen.gather(1, parent[..., None].expand(-1, -1, K + W)).clone()
            chosen[:, :, W + k] = (index >= b).to(chosen.dtype)
            rows = (torch.arange(N, device=parent.device)[:, None] * b + parent).flatten()
            state = select_state(state, rows)
        return chosen[:, 0, W:]

    @torch.no_grad()
    def most_likely(self, rolls: Tensor, lengths: Tensor | None = None, beam: int = 1) -> Tensor:
        """The model's most likely frame at every step given the true frames before it: (N, K) over the real frames
        of the batch, in order. The autoregressive head searches key by key: greedily (beam 1) or with a beam."""
        features, previous, _, _ = self._flat({"rolls": rolls, **({"lengths": lengths} if lengths is not None
                                                                   else {})})
        return self.beam_choose(features, previous, beam)

    @torch.no_grad()
    def generate(self, steps: int, prompt: Tensor | None = None, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> Tensor:
        """Compose `steps` frames after a prompt (T0, K) (or from silence): (steps, K) of 0/1."""
        K = self.n_keys
        device = self.key_logits.weight.device
        frame = torch.zeros(1, K, device=device)
        state = None
        if prompt is not None and len(prompt):
            prompt = prompt.to(device).float()[None]  # (1, T0, K)
            _, state = self.rnn(F.pad(prompt[:, :-1], (0, 0, 1, 0)), None)
            frame = prompt[:, -1]
        out = []
        for _ in range(steps):
            h, state = self.rnn.step(frame, state)  # (1, H)
            frame = self.choose(h, frame, temperature, generator)
            out.append(frame[0])
        return torch.stack(out) if out else torch.zeros(0, K, device=device)
