"""The study's budgets as data, torch-free: its two budgets (``BUDGETS``: the full study and ``--quick``), its seed
counts (``SEEDS``, ``seed_counts``), the embedded model sizes it trains (``--sizes``: ``model_sizes``) and what a
further size costs (``sizes_minutes``). Read by ``study.plan`` and by the report (which ``study`` imports, so these
live apart from both).
"""

from __future__ import annotations

from mathrl.grid import EI, PPO, PRETRAIN, SFT

# Budgets: full (the report's default) and quick. Pretrain + SFT (6,000 steps of 8 x 256 tokens; 20,000 problems x
# 2 epochs) is calibrated for the three-digit default task (docs/results.md, "A live pretrained start"): the
# pretrained start then solves some problems when sampled (4,500 steps did not), and SFT from it reaches in 2 epochs
# what 6 epochs reached from the former 240-step start.
# Every RL run gets the same rollout cap from either start (rollouts = samples drawn for training; in-run
# evaluations are not counted): EI rounds of min(512, cap/8) fresh questions x K=4 up to the cap, PPO and GRPO
# cap/256 iterations of 256 samples (64 prompts x 4, 32 x 8), RCRL one round of cap/4 questions x 4. Each is
# evaluated on run_eval_size dev questions (K=run_eval_k) at 0, eval_first rollouts and every doubling after
# (--eval-at log), and EI, PPO and GRPO stop where that dev maj@1 plateaus (plateau.py; RCRL trains once). The cap
# of 32,768 is ~8x the budget at which this project saw EI and PPO gain nothing measurable in a 4,096-rollout
# study, and 2x the ~16K at which both gained +0.038 maj@1 over SFT (docs/results.md); the paper reports ~60K.
BUDGETS = {
    "full": dict(pretrain_steps=6000, sft_epochs=2, train_size=20000, dev_size=200, dev_k=16,
                 orm_questions=1500, sorm_questions=1000, rollouts=32768, run_eval_size=500, run_eval_k=16,
                 eval_first=1024, bt_questions=2000, bt_reverse_steps=1000,
                 max_new_tokens=96, eval_problems=1000, k_problems=120, k=96),
    "quick": dict(pretrain_steps=15, sft_epochs=1, train_size=3000, dev_size=30, dev_k=4,
                  orm_questions=150, sorm_questions=10, rollouts=512, run_eval_size=30, run_eval_k=4, eval_first=128,
                  bt_questions=40, bt_reverse_steps=20, max_new_tokens=64, eval_problems=100, k_problems=40, k=16),
}
# Seeds: 5 for the runs behind F1/F2/F3/F6 and 3 for the variants and the pretrained start, so that every
# comparison has a seed variance for its t-based interval (stats.py; with 3 seeds t_2 = 4.30 makes the seed part
# of a half-width ~2.2x what 5 seeds give, t_4 = 2.78 over sqrt(5))
SEEDS = {"full": {"seeds": 5, "variant_seeds": 3}, "quick": {"seeds": 2, "variant_seeds": 1}}


# What --sizes costs. The compute of each embedded size relative to tiny's on one CPU thread (benchmarks/
# model_sizes.py, three times on the shared 2-core machine, 2026-12-07: a training step of 8 x 256 tokens took
# 1.2-1.4x tiny's with tiny4, 2.2-2.55x with small; sampling 16 prompts x 8 completions 0.8-1.4x and 1.75-2.4x;
# docs/results.md, "Model size (F7)"), and the minutes of the grid's
# stages a further size repeats, at the full budget on 2 cores (docs/results.md, "The study at a 32K cap from a
# fresh clone", 2026-12-07: each alone for pretrain, two stages at a time for the rest)
SIZE_COST = {"tiny": 1.0, "tiny4": 1.3, "small": 2.3}
FULL_MINUTES = {"pretrain": 11.5, "sft": 2.0, "ei": 15.3, "ppo": 9.1, "eval": 0.65}


