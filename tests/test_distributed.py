"""Data parallelism under torchrun with 2 gloo processes on CPU: same results as one process, clear failures."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mathrl(args, ranks: int = 1, env=None, **kw):
    env = {**os.environ, "MATHRL_DIST_TIMEOUT": "60", **(env or {})}
    if ranks == 1:
        cmd = [sys.executable, "-m", "mathrl", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_addr",
               "127.0.0.1", "--master_port", str(_port()), "-m", "mathrl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.fixture(scope="module")
def tiny_orm_dir(tiny_model_dir, tmp_path_factory):
    """An untrained reward model on the tiny policy, its head seeded: a real, non-zero reward signal for PPO (the
    untrained policy never answers right, and with all-zero rewards PPO's whitened advantages would be rounding
    noise). A policy's own directory is refused as a reward model (its head would start at random)."""
    from mathrl.models import load_tokenizer
    from mathrl.reward_model import token_classifier

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-orm")
    token_classifier(tiny_model_dir).save_pretrained(out)
    load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


def _max_diff(a: Path, b: Path) -> float:
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max((x[k] - y[k]).abs().max().item() for k in x)


def test_sft_two_ranks_match_one_process(tiny_model_dir, tmp_path):
    # global batch 8 (each rank 4 rows, loss normalised by the whole batch's targets, gradients summed) must
    # give the parameters of one process with batch 8
    args = ["sft", "--model", str(tiny_model_dir), "--task", "synthetic", "--level", "2", "--train-size", "48",
            "--epochs", "1", "--batch-size", "8", "--eval-size", "0", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stdout.count("SFT model written") == 1  # rank 0 alone logs
    assert _max_diff(tmp_path / "one" / "model", tiny_model_dir) > 1e-4  # it trained
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5


def test_sharded_rollouts_match_one_process(tiny_model_dir, tmp_path):
    # each rank samples its share of the questions; the random stream is keyed by (seed, question, sample), so
    # the gathered completions are those of one process
    args = ["eval", "--model", str(tiny_model_dir), "-n", "7", "-k", "3", "--max-new-tokens", "24", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-2000:]
    rows = [[json.loads(ln) for ln in (tmp_path / d / "samples.jsonl").read_text().splitlines()] for d in ("one", "two")]
    assert len(rows[0]) == 7
    assert [(r["id"], r["greedy"], r["completions"]) for r in rows[0]] == \
           [(r["id"], r["greedy"], r["completions"]) for r in rows[1]]


def test_ei_round_two_ranks_match_one_process(tiny_model_dir, tmp_path):
    args = ["ei", "--model", str(tiny_model_dir), "--rounds", "1", "--questions", "16", "-k", "2", "--max-steps", "3",
            "--batch-size", "7", "--include-references", "--max-new-tokens", "24", "--eval-size", "0", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-2000:]
    states = [torch.load(sorted((tmp_path / d / "checkpoints").iterdir())[-1] / "state.pt", weights_only=False)
              for d in ("one", "two")]
    # an untrained model rarely answers right, so D_1 is mostly the references; the rollouts themselves are
    # compared in test_sharded_rollouts_match_one_process
    assert states[0]["dataset"] == states[1]["dataset"]
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5
    # the same round with the policy sharded by FSDP (retrained from the initial weights: this rank's shards)
    fsdp = _mathrl(args + ["--fsdp", "--out", str(tmp_path / "fsdp")], ranks=2)
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "fsdp" / "model") <= 1e-5


def test_missing_rank_ends_with_clear_error(tiny_model_dir, tmp_path):
    # a launch that announces 2 ranks but starts 1: one line, exit 1, after the timeout (no hang)
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port()),
           "MATHRL_DIST_TIMEOUT": "3"}
    t0 = time.time()
    r = _mathrl(["sft", "--model", str(tiny_model_dir), "--task", "synthetic", "--train-size", "16", "--eval-size", "0",
                 "--out", str(tmp_path / "x"), "--threads", "1"], env=env)
    assert r.returncode == 1 and time.time() - t0 < 60
    assert "could not join the 2 ranks" in r.stderr and "Traceback" not in r.stderr


