"""The study's tuning sweep (``mathrl study --sweep``): equal tuning for every algorithm the findings compare.

Each of EI, PPO, RCRL (the sparse reward from SFT) and continued SFT runs once (seed ``SWEEP_SEED``, a seed no
study run uses, so that the selection's noise is not the findings' noise) at each of three learning rates: its
command's default times 0.3, 1 and 3 (``SWEEP_LR``), with the study's own command otherwise (its rollout cap, dev
schedule and plateau stop). The same three-point grid for every algorithm: the sweep is of the same size for each,
and varies the one setting every algorithm has (epochs, PPO's epochs and KL stay at their defaults: a grid over
them as well would be 9 runs per algorithm or more, beyond a study's budget on 2 cores; stated in the report).

Selection, on dev only (the test split is never read): the learning rate whose run ends with the highest dev maj@1
(the last in-run evaluation: the model the study would use, at its plateau stop or its cap); a tie goes to the
smaller rate (the safer one). This module is pure: it reads the runs' histories and writes the table
(``sweep.md``, ``sweep.json``); the study's rates (``budgets.STUDY_LR``) are set from the table it produced
(docs/results.md, "Tuning sweep").
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# a seed no study run uses (the study's are 0 .. seeds - 1)
SWEEP_SEED = 100
# the command's default learning rate x 0.3, 1, 3: ei and rcrl 5e-4 (settings.Optim), ppo 1e-4
# (policy_gradient_config.OPTIM), sft 3e-3 (sft_config)
SWEEP_LR = {"ei": ("1.5e-4", "5e-4", "1.5e-3"), "ppo": ("3e-5", "1e-4", "3e-4"),
            "rcrl": ("1.5e-4", "5e-4", "1.5e-3"), "sft-continued": ("9e-4", "3e-3", "9e-3")}


@dataclass(frozen=True)
class SweepRow:
    """One run of the sweep: its dev maj@1 at the start and at its end (``final``, the model it produces), the
    best point of its dev curve, the rollouts it consumed (training samples; continued SFT: its optimizer steps), where
    it stopped at its plateau (None: at its cap) and the dev questions each point was measured on."""

    algorithm: str  # ei, ppo, rcrl, sft-continued
    lr: str
    start: float | None
    final: float
    best: float
    consumed: int
    plateau_at: int | None
    questions: int


def _questions(path: Path) -> int:
    """The dev questions of a run's last in-run evaluation (one line per evaluation, its questions' records)."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return len(json.loads(lines[-1])["questions"]) if lines else 0


def read_rl(run_dir: Path, algorithm: str, lr: str) -> SweepRow | None:
    """An RL run's row from its ``history.json`` (the records with ``maj@1`` are its dev evaluations); None when
    the run has not finished."""
    path = run_dir / "history.json"
    if not path.is_file() or not (run_dir / "stage.json").is_file():  # not finished: no partial curve is read
        return None
    history = json.loads(path.read_text())
    curve = [h for h in history if "maj@1" in h]
    if not curve:
        return None
    questions = _questions(run_dir / "eval_questions.jsonl")
    return SweepRow(algorithm, lr, curve[0]["maj@1"] if curve[0]["rollouts"] == 0 else None, curve[-1]["maj@1"],
                    max(h["maj@1"] for h in curve), history[-1]["rollouts"], history[-1].get("plateau_at"), questions)


def read_sft(run_dir: Path, lr: str) -> SweepRow | None:
    """Continued SFT's row from its ``metrics.jsonl`` (its dev evaluations log ``dev/maj@1``; one per epoch)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or not (run_dir / "stage.json").is_file():
        return None
    evals = [r for r in map(json.loads, path.read_text().splitlines()) if "dev/maj@1" in r]
    if not evals:
        return None
    questions = _questions(run_dir / "dev_questions.jsonl")
    return SweepRow("sft-continued", lr, None, evals[-1]["dev/maj@1"], max(r["dev/maj@1"] for r in evals),
                    int(evals[-1]["step"]), None, questions)


def select(rows: list[SweepRow]) -> dict[str, SweepRow]:
    """Per algorithm, the row with the highest final dev maj@1; a tie goes to the smaller learning rate."""
    best: dict[str, SweepRow] = {}
    for r in sorted(rows, key=lambda r: float(r.lr)):
        if r.algorithm not in best or r.final > best[r.algorithm].final:
            best[r.algorithm] = r
    return best


def markdown(rows: list[SweepRow], cap: int, command: str) -> str:
    chosen = select(rows)
    lines = [f"Tuning sweep: each algorithm at its default learning rate x 0.3, 1 and 3, seed {SWEEP_SEED}, rollout "
             f"cap {cap:,} with the study's dev schedule and plateau stop; selected on the final dev maj@1 (ties to "
             f"the smaller rate). One seed per setting: a difference between two rates within about "
             f"{2 ** 0.5 / max(1, min((r.questions for r in rows), default=1)) ** 0.5:.3f} (two standard errors of "
             f"the difference of two independent accuracies near 0.5 on the fewest dev questions here; pairing on "
             f"the same questions narrows it) is within noise. Command: `{command}`.", "",
             "| algorithm | lr | dev maj@1 at 0 | final dev maj@1 | best dev maj@1 | consumed | stopped | dev questions | selected |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        start = "" if r.start is None else f"{r.start:.3f}"
        stopped = "" if r.algorithm == "sft-continued" else ("cap" if r.plateau_at is None else f"plateau at {r.plateau_at:,}")
        lines.append(f"| {r.algorithm} | {r.lr} | {start} | {r.final:.3f} | {r.best:.3f} | {r.consumed:,} | "
                     f"{stopped} | {r.questions} | {'yes' if chosen.get(r.algorithm) == r else ''} |")
    return "\n".join(lines) + "\n"


def write(root: Path, rows: list[SweepRow], cap: int, command: str) -> Path:
    """``sweep.md`` and ``sweep.json`` (the rows and the selected rate per algorithm) in ``root``."""
    (root / "sweep.md").write_text(markdown(rows, cap, command))
    (root / "sweep.json").write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                                 "selected": {a: r.lr for a, r in select(rows).items()}}, indent=1))
    return root / "sweep.md"
