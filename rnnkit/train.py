"""The training loop: backpropagation through time, full or truncated, for any task model.

What is here: `Trainer` (optimizer, learning-rate schedule, gradient clipping, evaluation, early
stopping, checkpoints and exact resume, progress and metrics), `build_optimizer`, `LRSchedule`. What is
not: anything about a particular task, choosing the device (device.py) or scoring a model over a batch
source (evaluation.py). A model only has to offer

    out = model.loss(batch, state)       # -> LossOutput(loss, count, stats, state)
    figures = model.metrics(stats, count)
    model.monitor = ("loss", "min")      # the validation figure that picks the best weights

and a data source only `len(source)` and `source.batches(epoch, start)`, yielding dicts of tensors.
When the source is a stream (`source.stateful`), the state a batch ends with is detached and carried
into the next batch: truncated BPTT. Otherwise every batch starts from a zero state: full BPTT.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rnnkit import distributed, viz
from rnnkit.checkpoint import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    MODEL_FILE,
    check_state_dict,
    read_checkpoint,
    refuse_existing_run,
    resumed_config,
    save_checkpoint,
    save_weights,
)
from rnnkit.config import TrainConfig, TrainingError, UserError
from rnnkit.device import training_device
from rnnkit.evaluation import BatchSource, evaluate_model
from rnnkit.io import atomic_write
from rnnkit.kernels import release_buffers
from rnnkit.layers import detach_state
from rnnkit.models.base import layer_groups


def open_run(cfg: Any, out: str | Path, resume: bool,
             log: Callable[[str], None] | None = None) -> tuple[Any, Path, Callable[[str], None]]:
    """What every task's `train` does first: the configuration to run with (the saved one on resume, see
    `checkpoint.resumed_config`), the device checked, under torchrun the process group joined (its
    backend chosen by the resolved device) and an --out that holds a run refused on every rank, threads
    and seed set; returns it with the run directory and where progress lines go (stderr unless `log` is
    given; nowhere on ranks other than 0, so that every line shows once).

    Under torchrun, a task writes the run's files only where `distributed.is_main()`; the trainer waits
    for every rank at the end of training, so that what follows it may read what rank 0 wrote.
    """
    out = Path(out)
    if resume:
        cfg = resumed_config(cfg, out)
    ctx = distributed.setup(training_device(cfg.train.device))  # before any rank reads or writes the run
    if not resume:
        refuse_existing_run(out)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    if ctx is not None and not ctx.main:
        return cfg, out, _nowhere
    return cfg, out, log or _to_stderr


def _nowhere(line: str) -> None:
    pass


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(params: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, on PyTorch's fused kernels where it has them.

    A fused step makes one pass over each parameter instead of a dozen element-wise passes; on a word
    language model whose embedding table dominates the parameters, that alone made training steps 1.4x
    faster on a 2-core CPU. RMSprop has no fused kernel and uses the default implementation.
    """
    params = list(params)
    tensors = [p for item in params for p in (item["params"] if isinstance(item, dict) else [item])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in tensors)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                           fused=fused or None)


_FUSED_DEVICES = ("cpu", "cuda")


