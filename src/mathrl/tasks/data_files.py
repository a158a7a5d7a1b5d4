"""Finding and reading the real data sets (GSM8K, SVAMP): a local copy when there is one, else the published copy
on the Hugging Face hub through ``datasets``.

Lookup order: the task's ``data_dir`` option (``--data-dir``: that folder and nothing else), then
``$MATHRL_DATA/<task>``, then ``./data/<task>`` and ``../shared/data/<task>`` relative to the working directory;
with none of them, ``datasets.load_dataset`` of the published copy (``HUB``), which downloads it once into
datasets' own cache (``~/.cache/huggingface/datasets``, or under ``$HF_HOME``) and reads it from there offline
after. Without ``datasets``, or offline before the first download, one line names ``MATHRL_DATA`` and the files
it needs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from mathrl.errors import UsageError


# The published copies: GSM8K's own (openai/gsm8k, config "main": question, answer, the official jsonl's rows in
# its order) and SVAMP's most used copy (ChilleD/SVAMP: the 1,000 records of SVAMP.json with their ID, Body,
# Question, Equation, Answer and Type, in a 700/300 train/test split of its own that we merge: SVAMP's split here
# is svamp.svamp_split's hash of each ID, the same whichever copy is read).
HUB = {"gsm8k": ("openai/gsm8k", "main"), "svamp": ("ChilleD/SVAMP", None)}
LOCAL_FILES = {"gsm8k": "train.jsonl and test.jsonl", "svamp": "SVAMP.json"}


def find_data_dir(task: str, data_dir: str | os.PathLike | None, must_contain: str) -> Path | None:
    """The local folder holding ``must_contain`` (see the module docstring), or None when there is none and no
    ``data_dir`` was given (the caller then reads the hub's copy, ``hub_rows``)."""
    if data_dir is not None:
        if (Path(data_dir) / must_contain).is_file():
            return Path(data_dir)
        raise UsageError(f"{task} data not found: no {must_contain} in {data_dir}")
    candidates = []
    if os.environ.get("MATHRL_DATA"):
        candidates.append(Path(os.environ["MATHRL_DATA"]) / task)
    candidates += [Path("data") / task, Path("..") / "shared" / "data" / task]
    for c in candidates:
        if (c / must_contain).is_file():
            return c
    return None


def hub_rows(task: str) -> dict[str, list[dict]]:
    """The rows of each split of ``task``'s published copy (``HUB``), through ``datasets.load_dataset``; one line
    naming ``MATHRL_DATA`` and the expected files when that cannot be done (no ``datasets``, offline before the
    first download, hub unreachable)."""
    name, config = HUB[task]

    def missing(why: str) -> UsageError:
        return UsageError(f"{task} data not found: no local copy and {name} cannot be loaded ({why}); put "
                          f"{LOCAL_FILES[task]} in $MATHRL_DATA/{task} (or ./data/{task}, or pass --data-dir), or "
                          f"go online with the datasets package (pip install \"mathrl[data]\")")

    try:
        import datasets
    except ImportError:
        raise missing("the datasets package is not installed") from None
    datasets.disable_progress_bars()
    # huggingface_hub logs a line per retry while the hub is unreachable: the one line below says it instead
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        data = datasets.load_dataset(name, config)
    except Exception as e:  # noqa: BLE001 - offline, unreachable, gated: every failure is the same advice
        lines = str(e).strip().splitlines()
        raise missing(f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__) from None
    finally:
        hub_logger.setLevel(level)
    return {split: [dict(row) for row in data[split]] for split in data}


def jsonl_lines(path: Path):
    """(line number, parsed value) of each non-blank line of a jsonl file; a missing file or a line that is not
    JSON (or not UTF-8) is a one-line error naming the file and line."""
    if not path.is_file():
        raise UsageError(f"file not found: {path}")
    with open(path, "rb") as f:  # decoded line by line: an undecodable byte is reported at its line
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                 f"{e.start + 1})") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a jsonl file; a malformed line is an error naming the file and line."""
    rows = []
    for lineno, row in jsonl_lines(path):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in required):
            raise UsageError(f"{path}:{lineno}: expected an object with string fields {', '.join(required)}")
        rows.append(row)
    return rows
