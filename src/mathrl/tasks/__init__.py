"""Tasks: problems, prompts, answer extraction, grading and step checks (see ``base.py``)."""

from __future__ import annotations

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
    """A task by name with its options (synthetic: surface, level, seed, train_size, test_size; gsm8k/svamp:
    data_dir, extract; jsonl:/parquet:/datasets:PATH: question_field, answer_field, solution_field, extract).
    Unknown names list the known ones."""
    if is_file_task(name):
        kind, path = name.split(":", 1)
        cls, options = FileTask, {"path": path, "kind": kind, **options}
    elif name not in TASKS:
        raise UsageError(f"unknown task {name!r} (known: {', '.join(TASKS)}, or {'PATH, '.join(FILE_PREFIXES)}PATH "
                         "for your own data)")
    elif name == "synthetic":
        surface = options.pop("surface", "qa")
        if surface not in SURFACES:
            raise UsageError(f"unknown synthetic surface {surface!r} (known: {', '.join(SURFACES)})")
        cls = SURFACES[surface]
    else:
        cls = TASKS[name]
    try:
        return cls(**options)
    except TypeError as e:
        raise UsageError(f"bad option for task {name}: {e}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None


def task_from_options(name: str, level: int | None = None, data_dir: str | None = None,
                      extract: str | None = None, train_size: int | None = None, surface: str | None = None,
                      fields: dict | None = None) -> Task:
    """Build a task from the flat options every command shares; options that do not apply are errors.
    ``fields``: question_field / answer_field / solution_field of a ``jsonl:``/``parquet:``/``datasets:PATH``
    task."""
    options: dict = {}
    fields = {k: v for k, v in (fields or {}).items() if v is not None}
    if fields and not is_file_task(name):
        raise UsageError(f"--question-field, --answer-field and --solution-field apply to jsonl:, parquet: and "
                         f"datasets:PATH tasks, not to {name}")
    if is_file_task(name):
        if level is not None or train_size is not None or surface is not None or data_dir is not None:
            raise UsageError(f"level, train_size, surface and data_dir do not apply to {name.split(':')[0]}:PATH "
                             "tasks")
        return load_task(name, **fields, **({"extract": extract} if extract is not None else {}))
    if name == "synthetic":
        if data_dir is not None or extract is not None:
            raise UsageError("data_dir and extract apply to gsm8k and svamp, not to the synthetic task")
        if surface is not None:
            options["surface"] = surface
        if level is not None:
            options["level"] = level
        if train_size is not None:
            options["train_size"] = train_size
    else:
        if level is not None or train_size is not None or surface is not None:
            raise UsageError(f"level, train_size and surface apply to the synthetic task, not to {name}")
        if data_dir is not None:
            options["data_dir"] = data_dir
        if extract is not None:
            options["extract"] = extract
    return load_task(name, **options)


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
    """The options that rebuild ``task`` with ``task_from_options`` (stored beside models)."""
    if task.name == "synthetic":
        # the surface only when it is not the default, so that models written before it existed read the same
        return {"name": "synthetic", "level": task.level, "levels": LEVEL_SCHEME,
                **({"surface": task.surface} if task.surface != "qa" else {})}
    if is_file_task(task.name):
        return {"name": task.name, "extract": task.extract, **task.fields()}
    return {"name": task.name, "extract": task.extract}
