"""Kill-and-resume: a run killed (SIGKILL) after a checkpoint and resumed ends exactly like an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file


def _run(args, env=None):
    return subprocess.run([sys.executable, "-m", "mathrl", *args], capture_output=True, text=True, env=env)


def _weights(model_dir: Path) -> dict:
    return load_file(str(next(Path(model_dir).glob("*.safetensors"))))


def _kill_after_checkpoint(args, run_dir: Path, n_checkpoints: int = 1, timeout: float = 300) -> None:
    """Start a run, SIGKILL it once it has written ``n_checkpoints`` checkpoints (or let it finish)."""
    env = dict(os.environ, MATHRL_PROGRESS="0")
    proc = subprocess.Popen([sys.executable, "-m", "mathrl", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    start = time.time()
    ckpts = run_dir / "checkpoints"
    while proc.poll() is None and time.time() - start < timeout:
        done = [p for p in ckpts.glob("step-*")] if ckpts.is_dir() else []
        if len(done) >= n_checkpoints:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "init"
    r = _run(["model", "init", "--out", str(out), "--size", "tiny", "--level", "2"])
    assert r.returncode == 0, r.stderr
    return out


SFT = ["--epochs", "2", "--train-size", "48", "--batch-size", "8", "--eval-size", "2", "--eval-k", "2",
       "--max-new-tokens", "8", "--checkpoint-every", "2", "--threads", "1", "--level", "2"]


def test_sft_resume_equals_uninterrupted(base_model, tmp_path):
    full = tmp_path / "full"
    r = _run(["sft", "--model", str(base_model), "--out", str(full), *SFT])
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    _kill_after_checkpoint(["sft", "--model", str(base_model), "--out", str(killed), *SFT], killed)
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    r = _run(["sft", "--model", str(base_model), "--out", str(killed), "--resume", *SFT])
    assert r.returncode == 0, r.stderr
    assert_same_weights(full / "model", killed / "model")


def test_rerun_without_resume_is_refused(base_model, tmp_path):
    out = tmp_path / "run"
    assert _run(["sft", "--model", str(base_model), "--out", str(out), *SFT]).returncode == 0
    r = _run(["sft", "--model", str(base_model), "--out", str(out), *SFT])
    assert r.returncode == 2 and "--resume" in r.stderr


EI = ["--rounds", "2", "--questions", "6", "-k", "2", "--max-new-tokens", "10", "--include-references",
      "--eval-size", "2", "--eval-k", "2", "--patience", "0", "--checkpoint-every", "1", "--threads", "1",
      "--level", "2", "--task", "synthetic"]
PPO = ["--iterations", "3", "--prompts", "4", "-k", "2", "--batch-size", "4", "--max-new-tokens", "10",
       "--eval-size", "2", "--eval-k", "2", "--checkpoint-every", "1", "--threads", "1", "--level", "2",
       "--task", "synthetic"]
RCRL = ["--rounds", "2", "--questions", "6", "-k", "2", "--max-new-tokens", "10", "--eval-size", "2",
        "--eval-k", "2", "--checkpoint-every", "1", "--threads", "1", "--level", "2", "--task", "synthetic"]


@pytest.mark.parametrize("command,args,kill_after", [
    (["ei"], EI, 2), (["ppo"], PPO, 1), (["grpo"], PPO, 2), (["rcrl"], RCRL, 2),
])
def test_rl_resume_equals_uninterrupted(base_model, tmp_path, command, args, kill_after):
    full = tmp_path / "full"
    r = _run([*command, "--model", str(base_model), "--out", str(full), *args])
    assert r.returncode == 0, r.stderr
    killed = tmp_path / "killed"
    _kill_after_checkpoint([*command, "--model", str(base_model), "--out", str(killed), *args], killed,
                           n_checkpoints=kill_after)
    assert not (killed / "model").exists(), "the run finished before it could be killed"
    r = _run([*command, "--model", str(base_model), "--out", str(killed), "--resume", *args])
    assert r.returncode == 0, r.stderr
    assert_same_weights(full / "model", killed / "model")
    h_full = json.loads((full / "history.json").read_text())
    h_killed = json.loads((killed / "history.json").read_text())
    strip = lambda hs: [{k: v for k, v in h.items() if "seconds" not in k} for h in hs]  # noqa: E731
    assert strip(h_full) == strip(h_killed)


@pytest.mark.slow
@pytest.mark.parametrize("command,args", [(["sft"], SFT), (["ei"], EI), (["ppo"], PPO), (["rcrl"], RCRL)])
def test_random_kill_points(base_model, tmp_path, command, args):
    """SIGKILL at 5 random moments of a run (not only right after a checkpoint), resume: the same final weights
    and history as the uninterrupted run. Outside CI (pytest -m slow): about a minute per command."""
    import random

    full = tmp_path / "full"
    t0 = time.time()
    r = _run([*command, "--model", str(base_model), "--out", str(full), *args])
    duration = time.time() - t0
    assert r.returncode == 0, r.stderr
    rng = random.Random(f"kill/{command[0]}")
    killed_mid_run = 0
    for i in range(5):
        run = tmp_path / f"killed-{i}"
        at = rng.uniform(0.05, 0.95) * duration
        env = dict(os.environ, MATHRL_PROGRESS="0")
        proc = subprocess.Popen([sys.executable, "-m", "mathrl", *command, "--model", str(base_model), "--out",
                                 str(run), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.wait(timeout=at)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if (run / "model").exists():
            continue  # it finished first
        killed_mid_run += 1
        resume = ["--resume"] if run.exists() else []  # killed before it even created its directory
        r = _run([*command, "--model", str(base_model), "--out", str(run), *resume, *args])
        assert r.returncode == 0, r.stderr
        assert_same_weights(full / "model", run / "model")
        if command != ["sft"]:
            strip = lambda hs: [{k: v for k, v in h.items() if "seconds" not in k} for h in hs]  # noqa: E731
            assert strip(json.loads((full / "history.json").read_text())) == \
                   strip(json.loads((run / "history.json").read_text()))
    assert killed_mid_run >= 3
