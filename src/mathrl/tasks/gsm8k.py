"""GSM8K (Cobbe et al. 2021) in its official jsonl format: ``{"question": ..., "answer": ...}`` (a local copy,
else the hub's openai/gsm8k "main", the same rows, through ``datasets``: ``data_files.py``).

Reference solutions carry calculator annotations ``<<expr=result>>`` and end with ``#### <answer>``. Answer
extraction follows lm-evaluation-harness's GSM8K task: "strict" reads the number after the last ``####``
(``strict-match``), "flexible" the last number in the text (``flexible-extract``); both normalise commas, ``$``,
a trailing ``.`` and ``5.0 == 5`` (``answers.normalize_number``).

GSM8K has no exact process check: ``grade`` returns ``steps=None``. ``step_results`` lists the intermediate
results a solution states (annotation results, else the last number of each line); the dense reward matches
them against the reference's (Havrilla et al. 2024, section 3: "intermediate steps matched to the reference").
``difficulty`` is the number of solution lines before the answer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from mathrl.errors import UsageError
from mathrl.tasks.answers import check_extract, extract_answer, extract_flexible, grade_text, normalize_number
from mathrl.tasks.base import QA_STOP_STRINGS, Grade, Problem, qa_prompt
from mathrl.tasks.calculator import annotations
from mathrl.tasks.data_files import HUB, find_data_dir, hub_rows, read_jsonl

MAX_STEP_LINES = 64


def solution_lines(text: str) -> list[str]:
    """The non-empty lines of a solution before its ``####`` answer line (at most MAX_STEP_LINES)."""
    body = text.split("####", 1)[0]
    return [ln for ln in body.split("\n", MAX_STEP_LINES)[:MAX_STEP_LINES] if ln.strip()]


def step_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the solution lines before the ``####`` line (at most MAX_STEP_LINES)."""
    body_end = text.find("####")
    body_end = len(text) if body_end < 0 else body_end
    spans, start = [], 0
    while start < body_end and len(spans) < MAX_STEP_LINES:
        end = text.find("\n", start, body_end)
        end = body_end if end < 0 else end
        if text[start:end].strip():
            spans.append((start, end))
        start = end + 1
    return spans


def step_results(text: str) -> list[str]:
    """Normalised intermediate results: each line's last calculator result, else its last number."""
    out = []
    for line in solution_lines(text):
        results = [r for _, r in annotations(line[:1000])]
        value = normalize_number(results[-1]) if results else None
        if value is None:
            value = extract_flexible(line[:1000])
        if value is not None:
            out.append(value)
    return out


def in_dev(problem_id: str) -> bool:
    """The dev subset of a train split: blake2b(id) mod 20 == 0 (5%)."""
    digest = hashlib.blake2b(problem_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % 20 == 0


class GSM8KTask:
    stop_strings = QA_STOP_STRINGS
    step_end = "\n"  # the text that ends a step (return-conditioned sampling marks steps after it)

    def __init__(self, data_dir: str | None = None, extract: str = "strict"):
        check_extract("gsm8k", extract)
        self.name = "gsm8k"
        self.extract = extract
        self.data_dir = data_dir
        self._cache: dict[str, list[Problem]] = {}
        self._hub: dict[str, list[dict]] | None = None  # the hub copy's rows per split, when there is no local one

    def problems(self, split: str) -> list[Problem]:
        """train / test: the official files; dev: a fixed 5% of train (``in_dev``), for monitoring. Commands that
        train on train and monitor on dev leave the dev problems out of training."""
        if split not in ("train", "test", "dev"):
            raise UsageError(f"unknown split {split!r} for task gsm8k (known: train, test, dev)")
        if split == "dev":
            return [p for p in self.problems("train") if in_dev(p.id)]
        if split not in self._cache:
            directory = find_data_dir("gsm8k", self.data_dir, f"{split}.jsonl")
            if directory is not None:
                self._cache[split] = load_gsm8k(directory / f"{split}.jsonl", split)
            else:  # no local copy: the published one (openai/gsm8k, the same rows), through datasets' cache
                if self._hub is None:
                    self._hub = hub_rows("gsm8k")
                rows = self._hub
                if split not in rows:
                    raise UsageError(f"{HUB['gsm8k'][0]} has no {split} split (found: {', '.join(rows)})")
                self._cache[split] = gsm8k_problems(rows[split], split, HUB["gsm8k"][0])
        return self._cache[split]

    def prompt(self, problem: Problem, shots: Sequence[Problem] = ()) -> str:
        return qa_prompt(problem.question, [(s.question, s.solution) for s in shots])

    def target(self, problem: Problem) -> str:
        return " " + problem.solution

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text, self.extract)

    def grade(self, problem: Problem, completion: str) -> Grade:
        answer, correct = grade_text(completion, problem.answer, self.extract)
        return Grade(answer=answer, correct=correct)

    def step_results(self, text: str) -> list[str]:
        return step_results(text)

    def step_spans(self, text: str) -> list[tuple[int, int]]:
        return step_spans(text)


def load_gsm8k(path: Path, split: str) -> list[Problem]:
    return gsm8k_problems(read_jsonl(path, ("question", "answer")), split, str(path))


def gsm8k_problems(rows: list[dict], split: str, source: str) -> list[Problem]:
    """Problems from GSM8K rows ``{"question", "answer"}`` (the jsonl's, or the hub copy's); ``source`` names
    where they come from in errors."""
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise UsageError(f"{source}: row {i + 1} lacks the string fields question and answer")
        solution = row["answer"].strip()
        answer = extract_answer(solution, "strict")
        if answer is None:
            raise UsageError(f"{source}: row {i + 1} has no '#### <number>' answer line")
        problems.append(Problem(
            id=f"gsm8k-{split}-{i}",
            question=row["question"].strip(),
            solution=solution,
            answer=answer,
            difficulty=len(solution_lines(solution)),
        ))
    return problems
