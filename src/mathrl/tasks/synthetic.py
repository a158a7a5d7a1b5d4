"""The embedded default task: GSM-like word problems generated from random dependency graphs.

Each problem is a chain of named quantities of one item, with distractors, and a question about the last one::

    Ann has 7 pens. Bob has 3 more pens than Ann. Cat has twice as many pens as Bob. Dan has 5 pens.
    Eve has as many pens as Cat and Dan together. How many pens does Eve have?

and its reference solution has one step per derived quantity, in topological order, then the GSM8K answer line::

    Bob = Ann + 3 = 7 + 3 = 10. Cat = Bob * 2 = 10 * 2 = 20. Eve = Cat + Dan = 20 + 5 = 25.
    #### 25

The design follows iGSM (Ye et al. 2024, arXiv 2407.20311) at toy scale, as calibrated in
shared/notes/synthetic-task.md: a closed vocabulary (template words, ~30 names, digits) keeps problems at
~60-130 tokens; answers have up to three digits so that lucky guesses are rare (``DEFAULT_LEVEL``); and because every problem keeps its
graph, ``check_steps`` verifies a solution step by step exactly (which step is the first wrong one, and why),
which no GSM8K grader can do.

Generation (per problem, from a seeded ``random.Random``):

1. a leaf ``A`` with a value in 1..leaf_max;
2. ``n_ops`` derived quantities, each from the previous one (so all are needed): ``+k``, ``-k``, ``*2``/``*3``,
   or the sum with an earlier quantity or a new leaf; a draw whose value leaves 0..value_max is redrawn;
3. ``n_distract`` unneeded statements about fresh names (a leaf, or "k more than" a chain quantity);
4. statements in generation order (distractors after what they mention), or shuffled with probability
   ``shuffle``; the question asks for the last derived quantity.

Splits: a problem belongs to the test pool when a hash of its question text falls in one tenth of the hash
space, so train and test (and the pretraining corpus, which draws from the train side) are disjoint by
construction. ``difficulty`` is ``n_ops``.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Iterator, Sequence

from mathrl.tasks.answers import answers_equal, extract_strict
from mathrl.tasks.base import QA_STOP_STRINGS, Grade, Problem, StepCheck, StepVerdict, qa_prompt

NAMES = (
    "Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo", "Max", "Ned", "Oli",
    "Pam", "Ray", "Sue", "Tom", "Uma", "Val", "Wes", "Xia", "Yan", "Zoe", "Amy", "Ben", "Cy", "Dot", "Eli",
)
ITEMS = ("pens", "apples", "coins", "books", "cards", "shells", "stamps", "marbles", "cups", "hats")
OPS = ("add", "sub", "mul", "sum")


@dataclass(frozen=True)
class Level:
    """Difficulty knobs. Ranges are inclusive."""

    n_ops: tuple[int, int]
    n_distract: tuple[int, int]
    shuffle: float = 0.0  # probability that statements are in random (not topological) order
    ops: tuple[str, ...] = OPS
    leaf_max: int = 20
    value_max: int = 99
    k_max: int = 20  # constants in "k more/fewer"
    derived_distractors: float = 0.5  # probability that a distractor is "k more than" a quantity (else a leaf)
    n_ops_weights: tuple[float, ...] = ()  # relative frequency of n_ops[0], n_ops[0]+1, ...; empty: uniform


# One integer picks a preset. Level 3 ~ the pilot's "G-long", level 4 ~ its "P5" (shared/notes/synthetic-task.md).
LEVELS: dict[int, Level] = {
    0: Level(n_ops=(1, 2), n_distract=(0, 1), n_ops_weights=(2, 1)),
    1: Level(n_ops=(1, 2), n_distract=(0, 1), leaf_max=300, k_max=50, value_max=999),
    2: Level(n_ops=(1, 3), n_distract=(0, 2)),
    3: Level(n_ops=(1, 4), n_distract=(0, 2)),
    4: Level(n_ops=(1, 5), n_distract=(0, 3)),
    5: Level(n_ops=(2, 6), n_distract=(1, 4), shuffle=0.3),
    6: Level(n_ops=(3, 8), n_distract=(2, 5), shuffle=1.0),
}

# The embedded default, level 1 since 2026-12-01 (issue 22): three-digit answers (leaves <= 300, constants <= 50,
# values <= 999) so that guessing pays little: a question-blind guesser drawing from the train answers' frequencies
# reaches pass@96 ~0.14 (with values <= 99 it reached 0.82, above any model's answer-only pass@96 was worth), and
# one- and two-step problems equally often, so that the dense reward (steps matched to the reference) differs from
# the sparse one on half of the problems. Level 0 is the former default (values <= 99, one-step problems twice as
# often), kept to reproduce results measured before; docs/results.md has both calibrations.
DEFAULT_LEVEL = 1

TEST_BUCKETS = 10  # one hash bucket in TEST_BUCKETS is the test pool


@dataclass(frozen=True)
class Node:
    """A quantity. ``op`` is leaf/add/sub/mul/sum; ``args`` the parent names; ``k`` the constant (add/sub/mul)."""

    name: str
    op: str
    args: tuple[str, ...]
    k: int
    value: int


@dataclass(frozen=True)
class Graph:
    """The dependency graph behind a problem; ``needed`` lists the derived quantities of a minimal solution."""

    nodes: dict[str, Node]
    needed: tuple[str, ...]
    query: str
    item: str = ""  # what every quantity counts ("pens"): statements and prose solutions name it


def _statement(node: Node, item: str) -> str:
    a = node.args
    if node.op == "leaf":
        return f"{node.name} has {node.value} {item}."
    if node.op == "add":
        return f"{node.name} has {node.k} more {item} than {a[0]}."
    if node.op == "sub":
        return f"{node.name} has {node.k} fewer {item} than {a[0]}."
    if node.op == "mul":
        times = "twice" if node.k == 2 else "three times"
        return f"{node.name} has {times} as many {item} as {a[0]}."
    return f"{node.name} has as many {item} as {a[0]} and {a[1]} together."


def _step(node: Node, nodes: dict[str, Node]) -> str:
    a = node.args
    if node.op == "sum":
        x, y = nodes[a[0]].value, nodes[a[1]].value
        return f"{node.name} = {a[0]} + {a[1]} = {x} + {y} = {node.value}."
    sign = {"add": "+", "sub": "-", "mul": "*"}[node.op]
    x = nodes[a[0]].value
    return f"{node.name} = {a[0]} {sign} {node.k} = {x} {sign} {node.k} = {node.value}."


def solution_text(graph: Graph) -> str:
    steps = [_step(graph.nodes[n], graph.nodes) for n in graph.needed]
    # Steps share one line (a name after a newline would be a different token than after a space, which a tiny
    # model would have to learn twice); the answer line follows GSM8K.
    return " ".join(steps) + f"\n#### {graph.nodes[graph.query].value}"


def _derive(rng: random.Random, level: Level, name: str, prev: Node, earlier: list[Node], fresh) -> list[Node] | None:
    """Draw the derived node ``name`` from ``prev``; returns [new leaf?, node] or None if out of range."""
    op = rng.choice(level.ops)
    if op == "add":
        k = rng.randint(1, level.k_max)
        return [Node(name, "add", (prev.name,), k, prev.value + k)] if prev.value + k <= level.value_max else None
    if op == "sub":
        k = rng.randint(1, level.k_max)
        return [Node(name, "sub", (prev.name,), k, prev.value - k)] if prev.value - k >= 0 else None
    if op == "mul":
        k = rng.choice((2, 3))
        return [Node(name, "mul", (prev.name,), k, prev.value * k)] if prev.value * k <= level.value_max else None
    # sum: with an earlier quantity (half the time, when there is one) or with a new leaf
    if len(earlier) > 1 and rng.random() < 0.5:
        other, new_leaf = rng.choice(earlier[:-1]), False
    else:
        other, new_leaf = Node("", "leaf", (), 0, rng.randint(1, level.leaf_max)), True
    value = prev.value + other.value
    if value > level.value_max:
        return None
    if new_leaf:  # named only now, so that a rejected draw does not use up a name
        other = Node(fresh(), "leaf", (), 0, other.value)
    args = (prev.name, other.name) if rng.random() < 0.5 else (other.name, prev.name)
    node = Node(name, "sum", args, 0, value)
    return [other, node] if new_leaf else [node]


def generate_problem(rng: random.Random, level: Level) -> tuple[str, Graph, list[Node]]:
    """One random problem: (question text, graph, statements in the order they are written)."""
    if level.n_ops_weights:
        n_ops = rng.choices(range(level.n_ops[0], level.n_ops[1] + 1), weights=level.n_ops_weights)[0]
    else:
        n_ops = rng.randint(*level.n_ops)
    n_distract = rng.randint(*level.n_distract)
    names = iter(rng.sample(NAMES, len(NAMES)))
    fresh = lambda: next(names)  # noqa: E731 - a name generator shared with _derive
    item = rng.choice(ITEMS)

    root = Node(fresh(), "leaf", (), 0, rng.randint(1, level.leaf_max))
    order: list[Node] = [root]  # statements, in generation (topological) order
    chain: list[Node] = [root]
    for _ in range(n_ops):
        name = fresh()
        for _attempt in range(20):
            drawn = _derive(rng, level, name, chain[-1], chain, fresh)
            if drawn is not None:
                break
        else:  # no operation fits (e.g. value_max too small): fall back to adding the smallest constant
            prev = chain[-1]
            drawn = [Node(name, "sub", (prev.name,), 1, prev.value - 1)] if prev.value > 0 else [
                Node(name, "add", (prev.name,), 1, prev.value + 1)]
        order.extend(drawn)
        chain.append(drawn[-1])

    for _ in range(n_distract):
        name = fresh()
        if rng.random() >= level.derived_distractors:
            node = Node(name, "leaf", (), 0, rng.randint(1, level.leaf_max))
            order.insert(rng.randint(0, len(order)), node)
        else:
            parent_pos = rng.randrange(len(order))
            parent = order[parent_pos]
            k = rng.randint(1, level.k_max)
            if parent.value + k > level.value_max:
                node = Node(name, "leaf", (), 0, rng.randint(1, level.leaf_max))
            else:
                node = Node(name, "add", (parent.name,), k, parent.value + k)
            order.insert(rng.randint(parent_pos + 1, len(order)), node)

    if level.shuffle and rng.random() < level.shuffle:
        rng.shuffle(order)

    nodes = {n.name: n for n in order}
    needed = tuple(n.name for n in chain[1:])
    graph = Graph(nodes=nodes, needed=needed, query=chain[-1].name, item=item)
    question = " ".join(_statement(n, item) for n in order) + f" How many {item} does {graph.query} have?"
    return question, graph, order


def is_test_text(question: str) -> bool:
    """True when a question belongs to the test pool (a fixed tenth of the hash space)."""
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % TEST_BUCKETS == 0


def iter_problems(level: int | Level, seed: int, split: str, id_prefix: str = "synthetic") -> Iterator[Problem]:
    """An endless, deterministic stream of problems of one split ("train" or "test")."""
    lv = LEVELS[level] if isinstance(level, int) else level
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} (expected 'train' or 'test')")
    want_test = split == "test"
    rng = random.Random(f"{seed}/{split}")
    i = 0
    while True:
        question, graph, _ = generate_problem(rng, lv)
        if is_test_text(question) != want_test:
            continue
        yield Problem(
            id=f"{id_prefix}-{split}-{i}",
            question=question,
            solution=solution_text(graph),
            answer=str(graph.nodes[graph.query].value),
            difficulty=len(graph.needed),
            meta={"graph": graph},
        )
        i += 1


# ----------------------------------------------------------------------------------------------------------
# Step checking

_NAME = r"[A-Z][a-z]+"
_STEP = re.compile(
    rf"\s*({_NAME})\s*=\s*({_NAME})\s*([-+*])\s*({_NAME}|\d+)\s*=\s*(\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+)\s*"
)
_SIGN = {"add": "+", "sub": "-", "mul": "*", "sum": "+"}
MAX_STEPS = 64  # a solution longer than this is checked on its first steps only (and is then wrong)
MAX_STEP_CHARS = 200


def _apply(sign: str, x: int, y: int) -> int:
    return x + y if sign == "+" else x - y if sign == "-" else x * y


def step_spans(completion: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the steps (what ``solution_steps`` returns), each end just past its '.'
    (or at the end of the body for an unterminated last step)."""
    body_end = completion.find("####")
    body_end = len(completion) if body_end < 0 else body_end
    spans, start = [], 0
    while start < body_end and len(spans) < MAX_STEPS:
        dot = completion.find(".", start, body_end)
        end = body_end if dot < 0 else dot + 1
        if completion[start:end].strip(" .\n"):
            spans.append((start, end))
        start = end
    return spans


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
    nodes = graph.nodes
    for step in solution_steps(completion):
        verdicts.append(_check_step(step[:MAX_STEP_CHARS], nodes, needed, done))
    return _step_check(verdicts, graph, done)


