"""Tasks: problems, prompts, answer extraction, grading and step checks (see ``base.py``)."""

from __future__ import annotations

import inspect

from mathrl.errors import UsageError
from mathrl.tasks.base import Grade, Problem, StepCheck, StepVerdict, Task
from mathrl.tasks.gsm8k import GSM8KTask
from mathrl.tasks.jsonl import PREFIXES as FILE_PREFIXES, FileTask, is_file_task
from mathrl.tasks.svamp import SVAMPTask
from mathrl.tasks.synthetic_prose import SyntheticProseTask
from mathrl.tasks.synthetic_qa import SyntheticQATask

TASKS = {"synthetic": SyntheticQATask, "gsm8k": GSM8KTask, "svamp": SVAMPTask}
# The synthetic task's surfaces (the format a model is prompted in and writes), one task class each; ``surface``
# picks one (a model records it with ``task_options``).
SURFACES = {"qa": SyntheticQATask, "prose": SyntheticProseTask}

__all__ = ["Grade", "Problem", "StepCheck", "StepVerdict", "Task", "TASKS", "load_task"]


def load_task(name: str, **options) -> Task:
    """A task by name with its options (synthetic: level, seed, train_size, test_size, surface; gsm8k/svamp:
    data_dir, extract; jsonl:/parquet:/datasets:PATH: question_field, answer_field, solution_field, extract). An
    option whose value is None is not given (the task's default); one the task does not take is a one-line error,
    and so is an unknown name (listing the known ones).

    This builds the task alone; the task for a model, with what the model records and its prompt format, is
    ``runsetup.task_for``."""
    options = {k: v for k, v in options.items() if v is not None}
    if is_file_task(name):
        kind, path = name.split(":", 1)
        cls, what = FileTask, f"{kind}:PATH tasks"
        options = {"path": path, "kind": kind, **options}
    elif name not in TASKS:
        raise UsageError(f"unknown task {name!r} (known: {', '.join(TASKS)}, or {'PATH, '.join(FILE_PREFIXES)}PATH "
                         "for your own data)")
    elif name == "synthetic":
        surface = options.pop("surface", "qa")
        if surface not in SURFACES:
            raise UsageError(f"unknown synthetic surface {surface!r} (known: {', '.join(SURFACES)})")
        cls, what = SURFACES[surface], "the synthetic task"
    else:
        cls, what = TASKS[name], f"the {name} task"
    takes = inspect.signature(cls).parameters
    foreign = [k for k in options if k not in takes]
    if foreign:
        raise UsageError(f"{', '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to {what}")
    try:
        return cls(**options)
    except ValueError as e:
        raise UsageError(str(e)) from None


# The synthetic levels' numbering, recorded with every model: since scheme 2 (2026-12-01) level 1 has three-digit
# answers and the former level 1 is level 0.
LEVEL_SCHEME = 2


def recorded_level(task_meta: dict) -> int | None:
    """The synthetic level a model's recorded task (``task_options``) means today: a model recorded before scheme
    2 (no ``levels`` key) with level 1 was trained on today's level 0."""
    level = task_meta.get("level")
    if level == 1 and task_meta.get("levels") is None:
        return 0
    return level


def task_options(task) -> dict:
    """The options that rebuild ``task`` with ``load_task`` (recorded beside models, ``record.ModelRecord``)."""
    if task.name == "synthetic":
        # the surface only when it is not the default, so that models written before it existed read the same
        return {"name": "synthetic", "level": task.level, "levels": LEVEL_SCHEME,
                **({"surface": task.surface} if task.surface != "qa" else {})}
    if is_file_task(task.name):
        return {"name": task.name, "extract": task.extract, **task.fields()}
    return {"name": task.name, "extract": task.extract}