class LRSchedule:
    """Learning rate = base * warm-up * (cosine decay or plateau reductions).

    Warm-up rises linearly over `warmup_steps`; `cosine` decays to zero over `total_steps`; `plateau`
    multiplies by `lr_factor` when a validation figure has not improved for more than `lr_patience`
    evaluations in a row; `slanted` is ULMFiT's slanted triangle: a linear rise from base/32 to base over the
    first 10 % of the steps (or over `warmup_steps` when given), then a linear fall back to base/32 at the
    last step. Each parameter group learns at its `lr_scale` times the rate (discriminative rates).
    """

    SLANT_RATIO = 32.0  # how much smaller the rate is at the ends of the slanted triangle than at its peak
    SLANT_CUT = 0.1  # the share of the steps spent rising

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.base = cfg.lr
        self.kind = cfg.scheduler
        self.warmup = cfg.warmup_steps
        self.total = max(total_steps, 1)
        self.factor = cfg.lr_factor
        self.patience = cfg.lr_patience
        self.scale = 1.0  # accumulated plateau reductions
        self.best: float | None = None
        self.bad = 0  # evaluations since the last improvement
        self.apply(0)

    def rate(self, step: int) -> float:
        lr = self.base * self.scale
        if self.kind == "slanted":
            cut = self.warmup or max(int(self.total * self.SLANT_CUT), 1)
            if step < cut:
                p = step / cut
            else:
                p = max(1.0 - (step - cut) / max(self.total - 1 - cut, 1), 0.0)
            return lr * (1.0 + p * (self.SLANT_RATIO - 1.0)) / self.SLANT_RATIO
        if self.warmup and step < self.warmup:
            lr *= (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = min(max(step - self.warmup, 0) / max(self.total - self.warmup, 1), 1.0)
            lr *= 0.5 * (1.0 + math.cos(math.pi * progress))
        return lr

    def apply(self, step: int) -> float:
        lr = self.rate(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def observe(self, value: float, lower_is_better: bool) -> None:
        """Feed a validation figure; the plateau schedule reduces the rate when it did not improve."""
        if self.kind != "plateau":
            return
        if self.best is None or _better(value, self.best, lower_is_better):
            self.best = value
            self.bad = 0
        else:
            self.bad += 1
            if self.bad > self.patience:
                self.scale *= self.factor
                self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "best": self.best, "bad": self.bad}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.scale, self.best, self.bad = d["scale"], d["best"], d["bad"]


@dataclass
class TrainState:
    """Where training stands; saved in the checkpoint, restored by resume."""

    epoch: int = 0
    batch: int = 0  # next batch index within the epoch
    step: int = 0  # optimizer steps done
    elapsed: float = 0.0  # seconds of training before this process
    best: float | None = None
    bad_evals: int = 0
    clipped: int = 0
    skipped: int = 0  # batches skipped for a non-finite loss or gradient (--skip-nonfinite)
    tokens: int = 0
    evaluations: int = 0  # metric lines written (a resumed run keeps exactly these)
    history: list[dict[str, float]] = field(default_factory=list)  # training loss per log interval
    carried: Any = None  # truncated BPTT state between chunks
    done: bool = False


class Progress:
    """A progress bar on a terminal, plain lines otherwise."""

    def __init__(self, total: int, log_every: int, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.log_every = log_every
        self.bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, file=self.stream, dynamic_ncols=True, leave=False)

    def update(self, step: int, total: int, info: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.set_postfix(info, refresh=False)
            self.bar.refresh()
        elif step % self.log_every == 0:
            self.write(f"step {step}/{total} " + " ".join(f"{k} {v}" for k, v in info.items()))

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trainer:
    """Trains a task model on batch sources and keeps a run directory up to date.

    Args:
        model: a task model (see the module docstring).
        train_data: the training batches.
        valid_data: validation batches, or None (then the last weights are kept).
        cfg: the training configuration.
        run_dir: where metrics, weights and checkpoints go.
        log: where progress lines go (stderr by default).
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: BatchSource,
        valid_data: BatchSource | None,
        cfg: TrainConfig,
        run_dir: str | Path,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.model = model
        self.train_data = train_data
        self.valid_data = valid_data
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = training_device(cfg.device)
        self.dist = distributed.setup(self.device)
        if self.dist is not None and not self.dist.main:
            # Dropout (and every other random choice in training) differs between ranks, as it would between
            # the rows of one batch; initial weights are rank 0's (DDP broadcasts them) and batches are drawn
            # from generators of their own, the same on every rank.
            seed_everything(_rank_seed(cfg.seed, self.dist.rank))
        self.model.to(self.device)
        self.forward: nn.Module = _LossModule(model)
        if self.dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            # Same initial weights everywhere (DDP broadcasts rank 0's), gradients averaged every step.
            self.forward = DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.groups = self._layer_groups()
        if len(self.groups) > 1:  # one parameter group per layer group, each with its share of the rate
            top = len(self.groups) - 1
            params: Any = [{"params": g, "lr_scale": cfg.layer_lr_decay ** (top - i)}
                           for i, g in enumerate(self.groups)]
        else:
            params = self.model.parameters()
        self.optimizer = build_optimizer(params, cfg)
        self._trainable = {id(p) for p in self.model.parameters() if p.requires_grad}  # frozen by the task stay so
        steps_per_epoch = len(train_data)
        total = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        self.total_steps = total
        self.schedule = LRSchedule(self.optimizer, cfg, total)
        self.state = TrainState()
        self._resumed_from_previous = False  # checkpoint.pt was damaged: the next save must keep .prev
        self._log = log
        self._frozen: set[int] = set()
        self.progress: Progress | None = None
        metric, mode = getattr(model, "monitor", ("loss", "min"))
        self.monitor, self.lower_is_better = metric, mode == "min"

    # ------------------------------------------------------------------------------ helpers

    def _layer_groups(self) -> list[list[nn.Parameter]]:
        """The model's layer groups when discriminative rates or gradual unfreezing use them, else one."""
        if self.cfg.layer_lr_decay == 1.0 and self.cfg.unfreeze == "all":
            return [list(self.model.parameters())]
        return layer_groups(self.model)

    def _unfreeze_for(self, epoch: int) -> None:
        """Gradual unfreezing: in epoch e (from 0) only the top e + 1 layer groups learn."""
        if self.cfg.unfreeze != "gradual":
            return
        first = max(len(self.groups) - 1 - epoch, 0)
        frozen = {id(p) for g in self.groups[:first] for p in g}
        self._frozen = frozen
        if self.dist is None:  # DDP keeps the set of parameters it was built with: there, gradients are dropped
            for p in self.model.parameters():
                p.requires_grad_(id(p) in self._trainable and id(p) not in frozen)
        if epoch < len(self.groups) and frozen:
            self.log(f"epoch {epoch + 1}: training the top {len(self.groups) - first} of {len(self.groups)} layer "
                     "groups (--unfreeze gradual)")

    def _drop_frozen_grads(self) -> None:
        if self.cfg.unfreeze == "gradual" and self._frozen:
            for p in self.model.parameters():
                if id(p) in self._frozen:
                    p.grad = None

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs (always, unless a non-zero distributed rank)."""
        return self.dist is None or self.dist.main

    def log(self, line: str) -> None:
        if not self.main:
            return
        if self._log is not None:
            self._log(line)
        elif self.progress is not None:
            self.progress.write(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _rng_state(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    @staticmethod
    def _set_rng_state(rng: dict[str, Any]) -> None:
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # --------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        s = self.state
        carried = s.carried if self.dist is None else self.dist.gather_rows(s.carried)  # every rank's rows
        rng = self._rng_state()
        rng_ranks = None if self.dist is None else self.dist.gather_objects(rng)  # every rank's own dropout
        if not self.main:
            return
        payload = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "train_state": {k: v for k, v in vars(s).items() if k != "carried"},
            "carried": _to_cpu(carried),
            "rng": rng,
        }
        if rng_ranks is not None:
            payload["rng_ranks"] = rng_ranks
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, payload, keep_previous=not self._resumed_from_previous)
        self._resumed_from_previous = False

    def resume(self) -> None:
        """Continue from the run directory's checkpoint: weights, optimizer, schedule, position, RNG."""
        path = self.run_dir / CHECKPOINT_FILE
        payload, used = read_checkpoint(path, warn=self.main)
        self._resumed_from_previous = used != path
        check_state_dict(self.model, payload["model"], f"{used} (--resume)")
        self.model.load_state_dict(payload["model"])
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except ValueError as e:
            raise UserError(f"{used} (--resume): the optimizer state does not fit the model ({e})") from None
        self.schedule.load_state_dict(payload["schedule"])
        saved = payload["train_state"]
        self.state = TrainState(**saved)
        carried = payload["carried"] if self.dist is None else self.dist.take_rows(payload["carried"])
        self.state.carried = _to_device(carried, self.device)
        self.state.done = False
        ranks = payload.get("rng_ranks")
        if self.dist is not None and ranks is not None and len(ranks) == self.dist.world:
            self._set_rng_state(ranks[self.dist.rank])
        else:
            self._set_rng_state(payload["rng"])
            if self.dist is not None and not self.dist.main:  # saved by another world size: a fresh stream
                seed_everything(_rank_seed(self.cfg.seed + self.state.step, self.dist.rank))
        if self.main:
            # Checkpoints from before the count was kept fall back to the step of each line.
            self._drop_metrics_after(self.state.step, self.state.evaluations if "evaluations" in saved else None)

    def _drop_metrics_after(self, step: int, evaluations: int | None) -> None:
        """Forget metric lines written after the checkpoint (a killed run repeats those evaluations).

        The count of evaluations decides, not the step: the evaluation closing an epoch comes after
        the checkpoint of the epoch's last step and carries the same step number.
        """
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if evaluations is not None and len(kept) >= evaluations:
                break
            if evaluations is not None or record.get("step", 0) <= step:
                kept.append(line)
        if len(kept) != len(lines):
            atomic_write(path, ("\n".join(kept) + "\n" if kept else "").encode("utf-8"))

    # ------------------------------------------------------------------------ evaluation

    def evaluate(self, source: BatchSource) -> dict[str, float]:
        """The model's metrics over every batch of `source` (state carried for streams)."""
        return evaluate_model(self.model, source, self.device, self.dist)

    def _validate(self, train_loss: float) -> bool:
        """Evaluate, record a metrics line, keep the best weights; returns True to stop early."""
        s = self.state
        record: dict[str, Any] = {
            "epoch": s.epoch + (s.batch / max(len(self.train_data), 1)),
            "step": s.step,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[-1]["lr"],
            "clip_fraction": s.clipped / max(s.step, 1),
            "skipped_batches": s.skipped,
            "elapsed_s": round(s.elapsed + self._session_time(), 1),
        }
        stop = False
        if self.valid_data is not None:
            figures = self.evaluate(self.valid_data)
            record.update({f"valid_{k}": v for k, v in figures.items()})
            value = figures[self.monitor]
            improved = s.best is None or _better(value, s.best, self.lower_is_better)
            if improved:
                s.best = value
                s.bad_evals = 0
                if self.main:
                    save_weights(self.run_dir / MODEL_FILE, self.model)
            else:
                s.bad_evals += 1
                if self.cfg.early_stopping and s.bad_evals >= self.cfg.early_stopping:
                    stop = True
            self.schedule.observe(value, self.lower_is_better)
            shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items())
            self.log(f"epoch {record['epoch']:.2f} step {s.step}: train loss {train_loss:.4f}, valid {shown}"
                     + ("" if improved else " (no improvement)"))
        else:
            if self.main:
                save_weights(self.run_dir / MODEL_FILE, self.model)
            self.log(f"epoch {record['epoch']:.2f} step {s.step}: train loss {train_loss:.4f}")
        s.evaluations += 1
        if self.main:
            with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        return stop

    def _session_time(self) -> float:
        return time.monotonic() - self._start

    # ---------------------------------------------------------------------------- training

    def run(self, resume: bool = False) -> TrainState:
        """`fit`, first restoring the run directory's checkpoint when `resume` is set."""
        if resume:
            self.resume()
            self.log(f"resuming at epoch {self.state.epoch + 1}, step {self.state.step}")
        return self.fit()

    def fit(self) -> TrainState:
        """Train until the epochs, the step limit, the time limit or early stopping end it."""
        cfg, s = self.cfg, self.state
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._start = time.monotonic()
        last_checkpoint = time.monotonic()
        steps_per_epoch = len(self.train_data)
        self.progress = Progress(self.total_steps, cfg.log_every,
                                 stream=None if self.main else open(os.devnull, "w"))  # noqa: SIM115
        first_step = s.step
        self.model.train()
        window_loss, window_count, window_tokens, window_start = 0.0, 0.0, 0, time.monotonic()
        interrupted = False
        try:
            while s.epoch < cfg.epochs and not s.done:
                self._unfreeze_for(s.epoch)
                state = s.carried if self.train_data.stateful else None
                for batch in self.train_data.batches(s.epoch, s.batch):
                    if self.dist is not None:
                        if distributed.batch_rows(batch) < self.dist.world:
                            s.batch += 1  # too few rows to share out: every rank skips it alike
                            continue
                        batch = distributed.shard(batch, self.dist, self.train_data)
                    lr = self.schedule.apply(s.step)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"):
                        out = self.forward(self._to_device(batch), state)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss = out.loss
                    finite = bool(torch.isfinite(out.loss))
                    weight = float(out.count if out.weight is None else out.weight)  # what the mean divides by
                    count, total = out.count, weight
                    loss_sum = float(out.loss.detach()) * weight if finite else 0.0
                    if self.dist is not None:
                        # Weight each rank's mean by its share of the weight of the units, so that DDP's
                        # average of the gradients is the gradient of the mean over the whole global batch;
                        # the same reduction gives the global batch's loss and count for the logs.
                        count, total, bad, loss_sum = self.dist.sum(
                            [out.count, weight, 0.0 if finite else 1.0, loss_sum], self.device)
                        count, finite = int(count), bad == 0
                        loss = out.loss * (weight * self.dist.world / (total if total > 0 else 1.0))
                    if finite:
                        loss.backward()
                        self._drop_frozen_grads()
                        if cfg.clip > 0:
                            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip)
                            finite = bool(torch.isfinite(norm))
                            s.clipped += int(finite and bool(norm > cfg.clip))
                    if not finite:
                        if not cfg.skip_nonfinite:
                            self._stop_nonfinite(out.loss)
                        # Skip the batch: no update, and a stream restarts from a zero state.
                        self.optimizer.zero_grad(set_to_none=True)
                        s.skipped += 1
                        s.batch += 1
                        state = s.carried = None
                        self.log(f"step {s.step + 1}: non-finite loss or gradient, batch skipped "
                                 f"({s.skipped} so far)")
                        continue
                    self.optimizer.step()
                    state = detach_state(out.state) if self.train_data.stateful else None
                    s.carried = state
                    s.step += 1
                    s.batch += 1
                    s.tokens += count
                    window_loss += loss_sum
                    window_count += total
                    window_tokens += count

                    now = time.monotonic()
                    elapsed_total = s.elapsed + now - self._start
                    rate = window_tokens / max(now - window_start, 1e-9)
                    remaining = (self.total_steps - s.step) * (now - self._start) / max(s.step - first_step, 1)
                    if cfg.max_minutes is not None:
                        remaining = min(remaining, cfg.max_minutes * 60 - elapsed_total)
                    self.progress.update(s.step, self.total_steps, {
                        "loss": f"{self._recent_loss(window_loss, window_count):.4f}", "tok/s": f"{rate:,.0f}",
                        "lr": f"{lr:.2e}", "eta": _fmt_time(remaining)})
                    if s.step % cfg.log_every == 0:
                        s.history.append({"step": s.step, "loss": self._recent_loss(window_loss, window_count)})
                        window_loss, window_count, window_tokens, window_start = 0.0, 0.0, 0, now

                    limit_hit = (cfg.max_steps is not None and s.step >= cfg.max_steps) or (
                        cfg.max_minutes is not None and elapsed_total >= cfg.max_minutes * 60)
                    checkpoint_due = now - last_checkpoint >= cfg.checkpoint_minutes * 60
                    if self.dist is not None:  # clocks differ between processes: decide together
                        limit_hit, checkpoint_due = (v > 0 for v in self.dist.sum(
                            [float(limit_hit), float(checkpoint_due)], self.device))
                    if limit_hit:
                        interrupted = True
                        s.done = True
                        break
                    if cfg.eval_every and s.step % cfg.eval_every == 0 and s.batch < steps_per_epoch:
                        if self._validate(self._recent_loss(window_loss, window_count)):
                            s.done = True
                            break
                        checkpoint_due = True  # every validation leaves a point to resume from
                    if checkpoint_due:
                        self._checkpoint_now()
                        last_checkpoint = now
                if s.done:
                    break
                s.epoch += 1
                s.batch = 0
                s.carried = None
                if self._validate(self._recent_loss(window_loss, window_count)):
                    s.done = True
                elif s.epoch < cfg.epochs:  # every validation leaves a point to resume from (the last: below)
                    self._checkpoint_now()
                    last_checkpoint = time.monotonic()
        finally:
            self.progress.close()
            if self.cfg.unfreeze == "gradual" and self.dist is None:  # the model leaves as it came
                for p in self.model.parameters():
                    p.requires_grad_(id(p) in self._trainable)
            release_buffers()  # the native kernels' buffers kept between training steps: not needed after them
        # A time or step limit saves the resumable state before the closing evaluation, so that
        # resuming follows exactly the trajectory of a run that was never stopped.
        self._checkpoint_now()
        if interrupted:
            self._validate(self._recent_loss(window_loss, window_count))
        self.plot_curves()
        if self.dist is not None:
            self.dist.barrier()  # rank 0's files are written before any rank goes on to what follows training
        return s

    def summary(self) -> dict[str, Any]:
        """The figures every task's result reports about its training: steps, clipping, skipped batches."""
        s = self.state
        return {"steps": s.step, "clip_fraction": s.clipped / max(s.step, 1), "skipped_batches": s.skipped}

    def _checkpoint_now(self) -> None:
        elapsed_before = self.state.elapsed
        self.state.elapsed = elapsed_before + self._session_time()
        self.save_checkpoint()
        self.state.elapsed = elapsed_before

    def _recent_loss(self, window_loss: float, window_count: float) -> float:
        if window_count:
            return window_loss / window_count
        return self.state.history[-1]["loss"] if self.state.history else float("nan")

    def _stop_nonfinite(self, loss: torch.Tensor) -> None:
        s = self.state
        kept = []
        if (self.run_dir / MODEL_FILE).exists():
            which = "best" if self.valid_data is not None else "last"
            kept.append(f"the weights of the {which} evaluation so far are kept in {self.run_dir / MODEL_FILE}")
        if (self.run_dir / CHECKPOINT_FILE).exists():
            kept.append(f"the last checkpoint in {self.run_dir / CHECKPOINT_FILE}")
        saved = " and ".join(kept) if kept else "nothing was saved yet (no evaluation or checkpoint came before it)"
        raise TrainingError(
            f"the training loss or its gradient became non-finite (loss {float(loss.detach())}) at step "
            f"{s.step + 1} (epoch {s.epoch + 1}, batch {s.batch + 1}); {saved}. "
            f"Try a lower --lr or a smaller --clip, or --skip-nonfinite to skip such batches."
        )

    def plot_curves(self) -> Path | None:
        """Write curves.png: training loss by step and the validation figures by step."""
        if not self.main:
            return None
        path = self.run_dir / METRICS_FILE
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return viz.plot_curves(self.state.history, records, self.monitor, self.run_dir / "curves.png")


class _LossModule(nn.Module):
    """A task model's `loss` as `forward`, so that DistributedDataParallel sees (and syncs) each step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, Any], state: Any = None) -> Any:
        return self.model.loss(batch, state)


def _rank_seed(seed: int, rank: int) -> int:
    """The seed of a non-zero rank's random stream: its own, and fixed by the run's seed."""
    return (seed * 1_000_003 + rank) % 2**63


def _better(value: float, best: float, lower_is_better: bool, rel_tol: float = 1e-4) -> bool:
    """True when `value` beats `best` by more than a relative tolerance (noise is not improvement)."""
    margin = rel_tol * abs(best)
    return value < best - margin if lower_is_better else value > best + margin


def _fmt_time(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def _to_cpu(state: Any) -> Any:
    if state is None:
        return None
    if torch.is_tensor(state):
        return state.detach().cpu()
    return type(state)(_to_cpu(s) for s in state)


def _to_device(state: Any, device: torch.device) -> Any:
    if state is None:
        return None
    if torch.is_tensor(state):
        return state.to(device)
    return type(state)(_to_device(s, device) for s in state)