def _step_check(verdicts: list[StepVerdict], graph: Graph, done: set[str], final_error: str = "") -> StepCheck:
    """The first wrong step, else the first needed quantity no step computed, else ``final_error`` (a reason
    found after the steps), as a StepCheck."""
    first_error = next((i for i, v in enumerate(verdicts) if not v.ok), None)
    reason = verdicts[first_error].reason if first_error is not None else ""
    if first_error is None:
        missing = [n for n in graph.needed if n not in done]
        if missing:
            first_error, reason = len(verdicts), f"missing step for {missing[0]}"
        elif final_error:
            first_error, reason = len(verdicts), final_error
    return StepCheck(steps=tuple(verdicts), n_needed=len(graph.needed), first_error=first_error, reason=reason)


def _claim(line: str, x: str, nodes: dict[str, Node], needed: set[str], done: set[str]) -> StepVerdict | None:
    """A step computing quantity ``x``: wrong (a verdict) if x is unknown, unneeded or computed before; else None,
    and x is marked done."""
    if x not in nodes:
        return StepVerdict(line, False, f"unknown quantity {x}")
    if x not in needed:
        return StepVerdict(line, False, f"unneeded quantity {x}")
    if x in done:
        return StepVerdict(line, False, f"{x} computed twice")
    done.add(x)
    return None


