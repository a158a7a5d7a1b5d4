"""The settings PPO and GRPO share, defined once and composed by both Configs (``ppo_config.py``,
``grpo_config.py``): where rollouts start (``Backtrack``, a reverse curriculum), how they are scored (``Scoring``),
the loop's shape and guards (``PolicyGradient``), the optimizer defaults (``OPTIM``) and the checks both make
(``validate_policy_gradient``). Groups are flattened into flags (``config.py``): ``--iterations``, ``--clip``...
keep one name, one default and one help text in both.

Why a module of its own beside ``rollouts.py`` (the stages the two loops share, which import torch): the CLI builds
``mathrl ppo --help`` from the Config, and importing torch for it would take seconds. Like every ``*_config.py``
of this package it imports no torch: only the settings layer (``config.py``, ``settings.py``, ``errors.py``) and
``rewards.py``, whose ``user_reward`` imports a ``--reward module:function`` while the config is validated, so
that a typo fails before any work (the user's module is the user's code; mathrl's side of it imports no torch).
"""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, refuse
from mathrl.errors import UsageError
from mathrl.rewards import is_user_reward, user_reward
from mathrl.settings import one_of, validate_sampling_trainer, validate_schedule


@dataclass
class Scoring:
    """How rollouts are scored (``rollouts.score``)."""

    reward: str = field("sparse", "sparse (answer correct), verified, dense (+ matched steps), orm, or "
                                  "module:function (your own, TRL's signature: f(prompts, completions, **columns))")
    orm: str = field("", "reward-model directory (reward orm)")
    orm_mode: str = field("terminal", "orm reward: terminal (score at the end) or step (score changes at step ends)")

    def validate(self) -> None:
        if is_user_reward(self.reward):
            user_reward(self.reward)  # import it now: a typo fails before any work
        elif self.reward not in ("sparse", "verified", "dense", "orm"):
            raise UsageError(f"unknown reward {self.reward!r} (sparse, verified, dense, orm, module:function)")
        if self.reward != "orm":
            refuse(self, ["orm", "orm_mode"], "without --reward orm")
        elif not self.orm:
            raise UsageError("--reward orm needs --orm DIR (the reward model)")
        if self.orm_mode not in ("terminal", "step"):
            raise UsageError("orm_mode must be terminal or step")

    @property
    def orm_steps(self) -> bool:
        return self.reward == "orm" and self.orm_mode == "step"


BACKTRACK_MODES = ("none", "schedule", "adaptive")


@dataclass
class Backtrack:
    """Backtracking, a reverse curriculum (Salimans & Chen 2018; Xi et al. 2024, R3): a training prompt is the
    bare question's prompt plus the first j steps of the reference solution, and j moves from n_steps - 1 (the
    model writes only the last step) to 0 (the bare question) as training goes on (``backtrack.py``; the reward
    grades the whole solution, prefix + completion; evaluation always starts from the bare question)."""

    backtrack: str = field("none", "reverse curriculum: none; schedule (j revealed reference steps, from n_steps - 1 "
                                   "down to 0 linearly over the first --backtrack-fraction of the iterations); "
                                   "adaptive (per question: one step earlier once its group's success rate "
                                   "reaches --backtrack-threshold)")
    backtrack_fraction: float = field(0.5, "--backtrack schedule: the fraction of the iterations over which the "
                                           "revealed steps fall to 0 (the rest start from the bare question)")
    backtrack_threshold: float = field(0.5, "--backtrack adaptive: the group success rate (correct answers of the "
                                            "question's K samples, prefix + completion graded) at which a question "
                                            "moves one step earlier")

    def validate(self) -> None:
        one_of(self.backtrack, BACKTRACK_MODES, "backtrack")
        if not 0 < self.backtrack_fraction <= 1 or not 0 < self.backtrack_threshold <= 1:
            raise UsageError("backtrack_fraction and backtrack_threshold must lie in (0, 1]")
        if self.backtrack != "schedule":
            refuse(self, ["backtrack_fraction"], f"with --backtrack {self.backtrack} (it sets the schedule's length)")
        if self.backtrack != "adaptive":
            refuse(self, ["backtrack_threshold"], f"with --backtrack {self.backtrack} (it moves adaptive's questions)")


QUESTION_SAMPLING = ("uniform", "plr")
PLR_SCORES = ("p1mp", "abs-advantage")  # plr.SCORES (named here, where no torch is imported)


