"""Tasks end to end, found by name: the registry.

What is here: `REGISTRY`, one line per task (its name and the module that defines it), and `get_task`.
Each task module defines one `Task` subclass (tasks/base.py) and an instance of it named `TASK`; the
command line, the service, export and inspect find tasks here and nowhere else. What is not: the task
interface (base.py), the runner that loads and uses runs (runner.py) or trains them (training.py).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

from rnnkit.config import UserError

if TYPE_CHECKING:
    from rnnkit.tasks.base import Task

REGISTRY: dict[str, str] = {
    "lm": "rnnkit.tasks.lm",
    "classify": "rnnkit.tasks.classify",
    "tag": "rnnkit.tasks.tag",
    "seq2seq": "rnnkit.tasks.seq2seq",
    "forecast": "rnnkit.tasks.forecast",
    "transcribe": "rnnkit.tasks.transcribe",
    "music": "rnnkit.tasks.music",
    "recommend": "rnnkit.tasks.recommend",
}


def available_tasks() -> tuple[str, ...]:
    """The tasks whose module is present in this installation."""
    return tuple(name for name, module in REGISTRY.items() if importlib.util.find_spec(module) is not None)


def get_task(name: str) -> Task:
    """The task registered under `name`, or a UserError naming the tasks there are."""
    if name not in REGISTRY or name not in available_tasks():
        raise UserError(f"task '{name}' is not available in this version of rnnkit; available: "
                        f"{', '.join(available_tasks())}")
    return importlib.import_module(REGISTRY[name]).TASK