def _check_step(line: str, nodes: dict[str, Node], needed: set[str], done: set[str]) -> StepVerdict:
    m = _STEP.fullmatch(line)
    if m is None:
        return StepVerdict(line, False, "malformed step")
    x, a, sign, b, va, sign2, vb, v = m.groups()
    wrong = _claim(line, x, nodes, needed, done)
    if wrong is not None:
        return wrong
    node = nodes[x]
    operands = (a, b)
    if node.op == "sum":
        right = sign == "+" and set(operands) == set(node.args) and len(set(operands)) == 2
    else:
        right = sign == _SIGN[node.op] and a == node.args[0] and b == str(node.k)
    if not right:
        return StepVerdict(line, False, f"wrong operands for {x}")
    for name in operands:
        if name in needed and name not in done - {x}:
            return StepVerdict(line, False, f"uses {name} before computing it")
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


# Prose solutions (the pretraining corpus's format, ``prose_solution``): the statements a solution rests on,
# quoted from the question, then the computations, then the answer sentence of Wei et al.'s chain-of-thought
# exemplars:
#   "Cat has twice as many pens as Bob. Bob has 3 more pens than Ann. Ann has 7 pens. So Bob has 7 + 3 = 10 pens.
#    So Cat has 10 * 2 = 20 pens. The answer is 20."
SURFACES = ("qa", "prose")
PROSE_STOP_STRINGS = ("\n",)  # a corpus document is one line
_PROSE_STEP = re.compile(rf"\s*So ({_NAME}) has (\d+)\s*([-+*])\s*(\d+)\s*=\s*(\d+) ([a-z]+)\s*")
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
    return step_spans(body)


