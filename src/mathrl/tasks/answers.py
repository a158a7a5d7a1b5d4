"""Answer extraction and numeric normalisation shared by every task.

Two extraction modes, as in lm-evaluation-harness's GSM8K task (`strict-match` / `flexible-extract`):

- strict: the number after the last ``####`` (the GSM8K convention, also used by our synthetic task);
- flexible: the last number anywhere in the text.

``boxed`` reads the number in the last ``\\boxed{}``; ``math-verify`` (optional package) parses LaTeX and
expressions and compares them with the reference symbolically (``grade_text``).

Normalisation (``normalize_number``) maps every spelling of a number to one canonical string so that answers
compare by string equality: commas and ``$`` are dropped, a trailing ``.`` is dropped, ``5.0``/``5.00`` become
``5``, ``-0`` becomes ``0``, ``.5`` becomes ``0.5``. Units after the number are not part of the match.

Everything here is written for hostile input (model outputs): regexes are applied to bounded windows, numbers
longer than ``MAX_NUMBER_CHARS`` are rejected instead of parsed, and nothing raises on any ``str``.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from decimal import Decimal, InvalidOperation

from mathrl.errors import UsageError

# A number longer than this (digits, commas, sign, point) is not an answer: it is rejected before it is parsed,
# so a 1 MB run of digits costs nothing.
MAX_NUMBER_CHARS = 40

# How much of the end of a completion the flexible extractor reads. The last number of a text lies in its last
# MAX_NUMBER_CHARS characters plus whatever follows it; units and punctuation after an answer are short.
FLEXIBLE_WINDOW = 512

# "$1,234.50", "-7", ".5", "12." ; the number may be preceded by '$' and contain thousands separators.
_NUMBER = re.compile(r"-?\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)")
_STRICT = re.compile(r"####\s*(-?\s?\$?\s?(?:\d[\d,]*(?:\.\d+)?|\.\d+))")


def normalize_number(text: str) -> str | None:
    """Canonical string for a number, or None if ``text`` is not one.

    >>> normalize_number("$1,000.00")
    '1000'
    >>> normalize_number("-2.50")
    '-2.5'
    >>> normalize_number("abc") is None
    True
    """
    s = text.strip().replace(",", "").replace("$", "").replace(" ", "")
    if s.endswith("."):
        s = s[:-1]
    if not s or len(s) > MAX_NUMBER_CHARS:
        return None
    # Only plain decimal notation: "1e5", "inf", "nan", "0x10" are not answers in these tasks.
    if not re.fullmatch(r"-?(?:\d+(?:\.\d*)?|\.\d+)", s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex above admits only valid literals
        return None
    if d == d.to_integral_value():
        return str(int(d))  # bounded: at most MAX_NUMBER_CHARS digits
    return format(d.normalize(), "f")


def extract_strict(text: str) -> str | None:
    """The normalised number after the last ``####`` in ``text``, or None."""
    pos = text.rfind("####")
    if pos < 0:
        return None
    m = _STRICT.match(text, pos, pos + 4 + 8 + MAX_NUMBER_CHARS)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(text: str) -> str | None:
    """The normalised last number in ``text``, or None."""
    window = text[-FLEXIBLE_WINDOW:]
    last = None
    for m in _NUMBER.finditer(window):
        last = m
    if last is None:
        return None
    if last.start() == 0 and len(text) > FLEXIBLE_WINDOW:
        return None  # the number may continue before the window: it is longer than any answer we accept
    return normalize_number(last.group(0))


BOXED_WINDOW = 4000
_BOXED = re.compile(r"\\boxed\s{0,8}\{([^{}]{0,80})\}")  # one bounded pass per box: no backtracking blow-up


def extract_boxed(text: str) -> str | None:
    """The normalised number in the last ``\\boxed{...}`` (MATH-style answers; ``\\boxed{\\$18}`` and
    ``\\boxed{1,000}`` included), or None (also when the box holds no plain number, e.g. a fraction)."""
    last = None
    for m in _BOXED.finditer(text[-BOXED_WINDOW:]):
        last = m
    if last is None:
        return None
    content = last.group(1).replace("\\$", "").replace("$", "").replace("\\!", "").strip()
    return normalize_number(content)


EXTRACTIONS = ("strict", "flexible", "boxed")


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """Extract and normalise the final answer of a solution text. ``mode``: one of ``EXTRACTIONS``, or
    math-verify (its answer as it writes it)."""
    if mode == "strict":
        return extract_strict(text)
    if mode == "flexible":
        return extract_flexible(text)
    if mode == "boxed":
        return extract_boxed(text)
    if mode == MATH_VERIFY:
        return extract_math_verify(text)
    raise ValueError(f"unknown extraction mode {mode!r} (expected one of {', '.join(EXTRACTIONS)})")


