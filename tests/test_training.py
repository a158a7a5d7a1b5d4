"""Training-core invariants (training.py)."""

import random

import pytest
import torch

from mathrl.training import Example, collate, completion_example, length_bucketed_batches, lr_at, sft_grads, token_logprobs


def _tiny_llama(vocab=32, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def test_completion_example_masks():
    e = completion_example([1, 2, 3], [4, 5])
    assert e.loss_mask == (False, False, False, True, True)
    w = completion_example([1, 2, 3], [4, 5], whole_sequence=True)
    assert w.loss_mask == (False, True, True, True, True)
    b = collate([e, completion_example([1], [2])], pad_id=0)
    assert b.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 0, 0, 0]]
    assert b.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert b.loss_mask.tolist() == [[False, False, False, True, True], [False, True, False, False, False]]
    assert b.n_targets == 3


def test_token_logprobs_match_manual_computation():
    model = _tiny_llama()
    ids = torch.tensor([[1, 5, 7, 2]])
    lp = token_logprobs(model, ids, torch.ones_like(ids))
    logits = model(ids).logits[0]
    manual = [0.0] + [torch.log_softmax(logits[t - 1], -1)[ids[0, t]].item() for t in range(1, 4)]
    assert lp[0].tolist() == pytest.approx(manual, abs=1e-5)


def test_gradient_accumulation_1x8_equals_8x1():
    rng = random.Random(0)
    examples = [completion_example([rng.randrange(3, 32) for _ in range(rng.randint(2, 6))],
                                   [rng.randrange(3, 32) for _ in range(rng.randint(1, 5))]) for _ in range(8)]
    m1, m8 = _tiny_llama(), _tiny_llama()
    sft_grads(m1, [collate(examples, 0)], "cpu")
    sft_grads(m8, [collate([e], 0) for e in examples], "cpu")
    for (n, a), (_, b) in zip(m1.named_parameters(), m8.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), n


