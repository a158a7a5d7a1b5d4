"""What the synthetic tasks' step checks share, whichever surface a solution is written in: cutting a solution
into sentences, claiming the quantity a step computes, and turning the verdicts into a ``StepCheck`` (the first
wrong step, else the first needed quantity no step computed)."""

from __future__ import annotations

from mathrl.tasks.base import StepCheck, StepVerdict
from mathrl.tasks.synthetic import Graph, Node

NAME = r"[A-Z][a-z]+"  # a quantity's name, as a regular expression
MAX_STEPS = 64  # a solution longer than this is checked on its first steps only (and is then wrong)
MAX_STEP_CHARS = 200


def sentence_spans(completion: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of the sentences before ``####`` (at most ``MAX_STEPS``), each end just past
    its '.' (or at the end of the body for an unterminated last sentence); blank sentences are skipped."""
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


def claim(line: str, x: str, nodes: dict[str, Node], needed: set[str], done: set[str]) -> StepVerdict | None:
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


def operands_ready(line: str, x: str, operands, needed: set[str], done: set[str]) -> StepVerdict | None:
    """A wrong verdict if a step computing ``x`` uses a needed quantity before a step computed it, else None."""
    for name in operands:
        if name in needed and name not in done - {x}:
            return StepVerdict(line, False, f"uses {name} before computing it")
    return None


def step_check(verdicts: list[StepVerdict], graph: Graph, done: set[str], final_error: str = "") -> StepCheck:
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