# --extract math-verify (the optional math-verify package, as TRL, verl and NeMo-RL grade): LaTeX and expressions
# (\frac{3}{4} == 0.75, \boxed{...}, sets, intervals) parsed by sympy and compared symbolically. It reads the
# last MATH_VERIFY_WINDOW characters of a completion (where a final answer is), so that a hostile completion costs
# a bounded parse, and parse and comparison each stop after MATH_VERIFY_TIMEOUT seconds (math-verify's alarm
# signal: in the main thread only; elsewhere it would fail every grade, so there it runs without one). A power
# tower such as 9**9**9 ran into math-verify's default 5 s (tests/fuzz_grader.py's generators, 2026-12-06).
MATH_VERIFY = "math-verify"
MATH_VERIFY_WINDOW = 1000
MATH_VERIFY_TIMEOUT = 1  # seconds (an integer: signal.alarm's unit)
GRADERS = EXTRACTIONS + (MATH_VERIFY,)  # what --extract accepts
# A run of digits longer than any answer (MAX_NUMBER_CHARS) is no answer here either; left in, sympy compared a
# 1000-digit number with the reference until math-verify's 5 s timeout (tests/fuzz_grader.py's huge numbers)
_LONG_DIGITS = re.compile(r"\d{%d,}" % (MAX_NUMBER_CHARS + 1))


def check_extract(task: str, extract: str) -> str:
    """``extract`` if task ``task`` can grade with it (one line naming the package when math-verify is missing)."""
    if extract not in GRADERS:
        raise UsageError(f"{task}: extract must be one of {', '.join(GRADERS)}, not {extract!r}")
    if extract == MATH_VERIFY:
        _math_verify()
    return extract


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise UsageError('--extract math-verify needs the math-verify package: pip install "mathrl[math]"') from None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # not a line per timed-out completion
    return math_verify


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parsed_reference(reference: str):
    return _math_verify().parse(reference, parsing_timeout=_timeout())


def _math_verify_window(text: str) -> str:
    return _LONG_DIGITS.sub(" ", text[-MATH_VERIFY_WINDOW:])


def extract_math_verify(text: str) -> str | None:
    """The last answer math-verify finds in the end of ``text``, as it writes it (None: none found)."""
    try:
        parsed = _math_verify().parse(_math_verify_window(text), parsing_timeout=_timeout())
    except Exception:  # noqa: BLE001 - model output: a parse that fails is no answer
        return None
    return str(parsed[-1]) if parsed else None


def grade_text(text: str, reference: str, mode: str) -> tuple[str | None, bool]:
    """(extracted answer, correct?) of completion ``text`` against a reference answer under extraction ``mode``
    (one of ``GRADERS``): numbers compared after normalisation, or math-verify's symbolic comparison."""
    if mode != MATH_VERIFY:
        answer = extract_answer(text, mode)
        return answer, answers_equal(answer, reference)
    mv = _math_verify()
    try:
        parsed = mv.parse(_math_verify_window(text), parsing_timeout=_timeout())
        correct = bool(parsed) and mv.verify(_parsed_reference(reference), parsed, timeout_seconds=_timeout())
        return (str(parsed[-1]) if parsed else None), correct
    except Exception:  # noqa: BLE001 - as above
        return None, False


def answers_equal(predicted: str | None, reference: str | None) -> bool:
    """True when both answers are present and name the same number (``5.0 == 5``)."""
    if predicted is None or reference is None:
        return False
    a, b = normalize_number(predicted), normalize_number(reference)
    return a is not None and a == b


def grader_audit(pairs, n_examples: int = 3) -> dict:
    """How often the extractions agree on the same completions: ``pairs`` = [(completion, reference answer,
    name)]. Returns the accuracy under each extraction, the agreement on correctness for each pair of them, the
    count of every pattern of verdicts ("strict+ flexible- boxed-": right under strict only), and up to
    ``n_examples`` completions per disagreeing pair (their tail and each extraction's answer)."""
    rows = []
    for text, reference, name in pairs:
        answers = {m: extract_answer(text, m) for m in EXTRACTIONS}
        rows.append((name, text, answers, {m: answers_equal(a, reference) for m, a in answers.items()}, reference))
    n = len(rows)
    out = {"n_completions": n,
           "accuracy": {m: sum(r[3][m] for r in rows) / n if n else float("nan") for m in EXTRACTIONS},
           "agreement": {}, "patterns": {}, "examples": {}}
    for i, a in enumerate(EXTRACTIONS):
        for b in EXTRACTIONS[i + 1:]:
            differ = [r for r in rows if r[3][a] != r[3][b]]
            out["agreement"][f"{a}~{b}"] = 1 - len(differ) / n if n else float("nan")
            out["examples"][f"{a}~{b}"] = [{"name": name, "reference": ref, "answers": answers, "tail": text[-160:]}
                                           for name, text, answers, _, ref in differ[:n_examples]]
    for r in rows:
        key = " ".join(f"{m}{'+' if r[3][m] else '-'}" for m in EXTRACTIONS)
        out["patterns"][key] = out["patterns"].get(key, 0) + 1
    return out
