"""The synthetic task: determinism, splits, grading and the exact step check (tasks/synthetic.py, the generator;
tasks/synthetic_qa.py and tasks/synthetic_prose.py, the two surfaces)."""

import random

import pytest

from mathrl.tasks import load_task
from mathrl.tasks.synthetic import LEVELS, Level, generate_problem, is_test_text
from mathrl.tasks.synthetic_qa import check_steps


def test_deterministic_for_a_seed():
    a = [p.question for p in load_task("synthetic", level=4, seed=7).problems("test")[:50]]
    b = [p.question for p in load_task("synthetic", level=4, seed=7).problems("test")[:50]]
    c = [p.question for p in load_task("synthetic", level=4, seed=8).problems("test")[:50]]
    assert a == b and a != c


def test_splits_are_disjoint_and_sized():
    task = load_task("synthetic", level=3)
    train = {p.question for p in task.problems("train")}
    test = {p.question for p in task.problems("test")}
    dev = {p.question for p in task.problems("dev")}
    assert len(task.problems("train")) == 20000 and len(task.problems("test")) == 1000
    assert not train & test and not train & dev and not test & dev
    assert all(is_test_text(q) for q in test) and not any(is_test_text(q) for q in train)


@pytest.mark.parametrize("level", sorted(LEVELS))
def test_every_reference_grades_correct_and_passes_step_check(level):
    task = load_task("synthetic", level=level, train_size=300, test_size=300)
    for p in task.problems("test") + task.problems("train"):
        g = task.grade(p, task.target(p))
        assert g.correct and g.verified, (p.question, p.solution, g)
        assert g.steps.n_needed == p.difficulty == len(g.steps.steps)
        assert 0 <= int(p.answer) <= LEVELS[level].value_max


def _corrupt(solution: str, step: int, how: str) -> str:
    body, answer = solution.split("\n####")
    steps = [s.strip() for s in body.split(".") if s.strip()]
    parts = steps[step].split(" = ")  # "X", "A + 3", "7 + 3", "10"
    if how == "value":
        parts[3] = str(int(parts[3]) + 1)
    elif how == "operand":
        parts[1] = parts[1].split(" ")[0] + " + 99"
    elif how == "substitution":
        a, op, b = parts[2].split(" ")
        parts[2] = f"{int(a) + 1} {op} {b}"
    steps[step] = " = ".join(parts)
    return ". ".join(steps) + ".\n####" + answer


@pytest.mark.parametrize("how,reason", [("value", "wrong arithmetic"), ("operand", "wrong operands"),
                                        ("substitution", "wrong values substituted")])
def test_corrupted_step_is_located_exactly(how, reason):
    task = load_task("synthetic", level=4)
    rng = random.Random(0)
    checked = 0
    for p in task.problems("test")[:200]:
        if p.difficulty < 2:
            continue
        j = rng.randrange(p.difficulty)
        bad = _corrupt(p.solution, j, how)
        check = check_steps(p.meta["graph"], bad)
        assert check.first_error == j, (bad, check)
        assert check.steps[j].reason.startswith(reason)
        assert all(s.ok for s in check.steps[:j])
        checked += 1
    assert checked > 50


def test_step_check_reasons():
    task = load_task("synthetic", level=4)
    p = next(p for p in task.problems("test") if p.difficulty >= 3)
    graph = p.meta["graph"]
    steps = [s.strip() for s in p.solution.split("\n####")[0].split(".") if s.strip()]
    # a missing step is reported after the written ones
    check = check_steps(graph, ". ".join(steps[:-1]) + ".\n#### " + p.answer)
    assert check.first_error == len(steps) - 1 and check.reason.startswith("missing step")
    # steps out of order: the later step uses a quantity not computed yet
    swapped = ". ".join([steps[1], steps[0]] + steps[2:]) + "."
    check = check_steps(graph, swapped)
    assert check.first_error == 0 and "before computing" in check.reason
    # garbage and unknown names
    assert check_steps(graph, "blah blah.").steps[0].reason == "malformed step"
    assert "unknown quantity" in check_steps(graph, "Zed = Ann + 1 = 1 + 1 = 2.").steps[0].reason
    # a distractor is not needed
    distractors = [n for n in graph.nodes if n not in graph.needed and graph.nodes[n].op != "leaf"]
    if distractors:
        d = graph.nodes[distractors[0]]
        line = f"{d.name} = {d.args[0]} + {d.k} = {graph.nodes[d.args[0]].value} + {d.k} = {d.value}."
        assert "unneeded" in check_steps(graph, line).steps[0].reason


