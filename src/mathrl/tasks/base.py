"""The Task interface: the one place that turns text into verdicts.

Every algorithm, reward and metric in mathrl talks to a task through this interface and never parses answers
itself (nanochat's ``tasks/gsm8k.py`` owns its reward the same way). A task provides:

- ``problems(split)``: the problems of a split, as ``Problem`` records;
- ``prompt(problem, shots)``: the text the model continues (zero-shot, or few-shot with solved examples);
- ``target(problem)``: the completion a perfect model writes (what SFT trains on);
- ``grade(problem, completion)``: extracted answer, correctness and, where the task can, a step check;
- ``step_results(text)``: the intermediate results a solution states, in order (for dense rewards); a task
  whose steps need not state a result (synthetic prose) gives "" for those, one entry per ``step_spans`` span;
- ``step_spans(text)``: the character spans of a solution's steps (for step-level rewards and labels).

Tasks are plain classes that satisfy the ``Task`` protocol; they share functions (``answers.py``,
``calculator.py``), not base classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass(frozen=True)
class Problem:
    """One math word problem.

    ``answer`` is the normalised reference answer (see ``answers.normalize_number``); ``solution`` the reference
    solution text, ending with ``#### <answer>``; ``difficulty`` a small integer whose meaning the task documents
    (number of reasoning steps for GSM8K and the synthetic task); ``meta`` anything else the task keeps.
    """

    id: str
    question: str
    solution: str
    answer: str
    difficulty: int = 0
    meta: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class StepVerdict:
    """The verdict on one step of a solution. ``reason`` is empty when ``ok``."""

    text: str
    ok: bool
    reason: str = ""


@dataclass(frozen=True)
class StepCheck:
    """A process check of a whole solution.

    ``first_error`` is the index of the first wrong step, ``len(steps)`` when the steps are right but a needed
    step is missing, and None when the solution is process-correct. ``n_needed`` is the number of steps a
    minimal correct solution has.
    """

    steps: tuple[StepVerdict, ...]
    n_needed: int
    first_error: int | None
    reason: str = ""

    @property
    def all_ok(self) -> bool:
        return self.first_error is None

    @property
    def n_correct(self) -> int:
        return sum(s.ok for s in self.steps)


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion.

    ``answer`` is the extracted, normalised answer (None: no answer found); ``correct`` whether it equals the
    reference; ``steps`` the step check where the task has one (None otherwise). ``verified`` is the stricter
    notion: the answer is right *and* every step checks out (equal to ``correct`` for tasks without a check).
    """

    answer: str | None
    correct: bool
    steps: StepCheck | None = None

    @property
    def verified(self) -> bool:
        return self.correct and (self.steps is None or self.steps.all_ok)


class Task(Protocol):
    """What every task provides. See the module docstring."""

    name: str
    stop_strings: tuple[str, ...]
    step_end: str

    def problems(self, split: str) -> list[Problem]: ...

    def prompt(self, problem: Problem, shots: Sequence[Problem] = ()) -> str: ...

    def target(self, problem: Problem) -> str: ...

    def extract_answer(self, text: str) -> str | None: ...

    def grade(self, problem: Problem, completion: str) -> Grade: ...

    def step_results(self, text: str) -> list[str]: ...

    def step_spans(self, text: str) -> list[tuple[int, int]]: ...


def qa_prompt(question: str, shots: Sequence[tuple[str, str]] = ()) -> str:
    """The prompt format shared by our tasks: few-shot ``Question:/Answer:`` blocks, then the open question.

    The completion starts right after ``"Answer:"``; targets start with a space.
    """
    blocks = [f"Question: {q}\nAnswer: {a}\n\n" for q, a in shots]
    return "".join(blocks) + f"Question: {question}\nAnswer:"


# Shared by tasks: a completion stops at the next few-shot block a model starts to write.
QA_STOP_STRINGS = ("\n\nQuestion:",)


def reverse_prompt(solution: str) -> str:
    """The prompt of a *reverse* model, which writes the question a solution answers (backtranslation: Sennrich et
    al. 2016 train a target-to-source model and translate target-side text back; here solution -> question).

    The completion starts right after ``"Question:"`` with a space, as ``qa_prompt``'s does after ``"Answer:"``, and
    ends with the model's EOS."""
    return f"Solution: {solution.strip()}\nQuestion:"


# A reverse model's completion stops at the next block it starts to write (as QA_STOP_STRINGS for the forward one).
REVERSE_STOP_STRINGS = ("\n\nSolution:", "\nSolution:")
