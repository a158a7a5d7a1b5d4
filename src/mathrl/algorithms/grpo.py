"""Critic-free policy gradient with group or batch baselines: GRPO, RLOO and REINFORCE++ (PPO with a value head
is ``algorithms/ppo.py``).

- ``--advantage grpo`` (Shao et al. 2024): (r - mean_group) / std_group, the same for every token of a sample;
  ``--advantage-scale none`` drops the std (Dr.GRPO), ``batch`` divides by the batch's std (REINFORCE++-baseline).
  ``rloo`` (Ahmadian et al. 2024): r - the mean of the other samples of the prompt. ``reinforce++`` (Hu et al.
  2025): (r - mean_batch) / std_batch (``advantages.group_advantages``).
- The policy-loss family (``losses.ppo_policy_loss``): PPO's clipped ratio per token, GSPO's one ratio per
  sequence, CISPO's clipped, detached weight; DAPO's clip-higher (``--clip-high``); the aggregation over tokens
  (token: DAPO; sequence: GRPO eq. 3; constant: Dr.GRPO), applied to the policy term and the KL term alike.
- With ``--kl-coef`` > 0 the k3 estimate of KL(pi || pi_ref) enters the loss (as in GRPO; Hu et al. put it in the
  reward); with 0 (the default, as Dr.GRPO and DAPO) no reference model is built.
- Groups whose samples all got the same return carry no signal: their fraction is logged
  (``zero_signal_fraction``); ``--zero-signal drop`` leaves them out of the learning step and ``refill`` (DAPO's
  dynamic sampling) draws further prompts until the batch is full of groups with signal, every rollout drawn
  counted in the budget (``--max-rollouts``). DAPO's soft overlong penalty (``--overlong-buffer``) and overlong
  filtering (``--mask-truncated``).

The loss of these methods sits near zero by construction (advantages average to zero within a group): watch the
reward and maj@1, not the loss.

Loop per iteration (the same step names as ppo.py): **collect** (with refill: several sampling rounds) ->
**score** (``rollouts.score``, the one scoring function; refill scores each round to find the signal) ->
**old passes**: pi_old (``rollouts.old_policy``), the reference's log-probs -> **advantages** -> **learn** ->
**log** -> **evaluate** -> **checkpoint**.

Shapes: N = rollouts in the batch, C = completion tokens (right-padded), K = samples per prompt.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mathrl import checkpoint as ckpt
from mathrl import distributed, engines
from mathrl.advantages import group_advantages, group_signal, kl_penalty_rewards
from mathrl.config import field, group, refuse, save as save_config
from mathrl.errors import UsageError
from mathrl.evaluate import evaluate_in_run
from mathrl.losses import AGGREGATIONS, POLICY_LOSSES, aggregate, ppo_policy_loss
from mathrl.models import apply_lora, final_model, load_model
from mathrl.record import ModelRecord, read_record
from mathrl.rollouts import OPTIM, Experience, LearnStats, Scores, Scoring, checkpoint_every, clip, eval_every, \
    forward_policy, iterations, kl_bound, minibatches, next_problems, old_policy, optimizer_step, pack_rollouts, \
    ppo_epochs, prompts, reference_logprobs, sample, score, validate_shared, vllm_is_cap
from mathrl.runlog import RunLogger, progress, write_history
from mathrl.reward_model import load_reward_model
from mathrl.runsetup import few_shot_examples, start_run, task_for, warn_tiny_default_lr, write_record
from mathrl.seeds import rng_state, set_rng_state
from mathrl.sampler import completion_stats
from mathrl.settings import Compute, Data, Evaluation, FewShot, Lora, Optim, Prompting, Run, Sampling, fsdp, \
    no_lora_with_fsdp, resume, validate_groups
from mathrl.tasks import task_options
from mathrl.tasks.prompting import prompt_record
from mathrl.training import lr_at, make_optimizer, set_lr

ADVANTAGES = ("grpo", "rloo", "reinforce++")
ZERO_SIGNAL = ("keep", "drop", "refill")

# the keys of the critic's settings that config.yaml files of the single PPO/GRPO loop of earlier versions record:
# read back at these values (those of a critic-free run), refused at any other (they belong to `mathrl ppo`)
_PPO = "is a `mathrl ppo` setting (the value head and GAE)"
RETIRED = {"value_clip": (0.2, _PPO), "vf_coef": (0.5, _PPO), "value_trunk_grad": (False, _PPO),
           "gamma": (1.0, _PPO), "lam": (0.95, _PPO), "whiten_advantages": (True, _PPO), "kl_target": (0.0, _PPO)}


@dataclass
class Config:
    model: str = field("", "starting policy (an SFT model, or a pretrained one, few-shot prompted) (required)")
    out: str = field("runs/grpo", "run directory (the final policy is written to OUT/model)")
    data: Data = group(Data)
    prompting: Prompting = group(Prompting)
    scoring: Scoring = group(Scoring)
    iterations: int = iterations()
    prompts: int = prompts()
    sampling: Sampling = group(Sampling)  # k: the group size (>= 2 for grpo and rloo)
    few_shot: FewShot = group(FewShot)
    ppo_epochs: int = ppo_epochs()
    optim: Optim = group(Optim, **OPTIM)
    advantage: str = field("grpo", "grpo or rloo (group baselines), reinforce++ (the batch's mean and std: Hu et al. "
                                   "2025)")
    advantage_scale: str = field("group", "grpo: divide by the group's std (group), the batch's std (batch: "
                                          "REINFORCE++-baseline) or not (none: Dr.GRPO)")
    policy_loss: str = field("ppo", "ppo (clipped ratio per token), gspo (one ratio per sequence) or cispo "
                                    "(clipped, detached importance weight x log pi)")
    clip: float = clip()
    clip_high: float = field(0.0, "upper ratio clip (DAPO clip-higher: 0.28; 0: the same as --clip)")
    loss_aggregation: str = field("token", "token (DAPO: every token of the minibatch weighted equally), sequence "
                                           "(GRPO: mean per completion, then over completions) or constant "
                                           "(Dr.GRPO: / (completions x max_new_tokens)); the KL term alike")
    overlong_buffer: int = field(0, "DAPO's soft overlong penalty: the reward falls linearly to -1 over the last N "
                                    "tokens before max_new_tokens (0: off)")
    mask_truncated: bool = field(False, "leave completions cut at max_new_tokens out of the policy loss (DAPO's "
                                        "overlong filtering)")
    kl_coef: float = field(0.0, "KL-to-reference coefficient in the loss (k3; 0: none and no reference model, as "
                                "in Dr.GRPO / DAPO)")
    kl_bound: float = kl_bound()
    zero_signal: str = field("keep", "groups whose samples all got the same return (no advantage; grpo and rloo): "
                                     "keep, drop them, or refill (DAPO's dynamic sampling: drop them and sample "
                                     "further prompts until --prompts groups carry signal; every rollout drawn counts)")
    refill_rounds: int = field(4, "--zero-signal refill: extra sampling rounds per iteration at most (then the "
                                  "iteration learns from the groups it has)")
    max_rollouts: int = field(0, "stop once this many rollouts were drawn (0: after --iterations); the budget of a "
                                 "run whose iterations draw a varying number (--zero-signal refill)")
    lora: Lora = group(Lora)  # with LoRA the reference is the frozen base (the adapters disabled)
    vllm_is_cap: float = vllm_is_cap()
    fsdp: bool = fsdp()
    eval_every: int = eval_every()
    eval: Evaluation = group(Evaluation)
    checkpoint_every: int = checkpoint_every()
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    RETIRED = RETIRED

    def validate(self) -> None:
        validate_groups(self)
        validate_shared(self)
        self.sampling.require_samples()
        no_lora_with_fsdp(self.lora, self.fsdp)
        if not self.model:
            raise UsageError("--model is required (the starting policy)")
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


@dataclass
class GRPOState:
    """What a run carries from one iteration to the next (saved in every checkpoint with the optimizer and the
    RNG state)."""

    iteration: int = 0
    opt_steps: int = 0
    rollouts_used: int = 0  # every rollout drawn, kept or not (--max-rollouts)
    prompts_used: int = 0  # position in the shuffled pass over the train split
    history: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, prompts: int) -> GRPOState:
        """From a checkpoint (also one of the single PPO/GRPO loop of earlier versions, which recorded a constant
        ``kl_coef`` too); one written before ``prompts_used`` existed drew ``prompts`` per iteration."""
        d = {"prompts_used": d["iteration"] * prompts, **d}
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def build_models(cfg: Config, device: str):
    """(policy, reference or None, tokenizer). The reference exists with a KL term (--kl-coef > 0); with LoRA it
    is the policy with its adapters disabled (None here)."""
    policy, tokenizer = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                                   compute=cfg.compute)
    warn_tiny_default_lr(cfg, policy)
    reference = None
    if cfg.lora.lora_rank:
        policy = apply_lora(policy, cfg.lora, cfg.model)
    elif cfg.kl_coef > 0:
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    if cfg.fsdp:
        distributed.shard_model(policy)
        if reference is not None:
            distributed.shard_model(reference)
            # the frozen reference has no backward pass, where FSDP would reshard its root (embeddings, head)
            reference.set_reshard_after_forward(True, recurse=False)
    return policy, reference, tokenizer


def train(cfg: Config) -> Path:
    ctx = start_run(cfg.out, cfg.resume, cfg.run)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    save_config(cfg, run_dir / "config.yaml")
    policy, reference, tokenizer = build_models(cfg, device)
    engine = engines.create(policy, cfg.sampling, cfg.model)  # after the reference copy and LoRA
    params = [p for p in policy.parameters() if p.requires_grad]
    trained = torch.nn.ModuleDict({"policy": policy})
    optimizer = make_optimizer(trained, cfg.optim.lr, cfg.optim.weight_decay)
    orm = _load_orm(cfg.scoring, tokenizer, device)
    shots = few_shot_examples(task, cfg.model, cfg.few_shot.shots, cfg.few_shot.exemplars)
    questions = task.problems("train")
    eval_problems = task.problems(cfg.eval.eval_split)[: cfg.eval.eval_size] if cfg.eval.eval_size else []
    k, micro, with_kl = cfg.sampling.k, cfg.optim.micro_batch_size, cfg.kl_coef > 0

    st = GRPOState()
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        saved = ckpt.load_state(last)
        ckpt.load_weights_into(policy, last)  # with LoRA the adapters (the base weights are the start model's)
        distributed.load_optimizer_state(trained, optimizer, saved["optimizer"])
        set_rng_state(saved["rng"])
        st = GRPOState.from_dict(saved, cfg.prompts)
        print(f"resumed {run_dir} at iteration {st.iteration}")
    logger = RunLogger(run_dir, cfg, resume_step=st.iteration if last is not None else None)

    def run_eval() -> dict:
        return evaluate_in_run(policy, tokenizer, task, eval_problems, cfg.eval, cfg.sampling, engine=engine,
                               seed=cfg.run.seed,
                               run_dir=run_dir, rollouts=st.rollouts_used, shots=shots,
                               when=f"at iteration {st.iteration} ({st.rollouts_used} rollouts)")

    print(f"{cfg.advantage}: {cfg.iterations} iterations x {cfg.prompts} prompts x K={k}, reward "
          f"{cfg.scoring.reward}, {ctx.threads} threads, {device}")
    if st.iteration == 0 and eval_problems:
        st.history.append({"iteration": 0, "rollouts": 0, **run_eval()})
        logger.log(0, **st.history[-1])
    order = list(range(len(questions)))
    random.Random(cfg.run.seed).shuffle(order)
    bar = progress(cfg.iterations, cfg.advantage, "iter", initial=st.iteration)
    while st.iteration < cfg.iterations and not (cfg.max_rollouts and st.rollouts_used >= cfg.max_rollouts):
        t0 = time.time()
        # collect and score: groups of K samples (refill: with signal), their per-token rewards and outcomes
        got = collect(cfg, st, engine, policy, tokenizer, task, orm, questions, order, shots)
        if got is None:  # --max-rollouts leaves less than one group to draw
            break
        t_sample = time.time() - t0
        batch = pack_rollouts(got.rollouts, tokenizer.pad_token_id, mask_truncated=cfg.mask_truncated)
        # reference / old passes (no gradient)
        old = old_policy(engine, policy, batch, cfg.vllm_is_cap, micro, device)
        ref = reference_logprobs(policy, reference, batch, micro, device) if with_kl else None
        # advantages: one per sample from the group (or batch) baseline of the returns, on each of its tokens
        returns = got.scores.returns  # (N,) outcome plus step rewards
        adv = group_advantages(returns, k, cfg.advantage, **({"scale": cfg.advantage_scale}
                                                             if cfg.advantage == "grpo" else {}))
        experience = Experience(batch, old.logprobs, adv.unsqueeze(-1).expand_as(old.logprobs) * batch.action_mask,
                                is_weights=old.is_weights, ref_logprobs=ref)
        keep = torch.arange(len(got.rollouts))
        if cfg.zero_signal == "drop":  # the groups whose returns differ (advantages.group_signal)
            keep = group_signal(returns, k).repeat_interleave(k).nonzero().flatten()
        # learn: ppo_epochs passes of minibatch updates
        stats = learn(cfg, policy, optimizer, params, experience, keep, st, device, run_dir)
        # log, guard against divergence
        st.iteration += 1
        kl_seq = float(torch.where(batch.action_mask, old.logprobs - ref, 0.0).sum(-1).mean()) if with_kl else \
            float("nan")  # mean k1 KL per sequence
        record = {"iteration": st.iteration, "rollouts": st.rollouts_used, "reward": float(got.scores.outcome.mean()),
                  **({"sampling_rounds": got.rounds, "groups": len(got.problems)}
                     if cfg.zero_signal == "refill" else {}),
                  **completion_stats(got.rollouts), **({"kl": kl_seq} if with_kl else {}), "kl_coef": cfg.kl_coef,
                  "sample_seconds": round(t_sample, 1), "iteration_seconds": round(time.time() - t0, 3),
                  **old.mismatch, **stats.record(value_head=False), "zero_signal_fraction": got.zero_signal_fraction}
        if with_kl and (not math.isfinite(kl_seq) or kl_seq > cfg.kl_bound):
            raise ckpt.divergence_error(run_dir, st.iteration, f"KL to the reference reached {kl_seq:.2f} > "
                                                               f"kl_bound {cfg.kl_bound}")
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", kl=f"{kl_seq:.3f}")
        print(f"iteration {st.iteration}/{cfg.iterations}: reward {record['reward']:.3f}"
              + (f", kl {kl_seq:.3f}" if with_kl else "")
              + f", zero-signal groups {got.zero_signal_fraction:.2f}"
              + f" ({record['iteration_seconds']:.0f}s, sampling {t_sample:.0f}s)", flush=True)
        # evaluate
        last_iteration = st.iteration == cfg.iterations or bool(cfg.max_rollouts and
                                                                st.rollouts_used >= cfg.max_rollouts)
        if eval_problems and (last_iteration or (cfg.eval_every and st.iteration % cfg.eval_every == 0)):
            record.update(run_eval())
        st.history.append(record)
        logger.log(st.iteration, **{k: v for k, v in record.items() if isinstance(v, (int, float))})
        # checkpoint
        if st.iteration % cfg.checkpoint_every == 0 or last_iteration:
            extra = {"optimizer": distributed.optimizer_state(trained, optimizer), "rng": rng_state()}
            ckpt.save_checkpoint(run_dir, st.iteration, policy, tokenizer, {**st.to_dict(), **extra})
            write_history(run_dir, st.history, cfg.eval.eval_k, cfg.advantage)
    bar.close()
    logger.close()
    model_dir = run_dir / "model"
    ckpt.save_model_dir(final_model(policy, cfg.lora), tokenizer, model_dir)
    start = read_record(cfg.model)
    write_record(model_dir, ModelRecord(task=task_options(task), stage=cfg.advantage, shots=start.shots,
                                        exemplars=start.exemplars, **prompt_record(task), base=cfg.model))
    engine.close()
    write_history(run_dir, st.history, cfg.eval.eval_k, cfg.advantage)
    print(f"{cfg.advantage} policy written to {model_dir}")
    return model_dir


def _load_orm(scoring: Scoring, tokenizer, device):
    if scoring.reward != "orm":
        return None
    return load_reward_model(scoring.orm, tokenizer, device=device)


@dataclass(frozen=True)
class Collected:
    """One iteration's training groups: ``problems`` (G), their ``prompts``, ``rollouts`` (G x K, by group;
    ``prompt_index`` indexes ``problems``) and their ``scores``; the sampling ``rounds`` it took and the
    ``zero_signal_fraction`` of every group drawn (with refill, the dropped ones too)."""

    problems: list
    prompts: list[str]
    rollouts: list
    scores: Scores
    rounds: int
    zero_signal_fraction: float


def collect(cfg: Config, st: GRPOState, engine, policy, tokenizer, task, orm, questions, order, shots) -> Collected | None:
    """Draw the next ``prompts`` problems of the shuffled pass x K and score them (``rollouts.score``). With
    ``--zero-signal refill`` (DAPO's dynamic sampling, Yu et al. 2025, sec. 3.2 and Algorithm 1) keep only the
    groups whose returns differ (``advantages.group_signal``) and draw the next ``prompts`` problems, up to
    ``refill_rounds`` more times, until ``prompts`` groups carry signal (the first ones drawn are kept; with fewer
    after the last round the iteration learns from those; with none, from the last round's). Every rollout drawn
    counts in ``st.rollouts_used``, kept or not, and ``--max-rollouts`` caps the draws (None: no group left to
    draw). Advances ``st.prompts_used`` and ``st.rollouts_used``."""
    k, refill = cfg.sampling.k, cfg.zero_signal == "refill"
    kept_problems, kept_rollouts, kept_scores = [], [], []
    signal_groups = total_groups = rounds = 0
    while rounds <= (cfg.refill_rounds if refill else 0) and len(kept_problems) < cfg.prompts:
        n = cfg.prompts
        if cfg.max_rollouts:
            n = min(n, (cfg.max_rollouts - st.rollouts_used) // k)
        if n <= 0:
            break
        problems = next_problems(questions, order, st.prompts_used, n)
        prompt_texts, drawn = sample(engine, policy, tokenizer, task, problems, shots, cfg.sampling,
                                     seed=cfg.run.seed + 7919 * st.iteration + rounds)
        st.prompts_used, st.rollouts_used, rounds = st.prompts_used + n, st.rollouts_used + len(drawn), rounds + 1
        scores = score(cfg.scoring, task, tokenizer, orm, drawn, problems, prompt_texts,
                       overlong_buffer=cfg.overlong_buffer, max_new_tokens=cfg.sampling.max_new_tokens)
        signal = group_signal(scores.returns, k).tolist()
        signal_groups, total_groups = signal_groups + sum(signal), total_groups + n
        for j in [j for j in range(n) if signal[j] or not refill][: cfg.prompts - len(kept_problems)]:
            kept_rollouts += [dataclasses.replace(r, prompt_index=len(kept_problems)) for r in drawn[j * k:(j + 1) * k]]
            kept_scores.append(scores.select(torch.arange(j * k, (j + 1) * k)))
            kept_problems.append(problems[j])
    if rounds and not kept_problems:  # refill, and no group had signal in any round: the last round's
        kept_problems, kept_rollouts, kept_scores = problems, drawn, [scores]
    if not kept_rollouts:
        return None
    width = max(len(r.completion_ids) for r in kept_rollouts)
    return Collected(kept_problems, [task.prompt(p, shots) for p in kept_problems], kept_rollouts,
                     Scores.concat(kept_scores, width), rounds, 1 - signal_groups / max(1, total_groups))


def learn(cfg: Config, policy, optimizer, params, exp: Experience, keep: torch.Tensor, st: GRPOState, device,
          run_dir) -> LearnStats:
    """``ppo_epochs`` passes over the rows ``keep`` in minibatches of ``batch_size``; each minibatch is one
    optimizer step (``rollouts.optimizer_step``), its loss divided by the minibatch's counts (``loss_aggregation``)."""
    size = cfg.optim.batch_size
    # the schedule's length: every planned step (skipped minibatches included)
    total_steps = cfg.iterations * cfg.ppo_epochs * max(1, math.ceil(cfg.prompts * cfg.sampling.k / size))
    sharded = distributed.is_sharded(policy)
    policy.train()
    steps = []
    for rows in minibatches(keep, size, cfg.ppo_epochs, cfg.run.seed + st.iteration * 31):
        mb = exp.select(rows)
        if not mb.advantages.any():
            # no signal: the loss is (numerically almost) zero, and Adam would turn its rounding noise into full-size
            # steps; skip the update
            continue
        set_lr(optimizer, cfg.optim.lr, lr_at(st.opt_steps, total_steps, cfg.optim.warmup_steps,
                                              cfg.optim.min_lr_ratio))
        n_loss, n_rows = int(mb.batch.loss_mask.sum()), len(rows)
        rows = torch.arange(len(rows))
        if cfg.kl_coef == 0:
            # a row whose advantage is 0 contributes exactly 0 to the loss and its gradient (no KL term): leave it
            # out of the forward and backward passes (with GRPO often half the batch)
            rows = mb.advantages.any(-1).nonzero().flatten()

        def micro_loss(part: Experience):
            logp, _ = forward_policy(policy, None, part.batch, False, device)
            return objective(cfg, logp, part, n_loss, n_rows, device)

        steps.append(optimizer_step(mb, rows, micro_loss, optimizer, params, cfg.optim.micro_batch_size,
                                    cfg.optim.grad_clip, sharded, run_dir, st.iteration))
        st.opt_steps += 1
    return LearnStats.of(steps)


def objective(cfg: Config, logprobs: torch.Tensor, part: Experience, n_loss: int, n_rows: int, device):
    """(loss, PolicyStats, NaN) of a micro-batch ``part`` with its log-probs under the current policy ``logprobs``
    (n, C): the policy term (``--policy-loss``) plus kl_coef x the k3 KL to the reference, reduced over the
    minibatch's ``n_loss`` loss tokens and ``n_rows`` rows (``--loss-aggregation``)."""
    lmask = part.batch.loss_mask.to(device)
    # the policy term and the KL term reduced alike (losses.aggregate): GRPO's eq. 3 averages both inside each
    # sequence, then over sequences; the reduction is linear, so aggregating the sum or each term is the same
    how, total, max_len = cfg.loss_aggregation, max(1, n_loss), cfg.sampling.max_new_tokens
    loss, pstats = ppo_policy_loss(logprobs, part.old_logprobs.to(device), part.advantages.to(device), lmask,
                                   clip=cfg.clip, total=total, clip_high=cfg.clip_high or None, kind=cfg.policy_loss,
                                   aggregation=how, n_rows=n_rows, max_len=max_len,
                                   is_weights=part.is_weights.to(device) if part.is_weights is not None else None)
    if cfg.kl_coef > 0:
        _, kl = kl_penalty_rewards(logprobs, part.ref_logprobs.to(device), lmask, 1.0, "k3")
        loss = loss + cfg.kl_coef * aggregate(kl, lmask, how, total, n_rows, max_len)
    return loss, pstats, float("nan")


def main(cfg: Config) -> None:
    train(cfg)
