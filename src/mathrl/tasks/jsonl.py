"""A user's own task from jsonl files: ``--task jsonl:PATH`` with ``--question-field``, ``--answer-field`` and
an optional ``--solution-field``, graded like GSM8K (numbers; ``--extract strict`` reads ``#### N``,
``flexible`` the last number).

``PATH`` is a directory with ``train.jsonl`` and ``test.jsonl`` (``dev.jsonl`` optional), or one ``.jsonl``
file, split deterministically as SVAMP is: a row is in **test** when ``blake2b(question) mod 5 == 0``, else in
**train**. Without a ``dev.jsonl``, dev is a fixed 5% of train (``gsm8k.in_dev``). The answer field holds a
number, or a GSM8K-style solution ending in ``#### N`` (then it is also the reference solution when there is no
solution field). A row without the fields, or with an answer that is not a number, is an error naming the file,
the line and the field; nothing is read half.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mathrl.errors import UsageError
from mathrl.tasks.answers import EXTRACTIONS, normalize_number
from mathrl.tasks.base import QA_STOP_STRINGS, Problem
from mathrl.tasks.data_files import read_jsonl
from mathrl.tasks.gsm8k import GSM8KTask, in_dev, step_spans

PREFIX = "jsonl:"


def _split_of(question: str) -> str:
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % 5 == 0 else "train"


class JsonlTask:
    stop_strings = QA_STOP_STRINGS
    step_end = "\n"

    def __init__(self, path: str, question_field: str | None = None, answer_field: str | None = None,
                 solution_field: str | None = None, extract: str = "strict"):
        if extract not in EXTRACTIONS:
            raise UsageError(f"jsonl: extract must be one of {', '.join(EXTRACTIONS)}, not {extract!r}")
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"--task {PREFIX}{path}: no such file or directory")
        self.name = PREFIX + str(path)
        self.extract = extract
        self.question_field = question_field or "question"
        self.answer_field = answer_field or "answer"
        self.solution_field = solution_field
        self._cache: dict[str, list[Problem]] = {}

    def fields(self) -> dict:
        """The field options (recorded with a model, so that later commands read the file the same way)."""
        return {"question_field": self.question_field, "answer_field": self.answer_field,
                "solution_field": self.solution_field}

    def _load(self, file: Path, split: str | None) -> list[Problem]:
        required = (self.question_field, self.answer_field) + ((self.solution_field,) if self.solution_field else ())
        problems = []
        for n, row in enumerate(read_jsonl(file, ()), 1):
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
            if self.path.is_dir():
                file = self.path / f"{split}.jsonl"
                if split == "dev" and not file.is_file():
                    self._cache[split] = [p for p in self.problems("train") if in_dev(p.id)]
                else:
                    self._cache[split] = self._load(file, split)
            else:
                rows = self._cache.setdefault("all", self._load(self.path, None))
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
