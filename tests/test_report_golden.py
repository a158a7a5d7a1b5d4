"""The findings of one fabricated study, to the printed digit: their verdicts and intervals are pinned, so a change
in how findings are declared, evaluated or rendered cannot change a number silently."""

import json
import zlib

import numpy as np

from mathrl import stagecache
from mathrl.report import write_report
from mathrl.study import Config, plan

Q = 200  # questions per evaluation: enough for RL's gains over SFT to be significant, so every gate is passed

# accuracy of each evaluated model (greedy and per sample); the in-run curves rise from SFT's level
ACCURACY = {"sft": 0.5, "pretrain": 0.15, "ei-sparse-sft": 0.7, "ppo-sparse-sft": 0.66, "grpo-sparse-sft": 0.6,
            "rcrl-sparse-sft": 0.45, "ei-orm-sft": 0.71, "ppo-dense-sft": 0.64, "ppo-orm-sft": 0.69,
            "rcrl-dense-sft": 0.47, "ei-sparse-pretrained": 0.6, "ppo-sparse-pretrained": 0.3}
CURVE = {"ei-sparse-sft": (0.5, 0.66, 0.7), "ppo-sparse-sft": (0.5, 0.55, 0.68)}


def records(rng, p, n=4):
    greedy = rng.random(Q) < p
    c = rng.binomial(n, p, Q)
    verified = rng.binomial(c, 0.9)
    return [{"id": f"q{i}", "difficulty": 1 + i % 3, "answer": str(i % 17), "question": f"what is {i}?",
             "greedy": f"x = {i % 17}.", "greedy_correct": bool(g), "greedy_verified": bool(g) and bool(v > 0), "n": n,
             "c": int(ci), "c_verified": int(v)} for i, (g, ci, v) in enumerate(zip(greedy, c, verified))]


def fake_study(root, stages):
    """Every stage's outputs as the commands write them, drawn from ACCURACY with a seed per stage."""
    for s in stages:
        d = s.dir(root)
        d.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(zlib.crc32(str(d.relative_to(root)).encode()))
        # finished and current (the plan lists a stage after those it needs)
        stagecache.finish(d, ["mathrl", *s.command], 60.0, stagecache.inputs(s, root, {t.name: t for t in stages}))
        name = s.dir(root).name
        if name.startswith("eval-"):
            rows = records(rng, ACCURACY[name.removeprefix("eval-")])
            acc = sum(r["greedy_correct"] for r in rows) / Q
            (d / "metrics.json").write_text(json.dumps({
                "k": 4, "maj@1": acc, "maj@1_verified": acc, "pass@4": 0.9, "pass@4_verified": 0.8, "maj@4": 0.5,
                "rerank@4": 0.4, "distinct_verified_solutions": 2.0, "distinct_answers": 3.0,
                "by_difficulty": {"1": {"n": 67, "maj@1": 0.5}, "2": {"n": 67, "maj@1": 0.4}}}))
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif name == "sft":
            with open(d / "dev_questions.jsonl", "w") as f:
                for e, p in ((1, 0.4), (2, 0.5)):
                    f.write(json.dumps({"epoch": e, "questions": records(rng, p)}) + "\n")
        elif name in CURVE or name in ACCURACY and name != "sft":
            curve = CURVE.get(name, (0.5, 0.5, ACCURACY[name]))
            hist = [{"rollouts": r, "reward": p, "kl": 0.1 * i, "completion_tokens": 30.0 + i}
                    for i, (r, p) in enumerate(zip((0, 256, 512), curve))]
            (d / "history.json").write_text(json.dumps(hist))
            with open(d / "eval_questions.jsonl", "w") as f:
                for r, p in zip((0, 256, 512), curve):
                    f.write(json.dumps({"rollouts": r, "questions": records(rng, p)}) + "\n")
        elif name in ("orm", "sorm"):
            (d / "report.json").write_text(json.dumps({"auc": 0.8, "n_train_samples": 40}))


