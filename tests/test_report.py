"""The study report: each finding can come out holds, contradicted or inconclusive on constructed run data, and
the report shows its rule, intervals and every section."""

import json
import re
from html.parser import HTMLParser

import pytest

from mathrl import stagecache
from mathrl.findings import curve_points, findings
from mathrl.grid import (
    BY_NAME,
    EI,
    EI_PRETRAINED,
    GRPO,
    PPO,
    PPO_DENSE,
    PPO_ORM,
    RCRL,
    SFT,
    SFT_MORE,
)
from mathrl.render import Section
from mathrl.report import write_report
from mathrl.stats import CONTRADICTED, HOLDS, INCONCLUSIVE, NOT_TESTABLE
from mathrl.study import Config, plan
from mathrl.studydata import (
    Evaluation,
    Metrics,
    Question,
    RewardModel,
    RunResults,
    StudyData,
    carry_forward,
)

Q = 40


def rows(greedy, c=None, n=4, verified=None, distinct=None):
    """Per-question records as evaluations write them: greedy correctness (1/0 per question) and, per question,
    c answer-correct and c_verified step-verified samples out of n, of which ``distinct`` distinct verified
    solutions (default: min(c_verified, 1); None in ``distinct``: not recorded, as in an earlier mathrl's)."""
    c = c if c is not None else [n * g for g in greedy]
    verified = verified if verified is not None else c
    distinct = distinct if distinct is not None else [min(v, 1) for v in verified]
    return [{"id": f"q{i}", "difficulty": 1 + i % 2, "answer": str(i), "greedy": f"x = {i}.", "greedy_correct": bool(g),
             "greedy_verified": bool(g), "n": n, "c": ci, "c_verified": vi, "distinct_verified": di,
             "answers": [str(i)] * ci + [None] * (n - ci)}
            for i, (g, ci, vi, di) in enumerate(zip(greedy, c, verified, distinct))]


def recs(greedy, c=None, n=4, verified=None, distinct=None):
    """The same records as the report reads them."""
    return [Question.of(r) for r in rows(greedy, c, n, verified, distinct)]


