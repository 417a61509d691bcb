"""Seeing inside a trained recurrent network: how far back gradients reach, and what the state does.

What is here: `gradient_flow`, the norm of the gradient of the loss at the last step with respect to
the hidden state at every earlier step (the vanishing and exploding gradients of backpropagation
through time, measured); `hidden_activations`, the state over a sequence; `clip_fraction`, read from
a run's metrics; and `inspect_lm`, which writes all of them for a language-model run. What is not:
the plots themselves (viz.py) and training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.checkpoint import METRICS_FILE
from rnnkit.config import UserError


def _h_of(state: Any) -> Tensor:
    return state[0] if isinstance(state, tuple) else state  # (L, B, H)


def gradient_flow(model: Any, tokens: Tensor) -> Tensor:
    """||dL_T / dh_t|| for t = 1..T, averaged over rows, for a language model stepping through tokens.

    The model reads tokens[:, :T] one step at a time from a zero state; L_T is the cross-entropy of
    its prediction of tokens[:, T] (the token after the last step). The gradient reaching the state
    after step t measures how much step t still matters at step T.

    Args:
        model: a language model with `step(tokens, state) -> (logits, state)` and `logits_from_state`.
        tokens: (B, T+1) token ids.
    Returns:
        (T,) mean over rows of the gradient norm for the state after step t (all layers' h together).
    """
    if tokens.shape[1] < 2:
        raise UserError("inspect: sequences need at least two tokens")
    was_training = model.training
    model.eval()
    hs: list[Tensor] = []
    state = None
    for t in range(tokens.shape[1] - 1):
        _, state = model.step(tokens[:, t], state)
        h = _h_of(state)  # (L, B, H)
        h.retain_grad()
        hs.append(h)
    # The prediction is read from the last state itself, so every state (the last one too) is on the path.
    logits = model.logits_from_state(state)  # (B, V)
    loss = F.cross_entropy(logits.float(), tokens[:, -1], reduction="sum")
    loss.backward()
    norms = torch.stack([h.grad.pow(2).sum(dim=(0, 2)).sqrt().mean() for h in hs])  # (T,)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return norms.detach()


def hidden_activations(model: Any, tokens: Tensor) -> Tensor:
    """The top layer's hidden state after each step of one sequence: (T, H)."""
    out = []
    state = None
    with torch.no_grad():
        for t in range(tokens.shape[0]):
            _, state = model.step(tokens[t : t + 1], state)
            out.append(_h_of(state)[-1, 0])
    return torch.stack(out)


def clip_fraction(run_dir: str | Path) -> float | None:
    """The fraction of optimizer steps where gradient clipping fired, from the run's last metrics line."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in reversed(lines):
        record = json.loads(line)
        if "clip_fraction" in record:
            return float(record["clip_fraction"])
    return None


def inspect_lm(run_dir: str | Path, data_path: str | Path, out: str | Path, steps: int = 100, rows: int = 16,
               seed: int = 0) -> dict[str, Any]:
    """Gradient flow, activations and clipping of a language-model run on a text file; writes plots and JSON."""
    from rnnkit import viz
    from rnnkit.data import read_text
    from rnnkit.tasks import lm

    loaded = lm.load(run_dir)
    ids = torch.tensor(loaded.tokenizer.encode(read_text(data_path)), dtype=torch.long)
    if ids.numel() < steps + 2:
        raise UserError(f"{data_path}: {ids.numel()} tokens; inspect needs at least {steps + 2} (--steps {steps})")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - steps - 1, (rows,), generator=g)
    batch = torch.stack([ids[s : s + steps + 1] for s in starts.tolist()])  # (rows, steps+1)
    norms = gradient_flow(loaded.model, batch)  # (steps,), index t-1 for the state after step t
    distance = torch.arange(steps - 1, -1, -1)  # steps back from the last state
    acts = hidden_activations(loaded.model, batch[0, :steps])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cell = loaded.config.model.cell
    viz.plot_gradient_flow({cell: (distance.tolist(), norms.tolist())}, out / "gradient_flow.png")
    labels = [loaded.tokenizer.token_text(int(t)) for t in batch[0, :steps]]
    viz.plot_activations(acts, labels, out / "activations.png", title=f"{cell}: top-layer state over a sequence")
    last = float(norms[-1])
    ratio = {d: float(norms[steps - 1 - d]) / last for d in (10, 25, 50) if d < steps and last > 0}
    figures = {
        "cell": cell,
        "steps": steps,
        "rows": rows,
        "gradient_norm_by_distance": {int(d): float(n) for d, n in zip(distance.tolist(), norms.tolist(),
                                                                       strict=True)},
        "gradient_ratio_to_last": ratio,
        "decay_per_step": _decay_rate(norms),
        "clip_fraction": clip_fraction(run_dir),
        "files": ["gradient_flow.png", "activations.png", "inspect.json"],
    }
    (out / "inspect.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


def _decay_rate(norms: Tensor) -> float | None:
    """The geometric factor per step back of the gradient norm (a log-linear fit): < 1 vanishes, > 1 explodes."""
    n = norms.double().clamp(min=1e-300)
    T = n.numel()
    if T < 3:
        return None
    x = torch.arange(T - 1, -1, -1, dtype=torch.float64)  # distance
    y = n.log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    return math.exp(slope)


def inspect_seq2seq(run_dir: str | Path, data_path: str | Path, out: str | Path, count: int = 5) -> dict[str, Any]:
    """Attention maps of an encoder-decoder run for the first `count` sources of a pairs file."""
    from rnnkit.data.pairs import read_pairs
    from rnnkit.tasks import seq2seq

    loaded = seq2seq.load(run_dir)
    if loaded.model.attention is None:
        raise UserError(f"{run_dir}: this run has no attention (--attention none); nothing to map")
    pairs = read_pairs(data_path)[:count]
    found = seq2seq.translate(loaded, [p.source for p in pairs], attention=True)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    maps = []
    for i, (pair, t) in enumerate(zip(pairs, found, strict=True)):
        name = f"attention-{i + 1}.png"
        seq2seq.plot_attention(t, out / name, title=f"{pair.source} -> {t.text}")
        maps.append({"source": pair.source, "output": t.text, "reference": pair.target, "file": name})
    figures = {"task": "seq2seq", "attention_maps": maps, "clip_fraction": clip_fraction(run_dir)}
    (out / "inspect.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return figures
