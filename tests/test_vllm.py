"""--engine vllm, with vLLM installed (marker ``vllm``, deselected by default). In the extra's environment
(docs/engines.md):

    python -m pytest -m vllm tests/test_vllm.py

Without vLLM each of these tests fails (the fixture below imports it), on purpose: they never skip. Deselected (the
default), the file is collected without importing vLLM.

The model is the embedded default (0.7M parameters), fine-tuned briefly so that completions end with EOS and stop
strings as a trained model's do.
"""

import dataclasses
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

from mathrl import engines
from mathrl.cli import main
from mathrl.models import load_model
from mathrl.sampler import SamplingParams, sample
from mathrl.settings import Sampling
from mathrl.tasks import load_task
from mathrl.rollouts import forward_policy, pack_rollouts

pytestmark = pytest.mark.vllm


@pytest.fixture(autouse=True, scope="module")
def vllm_installed():
    import vllm  # noqa: F401 - the tests need the extra: an ImportError here fails them loudly

LOGPROB_TOL = 1e-4  # float32 on CPU: measured max |difference| 5.5e-6 over 100 greedy completions
SMALL = ["--threads", "1", "--device", "cpu", "--token-budget", "8192", "--level", "2"]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("vllm") / "sft"
    assert main(["sft", "--out", str(out), "--train-size", "1000", "--epochs", "2", "--eval-size", "0",
                 "--threads", "1", "--device", "cpu", "--level", "2"]) == 0
    return out / "model"


@pytest.fixture(scope="module")
def task():
    return load_task("synthetic", level=2)


def _engine_policy(model_dir):
    model, tok = load_model(model_dir, device="cpu")
    engine = engines.create(model, Sampling(engine="vllm", token_budget=8192), str(model_dir))
    return model, tok, engine


def test_greedy_completions_equal_mathrls(sft_model, task):
    model, tok, engine = _engine_policy(sft_model)
    prompts = [task.prompt(p) for p in task.problems("test")[:100]]
    params = SamplingParams(temperature=0.0, max_new_tokens=96, stop_strings=task.stop_strings)
    ours = sample(model, tok, prompts, 1, params)
    theirs = engine.sample(model, tok, prompts, 1, params)
    same = [a for a, b in zip(ours, theirs) if (a.completion_ids, a.text, a.finish_reason)
            == (b.completion_ids, b.text, b.finish_reason)]
    differing = [(a.prompt_index, a.text, b.text) for a, b in zip(ours, theirs) if a not in same]
    print(f"greedy: {len(same)}/100 identical; differing: {differing}")
    assert len(same) >= 95, differing
    assert {r.finish_reason for r in theirs} <= {"eos", "stop", "length"}
    worst = max(abs(x - y) for a, b in zip(ours, theirs) if a in same for x, y in zip(a.logprobs, b.logprobs))
    print(f"greedy: max |log-prob difference| {worst:.2e}")
    assert worst < LOGPROB_TOL
    engine.close()


def test_samples_are_reproducible_and_their_logprobs_the_trainers(sft_model, task):
    model, tok, engine = _engine_policy(sft_model)
    prompts = [task.prompt(p) for p in task.problems("test")[:12]]
    params = SamplingParams(temperature=1.0, max_new_tokens=48, stop_strings=task.stop_strings, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = engine.sample(model, tok, prompts, 4, params)
    assert torch.equal(torch.get_rng_state(), before)  # the trainer's random stream is untouched
    b = engine.sample(model, tok, prompts, 4, params)
    c = engine.sample(model, tok, prompts, 4, dataclasses.replace(params, seed=6))
    assert [(r.prompt_index, r.sample_index) for r in a] == [(i, j) for i in range(12) for j in range(4)]
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]
    assert len({tuple(r.completion_ids) for r in a}) > 12  # K samples of a prompt differ
    for r in a:  # texts follow the trainer's tokenizer and stop strings
        assert not any(s in r.text for s in task.stop_strings)
    batch = pack_rollouts(a, tok.pad_token_id)
    with torch.no_grad():
        lp, _ = forward_policy(model, None, batch, False, "cpu")
    gap = (torch.where(batch.action_mask, lp - batch.sampled_logprobs, 0)).abs().max()
    print(f"sampled: max |engine - trainer log-prob| {float(gap):.2e}")
    assert float(gap) < LOGPROB_TOL
    engine.close()


