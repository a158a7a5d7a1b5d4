"""Fuzz every task's grader and the safe calculator with random and adversarial completions.

Model outputs are hostile input: a grader that raises, or that takes seconds on one completion, stalls a whole
evaluation or RL run. This script feeds ``--n`` generated texts (random unicode, invalid UTF-8, 1 MB lines, huge
numbers, 10,000 nested parentheses, ``####`` garbage, calculator-annotation bombs, NUL bytes, right-to-left
marks, mutated reference solutions, ...; one generator drawn at random per input) to

- ``task.grade(problem, text)``, ``task.extract_answer(text)`` and ``task.step_results(text)`` of every task:
  synthetic (level 3, in the qa and the prose surface), GSM8K and SVAMP (each with strict and with flexible extraction; skipped with a note when
  their data is missing), graded against a handful of their test problems;
- ``answers.extract_answer(text, mode)`` in each of its modes (``answers.EXTRACTIONS``: strict, flexible, boxed);
- ``calculator.evaluate(text)``, ``calculator.annotations(text)``, and ``calculator.consistent(expr, result)``
  on every annotation found (at most ``calculator.MAX_ANNOTATIONS`` per text);

and counts, per function:

- crashes: an exception escaping the call (for ``evaluate``: anything but ``CalculatorError``);
- invalid: a result outside the contract (e.g. an answer that is neither None nor a normalised number string);
- hangs: calls slower than ``--timeout-ms`` (an input still running after ``WATCHDOG_S`` is stopped and counted
  as a hang, so that a catastrophic case cannot stall the fuzzer itself).

It prints a table, the first few failures (generator, function, error, the input's head) and then the lines
``invalid=<n>``, ``crashes=<n>``, ``hangs=<n>``, ``max_ms=<x>``; the exit code is 1 when any count is non-zero.

    python tests/fuzz_grader.py                       # 100,000 inputs, about a minute on one core
    python tests/fuzz_grader.py --n 2000 --seed 7     # a quick run
    python tests/fuzz_grader.py --data-dir ~/data     # GSM8K/SVAMP from DIR/gsm8k and DIR/svamp

``fuzz()`` is the core, used in-process by test_fuzz.py beside it.
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

from mathrl.tasks import load_task
from mathrl.tasks.answers import extract_answer
from mathrl.tasks.base import Grade, StepCheck
from mathrl.tasks.calculator import CalculatorError, annotations, consistent, evaluate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "data"

MB = 1 << 20
BIG_INPUT_RATE = 1 / 500  # 1 MB inputs cost ~100x a small one: this keeps 100,000 inputs to a few minutes
N_GRADED_PROBLEMS = 8  # problems per task that completions are graded against
N_REFERENCES = 200  # reference solutions per task that the mutation generator draws from
WATCHDOG_S = 5.0  # an input still running after this long is stopped (counted as a hang)
N_EXAMPLES = 10  # failures printed in full

# What a normalised answer looks like (answers.normalize_number); ASCII only, so "٣" would be invalid.
NORMALISED = re.compile(r"-?\d+(\.\d+)?", re.ASCII)

# Characters that matter to the parsers (answer markers, annotation brackets, operators, separators) and
# characters that trip up naive ones: NUL, right-to-left marks, non-ASCII digits that str.isdigit() accepts
# (superscripts, circled) and that int() accepts (Arabic-Indic, fullwidth, mathematical bold).
HOSTILE = (
    "0123456789" * 3 + "####<<>>==++--**//((..,,$$  \n\t" + "ABCabc"
    + "\x00\u200f\u200e\u202e\u202d\u2066\u2067\u2069\u061c\ufeff\u00a0\u2028"
    + "\u00b2\u00b3\u00b9\u2070\u2074\u2080\u2460\u0663\u0966\uff15\U0001d7d1\u00bd\u2155"
)
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2007\u200b\u2028\u2029\u202f\u3000\ufeff"
RTL_MARKS = "\u200f\u200e\u202e\u202d\u202b\u202a\u202c\u2066\u2067\u2068\u2069\u061c"
# Digit sets of other scripts: zero of each run of ten, or a full table where the digits are not contiguous.
DIGIT_SETS = [
    "".join(chr(z + i) for i in range(10)) for z in (0x0660, 0x06F0, 0x0966, 0x09E6, 0x0E50, 0xFF10, 0x1D7CE)
] + ["\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079",  # superscripts: isdigit() but not int()
     "\u2080\u2081\u2082\u2083\u2084\u2085\u2086\u2087\u2088\u2089",  # subscripts: the same
     "\u24ea\u2460\u2461\u2462\u2463\u2464\u2465\u2466\u2467\u2468"]  # circled
_HEX_TO_DIGITS = str.maketrans("abcdef", "012345")


# ----------------------------------------------------------------------------------------------------------
# Input generators: each takes the run's Random and the reference solutions, and returns one text.


def _digits(rng: random.Random, n: int) -> str:
    """n random decimal digits, fast enough for a megabyte (no per-character Python loop)."""
    return rng.randbytes(n // 2 + 1).hex()[:n].translate(_HEX_TO_DIGITS)


def _hostile(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(HOSTILE, k=n))


def _unicode(rng: random.Random, n: int) -> str:
    # Any code point, lone surrogates included (a str can hold them; encode() would fail on them).
    return "".join(chr(rng.randrange(0x110000)) for _ in range(n))


def gen_unicode(rng, refs):
    n = rng.randint(1, 300)
    return "".join(_unicode(rng, 1) if rng.random() < 0.5 else rng.choice(HOSTILE) for _ in range(n))


def gen_bytes_surrogateescape(rng, refs):
    return rng.randbytes(rng.randint(1, 400)).decode("utf-8", errors="surrogateescape")


def gen_bytes_replace(rng, refs):
    return rng.randbytes(rng.randint(1, 400)).decode("utf-8", errors="replace")


def gen_empty(rng, refs):
    return ""


def gen_whitespace(rng, refs):
    return "".join(rng.choices(WHITESPACE, k=rng.randint(1, 2000)))


def gen_huge_numbers(rng, refs):
    d = lambda: _digits(rng, rng.randint(1000, 20000))  # noqa: E731 - thousands of digits
    pick = rng.choice([
        lambda: d(),
        lambda: "#### " + d(),
        lambda: "#### -" + d() + "." + d(),
        lambda: "The answer is " + d() + " apples.",
        lambda: "1e999999", lambda: "#### 1e999999", lambda: "9**9**9", lambda: "<<9**9**9=1>>",
        lambda: "#### " + "9" * 40, lambda: "#### " + "9" * 41, lambda: "#### 0." + "0" * 37 + "1",
        lambda: "#### " + "1," * rng.randint(10, 5000) + "5",
        lambda: "<<" + d() + "*" + d() + "=" + d() + ">>",
        lambda: "<<" + "9" * 20 + "*" + "9" * 20 + "=1>>",
        lambda: "<<" + "9" * 21 + "=" + "9" * 21 + ">>",
        lambda: f"Bob = Ann + 3 = {d()} + 3 = {d()}. Cat = Bob * 2 = {d()} * 2 = {d()}.\n#### {d()}",
        lambda: f"{d()} = {d()}",
        lambda: "\\boxed{" + d() + "}", lambda: "\\boxed{\\$" + d() + "}", lambda: "\\boxed{" * rng.randint(1, 3000),
        lambda: ("\\boxed{" + " " * 63) * rng.randint(1, 500),
    ])
    return " ".join(pick() for _ in range(rng.randint(1, 3)))


def gen_deep_nesting(rng, refs):
    n = rng.choice([17, 100, 10000])
    inner = rng.choice(["1", "-1", "", _digits(rng, 30)])
    nested = "(" * n + inner + ")" * n
    return rng.choice([
        nested, "(" * n + inner, inner + ")" * n, "-" * n + "1", "+-" * n + "1",
        "<<" + nested + "=1>>", "<<" + "(" * 16 + "1" + ")" * 16 + "=1>>", "<<" + "-" * 17 + "1=-1>>",
        "#### " + nested, nested + "\n#### 5", "<<" * n + "1=1" + ">>" * n,
    ])


def gen_hash_garbage(rng, refs):
    tail = rng.choice([
        _hostile(rng, rng.randint(0, 80)), _unicode(rng, rng.randint(0, 80)),
        rng.randbytes(rng.randint(0, 80)).decode("utf-8", errors="surrogateescape"),
        "-", "$", ".", "-$", "$-5", "- 5", "1.2.3", "1,,,", ",5", "\n\n5", " " * 100 + "5", "-.5", "5.",
        "\u200f42", "٤٢", "\u00b2", "5" + "\x00" * 3,
    ])
    return rng.choice(["", _hostile(rng, 20)]) + "####" + tail


def gen_many_hashes(rng, refs):
    k = rng.randint(2, 10000)
    return rng.choice([
        "####" * k,
        "#" * k + " 5",
        "".join(f"#### {rng.randint(-9, 99)}" if rng.random() < 0.5 else "####" for _ in range(min(k, 3000))),
        "#### 5 " * min(k, 3000) + "####",
    ])


def gen_annotation_bomb(rng, refs):
    k = rng.randint(1, 5000)
    ops = "+-*/"
    pick = rng.choice([
        # thousands of small annotations on one line, and on many lines
        lambda: "".join(f"<<{rng.randint(0, 99)}{rng.choice(ops)}{rng.randint(0, 99)}={rng.randint(0, 99)}>>"
                        for _ in range(k)),
        lambda: "\n".join(f"x = <<{rng.randint(0, 9)}*{rng.randint(0, 9)}={rng.randint(0, 81)}>>" for _ in range(k)),
        # operands at and past every limit
        lambda: "<<" + "9" * 199 + "=" + "9" * 64 + ">>",
        lambda: "<<" + "9" * 200 + "=" + "9" * 65 + ">>",
        lambda: "<<" + "*".join(["99999"] * 33) + "=1>>",
        lambda: "<<" + "/".join(["7"] * 60) + "=0>>",
        lambda: "<<" + "1/" * 20 + "3=1>>" + "<<1/0=1>>" + "<<0//0=0>>" + "<<5//0.5=10>>",
        # nesting inside annotations, and annotations inside annotations
        lambda: "<<" + "(" * 99 + "1" + ")" * 99 + "=1>>",
        lambda: "<<<<1+1=2>>=2>>" * min(k, 2000),
        lambda: "<<1+1=2" * k,
        lambda: "<<" + "=" * k + ">>",
        lambda: ("<<" + _hostile(rng, 20) + "=" + _hostile(rng, 10) + ">>") * min(k, 500),
        # calculator syntax outside the grammar
        lambda: "<<2**10=1024>>" "<<1e5=100000>>" "<<0x10=16>>" "<<1_000=1000>>" "<<__import__('os')=0>>",
    ])
    return pick()


def gen_nul(rng, refs):
    base = rng.choice(refs) if rng.random() < 0.5 else "#### 5"
    chars = list(base)
    for _ in range(rng.randint(1, 20)):
        chars.insert(rng.randint(0, len(chars)), "\x00")
    return rng.choice(["".join(chars), "\x00" * rng.randint(1, 5000), "#### \x005", "<<1\x00+1=2>>"])


def gen_rtl(rng, refs):
    mark = lambda: rng.choice(RTL_MARKS)  # noqa: E731
    base = rng.choice(refs)
    chars = list(base)
    for _ in range(rng.randint(1, 10)):
        chars.insert(rng.randint(0, len(chars)), mark())
    return rng.choice(["".join(chars), f"#### {mark()}42", f"#### 4{mark()}2", f"<<{mark()}1+1=2>>2",
                       f"{mark()}#### 7{mark()}", f"Bob = Ann + 3 = 7 + 3 = 1{mark()}0."])


def gen_other_digits(rng, refs):
    """A reference solution (or a step) written in another script's digits."""
    table = str.maketrans("0123456789", rng.choice(DIGIT_SETS))
    base = rng.choice(refs + ["Bob = Ann + 3 = 7 + 3 = 10.", "#### 42", "<<6*7=42>>42"])
    if rng.random() < 0.5:
        return base.translate(table)
    # only some digits translated: mixed scripts inside one number
    return "".join(c.translate(table) if rng.random() < 0.3 else c for c in base)


