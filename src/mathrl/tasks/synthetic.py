"""The embedded default task's problems: GSM-like word problems generated from random dependency graphs.

Each problem is a chain of named quantities of one item, with distractors, and a question about the last one::

    Ann has 7 pens. Bob has 3 more pens than Ann. Cat has twice as many pens as Bob. Dan has 5 pens.
    Eve has as many pens as Cat and Dan together. How many pens does Eve have?

This module draws the problems and writes their reference solutions in both surfaces a model can be taught.
The qa surface (``solution_text``, kept as ``Problem.solution``) has one step per derived quantity, in
topological order, then the GSM8K answer line::

    Bob = Ann + 3 = 7 + 3 = 10. Cat = Bob * 2 = 10 * 2 = 20. Eve = Cat + Dan = 20 + 5 = 25.
    #### 25

The prose surface (``prose_solution``, the pretraining corpus's worked solutions) quotes the statements it rests
on, then computes, then answers as Wei et al.'s (2022) chain-of-thought exemplars do::

    Eve has as many pens as Cat and Dan together. Cat has twice as many pens as Bob. Bob has 3 more pens than
    Ann. Ann has 7 pens. Dan has 5 pens. So Bob has 7 + 3 = 10 pens. So Cat has 10 * 2 = 20 pens. So Eve has
    20 + 5 = 25 pens. The answer is 25.

The tasks built on these problems (prompt, answer extraction, grading, step check) are
``synthetic_qa.SyntheticQATask`` and ``synthetic_prose.SyntheticProseTask``; both hold a ``SyntheticProblems``.

The design follows iGSM (Ye et al. 2024, arXiv 2407.20311) at toy scale: a closed vocabulary (template words,
~30 names, digits) keeps problems at ~60-130 tokens; answers have up to three digits so that lucky guesses are
rare (``DEFAULT_LEVEL``); and because every problem keeps its graph (``Problem.meta["graph"]``), a solution is
checked step by step exactly (which step is the first wrong one, and why), which no GSM8K grader can do.

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
from dataclasses import dataclass
from typing import Iterator

from mathrl.errors import UsageError
from mathrl.tasks.base import Problem

NAMES = (
    "Ann", "Bob", "Cat", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Leo", "Max", "Ned", "Oli",
    "Pam", "Ray", "Sue", "Tom", "Uma", "Val", "Wes", "Xia", "Yan", "Zoe", "Amy", "Ben", "Cy", "Dot", "Eli",
)
ITEMS = ("pens", "apples", "coins", "books", "cards", "shells", "stamps", "marbles", "cups", "hats")
OPS = ("add", "sub", "mul", "sum")
SIGN = {"add": "+", "sub": "-", "mul": "*", "sum": "+"}  # the sign each operation is written with


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


# One integer picks a preset; levels 2-6 add steps, distractors and shuffled statements in turn.
LEVELS: dict[int, Level] = {
    0: Level(n_ops=(1, 2), n_distract=(0, 1), n_ops_weights=(2, 1)),
    1: Level(n_ops=(1, 2), n_distract=(0, 1), leaf_max=300, k_max=50, value_max=999),
    2: Level(n_ops=(1, 3), n_distract=(0, 2)),
    3: Level(n_ops=(1, 4), n_distract=(0, 2)),
    4: Level(n_ops=(1, 5), n_distract=(0, 3)),
    5: Level(n_ops=(2, 6), n_distract=(1, 4), shuffle=0.3),
    6: Level(n_ops=(3, 8), n_distract=(2, 5), shuffle=1.0),
}

# The embedded default, level 1 since 2026-12-01: three-digit answers (leaves <= 300, constants <= 50, values
# <= 999) so that guessing pays little: a question-blind guesser drawing from the train answers' frequencies
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


def statement(node: Node, item: str) -> str:
    """The sentence of the question that states ``node`` ("Bob has 3 more pens than Ann.")."""
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
    sign = SIGN[node.op]
    x = nodes[a[0]].value
    return f"{node.name} = {a[0]} {sign} {node.k} = {x} {sign} {node.k} = {node.value}."


def solution_text(graph: Graph) -> str:
    """The reference solution in the qa surface: one ``X = A op B = a op b = v.`` step per needed quantity."""
    steps = [_step(graph.nodes[n], graph.nodes) for n in graph.needed]
    # Steps share one line (a name after a newline would be a different token than after a space, which a tiny
    # model would have to learn twice); the answer line follows GSM8K.
    return " ".join(steps) + f"\n#### {graph.nodes[graph.query].value}"


def prose_solution(graph: Graph) -> str:
    """The reference solution in the prose surface, as an explanation on the web reads: the statements it rests
    on, quoted from the question going back from the queried quantity, then one 'So X has a op b = v item.'
    computation per needed quantity in order, then 'The answer is N.'.

    Quoting first keeps every lookup a copy of one nearby sentence: the computation sentence then reads its
    operands from the quotes just written, instead of finding a name's value through another name in one step,
    the two-hop lookup that 2M tokens of pretraining never formed in the 0.7M model (docs/results.md)."""
    nodes, quoted, parts = graph.nodes, set(), []

    def quote(name: str) -> None:
        if name not in quoted:
            quoted.add(name)
            parts.append(statement(nodes[name], graph.item))
            for parent in nodes[name].args:
                quote(parent)

    quote(graph.query)
    for name in graph.needed:
        n = nodes[name]
        a = n.args
        expr = (f"{nodes[a[0]].value} + {nodes[a[1]].value}" if n.op == "sum"
                else f"{nodes[a[0]].value} {SIGN[n.op]} {n.k}")
        parts.append(f"So {name} has {expr} = {n.value} {graph.item}.")
    parts.append(f"The answer is {nodes[graph.query].value}.")
    return " ".join(parts)


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
    question = " ".join(statement(n, item) for n in order) + f" How many {item} does {graph.query} have?"
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


class SyntheticProblems:
    """The splits of one level and seed, drawn once and kept: train, the first train_size train-pool problems;
    test, the first test_size test-pool problems; dev, the next dev_size test-pool problems (held out from both).
    Both synthetic tasks hold one (composition: the surfaces differ in how problems are written, not which)."""

    def __init__(self, level: int = DEFAULT_LEVEL, seed: int = 0, train_size: int = 20000, test_size: int = 1000,
                 dev_size: int = 500):
        if level not in LEVELS:
            raise ValueError(f"unknown synthetic level {level} (known: {sorted(LEVELS)})")
        if min(train_size, test_size, dev_size) < 1:
            raise ValueError("synthetic split sizes must be >= 1")
        self.level, self.seed = level, seed
        self.sizes = {"train": train_size, "test": test_size, "dev": dev_size}
        self._cache: dict[str, list[Problem]] = {}

    def problems(self, split: str) -> list[Problem]:
        if split not in self.sizes:
            raise UsageError(f"unknown split {split!r} for task synthetic (known: train, test, dev)")
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
