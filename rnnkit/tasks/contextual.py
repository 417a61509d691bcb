"""Contextual features from frozen language models: a vector per token from the states of a forward and a
backward language model that read the sentence as text (Akbik et al. 2018's contextual string embeddings).

What is here: `LMFeatures` (the language-model runs, how a sentence becomes their input, the vectors
gathered at each token's boundaries), `copy_lm_run` (the files of a language-model run that another run
keeps, so that run stands alone) and the export graph of a language model's states. What is not: the
tagger that reads the vectors (models/tagger.py, tasks/tag.py), training language models (tasks/lm.py).

For each token, the forward model's state after the token's last piece (it has read the sentence up to and
including the token) and the backward model's state after the token's first piece in its reversed reading
(it has read the sentence from its end back to the token's start) are concatenated. The sentence is the tokens
joined by single spaces, after a line break that starts it as a new line would; each token and each space is
encoded on its own, so a token's pieces are known exactly whatever the tokenizer (characters, bytes, BPE,
words).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.config import UserError
from rnnkit.data import PAD_ID, pad_sequences
from rnnkit.tasks.base import GraphModule

KEPT_FILES = ("config.json", "model.safetensors", "tokenizer.json")  # what a language model needs to load
LM_DIR = "lm_features"  # inside a run that uses them: forward/ and backward/


class LMFeatures:
    """Frozen language models that give each token of a sentence a vector.

    Args:
        forward: a loaded `lm` run that reads left to right.
        backward: a loaded `lm` run trained with --reverse, or None.
        batch_size: sentences read at once.
    """

    def __init__(self, forward: Any, backward: Any = None, batch_size: int = 32) -> None:
        self.models = [(forward, False)] + ([(backward, True)] if backward is not None else [])
        for run, _ in self.models:
            run.model.eval()
            for p in run.model.parameters():
                p.requires_grad_(False)
        self.batch_size = batch_size
        self.size = sum(run.model.rnn.hidden_size for run, _ in self.models)

    @classmethod
    def load(cls, runs: str, check: bool = True) -> LMFeatures:
        """From 'FWD_RUN[,BWD_RUN]' (the --lm-features option): the first must read forwards, the second
        backwards."""
        from rnnkit.tasks import runner

        paths = [p.strip() for p in str(runs).split(",") if p.strip()]
        if not 1 <= len(paths) <= 2:
            raise UserError(f"--lm-features {runs}: expected one or two language-model runs, FORWARD[,BACKWARD]")
        loaded = [runner.load(p, task="lm") for p in paths]
        for i, (path, run) in enumerate(zip(paths, loaded, strict=True)):
            reverse = bool(run.config.options is not None and run.config.options.reverse)
            if check and reverse != (i == 1):
                want = "a backward model (trained with 'rnnkit train lm --reverse')" if i else "a forward model"
                raise UserError(f"--lm-features: {path} is {'backward' if reverse else 'forward'}; the "
                                f"{'second' if i else 'first'} run must be {want}")
        return cls(*loaded)

    def sources(self) -> list[Path]:
        return [run.run_dir for run, _ in self.models]

    @torch.no_grad()
    def __call__(self, sentences: list[list[str]]) -> list[Tensor]:
        """A (n_tokens, size) float32 tensor per sentence, in order."""
        out: list[list[Tensor]] = [[] for _ in sentences]
        order = sorted(range(len(sentences)), key=lambda i: sum(len(t) + 1 for t in sentences[i]))
        for run, reverse in self.models:
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                for i, vectors in zip(index, self._states(run, [sentences[i] for i in index], reverse),
                                      strict=True):
                    out[i].append(vectors)
        return [torch.cat(parts, dim=1) if parts[0].numel() else parts[0].new_zeros(0, self.size)
                for parts in out]

    def _states(self, run: Any, sentences: list[list[str]], reverse: bool) -> list[Tensor]:
        """One direction: the model's top-layer outputs at each token's boundary."""
        tok = run.tokenizer
        newline, space = tok.encode("\n"), tok.encode(" ")
        rows, positions = [], []
        for tokens in sentences:
            ids, ends, starts = list(newline), [], []
            for k, token in enumerate(tokens):
                if k:
                    ids += space
                piece = tok.encode(token) or [space[0] if space else PAD_ID]
                starts.append(len(ids))
                ids += piece
                ends.append(len(ids) - 1)
            if reverse:  # read from the end: the token's first piece is read last, at len - 1 - start
                ids = ids[::-1]
                at = [len(ids) - 1 - s for s in starts]
            else:
                at = ends
            rows.append(torch.tensor(ids, dtype=torch.long))
            positions.append(at)
        device = next(run.model.parameters()).device
        padded, lengths = pad_sequences(rows, PAD_ID)
        h = lm_states(run.model, padded.to(device), lengths.to(device)).float().cpu()  # (B, S, H)
        return [h[b, at] for b, at in enumerate(positions)]


def lm_states(model: nn.Module, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
    """A language model's top recurrent layer's outputs (B, S, H) over token ids (B, S)."""
    out, _ = model.rnn(model.embedding(tokens), lengths=lengths)
    return out


def copy_lm_run(source: str | Path, dest: Path) -> None:
    """Keep the files a language-model run needs to load (not its checkpoints or logs) under `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in KEPT_FILES:
        path = Path(source) / name
        if path.exists():
            shutil.copyfile(path, dest / name)


def kept_runs(run_dir: Path) -> str:
    """The --lm-features value that loads the language models a run keeps."""
    folder = run_dir / LM_DIR
    return ",".join(str(folder / d) for d in ("forward", "backward") if (folder / d).exists())


class StatesGraph(GraphModule):
    """Export: a language model's token ids (B, S) and lengths (B,) -> top-layer outputs (B, S, H)."""

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        tokens, lengths = inputs
        return (lm_states(self.model, tokens, lengths),)
