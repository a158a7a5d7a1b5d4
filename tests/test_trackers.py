"""--report-to: Weights & Biases (offline mode) and trackio (its local SQLite store) get the same metrics as
metrics.jsonl, and the run's config and provenance; nothing reaches the network."""

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mathrl.cli import main
from mathrl.errors import UsageError
from mathrl.settings import parse_report_to

ROOT = Path(__file__).resolve().parents[1]


def test_report_to_names_trackers_or_none():
    assert parse_report_to("tensorboard") == ("tensorboard",)
    assert parse_report_to("wandb, trackio,wandb") == ("wandb", "trackio")
    assert parse_report_to("none") == ()
    for bad, message in (("tensorbord", "unknown tracker 'tensorbord'"), ("none,wandb", "or none alone"),
                         ("", "or none alone")):
        with pytest.raises(UsageError, match=message):
            parse_report_to(bad)


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else find_spec(name, *a))
    assert main(["sft", "--out", "x", "--report-to", "tensorboard,trackio"]) == 2
    assert capsys.readouterr().err.strip() == ('error: --report-to trackio needs the trackio package: '
                                               'pip install "mathrl[trackio]"')


def test_eval_refuses_report_to(tiny_model_dir, capsys):
    assert main(["eval", "--model", str(tiny_model_dir), "--report-to", "wandb"]) == 2
    assert "--report-to has no effect on mathrl eval" in capsys.readouterr().err


def read_wandb_file(path: Path) -> list:
    """The records of a W&B run file (``run-ID.wandb``): LevelDB's log format (a 7-byte W&B header, then 32 KiB
    blocks of chunks, each with a 7-byte header: crc32, length, type 1 full / 2 first / 3 middle / 4 last), each
    record a ``wandb_internal_pb2.Record``. Read here, as W&B's own Python no longer ships a reader."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def key_of(item) -> str:
    """A history or config item's name (W&B writes it as ``key`` or as the parts of ``nested_key``)."""
    return item.key or "/".join(item.nested_key)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in
                                        ((a[k], b[k]) for k in a))


def tracked(record: dict) -> dict:
    """What a tracker gets of a metrics.jsonl record: its numbers, not step (the tracker's step) nor time."""
    return {k: v for k, v in record.items() if k not in ("step", "time") and isinstance(v, (int, float))}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """A short SFT run logging to tensorboard, W&B (offline) and trackio (a local store in tmp), in a fresh
    process: trackio reads TRACKIO_DIR when it is imported."""
    tmp = tmp_path_factory.mktemp("trackers")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "TRACKIO_"))}
    env.update(PYTHONPATH=str(ROOT / "src"), WANDB_MODE="offline", WANDB_SILENT="true",
               WANDB_CONFIG_DIR=str(tmp / "wandb-config"), WANDB_CACHE_DIR=str(tmp / "wandb-cache"),
               WANDB_DATA_DIR=str(tmp / "wandb-data"), TRACKIO_DIR=str(tmp / "trackio"),
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    run = tmp / "sft"
    cmd = [sys.executable, "-m", "mathrl", "sft", "--out", str(run), "--epochs", "2", "--train-size", "16",
           "--batch-size", "8", "--eval-size", "2", "--eval-k", "1", "--max-new-tokens", "8", "--threads", "1",
           "--log-every", "1", "--report-to", "tensorboard,wandb,trackio"]
    proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"run": run, "env": env, "records": records}


def test_wandb_offline_run_has_the_metrics_of_metrics_jsonl(tracked_run):
    run, records = tracked_run["run"], tracked_run["records"]
    assert len(records) == 6  # 4 steps, and the dev evaluation after each of the 2 epochs
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))  # RUN/wandb: no WANDB_DIR given
    assert len(files) == 1
    history, configs = {}, []
    for r in read_wandb_file(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            row = {key_of(item): json.loads(item.value_json) for item in r.history.item}
            history[row.pop("_step")] = {k: v for k, v in row.items() if not k.startswith("_")}
        elif kind == "run":
            configs.append({key_of(item): json.loads(item.value_json) for item in r.run.config.update})
    # W&B keeps one row per step: two logs at one step (SFT's training line, then its dev evaluation) merge
    expected = {}
    for record in records:
        expected.setdefault(record["step"], {}).update(tracked(record))
    assert history.keys() == expected.keys() == {1, 2, 3, 4}
    for step in expected:
        assert same(history[step], expected[step]), step
    assert "dev/maj@1" in history[2] and "loss" in history[2]
    # config and provenance, once, at the start
    assert len(configs) == 1
    assert configs[0]["report_to"] == "tensorboard,wandb,trackio" and configs[0]["epochs"] == 2
    assert "torch" in configs[0]["provenance"] and "sft" in configs[0]["provenance"]["command"]
    assert json.loads((run / "trackers.json").read_text())["wandb"] == files[0].stem.removeprefix("run-")
    assert list((run / "tb").glob("events.out.tfevents.*"))  # tensorboard as before


def test_trackio_local_run_has_the_metrics_of_metrics_jsonl(tracked_run):
    # read back through trackio's own storage API, in a process that imports it with the run's TRACKIO_DIR
    reader = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; "
              "print(json.dumps({'logs': S.get_logs('mathrl', 'sft'), 'config': S.get_run_config('mathrl', 'sft')}))")
    proc = subprocess.run([sys.executable, "-c", reader], env=tracked_run["env"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = json.loads(proc.stdout.strip().splitlines()[-1])
    logs, records = stored["logs"], tracked_run["records"]
    assert [row["step"] for row in logs] == [r["step"] for r in records]  # one row per log, as metrics.jsonl
    for row, record in zip(logs, records):
        assert same({k: v for k, v in row.items() if k not in ("step", "timestamp")}, tracked(record))
    assert stored["config"]["report_to"] == "tensorboard,wandb,trackio"
    assert "transformers" in stored["config"]["provenance"]
