"""A safe arithmetic evaluator for GSM8K calculator annotations ``<<expr=result>>``.

GSM8K's reference code (openai/grade-school-math, ``calculator.py``) runs ``eval`` under a signal timeout. We
never execute model text: this is a recursive-descent parser over a tiny grammar, evaluated with exact
rationals (``fractions.Fraction``), so ``1/3*3`` is exactly ``1``.

Grammar (the operators that occur in GSM8K's 28k annotations)::

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/' | '//') factor)*
    factor := ('-' | '+') factor | NUMBER | '(' expr ')'
    NUMBER := digits with optional ',' separators and '.', or '.digits'

Every limit below is checked before the work it bounds, so hostile input (``9**9**9``, ``1e999999``, 10,000
nested parentheses, a 1 MB line) is rejected in microseconds with ``CalculatorError``; nothing else is raised.
"""

from __future__ import annotations

import itertools
import re
from fractions import Fraction

MAX_EXPR_CHARS = 200  # longest annotation in GSM8K is ~60 characters
MAX_DEPTH = 16  # parentheses and unary signs nested
MAX_NUMBER_DIGITS = 20  # per literal
MAX_MAGNITUDE = Fraction(10) ** 30  # |value| and denominators of every intermediate result

_TOKEN = re.compile(r"\s*(?:(\d[\d,]*(?:\.\d*)?|\.\d+)|(//|[-+*/()]))")


class CalculatorError(ValueError):
    """The expression is malformed, uses something outside the grammar, or exceeds a limit."""


def _tokenize(expr: str) -> list[str | Fraction]:
    tokens: list[str | Fraction] = []
    pos, n = 0, len(expr)
    while pos < n:
        if expr[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise CalculatorError(f"unexpected character {expr[pos]!r}")
        number, op = m.group(1), m.group(2)
        if number is not None:
            digits = number.replace(",", "")
            if sum(c.isdigit() for c in digits) > MAX_NUMBER_DIGITS:
                raise CalculatorError("number too long")
            tokens.append(Fraction(digits.rstrip(".") or "0"))
        else:
            tokens.append(op)
        pos = m.end()
    return tokens


def _check(value: Fraction) -> Fraction:
    if abs(value) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise CalculatorError("result too large")
    return value


class _Parser:
    def __init__(self, tokens: list[str | Fraction]):
        self.tokens = tokens
        self.i = 0

    def peek(self) -> str | Fraction | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> str | Fraction | None:
        tok = self.peek()
        self.i += 1
        return tok

    def expr(self, depth: int) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term(depth)
            value = _check(value + rhs if op == "+" else value - rhs)
        return value

    def term(self, depth: int) -> Fraction:
        value = self.factor(depth)
        while self.peek() in ("*", "/", "//"):
            op = self.take()
            rhs = self.factor(depth)
            if op == "*":
                value = _check(value * rhs)
            else:
                if rhs == 0:
                    raise CalculatorError("division by zero")
                value = _check(value / rhs if op == "/" else Fraction(value // rhs))
        return value

    def factor(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise CalculatorError("expression nested too deeply")
        tok = self.take()
        if isinstance(tok, Fraction):
            return _check(tok)
        if tok == "-":
            return -self.factor(depth + 1)
        if tok == "+":
            return self.factor(depth + 1)
        if tok == "(":
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise CalculatorError("missing ')'")
            return value
        raise CalculatorError("unexpected end of expression" if tok is None else f"unexpected {tok!r}")


def evaluate(expr: str) -> Fraction:
    """Exact value of an arithmetic expression, or ``CalculatorError``.

    >>> evaluate("2*(3+4)")
    Fraction(14, 1)
    >>> evaluate("1,000/8")
    Fraction(125, 1)
    """
    if not isinstance(expr, str):
        raise CalculatorError("expression must be text")
    if len(expr) > MAX_EXPR_CHARS:
        raise CalculatorError("expression too long")
    parser = _Parser(_tokenize(expr))
    value = parser.expr(0)
    if parser.peek() is not None:
        raise CalculatorError(f"unexpected {parser.peek()!r}")
    return value


def format_number(value: Fraction, max_decimals: int = 6) -> str:
    """Render a result as GSM8K writes it: integers plainly, others as a rounded decimal without trailing zeros.

    >>> format_number(Fraction(7, 2))
    '3.5'
    >>> format_number(Fraction(1, 3))
    '0.333333'
    """
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.{max_decimals}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


# <<expr=result>>: both parts bounded so that a hostile 1 MB line cannot make the regex work hard.
ANNOTATION = re.compile(r"<<([^<>=]{0,%d})=([^<>=]{0,%d})>>" % (MAX_EXPR_CHARS, 64))
# GSM8K's reference solutions have at most 9 annotations. Without a cap, a hostile 1 MB text packed with
# 150,000 annotations costs ~50 ms to list and seconds to check with ``consistent``.
MAX_ANNOTATIONS = 256


def annotations(text: str) -> list[tuple[str, str]]:
    """The ``(expr, result)`` calculator annotations in a text, in order (the first MAX_ANNOTATIONS)."""
    return [m.groups() for m in itertools.islice(ANNOTATION.finditer(text), MAX_ANNOTATIONS)]


def consistent(expr: str, result: str, rel_tol: float = 1e-2) -> bool:
    """Whether ``expr`` evaluates to the written ``result`` (relative tolerance for rounded decimals)."""
    try:
        value = evaluate(expr)
        stated = evaluate(result)
    except CalculatorError:
        return False
    if value == stated:
        return True
    return abs(value - stated) <= Fraction(rel_tol) * max(abs(value), Fraction(1, 100))
