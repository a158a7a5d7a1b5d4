"""benchmarks/stage_rates.py: the windowed rate and the longest slow stretch, on hand-made logs."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "stage_rates.py"
_spec = importlib.util.spec_from_file_location("stage_rates", _PATH)
stage_rates = importlib.util.module_from_spec(_spec)
sys.modules["stage_rates"] = stage_rates  # the dataclass reads its module while it is created
_spec.loader.exec_module(stage_rates)


def _steps(rates):
    """metrics records of a step-logged stage: one record every 10 s of its clock, at ``rate`` steps/s each."""
    records, step, t = [{"step": 0, "time": 0.0, "loss": 1.0}], 0, 0.0
    for rate in rates:
        step, t = step + int(10 * rate), t + 10.0
        records.append({"step": step, "time": t, "loss": 1.0})
    return records


def test_a_stage_that_slows_for_thirty_seconds_then_recovers():
    # 10 steps/s for 60 s, 5 steps/s for 30 s, 10 steps/s for 60 s; windows of 20 s.
    # first window: 10. Windows ending at 70 s (60-70: 5, 50-60: 10) -> 7.5; 80 s -> 5; 90 s -> 5; 100 s -> 7.5;
    # 110 s -> 10. Below 0.8 x 10 = 8 at the ends 70..100: the stretch runs from 60 s (the last window at 10) to
    # 100 s = 40 s.
    unit, segs = stage_rates.segments(_steps([10] * 6 + [5] * 3 + [10] * 6))
    assert unit == "steps/s"
    assert stage_rates.first_window(segs, 20) == pytest.approx(10)
    series = stage_rates.windowed(segs, 20)
    assert dict(series)[70.0] == pytest.approx(7.5) and dict(series)[80.0] == pytest.approx(5)
    assert stage_rates.longest_below(series, 8) == pytest.approx(40)
    assert stage_rates.longest_below(series, 4) == 0


def test_ppo_and_ei_rates_read_their_own_seconds():
    ppo = [{"step": 0, "time": 5, "iteration": 0, "rollouts": 0, "maj@1": 0.5},
           {"step": 1, "time": 9, "rollouts": 256, "iteration_seconds": 4.0},
           {"step": 2, "time": 30, "rollouts": 512, "iteration_seconds": 2.0, "maj@1": 0.6}]  # 19 s of evaluation
    unit, segs = stage_rates.segments(ppo)
    # 256 rollouts in 4 s, then 256 in 2 s: the evaluation's time is not counted
    assert unit == "rollouts/s" and [(s.seconds, s.work) for s in segs] == [(4.0, 256), (2.0, 256)]
    ei = [{"step": 1, "time": 50, "round": 1, "train_steps": 30, "train_seconds": 6.0, "sample_seconds": 4.0}]
    unit, segs = stage_rates.segments(ei)
    assert unit == "fine-tuning steps/s" and segs[0].work / segs[0].seconds == pytest.approx(5)
    assert stage_rates.segments([{"step": 0, "time": 1, "round": 0, "maj@1": 0.5}]) == ("", [])
    # with fine_tune.jsonl (EI, RCRL): between its lines within a round; the gap between rounds is not fine-tuning
    lines = [{"round": 1, "step": 20, "time": 100.0}, {"round": 1, "step": 40, "time": 104.0},
             {"round": 1, "step": 50, "time": 106.0}, {"round": 2, "step": 20, "time": 130.0},
             {"round": 2, "step": 40, "time": 134.0}]
    unit, segs = stage_rates.segments(ei, lines)
    # 20 steps in 4 s, 10 in 2 s, then round 2's 20 in 4 s, at 4, 6 and 34 s after the first line
    assert [(s.end, s.seconds, s.work) for s in segs] == [(4.0, 4.0, 20), (6.0, 2.0, 10), (34.0, 4.0, 20)]


def test_the_script_reads_a_study_directory(tmp_path, capsys, monkeypatch):
    stage = tmp_path / "shared" / "pretrain"
    stage.mkdir(parents=True)
    (stage / "stage.json").write_text(json.dumps({"seconds": 150.0}))
    (stage / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in _steps([10] * 6 + [5] * 3 + [10] * 6)))
    monkeypatch.setattr("sys.argv", ["stage_rates.py", str(tmp_path), "--window", "20"])
    stage_rates.main()
    out = capsys.readouterr().out
    assert "| shared/pretrain | 150 | steps/s | 10 | 10 | 5 | 40 |" in out
    assert "longest_stretch_below=40" in out
