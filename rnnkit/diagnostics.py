"""Seeing inside a trained recurrent network: how far back gradients reach, and what the state does.

What is here: `gradient_flow`, the norm of the gradient of the loss at the last step with respect to
the hidden state at every earlier step, for a language model stepping through tokens (the vanishing and
exploding gradients of backpropagation through time, measured); `unrolled`, which runs any `Recurrent`
encoder step by step so that the same can be measured for the other tasks (`encoder_gradient_flow`: the
gradient of the task's loss on a sequence with respect to the encoder's state after each step);
`hidden_activations`, the state over a sequence; `clip_fraction`, read from a run's metrics; and
`inspect_run`, which writes all of them for a run of any task (and attention maps for seq2seq runs).
What is not: the plots themselves (viz.py) and training.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.checkpoint import METRICS_FILE
from rnnkit.config import UserError
from rnnkit.layers import Recurrent


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


def inspect_lm(run: Any, data_path: str | Path, out: str | Path, steps: int = 100, rows: int = 16,
               seed: int = 0) -> dict[str, Any]:
    """Gradient flow, activations and clipping of a language-model run (loaded, or its directory) on a text
    file; writes plots and JSON."""
    from rnnkit import viz
    from rnnkit.data import read_text
    from rnnkit.tasks import runner

    loaded = runner.ensure_loaded(run, "lm")
    run_dir = loaded.run_dir
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


# ------------------------------------------------------------------------- any recurrent encoder


@dataclass
class Unrolled:
    """What `unrolled` keeps of the last call of its layer.

    Attributes:
        states: per step t, the forward direction's hidden state after step t of every layer, each (B, H),
            nodes of the graph (their `.grad` is filled by a backward pass).
        output: the layer's output (B, T, D*H).
    """

    states: list[list[Tensor]] = field(default_factory=list)
    output: Tensor | None = None


@contextlib.contextmanager
def unrolled(layer: Recurrent) -> Iterator[Unrolled]:
    """While inside, `layer` runs one step at a time and keeps the state after every step.

    A fused kernel or a whole-sequence function computes the same outputs but never exposes the state of
    an inner step; here every step's state is a node through which the later steps and the outputs are
    computed: the gradient with respect to it is that of the loss with respect to what step t hands on
    (every layer's state, as when a run is cut after step t and continued from that state). For
    inspection in eval mode: the training-only regularisers (dropout between layers,
    recurrent dropout, DropConnect) are not applied (the layer's `step_hook`).
    """
    found = Unrolled()
    top = layer.num_layers - 1

    def on_step(index_layer: int, direction: int, t: int, new: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        h = new[0]  # (B, H): this step's output (the next layer's input)
        if direction != 0 or not h.requires_grad:
            return new
        # The state is what step t hands to step t+1: below the top, a node of its own, so that the next
        # layer's reading of this step's output is not counted twice (it reaches the loss through that
        # layer's own state); the top layer's state is its output as well.
        node = h if index_layer == top else h.clone()
        node.retain_grad()
        found.states[t].append(node)
        return (node, *new[1:])

    def before(module: Recurrent, args: tuple, kwargs: dict) -> None:
        found.states = [[] for _ in range((args[0] if args else kwargs["input"]).shape[1])]

    def after(module: Recurrent, args: tuple, kwargs: dict, result: tuple[Tensor, Any]) -> None:
        found.output = result[0]

    handles = [layer.register_forward_pre_hook(before, with_kwargs=True),
               layer.register_forward_hook(after, with_kwargs=True)]
    layer.step_hook = on_step
    try:
        yield found
    finally:
        del layer.step_hook
        for handle in handles:
            handle.remove()


def encoder_gradient_flow(layer: Recurrent, loss_of: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """||d loss / d h_t|| for every step t of `layer`, and the top layer's outputs.

    `loss_of()` computes a scalar through `layer` (called once, e.g. a task model's loss on one sequence).
    h_t is the forward direction's state after step t, all layers together.

    Returns:
        (T,) the gradient norm per step (summed over rows) and the output (B, T, D*H), detached.
    """
    with torch.enable_grad(), unrolled(layer) as found:
        loss = loss_of()
    if found.output is None:
        raise ValueError("loss_of() did not run the layer")
    loss.backward()
    norms = []
    for step in found.states:
        squares = [h.grad.pow(2).sum() for h in step if h.grad is not None]
        norms.append(torch.stack(squares).sum().sqrt() if squares else found.output.new_zeros(()))
    return torch.stack(norms).detach().cpu(), found.output.detach().cpu()


@dataclass
class InspectSequence:
    """One sequence to inspect: a batch of one row for the model's loss, and what each step reads."""

    batch: dict[str, Tensor]
    labels: list[str]


def inspect_encoder(task: str, loaded: Any, layer: Recurrent, sequences: list[InspectSequence],
                    loss_of: Callable[[dict[str, Tensor]], Tensor], out: str | Path, rows: int = 16,
                    spread: bool = False) -> dict[str, Any]:
    """Gradient flow and activations of a run's recurrent encoder (`Task.encoder_sequences` gives the layer,
    the sequences of a data file and the loss of one of them).

    The gradient of the task's loss on a sequence (classify: the class; tag: the last token's tag; seq2seq:
    the target given the source; forecast: the horizon after the history) with respect to the encoder's
    state after each step (the forward direction's, all layers), over the `rows` longest sequences of the
    data (`spread`: `rows` windows spread over the file instead), by distance back from the encoder's last
    step; the top layer's output over the longest sequence as a heatmap; clipping from the run's metrics.
    """
    from rnnkit import viz

    if rows < 1:
        raise UserError(f"--rows: expected an integer >= 1; got {rows}")
    if not sequences:
        raise UserError("no sequence to inspect in the data")
    run_dir = loaded.run_dir
    if spread:  # windows spread over the series
        n = min(rows, len(sequences))
        picked = [sequences[round(i * (len(sequences) - 1) / max(n - 1, 1))] for i in range(n)]
    else:  # the longest: the farthest a gradient can be followed back
        order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i].labels), i))
        picked = [sequences[i] for i in order[:rows]]
    model = loaded.model
    was_training = model.training
    model.eval()
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    acts = None
    try:
        for k, seq in enumerate(picked):
            batch = {key: v.to(loaded.device) if torch.is_tensor(v) else v for key, v in seq.batch.items()}
            norms, output = encoder_gradient_flow(layer, lambda batch=batch: loss_of(batch))
            model.zero_grad(set_to_none=True)
            T = norms.shape[0]
            for t in range(T):
                d = T - 1 - t
                sums[d] = sums.get(d, 0.0) + float(norms[t])
                counts[d] = counts.get(d, 0) + 1
            if k == 0:
                acts = output[0]  # (T, D*H)
    finally:
        model.train(was_training)
    distance = sorted(sums)
    mean = [sums[d] / counts[d] for d in distance]
    cfg = loaded.config.model
    cell = cfg.cell
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    viz.plot_gradient_flow({f"{task} encoder ({cell})": (distance, mean)}, out / "gradient_flow.png",
                           title=f"{task}: gradient of the loss at the encoder's state k steps back")
    viz.plot_activations(acts, picked[0].labels, out / "activations.png",
                         title=f"{task} encoder ({cell}): top-layer output over a sequence")
    by_step = torch.tensor(list(reversed(mean)), dtype=torch.float64)  # index t: step t, the last step last
    last = mean[0]
    figures: dict[str, Any] = {
        "task": task,
        "cell": cell,
        "bidirectional": layer.bidirectional,
        "direction": "forward",  # the state measured: a bidirectional encoder's forward half
        "rows": len(picked),
        "gradient_norm_by_distance": {int(d): float(n) for d, n in zip(distance, mean, strict=True)},
        "sequences_at_distance": {int(d): counts[d] for d in distance},
        "gradient_ratio_to_last": {d: sums[d] / counts[d] / last for d in (10, 25, 50) if d in sums and last > 0},
        "decay_per_step": _decay_rate(by_step),
        "clip_fraction": clip_fraction(run_dir),
        "files": ["gradient_flow.png", "activations.png", "inspect.json"],
    }
    return figures


def inspect_run(run_dir: str | Path, data_path: str | Path, out: str | Path, steps: int = 100,
                rows: int = 16) -> dict[str, Any]:
    """`rnnkit inspect`: the figures and plots of a run of any task (`Task.inspect`: `inspect_lm` for language
    models, `inspect_encoder` for the others, with attention maps for seq2seq runs); writes them and
    inspect.json into `out`."""
    from rnnkit.tasks import runner

    task = runner.task_of(run_dir)
    figures = task.inspect(runner.load(run_dir), data_path, Path(out), steps=steps, rows=rows)
    (Path(out) / "inspect.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n",
                                           encoding="utf-8")
    return figures
