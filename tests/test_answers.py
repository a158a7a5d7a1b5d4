"""Answer extraction and numeric normalisation (tasks/answers.py)."""

import pytest

from mathrl.tasks.answers import answers_equal, extract_answer, extract_flexible, extract_strict, normalize_number


@pytest.mark.parametrize("text,expected", [
    ("5", "5"), ("5.0", "5"), ("5.00", "5"), ("$5", "5"), ("1,000", "1000"), ("$1,234.50", "1234.5"),
    ("-3", "-3"), ("-0", "0"), (".5", "0.5"), ("12.", "12"), ("007", "7"), ("2.50", "2.5"),
    ("abc", None), ("", None), ("1e5", None), ("inf", None), ("nan", None), ("--5", None), ("5-", None),
    ("9" * 41, None),
])
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_strict_takes_number_after_last_hashes():
    assert extract_strict("a = 3\n#### 7\nmore #### 1,200") == "1200"
    assert extract_strict("#### $18.00") == "18"
    assert extract_strict("#### -4") == "-4"
    assert extract_strict("the answer is 42") is None
    assert extract_strict("#### twelve") is None


def test_flexible_takes_last_number():
    assert extract_flexible("I think 3 then 4 apples.") == "4"
    assert extract_flexible("costs $1,000.") == "1000"
    assert extract_flexible("no digits") is None
    # a number that runs past the window's start is longer than any accepted answer
    assert extract_flexible("1" * 5000) is None


def test_modes_and_equality():
    assert extract_answer("#### 5", "strict") == "5"
    assert extract_answer("so 5 is it", "flexible") == "5"
    with pytest.raises(ValueError):
        extract_answer("5", "loose")
    assert answers_equal("5.0", "5")
    assert not answers_equal(None, "5")
    assert not answers_equal("6", "5")


def test_math_verify_grades_latex_and_expressions_symbolically(monkeypatch):
    import builtins

    from mathrl.errors import UsageError
    from mathrl.tasks.answers import grade_text
    from mathrl.tasks.base import Problem
    from mathrl.tasks.gsm8k import GSM8KTask

    task = GSM8KTask(extract="math-verify")
    p = Problem(id="p", question="?", solution="#### 0.75", answer="0.75")
    assert task.grade(p, "So she keeps \\boxed{\\frac{3}{4}} of it.").correct  # 3/4 == 0.75: numbers would miss it
    assert task.grade(p, "The answer is $0.75$.").correct
    assert not task.grade(p, "The answer is \\boxed{\\frac{2}{3}}.").correct
    assert task.grade(p, "no answer here") == task.grade(p, "") and task.grade(p, "").answer is None
    assert grade_text("3/4", "0.75", "flexible") == ("4", False)  # the numeric extractions, for contrast
    hostile = task.grade(p, "\\frac{" * 20000 + "0.75")  # read in a bounded window: graded, no crash
    assert isinstance(hostile.correct, bool)
    # math-verify's timeout is an alarm signal, which only the main thread may set: elsewhere it grades without one
    # (with the signal, every grade in a thread would fail and read as wrong)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(task.grade, p, "\\boxed{\\frac{3}{4}}").result().correct
    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda name, *a, **k: (_ for _ in ()).throw(ImportError(name))
                        if name == "math_verify" else real_import(name, *a, **k))
    with pytest.raises(UsageError, match='pip install "mathrl\\[math\\]"'):
        GSM8KTask(extract="math-verify")
