"""A user's own task from files: ``--task jsonl:PATH``, ``parquet:PATH`` or ``datasets:PATH``, with
``--question-field``, ``--answer-field`` and an optional ``--solution-field``, graded like GSM8K (numbers;
``--extract strict`` reads ``#### N``, ``flexible`` the last number).

- ``jsonl:PATH`` / ``parquet:PATH``: a directory with ``train`` and ``test`` files (``.jsonl`` / ``.parquet``;
  ``dev`` optional), or one file, split deterministically as SVAMP is: a row is in **test** when
  ``blake2b(question) mod 5 == 0``, else in **train**.
- ``datasets:PATH``: what ``datasets``' ``save_to_disk`` wrote: a ``DatasetDict`` with splits ``train`` and
  ``test`` (``dev`` or ``validation`` optional), or one ``Dataset``, split like one file.

Parquet files and ``datasets`` folders are read through the optional ``datasets`` dependency
(``pip install "mathrl[data]"``; parquet by its ``pyarrow``, which writes no cache). Without a dev split, dev is a
fixed 5% of train (``gsm8k.in_dev``). The answer field holds a number, or a GSM8K-style solution ending in ``#### N``
(then it is also the reference solution when there is no solution field). A row without the fields, or with an
answer that is not a number, is an error naming the file, the row and the field; nothing is read half.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mathrl.errors import UsageError
from mathrl.tasks.answers import check_extract, normalize_number
from mathrl.tasks.base import QA_STOP_STRINGS, Problem
from mathrl.tasks.data_files import read_jsonl
from mathrl.tasks.gsm8k import GSM8KTask, in_dev, step_spans

PREFIXES = ("jsonl:", "parquet:", "datasets:")


def is_file_task(name: str) -> bool:
    """Whether task ``name`` is a user's own file (``jsonl:``, ``parquet:`` or ``datasets:`` PATH)."""
    return name.startswith(PREFIXES)


def _split_of(question: str) -> str:
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % 5 == 0 else "train"


def _datasets(what: str):
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{what} needs the datasets package: pip install \"mathrl[data]\"") from None
    datasets.disable_progress_bars()
    return datasets


def _read_parquet(file: Path) -> list[dict]:
    _datasets(f"--task parquet:{file}")  # pyarrow comes with it
    import pyarrow.parquet as pq

    if not file.is_file():
        raise UsageError(f"file not found: {file}")
    try:
        return pq.read_table(file).to_pylist()
    except Exception as e:  # noqa: BLE001 - pyarrow's errors on a broken file vary by version
        raise UsageError(f"{file}: not a readable parquet file ({str(e).splitlines()[0] if str(e) else e})") from None


def _load_from_disk(path: Path):
    datasets = _datasets(f"--task datasets:{path}")
    try:
        return datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{path}: not a folder written by datasets' save_to_disk ({str(e).splitlines()[0]})") from None


