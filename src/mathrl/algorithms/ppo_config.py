"""The settings of ``mathrl ppo`` (its loop: ``ppo.py``), in a module that imports no torch so that ``mathrl ppo
--help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.algorithms.policy_gradient_config import OPTIM, Backtrack, Curriculum, PolicyGradient, Scoring, \
    checkpoint_every, validate_policy_gradient
from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.settings import compile_blocks, Compute, Data, EvalSchedule, Evaluation, FewShot, Lora, Optim, Prompting, Run, Sampling, \
    fsdp, resume

# the keys of the critic-free settings that config.yaml files of the single PPO/GRPO loop of earlier versions
# record: read back at these values (those of a PPO run), refused at any other (they belong to `mathrl grpo`)
_GRPO = "is a `mathrl grpo` setting (critic-free: mathrl grpo --advantage grpo|rloo|reinforce++)"
RETIRED = {"advantage": ("gae", _GRPO), "clip_high": (0.0, _GRPO), "policy_loss": ("ppo", _GRPO),
           "loss_aggregation": ("token", _GRPO), "advantage_scale": ("group", _GRPO), "overlong_buffer": (0, _GRPO),
           "mask_truncated": (False, _GRPO), "zero_signal": ("keep", _GRPO), "refill_rounds": (4, _GRPO),
           "max_rollouts": (0, _GRPO)}


@dataclass
class Config:
    COMMAND = "ppo"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    # in the loop's order: collect, score, advantages, learn, evaluate, checkpoint
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/ppo", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    curriculum: Curriculum = group(Curriculum)  # which train questions each iteration draws
    prompting: Prompting = group(Prompting)
    few_shot: FewShot = group(FewShot)
    sampling: Sampling = group(Sampling)
    backtracking: Backtrack = group(Backtrack)  # the training prompts' revealed reference steps
    scoring: Scoring = group(Scoring)
    # the rewards: the outcome (scoring) minus kl_coef x the KL to the reference (Ziegler et al. 2019)
    kl_coef: float = field(0.05, "KL-to-reference coefficient of the per-token reward penalty (0: no reference "
                                 "model)")
    kl_target: float = field(0.0, "adaptive KL: target KL per sequence (0: fixed coefficient)")
    # GAE's advantages (trlX's defaults)
    gamma: float = field(1.0, "discount")
    lam: float = field(0.95, "GAE lambda")
    whiten_advantages: bool = field(True, "whiten GAE advantages over the batch")
    pg: PolicyGradient = group(PolicyGradient)
    # the critic's loss
    value_clip: float = field(0.2, "value-loss clip")
    vf_coef: float = field(0.5, "value-loss weight")
    value_trunk_grad: bool = field(False, "let the value loss train the shared trunk too (default: the value head "
                                          "reads the trunk's hidden states but its gradient stops there)")
    optim: Optim = group(Optim, **OPTIM)
    lora: Lora = group(Lora)  # with LoRA the reference is the frozen base (the adapters disabled)
    compile: bool = compile_blocks()
    fsdp: bool = fsdp()
    eval: Evaluation = group(Evaluation)
    schedule: EvalSchedule = group(EvalSchedule)
    checkpoint_every: int = checkpoint_every()
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    RETIRED = RETIRED

    def validate(self) -> None:
        validate_policy_gradient(self)
        for name in ("gamma", "lam"):  # GAE's discount and lambda weigh future terms: each in [0, 1]
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("value_clip", "vf_coef"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kl_target < 0:
            raise UsageError("kl_target must be >= 0 (0: fixed coefficient)")
        if self.kl_coef == 0:
            refuse(self, ["kl_target"], "with --kl-coef 0 (the adaptive coefficient is a multiple of it: it stays 0)")
