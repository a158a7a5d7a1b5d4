"""The synthetic task in its prose surface: the pretraining corpus's own format (``tasks.corpus.web_documents``).

The prompt is the bare question, zero-shot (or after whole corpus documents: a question and its worked
solution); a solution quotes the statements it uses, then computes, then answers as Wei et al.'s (2022)
chain-of-thought exemplars do (``synthetic.prose_solution``)::

    Cat has twice as many pens as Bob. Bob has 3 more pens than Ann. Ann has 7 pens. So Bob has 7 + 3 = 10 pens.
    So Cat has 10 * 2 = 20 pens. The answer is 20.

Its answer is the number of the first ``The answer is N`` sentence; quotes are checked against the question and
computations against the graph by value (``check_prose_steps``). The pretrained start is evaluated in prose:
Havrilla et al. prompt their pretrained models in a format they can follow, and ours never saw
``Question:/Answer:``."""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from mathrl.tasks.answers import answers_equal
from mathrl.tasks.base import Grade, Problem, StepCheck, StepVerdict
from mathrl.tasks.synthetic import DEFAULT_LEVEL, SIGN, Graph, SyntheticProblems, prose_solution, statement
from mathrl.tasks.synthetic_check import (MAX_STEP_CHARS, MAX_STEPS, NAME, claim, operands_ready, sentence_spans,
                                          step_check)

PROSE_STOP_STRINGS = ("\n",)  # a corpus document is one line
_PROSE_STEP = re.compile(rf"\s*So ({NAME}) has (\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+) ([a-z]+)\s*")
_PROSE_ANSWER = re.compile(r"The answer is (\d+)\b\.?")
_PROSE_RESULT = re.compile(r"=\s*(\d{1,6}) [a-z]+\.?\s*$")


def _prose_body(completion: str) -> tuple[str, re.Match | None]:
    """The text up to the end of the first 'The answer is N.' sentence, and that match."""
    m = _PROSE_ANSWER.search(completion[:MAX_STEPS * MAX_STEP_CHARS])
    return (completion[: m.end()] if m else completion), m


def extract_prose(text: str) -> str | None:
    """The answer of a prose solution: N in its first 'The answer is N.' sentence (None without one)."""
    _, m = _prose_body(text)
    return str(int(m.group(1))) if m and len(m.group(1)) <= 6 else None


def prose_step_spans(completion: str) -> list[tuple[int, int]]:
    """Sentence spans of a prose solution up to and including its answer sentence."""
    body, _ = _prose_body(completion)
    return sentence_spans(body)


def check_prose_steps(graph: Graph, completion: str) -> StepCheck:
    """Check a prose solution's sentences (those before 'The answer is N.') against the graph.

    A quoted sentence is right when it is one of the problem's statements, word for word (quoting is reading,
    not reasoning: a quoted distractor is not an error). A computation ``So X has a op b = v item.`` is right
    when X is a needed quantity not computed before, op is X's operation, a and b are the true values of its
    operands (for + and *, in either order), v is X's value and the item is the problem's. Prose names no
    operands in its computations, so they are checked by value. Any other sentence is a wrong step."""
    body, answer = _prose_body(completion)
    sentences = [x.strip() for x in body[: answer.start() if answer else len(body)].split(".")[:MAX_STEPS]]
    statements = {statement(n, graph.item)[:-1] for n in graph.nodes.values()}
    verdicts: list[StepVerdict] = []
    done: set[str] = set()
    needed = set(graph.needed)
    for line in (x[:MAX_STEP_CHARS] for x in sentences if x):
        if _PROSE_STEP.fullmatch(line) is None:
            verdicts.append(StepVerdict(line, line in statements, "" if line in statements else
                                        "not a statement of the problem"))
        else:
            verdicts.append(_check_prose_step(line, graph, needed, done))
    return step_check(verdicts, graph, done, "" if answer is not None else "no 'The answer is N' sentence")


def _check_prose_step(line: str, graph: Graph, needed: set[str], done: set[str]) -> StepVerdict:
    x, va, sign, vb, v, item = _PROSE_STEP.fullmatch(line).groups()
    nodes = graph.nodes
    wrong = claim(line, x, nodes, needed, done)
    if wrong is not None:
        return wrong
    node = nodes[x]
    if sign != SIGN[node.op]:
        return StepVerdict(line, False, f"wrong operation for {x}")
    wrong = operands_ready(line, x, node.args, needed, done)
    if wrong is not None:
        return wrong
    if node.op == "sum":
        true_vals = [nodes[a].value for a in node.args]
    else:
        true_vals = [nodes[node.args[0]].value, node.k]
    values = [int(va), int(vb)]
    if values != true_vals and not (sign in "+*" and values == true_vals[::-1]):
        return StepVerdict(line, False, "wrong values substituted")
    if int(v) != node.value:
        return StepVerdict(line, False, "wrong arithmetic")
    if item != graph.item:
        return StepVerdict(line, False, f"counts {item}, not {graph.item}")
    return StepVerdict(line, True)


class SyntheticProseTask:
    """The synthetic GSM-like task in the prose surface (module docstring). ``level`` picks a
    ``synthetic.LEVELS`` preset; the splits are ``synthetic.SyntheticProblems``', the same as the qa task's."""

    name = "synthetic"
    surface = "prose"  # what ``tasks.task_options`` records, so that the model loads in prose again
    stop_strings = PROSE_STOP_STRINGS
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
        # the corpus's documents: a question, then (in a few of them) its worked solution
        return "".join(f"{s.question}{self.target(s)}\n" for s in shots) + problem.question

    def target(self, problem: Problem) -> str:
        return " " + prose_solution(problem.meta["graph"])

    def extract_answer(self, text: str) -> str | None:
        return extract_prose(text)

    def grade(self, problem: Problem, completion: str) -> Grade:
        answer = self.extract_answer(completion)
        steps = check_prose_steps(problem.meta["graph"], completion) if "graph" in problem.meta else None
        return Grade(answer=answer, correct=answers_equal(answer, problem.answer), steps=steps)

    def step_spans(self, text: str) -> list[tuple[int, int]]:
        return prose_step_spans(text)

    def step_results(self, text: str) -> list[str]:
        """The value each sentence states (the number after its last '=', followed by the item: '= 10 pens'),
        one entry per step span, "" where a sentence states no result (a quoted statement 'Ivy has 110 hats.',
        the answer sentence): rewards per step stay aligned with their spans. Compare with
        ``step_results(target(problem))``, the reference in the same surface."""
        out = []
        for start, end in prose_step_spans(text):
            m = _PROSE_RESULT.search(text[start:end])
            out.append(str(int(m.group(1))) if m else "")
        return out
