"""The PPO/GRPO learning step's forward pass (rollouts.forward_policy: each prompt once, its key/value cache shared by
its completions, the vocabulary projection only at completion positions) equals one plain forward pass per rollout
over prompt + completion: log-probs, values and the gradients of both."""

import warnings

import pytest
import torch

from mathrl.algorithms.ppo import ValueHead
from mathrl.rollouts import forward_policy, pack_rollouts as _pack
from mathrl.models import load_model
from mathrl.sampler import SamplingParams, sample
from mathrl.tasks import load_task


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    torch.manual_seed(0)
    model, tok = load_model(tiny_model_dir, device="cpu", for_training=True)
    task = load_task("synthetic", level=2)
    prompts = [task.prompt(p) for p in task.problems("test")[:4]]  # ragged prompt lengths -> left padding
    rollouts = sample(model, tok, prompts, 3, SamplingParams(temperature=1.0, max_new_tokens=20, seed=3))
    head = ValueHead(model.config.hidden_size, trunk_grad=True)
    torch.nn.init.normal_(head.mlp[2].weight, std=0.5)  # a non-zero head, so values carry gradients
    return model, head, tok, rollouts


def plain(model, head, rollouts):
    """Per rollout: (log-probs, values) of its completion tokens from a forward pass over prompt + completion."""
    out = []
    for r in rollouts:
        ids = torch.tensor([r.prompt_ids + r.completion_ids])
        o = model(ids, output_hidden_states=True)
        n, m = len(r.prompt_ids), len(r.completion_ids)
        logp = torch.log_softmax(o.logits[0].float(), -1)[n - 1 : n + m - 1]
        out.append((logp.gather(-1, ids[0, n:, None]).squeeze(-1), head(o.hidden_states[-1])[0, n - 1 : n + m - 1]))
    return out


def test_shared_prefix_forward_equals_plain_forward(setup):
    model, head, tok, rollouts = setup
    model.train()
    batch = _pack(rollouts, tok.pad_token_id)
    assert len(batch.prompt_ids) == 4 and len(batch.prompt_of) == 12  # prompts stored once
    # log-probs and values
    logp, values = forward_policy(model, head, batch, with_values=True)
    expected = plain(model, head, rollouts)
    for i, (lp, v) in enumerate(expected):
        m = len(lp)
        assert torch.allclose(logp[i, :m], lp, atol=1e-5)
        assert torch.allclose(values[i, :m], v, atol=1e-5)
    # gradients of a masked loss on both
    weights = torch.randn(logp.shape, generator=torch.Generator().manual_seed(0))
    params = list(model.parameters()) + list(head.parameters())

    def grads(loss):
        for p in params:
            p.grad = None
        loss.backward()
        return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    mask = batch.action_mask
    ours = grads((torch.where(mask, logp * weights, 0) + torch.where(mask, values, 0) ** 2).sum())
    expected = plain(model, head, rollouts)
    ref = grads(sum((lp * weights[i, : len(lp)]).sum() + (v ** 2).sum() for i, (lp, v) in enumerate(expected)))
    worst = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    scale = max(b.abs().max().item() for b in ref)
    assert worst <= 1e-4 * max(1.0, scale)


def test_select_keeps_only_used_prompts_and_trims_padding(setup):
    model, head, tok, rollouts = setup
    batch = _pack(rollouts, tok.pad_token_id)
    part = batch.select(torch.tensor([4, 5]))  # two samples of the second prompt
    assert len(part.prompt_ids) == 1 and part.prompt_of.tolist() == [0, 0]
    assert part.prompt_mask.all()  # one prompt: no left padding left
    assert part.completion_ids.shape[1] == max(len(rollouts[i].completion_ids) for i in (4, 5))
    with torch.no_grad():
        sub, _ = forward_policy(model, None, part, with_values=False)
        full, _ = forward_policy(model, None, batch, with_values=False)
    for j, i in enumerate((4, 5)):
        m = len(rollouts[i].completion_ids)
        assert torch.allclose(sub[j, :m], full[i, :m], atol=1e-5)


def test_no_deprecated_transformers_arguments(setup):
    # transformers 5.x renamed the KV-cache argument past_key_values -> cache and removes the old name in 5.40
    # (pyproject allows <6): the sampler (both attention paths) and this forward pass must use the current name.
    model, head, tok, rollouts = setup
    task = load_task("synthetic", level=2)
    prompts = [task.prompt(p) for p in task.problems("test")[:2]]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for shared in (True, False):
            sample(model, tok, prompts, 2, SamplingParams(max_new_tokens=6, seed=0, shared_prefix_attention=shared))
        forward_policy(model, head, _pack(rollouts, tok.pad_token_id), with_values=True)


