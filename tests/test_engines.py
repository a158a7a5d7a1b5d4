"""The engine switch without vLLM: the default path, the refusals, the weights a LoRA policy hands the engine,
and the study's flags. The tests that run vLLM itself are in test_vllm.py (marker ``vllm``)."""

import copy
import sys

import pytest
import torch

from mathrl import engines
from mathrl.cli import main
from mathrl.errors import UsageError
from mathrl.models import load_model
from mathrl.sampler import SamplingParams, sample
from mathrl.settings import Sampling


def test_default_engine_is_mathrls_sampler(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, device="cpu")
    params = SamplingParams(max_new_tokens=6, seed=3)
    engine = engines.create(model, Sampling(), str(tiny_model_dir))
    assert engine.name == "mathrl"
    a = engine.sample(model, tok, ["Question: a", "Question: b"], 3, params)
    b = sample(model, tok, ["Question: a", "Question: b"], 3, params)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]


def test_missing_extra_is_one_line_naming_the_install(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what Python does for a package that is not installed
    code = main(["eval", "--model", str(tiny_model_dir), "-n", "2", "-k", "1", "--engine", "vllm",
                 "--out", str(tmp_path / "e"), "--threads", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert 'pip install "mathrl[vllm]"' in err


@pytest.mark.parametrize("argv, message", [
    (["eval", "--engine", "vllm", "--calculator"], "--calculator"),
    (["rcrl", "--engine", "vllm", "--returns", "dense"], "--returns dense"),
    (["ei", "--engine", "sglang"], "unknown engine 'sglang'"),
    (["grpo", "--vllm-is-cap", "3"], "--vllm-is-cap"),
    (["grpo", "--engine", "vllm", "--vllm-is-cap", "0.5"], "--vllm-is-cap must be >= 1"),
    (["study", "--engine", "sglang"], "unknown engine"),
])
def test_refused_combinations(tiny_model_dir, tmp_path, capsys, argv, message):
    model = [] if argv[0] == "study" else ["--model", str(tiny_model_dir)]
    assert main(argv + model + ["--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


def test_dense_conditioned_model_is_refused_before_loading(tiny_model_dir, tmp_path, capsys):
    import json
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    meta = json.loads((d / "mathrl.json").read_text())
    (d / "mathrl.json").write_text(json.dumps({**meta, "condition": {"token": "[GOOD]", "dense": True}}))
    assert main(["eval", "--model", str(d), "--engine", "vllm", "--out", str(tmp_path / "e")]) == 2
    assert "dense returns" in capsys.readouterr().err


@pytest.mark.parametrize("trainable_tokens", [(), (5, 9)])
def test_lora_policy_hands_over_merged_weights(tiny_model_dir, trainable_tokens):
    # trainable_tokens: embedding rows trained in full beside the adapters (RCRL's [GOOD]/[BAD] under LoRA); PEFT
    # keeps them under its own names, which vLLM would not load: they must arrive in the embedding table itself
    from peft import LoraConfig, get_peft_model

    model, _ = load_model(tiny_model_dir, device="cpu")
    extra = {"trainable_token_indices": list(trainable_tokens)} if trainable_tokens else {}
    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM",
                                              **extra))
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n or "trainable_tokens_delta" in n:
                p.normal_(0, 0.1)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    pushed = dict(engines.hf_weights(policy))
    expected = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert pushed.keys() == expected.keys()
    for n in expected:
        assert torch.allclose(pushed[n], expected[n], atol=1e-6), n
    assert any(not torch.equal(pushed[n], model.state_dict()[n.replace(".weight", ".base_layer.weight")])
               for n in pushed if "q_proj" in n)  # the adapter moved something
    for n, p in policy.named_parameters():  # the trainer's modules are left unmerged, bit for bit
        assert torch.equal(p, before[n]), n
    # a plain model loaded with the pushed weights computes what the trainer's policy computes
    plain = copy.deepcopy(model.__class__(model.config))
    assert not plain.load_state_dict(pushed, strict=False).missing_keys
    ids = torch.tensor([[1, 5, 9, 3, 9]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, policy(input_ids=ids).logits, atol=1e-5)


def test_vllm_engine_refuses_hidden_states_before_starting():
    """PPO reads its old values off the sampler's hidden states only with mathrl's engine; asked of vLLM (which
    keeps none) they are an error, not rollouts whose ``hidden`` is silently None. Checked before vLLM loads."""
    engine = engines.VLLMEngine("m", 1 << 10)
    try:
        with pytest.raises(UsageError, match="keeps no hidden states"):
            engine.sample(None, None, ["Question: a"], 1, SamplingParams(hidden_states=True))
        assert engine.llm is None
    finally:
        engine.close()  # its optimizer-step hook is process-wide


def test_tokenizer_mismatch_is_refused(tiny_model_dir):
    _, tok = load_model(tiny_model_dir, device="cpu")
    other = copy.deepcopy(tok)
    other.add_special_tokens({"additional_special_tokens": ["[GOOD]"]})
    engines.check_tokenizers(tok, copy.deepcopy(tok), "m")
    with pytest.raises(UsageError, match="tokenizer differs"):
        engines.check_tokenizers(tok, other, "m")


def test_study_passes_the_engine_to_every_sampling_stage_but_dense_rcrl(tmp_path):
    from mathrl.study import Config, plan

    default = plan(Config(), tmp_path)
    assert not any("--engine" in s.command for s in default)
    stages = plan(Config(engine="vllm", ablation="objectives"), tmp_path)  # the ablation's base is GRPO
    by = {s.name: s.command for s in stages}
    for name in ("orm", "ei-sparse-sft@0", "ppo-sparse-sft@0", "grpo-sparse-sft@0", "rcrl-sparse-sft@0",
                 "eval-sft", "eval-ppo-orm-sft@0"):
        assert by[name][-2:] == ["--engine", "vllm"], name
    for name in ("pretrain", "sft", "rcrl-dense-sft@0", "eval-rcrl-dense-sft@0"):
        assert "--engine" not in by[name], name