class FileTask:
    stop_strings = QA_STOP_STRINGS
    step_end = "\n"

    def __init__(self, path: str, question_field: str | None = None, answer_field: str | None = None,
                 solution_field: str | None = None, extract: str = "strict", kind: str = "jsonl"):
        check_extract(kind, extract)
        self.path, self.kind = Path(path), kind
        if not self.path.exists():
            raise UsageError(f"--task {kind}:{path}: no such file or directory")
        self.name = f"{kind}:{path}"
        self.extract = extract
        self.question_field = question_field or "question"
        self.answer_field = answer_field or "answer"
        self.solution_field = solution_field
        self._cache: dict[str, list[Problem]] = {}

    def fields(self) -> dict:
        """The field options (recorded with a model, so that later commands read the file the same way)."""
        return {"question_field": self.question_field, "answer_field": self.answer_field,
                "solution_field": self.solution_field}

    def _rows(self, split: str | None) -> tuple[list[dict], Path]:
        """(the rows of ``split``, or of the whole file or dataset for None; where they come from)."""
        if self.kind == "datasets":
            data = _load_from_disk(self.path)
            if split is None:
                return list(data), self.path
            return list(data[split]), self.path / split
        file = self.path / f"{split}.{self.kind}" if split else self.path
        return (read_jsonl(file, ()) if self.kind == "jsonl" else _read_parquet(file)), file

    def _splits(self) -> set[str] | None:
        """The splits the data comes in (None: one file or dataset, split by hash)."""
        if self.kind == "datasets":
            data = _load_from_disk(self.path)
            return set(data) if hasattr(data, "keys") else None
        if self.path.is_dir():
            return {p.stem for p in self.path.glob(f"*.{self.kind}")}
        return None

    def _load(self, split: str | None) -> list[Problem]:
        required = (self.question_field, self.answer_field) + ((self.solution_field,) if self.solution_field else ())
        rows, file = self._rows(split)
        problems = []
        for n, row in enumerate(rows, 1):
            missing = [f for f in required if f not in row]
            if missing:
                raise UsageError(f"{file}: row {n} has no field {missing[0]!r} (fields: {', '.join(sorted(row))})")
            question, answer_text = str(row[self.question_field]).strip(), str(row[self.answer_field])
            body, _, final = answer_text.rpartition("####")
            answer = normalize_number(final.strip())
            if answer is None:
                raise UsageError(f"{file}: row {n}: field {self.answer_field!r} is not a number nor ends in "
                                 f"'#### N' ({answer_text[:60]!r})")
            if self.solution_field:
                solution = str(row[self.solution_field]).strip()
                solution = solution if "####" in solution else f"{solution}\n#### {answer}"
            else:
                solution = answer_text.strip() if body.strip() else f"#### {answer}"
            problems.append(Problem(id=f"{file.stem}-{n}", question=question, solution=solution, answer=answer,
                                    difficulty=len(step_spans(solution)),
                                    meta={"split": split or _split_of(question)}))
        return problems

    def problems(self, split: str) -> list[Problem]:
        if split not in ("train", "test", "dev"):
            raise UsageError(f"unknown split {split!r} for task {self.name} (known: train, test, dev)")
        if split not in self._cache:
            splits = self._splits()
            if splits is not None:
                name = "validation" if split == "dev" and "dev" not in splits and "validation" in splits else split
                if name not in splits and split == "dev":
                    self._cache[split] = [p for p in self.problems("train") if in_dev(p.id)]
                elif name not in splits:
                    raise UsageError(f"{self.name}: no {split} split (found: {', '.join(sorted(splits)) or 'none'})")
                else:
                    self._cache[split] = self._load(name)
            else:
                rows = self._cache.setdefault("all", self._load(None))
                if split == "dev":
                    self._cache[split] = [p for p in rows if p.meta["split"] == "train" and in_dev(p.id)]
                else:
                    self._cache[split] = [p for p in rows if p.meta["split"] == split]
        return self._cache[split]

    # GSM8K's Question:/Answer: prompts, targets, numeric grading and line steps, shared as functions (the same
    # functions, not an inherited class)
    prompt = GSM8KTask.prompt
    target = GSM8KTask.target
    extract_answer = GSM8KTask.extract_answer
    grade = GSM8KTask.grade
    step_results = GSM8KTask.step_results
    step_spans = GSM8KTask.step_spans


def read_rows(path: str, solution_field: str = "solution") -> list[Problem]:
    """Every row of one jsonl file in this format (question, answer and ``solution_field`` fields), in file order
    and unsplit, as Problems with ids ``<file stem>-<row>``: how ``mathrl backtranslate``'s pairs are read back
    (``backtranslated.py``). A missing file, a line that is not JSON or a row without a field is one line naming
    the file and row."""
    if not Path(path).is_file():
        raise UsageError(f"file not found: {path}")
    return FileTask(path, solution_field=solution_field)._load(None)
