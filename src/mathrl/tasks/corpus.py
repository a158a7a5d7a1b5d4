"""A "web-like" pretraining corpus for the embedded default (the pretrained-but-not-fine-tuned start of the
paper): problem texts of the synthetic task without solutions, arithmetic drill lines over the task's operations,
ledger lists that repeat their statements, and a stated fraction of worked solutions in the prose surface
(``synthetic.prose_solution``, not the task's step format). The tasks themselves (prompts, grading, step checks)
are tasks/synthetic_qa.py and tasks/synthetic_prose.py; the mix the pretrained start uses is
``algorithms.pretrain.Config``'s."""

from __future__ import annotations

import random
from typing import Iterator

from mathrl.tasks.synthetic import ITEMS, LEVELS, NAMES, Level, generate_problem, is_test_text, prose_solution


def _drill(rng: random.Random, level: Level) -> str:
    """A line of arithmetic facts, the operations of the task's steps over its number range, as a worksheet
    would print them: '417 + 3 = 420. 275 * 2 = 550. 416 + 496 = 912. ...'. The four kinds come equally often:
    adding or taking away a constant up to ``k_max``, doubling or tripling, and the sum of two quantities."""
    facts = []
    vmax = level.value_max
    for _ in range(rng.randint(4, 10)):
        kind = rng.choice(("add", "sub", "mul", "sum"))
        if kind == "add":
            b = rng.randint(1, level.k_max)
            a = rng.randint(0, vmax - b)
            facts.append(f"{a} + {b} = {a + b}.")
        elif kind == "sub":
            b = rng.randint(1, level.k_max)
            a = rng.randint(b, vmax)
            facts.append(f"{a} - {b} = {a - b}.")
        elif kind == "mul":
            m = rng.choice((2, 3))
            a = rng.randint(0, vmax // m)
            facts.append(f"{a} * {m} = {a * m}.")
        else:
            a = rng.randint(0, vmax)
            b = rng.randint(0, vmax - a)
            a, b = (a, b) if rng.random() < 0.5 else (b, a)
            facts.append(f"{a} + {b} = {a + b}.")
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


def web_documents(level: int | Level, seed: int, solution_fraction: float = 0.10, drill_fraction: float = 0.45,
                  recall_fraction: float = 0.15) -> Iterator[str]:
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
            yield question + " " + prose_solution(graph)
        elif rng.random() < 0.5:
            yield question
        else:  # statements only: web text rarely asks the question it sets up
            yield question.rsplit(" How many ", 1)[0]
