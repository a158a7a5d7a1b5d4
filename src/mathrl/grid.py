"""The study's grid as data: every RL run of ``mathrl study`` in one table (``RUNS``), read by ``study.plan``
(each row becomes one stage per seed, and its final evaluation) and by the report (labels, findings, tables).

A run's name is its directory on disk (OUT/seed-N/NAME, its final evaluation OUT/seed-N/eval-NAME): a study
directory is resumed by these names, so they stay as they are.

``mathrl study --sizes tiny,small`` (finding F7) adds, for each size after the first (the grid's), its own
pretrain, SFT and EI and PPO runs (``size_runs``): their names carry the size (``pretrain-small``, ``sft-small``,
``ei-sparse-sft-small``), so they never collide with the grid's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mathrl.settings import MODEL_SIZES

# the shared models every RL run is compared with: the SFT model, and the pretrained start (``pretrain``: the
# synthetic study's own pretraining stage; ``pretrained``: a given HF model, --task gsm8k/svamp --model DIR)
SFT, PRETRAIN, PRETRAINED = "sft", "pretrain", "pretrained"
# the shared stages a run's flags may name as {NAME} (Run.reads): the reward models and the backtranslated pairs
SHARED_INPUTS = ("orm", "sorm", "backtranslate")
SHARED_LABELS = {SFT: "SFT", PRETRAIN: "pretrained start", PRETRAINED: "pretrained start"}
# the embedded model's size the grid pretrains by default (pretrain's --size default); MODEL_SIZES lists the
# sizes smallest first (tests/test_study.py checks it on their parameter counts)
GRID_SIZE = "tiny"


def sized(model: str, size: str) -> str:
    """The name of a shared model (pretrain, sft) or a run of another model size than the grid's: ``NAME-SIZE``
    (``size`` "": the grid's own, ``NAME``)."""
    return f"{model}-{size}" if size else model


@dataclass(frozen=True)
class Run:
    """One RL run of the grid, run once per seed from ``start`` with the study's rollout budget.

    ``flags`` are added to its command; plan() fills in {orm} and {sorm} (the shared reward models' directories)
    and {backtranslate} (the shared backtranslated pairs' file): the run reads them, so it waits for them;
    {budget} (the rollout budget) and {overlong} (a quarter of the completion length). ``real_task_flags`` are
    added on a real task (gsm8k/svamp: no step checker)."""

    name: str
    algorithm: Literal["EI", "PPO", "GRPO", "RCRL", "SFT"]  # the command: ei, ppo, grpo, rcrl, sft
    reward: Literal["sparse", "dense", "orm", "reference"]  # reference: SFT on reference solutions, no reward
    start: Literal["sft", "pretrained"]
    seeds: Literal["seeds", "variant_seeds"] = "seeds"  # which of the study's seed counts it runs
    flags: tuple[str, ...] = ()
    real_task_flags: tuple[str, ...] = ()
    objective: str = ""  # the GRPO loss variant it tests (--ablation objectives)
    variant: str = ""  # what it adds to its algorithm, for its label (--ablation curriculum: the curriculum)
    ablation: str = ""  # the --ablation that adds it; "" for the paper's grid
    size: str = ""  # the model size it trains (from that size's own pretrain and SFT: --sizes); "" the grid's

    @property
    def start_model(self) -> str:
        """The shared model it starts from, by name: the SFT model of its size, or the pretrained start (the
        study's own ``pretrain``, or a given model's ``pretrained``: ``findings.start_of`` picks)."""
        return sized(SFT, self.size) if self.start == "sft" else PRETRAIN

    @property
    def command(self) -> str:
        return self.algorithm.lower()

    def reads(self, real_task: bool) -> list[str]:
        """The shared stages its flags name (reward models, backtranslated pairs): stages it needs besides its
        start."""
        flags = self.flags + (self.real_task_flags if real_task else ())
        return [m for m in SHARED_INPUTS if "{" + m + "}" in flags]

    @property
    def forces_steps(self) -> bool:
        """RCRL with dense returns forces a marker after every step while sampling: mathrl's sampler only (and
        for the evaluation of its model too)."""
        return self.algorithm == "RCRL" and self.reward == "dense"

    @property
    def label(self) -> str:
        name = f"GRPO loss as {self.objective}" if self.objective else self.algorithm
        if "balanced" in self.flags:
            name += " balanced labels"
        size = f", {self.size} model" if self.size else ""
        if self.algorithm == "SFT":
            name = "SFT continued (reference solutions"
            return f"{name}, {self.variant}, from {self.start}{size})" if self.variant else f"{name}, from {self.start}{size})"
        return f"{name} ({self.reward}, from {self.start}{size}{', ' + self.variant if self.variant else ''})"


# the paper's comparisons with the sparse reward from SFT (findings F1, F2, F3, F6): ``seeds`` seeds each. GRPO
# is the base of the objectives ablation (each loss variant minus GRPO), not one of the paper's algorithms: it
# runs with --ablation objectives
EI = Run("ei-sparse-sft", "EI", "sparse", "sft")
PPO = Run("ppo-sparse-sft", "PPO", "sparse", "sft")
GRPO = Run("grpo-sparse-sft", "GRPO", "sparse", "sft", ablation="objectives")
# RCRL trains on its samples only, as EI and PPO do: its default (the reference solutions added, marked good) would
# give one RL algorithm supervised data the others do not see
RCRL = Run("rcrl-sparse-sft", "RCRL", "sparse", "sft", flags=("--no-include-references",))
# F2 (b): SFT trained on from the SFT model with an RL run's budget (one pass over as many of SFT's own training
# problems as an RL run draws rollouts), evaluated on test like the RL runs: the paper's continued SFT, which
# raises maj@1 while pass@96 falls
SFT_MORE = Run("sft-continued", "SFT", "reference", "sft")
# the policy-gradient objectives compared today, each a switch on GRPO's loss (docs/algorithms.md), with its
# paper's settings where they name one: DAPO clip-higher 0.28, dynamic sampling (zero-signal groups replaced by
# further draws, which count in the same rollout budget: --max-rollouts), soft overlong penalty over the last
# quarter of the length limit; GSPO's sequence-ratio clip 3e-4 / 4e-4; CISPO's weight capped at 1 + 0.28
OBJECTIVES = (
    Run("grpo-drgrpo-sft", "GRPO", "sparse", "sft", objective="Dr.GRPO", ablation="objectives",
        flags=("--advantage-scale", "none", "--loss-aggregation", "constant")),
    Run("grpo-dapo-sft", "GRPO", "sparse", "sft", objective="DAPO", ablation="objectives",
        flags=("--clip-high", "0.28", "--zero-signal", "refill", "--max-rollouts", "{budget}", "--overlong-buffer",
               "{overlong}")),
    Run("grpo-gspo-sft", "GRPO", "sparse", "sft", objective="GSPO", ablation="objectives",
        flags=("--policy-loss", "gspo", "--loss-aggregation", "sequence", "--clip", "3e-4", "--clip-high", "4e-4")),
    Run("grpo-cispo-sft", "GRPO", "sparse", "sft", objective="CISPO", ablation="objectives",
        flags=("--policy-loss", "cispo", "--clip-high", "0.28")),
)
# the paper's negative results (--ablation curriculum), each against its plain run on the sparse reward from SFT,
# with the grid's budget and seeds: PPO with a curriculum (backtracking: revealed reference steps falling to none
# over the first half of the run, backtrack.py; prioritized level replay, plr.py) and EI and continued SFT with
# backtranslated pairs (made once from the SFT model by the shared backtranslate stage; 0.5 pairs per real
# training example: the paper's summary gives no ratio)
BACKTRANSLATED = ("--backtranslated", "{backtranslate}", "--backtranslated-ratio", "0.5")
PPO_BACKTRACK = Run("ppo-backtrack-sft", "PPO", "sparse", "sft", flags=("--backtrack", "schedule"),
                    variant="backtracking", ablation="curriculum")
PPO_PLR = Run("ppo-plr-sft", "PPO", "sparse", "sft", flags=("--question-sampling", "plr"), variant="PLR",
              ablation="curriculum")
EI_BACKTRANSLATED = Run("ei-backtranslated-sft", "EI", "sparse", "sft", flags=BACKTRANSLATED,
                        variant="backtranslated data", ablation="curriculum")
SFT_MORE_BACKTRANSLATED = Run("sft-continued-backtranslated", "SFT", "reference", "sft", flags=BACKTRANSLATED,
                              variant="backtranslated data", ablation="curriculum")
CURRICULUM = (PPO_BACKTRACK, PPO_PLR, EI_BACKTRANSLATED, SFT_MORE_BACKTRANSLATED)
# the reward variants (F4) and the pretrained start (F5, and F1 from it): ``variant_seeds`` seeds each. Dense RCRL
# on a real task labels steps with the SORM (there is no exact step checker): the study trains the SORM only
# where a run reads it
EI_ORM = Run("ei-orm-sft", "EI", "orm", "sft", "variant_seeds", ("--reward", "orm", "--orm", "{orm}"))
PPO_DENSE = Run("ppo-dense-sft", "PPO", "dense", "sft", "variant_seeds", ("--reward", "dense"))
PPO_ORM = Run("ppo-orm-sft", "PPO", "orm", "sft", "variant_seeds", ("--reward", "orm", "--orm", "{orm}"))
RCRL_DENSE = Run("rcrl-dense-sft", "RCRL", "dense", "sft", "variant_seeds",
                 ("--returns", "dense", "--no-include-references"),
                 real_task_flags=("--step-labels", "sorm", "--sorm", "{sorm}"))
EI_PRETRAINED = Run("ei-sparse-pretrained", "EI", "sparse", "pretrained", "variant_seeds")
PPO_PRETRAINED = Run("ppo-sparse-pretrained", "PPO", "sparse", "pretrained", "variant_seeds")
# F8 (--ablation label-ratio): RCRL with the natural ratio of good to bad labels and with a balanced one (as many
# bad samples kept as good ones: rcrl --label-ratio balanced), from the pretrained start: its samples are mostly
# wrong (the study's live start: maj@1 <= 0.10), so the natural ratio is far from 1:1 and balancing changes the
# data; from SFT (greedy maj@1 ~0.64, docs/results.md) the natural ratio is nearer 1:1 and balancing would change
# little (F8 is gated on the natural good fraction). Variant seeds, the grid's budget; on its samples only (no
# reference solutions), as the grid's RCRL
RCRL_PRETRAINED = Run("rcrl-sparse-pretrained", "RCRL", "sparse", "pretrained", "variant_seeds",
                      ("--no-include-references",), ablation="label-ratio")
RCRL_BALANCED = Run("rcrl-balanced-pretrained", "RCRL", "sparse", "pretrained", "variant_seeds",
                    ("--no-include-references", "--label-ratio", "balanced"), ablation="label-ratio")

# in the order the study plans them (and the report lists them): per seed, the paper's sparse runs, then the
# ablation's, then per variant seed the variants, then the variant-seed ablations' runs
RUNS = (EI, PPO, GRPO, RCRL, *OBJECTIVES, SFT_MORE, *CURRICULUM, EI_ORM, PPO_DENSE, PPO_ORM, RCRL_DENSE, EI_PRETRAINED,
        PPO_PRETRAINED, RCRL_PRETRAINED, RCRL_BALANCED)
ABLATIONS = sorted({r.ablation for r in RUNS} - {""})


def size_runs(size: str) -> tuple[Run, Run]:
    """F7 (--sizes): EI and PPO with the sparse reward from the SFT model of ``size`` (its own pretrain and SFT),
    variant seeds, the grid's budget, compared with the grid's EI and PPO. Generated rather than listed: they are
    the grid's two rows with a size, the same for every size of MODEL_SIZES."""
    return tuple(Run(sized(r.name, size), r.algorithm, r.reward, r.start, "variant_seeds", r.flags, size=size)
                 for r in (EI, PPO))


BY_NAME = {r.name: r for r in RUNS + tuple(r for size in MODEL_SIZES for r in size_runs(size))}


def runs_by_seed_count(ablation: str) -> list[tuple[str, list[Run]]]:
    """The grid's runs, in blocks that share a seed count: ("seeds", the paper's sparse runs), ("seeds", the
    ablation's runs that have them), ("variant_seeds", the variants), ("variant_seeds", the ablation's runs that
    have those). Each block is planned seed by seed. (The runs of further model sizes: ``size_runs``.)"""
    paper = [r for r in RUNS if not r.ablation]
    extra = [r for r in RUNS if ablation and r.ablation == ablation]
    return [("seeds", [r for r in paper if r.seeds == "seeds"]),
            ("seeds", [r for r in extra if r.seeds == "seeds"]),
            ("variant_seeds", [r for r in paper if r.seeds == "variant_seeds"]),
            ("variant_seeds", [r for r in extra if r.seeds == "variant_seeds"])]