def check_prose_steps(graph: Graph, completion: str) -> StepCheck:
    """Check a prose solution's sentences (those before 'The answer is N.') against the graph.

    A quoted sentence is right when it is one of the problem's statements, word for word (quoting is reading,
    not reasoning: a quoted distractor is not an error). A computation ``So X has a op b = v item.`` is right
    when X is a needed quantity not computed before, op is X's operation, a and b are the true values of its
    operands (for + and *, in either order), v is X's value and the item is the problem's. Prose names no
    operands in its computations, so they are checked by value. Any other sentence is a wrong step."""
    body, answer = _prose_body(completion)
    sentences = [x.strip() for x in body[: answer.start() if answer else len(body)].split(".")[:MAX_STEPS]]
    statements = {_statement(n, graph.item)[:-1] for n in graph.nodes.values()}
    verdicts: list[StepVerdict] = []
    done: set[str] = set()
    needed = set(graph.needed)
    for line in (x[:MAX_STEP_CHARS] for x in sentences if x):
        if _PROSE_STEP.fullmatch(line) is None:
            verdicts.append(StepVerdict(line, line in statements, "" if line in statements else
                                        "not a statement of the problem"))
        else:
            verdicts.append(_check_prose_step(line, graph, needed, done))
    return _step_check(verdicts, graph, done, "" if answer is not None else "no 'The answer is N' sentence")


