"""Sampler invariants (sampler.py): parity with HF generate and a full forward pass, reproducibility, limits."""

import pytest
import torch

from mathrl.errors import UsageError
from mathrl.models import load_model
from mathrl.sampler import SamplingParams, sample
from mathrl.tasks import load_task


@pytest.fixture(scope="module")
def model_and_prompts(tiny_model_dir):
    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir, device="cpu")
    task = load_task("synthetic", level=2)
    prompts = [task.prompt(p) for p in task.problems("test")[:6]]  # ragged lengths
    return model, tok, prompts


def test_greedy_equals_hf_generate(model_and_prompts):
    model, tok, prompts = model_and_prompts
    ours = sample(model, tok, prompts, 1, SamplingParams(temperature=0, max_new_tokens=24))
    enc = tok(prompts, padding=True, return_tensors="pt", padding_side="left")
    hf = model.generate(**enc, do_sample=False, max_new_tokens=24, pad_token_id=tok.pad_token_id)
    for r, row in zip(ours, hf):
        expected = row[enc["input_ids"].shape[1]:].tolist()
        assert r.completion_ids == expected[: len(r.completion_ids)]
        if r.finish_reason == "length":
            assert len(r.completion_ids) == 24


def test_logprobs_equal_a_full_forward_pass(model_and_prompts):
    model, tok, prompts = model_and_prompts
    rollouts = sample(model, tok, prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=30, seed=1))
    worst = 0.0
    for r in rollouts:
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
        n = len(r.prompt_ids)
        ref = logp[n - 1 : -1].gather(-1, torch.tensor(r.completion_ids)[:, None]).squeeze(-1)
        worst = max(worst, (ref - torch.tensor(r.logprobs)).abs().max().item())
    assert worst <= 1e-4


def test_reproducible_and_diverse(model_and_prompts):
    model, tok, prompts = model_and_prompts
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=5)
    a = sample(model, tok, prompts, 4, params)
    b = sample(model, tok, prompts, 4, params)
    assert [r.completion_ids for r in a] == [r.completion_ids for r in b]
    assert len({tuple(r.completion_ids) for r in a[:4]}) > 1  # K samples of one prompt differ at T=1
    c = sample(model, tok, prompts, 4, SamplingParams(temperature=1.0, max_new_tokens=20, seed=6))
    assert [r.completion_ids for r in a] != [r.completion_ids for r in c]


def test_samples_do_not_depend_on_batching_or_order(model_and_prompts):
    model, tok, prompts = model_and_prompts
    keys = [f"q{i}" for i in range(len(prompts))]
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=2)
    full = sample(model, tok, prompts, 3, params, keys=keys)
    small = sample(model, tok, prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=16, seed=2,
                                                          token_budget=150), keys=keys)
    rev = sample(model, tok, prompts[::-1], 3, params, keys=keys[::-1])
    by_key = {(r.key, r.sample_index): r.completion_ids for r in rev}
    assert [r.completion_ids for r in full] == [r.completion_ids for r in small]
    assert all(by_key[(r.key, r.sample_index)] == r.completion_ids for r in full)


def test_top_k_one_is_greedy(model_and_prompts):
    model, tok, prompts = model_and_prompts
    greedy = sample(model, tok, prompts, 1, SamplingParams(temperature=0, max_new_tokens=12))
    topk = sample(model, tok, prompts, 1, SamplingParams(temperature=1.0, top_k=1, max_new_tokens=12))
    assert [r.completion_ids for r in greedy] == [r.completion_ids for r in topk]
    topp = sample(model, tok, prompts, 1, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=12))
    assert [r.completion_ids for r in greedy] == [r.completion_ids for r in topp]


def test_stop_strings_and_lengths(model_and_prompts):
    model, tok, prompts = model_and_prompts
    rollouts = sample(model, tok, prompts, 4, SamplingParams(temperature=1.0, max_new_tokens=40, seed=0,
                                                             stop_strings=(" has",)))
    for r in rollouts:
        assert r.finish_reason in ("eos", "stop", "length")
        assert len(r.completion_ids) == len(r.logprobs) == len(r.sampled_mask) <= 40
        if r.finish_reason == "stop":
            assert " has" not in r.text
            assert " has" in tok.decode(r.completion_ids)


def test_calculator_inserts_results(data_dir, tmp_path):
    from mathrl.models import init_model
    from mathrl.sampler import _calculator_tokens

    task = load_task("gsm8k", data_dir=str(data_dir / "gsm8k"))
    _, tok = init_model(task, tmp_path / "g", size="tiny")
    ids = tok("She pays 4 * 3 = <<4*3=", add_special_tokens=False)["input_ids"]
    assert tok.decode(_calculator_tokens(tok, ids)) == "12>>"
    assert _calculator_tokens(tok, tok("<<4*3=12>> and 5 =", add_special_tokens=False)["input_ids"]) == []
    assert _calculator_tokens(tok, tok("<<9**9**9=", add_special_tokens=False)["input_ids"]) == []


def test_bad_inputs_are_usage_errors(model_and_prompts, tmp_path):
    model, tok, prompts = model_and_prompts
    with pytest.raises(UsageError, match="K"):
        sample(model, tok, prompts, 0, SamplingParams())
    with pytest.raises(UsageError, match="context"):
        sample(model, tok, [[5] * 5000], 1, SamplingParams())
    with pytest.raises(UsageError, match="vocabulary"):
        sample(model, tok, [[10**6]], 1, SamplingParams())
    with pytest.raises(UsageError, match="temperature"):
        sample(model, tok, prompts, 1, SamplingParams(temperature=-1))


def test_model_directory_errors(tiny_model_dir, tmp_path):
    import shutil

    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model_dir, no_tok)
    for f in no_tok.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(UsageError, match="no tokenizer"):
        load_model(no_tok)
    with pytest.raises(UsageError, match="not found"):
        load_model(tmp_path / "missing")
    # a tokenizer from a model with a bigger vocabulary
    from transformers import LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small-vocab"
    LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(small)
    for f in tiny_model_dir.glob("tokenizer*"):
        shutil.copy(f, small / f.name)
    shutil.copy(tiny_model_dir / "special_tokens_map.json", small) if (tiny_model_dir / "special_tokens_map.json").exists() else None
    with pytest.raises(UsageError, match="embedding table"):
        load_model(small)


def test_embedding_rows_without_a_token_are_never_sampled(tiny_model_dir, tmp_path):
    """An embedding table padded beyond the tokenizer (every Qwen2 checkpoint: 151,936 rows for 151,665 tokens).
    Here as many padded rows as real ones, so an unmasked sampler would draw one about every other token; the
    log-probs stay those of the full distribution (what the trainer's forward pass computes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathrl.models import load_model, load_tokenizer
    from mathrl.rollouts import forward_policy, pack_rollouts

    tok = load_tokenizer(str(tiny_model_dir))
    config = AutoConfig.from_pretrained(str(tiny_model_dir))
    config.vocab_size = 2 * len(tok)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, tok = load_model(str(tmp_path), device="cpu")
    rollouts = sample(model, tok, ["Question: 1 + 2?\nAnswer:"] * 2, 4,
                      SamplingParams(temperature=1.0, max_new_tokens=24, seed=3))
    ids = [i for r in rollouts for i in r.completion_ids]
    assert len(ids) >= 40 and max(ids) < len(tok)
    logp, _ = forward_policy(model, None, pack_rollouts(rollouts, tok.pad_token_id), False)
    batch = pack_rollouts(rollouts, tok.pad_token_id)
    assert torch.allclose(logp[batch.action_mask], batch.sampled_logprobs[batch.action_mask], atol=1e-4)
