"""GSM8K and SVAMP in their official formats (needs ../shared/data or $MATHRL_DATA)."""

import json

import pytest

from mathrl.errors import UsageError
from mathrl.tasks import load_task
from mathrl.tasks.calculator import annotations, consistent, evaluate


def test_gsm8k_strict_extraction_recovers_every_reference(data_dir):
    task = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    counts = {}
    for split in ("train", "test"):
        problems = task.problems(split)
        counts[split] = len(problems)
        for p in problems:
            assert task.grade(p, task.target(p)).correct, p.id
    assert counts == {"train": 7473, "test": 1319}


def test_gsm8k_every_annotation_parses_and_is_consistent(data_dir):
    task = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    n = 0
    inconsistent = []
    for split in ("train", "test"):
        for p in task.problems(split):
            for expr, result in annotations(p.solution):
                evaluate(expr)  # raises if any annotation fails to parse
                n += 1
                if not consistent(expr, result):
                    inconsistent.append((p.id, expr, result))
    assert n == 27998
    assert inconsistent == []  # measured: none in this copy (checked exactly with rationals)


def test_svamp_answers_and_equations(data_dir):
    task = load_task("svamp", data_dir=str(data_dir / "svamp"))
    allp = task.problems("all")
    assert len(allp) == 1000
    raw = {f"svamp-{r['ID']}": r for r in json.loads((data_dir / "svamp" / "SVAMP.json").read_text())}
    mismatched = []
    for p in allp:
        assert task.grade(p, task.target(p)).correct
        equation = raw[p.id]["Equation"].replace(" ", "")
        if abs(float(evaluate(equation)) - float(raw[p.id]["Answer"])) > 1e-9:
            mismatched.append(p.id)
    # measured: one record's Answer contradicts its Equation ("4 apples, picked 2, 3 grew": (4-2)+3 = 5, Answer 1)
    assert mismatched == ["svamp-chal-680"]
    assert [p.id for p in allp if p.meta["equation_mismatch"]] == mismatched
    train, test = task.problems("train"), task.problems("test")
    assert len(train) + len(test) == 1000 and not {p.id for p in train} & {p.id for p in test}
    assert 150 < len(test) < 250  # hash split: about 1 in 5


def test_malformed_jsonl_names_file_and_line(tmp_path):
    (tmp_path / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{broken\n')
    task = load_task("gsm8k", data_dir=str(tmp_path))
    with pytest.raises(UsageError, match=r"test.jsonl:2"):
        task.problems("test")


def test_missing_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_task("gsm8k", data_dir=str(tmp_path / "nope")).problems("test")
    with pytest.raises(UsageError, match="known: synthetic, gsm8k, svamp"):
        load_task("mnist")