def test_orm_step_rewards_are_potential_shaping_that_telescopes_to_the_final_score(tiny_model_dir):
    """--reward orm --orm-mode step: the reward at the end of step j is s_j - s_{j-1} (s_0 = 0.5, the ORM's
    p(correct) before any step), and the last token gets final - s_last, so a rollout's rewards sum to
    final - 0.5. Hand numbers: steps score 0.6 (and 0.9), the whole text 0.8 -> +0.1 (+0.3), then 0.8 - 0.6
    (or -0.1) at the end: sum 0.3 = 0.8 - 0.5 either way."""
    from types import SimpleNamespace

    from mathrl.rollouts import _add_step_rewards
    from mathrl.models import load_tokenizer
    from mathrl.tasks import load_task

    task = load_task("synthetic", level=1)
    tok = load_tokenizer(str(tiny_model_dir))
    p = task.problems("train")[0]
    text = " " + task.target(p).strip()
    spans = task.step_spans(text)
    assert len(spans) >= 1
    ends = [end for _, end in spans]

    class Scorer:
        def score_texts(self, prompts, texts):
            return [0.8 if t == text else [0.6, 0.9][ends.index(len(t))] for t in texts]

    ids = tok(text, add_special_tokens=False)["input_ids"]
    rollout = SimpleNamespace(text=text, completion_ids=ids, prompt_index=0)
    rewards = torch.zeros((1, len(ids)))
    _add_step_rewards(task, tok, Scorer(), [rollout], [p], [""], ["q"], rewards, "orm")  # no revealed prefix
    assert float(rewards.sum()) == pytest.approx(0.8 - 0.5)
    nonzero = rewards[0][rewards[0] != 0].tolist()
    # +0.1 after step 1 (+0.3 after step 2), then the final correction 0.8 - s_last on the last token ("#### N")
    scores = [0.6, 0.9][: len(spans)]
    assert nonzero == pytest.approx([0.1, 0.3][: len(spans)] + [0.8 - scores[-1]])


def test_compiled_forward_equals_eager_forward(setup):
    # --compile: the RL loops' passes over packed rollouts through compiled blocks (the shared-prompt KV cache path
    # included) give the eager log-probs, values and gradients, for two batches of different shapes
    import torch._dynamo
    from torch._dynamo.utils import counters

    from mathrl.compile import compiled

    model, head, tok, rollouts = setup
    model.train()
    counters.clear()
    fast = compiled(model)
    params = list(model.parameters()) + list(head.parameters())
    for part in (rollouts, rollouts[:5]):
        batch = _pack(part, tok.pad_token_id)
        outs = []
        for m in (model, fast):
            for p in params:
                p.grad = None
            logp, values = forward_policy(m, head, batch, with_values=True)
            mask = batch.action_mask
            (torch.where(mask, logp, 0).sum() + torch.where(mask, values, 0).pow(2).sum()).backward()
            outs.append((logp.detach(), values.detach(), [p.grad.clone() for p in params if p.grad is not None]))
        (lp_e, v_e, g_e), (lp_c, v_c, g_c) = outs
        mask = batch.action_mask
        assert torch.allclose(lp_c[mask], lp_e[mask], atol=1e-5) and torch.allclose(v_c[mask], v_e[mask], atol=1e-5)
        assert len(g_c) == len(g_e)
        worst = max((a - b).abs().max().item() for a, b in zip(g_c, g_e))
        scale = max(b.abs().max().item() for b in g_e)
        assert worst <= 1e-4 * max(1.0, scale)
    assert counters["stats"]["unique_graphs"] >= 1  # it was compiled (not the eager fallback)


def test_group_minibatches_hold_whole_groups_and_every_row_once():
    # --minibatch group: 8 groups of 4 rows; minibatches of 8 rows hold 2 whole groups each, every row once per
    # epoch, the group order differing between epochs; kept rows only (a dropped group never appears)
    from mathrl.rollouts import minibatches

    groups = torch.arange(8).repeat_interleave(4)
    mbs = list(minibatches(torch.arange(32), 8, 2, seed=0, groups=groups))
    assert len(mbs) == 8
    for mb in mbs:
        assert len(mb) == 8 and len(torch.unique(groups[mb])) == 2
        assert all(int((groups[mb] == g).sum()) == 4 for g in torch.unique(groups[mb]))
    for epoch in (mbs[:4], mbs[4:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(32))
    assert [groups[mb[0]].item() for mb in mbs[:4]] != [groups[mb[0]].item() for mb in mbs[4:]]
    keep = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])  # groups 1 and 3
    got = list(minibatches(keep, 4, 1, seed=0, groups=groups))
    assert sorted(groups[mb[0]].item() for mb in got) == [1, 3] and all(len(torch.unique(groups[mb])) == 1 for mb in got)
    # rollout order: a random permutation of the rows, as before (the same draw for the same seed)
    rows = list(minibatches(torch.arange(32), 8, 1, seed=0))
    assert torch.equal(torch.cat(rows), torch.randperm(32, generator=torch.Generator().manual_seed(0)))


def test_old_values_from_the_samplers_hidden_states_equal_a_plain_forward_pass(setup):
    """PPO reads its old values off the hidden states the sampler kept (``Rollout.hidden``) instead of a pass of
    its own: per rollout the same V(prefix) as a plain forward pass over prompt + completion (to float tolerance:
    the sampler's cached attention and batch shapes differ), shared-prompt cascade or replicated cache alike."""
    from mathrl.rollouts import values_from_rollouts

    model, head, tok, rollouts = setup
    model.eval()
    prompts = [r.prompt_ids for r in rollouts[::3]]
    for shared in (True, False):
        params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=3, hidden_states=True,
                                shared_prefix_attention=shared, compact_fraction=0.1)
        kept = sample(model, tok, prompts, 3, params)
        assert [r.completion_ids for r in kept] == [r.completion_ids for r in rollouts]
        assert all(r.hidden.shape == (len(r.completion_ids), model.config.hidden_size) for r in kept)
        batch = _pack(kept, tok.pad_token_id)
        values = values_from_rollouts(head, kept, batch.sampled_logprobs, 5, "cpu")  # micro-batches of 5 rows
        with torch.no_grad():
            expected = plain(model, head, kept)
        for i, (_, v) in enumerate(expected):
            assert torch.allclose(values[i, : len(v)], v, atol=1e-5)
            assert not values[i, len(v):].any()  # past the completion: 0
    assert sample(model, tok, prompts[:1], 1, SamplingParams(max_new_tokens=4))[0].hidden is None  # off by default