def findings_lines(md: str) -> list[str]:
    lines = md.split("## Findings")[1].split("\n## ")[0].splitlines()
    return [ln for ln in lines if ln.lstrip().startswith("- ")]


def test_findings_of_a_fabricated_study_are_pinned(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    fake_study(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    assert findings_lines((tmp_path / "report.md").read_text()) == GOLDEN


GOLDEN = [
    '- **F1 EI >= PPO >= RCRL on maj@1 (from SFT, sparse reward): inconclusive.**',
    '  - ei-sparse-sft - ppo-sparse-sft, maj@1: -0.002 [-0.125, +0.115] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - ppo-sparse-sft - rcrl-sparse-sft, maj@1: +0.207 [+0.120, +0.295] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    "- **F2 RL raises maj@1 and pass@K together, while longer SFT trades them: contradicted.** SFT's epochs: one shared SFT run, so its interval is over dev questions only.",
    '  - ei-sparse-sft - sft, maj@1: +0.130 [+0.015, +0.240] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - ei-sparse-sft - sft, pass@4_verified: +0.057 [+0.013, +0.100] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - ppo-sparse-sft - sft, maj@1: +0.132 [+0.040, +0.225] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - ppo-sparse-sft - sft, pass@4_verified: +0.073 [+0.035, +0.113] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - SFT epoch 2 - epoch 1, dev maj@1: +0.090 [-0.005, +0.185] (rule raises, m = 0.02; 1 seed(s) x 200 questions) -> inconclusive',
    '  - SFT epoch 2 - epoch 1, dev pass@4_verified: +0.070 [+0.000, +0.140] (rule falls, m = 0.02; 1 seed(s) x 200 questions) -> contradicted',
    '- **F3 EI and PPO need a similar rollout budget for their gain: inconclusive.** both runs evaluated at [0, 256, 512] rollouts.',
    '  - ei-sparse-sft at 512 - at 0 rollouts, maj@1 (the gain): +0.160 [+0.065, +0.260] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - ppo-sparse-sft at 512 - at 0 rollouts, maj@1 (the gain): +0.205 [+0.095, +0.310] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - fraction of the gain reached at 256 rollouts, EI - PPO: +0.432 [-0.273, +1.349] (rule similar, m = 0.25; 2 seed(s) x 200 questions) -> inconclusive',
    '- **F4 dense and ORM rewards add little over sparse: inconclusive.**',
    '  - ppo-dense-sft - ppo-sparse-sft, maj@1: +0.005 [-0.085, +0.100] (rule little, m = 0.02; 1 seed(s) x 200 questions) -> inconclusive',
    '  - ppo-orm-sft - ppo-sparse-sft, maj@1: +0.075 [-0.020, +0.175] (rule little, m = 0.02; 1 seed(s) x 200 questions) -> inconclusive',
    '  - ei-orm-sft - ei-sparse-sft, maj@1: +0.015 [-0.065, +0.105] (rule little, m = 0.02; 1 seed(s) x 200 questions) -> inconclusive',
    '- **F5 the pretrained-vs-SFT gap narrows after RL: holds.**',
    '  - pretrain start, pass@4_verified (is it live?): +0.435 [+0.365, +0.505] (rule raises, m = 0.02; 1 seed(s) x 200 questions) -> holds',
    '  - (sft - pretrained) - (EI from sft - EI from pretrained), maj@1: +0.325 [+0.215, +0.440] (rule raises, m = 0.02; 1 seed(s) x 200 questions) -> holds',
    '- **F6 pass@K saturates early in RL training: inconclusive.** in-run evaluations (test problems, fewer samples than the final evaluation).',
    '  - ei-sparse-sft at 512 - at 256 rollouts, pass@4_verified: -0.005 [-0.030, +0.020] (rule similar, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - ppo-sparse-sft at 512 - at 256 rollouts, pass@4_verified: +0.015 [-0.025, +0.055] (rule similar, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
]
