"""The rollout sampler: K completions per prompt, fast, bounded in memory, reproducible.

It drives any Hugging Face causal LM through the model's own ``forward`` with a KV cache (no copy of any
architecture), and differs from ``model.generate(num_return_sequences=K)`` where that costs time:

1. **Prefix sharing in the prefill.** Each prompt is prefilled once for its K samples; ``generate`` repeats
   every prompt K times first and pays K prefills.
2. **Prefix sharing in attention (cascade attention).** During decoding, a prompt's keys/values are stored
   once per prompt and each new token attends to [its prompt ; its own completion] with one softmax over both
   parts (``kv_cache.cascade_attention``, registered through transformers' ``AttentionInterface``). Decoding a tiny
   model on CPU is bound by reading the KV cache; reading the prompt part once per prompt instead of once per
   sample cut a decode step by ~1.5x at K=16. Models whose cache is not plain full attention (sliding windows,
   linear attention) take the replicated path below instead.
3. **A preallocated cache.** ``DynamicCache`` grows by ``torch.cat`` every step, copying the whole cache (64%
   of a decode step measured on CPU); our cache layer (``kv_cache.PreallocatedLayer``) writes each step into
   buffers sized for the final length.
4. **Finished rows leave the batch.** Rows form a grid of prompts x samples; when a quarter of the grid has
   finished (EOS, a stop string, the length limit) it is repacked to the rows still running.
5. **A token budget.** Prompts are processed in chunks whose cache stays under ``token_budget`` tokens, so
   memory is bounded for any K and any number of prompts.

Randomness is counter-based (``counter_rng``): the uniform number that picks the token at step t of sample j of
a prompt is a hash of (seed, prompt key, j, t), and the token is drawn by inverting the CDF of the (filtered,
tempered) distribution. So a sample depends on its prompt and seed only, not on batching, chunking, ordering or
the number of data-parallel ranks (up to float rounding of the logits in different batch shapes).

Log-probabilities returned are those of the **unmodified model distribution** (temperature 1, no top-k/top-p),
the quantity RL losses need (``log pi(token)``); they equal those of one full forward pass over the finished
sequence (tested to 1e-4 in float32).

Optional calculator tool (GSM8K style): when a completion closes ``<<expr=``, the sampler evaluates ``expr``
with the safe evaluator and forces the tokens of ``result>>``; forced tokens have ``sampled_mask`` False so
losses skip them.

Shapes: P = prompt slots, G = rows per slot, B = P x G rows, V = vocabulary, Lp = prompt length (padded),
t = completion tokens so far, H / Hkv = query / key-value heads, D = head size.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

from mathrl import distributed
from mathrl.counter_rng import key_hash, uniforms
from mathrl.errors import UsageError
from mathrl.kv_cache import CASCADE, Cascade, PreallocatedLayer
from mathrl.models import autocast, kv_cache_arg, kv_cache_of
from mathrl.tasks.calculator import CalculatorError, evaluate, format_number


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``temperature`` 0 means greedy."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1.0: off
    max_new_tokens: int = 128
    stop_strings: tuple[str, ...] = ()
    calculator: bool = False
    seed: int = 0
    token_budget: int = 1 << 17  # cache tokens (rows x length) per chunk
    compact_fraction: float = 0.25  # repack the running batch when this fraction of it has finished
    shared_prefix_attention: bool = True  # read each prompt's keys/values once for its K samples
    step_end: str = ""  # with step_marker: a sampled token containing this text ends a step...
    step_marker: tuple[int, ...] = ()  # ...and these token ids are forced after it (return-conditioned RL)
    hidden_states: bool = False  # return each completion token's preceding last-layer hidden state (Rollout.hidden)

    def validate(self) -> None:
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise UsageError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.token_budget < 1:
            raise UsageError(f"token_budget must be >= 1, got {self.token_budget}")


def sampling_params(sampling, stop_strings: Sequence[str] = (), **fields) -> SamplingParams:
    """The ``SamplingParams`` of a command's ``settings.Sampling`` group (its temperature, completion length and
    token budget) with the task's ``stop_strings``; ``fields``: the others a call site sets (seed, calculator, step
    markers), or one it sets otherwise (an evaluation's temperature)."""
    return SamplingParams(**{"temperature": sampling.temperature, "max_new_tokens": sampling.max_new_tokens,
                             "token_budget": sampling.token_budget, "stop_strings": tuple(stop_strings), **fields})


@dataclass
class Rollout:
    """One sampled completion of one prompt.

    ``completion_ids`` include the final EOS token when the completion ended with one; ``logprobs[i]`` is
    log pi(completion_ids[i] | prefix) under the model; ``sampled_mask[i]`` is False for tokens the calculator
    inserted. ``text`` is the decoded completion without special tokens, cut before a stop string.
    ``finish_reason`` is "eos", "stop" or "length". ``hidden`` (with ``SamplingParams.hidden_states``): (C, H), row i
    the model's last hidden state (``output_hidden_states[-1]``) at the position before completion token i, the
    state a value head reads for V(prefix) (PPO's old values without a pass of their own).
    """

    prompt_index: int
    sample_index: int
    key: str
    prompt_ids: list[int]
    completion_ids: list[int]
    logprobs: list[float]
    sampled_mask: list[bool]
    text: str
    finish_reason: str
    meta: dict = field(default_factory=dict)
    hidden: torch.Tensor | None = None


def completion_stats(rollouts: Sequence[Rollout]) -> dict:
    """Training-curve statistics of a batch of rollouts: ``completion_tokens`` (mean length),
    ``truncation_rate`` (the fraction cut at the length limit) and ``entropy_estimate``, the mean -log pi of the
    sampled tokens (a Monte-Carlo estimate of the per-token entropy of the sampling distribution;
    calculator-inserted tokens excluded). Temperature-1 sampling is assumed for the entropy reading."""
    if not rollouts:
        return {}
    sampled = [-lp for r in rollouts for lp, m in zip(r.logprobs, r.sampled_mask) if m]
    return {"completion_tokens": sum(len(r.completion_ids) for r in rollouts) / len(rollouts),
            "entropy_estimate": sum(sampled) / len(sampled) if sampled else float("nan"),
            "truncation_rate": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts)}


