"""SVAMP (Patel et al. 2021): 1,000 one- or two-operation word problems in ``SVAMP.json`` (a local copy, else the
hub's ChilleD/SVAMP through ``datasets``: ``data_files.py``).

Each record has ``ID``, ``Body``, ``Question``, ``Equation`` (e.g. ``( 76.0 - 25.0 )``) and ``Answer`` (a float).
One record (chal-680) has an ``Answer`` (1) that its ``Equation`` ((4-2)+3 = 5) contradicts; we grade against
the official Answer, as every SVAMP result does, and flag it with ``meta["equation_mismatch"]``.

SVAMP has no chain-of-thought solutions: the reference solution is the equation with a calculator annotation,
``76 - 25 = <<76-25=51>>51`` then ``#### 51``, so the same extraction, calculator tool and step results serve
GSM8K and SVAMP.

Split: SVAMP ships none. Ours is deterministic and documented: a problem is in **test** when
``blake2b(ID, digest_size=8) mod 5 == 0`` (about 200 problems), otherwise in **train** (about 800); split
``all`` is the whole file; ``dev`` is a fixed 5% of train (as for GSM8K) that training commands leave out. ``difficulty`` is the number of operators in the equation.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mathrl.errors import UsageError
from mathrl.tasks.answers import check_extract, normalize_number
from mathrl.tasks.base import QA_STOP_STRINGS, Problem
from mathrl.tasks.calculator import CalculatorError, evaluate, format_number
from mathrl.tasks.data_files import HUB, find_data_dir, hub_rows
from mathrl.tasks.gsm8k import GSM8KTask, in_dev

SPLITS = ("train", "test", "dev", "all")


def svamp_split(problem_id: str) -> str:
    digest = hashlib.blake2b(problem_id.encode(), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % 5 == 0 else "train"


def _clean_equation(equation: str) -> str:
    """'( 76.0 - 25.0 )' -> '76 - 25' : drop the '.0' of whole numbers and the outer parentheses."""
    eq = re.sub(r"(\d+)\.0\b", r"\1", equation.strip())
    eq = re.sub(r"\s+", " ", eq)
    if eq.startswith("( ") and eq.endswith(" )") and eq.count("(") == 1:
        eq = eq[2:-2]
    return eq


class SVAMPTask:
    stop_strings = QA_STOP_STRINGS
    step_end = "\n"  # the text that ends a step (return-conditioned sampling marks steps after it)

    def __init__(self, data_dir: str | None = None, extract: str = "strict"):
        check_extract("svamp", extract)
        self.name = "svamp"
        self.extract = extract
        self.data_dir = data_dir
        self._all: list[Problem] | None = None

    def problems(self, split: str) -> list[Problem]:
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r} for task svamp (known: {', '.join(SPLITS)})")
        if self._all is None:
            directory = find_data_dir("svamp", self.data_dir, "SVAMP.json")
            if directory is not None:
                self._all = load_svamp(directory / "SVAMP.json")
            else:  # no local copy: the published one (ChilleD/SVAMP), its splits merged back into SVAMP.json's order
                records = [r for rows in hub_rows("svamp").values() for r in rows]
                self._all = svamp_problems(sorted(records, key=_id_order), HUB["svamp"][0])
        if split == "dev":
            return [p for p in self._all if p.meta["split"] == "train" and in_dev(p.id)]
        return [p for p in self._all if split == "all" or p.meta["split"] == split]

    # GSM8K's Question:/Answer: prompts, targets, numeric grading and line steps, shared as functions (the same
    # functions, not an inherited class)
    prompt = GSM8KTask.prompt
    target = GSM8KTask.target
    extract_answer = GSM8KTask.extract_answer
    grade = GSM8KTask.grade
    step_results = GSM8KTask.step_results
    step_spans = GSM8KTask.step_spans


def _id_order(record: dict):
    """SVAMP.json's order: chal-1, chal-2, ... chal-1000 (by the ID's number)."""
    prefix, _, number = str(record.get("ID", "")).rpartition("-")
    return (prefix, int(number)) if number.isdigit() else (str(record.get("ID", "")), 0)


def load_svamp(path: Path) -> list[Problem]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    if not isinstance(records, list):
        raise UsageError(f"{path}: expected a JSON list of problems")
    return svamp_problems(records, str(path))


def svamp_problems(records: list, path: str) -> list[Problem]:
    """Problems from SVAMP records (SVAMP.json's, or the hub copy's); ``path`` names where they come from."""
    problems = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not all(k in r for k in ("ID", "Body", "Question", "Equation", "Answer")):
            raise UsageError(f"{path}: record {i} lacks one of ID, Body, Question, Equation, Answer")
        answer = normalize_number(str(r["Answer"]))
        if answer is None:
            raise UsageError(f"{path}: record {r['ID']} has a non-numeric Answer {r['Answer']!r}")
        equation = _clean_equation(str(r["Equation"]))
        compact = equation.replace(" ", "")
        try:
            value = format_number(evaluate(compact))
        except CalculatorError as e:
            raise UsageError(f"{path}: record {r['ID']}: equation {r['Equation']!r} does not evaluate ({e})") from None
        solution = f"{equation} = <<{compact}={value}>>{value}\n#### {answer}"
        problems.append(Problem(
            id=f"svamp-{r['ID']}",
            question=f"{str(r['Body']).strip()} {str(r['Question']).strip()}",
            solution=solution,
            answer=answer,
            difficulty=sum(compact.count(op) for op in "+-*/"),
            meta={"split": svamp_split(str(r["ID"])), "equation": str(r["Equation"]), "type": r.get("Type", ""),
                  "equation_mismatch": normalize_number(value) != answer},
        ))
    return problems
