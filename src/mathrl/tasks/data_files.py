"""Finding and reading the real data sets (GSM8K, SVAMP) from local files.

Nothing is downloaded unless a user asks for the hub explicitly. Lookup order for a data directory: the task's
``data_dir`` option, then ``$MATHRL_DATA/<task>``, then ``./data/<task>`` and ``../shared/data/<task>`` relative
to the working directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mathrl.errors import UsageError


def find_data_dir(task: str, data_dir: str | os.PathLike | None, must_contain: str) -> Path:
    if data_dir is not None:
        candidates = [Path(data_dir)]
    else:
        candidates = []
        if os.environ.get("MATHRL_DATA"):
            candidates.append(Path(os.environ["MATHRL_DATA"]) / task)
        candidates += [Path("data") / task, Path("..") / "shared" / "data" / task]
    for c in candidates:
        if (c / must_contain).is_file():
            return c
    looked = ", ".join(str(c) for c in candidates)
    raise UsageError(f"{task} data not found ({must_contain} in: {looked}); pass data_dir= or set MATHRL_DATA")


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of a jsonl file; a malformed line is an error naming the file and line."""
    if not path.is_file():
        raise UsageError(f"file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in required):
                raise UsageError(f"{path}:{lineno}: expected an object with string fields {', '.join(required)}")
            rows.append(row)
    return rows
