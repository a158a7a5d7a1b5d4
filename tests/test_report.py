"""The study report on fabricated stage outputs: table, findings with their numbers, self-contained HTML."""

import json

from mathrl.report import findings, write_report
from mathrl.study import Config, plan


def _fake_run(root, seed, stages, maj1):
    seed_root = root / f"seed-{seed}"
    for s in stages:
        d = seed_root / s.name
        d.mkdir(parents=True, exist_ok=True)
        (d / "stage.json").write_text(json.dumps({"seconds": 60.0}))
        if s.group == "eval":
            m = maj1[s.meta["model"]]
            (d / "metrics.json").write_text(json.dumps({"k": 16, "maj@1": m, "maj@16": m + 0.05, "pass@16": m + 0.3,
                                                        "rerank@16": m + 0.1, "distinct_solutions": 5.0}))
        elif s.group == "rl":
            base = maj1["sft"] if s.meta["start"] == "sft" else maj1["pretrain"]
            hist = [{"rollouts": r, "maj@1": base + (maj1[s.name] - base) * f, "pass@16": 0.7 + 0.05 * f,
                     "distinct_solutions": 6 - f} for r, f in ((0, 0.0), (1000, 0.95), (2000, 1.0))]
            (d / "history.json").write_text(json.dumps(hist))
        elif s.name == "sft":
            rows = [{"step": e, "epoch": e, "dev/maj@1": 0.2 + 0.1 * e, "dev/pass@16": 0.8 - 0.05 * e} for e in (1, 2, 3)]
            (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif s.group == "orm":
            (d / "report.json").write_text(json.dumps({"auc": 0.8, "total_seconds": 90}))


def test_report_from_fabricated_runs(tmp_path):
    cfg = Config(out=str(tmp_path), quick=True)
    maj1 = {"pretrain": 0.05, "sft": 0.40, "ei-sparse-sft": 0.50, "ei-orm-sft": 0.51, "ppo-sparse-sft": 0.45,
            "ppo-dense-sft": 0.46, "ppo-orm-sft": 0.44, "grpo-sparse-sft": 0.47, "rcrl-sparse-sft": 0.41,
            "rcrl-dense-sft": 0.40, "ei-sparse-pretrained": 0.30, "ppo-sparse-pretrained": 0.2}
    all_stages = {}
    for seed in range(2):
        stages = plan(cfg, seed, tmp_path / f"seed-{seed}")
        all_stages[seed] = stages
        _fake_run(tmp_path, seed, stages, maj1)
    write_report(tmp_path, cfg, all_stages, wall_seconds=600)
    md = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "| EI (sparse, from sft) | 0.500 ± 0.000 |" in md  # same numbers in both seeds: the spread is still shown
    for f in ("F1", "F2", "F3", "F4", "F5", "F6"):
        assert f"**{f} " in md and "not measured" not in md.split(f"**{f} ")[1].split("\n")[0]
    assert "F1 EI >= PPO >= RCRL on maj@1 (from SFT, sparse reward): holds" in md
    # dense/ORM rewards add at most 0.01 here -> F4 holds; SFT epochs trade maj@1 for pass@K -> F2 holds
    assert "F4 dense and ORM rewards add little over sparse: holds" in md
    assert "F2 RL raises maj@1 and pass@K together, while longer SFT trades them: holds" in md
    # the gap: SFT - pretrained 0.35 before RL, EI 0.50 - 0.30 = 0.20 after -> narrows
    assert "0.350 before RL, 0.200 after EI" in md
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html


def test_findings_report_failures_honestly():
    data = {"evals": {"ei-sparse-sft": [{"maj@1": 0.3, "k": 4}], "ppo-sparse-sft": [{"maj@1": 0.4, "k": 4}],
                      "rcrl-sparse-sft": [{"maj@1": 0.35, "k": 4}]},
            "histories": {}, "sft_epochs": {}, "times": {}, "meta": {}, "orm": {}}
    f = findings(data)
    assert f["F1"][0] is False and "EI 0.300, PPO 0.400, RCRL 0.350" in f["F1"][1]
    assert "F5" not in f