# ----------------------------------------------------------------------------------------------------------
# Token selection


def _select(logits: torch.Tensor, params: SamplingParams, row_keys: torch.Tensor, step: int, n_tokens: int = 0):
    """Pick one token per row. logits (B, V) float32 -> (token (B,), logprob under the raw model (B,)).

    ``n_tokens`` > 0: only ids below it have a token (an embedding table padded beyond the tokenizer, as in every
    Qwen2 checkpoint: 151,936 rows for 151,665 tokens); the rows above are never picked. The log-prob stays that
    of the unmodified distribution over all V rows, the one the trainer's forward pass computes."""
    logp = torch.log_softmax(logits, dim=-1)  # (B, V)
    if 0 < n_tokens < logits.shape[-1]:
        logits = logits.clone()
        logits[:, n_tokens:] = float("-inf")
    if params.temperature == 0:
        token = logits.argmax(dim=-1)
    else:
        scores = logits / params.temperature
        if params.top_k and params.top_k < scores.shape[-1]:
            kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # (B, V)
        if params.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            before = sorted_p.cumsum(dim=-1) - sorted_p  # mass of strictly more likely tokens
            sorted_p = sorted_p.masked_fill(before >= params.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        cdf = probs.double().cumsum(dim=-1)  # (B, V)
        u = uniforms(row_keys, step).to(cdf.device) * cdf[:, -1]  # (B,)
        token = torch.searchsorted(cdf, u.unsqueeze(-1)).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
        # a zero-probability token can only be hit at a flat stretch of the CDF through rounding: step back. On
        # CPU the argmax over (B, V) is taken only when that happened (taken always: ~1.5% of the sampler's time);
        # on an accelerator the test would wait for the device every step, so the select is unconditional there
        zero = probs.gather(-1, token.unsqueeze(-1)).squeeze(-1) <= 0
        if zero.device.type != "cpu" or bool(zero.any()):
            token = torch.where(zero, probs.argmax(dim=-1), token)
    return token, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------------------
# The sampler


def _eos_ids(model, tokenizer) -> list[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


class _TextWatch:
    """Stop strings and calculator triggers, checked only on rows whose new token could complete one."""

    def __init__(self, tokenizer, stop_strings: Sequence[str], calculator: bool, step_end: str = "",
                 step_marker: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.stop_strings = tuple(s for s in stop_strings if s)
        self.calculator = calculator
        self.step_marker = list(step_marker) if step_end else []
        last_chars = {s[-1] for s in self.stop_strings} | ({"="} if calculator else set())
        vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        texts = [tokenizer.convert_tokens_to_string([t]) if t is not None else "" for t in vocab]
        self.trigger = torch.tensor([any(c in t for c in last_chars) for t in texts], dtype=torch.bool)
        # tokens that end a step (return-conditioned sampling forces the marker after them)
        self.step_token = torch.tensor([bool(step_end) and step_end in t for t in texts], dtype=torch.bool)
        self.trigger |= self.step_token
        self.tail = max([len(s) for s in self.stop_strings] + [8]) + 4  # tokens to decode, at least 1 char each

    @property
    def active(self) -> bool:
        return bool(self.stop_strings) or self.calculator or bool(self.step_marker)


def sample(model, tokenizer, prompts: Sequence[str | Sequence[int]], k: int, params: SamplingParams,
           keys: Sequence[str] | None = None, progress=None) -> list[Rollout]:
    """Sample ``k`` completions for each prompt; returns rollouts ordered by (prompt, sample).

    ``prompts`` are texts or token ids; ``keys`` (default: the prompt index) name each prompt for the random
    stream, so the same key, seed and sample index always give the same completion. ``progress`` is an optional
    callable(n_rows_done) for progress bars.
    """
    params.validate()
    if k < 1:
        raise UsageError(f"K (samples per prompt) must be >= 1, got {k}")
    if keys is None:
        keys = [str(i) for i in range(len(prompts))]
    if len(keys) != len(prompts):
        raise UsageError("keys and prompts differ in length")
    if distributed.world_size() > 1:
        # under torchrun: this rank samples prompts r, r+N, ...; every rank gets all rollouts back. The random
        # stream is keyed by (seed, key, sample, step), so the samples do not depend on the number of ranks.
        with distributed.unsharded(model):  # FSDP: ranks run different numbers of forward passes
            local = _sample_local(model, tokenizer, distributed.shard(prompts), k, params, distributed.shard(keys),
                                  progress)
        groups = distributed.gather_shards([local[i : i + k] for i in range(0, len(local), k)], len(prompts))
        for i, group in enumerate(groups):
            for r in group:
                r.prompt_index = i
        return [r for group in groups for r in group]
    return _sample_local(model, tokenizer, prompts, k, params, keys, progress)


def _sample_local(model, tokenizer, prompts, k: int, params: SamplingParams, keys, progress) -> list[Rollout]:
    prompt_ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if isinstance(p, str) else list(p)
                  for p in prompts]
    n_ctx = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    for i, ids in enumerate(prompt_ids):
        if not ids:
            raise UsageError(f"prompt {i} is empty")
        if len(ids) >= n_ctx:
            raise UsageError(f"prompt {i} has {len(ids)} tokens; the model's context is {n_ctx}")
        if max(ids) >= vocab_rows or min(ids) < 0:
            raise UsageError(f"prompt {i} has a token id outside the model's vocabulary ({vocab_rows})")

    watch = _TextWatch(tokenizer, params.stop_strings, params.calculator, params.step_end, params.step_marker)
    eos = _eos_ids(model, tokenizer)
    # Slots = (prompt, up to G samples). Longest prompts first, so chunks hold prompts of similar length.
    order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
    results: dict[tuple[int, int], Rollout] = {}
    start = 0
    while start < len(order):
        longest = len(prompt_ids[order[start]])
        cap = min(longest + params.max_new_tokens, n_ctx)
        rows = max(1, params.token_budget // cap)  # rows whose full cache fits the budget
        g = min(k, rows)
        per_prompt = math.ceil(k / g)
        n_prompts = max(1, rows // (g * per_prompt))
        chunk_prompts = order[start : start + n_prompts]
        slots = [(i, list(range(j, min(k, j + g)))) for i in chunk_prompts for j in range(0, k, g)]
        with autocast(model):
            chunk = _sample_chunk(model, tokenizer, prompt_ids, keys, slots, g, params, watch, eos, n_ctx)
        for r in chunk:
            results[(r.prompt_index, r.sample_index)] = r
        start += len(chunk_prompts)
        if progress is not None:
            progress(len(chunk_prompts) * k)
    return [results[(i, j)] for i in range(len(prompt_ids)) for j in range(k)]


@torch.no_grad()
def _sample_chunk(model, tokenizer, prompt_ids, keys, slots, g: int, params: SamplingParams, watch: _TextWatch,
                  eos: list[int], n_ctx: int) -> list[Rollout]:
    """Decode one chunk: ``slots`` = [(prompt index, sample indices)], G rows per slot (missing ones are holes).

    Running rows form a slot-major grid of P slots x G rows. Finished rows become holes; when a quarter of the
    grid is holes, it is repacked to the slots that still run, with G = their most live rows.
    """
    from transformers import DynamicCache

    device = model.get_input_embeddings().weight.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    n_slots = len(slots)
    p_len = max(len(prompt_ids[i]) for i, _ in slots)
    max_new = min(params.max_new_tokens, n_ctx - p_len)

    # step 1: prefill each slot's prompt once, left-padded: (P, Lp)
    ids = torch.full((n_slots, p_len), pad, dtype=torch.long)
    mask = torch.zeros((n_slots, p_len), dtype=torch.long)
    for s, (i, _) in enumerate(slots):
        n = len(prompt_ids[i])
        ids[s, p_len - n :] = torch.tensor(prompt_ids[i])
        mask[s, p_len - n :] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_(min=0),
                **kv_cache_arg(DynamicCache(config=model.config)), use_cache=True, logits_to_keep=1,
                output_hidden_states=params.hidden_states)
    cache = kv_cache_of(out)

    # step 2: the grid of rows. row_of: slot of each row; holes (missing samples) start dead.
    row_slot = torch.arange(n_slots).repeat_interleave(g)  # (B,)
    owner = [(i, js[c]) if c < len(js) else None for i, js in slots for c in range(g)]  # (prompt, sample) per row
    live = torch.tensor([o is not None for o in owner])
    out_index = torch.tensor([n if o is not None else -1 for n, o in enumerate(owner)])  # row -> output row
    dev_rows = row_slot.to(device)
    logits = out.logits[:, -1, :].float().index_select(0, dev_rows)  # (B, V)
    hidden = out.hidden_states[-1][:, -1].index_select(0, dev_rows) if params.hidden_states else None  # (B, H)
    cascade, prefix_bias, full_mask = _grid_cache(model, cache, params, mask, dev_rows, max_new)
    next_pos = mask.sum(-1).index_select(0, dev_rows)  # (B,) position of the first completion token
    row_keys = torch.tensor([key_hash(params.seed, keys[o[0]], o[1]) if o else 0 for o in owner], dtype=torch.long)

    n_out = len(owner)
    out_tokens = torch.zeros((n_out, max_new), dtype=torch.long)
    out_logp = torch.zeros((n_out, max_new), dtype=torch.float32)
    out_sampled = torch.ones((n_out, max_new), dtype=torch.bool)
    lengths = torch.zeros(n_out, dtype=torch.long)
    # (rows, C, H), in the dtype the model computes in (bf16 under bf16 autocast: half the memory, and what a
    # separate pass would give the value head); on CPU, as the rollouts are
    out_hidden = (torch.zeros((n_out, max_new, hidden.shape[-1]), dtype=hidden.dtype) if hidden is not None
                  else None)
    reasons = [""] * n_out
    forced: dict[int, list[int]] = {}  # output row -> calculator tokens still to feed
    eos_cpu = torch.tensor(eos)
    slot_count = n_slots
    attn_impl = model.config._attn_implementation
    n_tokens = len(tokenizer)  # ids at or above it are embedding rows without a token

    for t in range(max_new):
        token, logp = _select(logits, params, row_keys, t, n_tokens)
        token, logp = token.cpu(), logp.float().cpu()
        sampled = torch.ones_like(token, dtype=torch.bool)
        rows = out_index.clamp(min=0)  # holes write into row 0's junk area, never read (live is False)
        # calculator output replaces the sampled token (rows scanned only while some row has tokens to feed)
        waiting = [pos for pos in live.nonzero().flatten().tolist() if int(out_index[pos]) in forced] if forced else []
        for pos in waiting:
            row = int(out_index[pos])
            tok = forced[row].pop(0)
            token[pos], sampled[pos] = tok, False
            logp[pos] = torch.log_softmax(logits[pos].float(), -1)[tok].cpu()
            if not forced[row]:
                del forced[row]
        live_rows = rows[live]
        out_tokens[live_rows, t] = token[live]
        out_logp[live_rows, t] = logp[live]
        out_sampled[live_rows, t] = sampled[live]
        lengths[live_rows] = t + 1
        if hidden is not None:  # the state that produced this step's logits: before token t
            out_hidden[live_rows, t] = hidden[live.to(hidden.device)].cpu()

        done = live & torch.isin(token, eos_cpu)
        for pos in done.nonzero().flatten().tolist():
            reasons[int(out_index[pos])] = "eos"
        if watch.active:
            for pos in (live & ~done & watch.trigger[token]).nonzero().flatten().tolist():
                row = int(out_index[pos])
                tail = tokenizer.decode(out_tokens[row, max(0, t + 1 - watch.tail) : t + 1].tolist())
                if any(stop in tail for stop in watch.stop_strings):
                    done[pos] = True
                    reasons[row] = "stop"
                elif watch.calculator and row not in forced and tail.endswith("="):
                    inserted = _calculator_tokens(tokenizer, out_tokens[row, : t + 1].tolist())
                    if inserted:
                        forced[row] = inserted
                elif watch.step_marker and sampled[pos] and watch.step_token[token[pos]]:
                    forced.setdefault(row, []).extend(watch.step_marker)
        live &= ~done
        if not live.any() or t + 1 == max_new:
            break
        if int(live.sum()) <= (1 - params.compact_fraction) * len(live):
            # repack: keep the slots that still run, each with G' = the most live rows any of them has
            per_slot = live.view(slot_count, -1)
            counts = per_slot.sum(-1)
            g_new = int(counts.max())
            keep_slots = counts.nonzero().flatten()
            if len(keep_slots) * g_new < len(live):
                grid = []
                for s in keep_slots.tolist():
                    alive_rows = (per_slot[s].nonzero().flatten() + s * per_slot.shape[1]).tolist()
                    grid += alive_rows + [alive_rows[0]] * (g_new - len(alive_rows))  # padded with dead copies
                sel = torch.tensor(grid)
                is_pad = torch.ones(len(grid), dtype=torch.bool)
                for n, s in enumerate(keep_slots.tolist()):
                    is_pad[n * g_new : n * g_new + int(counts[s])] = False
                live = live.index_select(0, sel) & ~is_pad
                out_index, row_keys, token = out_index.index_select(0, sel), row_keys.index_select(0, sel), token[sel]
                dev_sel = sel.to(device)
                next_pos = next_pos.index_select(0, dev_sel)
                slot_count = len(keep_slots)
                if cascade:
                    dev_slots = keep_slots.to(device)
                    for layer in cache.layers:
                        layer.select(dev_slots, dev_sel)
                    prefix_bias = prefix_bias.index_select(0, dev_slots)
                else:
                    for layer in cache.layers:
                        if hasattr(layer, "select"):
                            layer.select(None, dev_sel)
                        else:
                            layer.batch_select_indices(dev_sel)
                    full_mask = full_mask.index_select(0, dev_sel)
        # decode: feed this step's token to every row of the grid
        step_ids = token.to(device).unsqueeze(-1)
        positions = (next_pos + t).unsqueeze(-1)
        if cascade:
            state = Cascade(cache, prefix_bias)
            model.config._attn_implementation = CASCADE
            try:
                out = model(input_ids=step_ids, position_ids=positions, **kv_cache_arg(cache), use_cache=True,
                            output_hidden_states=params.hidden_states, **{CASCADE: state})
            finally:
                model.config._attn_implementation = attn_impl
            if state.calls != len(cache.layers):
                raise RuntimeError(f"{type(model).__name__} does not route attention through transformers' "
                                   "attention interface; sample with shared_prefix_attention=False")
        else:
            out = model(input_ids=step_ids, attention_mask=full_mask[:, : p_len + t + 1], position_ids=positions,
                        **kv_cache_arg(cache), use_cache=True, output_hidden_states=params.hidden_states)
        logits = out.logits[:, -1, :].float()
        hidden = out.hidden_states[-1][:, -1] if params.hidden_states else None

    return _to_rollouts(tokenizer, owner, keys, prompt_ids, out_tokens, out_logp, out_sampled, lengths, reasons,
                        watch, out_hidden)


def _grid_cache(model, cache, params: SamplingParams, mask: torch.Tensor, dev_rows: torch.Tensor, max_new: int):
    """Turn the prefill's cache (P prompt slots) into the decoding grid's (B rows): shared-prefix layers and the
    prompt padding bias for cascade attention where every layer is plain full attention, else each row's own
    copy of its prompt (and the full attention mask). Returns (cascade?, prefix_bias or None, full_mask or
    None); mask: (P, Lp) prompt mask, dev_rows: (B,) slot of each row."""
    from transformers.cache_utils import DynamicLayer

    n_slots, p_len = mask.shape
    b, device = len(dev_rows), mask.device
    prefix_bias = full_mask = None
    cascade = params.shared_prefix_attention and all(type(layer) is DynamicLayer for layer in cache.layers)
    if params.shared_prefix_attention and not cascade:
        # printed once per model class (Python shows a warning once per message and place)
        warnings.warn(f"{type(model).__name__}: its cache is not plain full attention (sliding windows, linear "
                      "attention); sampling copies each prompt's keys/values per sample (no shared-prefix attention)",
                      stacklevel=2)
    if cascade:
        cache.layers = [PreallocatedLayer.shared(layer.keys, layer.values, b, max_new) for layer in cache.layers]
        prefix_bias = torch.zeros((n_slots, 1, 1, p_len), device=device)
        prefix_bias.masked_fill_(mask[:, None, None, :] == 0, float("-inf"))
    else:
        for i, layer in enumerate(cache.layers):
            if type(layer) is DynamicLayer:
                cache.layers[i] = PreallocatedLayer(layer.keys.index_select(0, dev_rows),
                                                    layer.values.index_select(0, dev_rows), p_len + max_new)
            else:  # other layer kinds (sliding windows, linear attention) keep their own logic
                layer.batch_select_indices(dev_rows)
        full_mask = torch.ones((b, p_len + max_new), dtype=torch.long, device=device)
        full_mask[:, :p_len] = mask.index_select(0, dev_rows)
    return cascade, prefix_bias, full_mask


def _to_rollouts(tokenizer, owner, keys, prompt_ids, out_tokens, out_logp, out_sampled, lengths, reasons,
                 watch: _TextWatch, out_hidden: torch.Tensor | None = None) -> list[Rollout]:
    """The finished rows of a chunk as rollouts: text decoded without EOS and cut at the first stop string."""
    rollouts = []
    for row, o in enumerate(owner):
        if o is None:
            continue
        i, j = o
        n = int(lengths[row])
        comp = out_tokens[row, :n].tolist()
        reason = reasons[row] or "length"
        text = tokenizer.decode(comp[:-1] if reason == "eos" else comp, skip_special_tokens=True)
        if reason == "stop":
            cut = min((text.find(s) for s in watch.stop_strings if s in text), default=len(text))
            text = text[:cut]
        rollouts.append(Rollout(
            prompt_index=i, sample_index=j, key=keys[i], prompt_ids=list(prompt_ids[i]), completion_ids=comp,
            logprobs=out_logp[row, :n].tolist(), sampled_mask=out_sampled[row, :n].tolist(), text=text,
            finish_reason=reason, hidden=out_hidden[row, :n].clone() if out_hidden is not None else None,
        ))
    return rollouts


def _calculator_tokens(tokenizer, completion_ids: list[int]) -> list[int]:
    """Tokens of ``result>>`` when the completion ends inside an open ``<<expr=``; [] otherwise."""
    text = tokenizer.decode(completion_ids[-256:], skip_special_tokens=True)
    open_at = text.rfind("<<")
    if open_at < 0 or text.rfind(">>") > open_at or not text.endswith("="):
        return []
    expr = text[open_at + 2 : -1]
    if "=" in expr:
        return []
    try:
        result = format_number(evaluate(expr))
    except CalculatorError:
        return []  # the model wrote something the calculator rejects: let it continue on its own
    return list(tokenizer(result + ">>", add_special_tokens=False)["input_ids"])
