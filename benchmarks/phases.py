"""Where an RL iteration's time goes: each phase of a PPO iteration, an EI round and an in-run evaluation at the
study's shapes, against the matrix-multiply limit of the same core measured in the same run.

    python benchmarks/phases.py --model runs/sft/model [--threads 1] [--repeats 3] [--profile]

The shapes are the study's (``study.plan``, full budget): PPO 64 prompts x K=4, <= 96 new tokens, value head, KL
reference (--kl-coef 0.05), batch 64 rollouts (4 minibatches), 2 PPO epochs, GAE lambda 1; an EI round of
512 questions x K=4 (``--questions budget/8``) and its fine-tune (2 epochs, batch 32, on the kept samples); an
in-run evaluation of 200 problems, greedy + 16 samples each. Each phase runs mathrl's own functions (the PPO loop's
``rollouts.sample``, ``pack_rollouts``, ``score``, ``reference_logprobs``, ``values_from_rollouts``, ``ppo.advantages``
and ``ppo.learn``, whose forward + backward is the loop's own clipped policy loss + value loss and includes its
8 AdamW steps; EI's ``collect`` and ``training.train_steps``; ``evaluate.evaluate``). Each repeat starts from the
same weights (restored after the phases that train). Without --model a fresh tiny model is initialised: its
completions run to the length limit, so report numbers with a trained model.

FLOPs (matrix multiplies only: norms, activations and the embedding lookup are not counted):
- linear layers: 2 x (the transformer blocks' matrix parameters) per token fed;
- the vocabulary projection (tied to the embedding, a matmul all the same): 2 x hidden x vocab per position whose
  log-probability the phase uses (every completion token; for the fine-tune its loss tokens);
- attention: 4 x (heads x head size) x layers per (query, key) pair of the causal mask (scores and weighted
  values), each completion attending to its prompt and its own earlier tokens;
- the value head (PPO): 2 x (hidden^2 + hidden) per completion token;
- backward = 2 x forward, so a training pass is 3 x.
``GFLOP`` is the work a phase needs: each distinct prompt once per pass over a batch (its K samples share it),
each completion token once, no padding (the sampler does not feed the last token it draws). ``exec`` is the
fraction of the limit of what the model actually computed (every token fed to the model, padding and repeated
prompts included, and every logit row), counted by hooks on the model and its vocabulary projection; its
attention is counted as in GFLOP. ``exec/need`` is their ratio: above 1 is work done twice or on padding.

The limit: the median over ``--repeats`` of the best of 5 float32 matmuls of 2048 x 2048 @ 2048 x 2048 on the
same thread count, measured before each repeat; model-shaped matmuls (rows x hidden @ hidden x 4 hidden) for
reference. ``--profile`` adds torch.profiler runs of the sampler at K=16 (32 prompts) and of one PPO learning
step: how much of their time is spent in matmul kernels, in other torch operators, and outside them (Python,
dispatch).

Prints a table of medians (the spread is min-max over repeats), ``limit_gflops=...`` and ``fraction_<phase>=...``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import shutil
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass

import torch

from mathrl import config, engines
from mathrl.algorithms import expert_iteration as ei
from mathrl.algorithms import ppo
from mathrl.evaluate import evaluate, summarize
from mathrl.rollouts import (
    Experience,
    minibatches,
    next_problems,
    old_policy,
    pack_rollouts,
    reference_logprobs,
    sample,
    score,
    values_from_rollouts,
)
from mathrl.rounds import round_total_steps
from mathrl.runsetup import few_shot_examples, task_for
from mathrl.training import make_optimizer, train_steps

# the study's full budget (budgets.BUDGETS["full"] and study.plan's RL commands)
PPO_FLAGS = {"prompts": 64, "k": 4, "max_new_tokens": 96, "lam": 1.0, "iterations": 16, "eval_every": 8,
             "eval_size": 200, "eval_k": 16}
EI_FLAGS = {"rounds": 2, "questions": 4096 // 8, "k": 4, "max_new_tokens": 96, "patience": 0, "eval_size": 200,
            "eval_k": 16}


# ----------------------------------------------------------------------------------------------------------
# FLOPs


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs of a model."""

    linear: int  # matrix parameters of the transformer blocks
    hidden: int
    attention_width: int  # heads x head size
    layers: int
    vocab: int  # rows of the vocabulary projection

    @classmethod
    def of(cls, model) -> Shape:
        c = model.config
        head = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        linear = sum(p.numel() for p in model.model.layers.parameters() if p.ndim == 2)
        return cls(linear, c.hidden_size, c.num_attention_heads * head, c.num_hidden_layers,
                   model.get_output_embeddings().weight.shape[0])

    def forward(self, p: int, completions: list[int], fed_last: bool = True, value_head: bool = False) -> float:
        """Forward FLOPs of one prompt of ``p`` tokens, computed once, and its completions (lengths) on top."""
        fed = [c if fed_last else max(0, c - 1) for c in completions]
        pairs = p * (p + 1) / 2 + sum(f * p + f * (f + 1) / 2 for f in fed)  # causal (query, key) pairs
        scored = sum(completions)
        flops = 2 * self.linear * (p + sum(fed)) + 2 * self.hidden * self.vocab * scored
        flops += 4 * self.attention_width * self.layers * pairs
        if value_head:
            flops += 2 * (self.hidden * self.hidden + self.hidden) * scored
        return flops


