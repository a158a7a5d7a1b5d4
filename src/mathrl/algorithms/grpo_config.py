"""The settings of ``mathrl grpo`` (its loop: ``grpo.py``), in a module that imports no torch so that ``mathrl grpo
--help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.algorithms.policy_gradient_config import OPTIM, Backtrack, Curriculum, PolicyGradient, Scoring, \
    checkpoint_every, validate_policy_gradient
from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.settings import compile_blocks, Compute, Data, EvalSchedule, Evaluation, FewShot, Lora, Optim, Prompting, Run, Sampling, \
    fsdp, resume

ADVANTAGES = ("grpo", "rloo", "reinforce++")
ZERO_SIGNAL = ("keep", "drop", "refill")
# the values losses.ppo_policy_loss takes (named here, where no torch is imported; tests/test_config.py checks that
# they are losses.POLICY_LOSSES and losses.AGGREGATIONS)
POLICY_LOSSES = ("ppo", "gspo", "cispo")
AGGREGATIONS = ("token", "sequence", "constant")

# the keys of the critic's settings that config.yaml files of the single PPO/GRPO loop of earlier versions record:
# read back at these values (those of a critic-free run), refused at any other (they belong to `mathrl ppo`)
_PPO = "is a `mathrl ppo` setting (the value head and GAE)"
RETIRED = {"value_clip": (0.2, _PPO), "vf_coef": (0.5, _PPO), "value_trunk_grad": (False, _PPO),
           "gamma": (1.0, _PPO), "lam": (0.95, _PPO), "whiten_advantages": (True, _PPO), "kl_target": (0.0, _PPO)}


@dataclass
class Config:
    COMMAND = "grpo"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    # in the loop's order: collect, score, advantages, learn, evaluate, checkpoint
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/grpo", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    curriculum: Curriculum = group(Curriculum)  # which train questions each iteration draws
    prompting: Prompting = group(Prompting)
    few_shot: FewShot = group(FewShot)
    sampling: Sampling = group(Sampling)  # k: the group size (>= 2 for grpo and rloo)
    backtracking: Backtrack = group(Backtrack)  # the training prompts' revealed reference steps
    # groups without signal (DAPO's dynamic sampling, Yu et al. 2025)
    zero_signal: str = field("keep", "groups whose samples all got the same return (no advantage; grpo and rloo): "
                                     "keep, drop them, or refill (DAPO's dynamic sampling: drop them and sample "
                                     "further prompts until --prompts groups carry signal; every rollout drawn counts)")
    refill_rounds: int = field(4, "--zero-signal refill: extra sampling rounds per iteration at most (then the "
                                  "iteration learns from the groups it has)")
    max_rollouts: int = field(0, "stop once this many rollouts were drawn (0: after --iterations); the budget of a "
                                 "run whose iterations draw a varying number (--zero-signal refill)")
    scoring: Scoring = group(Scoring)
    overlong_buffer: int = field(0, "DAPO's soft overlong penalty: the reward falls linearly to -1 over the last N "
                                    "tokens before max_new_tokens (0: off)")
    # the baseline (Shao et al. 2024; Ahmadian et al. 2024; Hu et al. 2025)
    advantage: str = field("grpo", "grpo or rloo (group baselines), reinforce++ (the batch's mean and std: Hu et al. "
                                   "2025)")
    advantage_scale: str = field("group", "grpo: divide by the group's std (group), the batch's std (batch: "
                                          "REINFORCE++-baseline) or not (none: Dr.GRPO)")
    pg: PolicyGradient = group(PolicyGradient)
    # the policy-loss family (PPO, GSPO, CISPO; DAPO's clip-higher) and the KL term
    policy_loss: str = field("ppo", "ppo (clipped ratio per token), gspo (one ratio per sequence) or cispo "
                                    "(clipped, detached importance weight x log pi)")
    clip_high: float = field(0.0, "upper ratio clip (DAPO clip-higher: 0.28; 0: the same as --clip)")
    loss_aggregation: str = field("token", "token (DAPO: every token of the minibatch weighted equally), sequence "
                                           "(GRPO: mean per completion, then over completions) or constant "
                                           "(Dr.GRPO: / (completions x max_new_tokens)); the KL term alike")
    mask_truncated: bool = field(False, "leave completions cut at max_new_tokens out of the policy loss (DAPO's "
                                        "overlong filtering)")
    kl_coef: float = field(0.0, "KL-to-reference coefficient in the loss (k3; 0: none and no reference model, as "
                                "in Dr.GRPO / DAPO)")
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
        if self.advantage not in ADVANTAGES:
            raise UsageError(f"unknown advantage {self.advantage!r} ({', '.join(ADVANTAGES)}; PPO with a value head "
                             "is `mathrl ppo`)")
        if self.advantage in ("grpo", "rloo") and self.sampling.k < 2:
            raise UsageError(f"--advantage {self.advantage} compares samples of one prompt: needs k >= 2 "
                             "(with k=1 every advantage is 0 and training is a silent no-op)")
        if self.advantage_scale not in ("group", "batch", "none"):
            raise UsageError("advantage_scale must be group, batch or none")
        if self.advantage != "grpo":
            refuse(self, ["advantage_scale"], f"with --advantage {self.advantage} (it scales grpo's group baseline)")
        if self.policy_loss not in POLICY_LOSSES or self.loss_aggregation not in AGGREGATIONS:
            raise UsageError(f"policy_loss must be one of {', '.join(POLICY_LOSSES)} and loss_aggregation one of "
                             f"{', '.join(AGGREGATIONS)}")
        if self.clip_high < 0:
            raise UsageError("clip_high must be >= 0 (0: the same as clip)")
        if self.policy_loss == "cispo" and self.clip_high > 0:
            refuse(self, ["clip"], "with --policy-loss cispo and --clip-high (CISPO caps its weight at 1 + clip_high "
                                   "only; there is no lower clip)")
        if not 0 <= self.overlong_buffer <= self.sampling.max_new_tokens:
            raise UsageError("overlong_buffer must lie in [0, max_new_tokens]")
        if self.zero_signal not in ZERO_SIGNAL:
            raise UsageError(f"unknown zero_signal {self.zero_signal!r} (known: {', '.join(ZERO_SIGNAL)})")
        if self.zero_signal != "keep" and self.advantage == "reinforce++":
            raise UsageError("--zero-signal drop/refill applies to grpo/rloo (a batch baseline gives every sample "
                             "an advantage)")
        if self.refill_rounds < 1 or self.max_rollouts < 0:
            raise UsageError("refill_rounds must be >= 1 and max_rollouts >= 0")
        if self.zero_signal != "refill":
            refuse(self, ["refill_rounds"], "without --zero-signal refill")
        if self.zero_signal == "refill" and self.curriculum.plr:
            raise UsageError("--zero-signal refill draws further questions from the shuffled pass: not with "
                             "--question-sampling plr (which chooses each iteration's questions itself)")