def seed_counts(cfg) -> tuple[int, int]:
    """(seeds, variant_seeds) of a study config: as given, or the budget's default (``SEEDS``) where 0."""
    default = SEEDS["quick" if cfg.quick else "full"]
    return cfg.seeds or default["seeds"], cfg.variant_seeds or default["variant_seeds"]

def model_sizes(cfg) -> list[str]:
    """The embedded model sizes of a synthetic study (``--sizes``): the grid's first, then the further ones."""
    return [s.strip() for s in cfg.sizes.split(",")]


def sizes_minutes(cfg, sizes: list[str], measured: dict[str, float]) -> float:
    """The wall minutes ``--sizes`` adds for the further ``sizes``: per size, its SIZE_COST over the grid size's
    times the minutes of its stages' counterparts in the grid (pretrain, SFT, SFT's evaluation, variant_seeds x
    EI and PPO and their evaluations): as this study took them (``measured``: stage name -> minutes, the mean over
    the grid's seeds), else FULL_MINUTES scaled to the budget (pretrain by its steps, SFT by its problems x
    epochs, an RL run by its rollout cap, an evaluation by its samples: linear, a rough estimate, as EI's later
    rounds cost more). Pretrain and SFT run alone; the rest ``workers`` stages at a time."""
    b, full = BUDGETS["quick" if cfg.quick else "full"], BUDGETS["full"]
    n_eval, k = cfg.eval_problems or b["eval_problems"], cfg.k or b["k"]
    k_problems = min(cfg.k_problems or b["k_problems"], n_eval)
    scale = {"pretrain": b["pretrain_steps"] / full["pretrain_steps"],
             "sft": b["train_size"] * b["sft_epochs"] / (full["train_size"] * full["sft_epochs"]),
             "ei": (cfg.rollouts or b["rollouts"]) / full["rollouts"],
             "ppo": (cfg.rollouts or b["rollouts"]) / full["rollouts"],
             "eval": (n_eval + k_problems * k) / (full["eval_problems"] + full["k_problems"] * full["k"])}
    seeds, variant_seeds = seed_counts(cfg)

    def minutes(kind: str, names: list[str]) -> float:
        got = [measured[n] for n in names if n in measured]
        return sum(got) / len(got) if got else FULL_MINUTES[kind] * scale[kind]

    pre, sft = minutes("pretrain", [PRETRAIN]), minutes("sft", [SFT])
    rl = {r.command: minutes(r.command, [f"{r.name}@{s}" for s in range(seeds)]) for r in (EI, PPO)}
    ev = minutes("eval", ["eval-sft"] + [f"eval-{r.name}@{s}" for r in (EI, PPO) for s in range(seeds)])
    parallel = ev + variant_seeds * (rl["ei"] + rl["ppo"] + 2 * ev)
    grid = SIZE_COST[model_sizes(cfg)[0]]
    return sum(SIZE_COST[size] / grid * (pre + sft + parallel / cfg.workers) for size in sizes)


# The embedded model's learning rates in the study, per command, from its tuning sweep (``mathrl study --sweep``,
# sweep.py; docs/results.md, "Tuning sweep", 2026-12-07: each at its default x 0.3, 1, 3, seed 100, the 32,768
# cap; the final dev maj@1 on 500 questions, continued SFT's on 200): EI 5e-4 (0.684; 0.678 at 1.5e-4, 0.664 at
# 1.5e-3), PPO 1e-4 (0.696; 0.680, 0.646), RCRL 1.5e-4 (0.630; 0.612, 0.588: below its start, 0.638, at every
# rate: the one that lowered it least), continued SFT 9e-4 (0.730; 0.715 at 3e-3, 0.585 at 9e-3). One seed per
# rate: neighbouring rates within a few points are within noise. A command not named runs at its default. The
# reward variants, the ablations and the pretrained start use their algorithm's rate.
STUDY_LR: dict[str, str] = {"ei": "5e-4", "ppo": "1e-4", "rcrl": "1.5e-4", "sft-continued": "9e-4"}