def gen_mutation(rng, refs):
    """A reference solution with random character inserts, deletes and replacements."""
    chars = list(rng.choice(refs))
    for _ in range(rng.randint(1, 10)):
        op = rng.random()
        new = rng.choice(HOSTILE) if rng.random() < 0.8 else _unicode(rng, 1)
        pos = rng.randint(0, len(chars))
        if op < 1 / 3 or not chars:
            chars.insert(pos, new)
        elif op < 2 / 3:
            del chars[min(pos, len(chars) - 1)]
        else:
            chars[min(pos, len(chars) - 1)] = new
    return "".join(chars)


def gen_expression(rng, refs):
    """A short random arithmetic expression, bare or as an annotation: exercises the calculator's parser."""
    tokens = ["1", "0", "7", "12", "3.5", ".5", "1,000", "9" * rng.randint(1, 25), "(", "(", ")", ")",
              "+", "-", "*", "/", "//", " ", "**", "e5", "x"]
    expr = "".join(rng.choices(tokens, k=rng.randint(1, 60)))
    if rng.random() < 0.5:
        return expr
    return f"<<{expr}={rng.choice([str(rng.randint(-100, 100)), expr, '0.5', ''])}>>"


SMALL_GENERATORS: dict[str, Callable[[random.Random, list[str]], str]] = {
    "unicode": gen_unicode,
    "bytes_surrogateescape": gen_bytes_surrogateescape,
    "bytes_replace": gen_bytes_replace,
    "empty": gen_empty,
    "whitespace": gen_whitespace,
    "huge_numbers": gen_huge_numbers,
    "deep_nesting": gen_deep_nesting,
    "hash_garbage": gen_hash_garbage,
    "many_hashes": gen_many_hashes,
    "annotation_bomb": gen_annotation_bomb,
    "nul": gen_nul,
    "rtl": gen_rtl,
    "other_digits": gen_other_digits,
    "mutation": gen_mutation,
    "expression": gen_expression,
}