def _check_prose_step(line: str, graph: Graph, needed: set[str], done: set[str]) -> StepVerdict:
    x, va, sign, vb, v, item = _PROSE_STEP.fullmatch(line).groups()
    nodes = graph.nodes
    wrong = _claim(line, x, nodes, needed, done)
    if wrong is not None:
        return wrong
    node = nodes[x]
    if sign != _SIGN[node.op]:
        return StepVerdict(line, False, f"wrong operation for {x}")
    for name in node.args:
        if name in needed and name not in done - {x}:
            return StepVerdict(line, False, f"uses {name} before computing it")
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


# ----------------------------------------------------------------------------------------------------------
# The task


class SyntheticTask:
    """The synthetic GSM-like task family (see the module docstring). ``level`` picks a ``LEVELS`` preset.

    ``surface`` is the format a model is prompted in and writes: ``qa`` (the default: ``Question:/Answer:``
    prompts, steps ``X = A op B = a op b = v.``, ``#### N``) or ``prose``, the pretraining corpus's own format
    (``tasks.corpus.web_documents``): the prompt is the bare question, zero-shot, and a solution quotes the
    statements it uses, then computes (``... Ann has 7 pens. So Bob has 7 + 3 = 10 pens. ... The answer is 25.``);
    its answer is the number of the first ``The answer is N`` sentence, quotes are checked against the question
    and computations against the graph by value (``check_prose_steps``). The pretrained start is evaluated in
    prose (Havrilla et al. prompt their pretrained models in a format they can follow; ours never saw
    ``Question:/Answer:``)."""

    step_end = "."  # the text that ends a step (return-conditioned sampling marks steps after it)

    def __init__(self, level: int = DEFAULT_LEVEL, seed: int = 0, train_size: int = 20000, test_size: int = 1000,
                 dev_size: int = 500, surface: str = "qa"):
        if surface not in SURFACES:
            raise ValueError(f"unknown synthetic surface {surface!r} (known: {', '.join(SURFACES)})")
        self.surface = surface
        self.stop_strings = QA_STOP_STRINGS if surface == "qa" else PROSE_STOP_STRINGS
        if level not in LEVELS:
            raise ValueError(f"unknown synthetic level {level} (known: {sorted(LEVELS)})")
        if min(train_size, test_size, dev_size) < 1:
            raise ValueError("synthetic split sizes must be >= 1")
        self.level, self.seed = level, seed
        self.sizes = {"train": train_size, "test": test_size, "dev": dev_size}
        self.name = "synthetic"
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        """train: the first train_size train-pool problems; test: the first test_size test-pool problems;
        dev: the next dev_size test-pool problems (held out from both)."""
        if split not in self.sizes:
            raise ValueError(f"unknown split {split!r} for task synthetic (known: train, test, dev)")
        if split not in self._cache:
            if split == "dev":
                stream = iter_problems(self.level, self.seed, "test")
                skipped = [next(stream) for _ in range(self.sizes["test"])]
                self._cache.setdefault("test", skipped)
                self._cache["dev"] = [
                    Problem(id=p.id.replace("-test-", "-dev-"), question=p.question, solution=p.solution,
                            answer=p.answer, difficulty=p.difficulty, meta=p.meta)
                    for p in (next(stream) for _ in range(self.sizes["dev"]))
                ]
            else:
                stream = iter_problems(self.level, self.seed, split)
                self._cache[split] = [next(stream) for _ in range(self.sizes[split])]
        return self._cache[split]

    def stream(self, split: str = "train", seed: int | None = None) -> Iterator[Problem]:
        """Fresh problems without end (for pretraining corpora); never yields a test-pool problem for 'train'."""
        return iter_problems(self.level, self.seed if seed is None else seed, split, id_prefix="synthetic-stream")

    def prompt(self, problem: Problem, shots: Sequence[Problem] = ()) -> str:
        if self.surface == "prose":
            # the corpus's documents: a question, then (in a few of them) its worked solution
            return "".join(f"{s.question}{self.target(s)}\n" for s in shots) + problem.question
        return qa_prompt(problem.question, [(s.question, self.target(s).strip()) for s in shots])

    def target(self, problem: Problem) -> str:
        if self.surface == "prose":
            return " " + prose_solution(problem.meta["graph"])
        return " " + problem.solution

    def extract_answer(self, text: str) -> str | None:
        return extract_prose(text) if self.surface == "prose" else extract_strict(text)

    def grade(self, problem: Problem, completion: str) -> Grade:
        answer = self.extract_answer(completion)
        check = check_prose_steps if self.surface == "prose" else check_steps
        steps = check(problem.meta["graph"], completion) if "graph" in problem.meta else None
        return Grade(answer=answer, correct=answers_equal(answer, problem.answer), steps=steps)

    def step_spans(self, text: str) -> list[tuple[int, int]]:
        return prose_step_spans(text) if self.surface == "prose" else step_spans(text)

    def step_results(self, text: str) -> list[str]:
        """The value each step states (the number after its last '='), in order. In prose the number is followed
        by the item ('= 10 pens'); compare with ``step_results(target(problem))``, the reference in the same
        surface."""
        if self.surface == "prose":
            # one entry per step span (what step_spans returns), "" where a sentence states no result (a quoted
            # statement 'Ivy has 110 hats.', the answer sentence): rewards per step stay aligned with their spans
            out = []
            for start, end in prose_step_spans(text):
                m = _PROSE_RESULT.search(text[start:end])
                out.append(str(int(m.group(1))) if m else "")
            return out
        out = []
        for line in solution_steps(text):
            tail = line.rsplit("=", 1)[-1].strip().rstrip(".").strip()
            # isdecimal, not isdigit: superscripts like "²" are digits to isdigit() but int() rejects them.
            if tail.isdecimal() and len(tail) <= 6:
                out.append(str(int(tail)))
        return out