def test_not_launched_by_torchrun(tiny_model_dir, tmp_path):
    r = _mathrl(["sft", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x")], env={"WORLD_SIZE": "2"})
    assert r.returncode == 2 and "launch with torchrun" in r.stderr


def test_dead_rank_ends_all_ranks(tiny_model_dir, tmp_path):
    args = ["sft", "--model", str(tiny_model_dir), "--task", "synthetic", "--train-size", "20000", "--epochs", "1",
            "--batch-size", "8", "--eval-size", "0", "--threads", "1", "--out", str(tmp_path / "x")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_port()), "-m", "mathrl", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = None
    deadline = time.time() + 120
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        for pid in Path("/proc").iterdir():
            try:
                environ = (pid / "environ").read_bytes().split(b"\0")
                cmdline = (pid / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if b"RANK=1" in environ and b"mathrl" in cmdline and str(tmp_path).encode() in cmdline:
                victim = int(pid.name)
    assert victim is not None, "rank 1 never started"
    time.sleep(3)  # let it get into training
    os.kill(victim, signal.SIGKILL)
    t0 = time.time()
    proc.wait(timeout=120)
    assert proc.returncode != 0 and time.time() - t0 < 60


def test_ppo_two_ranks_match_one_process(tiny_model_dir, tiny_orm_dir, tmp_path):
    # rollouts sharded and gathered; each minibatch split by rows, token means over the whole minibatch; the reward
    # is an untrained reward model's score (tiny_orm_dir)
    args = ["ppo", "--model", str(tiny_model_dir), "--reward", "orm", "--orm", str(tiny_orm_dir),
            "--iterations", "2", "--prompts", "6", "-k", "2",
            "--max-new-tokens", "16", "--eval-size", "0", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-2000:]
    assert _max_diff(tmp_path / "one" / "model", tiny_model_dir) > 1e-6  # it learned something
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5


def test_fsdp_sft_matches_one_process_and_resumes(tiny_model_dir, tmp_path):
    # FSDP shards parameters, gradients and optimizer state; the update must still be one process's. Batch 7 over
    # 2 ranks gives rank 1 a row less (it runs a blank row so both ranks run as many forward passes), and the dev
    # evaluation samples different questions per rank (the model is gathered for sampling)
    args = ["sft", "--model", str(tiny_model_dir), "--task", "synthetic", "--level", "2", "--train-size", "45",
            "--epochs", "2", "--batch-size", "7", "--eval-size", "3", "--eval-k", "2", "--max-new-tokens", "16",
            "--checkpoint-every", "5", "--log-every", "1", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--fsdp", "--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-2000:]
    assert _max_diff(tmp_path / "one" / "model", tiny_model_dir) > 1e-4
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5
    # the logged gradient norm is the global one (summed over the shards), not rank 0's share
    norms = [[json.loads(line)["grad_norm"] for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
              if "grad_norm" in line] for d in ("one", "two")]
    assert len(norms[0]) == 14 and norms[0] == pytest.approx(norms[1], rel=1e-4)
    # the checkpoints hold full tensors (written by rank 0): resume at step 10 under FSDP, and on one process
    for name, ranks, extra in (("resumed-fsdp", 2, ["--fsdp"]), ("resumed-one", 1, [])):
        run = tmp_path / name
        shutil.copytree(tmp_path / "two", run)
        shutil.rmtree(run / "model")
        shutil.rmtree(run / "checkpoints" / "step-0000014")
        r = _mathrl(args + extra + ["--resume", "--out", str(run)], ranks=ranks)
        assert r.returncode == 0 and "resumed" in r.stdout, r.stderr[-2000:]
        assert _max_diff(run / "model", tmp_path / "two" / "model") <= 1e-6


def test_fsdp_ppo_matches_one_process(tiny_model_dir, tiny_orm_dir, tmp_path):
    # PPO under FSDP: policy and reference sharded, value head whole; minibatches of 5 rollouts in micro-batches of
    # 2 give the ranks different numbers of passes, which the shorter rank pads with zero-weight passes
    args = ["ppo", "--model", str(tiny_model_dir), "--reward", "orm", "--orm", str(tiny_orm_dir),
            "--iterations", "2", "--prompts", "6", "-k", "2", "--batch-size", "5", "--micro-batch-size", "2",
            "--max-new-tokens", "16", "--eval-size", "2", "--eval-k", "2", "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    two = _mathrl(args + ["--fsdp", "--out", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-2000:]
    assert _max_diff(tmp_path / "one" / "model", tiny_model_dir) > 1e-6
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5
    assert "returned a view tensor" not in two.stderr


def test_fsdp_with_lora_is_refused(tiny_model_dir, tmp_path):
    r = _mathrl(["ppo", "--model", str(tiny_model_dir), "--fsdp", "--lora-rank", "4", "--out", str(tmp_path / "x")])
    assert r.returncode == 2 and "--fsdp with --lora-rank" in r.stderr and "Traceback" not in r.stderr


def test_the_studys_data_parallel_pretrain_matches_one_process(tmp_path):
    # the study pretrains as one 1-thread rank per core (study._launch with ranks=2); its model must be the one a
    # single process trains, to float rounding (each rank forwards half of every batch, the gradients are summed)
    from mathrl.study import _launch

    args = ["pretrain", "--steps", "4", "--batch-size", "4", "--seq-len", "48", "--checkpoint-every", "4",
            "--threads", "1"]
    one = _mathrl(args + ["--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-2000:]
    log = tmp_path / "two.log"
    assert _launch(args + ["--out", str(tmp_path / "two")], log, ranks=2) == 0, log.read_text()[-2000:]
    assert log.read_text().count("pretrained model written") == 1  # rank 0 alone logs
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "one" / "init") > 1e-4  # it trained
    assert _max_diff(tmp_path / "one" / "model", tmp_path / "two" / "model") <= 1e-5


def _sum_mixed_dtype_grads(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from mathrl.distributed import all_reduce_grads

    # a bf16 policy weight and a float32 value head (PPO's mix); rank r's gradients are r + 1, and the head of rank
    # 1 has none (counts as zeros): by hand, the sums are 1 + 2 = 3 (bf16 holds 3 exactly) and 1 + 0 = 1
    policy = torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))
    head = torch.nn.Parameter(torch.zeros(2))
    policy.grad = torch.full((3,), rank + 1.0, dtype=torch.bfloat16)
    head.grad = torch.ones(2) if rank == 0 else None
    all_reduce_grads([policy, head])
    torch.save({"policy": policy.grad, "head": head.grad}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_gradients_of_mixed_dtypes_are_summed_in_their_own_dtype(tmp_path):
    # a bf16 policy with a float32 value head under torchrun: one flat buffer of both came back as float32, which
    # the bf16 parameter's .grad refused (the run crashed at its first step)
    torch.multiprocessing.spawn(_sum_mixed_dtype_grads, args=(_port(), str(tmp_path)), nprocs=2)
    for r in (0, 1):
        g = torch.load(tmp_path / f"rank{r}.pt")
        assert g["policy"].dtype == torch.bfloat16 and g["policy"].tolist() == [3.0, 3.0, 3.0]
        assert g["head"].dtype == torch.float32 and g["head"].tolist() == [1.0, 1.0]
