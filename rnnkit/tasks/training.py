"""Training a run, for every task: files in, a run directory out.

What is here: `train`, the one skeleton every task's training follows: open the run (resume, device,
process group, seed), let the task read its data and fit its vocabularies (`Task.prepare`), build the
model and give it its starting weights, write config.json and the task's files on rank 0, run the
Trainer, let the task finish (`Task.after_training`) and score --test. What is not: anything of one task
(tasks/<name>.py) or the loop itself (train.py). Loading and using runs is runner.py, which never imports
this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnkit import distributed
from rnnkit.checkpoint import CONFIG_FILE, versions
from rnnkit.config import RunConfig
from rnnkit.io import write_json
from rnnkit.tasks import get_task, runner
from rnnkit.train import Trainer, open_run


def train(
    cfg: RunConfig,
    train_path: str | Path,
    out: str | Path,
    valid_path: str | Path | None = None,
    test_path: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a model for `cfg.task` and write its run directory.

    Args:
        cfg: the run's configuration (`RunConfig.create(task, ...)` or the command line's).
        train_path, valid_path, test_path: data files in the task's format; without `valid_path` the task
            holds out part of `train_path` (`--valid-fraction`); `test_path` is scored once at the end.
        out: the run directory (refused if it holds a run, unless `resume`).
        resume: continue the run in `out` from its last checkpoint.
        log: where progress lines go (default: standard error).
    Returns:
        The final figures: steps, time, the best validation figure, and `test` when `test_path` is given.
    """
    task = get_task(cfg.task)
    cfg, out, say = open_run(cfg, out, resume, log)
    prepared = task.prepare(cfg, train_path, valid_path, out, resume, say)
    if test_path is not None:
        task.check_test(cfg, test_path, prepared)
    model = task.build_model(cfg, **task.model_assets(prepared.assets))
    if not resume:
        task.initialise(model, cfg, prepared, say)
    if not resume and distributed.is_main():  # under torchrun, rank 0 writes the run's files
        out.mkdir(parents=True, exist_ok=True)
        task.save(out, prepared)
        write_json(out / CONFIG_FILE, {**cfg.to_dict(), **prepared.meta, "versions": versions()})
    n_params = sum(p.numel() for p in model.parameters())
    say(prepared.describe.replace("{params}", f"{n_params:,}"))

    trainer = Trainer(model, prepared.train, prepared.valid, cfg.train, out, log=log)
    state = trainer.run(resume)
    result: dict[str, Any] = {**trainer.summary(), f"best_valid_{model.monitor[0]}": state.best, **prepared.result}
    if not trainer.main:  # under torchrun, rank 0 alone finishes the run and scores the test file
        return result
    task.after_training(out, prepared, say)
    if test_path is not None:
        result["test"], line = task.test_result(runner.evaluate(out, test_path))
        say(line)
    return result