def test_grade_answer_only_vs_verified():
    task = load_task("synthetic", level=3)
    p = next(p for p in task.problems("test") if p.difficulty >= 2)
    lucky = "nonsense steps.\n#### " + p.answer
    g = task.grade(p, lucky)
    assert g.correct and not g.verified
    assert task.grade(p, "").answer is None
    assert task.step_results(p.solution) == [str(p.meta["graph"].nodes[n].value) for n in p.meta["graph"].needed]


def test_problem_generation_stays_in_range():
    rng = random.Random(1)
    for level in LEVELS.values():
        for _ in range(300):
            _, graph, order = generate_problem(rng, level)
            assert all(0 <= n.value <= level.value_max for n in graph.nodes.values())
            assert level.n_ops[0] <= len(graph.needed) <= level.n_ops[1]
            assert len(order) == len(graph.nodes)


def test_commuted_values_are_right_for_plus_and_times_not_minus():
    """"C = A + B = b + a" and "C = A * 2 = 2 * a" are true equations; "C = A - 3 = 3 - a" is not."""
    task = load_task("synthetic", level=4)
    checked = {"commutes": 0, "sub": 0}
    for p in task.problems("test")[:300]:
        graph = p.meta["graph"]
        steps = [s.strip() for s in p.solution.split("\n####")[0].split(".") if s.strip()]
        for j, name in enumerate(graph.needed):
            node = graph.nodes[name]
            x = graph.nodes[node.args[0]].value
            y = graph.nodes[node.args[1]].value if node.op == "sum" else node.k
            if x == y:
                continue
            sign = {"sum": "+", "add": "+", "sub": "-", "mul": "*"}[node.op]
            operand2 = node.args[1] if node.op == "sum" else node.k
            swapped = f"{name} = {node.args[0]} {sign} {operand2} = {y} {sign} {x} = {node.value}"
            check = check_steps(graph, ". ".join(steps[:j] + [swapped] + steps[j + 1:]) + ".\n#### " + p.answer)
            if node.op in ("sum", "add", "mul"):
                assert check.first_error is None, (swapped, check)
                checked["commutes"] += 1
            else:
                assert check.first_error == j and check.reason == "wrong values substituted", (swapped, check)
                checked["sub"] += 1
    assert min(checked.values()) > 20


def test_n_ops_weights_set_the_mix():
    level = Level(n_ops=(1, 2), n_distract=(0, 1), n_ops_weights=(3, 1))
    rng = random.Random(0)
    ops = [len(generate_problem(rng, level)[1].needed) for _ in range(4000)]
    assert set(ops) == {1, 2}
    assert abs(ops.count(1) / len(ops) - 0.75) < 0.03  # binomial sd ~0.007


def test_prose_surface_grades_the_corpus_format():
    # the pretrained start is prompted and graded in the pretraining corpus's own format (SyntheticProseTask docstring)
    task = load_task("synthetic", surface="prose")
    qa = load_task("synthetic")
    for p in task.problems("test")[:200]:
        assert task.prompt(p) == p.question  # zero-shot, the bare question
        ref = task.target(p)
        g = task.grade(p, ref)
        assert g.correct and g.verified, (p.question, ref)
        # the same step values as the qa reference, after one quote per statement used; the answer sentence is a
        # span without a result
        results = task.step_results(ref)
        assert [r for r in results if r] == qa.step_results(p.solution) and results[-1] == ""
        assert task.extract_answer(ref + " The answer is 5.") == p.answer  # the first answer sentence counts
    # by hand: a two-step problem, Cat = Bob * 2 with Bob = Ann + 3 (whatever the drawn operations are)
    p = next(p for p in task.problems("test") if len(p.meta["graph"].needed) == 2)
    graph = p.meta["graph"]
    x, y = graph.needed
    sentences = task.target(p).strip().split(". ")
    quotes, (first, second, answer) = sentences[:-3], sentences[-3:]
    # a wrong value in the first computation: the answer is still right (the second step reads the true value),
    # the process is not, and the first error is that computation, after the quotes
    wrong_value = first.rsplit("=", 1)[0] + f"= {graph.nodes[x].value + 1} {graph.item}"
    g = task.grade(p, " " + ". ".join(quotes + [wrong_value, second, answer]))
    assert g.correct and not g.verified and g.steps.first_error == len(quotes)
    assert g.steps.steps[len(quotes)].reason == "wrong arithmetic"
    # the answer alone: right, but no steps
    g = task.grade(p, f" The answer is {graph.nodes[y].value}.")
    assert g.correct and not g.verified and "missing step" in g.steps.reason
    # a misquoted statement is a wrong step even when everything after it is right
    misquote = quotes[0].replace(" has ", " had ", 1)
    g = task.grade(p, " " + ". ".join([misquote] + quotes[1:] + [first, second, answer]))
    assert g.correct and not g.verified and g.steps.first_error == 0
    assert g.steps.steps[0].reason == "not a statement of the problem"
    # computations need no quotes (quoting is reading, not reasoning), but must count the problem's item
    assert task.grade(p, " " + ". ".join([first, second, answer])).verified
    other = "cups" if graph.item != "cups" else "pens"
    g = task.grade(p, " " + ". ".join([first.replace(graph.item, other), second, answer]))
    assert not g.verified and g.steps.steps[0].reason == f"counts {other}, not {graph.item}"
    # no answer sentence: no answer, and the check says so
    g = task.grade(p, " " + ". ".join(quotes + [first, second]) + ".")
    assert g.answer is None and g.steps.reason == "no 'The answer is N' sentence"
    assert task.grade(p, " Bob likes pens.").answer is None
    with pytest.raises(Exception, match="surface"):
        load_task("synthetic", surface="latex")


