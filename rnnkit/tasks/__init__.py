"""Tasks end to end: each module turns files into a trained run directory and a run into answers.

What is here: the registry of task modules. Every task module offers the same functions, which the
command line calls:

    train(cfg, train_path, out, valid_path=None, test_path=None, resume=False, log=None) -> dict
    evaluate(run_dir, data_path, **options) -> dict          # `rnnkit evaluate`
    predict(run_dir, input_path, output_path, **options)     # `rnnkit predict` ("-" is stdin/stdout)

`options` are the task-specific flags of `evaluate` and `predict` (e.g. `beam`, `plot`); a task names
the ones it takes as keyword arguments, and the command line refuses the others with a clear message.
What is not here: the models, the loop or the readers themselves.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from rnnkit.config import UserError

TASK_MODULES = {
    "lm": "rnnkit.tasks.lm",
    "classify": "rnnkit.tasks.classify",
    "tag": "rnnkit.tasks.tag",
    "seq2seq": "rnnkit.tasks.seq2seq",
    "forecast": "rnnkit.tasks.forecast",
}


def available_tasks() -> tuple[str, ...]:
    """The tasks whose module is present in this installation."""
    return tuple(name for name, module in TASK_MODULES.items() if importlib.util.find_spec(module) is not None)


def task_module(name: str) -> ModuleType:
    """The module of a task, or a UserError naming the tasks there are."""
    if name not in TASK_MODULES or name not in available_tasks():
        raise UserError(f"task '{name}' is not available in this version of rnnkit; available: "
                        f"{', '.join(available_tasks())}")
    return importlib.import_module(TASK_MODULES[name])