HALF = [1] * (Q // 2) + [0] * (Q // 2)
ALL, NONE = [1] * Q, [0] * Q
# 10 questions where a and b disagree, 5 each way: difference 0 with an interval of about +-0.15
NOISY_A = [1] * 5 + [0] * 5 + HALF[10:]
NOISY_B = [0] * 5 + [1] * 5 + HALF[10:]


def data_with(orm_auc=None, **models) -> StudyData:
    """A StudyData whose final evaluations are ``models``: name -> per-seed evaluations ({seed: ev}) or one
    (shared); an evaluation is a greedy list or (greedy, c) with c correct of 4 samples per question."""
    d = StudyData(k=4)
    for name, g in models.items():
        by_seed = g if isinstance(g, dict) else {None: g}
        records = {s: recs(*x) if isinstance(x, tuple) else recs(x) for s, x in by_seed.items()}
        d.evals[name] = Evaluation(records, {s: Metrics.of({"maj@1": 0.5, "k": 4}) for s in records})
        if name in BY_NAME:
            d.runs[name] = RunResults(BY_NAME[name])
    if orm_auc is not None:
        d.reward_models["orm"] = RewardModel(auc=0.8, auc_within_question=orm_auc)
    return d


def seeds(*gs):
    return {i: g for i, g in enumerate(gs)}


def two(g):
    return seeds(g, g)


# The start every RL run below is compared with solves nothing greedily: a run at HALF or above learned (+0.5,
# lo > 0 over 40 questions); a run at NONE did not (its gain is 0: not testable)
@pytest.mark.parametrize("ei, ppo, expected", [
    (HALF, HALF, HOLDS),  # EI = PPO = RCRL: every replicate is 0 > -m
    (HALF, ALL, CONTRADICTED),  # EI - PPO = -0.5 with both learned
    (NOISY_A, NOISY_B, INCONCLUSIVE),  # 0 +- 0.15: cannot tell
    (NONE, HALF, NOT_TESTABLE),  # EI did not learn: below PPO, but never "contradicted"
])
def test_f1_verdicts(ei, ppo, expected):
    d = data_with(sft=NONE, **{EI.name: two(ei), PPO.name: two(ppo), RCRL.name: two(ppo)})
    f = findings(d)["F1"]
    assert f.verdict == expected
    assert {p.seeds for p in f.parts} == {2} and all(p.questions == Q for p in f.parts)
    assert any(p.label.endswith("maj@4") for p in f.parts) and any("pass@4_verified" in p.label for p in f.parts)


# SFT: greedy NONE; c = 4 of 4 on half the questions, 0 on the rest, so its pass@k is 0.5 at every k: the k of F2
# is 4, the largest of the ladder <= K = 4 with SFT's pass@k <= 0.9
SFT_C = (NONE, [4] * (Q // 2) + [0] * (Q // 2))
NOISY_C = ([4] * 5 + [0] * 5 + SFT_C[1][10:], [0] * 5 + [4] * 5 + SFT_C[1][10:])


@pytest.mark.parametrize("ei, expected", [
    ((HALF, SFT_C[1]), HOLDS),  # learned; pass@4 unchanged: 0 > -m
    ((HALF, [0] * Q), CONTRADICTED),  # learned; pass@4 0.5 -> 0: hi < -m
    ((HALF, NOISY_C[0]), INCONCLUSIVE),  # learned; pass@4 0 +- 0.15 against SFT's NOISY_C[1]
    ((NONE, SFT_C[1]), NOT_TESTABLE),  # did not learn
])
def test_f2a_verdicts(ei, expected):
    sft = (NONE, NOISY_C[1]) if ei[1] is NOISY_C[0] else SFT_C
    d = data_with(sft=sft, **{EI.name: two(ei), PPO.name: two((HALF, sft[1]))})
    f = findings(d)["F2a"]
    assert f.verdict == expected
    assert any("pass@4_verified" in p.label for p in f.parts)


@pytest.mark.parametrize("more, expected", [
    ((HALF, [0] * Q), HOLDS),  # continued SFT learned maj@1 and lost pass@4 (0.5 -> 0): hi < 0
    ((HALF, SFT_C[1]), CONTRADICTED),  # pass@4 unchanged: lo > -m
    ((HALF, NOISY_C[0]), INCONCLUSIVE),
    ((NONE, [0] * Q), NOT_TESTABLE),  # did not raise maj@1: nothing was traded
])
def test_f2b_verdicts(more, expected):
    sft = (NONE, NOISY_C[1]) if more[1] is NOISY_C[0] else SFT_C
    assert findings(data_with(sft=sft, **{SFT_MORE.name: two(more)}))["F2b"].verdict == expected


def _curves(d, run, points):
    d.runs[run.name] = RunResults(run, curve={s: {r: recs(*g) if isinstance(g, tuple) else recs(g)
                                                  for r, g in points.items()} for s in (0, 1)})


POINTS = (0, 1024, 2048, 4096, 8192)
LONG = POINTS + (16384, 32768, 65536)


def lin(reach, points=POINTS):
    """A dev maj@1 curve rising linearly from 0 at 0 rollouts to 1 at ``reach``, flat after: its rollouts to 90% of
    the gain are 0.9 * reach (the target 0.9 lies on the straight segment before ``reach``)."""
    return [(x, min(x / reach, 1.0)) for x in points]


FLAT = [(x, 0.5) for x in POINTS]


def _dev_run(d, run, by_seed, plateau=()):
    """A run whose seeds have the dev curves ``by_seed`` ({seed: [(rollouts, maj@1)]}, maj@1 a multiple of 1/Q):
    history rows with maj@1 (``plateau_at`` on the last row of the seeds in ``plateau``) and per-question records
    that solve the first maj@1 * Q questions; read as ``studydata.collect`` reads it (carried forward)."""
    r = RunResults(run)
    for s, pts in by_seed.items():
        r.history[s] = [{"rollouts": x, "maj@1": v} for x, v in pts]
        if s in plateau:
            r.history[s][-1]["plateau_at"] = pts[-1][0]
        r.curve[s] = {x: recs([1] * round(v * Q) + [0] * (Q - round(v * Q))) for x, v in pts}
    carry_forward(r)
    d.runs[run.name] = r


@pytest.mark.parametrize("ei, ppo, expected", [
    # paired by seed: EI and PPO reach 90% at the same rollouts on each seed (921.6, 1,843.2, 3,686.4): every
    # log2 difference is 0, the interval [0, 0] lies inside +-1 -> holds (unpaired, the seeds' spread would not)
    ((1024, 2048, 4096), (1024, 2048, 4096), HOLDS),
    # PPO needs 8x EI's rollouts on every seed: log2(921.6 / 7,372.8) = -3, interval [-3, -3], hi < -1
    ((1024,) * 3, (8192,) * 3, CONTRADICTED),
    # differences 0, -2, -1: mean -1, sd 1, t(0.975, 2) / sqrt(3) = 2.484 -> [-3.484, +1.484] straddles -1
    ((1024,) * 3, (1024, 4096, 2048), INCONCLUSIVE),
    # PPO's dev curve is flat: its gain 0 is not significant -> not testable at this budget
    ((1024,) * 3, None, NOT_TESTABLE),
])
def test_f3_verdicts(ei, ppo, expected):
    # curves to 65,536 rollouts: each is flat over its last two points (it reaches 1 by 8,192), a plateau
    d = StudyData(k=4)
    _dev_run(d, EI, {s: lin(x, LONG) for s, x in enumerate(ei)})
    _dev_run(d, PPO, {s: lin(x, LONG) if ppo else FLAT for s, x in enumerate(ppo or ei)})
    f = findings(d)["F3"]
    assert f.verdict == expected
    if expected == NOT_TESTABLE:
        assert "not testable at this budget" in f.note and PPO.name in f.note
        return
    main = f.parts[-1]
    assert main.rule == "similar" and main.margin == 1.0 and main.seeds == 3
    if expected == INCONCLUSIVE:
        assert main.interval.estimate == pytest.approx(-1.0)
        assert (main.interval.lo, main.interval.hi) == pytest.approx((-3.484, 1.484), abs=1e-3)


def test_f3_with_one_seed_has_no_interval():
    d = StudyData(k=4)
    _dev_run(d, EI, {0: lin(1024)})
    _dev_run(d, PPO, {0: lin(1024)})
    f = findings(d)["F3"]
    assert f.verdict == INCONCLUSIVE and "one seed, no interval" in f.note


def test_f3_is_not_testable_while_a_curve_still_rises_at_the_cap():
    # PPO's seed 1 reaches 1 only at 8,192, the cap: its last two points (4,096: 0.5, 8,192: 1) rise 0.5 above the
    # best before them (0.25), more than the margin, and it did not stop at a plateau: its rollouts to 90% (7,372.8)
    # are a lower bound, so the budget to converge is not measured -> not testable (not inconclusive)
    d = StudyData(k=4)
    _dev_run(d, EI, {s: lin(1024) for s in range(3)})
    _dev_run(d, PPO, {0: lin(1024), 1: lin(8192), 2: lin(1024)})
    f = findings(d)["F3"]
    assert f.verdict == NOT_TESTABLE
    assert "not testable at this budget" in f.note and f"{PPO.name} seed 1 reached the cap without a plateau" in f.note
    # the same curve stopped by the plateau rule is a plateau (plateau_at recorded): testable again
    d2 = StudyData(k=4)
    _dev_run(d2, EI, {s: lin(1024) for s in range(3)})
    _dev_run(d2, PPO, {0: lin(1024), 1: lin(8192), 2: lin(1024)}, plateau=(1,))
    assert findings(d2)["F3"].verdict != NOT_TESTABLE


def test_a_seed_stopped_at_its_plateau_is_carried_forward():
    # seed 0 stopped at its plateau at 2,048 rollouts; seed 1 ran on to 8,192: without the carry the points both
    # seeds share end at 2,048; with it seed 0's records at 2,048 stand for 4,096 and 8,192
    d = StudyData(k=4)
    _dev_run(d, EI, {0: lin(1024, POINTS[:3]), 1: lin(4096)}, plateau=(0,))
    r = d.runs[EI.name]
    assert r.carried == {0: [4096, 8192]}
    assert r.curve[0][8192] is r.curve[0][2048]
    assert sorted(curve_points(d, EI.name)) == list(POINTS)
    # a seed that stopped without a plateau (no plateau_at) is not carried: its later models are unknown
    _dev_run(d, PPO, {0: lin(1024, POINTS[:3]), 1: lin(4096)})
    assert d.runs[PPO.name].carried == {} and sorted(curve_points(d, PPO.name)) == list(POINTS[:3])


def test_sample_complexity_table():
    from mathrl.report import sample_complexity_table

    d = StudyData(k=4)
    # seed 0 stopped at its plateau at 4,096 (90% at 0.9 * 1,024 = 921.6), seed 1 reached the cap without one
    # (0.9 * 2,048 = 1,843.2), seed 2 never rose (did not learn). Over the 2 that learned, in log2: 9.848 and
    # 10.848 (one doubling apart), mean 10.348 -> 2^10.348 = sqrt(921.6 * 1,843.2) = 1,303.4; sd 1 / sqrt(2),
    # half-width t(0.975, 1) * (1 / sqrt(2)) / sqrt(2) = 12.706 / 2 = 6.353 -> 2^(10.348 -+ 6.353) = 16 and 106,545
    _dev_run(d, EI, {0: lin(1024, POINTS[:4]), 1: lin(2048), 2: FLAT}, plateau=(0,))
    _dev_run(d, PPO, {0: FLAT})  # one seed, never rose
    _, rows = sample_complexity_table(d)
    ei, ppo = rows
    assert ei[1] == "2 of 3" and ei[2] == "1,303 [16, 106,545]"
    assert ei[3] == ("seed 0: 922, plateau at 4,096; seed 1: 1,843, cap reached, no plateau; "
                     "seed 2: did not learn, cap reached, no plateau")
    assert ei[4] == "1 of 15"  # seed 0's point at 8,192, of 5 points for each of 3 seeds
    assert ppo[1:3] == ["0 of 1", "did not learn"]
    _dev_run(d, PPO, {0: lin(2048)})
    assert sample_complexity_table(d)[1][1][2] == "1,843 (one seed, no interval)"


@pytest.mark.parametrize("dense, sparse, expected", [
    (HALF, HALF, HOLDS),  # 0, inside +-m
    (ALL, HALF, CONTRADICTED),  # +0.5
    (NONE, HALF, CONTRADICTED),  # -0.5: a reward that hurts is not "little difference"
    (NOISY_A, NOISY_B, INCONCLUSIVE),
    (HALF, NONE, NOT_TESTABLE),  # the sparse run did not learn
])
def test_f4_verdicts(dense, sparse, expected):
    d = data_with(sft=NONE, **{PPO_DENSE.name: seeds(dense), PPO.name: seeds(sparse, sparse, sparse)})
    f = findings(d)["F4"]
    assert f.verdict == expected
    dense_part = next(p for p in f.parts if p.label.startswith(PPO_DENSE.name))
    assert dense_part.seeds == 1 and dense_part.interval.seeds == 1  # paired on seed 0: no seed variance


def test_f4_orm_parts_count_only_when_the_orm_ranks_within_a_question():
    models = dict(sft=NONE, **{PPO_ORM.name: seeds(ALL), PPO.name: seeds(HALF)})
    # the ORM reward lifts PPO by 0.5: contradicted, but only if the ORM ranks better than chance
    assert findings(data_with(orm_auc=0.70, **models))["F4"].verdict == CONTRADICTED
    for auc in (0.461, None):
        f = findings(data_with(orm_auc=auc, **models))["F4"]
        assert f.verdict == NOT_TESTABLE and "within-question AUC" in f.note


def test_f5_verdicts():
    live = (NONE, [4] * (Q // 2) + [0] * (Q // 2))  # the pretrained start: greedy 0, pass@4 0.5
    base = {"sft": HALF, EI.name: seeds(ALL)}
    # the pretrained start solves nothing even with 4 samples -> not testable
    f = findings(data_with(pretrain=NONE, **{EI_PRETRAINED.name: seeds(ALL)}, **base))["F5"]
    assert f.verdict == NOT_TESTABLE and "not testable" in f.note
    # live; EI from it reaches EI from SFT: gap (0.5 - 0) - (1 - 1) = 0.5 narrows, 0 remains < 0.10 -> holds
    assert findings(data_with(pretrain=live, **{EI_PRETRAINED.name: seeds(ALL)}, **base))["F5"].verdict == HOLDS
    # EI from it learns to HALF: narrowing (0.5 - 0) - (1 - 0.5) = 0 and 0.5 remains -> contradicted
    assert findings(data_with(pretrain=live, **{EI_PRETRAINED.name: seeds(HALF)}, **base))["F5"].verdict == CONTRADICTED
    # 36 of 40: 0.1 remains, its interval about [0.0, 0.2] straddles the 0.10 margin -> inconclusive
    near = [1] * 36 + [0] * 4
    assert findings(data_with(pretrain=live, **{EI_PRETRAINED.name: seeds(near)}, **base))["F5"].verdict == INCONCLUSIVE
    # EI from it does not learn (NONE, as the start) -> not testable at this budget
    f = findings(data_with(pretrain=live, **{EI_PRETRAINED.name: seeds(NONE)}, **base))["F5"]
    assert f.verdict == NOT_TESTABLE and EI_PRETRAINED.name in f.note


C_HALF = [4] * (Q // 2) + [0] * (Q // 2)


@pytest.mark.parametrize("end, expected", [
    ((ALL, C_HALF), HOLDS),  # maj@1 still rises HALF -> ALL, pass@4 unchanged
    ((ALL, [4] * Q), CONTRADICTED),  # pass@4 rises 0.5 -> 1
    ((ALL, NOISY_C[0]), INCONCLUSIVE),  # pass@4 0 +- 0.15 against the middle's NOISY_C[1]
    ((HALF, C_HALF), NOT_TESTABLE),  # maj@1 stopped rising: the half says nothing about saturation
])
def test_f6_saturation_verdicts(end, expected):
    d = StudyData(k=4)
    mid = (HALF, NOISY_C[1] if end[1] is NOISY_C[0] else C_HALF)
    for run in (EI, PPO):
        _curves(d, run, {0: NONE, 2048: mid, 4096: end})
    assert findings(d)["F6"].verdict == expected


@pytest.mark.parametrize("ei, expected", [
    ((HALF, C_HALF), HOLDS),  # solves (any of 4) the questions SFT solves: 0 beyond
    ((HALF, [4] * Q), CONTRADICTED),  # half the questions beyond SFT
    ((HALF, C_HALF[:20] + [4] + [0] * 19), INCONCLUSIVE),  # 1 of 40 beyond: 0.025 [0, 0.075] straddles m
    ((NONE, [4] * Q), NOT_TESTABLE),  # did not learn
])
def test_f6_beyond_sft_verdicts(ei, expected):
    d = data_with(sft=(NONE, C_HALF), **{EI.name: two(ei)})
    f = findings(d)["F6"]
    assert f.verdict == expected
    assert any("that sft does not" in p.label for p in f.parts)


def test_a_verdict_that_changes_with_the_bootstrap_seed_is_inconclusive():
    from mathrl.stats import Interval, stable_verdict

    # raises, m = 0.02: lo = +0.001 holds, lo = -0.001 (the other bootstrap seed) is inconclusive -> inconclusive
    assert stable_verdict("raises", Interval(0.03, 0.001, 0.06), Interval(0.03, -0.001, 0.06), 0.02) == (
        INCONCLUSIVE, False)
    assert stable_verdict("raises", Interval(0.03, 0.001, 0.06), Interval(0.03, 0.002, 0.06), 0.02) == (HOLDS, True)


def _fake_run(root, stages):
    for s in stages:
        d = s.dir(root)
        d.mkdir(parents=True, exist_ok=True)
        # finished and current (the plan lists a stage after those it needs)
        stagecache.finish(d, ["mathrl", *s.command], 60.0, stagecache.inputs(s, root, {t.name: t for t in stages}))
        if s.group == "eval":
            good = ALL if s.run and s.run.algorithm == "EI" else HALF
            (d / "metrics.json").write_text(json.dumps({
                "k": 4, "maj@1": sum(good) / Q, "maj@1_verified": sum(good) / Q, "pass@4": 0.9, "pass@4_verified": 0.8,
                "maj@4": 0.5, "rerank@4": 0.4, "distinct_verified_solutions": 2.0, "distinct_answers": 3.0,
                "by_difficulty": {"1": {"n": 20, "maj@1": 0.5}, "2": {"n": 20, "maj@1": 0.4}}}))
            (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(good)))
        elif s.group == "rl":
            hist = [{"rollouts": r, "maj@1": 0.5, "reward": 0.4 + 0.1 * i, "kl": 0.1 * i, "completion_tokens": 30.0,
                     "entropy_estimate": 0.5, "distinct_verified_solutions": 1.5 + i, "good_fraction": 0.1}
                    for i, r in enumerate((0, 128, 256))]
            (d / "history.json").write_text(json.dumps(hist))
            with open(d / "eval_questions.jsonl", "w") as f:
                for r, g in ((0, HALF), (128, HALF), (256, ALL)):
                    f.write(json.dumps({"rollouts": r, "questions": rows(g)}) + "\n")
        elif s.base == "sft":
            with open(d / "dev_questions.jsonl", "w") as f:
                for e, g in ((1, HALF), (2, ALL)):
                    f.write(json.dumps({"epoch": e, "questions": rows(g)}) + "\n")
        elif s.group == "orm":
            (d / "report.json").write_text(json.dumps({"auc": 0.8, "n_train_samples": 40, "n_train_step_labelled": 40}))


def test_report_from_fabricated_runs(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    for key in ("F1", "F2a", "F2b", "F3", "F4", "F5", "F6"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- **{key} "))
        assert any(v in line for v in ("holds.", "contradicted.", "inconclusive.", "not testable.")), line
    assert "rule at_least, m = 0.02; 2 seed(s) x 40 questions" in md  # F1's parts: rule, margin, seeds
    assert "EI (sparse, from sft) - sft" in md and "[" in md.split("## Differences")[1]
    for section in ("## Power", "## Per difficulty", "## Budgets", "## Three test questions", "## Provenance",
                    "## Sample complexity", "did not learn",
                    "Room above maj@1", "Pretrained start on the same",
                    "Question-blind guesser", "## Reward models", "with rollout step labels"):
        assert section in md, section
    assert "torch " in md and "mathrl eval" in md  # versions and the stage commands
    assert page.count("data:image/png;base64,") >= 3 and "<table>" in page and "quick" in md
    assert "Room above maj@1" in page and "Pretrained start on the same" in page


def test_report_with_sizes_and_the_label_ratio_ablation(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True, seeds=2, sizes="tiny,small", ablation="label-ratio")
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    for key in ("F7", "F8"):
        line = next(ln for ln in md.splitlines() if ln.startswith(f"- **{key} "))
        assert any(v in line for v in ("holds.", "contradicted.", "inconclusive.", "not testable.")), line
    assert "ei-sparse-sft-small - ei-sparse-sft, distinct verified solutions per question (of 4)" in md
    assert "rcrl-balanced-pretrained - rcrl-sparse-pretrained, maj@1" in md and "natural good fraction 0.100" in md
    table = md.split("## Model sizes (F7)")[1].split("\n## ")[0]
    # the grid's SFT and each size's, then EI and PPO of each size, with the in-run dev curve of the fake
    # history (1.5, 2.5, 3.5 at 0, 128, 256 rollouts)
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and not ln.startswith("| model |")]
    assert [ln.split(" | ")[1] for ln in lines] == ["tiny", "small", "tiny", "small", "tiny", "small"]
    assert lines[2].endswith("| 1.500 | 2.500 | 3.500 |") and "SFT (small model)" in lines[1]
    assert "EI (sparse, from sft, small model)" in md and "RCRL balanced labels (sparse, from pretrained)" in md
    page = _Text()
    page.feed((tmp_path / "report.html").read_text())
    assert "Model sizes (F7)" in page.titles
    md_text = "\n".join(ln for ln in md.splitlines() if not ln.startswith("!["))
    assert NUMBER.findall(md_text) == NUMBER.findall("".join(page.text))  # the same numbers in both files


def test_the_intro_says_which_runs_have_fewer_seeds_than_planned(tmp_path):
    """The intro's seed counts are the plan's; where the test evaluations hold fewer (a study still running, an
    --only run), it names those runs and their counts, so that the plan is not read as the data."""
    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    assert "fewer than planned" not in md and "not evaluated on test" not in md  # every planned run has them all
    assert "RL seeds: 2 for EI/PPO/RCRL" in md and "1 for the reward variants" in md  # --quick's 1, not 0
    for s in stages:  # PPO's seed 1 and every RCRL evaluation were never run
        if s.name == "eval-ppo-sparse-sft@1" or s.name.startswith("eval-rcrl-sparse-sft@"):
            (s.dir(tmp_path) / "stage.json").unlink()
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    intro = (tmp_path / "report.md").read_text().split("\n## ")[0]
    assert "Seeds evaluated on test where fewer than planned: ppo-sparse-sft 1 of 2" in intro, intro
    assert "not evaluated on test: rcrl-sparse-sft." in intro, intro


def test_findings_not_run_say_which_flag_adds_them(tmp_path):
    from mathrl.report import not_measured

    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    # every fake stage took 1 minute: small costs 2.3x tiny's, so 2.3 x (pretrain 1 + SFT 1 + (eval-sft 1 + one
    # variant seed x (EI 1 + PPO 1 + their 2 evaluations)) / 2 workers) = 2.3 x 4.5 = 10.35 -> ~10 minutes
    assert "F7 larger models explore more diversely" in md and "not measured** run with --sizes tiny,small (adds ~10 minutes)." in md
    assert "not measured** run with --ablation label-ratio" in md
    assert not_measured("F7", Config(task="gsm8k", model="m"), StudyData()) == \
        "model sizes are the synthetic study's (--sizes)"


# F7 on constructed data: the grid's EI (tiny) and EI at small, each from its own SFT, which solves nothing
# greedily (so a run at HALF learned: +0.5 with lo > 0 over 40 questions); distinct = distinct verified solutions
# per question. Margin 1 solution: holds if lo > 0, contradicted if hi < 1
TWO, ONE, THREE = [2] * Q, [1] * Q, [3] * Q
# small - tiny per question: +4 on 20 questions, -3 on 20: mean +0.5, sd 3.5, standard error 3.5 / sqrt(40) =
# 0.553, so the interval is about [-0.6, +1.6]: it straddles both 0 and the margin
WIDE_SMALL, WIDE_TINY = [4] * 20 + [0] * 20, [0] * 20 + [3] * 20


@pytest.mark.parametrize("small, tiny, small_greedy, expected", [
    (THREE, ONE, HALF, HOLDS),  # +2 on every question: the interval is [+2, +2], lo > 0
    (TWO, TWO, HALF, CONTRADICTED),  # 0 on every question: [0, 0], any gain is below 1 (hi < m)
    (WIDE_SMALL, WIDE_TINY, HALF, INCONCLUSIVE),  # +0.5 [about -0.6, +1.6]
    (THREE, ONE, NONE, NOT_TESTABLE),  # the small model's EI did not learn over its SFT
])
def test_f7_verdicts(small, tiny, small_greedy, expected):
    from mathrl.grid import size_runs

    ei_small = size_runs("small")[0]
    d = StudyData(k=4)
    for name, greedy, distinct in (("sft", NONE, ONE), ("sft-small", NONE, ONE), (EI.name, HALF, tiny),
                                   (ei_small.name, small_greedy, small)):
        by_seed = {None: None} if name.startswith("sft") else {0: None, 1: None}
        records = {s: recs(greedy, n=4, distinct=distinct) for s in by_seed}
        d.evals[name] = Evaluation(records, {s: Metrics.of({"maj@1": 0.5, "k": 4}) for s in records})
        if name in BY_NAME:
            d.runs[name] = RunResults(BY_NAME[name])
    f = findings(d)["F7"]
    assert f.verdict == expected
    main = f.parts[-1]
    assert main.label == "ei-sparse-sft-small - ei-sparse-sft, distinct verified solutions per question (of 4)"
    assert main.rule == "raises" and main.margin == 1.0 and main.seeds == 2 and main.questions == Q
    if expected == HOLDS:
        assert (main.interval.estimate, main.interval.lo, main.interval.hi) == pytest.approx((2.0, 2.0, 2.0))
    if expected == INCONCLUSIVE:
        assert main.interval.estimate == pytest.approx(0.5) and main.interval.lo < 0 and main.interval.hi > 1
    if expected == NOT_TESTABLE:
        assert "ei-sparse-sft-small" in f.note and "did not learn" in f.note


def test_f7_is_not_measured_without_per_question_distinct_verified():
    # records of an earlier mathrl (no distinct_verified): not measured, never a crash
    from mathrl.grid import size_runs

    ei_small = size_runs("small")[0]
    old = [None] * Q
    d = data_with(sft=NONE, **{"sft-small": NONE})
    for name in (EI.name, ei_small.name):
        d.evals[name] = Evaluation({0: recs(HALF, distinct=old)}, {0: Metrics.of({"maj@1": 0.5, "k": 4})})
        d.runs[name] = RunResults(BY_NAME[name])
    assert "F7" not in findings(d)
    from mathrl.report import not_measured

    reason = not_measured("F7", Config(sizes="tiny,small"), d)
    assert "distinct_verified" in reason and "run their eval stages again" in reason


def test_f7_orders_each_pair_larger_minus_smaller():
    from mathrl.findings import size_pairs
    from mathrl.grid import size_runs

    d = StudyData(k=4)
    for run in (*size_runs("small"), *size_runs("tiny4")):
        d.runs[run.name] = RunResults(run)
    assert [(a.name, b.name) for a, b in size_pairs(d)] == [
        ("ei-sparse-sft-small", EI.name), ("ppo-sparse-sft-small", PPO.name),
        ("ei-sparse-sft-tiny4", EI.name), ("ppo-sparse-sft-tiny4", PPO.name)]
    d.grid_size = "small"  # --sizes small,tiny4: tiny4 is the smaller
    assert [(a.name, b.name) for a, b in size_pairs(d)][-1] == (PPO.name, "ppo-sparse-sft-tiny4")


def _f8_data(natural, balanced, good_fraction=(0.1, 0.1)):
    """The pretrained start solves nothing greedily; RCRL natural and balanced from it, two seeds each, the
    natural run's history with ``good_fraction`` per seed (None: not recorded)."""
    from mathrl.grid import RCRL_BALANCED, RCRL_PRETRAINED

    d = data_with(pretrain=NONE, **{RCRL_PRETRAINED.name: two(natural), RCRL_BALANCED.name: two(balanced)})
    d.runs[RCRL_PRETRAINED.name].history = {s: [{"round": 0, "rollouts": 0, "maj@1": 0.0}]
                                            + ([{"round": 1, "good_fraction": g}] if g is not None else [])
                                            for s, g in enumerate(good_fraction)}
    return d


@pytest.mark.parametrize("natural, balanced, expected", [
    (HALF, NONE, HOLDS),  # balanced - natural = -0.5 on every seed: hi < 0
    (HALF, HALF, CONTRADICTED),  # 0: lo = 0 > -m
    (NOISY_B, NOISY_A, INCONCLUSIVE),  # 0 +- 0.15 (natural learned: 15 of 40 over the start's 0)
    (NONE, NONE, NOT_TESTABLE),  # the natural run did not learn
])
def test_f8_verdicts(natural, balanced, expected):
    f = findings(_f8_data(natural, balanced))["F8"]
    assert f.verdict == expected
    main = f.parts[-1]
    assert main.label == "rcrl-balanced-pretrained - rcrl-sparse-pretrained, maj@1" and main.rule == "falls"
    assert "natural good fraction 0.100 (seed 0: 0.100, seed 1: 0.100): far from 1:1" in f.note
    if expected == HOLDS:
        assert main.interval.estimate == pytest.approx(-0.5) and main.interval.hi < 0


def test_f8_is_not_testable_near_an_even_natural_ratio_or_without_it():
    # seeds 0.30 and 0.44: mean 0.37, inside [0.35, 0.65]: balancing would hardly change the labels
    f = findings(_f8_data(HALF, NONE, (0.30, 0.44)))["F8"]
    assert f.verdict == NOT_TESTABLE and "0.370" in f.note and "within [0.35, 0.65]" in f.note
    # 0.30 and 0.38: mean 0.34, just outside: testable (holds, as above)
    assert findings(_f8_data(HALF, NONE, (0.30, 0.38)))["F8"].verdict == HOLDS
    f = findings(_f8_data(HALF, NONE, (None, None)))["F8"]
    assert f.verdict == NOT_TESTABLE and "recorded no good_fraction" in f.note
    # the balanced run has not run: not measured
    from mathrl.grid import RCRL_BALANCED

    d = _f8_data(HALF, NONE)
    del d.evals[RCRL_BALANCED.name]
    assert "F8" not in findings(d)


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
    d = data_with(**{GRPO.name: seeds(HALF, HALF), "grpo-dapo-sft": seeds(ALL, ALL), PPO.name: seeds(HALF, HALF)})
    cols, table = objectives_table(d)
    assert [r[0] for r in table] == ["GRPO loss as DAPO (sparse, from sft) - GRPO", "PPO (sparse, from sft) - GRPO"]
    assert table[0][1] == "2" and table[0][2].startswith("+0.500") and table[1][2].startswith("+0.000")
    assert objectives_table(data_with(sft=HALF))[1] == []  # no ablation runs: no table


class _Text(HTMLParser):
    """The visible text of report.html (no style, no embedded images), and its section titles."""

    def __init__(self):
        super().__init__()
        self.text, self.titles, self._in = [], [], None

    def handle_starttag(self, tag, attrs):
        self._in = tag
        self.text.append(" ")  # a tag separates words, as a line break does in markdown

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "style":
            return
        if self._in in ("h1", "h2"):
            self.titles.append(data)
        self.text.append(data)


NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def test_markdown_and_html_show_the_same_sections_and_numbers(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True, seeds=2)
    stages = plan(cfg, tmp_path)
    _fake_run(tmp_path, stages)
    write_report(tmp_path, cfg, stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    page = _Text()
    page.feed((tmp_path / "report.html").read_text())
    md_titles = [ln.lstrip("#").strip() for ln in md.splitlines() if re.match(r"#{1,2} ", ln)]
    assert md_titles == page.titles and len(md_titles) >= 12
    # every number, in order (the figures are files beside report.md and embedded in report.html)
    md_text = "\n".join(ln for ln in md.splitlines() if not ln.startswith("!["))
    md_numbers, html_numbers = NUMBER.findall(md_text), NUMBER.findall("".join(page.text))
    assert md_numbers == html_numbers and len(md_numbers) > 500
    # the text the two once disagreed on is in both
    for text in ("Question-blind guesser (samples the", "maj@1 is greedy; its interval", "Stage commands:"):
        assert text in md and text in "".join(page.text), text


def test_an_unmeasured_power_section_says_so_in_both_files():
    from mathrl.render import markdown, page
    from mathrl.report import _power

    section = [Section("Power", [_power(StudyData())])]
    assert "- not measured" in markdown(section) and "<li>not measured</li>" in page(section, "t")


# The paper's negative results (--ablation curriculum). Every run is compared with plain PPO / EI / continued SFT of
# the same seed; the plain run must have learned over SFT (NONE): at HALF it did (+0.5, lo > 0 over 40 questions)
@pytest.mark.parametrize("curriculum, plain, expected", [
    (HALF, HALF, HOLDS),  # no gain: 0, hi of [0, 0] < m
    (NONE, HALF, HOLDS),  # a curriculum that hurts (-0.5) also gives no gain
    (ALL, HALF, CONTRADICTED),  # +0.5: lo > m, a real gain
    (NOISY_A, NOISY_B, INCONCLUSIVE),  # 0 +- 0.15: hi > m, lo < m
    (HALF, NONE, NOT_TESTABLE),  # plain PPO did not learn
])
def test_n1_n2_a_curriculum_gives_ppo_no_gain(curriculum, plain, expected):
    from mathrl.grid import PPO_BACKTRACK, PPO_PLR

    d = data_with(sft=NONE, **{PPO_BACKTRACK.name: seeds(curriculum), PPO_PLR.name: seeds(curriculum),
                               PPO.name: seeds(plain)})
    found = findings(d)
    assert found["N1"].verdict == expected and found["N2"].verdict == expected


@pytest.mark.parametrize("with_pairs, without, expected", [
    (NONE, HALF, HOLDS),  # -0.5: hi < 0, the pairs lower maj@1
    (HALF, HALF, CONTRADICTED),  # 0: lo > -m, no fall
    (NOISY_A, NOISY_B, INCONCLUSIVE),  # 0 +- 0.15: hi > 0, lo < -m
    (NONE, NONE, NOT_TESTABLE),  # the run without pairs did not learn
])
def test_n3_backtranslated_data_lowers_maj1(with_pairs, without, expected):
    from mathrl.grid import EI_BACKTRANSLATED, SFT_MORE_BACKTRANSLATED

    d = data_with(sft=NONE, **{EI_BACKTRANSLATED.name: seeds(with_pairs), EI.name: seeds(without),
                               SFT_MORE_BACKTRANSLATED.name: seeds(with_pairs), SFT_MORE.name: seeds(without)})
    d.backtranslated = {"generated": 8, "kept": 3}
    assert findings(d)["N3"].verdict == expected
    # backtranslate kept no pair: the runs with pairs trained on the real data alone -> not testable
    d.backtranslated = {"generated": 8, "kept": 0}
    f = findings(d)["N3"]
    assert f.verdict == NOT_TESTABLE and "kept no pair" in f.note


def test_the_curriculum_claims_appear_only_when_the_ablation_ran(tmp_path):
    from mathrl.report import _finding_items

    items, _ = _finding_items(data_with(sft=NONE, **{PPO.name: seeds(HALF)}), Config())
    heads = [i.head for i in items.items]
    assert not any(h.startswith(("N1", "N2", "N3")) for h in heads)
    assert any(h.startswith("F4") and "not measured" in h for h in heads)  # the paper's grid says what is missing


def test_rerank_minus_maj_is_paired_within_a_model_and_an_orm_at_chance_is_explained():
    """rerank@K - maj@K of one model: the same K samples read two ways, paired on its questions. 40 questions,
    4 samples each, 2 right (the vote picks the right answer: 2 votes against 1 + 1): maj@4 = 1 on every one;
    the ORM's top score is on a right sample for the first 20 and a wrong one for the last 20, so rerank@4 is 1
    then 0: rerank@4 - maj@4 = (20 x 0 + 20 x -1) / 40 = -0.5."""
    from mathrl.findings import metric_difference
    from mathrl.report import _reward_models

    def row(i):
        good = i < Q // 2
        return {"id": f"q{i}", "n": 4, "c": 2, "c_verified": 2, "greedy_correct": True, "answer": "7",
                "answers": ["7", "7", "5", "6"], "correct": [True, True, False, False],
                "scores": [0.9, 0.1, 0.2, 0.3] if good else [0.1, 0.2, 0.9, 0.3]}

    # and 10 more questions answered greedily only (as the final evaluation's --k-problems leaves them)
    greedy_only = [Question.of({"id": f"g{i}", "greedy_correct": False, "answer": "1"}) for i in range(10)]
    records = [Question.of(row(i)) for i in range(Q)] + greedy_only
    assert [r.rerank for r in records[:2]] == [1.0, 1.0] and records[Q - 1].rerank == 0.0 and records[0].maj == 1.0
    assert records[-1].rerank is None  # not sampled
    d = StudyData(k=4)
    d.evals[SFT] = Evaluation({None: records}, {None: Metrics.of({"maj@1": 1.0, "k": 4})})
    got = metric_difference(d.evals[SFT].records, "rerank@4", "maj@4")
    assert got[0].estimate == pytest.approx(-0.5) and got[0].hi < 0 and got[1:] == (1, Q)
    # maj@1 covers the 50 questions, rerank@4 the 40 sampled: not a paired difference
    assert metric_difference(d.evals[SFT].records, "rerank@4", "maj@1") is None
    d.reward_models["orm"] = RewardModel(auc=0.8, auc_within_question=0.5)
    lines = [item.text for item in _reward_models(d)]
    assert any("about as well as chance" in x and "not testable" in x for x in lines)
    assert any(x.startswith("SFT") and "rerank@4 - maj@4 -0.500 [" in x and "no seed variance" in x for x in lines)
    d.reward_models["orm"] = RewardModel(auc=0.8, auc_within_question=0.75)  # ranks within a question: no caveat
    assert not any("about as well as chance" in item.text for item in _reward_models(d))
