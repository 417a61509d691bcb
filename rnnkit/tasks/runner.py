"""Using a trained run, for every task: load it, score it, answer inputs with it.

What is here: `load` (config.json read and checked, the task's kept files, the model rebuilt, the best
weights loaded, the device chosen), `evaluate` and `predict` (a run directory in, the task's own method
called with the options it accepts), and `option_names`. Training is in training.py: nothing here reaches
the training loop, so that the service and export can load runs without it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from rnnkit.checkpoint import CONFIG_FILE, MODEL_FILE, load_weights, read_run_config
from rnnkit.config import RunConfig, UserError
from rnnkit.device import resolve_device
from rnnkit.tasks import get_task
from rnnkit.tasks.base import LoadedRun, Task


def task_of(run_dir: str | Path) -> Task:
    """The task of a run directory (after checking that it is one)."""
    return get_task(read_run_config(run_dir)["task"])


def load(run_dir: str | Path, device: str = "cpu", task: str | None = None) -> Any:
    """Load a run (config, the task's kept files, best weights) after checking it.

    Args:
        run_dir: the run directory.
        device: cpu, cuda, cuda:N, mps or auto.
        task: refuse a run of another task (by name) with a clear message.
    Returns:
        The task's `LoadedRun`, its model in eval mode on the device.
    """
    run_dir = Path(run_dir)
    meta = read_run_config(run_dir, task=task)
    t = get_task(meta["task"])
    cfg = RunConfig.from_dict(meta, str(run_dir / CONFIG_FILE))
    assets = t.load_assets(run_dir, cfg, meta)
    model = t.build_model(cfg, **t.model_assets(assets))
    load_weights(run_dir / MODEL_FILE, model)
    dev = resolve_device(device)
    model.to(dev).eval()
    return t.loaded_type(model=model, config=cfg, device=dev, run_dir=run_dir, meta=meta, **assets)


def ensure_loaded(run: str | Path | LoadedRun, task: str) -> Any:
    """A loaded run as given, or the run directory loaded (refusing one of another task)."""
    return run if isinstance(run, LoadedRun) else load(run, task=task)


def option_names(method: Any) -> set[str]:
    """The task-specific keyword options a task method takes (beyond the run and the paths)."""
    params = list(inspect.signature(method).parameters.values())
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not p.empty}


def _check_options(task: Task, verb: str, method: Any, options: dict[str, Any]) -> None:
    wrong = ["--" + k.replace("_", "-") for k in options if k not in option_names(method)]
    if wrong:
        raise UserError(f"{', '.join(wrong)}: not an option for {task.name} runs")


def evaluate(run_dir: str | Path, data_path: str | Path, **options: Any) -> dict[str, Any]:
    """Score a run on a data file with the task's figures (`rnnkit evaluate`)."""
    task = task_of(run_dir)
    _check_options(task, "evaluate", task.evaluate, options)
    return task.evaluate(load(run_dir), data_path, **options)


def predict(run_dir: str | Path, input_path: str | Path = "-", output_path: str | Path = "-", **options: Any) -> Any:
    """Answer every input of a file ("-": standard input) into a file ("-": standard output)."""
    task = task_of(run_dir)
    if task.predict is None:
        raise UserError(f"{run_dir}: predict does not apply to {task.name} runs{task.predict_hint}")
    _check_options(task, "predict", task.predict, options)
    return task.predict(load(run_dir), input_path, output_path, **options)