def groups(rollouts) -> list[tuple[int, list[int]]]:
    """(prompt length, completion lengths) per distinct prompt."""
    by = defaultdict(list)
    plen = {}
    for r in rollouts:
        by[r.prompt_index].append(len(r.completion_ids))
        plen[r.prompt_index] = len(r.prompt_ids)
    return [(plen[i], cs) for i, cs in by.items()]


def needed(shape: Shape, rollouts, passes: float = 1, fed_last: bool = True, value_head: bool = False):
    """(tokens, FLOPs) a phase needs over ``rollouts``: each prompt once per pass."""
    gs = groups(rollouts)
    tokens = sum(p + sum(cs) for p, cs in gs)
    return passes * tokens, passes * sum(shape.forward(p, cs, fed_last, value_head) for p, cs in gs)


class Executed:
    """Counts the FLOPs the model computes, from what is fed to it (hooks): 2 x linear per token fed and
    2 x hidden x vocab per logit row, x3 in a training pass (grad enabled, train mode)."""

    def __init__(self, shape: Shape):
        self.shape, self.flops, self.tokens = shape, 0.0, 0

    def attach(self, model) -> None:
        def fed(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                self.tokens += ids.numel()
                self.flops += self._mult(module) * 2 * self.shape.linear * ids.numel()

        def logits(module, args, out):
            self.flops += self._mult(model) * 2 * self.shape.hidden * self.shape.vocab * out.shape[:-1].numel()

        model.register_forward_pre_hook(fed, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(logits)

    @staticmethod
    def _mult(model) -> int:
        return 3 if torch.is_grad_enabled() and model.training else 1


class StepTimer:
    """Seconds spent inside ``optimizer.step`` (the AdamW updates of a learning phase)."""

    def __init__(self, optimizer):
        self.seconds, self._t0 = 0.0, 0.0
        optimizer.register_step_pre_hook(self._start)
        optimizer.register_step_post_hook(self._stop)

    def _start(self, *args) -> None:
        self._t0 = time.perf_counter()

    def _stop(self, *args) -> None:
        self.seconds += time.perf_counter() - self._t0


class Recorder:
    """mathrl's sampler (``engines.Mathrl``) keeping each call's rollouts, seconds and executed FLOPs."""

    name = "mathrl"

    def __init__(self, executed: Executed):
        self.inner, self.executed, self.calls = engines.Mathrl(), executed, []

    def sample(self, *args, **kwargs):
        t0, e0 = time.perf_counter(), self.executed.flops
        out = self.inner.sample(*args, **kwargs)
        self.calls.append((out, time.perf_counter() - t0, self.executed.flops - e0))
        return out

    def close(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------------------
# The limit


def matmul_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of ``repeats`` float32 (m, k) @ (k, n) matmuls (after one warm-up)."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * m * k * n / best / 1e9


# ----------------------------------------------------------------------------------------------------------
# The phases


@dataclass
class Row:
    seconds: float
    tokens: float
    flops: float  # needed
    executed: float


PHASES = {  # name: what it is
    "ppo_sample": "PPO: sampling 64 x 4",
    "ppo_score": "PPO: pack, score, advantages",
    "ppo_reference": "PPO: reference pass",
    "ppo_values": "PPO: old values (head on the sampler's hidden states)",
    "ppo_learn": "PPO: learn (2 epochs x 4 mb, fwd+bwd+step)",
    "ppo_iteration": "PPO: one iteration",
    "ei_sample": "EI: sampling 512 x 4 + grading",
    "ei_finetune": "EI: fine-tune (2 epochs)",
    "ei_round": "EI: one round",
    "eval_greedy": "eval: greedy 200",
    "eval_samples": "eval: 200 x 16 samples",
    "eval_grading": "eval: grading + metrics",
    "eval_total": "eval: one in-run evaluation",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="", help="model directory (default: a fresh tiny model)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="also profile the sampler at K=16 and the PPO learning step")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = args.model
    if not model_dir:
        from mathrl.models import init_model
        from mathrl.tasks import load_task

        model_dir = tempfile.mkdtemp(prefix="mathrl-phases-")
        init_model(load_task("synthetic"), model_dir)
        print(f"a fresh (untrained) model in {model_dir}: completions run to the length limit")
    run_dir = tempfile.mkdtemp(prefix="mathrl-phases-run-")
    pcfg = config.build(ppo.Config, {"model": model_dir, "out": run_dir, **PPO_FLAGS})
    ecfg = config.build(ei.Config, {"model": model_dir, "out": run_dir, **EI_FLAGS})
    task = task_for(model_dir, pcfg.data, pcfg.prompting)
    m, tok = ppo.build_models(pcfg, "cpu")
    shape = Shape.of(m.policy)
    executed = Executed(shape)
    executed.attach(m.policy)
    executed.attach(m.reference)
    engine = Recorder(executed)
    shots = few_shot_examples(task, model_dir, -1)
    questions = task.problems("train")
    eval_problems = task.problems("test")[:200]
    start = {"policy": copy.deepcopy(m.policy.state_dict()), "head": copy.deepcopy(m.head.state_dict())}
    print(f"model {model_dir}: {sum(p.numel() for p in m.policy.parameters()) / 1e6:.2f}M parameters, "
          f"{shape.linear / 1e6:.3f}M in the blocks' matrices, hidden {shape.hidden}, {shape.layers} layers, vocab "
          f"{shape.vocab}; {args.threads} thread(s)")

    rows: dict[str, list[Row]] = defaultdict(list)
    limits, shaped = [], defaultdict(list)
    extra, found = {}, {}

    def add(name, t0, e0, tokens, flops):
        found[name] = Row(time.perf_counter() - t0, tokens, flops, executed.flops - e0)

    for rep in range(args.repeats):
        found.clear()
        limits.append(matmul_gflops(2048, 2048, 2048))
        for r in (256, 4096):
            shaped[r].append(matmul_gflops(r, shape.hidden, 4 * shape.hidden, repeats=20))

        # --- one PPO iteration (algorithms/ppo.py's loop body, without logging and checkpointing)
        m.policy.load_state_dict(start["policy"])
        m.head.load_state_dict(start["head"])
        params = [p for p in m.policy.parameters() if p.requires_grad] + list(m.head.parameters())
        optimizer = make_optimizer(torch.nn.ModuleDict({"policy": m.policy, "value_head": m.head}),
                                   pcfg.optim.lr, pcfg.optim.weight_decay)
        st = ppo.PPOState(kl_coef=pcfg.kl_coef)
        micro = pcfg.optim.micro_batch_size
        problems = next_problems(questions, list(range(len(questions))), rep * pcfg.pg.prompts, pcfg.pg.prompts)
        t0, e0 = time.perf_counter(), executed.flops
        prompt_texts, rollouts = sample(engine, m.policy, tok, task, problems, shots, pcfg.sampling, seed=rep,
                                        hidden_states=True)
        add("ppo_sample", t0, e0, *needed(shape, rollouts, fed_last=False))
        t0, e0 = time.perf_counter(), executed.flops
        batch = pack_rollouts(rollouts, tok.pad_token_id)
        scores = score(pcfg.scoring, task, tok, None, rollouts, problems, prompt_texts)
        old = old_policy(engine, m.policy, batch, pcfg.pg.vllm_is_cap, micro, "cpu")
        add("ppo_score", t0, e0, 0, 0)
        t0, e0 = time.perf_counter(), executed.flops
        ref = reference_logprobs(m.policy, m.reference, batch, micro, "cpu")
        add("ppo_reference", t0, e0, *needed(shape, rollouts))
        t0, e0 = time.perf_counter(), executed.flops
        # as ppo.py does with mathrl's sampler: the value head on the hidden states the sampler kept (the head's
        # FLOPs, 2 x (H^2 + H) per token, are not counted)
        old_values = values_from_rollouts(m.head, rollouts, batch.sampled_logprobs, micro, "cpu")
        add("ppo_values", t0, e0, 0, 0)
        t0, e0 = time.perf_counter(), executed.flops
        adv, returns = ppo.advantages(pcfg, batch, scores, old.logprobs, ref, old_values, st.kl_coef)
        exp = Experience(batch, old.logprobs, adv, is_weights=old.is_weights, old_values=old_values, returns=returns)
        found["ppo_score"].seconds += time.perf_counter() - t0
        t0, e0 = time.perf_counter(), executed.flops
        step_timer = StepTimer(optimizer)
        ppo.learn(pcfg, m, optimizer, params, exp, st, "cpu", run_dir)
        extra.setdefault("ppo_adamw", []).append(step_timer.seconds)
        tokens, flops = needed(shape, rollouts, passes=pcfg.pg.ppo_epochs, value_head=True)
        add("ppo_learn", t0, e0, tokens, 3 * flops)
        # how often the learning step forwards each prompt: forward_policy shares a prompt's keys/values among the
        # rows of one micro-batch (whole groups with --minibatch group, random rows with rollout)
        mbs = minibatches(torch.arange(len(rollouts)), pcfg.optim.batch_size, pcfg.pg.ppo_epochs, pcfg.run.seed,
                          batch.prompt_of if pcfg.pg.minibatch == "group" else None)
        forwards = sum(len(torch.unique(batch.prompt_of[mb])) for mb in mbs)  # ppo.learn's minibatches at iteration 0
        extra.setdefault("prompt_forwards", []).append(forwards / pcfg.pg.ppo_epochs / len(problems))
        extra.setdefault("completion_tokens", []).append(sum(len(r.completion_ids) for r in rollouts) / len(rollouts))
        extra.setdefault("prompt_tokens", []).append(sum(p for p, _ in groups(rollouts)) / len(problems))

        # --- one EI round: collect (sample, grade, keep, dedupe) then fine-tune from the start weights
        m.policy.load_state_dict(start["policy"])
        est = ei.EIState()
        engine.calls.clear()
        t0, e0 = time.perf_counter(), executed.flops
        ei.collect(ecfg, task, engine, m.policy, tok, None, questions[: ecfg.questions], shots, est)
        add("ei_sample", t0, e0, *needed(shape, engine.calls[0][0], fed_last=False))
        examples = ei._examples(task, tok, ei._items(ecfg, task, questions, questions[: ecfg.questions],
                                                     est.dataset), tok.eos_token_id)
        total = round_total_steps(len(examples), ecfg.optim, ecfg.rounds_ft)
        ft_opt = make_optimizer(m.policy, ecfg.optim.lr, ecfg.optim.weight_decay)
        t0, e0 = time.perf_counter(), executed.flops
        m.policy.train()
        for _ in train_steps(m.policy, ft_opt, examples, ecfg.optim, pad_id=tok.pad_token_id, device="cpu",
                             total_steps=total, seed=rep):
            pass
        masks = [(e.loss_mask.count(False), e.loss_mask.count(True)) for e in examples]
        epochs = ecfg.rounds_ft.epochs
        add("ei_finetune", t0, e0, epochs * sum(p + c for p, c in masks),
            epochs * 3 * sum(shape.forward(p, [c]) for p, c in masks))
        extra.setdefault("ei_kept", []).append(len(examples))
        extra.setdefault("ei_steps", []).append(total)

        # --- one in-run evaluation (evaluate_in_run without its file and print): greedy + eval_k samples
        m.policy.load_state_dict(start["policy"])
        m.policy.eval()
        engine.calls.clear()
        t0, e0 = time.perf_counter(), executed.flops
        sampling = dataclasses.replace(pcfg.sampling, k=pcfg.eval.eval_k, temperature=pcfg.eval.eval_temperature)
        summarize(evaluate(m.policy, tok, task, eval_problems, sampling, engine=engine, shots=shots, seed=0))
        total_s, total_e = time.perf_counter() - t0, executed.flops - e0
        for name, (rolls, secs, ex) in zip(("eval_greedy", "eval_samples"), engine.calls):
            found[name] = Row(secs, *needed(shape, rolls, fed_last=False), ex)
        found["eval_grading"] = Row(total_s - sum(c[1] for c in engine.calls), 0, 0, 0)
        found["eval_total"] = Row(total_s, sum(found[n].tokens for n in ("eval_greedy", "eval_samples")),
                                  sum(found[n].flops for n in ("eval_greedy", "eval_samples")), total_e)
        for total_name, parts in (("ppo_iteration", "ppo_"), ("ei_round", "ei_")):
            ps = [r for n, r in found.items() if n.startswith(parts)]
            found[total_name] = Row(*(sum(getattr(r, f) for r in ps) for f in ("seconds", "tokens", "flops",
                                                                                "executed")))
        for name, row in found.items():
            rows[name].append(row)
        print(f"repeat {rep + 1}/{args.repeats}: limit {limits[-1]:.1f} GFLOP/s, PPO iteration "
              f"{found['ppo_iteration'].seconds:.2f}s, EI round {found['ei_round'].seconds:.2f}s, evaluation "
              f"{found['eval_total'].seconds:.2f}s", flush=True)

    limit = statistics.median(limits)
    med = statistics.median
    print(f"\nlimit: float32 2048^3 matmul {limit:.1f} GFLOP/s (repeats: {', '.join(f'{x:.1f}' for x in limits)}); "
          + "; ".join(f"{r} x {shape.hidden} @ {shape.hidden} x {4 * shape.hidden}: {med(v):.1f}"
                      for r, v in shaped.items()))
    print(f"PPO batch: {med(extra['prompt_tokens']):.1f} prompt tokens per prompt, "
          f"{med(extra['completion_tokens']):.1f} completion tokens per rollout; the learning step forwards each "
          f"prompt {med(extra['prompt_forwards']):.2f} times per epoch (once would do)")
    print(f"PPO learn: {med(extra['ppo_adamw']):.2f}s of it inside the 8 AdamW steps")
    print(f"EI round: {med(extra['ei_kept']):.0f} kept samples, {med(extra['ei_steps']):.0f} fine-tuning steps")
    one_pass = med([r.flops for r in rows["ppo_reference"]])  # the work one no-grad pass over the batch needs
    print("PPO iteration in forward-equivalents (1: the work one pass over the 256 rollouts needs), needed / done: "
          + ", ".join(f"{n.split('_')[1]} {med([r.flops for r in rows[n]]) / one_pass:.2f} / "
                      f"{med([r.executed for r in rows[n]]) / one_pass:.2f}"
                      for n in ("ppo_sample", "ppo_reference", "ppo_values", "ppo_learn", "ppo_iteration")))
    print("\n| phase | seconds (min-max) | tokens | tokens/s | GFLOP | GFLOP/s | fraction of limit | exec | "
          "exec/need |")
    print("|---|---|---|---|---|---|---|---|---|")
    fractions = {}
    for name, label in PHASES.items():
        rs = rows[name]
        secs = med([r.seconds for r in rs])
        rate = med([r.flops / r.seconds / 1e9 for r in rs])
        exec_rate = med([r.executed / r.seconds / 1e9 for r in rs])
        fractions[name] = rate / limit
        ratio = med([r.executed / r.flops for r in rs]) if rs[0].flops else float("nan")
        print(f"| {label} | {secs:.2f} ({min(r.seconds for r in rs):.2f}-{max(r.seconds for r in rs):.2f}) | "
              f"{med([r.tokens for r in rs]):,.0f} | {med([r.tokens / r.seconds for r in rs]):,.0f} | "
              f"{med([r.flops for r in rs]) / 1e9:.2f} | {rate:.1f} | "
              f"{rate / limit:.3f} | {exec_rate / limit:.3f} | {ratio:.2f} |")
    if args.profile:
        profile_sampler(m.policy, tok, task, shots, shape, limit)

        def learn_once():  # the last repeat's learning step again, from the same start weights
            m.policy.load_state_dict(start["policy"])
            m.head.load_state_dict(start["head"])
            opt = make_optimizer(torch.nn.ModuleDict({"policy": m.policy, "value_head": m.head}), pcfg.optim.lr,
                                 pcfg.optim.weight_decay)
            ppo.learn(pcfg, m, opt, params, exp, ppo.PPOState(kl_coef=pcfg.kl_coef), "cpu", run_dir)

        t0 = time.perf_counter()
        learn_once()
        fraction = op_profile(learn_once, time.perf_counter() - t0, "\nPPO learn (2 epochs x 4 minibatches)")
        print(f"learn_matmul_fraction={fraction:.3f}")
    shutil.rmtree(run_dir, ignore_errors=True)
    if not args.model:
        shutil.rmtree(model_dir, ignore_errors=True)
    print(f"\nlimit_gflops={limit:.1f}")
    for name, f in fractions.items():
        print(f"fraction_{name}={f:.3f}")


def op_profile(fn, wall: float, label: str) -> float:
    """Run ``fn`` under torch.profiler and split ``wall`` (the seconds of an unprofiled run just before): matmul
    kernels (the self time of mm/addmm/bmm/baddbmm), fused attention kernels (scaled_dot_product), other operators,
    and the rest (Python, dispatch; the profiler's own cost makes 'other' and 'rest' upper bounds). Returns the
    matmul fraction."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        profiled = time.perf_counter() - t0
    events = prof.key_averages()
    # self times partition the time spent inside operators; the matmul kernels run inside these operators
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key) / 1e6
    ops = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"{label}: {wall:.2f}s unprofiled ({profiled:.2f}s under the profiler, {sum(e.count for e in events):,} "
          f"operator calls); of the unprofiled time: matmul kernels {matmul / wall:.3f}, fused attention kernels "
          f"{attention / wall:.3f}, other operators {(ops - matmul - attention) / wall:.3f}, outside operators "
          f"{max(0.0, wall - ops) / wall:.3f}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:10]:
        print(f"    {e.key:<40} {e.self_cpu_time_total / 1e6:6.3f}s self {e.count:7d} calls")
    return matmul / wall


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def profile_sampler(model, tok, task, shots, shape: Shape, limit: float, prompts: int = 32, k: int = 16) -> None:
    """The sampler at K=16 (``prompts`` test prompts, <= 96 new tokens): its rate, and where its time goes."""
    from mathrl.sampler import SamplingParams
    from mathrl.sampler import sample as draw

    texts = [task.prompt(p, shots) for p in task.problems("test")[:prompts]]
    params = SamplingParams(temperature=1.0, max_new_tokens=96, stop_strings=tuple(task.stop_strings))
    model.eval()
    draw(model, tok, texts, k, params)  # warm-up
    calls = []
    handle = model.register_forward_pre_hook(lambda mod, a, kw: calls.append(1), with_kwargs=True)
    t0 = time.perf_counter()
    rollouts = draw(model, tok, texts, k, params)
    wall = time.perf_counter() - t0
    handle.remove()
    _, flops = needed(shape, rollouts, fed_last=False)
    n_tok = sum(len(r.completion_ids) for r in rollouts)
    print(f"\nsampler, {prompts} prompts x K={k}: {n_tok:,} generated tokens in {wall:.2f}s ({n_tok / wall:,.0f} "
          f"tokens/s, {flops / wall / 1e9:.1f} GFLOP/s, {flops / wall / 1e9 / limit:.3f} of the limit), "
          f"{len(calls)} model calls")
    fraction = op_profile(lambda: draw(model, tok, texts, k, params), wall, "sampler at K=16")
    print(f"sampler_matmul_fraction={fraction:.3f}")


if __name__ == "__main__":
    main()