@dataclass
class Curriculum:
    """Which train questions each iteration draws (``pg_run.draw_questions``): the run's shuffled pass, or
    prioritized level replay (Jiang et al. 2021; ``plr.py``, where each setting chosen beyond the paper is
    stated). Havrilla et al. 2024 tried PLR as a curriculum for PPO and found it did not beat plain PPO."""

    question_sampling: str = field("uniform", "uniform (one shuffled pass over the train split) or plr (prioritized "
                                              "level replay: replay seen questions by learning potential and "
                                              "staleness, else the next unseen one of the pass)")
    plr_score: str = field("p1mp", "plr: a question's learning potential from its most recent group: p1mp (p(1-p) "
                                   "of its pass rate p) or abs-advantage (the mean |advantage| of its samples: Jiang "
                                   "et al.'s L1 value loss; PPO: GAE before whitening)")
    plr_temperature: float = field(0.1, "plr: beta of the rank prioritization P_S ~ (1/rank)^(1/beta) (Jiang et "
                                        "al.: 0.1)")
    plr_staleness: float = field(0.1, "plr: rho, the staleness weight in P_replay = (1-rho) P_S + rho P_C (Jiang et "
                                      "al.: 0.1)")
    plr_replay_prob: float = field(0.5, "plr: probability that a draw replays a seen question rather than take the "
                                        "next unseen one (from the second iteration on; always once all are seen)")

    def validate(self) -> None:
        one_of(self.question_sampling, QUESTION_SAMPLING, "question_sampling")
        if self.question_sampling == "uniform":
            refuse(self, ["plr_score", "plr_temperature", "plr_staleness", "plr_replay_prob"],
                   "with --question-sampling uniform")
        one_of(self.plr_score, PLR_SCORES, "plr_score")
        if self.plr_temperature <= 0:
            raise UsageError("--plr-temperature must be > 0")
        if not 0 <= self.plr_staleness < 1:
            raise UsageError("--plr-staleness must lie in [0, 1) (at 1 the scores would not matter)")
        if not 0 < self.plr_replay_prob <= 1:
            raise UsageError("--plr-replay-prob must lie in (0, 1] (at 0 plr is the uniform pass)")

    @property
    def plr(self) -> bool:
        return self.question_sampling == "plr"


MINIBATCH_ORDERS = ("group", "rollout")


@dataclass
class PolicyGradient:
    """The loop: ``iterations`` x (collect ``prompts`` x K rollouts, learn in ``ppo_epochs`` passes of clipped
    updates), its divergence guard, and how often it evaluates (``checkpoint_every`` is a field of each Config:
    the Rounds group of EI and RCRL has a flag of that name that counts fine-tuning steps)."""

    iterations: int = field(40, "rollout batches")
    prompts: int = field(64, "prompts per rollout batch")
    ppo_epochs: int = field(2, "passes over each rollout batch")
    clip: float = field(0.2, "PPO ratio clip (the lower side, and the upper one unless --clip-high)")
    kl_bound: float = field(10.0, "stop (divergence) when the mean KL to the reference per sequence exceeds this "
                                  "(with a reference model: --kl-coef > 0)")
    vllm_is_cap: float = field(2.0, "--engine vllm: cap of each token's importance weight pi_trainer / pi_engine "
                                    "(TIS)")
    eval_every: int = field(10, "--eval-at every: iterations between evaluations (0: only at the end)")
    minibatch: str = field("group", "how each epoch cuts the rollouts into minibatches: group (whole groups of K "
                                    "in a random order: each prompt is forwarded once per minibatch for its K "
                                    "samples) or rollout (rows in a random order)")

    def validate(self) -> None:
        for name in ("iterations", "prompts", "ppo_epochs"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        one_of(self.minibatch, MINIBATCH_ORDERS, "minibatch")


def checkpoint_every():
    return field(5, "iterations between checkpoints")


# AdamW at a constant learning rate after a short warmup; batch_size: rollouts per optimizer step (a minibatch)
OPTIM = dict(lr=1e-4, warmup_steps=5, weight_decay=0.0, min_lr_ratio=1.0, batch_size=64)


def validate_policy_gradient(cfg) -> None:
    """The checks of a PPO or GRPO config that concern what both share (each Config's ``validate`` goes on with
    its own settings)."""
    validate_sampling_trainer(cfg, "the starting policy")
    cfg.curriculum.validate()
    cfg.scoring.validate()
    cfg.backtracking.validate()
    if cfg.curriculum.plr and cfg.backtracking.backtrack == "adaptive":
        # PLR scores a question at the start it was drawn from; adaptive moves that start once the question is
        # solved there, so its last score (p(1-p) = 0 when every sample solved it) would keep it from returning
        raise UsageError("--backtrack adaptive with --question-sampling plr: PLR would keep each question's score "
                         "from before its start moved earlier (use one of them, or --backtrack schedule)")
    cfg.pg.validate()
    if cfg.checkpoint_every < 1:
        raise UsageError("checkpoint_every must be >= 1")
    if cfg.pg.clip <= 0 or cfg.kl_coef < 0 or cfg.pg.kl_bound <= 0:
        raise UsageError("clip and kl_bound must be > 0; kl_coef >= 0")
    if cfg.pg.vllm_is_cap < 1:
        raise UsageError("--vllm-is-cap must be >= 1")
    if cfg.sampling.engine != "vllm":
        refuse(cfg, ["vllm_is_cap"], "without --engine vllm (the trainer samples with its own log-probs)")
    if cfg.kl_coef == 0:
        refuse(cfg, ["kl_bound"], "with --kl-coef 0 (no reference model, the KL is not measured)")
    if not cfg.eval.eval_size:
        refuse(cfg, ["eval_every"], "with --eval-size 0 (no evaluations)")
    validate_schedule(cfg)
    if cfg.schedule.eval_at == "log":
        refuse(cfg, ["eval_every"], "with --eval-at log (the evaluations follow the log-spaced schedule)")