def test_padding_does_not_change_the_loss_gradient():
    e = completion_example([4, 5, 6], [7, 8])
    long = completion_example([4, 5, 6, 9, 9, 9, 9], [7])
    m1, m2 = _tiny_llama(), _tiny_llama()
    sft_grads(m1, [collate([e], 0)], "cpu")
    # the same example padded next to a longer one, with the other example's mask zeroed
    batch = collate([e, long], 0)
    batch.loss_mask[1] = False
    sft_grads(m2, [batch], "cpu")
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_lr_schedule_by_hand():
    # warmup 10: step 0 -> 1/10, step 9 -> 1
    assert lr_at(0, 100, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 10) == pytest.approx(1.0)
    # halfway through the cosine (step 55 of 10..100): 0.1 + 0.9 * 0.5 * (1 + cos(pi/2)) = 0.55
    assert lr_at(55, 100, 10, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_at(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    assert lr_at(500, 100, 10, min_ratio=0.1) == pytest.approx(0.1)


def test_length_bucketed_batches_cover_every_example_once():
    examples = [Example(tuple(range(n)), (True,) * n) for n in range(1, 101)]
    batches = length_bucketed_batches(examples, 8, random.Random(0), bucket_batches=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(100))
    assert batches == length_bucketed_batches(examples, 8, random.Random(0), bucket_batches=4)


def test_compiled_training_pass_matches_eager():
    # sft --compile: the compiled forward/backward gives the eager loss and gradients, for batches of two lengths
    # (one dynamic-shape graph) with padding and a partial loss mask, and shares the parameters
    import torch._dynamo
    from torch._dynamo.utils import counters

    from mathrl.compile import compiled

    counters.clear()
    suppress_errors = torch._dynamo.config.suppress_errors
    rng = random.Random(1)
    batches = [collate([completion_example([rng.randrange(3, 32) for _ in range(rng.randint(2, 9))],
                                           [rng.randrange(3, 32) for _ in range(rng.randint(1, 6))])
                        for _ in range(4)], 0) for _ in range(2)]
    assert batches[0].input_ids.shape[1] != batches[1].input_ids.shape[1]
    eager, model = _tiny_llama(), _tiny_llama()
    fast = compiled(model)
    assert set(map(id, fast.parameters())) == set(map(id, model.parameters()))
    for batch in batches:
        loss_e, _ = sft_grads(eager, [batch], "cpu")
        loss_c, _ = sft_grads(fast, [batch], "cpu")
        assert loss_c == pytest.approx(loss_e, abs=1e-5)
        for (n, a), (_, b) in zip(eager.named_parameters(), model.named_parameters()):
            assert torch.allclose(a.grad, b.grad, atol=1e-5), n
            a.grad, b.grad = None, None
    assert counters["stats"]["unique_graphs"] >= 1  # it was compiled (not the eager fallback)
    # the blocks are swapped in for the call only: the model the sampler and checkpoints use is left as it was
    assert all(type(layer).__name__ == "LlamaDecoderLayer" for layer in model.model.layers)
    assert model.config._attn_implementation == eager.config._attn_implementation
    # the eager fallback on a failed compile is switched on for the compiled calls only, not for the whole process
    assert torch._dynamo.config.suppress_errors == suppress_errors


def test_default_threads_are_the_cores_this_process_may_use(monkeypatch):
    # the affinity mask, not a sample of idle time (a background download once made a study run on 1 thread)
    import os

    from mathrl.runsetup import default_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert default_threads() == 3


def test_fp32_master_weights_keep_an_update_that_bf16_weights_lose(tiny_model_dir):
    """One AdamW step of lr 1e-5 moves each weight by about 1e-5 (Adam's first step is lr x sign(grad)). bf16
    keeps 8 significant bits: at a weight of ~0.02 its spacing is 2^-6 x 2^-7 ~ 1.2e-4, so the step rounds away
    in bf16 weights; bf16-mixed keeps float32 weights (and Adam state) and computes in bf16 under autocast."""
    from mathrl.models import load_model
    from mathrl.training import clip_and_step, make_optimizer

    changed = {}
    for precision in ("bfloat16", "bf16-mixed"):
        model, tok = load_model(str(tiny_model_dir), device="cpu", for_training=True, precision=precision)
        assert next(model.parameters()).dtype == (torch.bfloat16 if precision == "bfloat16" else torch.float32)
        w = model.model.layers[0].self_attn.q_proj.weight
        before = w.detach().clone()
        optimizer = make_optimizer(model, lr=1e-5, weight_decay=0.0)
        ids = tok("Question: Bob has 3 pens.\nAnswer: 3 #### 3", add_special_tokens=False)["input_ids"]
        sft_grads(model, [collate([completion_example(ids[:4], ids[4:])], tok.pad_token_id)], "cpu")
        assert w.grad is not None and w.grad.abs().sum() > 0
        clip_and_step(model, optimizer, 0.0)
        big = before.float().abs() > 0.01  # where the bf16 spacing (>= 2^-7 x 2^-7 ~ 6e-5) exceeds twice the step
        changed[precision] = float((w.detach() != before)[big].float().mean())
    assert changed["bfloat16"] == 0.0 and changed["bf16-mixed"] == 1.0, changed


def test_bf16_training_on_cpu_takes_the_plain_attention_unless_told(tiny_model_dir):
    """torch's SDPA backward in bf16 on CPU ran ~9x slower than in float32, so bf16 training on CPU loads the
    matmul-softmax attention; a kernel named with --attn-implementation, float32 and inference are left alone."""
    from mathrl.models import load_model
    from mathrl.settings import Compute

    def kernel(**kw):
        return load_model(str(tiny_model_dir), device="cpu", **kw)[0].config._attn_implementation

    assert kernel(for_training=True, precision="bf16-mixed") == "eager"
    assert kernel(for_training=True, precision="bfloat16") == "eager"
    default = kernel(for_training=True, precision="float32")
    assert default != "eager"
    assert kernel(for_training=False, precision="bf16-mixed") == default
    assert kernel(for_training=True, precision="bf16-mixed", compute=Compute(attn_implementation="sdpa")) == "sdpa"


def test_ppo_with_bf16_mixed_on_cpu_trains_and_keeps_float32_values(tiny_model_dir, tmp_path):
    """A PPO iteration under bf16 autocast: the value head computes in float32 (its outputs fill the float32
    old-value buffers; a bf16 output there was an error) and the policy's weights change."""
    from mathrl.algorithms.ppo import ValueHead
    from mathrl.cli import main
    from mathrl.models import load_model

    head = ValueHead(8)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        assert head(torch.randn(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.float32
    out = tmp_path / "ppo"
    assert main(["ppo", "--model", str(tiny_model_dir), "--out", str(out), "--iterations", "1", "--prompts", "2",
                 "-k", "2", "--batch-size", "4", "--eval-size", "0", "--max-new-tokens", "8", "--threads", "1",
                 "--precision", "bf16-mixed", "--device", "cpu"]) == 0
    before = load_model(str(tiny_model_dir), device="cpu")[0].state_dict()
    after = load_model(str(out / "model"), device="cpu")[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_model_dir):
    """float32, CPU: SFT's loss and PPO's policy forward (which then runs prompt + completion as one sequence, since
    a checkpointed pass keeps no KV cache) give the losses and gradients of the model without checkpointing."""
    from mathrl.models import load_model
    from mathrl.sampler import SamplingParams, sample
    from mathrl.settings import Compute
    from mathrl.rollouts import forward_policy, pack_rollouts

    plain, tok = load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32, for_training=True)
    ckpt, _ = load_model(str(tiny_model_dir), device="cpu", dtype=torch.float32, for_training=True,
                         compute=Compute(gradient_checkpointing=True))
    assert ckpt.mathrl_checkpointing and ckpt.model.layers[0].gradient_checkpointing
    batch = collate([completion_example([1, 5, 7, 9], [11, 12, 2]), completion_example([3, 4], [6, 8, 10, 2])], 0)
    rollouts = sample(plain, tok, ["Question: Bob has 3 pens.\nAnswer:", "Question: 1 + 2?\nAnswer:"], 2,
                      SamplingParams(max_new_tokens=6, seed=1))
    rb = pack_rollouts(rollouts, tok.pad_token_id)
    out = {}
    for name, model in (("plain", plain), ("checkpointed", ckpt)):
        model.zero_grad()
        loss, _ = sft_grads(model, [batch], "cpu")
        logp, _ = forward_policy(model, None, rb, False)
        (logp * rb.action_mask).sum().backward()  # a policy-gradient-shaped loss through the rollout path
        out[name] = (loss, logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (l1, lp1, g1), (l2, lp2, g2) = out["plain"], out["checkpointed"]
    assert l1 == pytest.approx(l2, abs=1e-6)
    assert torch.allclose(lp1[rb.action_mask], lp2[rb.action_mask], atol=1e-5)
    assert torch.allclose(lp1[rb.action_mask], rb.sampled_logprobs[rb.action_mask], atol=1e-4)  # the sampler's, too
    # the rollout path sums in another order (one sequence instead of a shared cache): equal up to float rounding
    assert all(torch.allclose(g1[n], g2[n], atol=5e-5) for n in g1), max((g1[n] - g2[n]).abs().max() for n in g1)


def test_attention_kernel_and_tiny_default_learning_rate_warning(tiny_model_dir, capsys):
    from mathrl.algorithms import sft
    from mathrl.config import build
    from mathrl.models import load_model
    from mathrl.reward_model import token_classifier
    from mathrl.runsetup import warn_tiny_default_lr
    from mathrl.settings import Compute

    model, _ = load_model(str(tiny_model_dir), device="cpu", compute=Compute(attn_implementation="eager"))
    assert model.config._attn_implementation == "eager"
    assert token_classifier(tiny_model_dir, attn_implementation="eager").config._attn_implementation == "eager"
    big = torch.nn.Linear(4000, 2600)  # 10.4M parameters: above the embedded model's scale
    warn_tiny_default_lr(build(sft.Config, {}), big)
    assert "10M-parameter model at --lr 0.003" in capsys.readouterr().out
    warn_tiny_default_lr(build(sft.Config, {"lr": 2e-5}), big)  # the user's own rate: no warning
    warn_tiny_default_lr(build(sft.Config, {}), model)  # the embedded model: no warning
    assert capsys.readouterr().out == ""


def test_a_reward_model_trains_at_the_precision_asked_for_not_its_checkpoints(tiny_model_dir, tmp_path):
    # orm train took the checkpoint's dtype and no autocast whatever --precision said: a bf16 checkpoint (most hub
    # models) trained in pure bf16 under --precision float32, losing the small updates float32 masters keep
    from mathrl.models import autocast
    from mathrl.reward_model import token_classifier

    bf16_dir = tmp_path / "bf16"
    token_classifier(tiny_model_dir).to(torch.bfloat16).save_pretrained(bf16_dir)
    assert next(token_classifier(bf16_dir).parameters()).dtype == torch.bfloat16  # scoring: the checkpoint's own
    fp32 = token_classifier(bf16_dir, precision="float32")
    assert next(fp32.parameters()).dtype == torch.float32 and fp32.mathrl_autocast is None
    mixed = token_classifier(bf16_dir, precision="bf16-mixed")
    assert next(mixed.parameters()).dtype == torch.float32 and mixed.mathrl_autocast == torch.bfloat16
    assert mixed.config._attn_implementation == "eager"  # bf16 training on CPU: as models.load_model
    ids = torch.tensor([[5, 6, 7]])
    with autocast(mixed):
        assert mixed(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.dtype == torch.bfloat16
    assert next(token_classifier(tiny_model_dir, precision="bfloat16").parameters()).dtype == torch.bfloat16


def test_document_mask_packs_documents_as_if_each_stood_alone():
    from mathrl.algorithms.pretrain import lm_batch

    # two documents packed in one row: [5 6 EOS] [7 8 ...]; by hand: token 3 (the 7) starts document 1, so it sees
    # only itself and is no target (nothing of its document comes before it); token 0 has no prefix
    rows = torch.tensor([[5, 6, 2, 7, 8]])
    doc_of = torch.tensor([[0, 0, 0, 1, 1]])
    b = lm_batch(rows, doc_of, document_mask=True)
    assert b.loss_mask.tolist() == [[False, True, True, False, True]]
    assert b.attention_mask.shape == (1, 1, 5, 5)
    assert (b.attention_mask[0, 0] == 0).int().tolist() == [[1, 0, 0, 0, 0],  # additive: 0 where attended
                                                             [1, 1, 0, 0, 0],
                                                             [1, 1, 1, 0, 0],
                                                             [0, 0, 0, 1, 0],
                                                             [0, 0, 0, 1, 1]]
    # the second document's log-probs equal those of the document on its own (rotary attention is relative), with
    # every attention kernel: the matmul-softmax one ("eager", which bf16 training on CPU and --compile use) adds a
    # 4D mask to its scores, and read a boolean mask as +1/+0 (nothing masked: 0.14 off on this token, measured)
    model = _tiny_llama()
    alone = token_logprobs(model, torch.tensor([[7, 8]]), torch.ones(1, 2, dtype=torch.long))[0, 1]
    for kernel in ("sdpa", "eager"):
        model.config._attn_implementation = kernel
        packed = token_logprobs(model, b.input_ids, b.attention_mask)[0, 4]
        assert float(packed) == pytest.approx(float(alone), abs=1e-4), kernel  # 2e-7 measured; 0.13 without mask
    # without the mask: the plain causal row, every token but the first a target
    plain = lm_batch(rows, doc_of, document_mask=False)
    assert plain.loss_mask.tolist() == [[False, True, True, True, True]] and plain.attention_mask.tolist() == [[1] * 5]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_policy_gradient_learner_runs_without_dropout(arch):
    # pi_old comes from the sampler (eval mode); the learner's passes run in training mode, so a model with dropout
    # would see a ratio pi / pi_old != 1 before any update. After disable_dropout a training-mode pass is the
    # eval-mode one, and two of them agree
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathrl.models import disable_dropout

    torch.manual_seed(0)
    extra = ({"n_embd": 32, "n_layer": 2, "n_head": 4, "resid_pdrop": 0.3, "embd_pdrop": 0.3, "attn_pdrop": 0.3}
             if arch == "gpt2" else {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                     "num_attention_heads": 4, "attention_dropout": 0.3})
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, vocab_size=40, **extra))
    ids = torch.randint(0, 40, (2, 12))
    mask = torch.ones_like(ids)
    model.eval()
    want = token_logprobs(model, ids, mask)
    model.train()
    assert not torch.allclose(token_logprobs(model, ids, mask), want)  # dropout is on in training mode
    disable_dropout(model)
    model.train()
    assert torch.equal(token_logprobs(model, ids, mask), want) and torch.equal(token_logprobs(model, ids, mask), want)