def test_engine_follows_the_trainers_weights_without_a_checkpoint(sft_model, task, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = load_model(sft_model, device="cpu")
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    engine = engines.create(policy, Sampling(engine="vllm", token_budget=8192), str(sft_model))
    prompts = [task.prompt(p) for p in task.problems("test")[:20]]
    params = SamplingParams(temperature=0.0, max_new_tokens=48, stop_strings=task.stop_strings)
    first = engine.sample(policy, tok, prompts, 1, params)
    files = sorted(Path(sft_model).parent.rglob("*"))
    # one optimizer step on the adapters (fused AdamW, in place, as the trainer does); the engine gets the merged
    # weights at the next sample
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=0.05, fused=True)
    batch = pack_rollouts(first, tok.pad_token_id)
    lp, _ = forward_policy(policy, None, batch, False, "cpu")
    (-lp[batch.action_mask].sum()).backward()
    opt.step()
    ours = sample(policy, tok, prompts, 1, params)
    theirs = engine.sample(policy, tok, prompts, 1, params)
    assert [r.completion_ids for r in ours] != [r.completion_ids for r in first]  # the step changed the policy
    same = sum(a.completion_ids == b.completion_ids for a, b in zip(ours, theirs))
    print(f"after a LoRA step: greedy equal on {same}/20 prompts")
    assert same >= 19
    assert sorted(Path(sft_model).parent.rglob("*")) == files  # nothing written: the weights went in memory
    engine.close()


