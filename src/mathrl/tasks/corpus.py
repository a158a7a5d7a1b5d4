"""A "web-like" pretraining corpus for the embedded default (the pretrained-but-not-fine-tuned start of the
paper): problem texts of the synthetic task without solutions, arithmetic drill lines, ledger lists that repeat
their statements, and a small fraction of worked solutions in the prose surface. The task itself (problems,
grading, step checks) is tasks/synthetic.py."""

from __future__ import annotations

import random
from typing import Iterator

from mathrl.tasks.synthetic import ITEMS, LEVELS, NAMES, Level, _item_of, generate_problem, is_test_text, prose_solution


def _drill(rng: random.Random, level: Level) -> str:
    """A line of arithmetic facts over the task's number range: '17 + 5 = 22. 8 * 3 = 24. ...'."""
    facts = []
    for _ in range(rng.randint(4, 10)):
        op = rng.choice("+-*")
        if op == "+":
            a, b = rng.randint(0, level.value_max), rng.randint(0, level.value_max)
            if a + b > level.value_max:
                a, b = a // 2, b // 2
            facts.append(f"{a} + {b} = {a + b}.")
        elif op == "-":
            a = rng.randint(0, level.value_max)
            b = rng.randint(0, a)
            facts.append(f"{a} - {b} = {a - b}.")
        else:
            m = rng.choice((2, 3))
            a = rng.randint(0, level.value_max // m)
            facts.append(f"{a} * {m} = {a * m}.")
    return " ".join(facts)


def _recall(rng: random.Random, level: Level) -> str:
    """Statements about named quantities, then the same statements again in another order, as a ledger would
    repeat them: the repeats are predictable only by looking the name up earlier in the text, the retrieval
    that solving the task needs (it makes the copying heads form early in pretraining)."""
    item = rng.choice(ITEMS)
    names = rng.sample(NAMES, rng.randint(3, 7))
    facts = []
    for i, name in enumerate(names):
        if i and rng.random() < 0.5:
            other = rng.choice(names[:i])
            facts.append(f"{name} has {rng.randint(1, level.k_max)} more {item} than {other}.")
        else:
            facts.append(f"{name} has {rng.randint(1, level.leaf_max)} {item}.")
    again = facts[:]
    rng.shuffle(again)
    return " ".join(facts) + " Again: " + " ".join(again)


def web_documents(level: int | Level, seed: int, solution_fraction: float = 0.03, drill_fraction: float = 0.35,
                  recall_fraction: float = 0.0) -> Iterator[str]:
    """An endless stream of pretraining documents: problem texts without solutions, arithmetic drills, ledger
    lists that repeat their statements (``_recall``), and a small fraction of worked solutions in a prose format
    (never the task's step format). Test-pool problems are excluded, so pretraining never sees a test question."""
    lv = LEVELS[level] if isinstance(level, int) else level
    rng = random.Random(f"{seed}/web")
    while True:
        u = rng.random()
        if u < drill_fraction:
            yield _drill(rng, lv)
            continue
        if u < drill_fraction + recall_fraction:
            yield _recall(rng, lv)
            continue
        u -= recall_fraction
        question, graph, order = generate_problem(rng, lv)
        if is_test_text(question):
            continue
        if u < drill_fraction + solution_fraction:
            item = _item_of(question)
            yield question + " " + prose_solution(graph, item)
        elif rng.random() < 0.5:
            yield question
        else:  # statements only: web text rarely asks the question it sets up
            yield question.rsplit(" How many ", 1)[0]
