"""Speech to text with CTC: feature frames in, per-frame distributions over output units and a blank out.

What is here: `Transcriber` (optional normalisation of each recording's frames, SpecAugment-style masks
in training, frame stacking to shorten the sequence, a `Recurrent` stack, a linear layer to the units
plus the blank at id 0), its CTC loss through `torch.nn.CTCLoss` with the greedy unit error rate at
validation, and `stream`, which carries everything between pieces of a recording so that a unidirectional
model transcribes while audio arrives. What is not: audio features (data/audio.py), units and their text
(the task), decoding (decoding.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent
from rnnkit.metrics import edit_distance
from rnnkit.models.base import LossOutput, SequenceDropout, check_choice

NORMALISATIONS = ("none", "utterance", "running")
RUNNING_PRIOR = 100.0  # frames of zero mean the running normalisation starts from


@dataclass
class StreamState:
    """What `Transcriber.stream` carries from one piece of a recording to the next."""

    pending: Tensor  # (1, P, F) frames not yet stacked (P < stack)
    total: Tensor  # (1, F) sum of the frames so far (running normalisation)
    count: int  # frames so far
    recurrent: Any = None  # the Recurrent stack's state


class Transcriber(nn.Module):
    """A CTC acoustic model.

    Args:
        input_size: F, features per frame.
        num_units: V, output units including the blank (id 0).
        hidden_size, num_layers, cell, bidirectional, dropout: the `Recurrent` stack.
        stack: k consecutive frames are concatenated into one step (T becomes ceil(T / k)).
        normalise: `none`; `utterance`: subtract each recording's mean frame; `running`: subtract the
            mean of the frames so far (causal, so it streams), starting from a prior of zero.
        input_dropout: dropout on the stacked frames.
        output_dropout: on the recurrent outputs.
        freq_masks, freq_mask_width, time_masks, time_mask_width: SpecAugment (Park et al. 2019) in
            training: that many bands of up to that many mel channels, and spans of up to that many
            frames, are set to zero in each recording.
    Shape:
        forward(features (B, T, F), lengths (B,)) -> log_probs (B, T', V), lengths (B,)
    """

    def __init__(self, input_size: int, num_units: int, hidden_size: int = 256, num_layers: int = 3,
                 cell: str = "lstm", bidirectional: bool = True, dropout: float = 0.0, stack: int = 3,
                 normalise: str = "none", input_dropout: float = 0.0, output_dropout: float = 0.0,
                 freq_masks: int = 0, freq_mask_width: int = 8, time_masks: int = 0, time_mask_width: int = 10,
                 fused: bool | None = None, recurrent_options: dict[str, Any] | None = None) -> None:
        super().__init__()
        check_choice("normalise", normalise, NORMALISATIONS)
        if num_units < 2:
            raise ValueError(f"num_units: expected at least 2 (a unit and the blank); got {num_units}")
        if stack < 1:
            raise ValueError(f"stack: expected an integer >= 1; got {stack}")
        self.input_size, self.num_units, self.stack, self.normalise = input_size, num_units, stack, normalise
        self.bidirectional = bidirectional
        self.freq_masks, self.freq_mask_width = freq_masks, freq_mask_width
        self.time_masks, self.time_mask_width = time_masks, time_mask_width
        self.input_dropout = SequenceDropout(input_dropout)
        self.rnn = Recurrent(cell, input_size * stack, hidden_size, num_layers=num_layers,
                             bidirectional=bidirectional, dropout=dropout, fused=fused, **(recurrent_options or {}))
        self.output_dropout = nn.Dropout(output_dropout)
        self.output = nn.Linear(hidden_size * (2 if bidirectional else 1), num_units)
        self.ctc = nn.CTCLoss(blank=0, reduction="none", zero_infinity=True)

    # ------------------------------------------------------------------------------- the network

    def _normalised(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.normalise == "none":
            return x
        B, T, _ = x.shape
        mask = (torch.arange(T, device=x.device).unsqueeze(0) < lengths.to(x.device).unsqueeze(1)).unsqueeze(-1)
        x = x * mask  # (B, T, F), zero past each end
        if self.normalise == "utterance":
            mean = x.sum(dim=1, keepdim=True) / lengths.to(x.device).view(B, 1, 1).to(x.dtype)  # (B, 1, F)
            return (x - mean) * mask
        counts = torch.arange(1, T + 1, device=x.device, dtype=x.dtype).view(1, T, 1) + RUNNING_PRIOR
        return (x - x.cumsum(dim=1) / counts) * mask  # (B, T, F)

    def _augmented(self, x: Tensor, lengths: Tensor) -> Tensor:
        if not self.training or (self.freq_masks == 0 and self.time_masks == 0):
            return x
        B, T, F_ = x.shape
        keep = torch.ones_like(x)
        for b in range(B):
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, self.freq_mask_width + 1, ()))
                start = int(torch.randint(0, max(F_ - width, 0) + 1, ()))
                keep[b, :, start:start + width] = 0
            n = int(lengths[b])
            for _ in range(self.time_masks):
                width = int(torch.randint(0, min(self.time_mask_width, max(n // 5, 1)) + 1, ()))
                start = int(torch.randint(0, max(n - width, 0) + 1, ()))
                keep[b, start:start + width] = 0
        return x * keep

    def stacked_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) steps after frame stacking: ceil(T / k)."""
        return torch.div(lengths + self.stack - 1, self.stack, rounding_mode="floor")

    def _stacked(self, x: Tensor) -> Tensor:
        if self.stack == 1:
            return x
        B, _, F_ = x.shape
        # Zero frames after the end fill the last step; padding by k - 1 and taking whole windows keeps one
        # exported graph for every T.
        x = F.pad(x, (0, 0, 0, self.stack - 1))  # (B, T + k - 1, F)
        steps = torch.arange(0, x.shape[1] - self.stack + 1, self.stack, device=x.device)  # (T',) first frames
        index = steps.unsqueeze(1) + torch.arange(self.stack, device=x.device)  # (T', k)
        return x[:, index].reshape(B, steps.shape[0], F_ * self.stack)  # (B, T', k*F)

    def forward(self, features: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Per-step log-probabilities (B, T', V) and the steps of each row (B,)."""
        x = self._augmented(self._normalised(features, lengths), lengths)  # (B, T, F)
        x = self.input_dropout(self._stacked(x))  # (B, T', k*F)
        steps = self.stacked_lengths(lengths)
        outputs, _ = self.rnn(x, lengths=steps)  # (B, T', D*H)
        return self.output(self.output_dropout(outputs)).log_softmax(dim=-1), steps

    # --------------------------------------------------------------------------------- training

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Mean CTC loss per recording (nats); at validation also the greedy unit errors.

        Args:
            batch: `inputs` (B, T, F), `lengths` (B,), `targets` (B, U) unit ids padded with 0,
                `target_lengths` (B,).
        """
        log_probs, steps = self(batch["inputs"], batch["lengths"])  # (B, T', V)
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        losses = self.ctc(log_probs.transpose(0, 1).float(), targets, steps, target_lengths)  # (B,)
        B = targets.shape[0]
        stats = {"loss_sum": float(losses.detach().sum()), "units": float(target_lengths.sum())}
        if not self.training:
            from rnnkit.decoding import ctc_greedy

            found = ctc_greedy(log_probs.detach(), steps)
            gold = [row[:n] for row, n in zip(targets.tolist(), target_lengths.tolist(), strict=True)]
            stats["errors"] = float(sum(edit_distance(h, g) for h, g in zip(found, gold, strict=True)))
        return LossOutput(loss=losses.sum() / B, count=B, stats=stats)

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Mean CTC loss per recording; at validation the greedy unit error rate (`error_rate`)."""
        figures = {"loss": stats["loss_sum"] / max(count, 1)}
        if "errors" in stats:
            figures["error_rate"] = stats["errors"] / max(stats["units"], 1.0)
        return figures

    monitor = ("error_rate", "min")  # the validation figure that picks the best weights

    # -------------------------------------------------------------------------------- streaming

    def start_stream(self) -> StreamState:
        """The state before the first frame of a recording."""
        device = self.output.weight.device
        return StreamState(torch.zeros(1, 0, self.input_size, device=device),
                           torch.zeros(1, self.input_size, device=device), 0)

    @torch.no_grad()
    def stream(self, frames: Tensor, state: StreamState, final: bool = False) -> tuple[Tensor, StreamState]:
        """Read the next frames of one recording; equal, step for step, to `forward` over the whole of it.

        Args:
            frames: (1, T, F) the frames that arrived (T may be 0).
            state: from `start_stream` or the previous call.
            final: the recording has ended: the frames left over from stacking are read, padded with zeros.
        Returns:
            log_probs (1, T', V) of the steps completed, and the state to pass next.
        """
        if self.bidirectional:
            raise ValueError("a bidirectional model reads whole recordings; streaming needs a unidirectional one")
        if self.normalise == "utterance":
            raise ValueError("normalise='utterance' needs the whole recording; streaming needs 'running' or 'none'")
        T = frames.shape[1]
        total, count = state.total, state.count
        if self.normalise == "running" and T:
            sums = total.unsqueeze(1) + frames.cumsum(dim=1)  # (1, T, F)
            counts = torch.arange(count + 1, count + T + 1, device=frames.device, dtype=frames.dtype)
            normalised = frames - sums / (counts + RUNNING_PRIOR).view(1, T, 1)
            total = sums[:, -1]
        else:
            normalised = frames
        x = torch.cat([state.pending, normalised], dim=1)  # (1, P + T, F)
        usable = x.shape[1] - x.shape[1] % self.stack
        if final and usable < x.shape[1]:
            x = self._stacked(x)
            usable, rest = x.shape[1], x[:, :0]
        else:
            rest = x[:, usable:]
            x = x[:, :usable].reshape(1, usable // self.stack, self.input_size * self.stack)  # (1, T', k*F)
            usable = x.shape[1]
        recurrent = state.recurrent
        if usable:
            outputs, recurrent = self.rnn(x, recurrent)  # (1, T', H)
            log_probs = self.output(outputs).log_softmax(dim=-1)
        else:
            log_probs = x.new_zeros(1, 0, self.num_units)
        rest = rest.reshape(1, -1, self.input_size)
        return log_probs, StreamState(rest, total, count + T, recurrent)
