"""Real Hugging Face architectures, tiny and random (built from configs, nothing downloaded): the sampler's
log-probs equal the trainer's forward pass, and a reward model trains on every one (transformers' own
token-classification class where the architecture has one, ``TrunkForTokenClassification`` where not)."""

import json

import pytest
import torch

from mathrl.cli import main

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)
ARCHITECTURES = {
    "llama": SMALL,
    "qwen2": {**SMALL, "vocab_pad": 64},  # an embedding table larger than the tokenizer, as in every Qwen2 checkpoint
    "qwen3": {**SMALL, "head_dim": 8},
    "gemma3_text": {**SMALL, "head_dim": 8, "sliding_window": 16},  # no token-classification class in transformers
    "olmo2": SMALL,  # no token-classification class either
    "mistral": SMALL,
    "phi3": {k: v for k, v in SMALL.items()},
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=512),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     max_position_embeddings=512),
    "qwen3_moe": {**SMALL, "head_dim": 8, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16},
}


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch_model(request, tiny_model_dir, tmp_path_factory):
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathrl.models import load_tokenizer

    name = request.param
    kwargs = dict(ARCHITECTURES[name])
    pad = kwargs.pop("vocab_pad", 0)
    tok = load_tokenizer(str(tiny_model_dir))
    config = AutoConfig.for_model(name, vocab_size=len(tok) + pad, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **kwargs)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp(name)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)
    (out / "mathrl.json").write_text(json.dumps({"task": {"name": "synthetic", "level": 2}, "shots": 0}))
    return name, out


def test_sampled_logprobs_equal_the_training_forward_pass(arch_model, recwarn):
    from mathrl.models import load_model
    from mathrl.sampler import SamplingParams, sample
    from mathrl.rollouts import forward_policy, pack_rollouts

    name, path = arch_model
    model, tok = load_model(str(path), device="cpu", dtype=torch.float32)
    rollouts = sample(model, tok, ["Question: 1 + 2?\nAnswer:", "Question: Bob has 3 pens.\nAnswer:"], 3,
                      SamplingParams(temperature=1.0, max_new_tokens=12, seed=1))
    assert all(max(r.completion_ids) < len(tok) for r in rollouts)  # no embedding row without a token
    # sliding-window layers (Gemma 3's local layers; Mistral's default config has a 4096-token window) cannot
    # share a prompt's cache across its samples: the sampler says so and copies it
    fallback = [w for w in recwarn if "not plain full attention" in str(w.message)]
    assert bool(fallback) == (name in ("gemma3_text", "mistral")), name
    batch = pack_rollouts(rollouts, tok.pad_token_id)
    logp, _ = forward_policy(model, None, batch, False)
    assert torch.allclose(logp[batch.action_mask], batch.sampled_logprobs[batch.action_mask], atol=2e-4), name


def test_reward_model_trains_on_every_architecture(arch_model, tmp_path):
    from safetensors.torch import load_file

    from mathrl.reward_model import load_reward_model

    name, path = arch_model
    out = tmp_path / "orm"
    assert main(["orm", "train", "--model", str(path), "--out", str(out), "--questions", "6", "-k", "2",
                 "--epochs", "1", "--batch-size", "4", "--max-new-tokens", "8", "--threads", "1"]) == 0
    rm = load_reward_model(str(out / "model"))
    scores = rm.score_texts(["Question: 1 + 2?\nAnswer:"], [" 3. #### 3"])
    assert 0.0 <= scores[0] <= 1.0
    before = load_file(str(next(path.glob("*.safetensors"))))
    after = load_file(str(next((out / "model").glob("*.safetensors"))))
    # the trunk's weights are the policy's, trained: same names once the classifier's prefix is aligned
    shared = [k for k in after if k in before and after[k].shape == before[k].shape]
    assert shared and any(not torch.equal(before[k], after[k]) for k in shared), name