def test_default_level_makes_guessing_pay_little():
    # the guesser's pass@96 over the default level's answers (docs/results.md: ~0.14); level 0 (answers <= 99): 0.82
    from mathrl.metrics import guesser_pass_at_k

    task = load_task("synthetic", train_size=20000)
    train = [p.answer for p in task.problems("train")]
    test = [p.answer for p in task.problems("test")]
    assert guesser_pass_at_k(train, test, 96) < 0.2
    old = load_task("synthetic", level=0, train_size=20000)
    assert guesser_pass_at_k([p.answer for p in old.problems("train")], [p.answer for p in old.problems("test")], 96) > 0.6
    # one- and two-step problems about equally often: the dense reward differs from the sparse one on half of them
    two = sum(p.difficulty == 2 for p in task.problems("test")) / len(test)
    assert 0.4 < two < 0.6


def test_prose_steps_in_order_and_dense_rewards_per_span():
    from mathrl.rewards import dense_step_rewards

    task = load_task("synthetic", surface="prose")
    p = next(p for p in task.problems("test") if len(p.meta["graph"].needed) == 2)
    graph = p.meta["graph"]
    first, second, answer = task.target(p).strip().split(". ")[-3:]
    # the second step before the first: its operand is used before it is computed (as in the qa check)
    g = task.grade(p, f" {second}. {first}. {answer}")
    assert g.correct and not g.verified and "before computing" in g.steps.reason
    # a quoted fact is a span without a result: the rewards stay one per span, paid where the steps are
    leaf = next(n for n in graph.nodes.values() if n.op == "leaf")
    text = f" {leaf.name} has {leaf.value} {graph.item}. {first}. {second}. {answer}"
    assert task.grade(p, text).verified
    assert task.step_results(text)[0] == "" and len(task.step_results(text)) == len(task.step_spans(text)) == 4
    assert dense_step_rewards(task, p, text) == [0.0, 0.5, 0.5, 0.0]


def test_models_recorded_before_the_level_scheme_keep_their_level():
    # level 1 meant today's level 0 before 2026-12-01 (LEVEL_SCHEME 2); models record the scheme since
    from mathrl.tasks import recorded_level, task_options

    assert recorded_level({"name": "synthetic", "level": 1}) == 0
    assert recorded_level(task_options(load_task("synthetic"))) == 1
    assert recorded_level({"name": "synthetic", "level": 3}) == 3


def test_recorded_surface_loads_its_task_class():
    # a model records its task with task_options; the record rebuilds the same surface's task with
    # load_task, and a record from before the surface existed (no "surface" key) is the qa task
    from mathrl.tasks import load_task, task_options
    from mathrl.tasks.synthetic_prose import SyntheticProseTask
    from mathrl.tasks.synthetic_qa import SyntheticQATask

    prose, qa = load_task("synthetic", level=2, surface="prose"), load_task("synthetic", level=2)
    assert isinstance(prose, SyntheticProseTask) and isinstance(qa, SyntheticQATask)
    assert task_options(prose) == {"name": "synthetic", "level": 2, "levels": 2, "surface": "prose"}
    assert task_options(qa) == {"name": "synthetic", "level": 2, "levels": 2}
    for task, cls in ((prose, SyntheticProseTask), (qa, SyntheticQATask)):
        meta = task_options(task)
        again = load_task(meta["name"], level=meta["level"], surface=meta.get("surface"))
        assert type(again) is cls and task_options(again) == meta
    assert type(load_task("synthetic", level=1)) is SyntheticQATask
    assert type(load_task("synthetic", surface="qa")) is SyntheticQATask
    # the two surfaces write the same problems
    assert [p.question for p in prose.problems("test")[:20]] == [p.question for p in qa.problems("test")[:20]]
