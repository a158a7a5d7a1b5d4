"""The findings of one fabricated study, to the printed digit: their verdicts and intervals are pinned, so a change
in how findings are declared, evaluated or rendered cannot change a number silently."""

import json
import zlib

import numpy as np

from mathrl import stagecache
from mathrl.report import write_report
from mathrl.study import Config, plan

# questions per evaluation. With 2 seeds the seed term of an interval is at Student's t with 1 degree of freedom
# (12.7), so most gains of the 2-seed runs are not significant and their findings are pinned as not testable,
# beside the 1-seed comparisons' holds, inconclusive and contradicted: every verdict appears
Q = 200

# accuracy of each evaluated model (greedy and per sample); the in-run curves rise from SFT's level
ACCURACY = {"sft": 0.5, "pretrain": 0.15, "ei-sparse-sft": 0.7, "ppo-sparse-sft": 0.66, "grpo-sparse-sft": 0.6,
            "rcrl-sparse-sft": 0.45, "ei-orm-sft": 0.71, "ppo-dense-sft": 0.64, "ppo-orm-sft": 0.69,
            "rcrl-dense-sft": 0.47, "ei-sparse-pretrained": 0.6, "ppo-sparse-pretrained": 0.3, "sft-continued": 0.6}
CURVE = {"ei-sparse-sft": (0.5, 0.66, 0.7), "ppo-sparse-sft": (0.5, 0.55, 0.68)}
# runs that stopped at their dev plateau after the second point (256 rollouts): carried forward to 512
STOPPED = {"seed-1/ei-sparse-sft"}


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
            stopped = str(d.relative_to(root)) in STOPPED
            points = list(zip((0, 256, 512), curve))[:2 if stopped else 3]
            hist = []
            with open(d / "eval_questions.jsonl", "w") as f:
                for i, (r, p) in enumerate(points):
                    qs = records(rng, p)
                    f.write(json.dumps({"rollouts": r, "questions": qs}) + "\n")
                    hist.append({"rollouts": r, "reward": p, "kl": 0.1 * i, "completion_tokens": 30.0 + i,
                                 "maj@1": sum(q["greedy_correct"] for q in qs) / Q})
            if stopped:
                hist[-1]["plateau_at"] = hist[-1]["rollouts"]
            (d / "history.json").write_text(json.dumps(hist))
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
    md = (tmp_path / "report.md").read_text()
    assert findings_lines(md) == GOLDEN
    # the sample-complexity table: seed 1 of EI stopped at its plateau at 256 rollouts, carried forward to 512
    table = md.split("## Sample complexity")[1].split("\n## ")[0]
    assert [ln for ln in table.splitlines() if ln.startswith("| ") and "(" in ln] == GOLDEN_COMPLEXITY