def test_unloadable_architecture_is_one_line(sft_model, tmp_path, capsys):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_model)
    cfg = AutoConfig.for_model("rwkv", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                               attention_hidden_size=32, intermediate_size=64, context_length=256,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    out = tmp_path / "rwkv"
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    capsys.readouterr()
    assert main(["eval", "--model", str(out), "--task", "synthetic", "-n", "2", "-k", "1", "--max-new-tokens", "4",
                 "--engine", "vllm", "--out", str(tmp_path / "e"), *SMALL]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "RwkvForCausalLM is not among vLLM" in err[0] and "--engine mathrl" in err[0]


# ----------------------------------------------------------------------------------------------------------
# training runs: weights change, metrics logged, kill and resume with either engine


def _run(args):
    return subprocess.run([sys.executable, "-m", "mathrl", *args], capture_output=True, text=True,
                          env=dict(os.environ, MATHRL_PROGRESS="0"))


def _kill_after_checkpoint(args, run_dir: Path, timeout: float = 600) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mathrl", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=dict(os.environ, MATHRL_PROGRESS="0"))
    start = time.time()
    while proc.poll() is None and time.time() - start < timeout:
        if (run_dir / "checkpoints").is_dir() and list((run_dir / "checkpoints").glob("step-*")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()


def _weights(model_dir) -> dict:
    return load_file(str(next(Path(model_dir).glob("*.safetensors"))))


def _changed(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return any(not torch.equal(wa[k], wb[k]) for k in wa)


def _killed_and_resumed(command: str, sft_model, run: Path, resume_engine: str, extra: list) -> list:
    """Run COMMAND with --engine vllm, SIGKILL it after its first checkpoint, resume it with RESUME_ENGINE; the
    resumed run must finish, say it resumed and change the weights. Returns its history."""
    _kill_after_checkpoint([command, "--model", str(sft_model), "--out", str(run), "--engine", "vllm", *extra], run)
    assert not (run / "model").exists(), "the run finished before it could be killed"
    r = _run([command, "--model", str(sft_model), "--out", str(run), "--resume", "--engine", resume_engine, *extra])
    assert r.returncode == 0, r.stderr
    assert "resumed" in r.stdout
    assert _changed(sft_model, run / "model")
    return json.loads((run / "history.json").read_text())


EI = ["--rounds", "2", "--questions", "12", "-k", "2", "--max-new-tokens", "32", "--include-references",
      "--eval-size", "4", "--eval-k", "2", "--patience", "0", "--checkpoint-every", "1", "--task", "synthetic", *SMALL]


@pytest.mark.parametrize("resume_engine", ["vllm", "mathrl"])
def test_ei_with_vllm_trains_and_resumes_after_a_kill(sft_model, tmp_path, resume_engine):
    history = _killed_and_resumed("ei", sft_model, tmp_path / "ei", resume_engine, EI)
    rounds = [h for h in history if h.get("round", 0) >= 1]
    assert len(rounds) == 2 and all(h["rollouts"] > 0 and "maj@1" in h and "sample_accuracy" in h for h in rounds)


GRPO = ["--iterations", "4", "--prompts", "6", "-k", "4", "--batch-size", "12", "--max-new-tokens", "32",
        "--eval-size", "4", "--eval-k", "2", "--eval-every", "2", "--checkpoint-every", "2", "--reward", "dense",
        *SMALL]


@pytest.mark.parametrize("resume_engine", ["vllm", "mathrl"])
def test_grpo_with_vllm_trains_logs_the_mismatch_and_resumes_after_a_kill(sft_model, tmp_path, resume_engine):
    history = _killed_and_resumed("grpo", sft_model, tmp_path / "grpo", resume_engine, GRPO)
    iters = {h["iteration"]: h for h in history if h.get("iteration", 0) >= 1}
    assert sorted(iters) == [1, 2, 3, 4]
    vllm_iters = [1, 2] + ([3, 4] if resume_engine == "vllm" else [])
    for i in vllm_iters:
        h = iters[i]
        assert 0 <= h["mismatch_kl"] < 1e-3 and h["is_capped_fraction"] == 0 and 0.99 < h["is_max_ratio"] < 1.01
    for i in set(iters) - set(vllm_iters):
        assert "mismatch_kl" not in iters[i]  # mathrl's sampler: nothing to correct
    assert "maj@1" in iters[4] and any("loss" in h for h in iters.values())  # updates ran (where groups had signal)


def test_engine_death_mid_run_keeps_the_checkpoint_and_resumes(sft_model, tmp_path, monkeypatch, capsys):
    run = tmp_path / "grpo"
    calls = {"n": 0}
    real = engines.VLLMEngine._push

    def dying_push(self, model):  # the third sample (iteration 3) finds the engine dead
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("EngineCore died unexpectedly")
        return real(self, model)

    monkeypatch.setattr(engines.VLLMEngine, "_push", dying_push)
    # without in-run evaluations (GRPO's --eval-k and --eval-every would then be refused as having no effect)
    no_eval = [a for i, a in enumerate(GRPO) if not {a, GRPO[i - 1]} & {"--eval-size", "--eval-k", "--eval-every"}]
    args = ["grpo", "--model", str(sft_model), "--out", str(run), "--engine", "vllm", *no_eval, "--eval-size", "0"]
    capsys.readouterr()
    assert main(args) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "vLLM engine failed mid-run" in err[0] and "--resume" in err[0]
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-0000002"]
    monkeypatch.setattr(engines.VLLMEngine, "_push", real)
    assert main(args + ["--resume"]) == 0
    assert (run / "model").is_dir()


def test_rcrl_with_grown_vocabulary_and_its_conditioned_eval(sft_model, tmp_path):
    # RCRL adds [GOOD]/[BAD] to the tokenizer and grows the embedding table: the engine takes the trainer's table
    run = tmp_path / "rcrl"
    r = _run(["rcrl", "--model", str(sft_model), "--out", str(run), "--questions", "8", "-k", "2", "--rounds", "2",
              "--eval-size", "4", "--eval-k", "2", "--max-new-tokens", "32", "--engine", "vllm", *SMALL])
    assert r.returncode == 0, r.stderr
    rows = {d: _weights(d)["model.embed_tokens.weight"].shape[0] for d in (sft_model, run / "model")}
    assert rows[run / "model"] == rows[sft_model] + 2
    greedy = {}
    for engine in ("vllm", "mathrl"):
        out = tmp_path / f"eval-{engine}"
        r = _run(["eval", "--model", str(run / "model"), "-n", "20", "-k", "2", "--max-new-tokens", "32", "--engine",
                  engine, "--out", str(out), *SMALL])
        assert r.returncode == 0, r.stderr
        greedy[engine] = [json.loads(line)["greedy"] for line in (out / "samples.jsonl").read_text().splitlines()]
    same = sum(a == b for a, b in zip(greedy["vllm"], greedy["mathrl"]))
    print(f"rcrl: conditioned greedy completions equal on {same}/20 problems")
    assert same >= 19