# ----------------------------------------------------------------------------------------------------------
# The prose surface (what the pretraining corpus, tasks/corpus.py, writes its worked solutions in)


def prose_solution(graph: Graph) -> str:
    """A worked solution in a surface unlike the task's step format, as an explanation on the web reads: the
    statements it rests on, quoted from the question going back from the queried quantity, then one 'So X has
    a op b = v item.' computation per needed quantity in order, then 'The answer is N.'.

    Quoting first keeps every lookup a copy of one nearby sentence: the computation sentence then reads its
    operands from the quotes just written, instead of finding a name's value through another name in one step,
    the two-hop lookup that 2M tokens of pretraining never formed in the 0.7M model (docs/results.md)."""
    nodes, quoted, parts = graph.nodes, set(), []

    def quote(name: str) -> None:
        if name not in quoted:
            quoted.add(name)
            parts.append(_statement(nodes[name], graph.item))
            for parent in nodes[name].args:
                quote(parent)

    quote(graph.query)
    for name in graph.needed:
        n = nodes[name]
        a = n.args
        expr = (f"{nodes[a[0]].value} + {nodes[a[1]].value}" if n.op == "sum"
                else f"{nodes[a[0]].value} {_SIGN[n.op]} {n.k}")
        parts.append(f"So {name} has {expr} = {n.value} {graph.item}.")
    parts.append(f"The answer is {nodes[graph.query].value}.")
    return " ".join(parts)
