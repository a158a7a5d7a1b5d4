"""The synthetic task in its qa surface (the default): ``Question:/Answer:`` prompts, solutions of steps
``X = A op B = a op b = v.`` then ``#### N`` (``synthetic.solution_text``), graded by the number after the last
``####`` and checked step by step against the problem's graph (``check_steps``)."""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from mathrl.tasks.answers import answers_equal, extract_strict
from mathrl.tasks.base import QA_STOP_STRINGS, Grade, Problem, StepCheck, StepVerdict, qa_prompt
from mathrl.tasks.synthetic import DEFAULT_LEVEL, SIGN, Graph, Node, SyntheticProblems
from mathrl.tasks.synthetic_check import (MAX_STEP_CHARS, MAX_STEPS, NAME, claim, operands_ready, sentence_spans,
                                          step_check)

_STEP = re.compile(
    rf"\s*({NAME})\s*=\s*({NAME})\s*([-+*])\s*({NAME}|\d+)\s*=\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)\s*"
)


def _apply(sign: str, x: int, y: int) -> int:
    return x + y if sign == "+" else x - y if sign == "-" else x * y


def solution_steps(completion: str) -> list[str]:
    """The steps of a solution: the text before ``####`` cut at each '.' (numbers here have no decimals)."""
    body = completion.split("####", 1)[0]
    return [step.strip() for step in body.split(".", MAX_STEPS)[:MAX_STEPS] if step.strip()]


def check_steps(graph: Graph, completion: str) -> StepCheck:
    """Check every step of a completion against the graph; locate the first wrong step exactly.

    A step ``X = A op B = a op b = v.`` is right when X is a needed quantity not computed before, ``A op B``
    are X's true operation and operands (a sum in either order), every derived operand was computed on an
    earlier line, ``a`` and ``b`` are the true values (for + and *, in either order), and ``v`` is X's true value.
    """
    verdicts: list[StepVerdict] = []
    done: set[str] = set()
    needed = set(graph.needed)
    for step in solution_steps(completion):
        verdicts.append(_check_step(step[:MAX_STEP_CHARS], graph.nodes, needed, done))
    return step_check(verdicts, graph, done)


def _check_step(line: str, nodes: dict[str, Node], needed: set[str], done: set[str]) -> StepVerdict:
    m = _STEP.fullmatch(line)
    if m is None:
        return StepVerdict(line, False, "malformed step")
    x, a, sign, b, va, sign2, vb, v = m.groups()
    wrong = claim(line, x, nodes, needed, done)
    if wrong is not None:
        return wrong
    node = nodes[x]
    operands = (a, b)
    if node.op == "sum":
        right = sign == "+" and set(operands) == set(node.args) and len(set(operands)) == 2
    else:
        right = sign == SIGN[node.op] and a == node.args[0] and b == str(node.k)
    if not right:
        return StepVerdict(line, False, f"wrong operands for {x}")
    wrong = operands_ready(line, x, operands, needed, done)
    if wrong is not None:
        return wrong
    true_vals = [nodes[o].value if o in nodes else int(o) for o in operands]
    values = [int(va), int(vb)]
    # "C = A + B = b + a" and "C = A * 2 = 2 * a" are true chains of equalities (+ and * commute), so they count
    # as right; for - the values must follow the written operands ("A - 3 = 3 - a" is false)
    commuted = sign in "+*" and values == true_vals[::-1]
    if sign2 != sign or (values != true_vals and not commuted):
        return StepVerdict(line, False, "wrong values substituted")
    if int(v) != _apply(sign, true_vals[0], true_vals[1]):
        return StepVerdict(line, False, "wrong arithmetic")
    return StepVerdict(line, True)


class SyntheticQATask:
    """The synthetic GSM-like task in the qa surface (module docstring). ``level`` picks a ``synthetic.LEVELS``
    preset; the splits are ``synthetic.SyntheticProblems``'."""

    name = "synthetic"
    surface = "qa"  # what ``tasks.task_options`` records (nothing, for the default surface)
    stop_strings = QA_STOP_STRINGS
    step_end = "."  # the text that ends a step (return-conditioned sampling marks steps after it)

    def __init__(self, level: int = DEFAULT_LEVEL, seed: int = 0, train_size: int = 20000, test_size: int = 1000,
                 dev_size: int = 500):
        self.data = SyntheticProblems(level, seed, train_size, test_size, dev_size)
        self.level, self.seed = level, seed

    def problems(self, split: str) -> list[Problem]:
        return self.data.problems(split)

    def stream(self, split: str = "train", seed: int | None = None) -> Iterator[Problem]:
        return self.data.stream(split, seed)

    def prompt(self, problem: Problem, shots: Sequence[Problem] = ()) -> str:
        return qa_prompt(problem.question, [(s.question, self.target(s).strip()) for s in shots])

    def target(self, problem: Problem) -> str:
        return " " + problem.solution

    def extract_answer(self, text: str) -> str | None:
        return extract_strict(text)

    def grade(self, problem: Problem, completion: str) -> Grade:
        answer = self.extract_answer(completion)
        steps = check_steps(problem.meta["graph"], completion) if "graph" in problem.meta else None
        return Grade(answer=answer, correct=answers_equal(answer, problem.answer), steps=steps)

    def step_spans(self, text: str) -> list[tuple[int, int]]:
        return sentence_spans(text)

    def step_results(self, text: str) -> list[str]:
        """The value each step states (the number after its last '='), in order."""
        out = []
        for line in solution_steps(text):
            tail = line.rsplit("=", 1)[-1].strip().rstrip(".").strip()
            # isdecimal, not isdigit: superscripts like "²" are digits to isdigit() but int() rejects them.
            if tail.isdecimal() and len(tail) <= 6:
                out.append(str(int(tail)))
        return out