GOLDEN = [
    '- **F1 EI >= PPO >= RCRL on maj@1, maj@K and pass@K, from SFT and from the pretrained start: not testable.** not testable at this budget where ei-sparse-sft, ppo-sparse-sft, rcrl-sparse-sft did not learn (its maj@1 gain over its start is not significant).',
    '  - gate: ei-sparse-sft - sft, maj@1 (did it learn?): +0.130 [-0.510, +0.770] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: ppo-sparse-sft - sft, maj@1 (did it learn?): +0.132 [-0.047, +0.312] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: rcrl-sparse-sft - sft, maj@1 (did it learn?): -0.075 [-0.465, +0.315] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: ei-sparse-pretrained - pretrain, maj@1 (did it learn?): +0.505 [+0.425, +0.580] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - gate: ppo-sparse-pretrained - pretrain, maj@1 (did it learn?): +0.210 [+0.135, +0.290] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - ei-sparse-sft - ppo-sparse-sft, maj@1: -0.002 [-0.799, +0.794] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - ppo-sparse-sft - rcrl-sparse-sft, maj@1: +0.207 [-0.024, +0.439] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - ei-sparse-sft - ppo-sparse-sft, pass@4_verified: -0.015 [-0.206, +0.176] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - ppo-sparse-sft - rcrl-sparse-sft, pass@4_verified: +0.095 [+0.060, +0.130] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - ei-sparse-pretrained - ppo-sparse-pretrained, maj@1: +0.295 [+0.200, +0.390] (rule at_least, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '- **F2a RL raises maj@1 and does not lower pass@k (k where SFT is not saturated): not testable.** not testable at this budget where ei-sparse-sft, ppo-sparse-sft did not learn (its maj@1 gain over its start is not significant).',
    '  - gate: ei-sparse-sft - sft, maj@1 (did it learn?): +0.130 [-0.510, +0.770] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: ppo-sparse-sft - sft, maj@1 (did it learn?): +0.132 [-0.047, +0.312] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - ei-sparse-sft - sft, pass@2_verified: +0.161 [-0.123, +0.445] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - ppo-sparse-sft - sft, pass@2_verified: +0.143 [+0.020, +0.267] (rule at_least, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '- **F2b continued SFT trades them: it raises maj@1 and lowers pass@k: inconclusive.**',
    '  - gate: sft-continued - sft, maj@1 (did it learn?): +0.137 [+0.006, +0.269] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - sft-continued - sft, pass@2_verified: +0.111 [-0.065, +0.286] (rule falls, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '- **F3 EI and PPO need a similar rollout budget to converge (90% of the dev plateau gain, within a factor of 2): not testable.** not testable at this budget: the dev gain of ei-sparse-sft and ppo-sparse-sft is not significant, so there is no budget to converge to compare.',
    '  - gate: ei-sparse-sft at 512 - at 0 rollouts, dev maj@1 (did it learn?): +0.140 [-0.562, +0.842] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: ppo-sparse-sft at 512 - at 0 rollouts, dev maj@1 (did it learn?): +0.205 [-0.307, +0.717] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    "- **F4 dense and ORM rewards make little difference over sparse (either way): not testable.** not testable at this budget where ppo-sparse-sft, rcrl-sparse-sft, ei-sparse-sft did not learn (its maj@1 gain over its start is not significant); the ORM's parts are not testable: its within-question AUC is not recorded (needs > 0.55: ranking a question's own samples better than chance).",
    '  - gate: ppo-sparse-sft - sft, maj@1 (did it learn?): +0.132 [-0.047, +0.312] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: rcrl-sparse-sft - sft, maj@1 (did it learn?): -0.075 [-0.465, +0.315] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - gate: ei-sparse-sft - sft, maj@1 (did it learn?): +0.130 [-0.510, +0.770] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - ppo-dense-sft - ppo-sparse-sft, maj@1: +0.005 [-0.085, +0.090] (rule similar, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> not testable (similar out of reach at this precision: half-width 0.088 >= m)',
    '  - rcrl-dense-sft - rcrl-sparse-sft, maj@1: +0.070 [-0.030, +0.170] (rule similar, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> not testable (similar out of reach at this precision: half-width 0.100 >= m)',
    '  - ppo-orm-sft - ppo-sparse-sft, maj@1: +0.075 [-0.020, +0.170] (rule similar, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> not testable (similar out of reach at this precision: half-width 0.095 >= m)',
    '  - ei-orm-sft - ei-sparse-sft, maj@1: +0.015 [-0.065, +0.105] (rule similar, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> not testable (similar out of reach at this precision: half-width 0.085 >= m)',
    '- **F5 after RL the pretrained-vs-SFT gap narrows, to under 0.10 on maj@1 (EI and PPO): contradicted.**',
    '  - gate: pretrain start, pass@4_verified (is it live?): +0.435 [+0.365, +0.505] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - gate: ei-sparse-pretrained - pretrain, maj@1 (did it learn?): +0.505 [+0.425, +0.580] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - (sft - pretrained) - (EI from sft - from pretrained), maj@1: +0.325 [+0.215, +0.440] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - EI from sft - from pretrained, maj@1 (the gap after RL): +0.125 [+0.035, +0.210] (rule little, m = 0.1; 1 seed(s) x 200 questions; no seed variance) -> inconclusive',
    '  - gate: ppo-sparse-pretrained - pretrain, maj@1 (did it learn?): +0.210 [+0.135, +0.290] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> holds',
    '  - (sft - pretrained) - (PPO from sft - from pretrained), maj@1: +0.090 [-0.025, +0.210] (rule raises, m = 0.02; 1 seed(s) x 200 questions; no seed variance) -> inconclusive',
    '  - PPO from sft - from pretrained, maj@1 (the gap after RL): +0.360 [+0.275, +0.445] (rule little, m = 0.1; 1 seed(s) x 200 questions; no seed variance) -> contradicted',
    '- **F6 pass@K saturates while RL still learns, and RL solves few questions SFT cannot: inconclusive.** the saturation half on in-run evaluations (dev problems, fewer samples than the final evaluation).',
    '  - gate: ei-sparse-sft at 512 - at 256 rollouts, maj@1 (still learning?): +0.047 [-0.558, +0.653] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - ei-sparse-sft at 512 - at 256 rollouts, pass@4_verified: +0.000 [-0.014, +0.014] (rule similar, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - gate: ei-sparse-sft - sft, maj@1 (did it learn?): +0.130 [-0.510, +0.770] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - questions ei-sparse-sft solves (any of 4) that sft does not: +0.080 [+0.043, +0.117] (rule little, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    '  - gate: ppo-sparse-sft at 512 - at 256 rollouts, maj@1 (still learning?): +0.175 [+0.033, +0.317] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> holds',
    '  - ppo-sparse-sft at 512 - at 256 rollouts, pass@4_verified: +0.015 [-0.116, +0.146] (rule similar, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive (similar out of reach at this precision: half-width 0.131 >= m)',
    '  - gate: ppo-sparse-sft - sft, maj@1 (did it learn?): +0.132 [-0.047, +0.312] (rule raises, m = 0.02; 2 seed(s) x 200 questions) -> inconclusive',
    '  - questions ppo-sparse-sft solves (any of 4) that sft does not: +0.080 [+0.043, +0.117] (rule little, m = 0.02; 2 seed(s) x 200 questions) -> not testable',
    # every fake stage took 1 minute: 2.3 x (1 + 1 + (1 + 1 x (1 + 1 + 2 x 1)) / 2) = 10.35 (study.sizes_minutes)
    '- **F7 larger models explore more diversely: more distinct verified solutions per question among K samples (EI and PPO): not measured** run with --sizes tiny,small (adds ~10 minutes).',
    "- **F8 balanced good/bad labels lower RCRL's maj@1 (from the pretrained start): not measured** run with --ablation label-ratio (adds two RCRL runs from the pretrained start per variant seed).",
]


GOLDEN_COMPLEXITY = [
    '| EI (sparse, from sft) | 2 of 2 | 325 [4, 26,107] | seed 0: 459, cap reached, no plateau; seed 1: 230, plateau at 256 | 1 of 6 |',
    '| PPO (sparse, from sft) | 2 of 2 | 482 [394, 588] | seed 0: 489, cap reached, no plateau; seed 1: 474, cap reached, no plateau | 0 of 6 |',
    '| RCRL (sparse, from sft) | 1 of 2 | 230 (one seed, no interval) | seed 0: 230, cap reached, no plateau; seed 1: did not learn, cap reached, no plateau | 0 of 6 |',
    '| SFT continued (reference solutions, from sft) | 2 of 2 | 454 [211, 979] | seed 0: 428, cap reached, no plateau; seed 1: 482, cap reached, no plateau | 0 of 6 |',
    '| EI (orm, from sft) | 1 of 1 | 491 (one seed, no interval) | seed 0: 491, cap reached, no plateau | 0 of 3 |',
    '| PPO (dense, from sft) | 1 of 1 | 495 (one seed, no interval) | seed 0: 495, cap reached, no plateau | 0 of 3 |',
    '| PPO (orm, from sft) | 1 of 1 | 472 (one seed, no interval) | seed 0: 472, cap reached, no plateau | 0 of 3 |',
    '| RCRL (dense, from sft) | 1 of 1 | 230 (one seed, no interval) | seed 0: 230, cap reached, no plateau | 0 of 3 |',
    '| EI (sparse, from pretrained) | 1 of 1 | 485 (one seed, no interval) | seed 0: 485, cap reached, no plateau | 0 of 3 |',
    '| PPO (sparse, from pretrained) | 1 of 1 | 230 (one seed, no interval) | seed 0: 230, cap reached, no plateau | 0 of 3 |',
]
