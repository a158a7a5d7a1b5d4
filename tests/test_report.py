"""The study report: each finding can come out holds, contradicted or inconclusive on constructed run data, and
the report shows its rule, intervals and every section."""

import json

import pytest

from mathrl.report import StudyData, findings, write_report
from mathrl.stats import CONTRADICTED, HOLDS, INCONCLUSIVE
from mathrl.study import Config, plan

Q = 40


def recs(greedy, c=None, n=4, verified=None):
    """Per-question records as evaluations write them: greedy correctness (1/0 per question) and, per question,
    c answer-correct and c_verified step-verified samples out of n."""
    c = c if c is not None else [n * g for g in greedy]
    verified = verified if verified is not None else c
    return [{"id": f"q{i}", "difficulty": 1 + i % 2, "answer": str(i), "greedy": f"x = {i}.", "greedy_correct": bool(g),
             "greedy_verified": bool(g), "n": n, "c": ci, "c_verified": vi}
            for i, (g, ci, vi) in enumerate(zip(greedy, c, verified))]


HALF = [1] * (Q // 2) + [0] * (Q // 2)
ALL, NONE = [1] * Q, [0] * Q
# 10 questions where a and b disagree, 5 each way: difference 0 with an interval of about +-0.15
NOISY_A = [1] * 5 + [0] * 5 + HALF[10:]
NOISY_B = [0] * 5 + [1] * 5 + HALF[10:]


def data_with(**models) -> StudyData:
    """A StudyData whose final evaluations are ``models`` (name -> per-seed greedy lists, or one list: shared)."""
    d = StudyData(k=4)
    for name, g in models.items():
        if isinstance(g, dict):
            d.evals[name] = {s: recs(x) for s, x in g.items()}
        else:
            d.evals[name] = {None: recs(g)}
        d.metrics[name] = {s: {"maj@1": 0.5, "k": 4} for s in d.evals[name]}
    return d


def seeds(*gs):
    return {i: g for i, g in enumerate(gs)}


@pytest.mark.parametrize("ei, ppo, expected", [
    (HALF, HALF, HOLDS),  # EI = PPO = RCRL: every paired replicate is 0 > -m
    (NONE, ALL, CONTRADICTED),  # EI - PPO = -1
    (NOISY_A, NOISY_B, INCONCLUSIVE),  # 0 +- 0.15: cannot tell
])
def test_f1_verdicts(ei, ppo, expected):
    d = data_with(**{"ei-sparse-sft": seeds(ei, ei), "ppo-sparse-sft": seeds(ppo, ppo),
                     "rcrl-sparse-sft": seeds(ppo, ppo)})
    f = findings(d)["F1"]
    assert f.verdict == expected
    assert f.parts[0].seeds == 2 and f.parts[0].questions == Q


def _f2(rl, sft, epoch_last, epoch_before):
    d = data_with(**{"ei-sparse-sft": seeds(rl, rl), "ppo-sparse-sft": seeds(rl, rl), "sft": sft})
    d.sft_dev = {1: epoch_before, 2: epoch_last}
    return findings(d)["F2"]


def test_f2_verdicts():
    # holds: RL solves everything SFT half-solves (maj@1 and verified pass@4 +0.5); SFT's last epoch raises dev
    # maj@1 (0.5 -> 1) while its verified pass@4 falls (1 -> 0.5)
    trade_last = recs(ALL, c=[4] * Q, verified=[4] * (Q // 2) + [0] * (Q // 2))
    trade_before = recs(HALF, c=[4] * Q, verified=[4] * Q)
    assert _f2(ALL, HALF, trade_last, trade_before).verdict == HOLDS
    # contradicted: RL = SFT (no gain, tightly)
    assert _f2(HALF, HALF, trade_last, trade_before).verdict == CONTRADICTED
    # inconclusive: RL noisy against SFT, and the SFT epochs change nothing clearly
    f = _f2(NOISY_A, NOISY_B, recs(NOISY_A), recs(NOISY_B))
    assert f.verdict == INCONCLUSIVE
    assert any("pass@4_verified" in p.label for p in f.parts)  # pass@K findings use verified pass@K


def _curves(d, run, points):
    d.curves[run] = {s: {r: recs(g) for r, g in points.items()} for s in (0, 1)}


def test_f3_verdicts():
    d = StudyData(k=4)
    # both gain 0 -> 1 and reach half of it at the middle point: the fractions are equal -> similar holds
    for run in ("ei-sparse-sft", "ppo-sparse-sft"):
        _curves(d, run, {0: NONE, 2048: HALF, 4096: ALL})
    assert findings(d)["F3"].verdict == HOLDS
    # EI has all of its gain at the middle, PPO none of it: 1 - 0 > 0.25 -> contradicted
    _curves(d, "ei-sparse-sft", {0: NONE, 2048: ALL, 4096: ALL})
    _curves(d, "ppo-sparse-sft", {0: NONE, 2048: NONE, 4096: ALL})
    assert findings(d)["F3"].verdict == CONTRADICTED
    # PPO does not gain: nothing to compare -> inconclusive, "cannot be tested"
    _curves(d, "ppo-sparse-sft", {0: HALF, 2048: HALF, 4096: HALF})
    f = findings(d)["F3"]
    assert f.verdict == INCONCLUSIVE and "cannot be tested" in f.note and "ppo-sparse-sft" in f.note


@pytest.mark.parametrize("dense, expected", [(HALF, HOLDS), (ALL, CONTRADICTED), (NOISY_A, INCONCLUSIVE)])
def test_f4_verdicts(dense, expected):
    sparse = NOISY_B if dense is NOISY_A else HALF if dense is ALL else HALF
    d = data_with(**{"ppo-dense-sft": seeds(dense), "ppo-sparse-sft": seeds(sparse, sparse, sparse)})
    f = findings(d)["F4"]
    assert f.verdict == expected
    assert f.parts[0].seeds == 1  # paired on the seeds both have


def test_f5_verdicts():
    base = {"sft": ALL, "ei-sparse-sft": seeds(ALL)}
    # the pretrained start solves nothing -> cannot be tested
    d = data_with(pretrain=NONE, **{"ei-sparse-pretrained": seeds(ALL)}, **base)
    f = findings(d)["F5"]
    assert f.verdict == INCONCLUSIVE and "cannot be tested" in f.note
    # a live start (half solved): EI from it catches up (gap 0.5 -> 0) -> holds; stays put (0.5 -> 0.5) -> contradicted
    d = data_with(pretrain=HALF, **{"ei-sparse-pretrained": seeds(ALL)}, **base)
    assert findings(d)["F5"].verdict == HOLDS
    d = data_with(pretrain=HALF, **{"ei-sparse-pretrained": seeds(HALF)}, **base)
    assert findings(d)["F5"].verdict == CONTRADICTED


def test_f6_verdicts():
    d = StudyData(k=4)
    for run in ("ei-sparse-sft", "ppo-sparse-sft"):
        _curves(d, run, {0: NONE, 2048: HALF, 4096: HALF})  # no change in the second half: saturated
    assert findings(d)["F6"].verdict == HOLDS
    _curves(d, "ppo-sparse-sft", {0: NONE, 2048: NONE, 4096: ALL})
    assert findings(d)["F6"].verdict == CONTRADICTED
    _curves(d, "ppo-sparse-sft", {0: NONE, 2048: NOISY_B, 4096: NOISY_A})
    _curves(d, "ei-sparse-sft", {0: NONE, 2048: NOISY_B, 4096: NOISY_A})
    assert findings(d)["F6"].verdict == INCONCLUSIVE


def _fake_run(root, stages):
    for s in stages:
        d = s.dir(root)
        d.mkdir(parents=True, exist_ok=True)
        (d / "stage.json").write_text(json.dumps({"seconds": 60.0, "command": ["mathrl", *s.command]}))
        if s.group == "eval":
            good = ALL if s.meta["model"].startswith("ei") else HALF
            rows = recs(good)
            (d / "metrics.json").write_text(json.dumps({
                "k": 4, "maj@1": sum(good) / Q, "maj@1_verified": sum(good) / Q, "pass@4": 0.9, "pass@4_verified": 0.8,
                "maj@4": 0.5, "rerank@4": 0.4, "distinct_verified_solutions": 2.0, "distinct_answers": 3.0,
                "by_difficulty": {"1": {"n": 20, "maj@1": 0.5}, "2": {"n": 20, "maj@1": 0.4}}}))
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif s.group == "rl":
            hist = [{"rollouts": r, "maj@1": 0.5, "reward": 0.4 + 0.1 * i, "kl": 0.1 * i, "completion_tokens": 30.0,
                     "entropy_estimate": 0.5} for i, r in enumerate((0, 128, 256))]
            (d / "history.json").write_text(json.dumps(hist))
            with open(d / "eval_questions.jsonl", "w") as f:
                for r, g in ((0, HALF), (128, HALF), (256, ALL)):
                    f.write(json.dumps({"rollouts": r, "questions": recs(g)}) + "\n")
        elif s.base == "sft":
            with open(d / "dev_questions.jsonl", "w") as f:
                for e, g in ((1, HALF), (2, ALL)):
                    f.write(json.dumps({"epoch": e, "questions": recs(g)}) + "\n")
        elif s.group == "orm":
            (d / "report.json").write_text(json.dumps({"auc": 0.8, "n_train_samples": 40, "n_train_step_labelled": 40}))


def test_report_from_fabricated_runs(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for key in ("F1", "F2", "F3", "F4", "F5", "F6"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- **{key} "))
        assert any(v in line for v in ("holds.", "contradicted.", "inconclusive.")), line
    assert "rule at_least, m = 0.02; 2 seed(s) x 40 questions" in md  # F1's parts: rule, margin, seeds
    assert "EI (sparse, from sft) - sft" in md and "[" in md.split("## Differences")[1]
    for section in ("## Power", "## Per difficulty", "## Budgets", "## Three test questions", "## Provenance",
                    "Room above maj@1", "Pretrained start on the same",
                    "Question-blind guesser", "## Reward models", "with rollout step labels"):
        assert section in md, section
    assert "torch " in md and "mathrl eval" in md  # versions and the stage commands
    assert page.count("data:image/png;base64,") >= 3 and "<table>" in page and "quick" in md
    assert "Room above maj@1" in page and "Pretrained start on the same" in page


def test_profile_line_applies_issue_22_criteria():
    from mathrl.report import profile_line

    # live: maj@1 0.05 <= 0.10, verified 0.25 >= 0.20, answer-only 0.60 - guesser 0.15 = +0.45 >= +0.20
    g = {"pass@96": 0.15, "pretrained": {"maj@1": 0.05, "pass@96": 0.60, "pass@96_verified": 0.25, "n": 120}}
    assert profile_line(g, 96).endswith("is met.") and "+0.450" in profile_line(g, 96)
    # each criterion failing alone: maj@1 0.11; verified 0.19; answer-only 0.34 = guesser + 0.19
    for key, bad in (("maj@1", 0.11), ("pass@96_verified", 0.19), ("pass@96", 0.34)):
        assert profile_line({**g, "pretrained": {**g["pretrained"], key: bad}}, 96).endswith("not met.")
    assert profile_line({"pass@96": 0.15}, 96) is None  # no pretrained start evaluated


def test_objectives_table_pairs_each_variant_with_grpo():
    from mathrl.report import objectives_table

    # DAPO right on every question where GRPO is right on half: DAPO - GRPO = +0.5 on maj@1 with every seed
    d = data_with(**{"grpo-sparse-sft": seeds(HALF, HALF), "grpo-dapo-sft": seeds(ALL, ALL),
                     "ppo-sparse-sft": seeds(HALF, HALF)})
    d.meta = {"grpo-sparse-sft": {"algorithm": "GRPO", "reward": "sparse", "start": "sft"},
              "grpo-dapo-sft": {"algorithm": "GRPO", "reward": "sparse", "start": "sft", "objective": "DAPO"},
              "ppo-sparse-sft": {"algorithm": "PPO", "reward": "sparse", "start": "sft"}}
    cols, rows = objectives_table(d)
    assert [r[0] for r in rows] == ["GRPO loss as DAPO (sparse, from sft) - GRPO", "PPO (sparse, from sft) - GRPO"]
    assert rows[0][1] == "2" and rows[0][2].startswith("+0.500") and rows[1][2].startswith("+0.000")
    assert objectives_table(data_with(sft=HALF))[1] == []  # no ablation runs: no table
