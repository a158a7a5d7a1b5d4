"""Checkpoints: atomic writes, integrity checks on load, disk-full and unwritable output directories."""

import errno
import sys

import pytest
import torch

from mathrl import checkpoint as ckpt
from mathrl.cli import main
from mathrl.errors import RunError
from mathrl.models import load_model


@pytest.fixture()
def model_and_tokenizer(tiny_model_dir):
    return load_model(tiny_model_dir, device="cpu")


def _save(run_dir, step, model, tokenizer):
    return ckpt.save_checkpoint(run_dir, step, model, tokenizer, {"step": step})


def test_corrupted_latest_checkpoint_falls_back_to_previous(model_and_tokenizer, tmp_path, capsys):
    model, tok = model_and_tokenizer
    _save(tmp_path, 1, model, tok)
    latest = _save(tmp_path, 2, model, tok)
    assert ckpt.latest_checkpoint(tmp_path) == latest
    weights = next((latest / "model").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights: same size, wrong checksum
    weights.write_bytes(bytes(data))
    assert ckpt.latest_checkpoint(tmp_path).name == "step-0000001"
    assert "corrupted (checksum mismatch)" in capsys.readouterr().err
    assert ckpt.load_state(ckpt.latest_checkpoint(tmp_path, quiet=True))["step"] == 1


def test_partial_checkpoint_is_skipped(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    _save(tmp_path, 1, model, tok)
    second = _save(tmp_path, 2, model, tok)
    (second / "manifest.json").unlink()  # as if the process died before the manifest was written
    assert ckpt.latest_checkpoint(tmp_path, quiet=True).name == "step-0000001"
    truncated = _save(tmp_path, 3, model, tok)
    state = truncated / "state.pt"
    state.write_bytes(state.read_bytes()[:10])
    assert ckpt.verify_checkpoint(truncated) == "state.pt has the wrong size"
    assert ckpt.latest_checkpoint(tmp_path, quiet=True).name == "step-0000001"


def test_disk_full_keeps_the_last_good_checkpoint(model_and_tokenizer, tmp_path, monkeypatch):
    model, tok = model_and_tokenizer
    good = _save(tmp_path, 1, model, tok)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(RunError) as e:
        _save(tmp_path, 2, model, tok)
    msg = str(e.value)
    assert "No space left on device" in msg and str(good) in msg and "\n" not in msg
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000001"]  # no half-written step-2
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert ckpt.verify_checkpoint(good) is None


def test_disk_full_while_writing_the_model_keeps_the_old_one(model_and_tokenizer, tmp_path, monkeypatch):
    model, tok = model_and_tokenizer
    out = tmp_path / "model"
    ckpt.save_model_dir(model, tok, out)
    before = sorted(p.name for p in out.iterdir())

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(tok), "save_pretrained", full_disk)
    with pytest.raises(RunError, match="No space left on device"):
        ckpt.save_model_dir(model, tok, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert load_model(out, device="cpu")[0] is not None


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc, which no one can write")
def test_unwritable_output_directory_is_one_line_and_exit_2(tiny_model_dir, capsys):
    assert main(["sft", "--model", str(tiny_model_dir), "--out", "/proc/mathrl-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write to /proc/mathrl-run") and "\n" not in err


def test_model_record_reads_older_files_and_writes_only_what_is_set(tmp_path):
    import json

    from mathrl.record import ModelRecord, read_record
    from mathrl.runsetup import write_record

    # an older mathrl's record: a level before the level scheme, no exemplars, a key this one does not know
    old = {"task": {"name": "synthetic", "level": 1}, "stage": "sft", "shots": 0, "base": "scratch", "epochs": 3}
    (tmp_path / "mathrl.json").write_text(json.dumps(old))
    (tmp_path / "config.json").write_text("{}")
    record = read_record(tmp_path)
    assert record == ModelRecord(task={"name": "synthetic", "level": 1}, stage="sft", shots=0, base="scratch")
    assert record.exemplars == "" and record.prompting == {} and record.condition is None
    # models.init_model's record names the task alone
    assert ModelRecord.from_dict({"task": "gsm8k", "size": "tiny", "seed": 0}).task == {"name": "gsm8k"}
    # none, or not a JSON object: an empty record
    assert read_record(tmp_path / "nowhere") == ModelRecord() and read_record(None) == ModelRecord()
    (tmp_path / "mathrl.json").write_text("[1, 2]")
    assert read_record(tmp_path) == ModelRecord()
    # written back: task, stage and shots always, the rest only where set
    write_record(tmp_path, ModelRecord(task={"name": "gsm8k", "extract": "strict"}, stage="ei", shots=2,
                                       exemplars="wei2022"))
    assert json.loads((tmp_path / "mathrl.json").read_text()) == {
        "task": {"name": "gsm8k", "extract": "strict"}, "stage": "ei", "shots": 2, "exemplars": "wei2022"}
    assert read_record(tmp_path).exemplars == "wei2022"