def gen_combo(rng, refs):
    """Two to four small inputs glued together (a marker from one next to garbage from another)."""
    names = [n for n in SMALL_GENERATORS if n != "empty"]
    return rng.choice(["", "\n", " "]).join(SMALL_GENERATORS[rng.choice(names)](rng, refs)
                                             for _ in range(rng.randint(2, 4)))


def gen_digits_1mb(rng, refs):
    return rng.choice(["", "#### ", "-", "<<"]) + _digits(rng, MB) + rng.choice(["", "\n#### 5", ">>", "."])


def gen_mixed_1mb(rng, refs):
    """A 1 MB line: a random chunk of the other generators' text repeated (one line, or many)."""
    chunk = ""
    while not chunk:
        chunk = gen_combo(rng, refs)[:4096]
    if rng.random() < 0.5:
        chunk = chunk.replace("\n", " ")
    return (chunk * (MB // len(chunk) + 1))[:MB]


GENERATORS = {**SMALL_GENERATORS, "combo": gen_combo}
BIG_GENERATORS = {"digits_1mb": gen_digits_1mb, "mixed_1mb": gen_mixed_1mb}


# ----------------------------------------------------------------------------------------------------------
# What is fuzzed


def _is_answer(x) -> bool:
    return x is None or (isinstance(x, str) and NORMALISED.fullmatch(x) is not None)


def _is_grade(g) -> bool:
    return (isinstance(g, Grade) and _is_answer(g.answer) and isinstance(g.correct, bool)
            and (not g.correct or g.answer is not None) and (g.steps is None or isinstance(g.steps, StepCheck)))


def _is_results(xs) -> bool:
    # "" is a step that states no result (the synthetic prose surface keeps one entry per step span)
    return isinstance(xs, list) and all(isinstance(x, str) and (x == "" or NORMALISED.fullmatch(x)) for x in xs)


def _is_pairs(xs) -> bool:
    return isinstance(xs, list) and all(isinstance(p, tuple) and len(p) == 2 and all(isinstance(s, str) for s in p)
                                        for p in xs)


@dataclass
class Target:
    """One function under test. ``expected``: exceptions that are part of its contract (not crashes)."""

    name: str
    fn: Callable
    valid: Callable[[object], bool]
    expected: tuple[type[BaseException], ...] = ()
    calls: int = 0
    crashes: int = 0
    invalid: int = 0
    hangs: int = 0
    max_ns: int = 0
    total_ns: int = 0


def build_targets(data_dir: Path | None) -> tuple[list[Target], Target, list[str], list[str]]:
    """(per-text targets, the consistent() target, reference solutions for mutation, notes on skipped tasks)."""
    tasks = [("synthetic", load_task("synthetic", level=3)),
             ("synthetic-prose", load_task("synthetic", level=3, surface="prose"))]
    notes = []
    for name, must_contain in (("gsm8k", "test.jsonl"), ("svamp", "SVAMP.json")):
        directory = Path(data_dir) / name if data_dir is not None else None
        if directory is None or not (directory / must_contain).is_file():
            notes.append(f"note: {name} skipped ({must_contain} not found under {directory or '--data-dir'})")
            continue
        for extract in ("strict", "flexible"):
            tasks.append((name if extract == "strict" else f"{name}-flexible",
                          load_task(name, data_dir=str(directory), extract=extract)))

    targets, refs = [], []
    for label, task in tasks:
        problems = task.problems("test")
        graded = problems[:N_GRADED_PROBLEMS]
        if not label.endswith("-flexible"):
            refs += [p.solution for p in problems[:N_REFERENCES]]

        # The graded problem is picked by the text's length, so that a failure reproduces from the input alone.
        def grade(text, task=task, graded=graded):
            return task.grade(graded[len(text) % len(graded)], text)

        targets += [
            Target(f"{label}.grade", grade, _is_grade),
            Target(f"{label}.extract_answer", task.extract_answer, _is_answer),
            Target(f"{label}.step_results", task.step_results, _is_results),
        ]
    targets += [
        Target("answers.extract_answer[strict]", lambda t: extract_answer(t, "strict"), _is_answer),
        Target("answers.extract_answer[flexible]", lambda t: extract_answer(t, "flexible"), _is_answer),
        Target("answers.extract_answer[boxed]", lambda t: extract_answer(t, "boxed"), _is_answer),
        Target("calculator.evaluate", evaluate, lambda v: isinstance(v, Fraction), expected=(CalculatorError,)),
        Target("calculator.annotations", annotations, _is_pairs),
    ]
    pair_target = Target("calculator.consistent", consistent, lambda v: isinstance(v, bool))
    return targets, pair_target, refs, notes


# ----------------------------------------------------------------------------------------------------------
# The fuzzer


EXPECTED_ERROR = object()  # what call() returns when the function raised an exception of its contract


class _Watchdog(BaseException):
    """Raised by SIGALRM in a stuck call; a BaseException so that no `except Exception` in the code under test
    can swallow it."""


def _on_alarm(signum, frame):
    raise _Watchdog


@dataclass
class Report:
    inputs: int = 0
    crashes: int = 0
    invalid: int = 0
    hangs: int = 0
    max_ms: float = 0.0
    wall_s: float = 0.0
    targets: list[Target] = field(default_factory=list)
    generators: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _describe(text: str) -> str:
    head = ascii(text[:160])
    return f"len={len(text)} text={head}{'...' if len(text) > 160 else ''}"


def fuzz(n: int = 100_000, seed: int = 0, timeout_ms: float = 50.0, data_dir: Path | None = DEFAULT_DATA_DIR,
         progress: Callable[[int], None] | None = None) -> Report:
    """Run ``n`` generated inputs through every target; returns the counts (see the module docstring)."""
    targets, pair_target, refs, notes = build_targets(data_dir)
    report = Report(targets=targets + [pair_target], notes=notes)
    rng = random.Random(seed)
    threshold_ns = int(timeout_ms * 1e6)
    small, big = list(GENERATORS.items()), list(BIG_GENERATORS.items())

    def fail(kind: str, target: Target, gen: str, detail: str, args: tuple) -> None:
        if len(report.examples) < N_EXAMPLES:
            report.examples.append(f"{kind} in {target.name} [{gen}] {detail}: {_describe(str(args[0]))}"
                                   + (f" / {ascii(args[1][:80])}" if len(args) > 1 else ""))

    def call(target: Target, gen: str, *args) -> object:
        target.calls += 1
        result, error, stopped = None, None, False
        t0 = time.perf_counter_ns()
        try:
            result = target.fn(*args)
        except target.expected:
            result = EXPECTED_ERROR
        except _Watchdog:
            stopped = True
        except Exception as e:  # noqa: BLE001 - any exception escaping is exactly what we are counting
            error = e
        # Timed up to here only: the bookkeeping below is the fuzzer's cost, not the call's.
        dt = time.perf_counter_ns() - t0
        target.total_ns += dt
        target.max_ns = max(target.max_ns, dt)
        if stopped:
            target.hangs += 1
            fail("HANG (stopped by the watchdog)", target, gen, f"{dt / 1e6:.0f} ms", args)
            raise _Watchdog  # the caller skips the rest of this input
        if error is not None:
            target.crashes += 1
            fail("CRASH", target, gen, repr(error)[:200], args)
        elif result is not EXPECTED_ERROR and not target.valid(result):
            target.invalid += 1
            fail("INVALID", target, gen, f"returned {ascii(result)[:200]}", args)
        if dt > threshold_ns:
            target.hangs += 1
            fail("HANG", target, gen, f"{dt / 1e6:.1f} ms", args)
        return result

    # Warm up (regex compilation, lazy imports) so that one-time costs are not counted as the first call's.
    for target in targets:
        try:
            target.fn("Bob = Ann + 3 = 7 + 3 = 10. <<6*7=42>>42\n#### 42")
        except Exception:  # noqa: BLE001 - a function that fails here fails in the run too, where it is counted
            pass
    consistent("6*7", "42")

    # The loaded problems are long-lived: freeze them out of the garbage collector, whose full passes over
    # them would otherwise land inside some timed call as a spurious multi-millisecond pause.
    gc.collect()
    gc.freeze()
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    start = time.perf_counter()
    try:
        for i in range(n):
            if rng.random() < BIG_INPUT_RATE:
                gen, make = rng.choice(big)
            else:
                gen, make = rng.choice(small)
            text = make(rng, refs)
            report.generators[gen] = report.generators.get(gen, 0) + 1
            if use_alarm:
                signal.setitimer(signal.ITIMER_REAL, WATCHDOG_S)
            try:
                for target in targets:
                    found = call(target, gen, text)
                    if target.fn is annotations and isinstance(found, list):
                        for expr, result in found:  # at most calculator.MAX_ANNOTATIONS
                            call(pair_target, gen, expr, result)
            except _Watchdog:
                pass  # counted in call(); the rest of this input is skipped
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            if progress is not None:
                progress(i + 1)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, old_handler)
        gc.unfreeze()
    report.wall_s = time.perf_counter() - start
    report.inputs = n
    report.crashes = sum(t.crashes for t in report.targets)
    report.invalid = sum(t.invalid for t in report.targets)
    report.hangs = sum(t.hangs for t in report.targets)
    report.max_ms = max(t.max_ns for t in report.targets) / 1e6
    return report


def print_report(report: Report, timeout_ms: float) -> None:
    for note in report.notes:
        print(note)
    width = max(len(t.name) for t in report.targets)
    print(f"{'function':<{width}}  {'calls':>9}  {'crashes':>7}  {'invalid':>7}  {'hangs':>5}  "
          f"{'max_ms':>8}  {'mean_us':>8}")
    for t in report.targets:
        mean_us = t.total_ns / t.calls / 1e3 if t.calls else 0.0
        print(f"{t.name:<{width}}  {t.calls:>9}  {t.crashes:>7}  {t.invalid:>7}  {t.hangs:>5}  "
              f"{t.max_ns / 1e6:>8.3f}  {mean_us:>8.1f}")
    print("inputs per generator: " + ", ".join(f"{g}={c}" for g, c in sorted(report.generators.items())))
    for line in report.examples:
        print(line)
    print(f"inputs={report.inputs} wall_s={report.wall_s:.1f} hang_threshold_ms={timeout_ms:g}")
    print(f"invalid={report.invalid}")
    print(f"crashes={report.crashes}")
    print(f"hangs={report.hangs}")
    print(f"max_ms={report.max_ms:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="number of inputs (default 100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout-ms", type=float, default=50.0, help="a call slower than this is a hang (default 50)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                    help="directory holding gsm8k/ and svamp/ (default: ../shared/data relative to the repo root)")
    args = ap.parse_args()

    def progress(i: int) -> None:
        if i % 10_000 == 0:
            print(f"... {i} inputs", file=sys.stderr, flush=True)

    report = fuzz(args.n, args.seed, args.timeout_ms, args.data_dir, progress=progress)
    print_report(report, args.timeout_ms)
    sys.exit(1 if report.crashes or report.hangs or report.invalid else 0)


if __name__ == "__main__":
    main()
