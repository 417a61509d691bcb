"""Run directories: model weights, resumable training state, and loading with checks.

What is here: writing and reading `config.json`, `model.safetensors` and the training checkpoint
(atomically, through rnnkit.io), and the version and shape checks done when a run is loaded. What is not:
the file helpers themselves (rnnkit.io), building models or tokenizers (tasks/) and the training loop.

A run directory holds:
    config.json          the RunConfig, the task's own settings, and the versions that made it
    model.safetensors    the weights to use (the best on validation)
    tokenizer.json ...   the vocabularies (written by the task)
    metrics.jsonl        one line per evaluation
    curves.png           training and validation curves
    checkpoint.pt        what resuming needs: weights, optimizer, scheduler, step, random state
"""

from __future__ import annotations

import io
import os
import platform
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from rnnkit.config import UserError
from rnnkit.io import atomic_write, read_json

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"


def versions() -> dict[str, str]:
    """Versions of what made a run (recorded in config.json, checked when loading)."""
    from rnnkit import __version__

    return {"rnnkit": __version__, "torch": torch.__version__, "python": platform.python_version()}


def save_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Save a model's state_dict as safetensors, atomically (shared tensors stored once as copies)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(path, save(tensors))


def load_weights(path: str | Path, model: torch.nn.Module) -> None:
    """Load safetensors weights into `model`, saying which names or shapes do not match."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: not found (is this a finished rnnkit run directory?)")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise UserError(f"{path}: cannot read the weights ({e})") from None
    check_state_dict(model, tensors, str(path))
    model.load_state_dict(tensors)


def check_state_dict(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Raise UserError listing missing, unexpected and mis-shaped tensors."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = []
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected {', '.join(extra)}")
    for k in sorted(set(expected) & set(found)):
        if expected[k] != found[k]:
            problems.append(f"{k} has shape {found[k]}, the model expects {expected[k]}")
    if problems:
        raise UserError(f"{source}: the weights do not fit the model: " + "; ".join(problems))


def save_checkpoint(path: str | Path, payload: dict[str, Any], keep_previous: bool = True) -> None:
    """Write the resumable training state atomically; the previous one is kept as `.prev`.

    `keep_previous=False` overwrites `path` without moving it to `.prev`: for a `path` known to be
    damaged, so that the good `.prev` it was resumed from stays.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(payload, buf)
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    atomic_write(path, buf.getvalue())


CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "train_state", "rng")


def read_checkpoint(path: str | Path, warn: bool = True) -> tuple[dict[str, Any], Path]:
    """The training state and the file it came from: `path`, or `path.prev` when `path` is damaged
    (truncated, corrupted, or not a checkpoint), with a warning naming both.

    Raises:
        UserError: neither file is there, or both are damaged.
    """
    path = Path(path)
    previous = path.with_name(path.name + ".prev")
    damaged: list[Path] = []
    for candidate in (path, previous):
        if not candidate.exists():
            continue
        try:
            payload = torch.load(candidate, map_location="cpu", weights_only=False)
        except Exception:  # a truncated or corrupted file raises whatever the unpickler meets: try the previous one
            payload = None
        if not isinstance(payload, dict) or any(k not in payload for k in CHECKPOINT_KEYS):
            damaged.append(candidate)
            continue
        if damaged and warn:
            warnings.warn(f"{damaged[0]} is damaged (truncated or corrupted); resuming from the previous "
                          f"checkpoint, {candidate}", stacklevel=2)
        return payload, candidate
    if damaged:
        raise UserError(f"cannot resume: every checkpoint is damaged (truncated or corrupted): "
                        f"{' and '.join(str(d) for d in damaged)}; nothing is left to resume from, so train again "
                        "without --resume into a new --out")
    raise UserError(f"cannot resume: no checkpoint in {path.parent} (expected {path.name})")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read the training state; a damaged file falls back to the previous good one, or says why not."""
    return read_checkpoint(path)[0]


def check_run_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run directory (it does not exist)")
    if not (run_dir / CONFIG_FILE).exists():
        raise UserError(f"{run_dir}: not a run directory (no {CONFIG_FILE}; was it made by 'rnnkit train'?)")
    return run_dir


def refuse_existing_run(out: str | Path) -> None:
    """A new run must not overwrite one: refuse an --out that holds a run.

    Under torchrun every rank refuses on rank 0's word, before any rank writes: a rank that checked for
    itself could see the files rank 0 has just written, or (several machines) a different disk.
    """
    from rnnkit import distributed

    taken = (Path(out) / CONFIG_FILE).exists()
    ctx = distributed.current()
    if ctx is not None:
        taken = ctx.from_main(taken)
    if taken:
        raise UserError(f"--out {out}: already holds a run; pass --resume to continue it or choose another folder")


def resumed_config(cfg: Any, out: str | Path) -> Any:
    """The saved configuration of the run in `out`, with the new call's epochs, time and step limits."""
    from rnnkit.config import RunConfig

    out = Path(out)
    saved = RunConfig.from_dict(read_run_config(out, task=cfg.task), str(out / CONFIG_FILE))
    saved.train.epochs, saved.train.max_minutes = cfg.train.epochs, cfg.train.max_minutes
    saved.train.max_steps = cfg.train.max_steps
    return saved


def start_or_resume(cfg: Any, out: str | Path, resume: bool) -> Any:
    """The configuration a `train` call runs with: the given one for a new run (after refusing an --out that
    holds a run), or the saved one for --resume, with the new call's epochs, time and step limits."""
    if resume:
        return resumed_config(cfg, out)
    refuse_existing_run(out)
    return cfg


def read_run_config(run_dir: str | Path, task: str | None = None) -> dict[str, Any]:
    """Read config.json of a run and check its version and, when given, its task."""
    run_dir = check_run_dir(run_dir)
    meta = read_json(run_dir / CONFIG_FILE)
    from rnnkit import __version__

    made_by = meta.get("versions", {}).get("rnnkit")
    if made_by is None:
        raise UserError(f"{run_dir / CONFIG_FILE}: no rnnkit version recorded; not an rnnkit run")
    if made_by.split(".")[:2] != __version__.split(".")[:2]:
        raise UserError(
            f"{run_dir}: made by rnnkit {made_by}, this is rnnkit {__version__}; "
            "runs load only within the same minor version"
        )
    if task is not None and meta.get("task") != task:
        raise UserError(f"{run_dir}: this run is a '{meta.get('task')}' model; expected a '{task}' model")
    return meta
