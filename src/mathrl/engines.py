"""Rollout engines: who samples the completions. ``mathrl`` (the default) is ``sampler.sample``; ``vllm`` is vLLM,
an optional extra (``pip install "mathrl[vllm]"``, docs/engines.md).

A command makes its engine once (``create``) and hands it to every sampling site: ``engine.sample`` has
``sampler.sample``'s arguments and returns the same ``Rollout`` records, so an algorithm does not know which engine
ran. ``Mathrl`` is mathrl's sampler, bit for bit.

The vLLM engine is colocated: one process, created once per run (lazily, at the first sample) from the policy's
directory (its config; the weights always come from the trainer), in vLLM's in-process mode (``VLLM_ENABLE_V1_MULTIPROCESSING=0``). Before each sample it receives the
trainer's current weights when they may have changed since the last push (an optimizer step or an in-place
write since then), through vLLM's in-place ``reload_weights`` worker method: no checkpoint is written. A LoRA policy is pushed as merged weights
(W + scale B A; the trainer's own weights stay unmerged). On CUDA the engine sleeps (weights offloaded, KV cache
freed) between samples, so the learning step has the memory; vLLM's CPU build ignores sleep.

What vLLM cannot do here, and is refused with an error: the calculator tool and forced step markers (RCRL dense
returns), FSDP and torchrun ranks. Randomness: vLLM's CPU sampler crashes on per-request seeds, so the engine
seeds torch's global generator with ``params.seed`` for each call (inside ``torch.random.fork_rng``: the trainer's
random streams are untouched). The same call (prompts in the same order, K, seed, weights, engine settings, thread
count) then gives the same samples; unlike mathrl's counter-based streams, a sample also depends on the batch it
was drawn in (other prompts, their order), so it is neither equal to mathrl's sample nor stable under a change of
batch. Log-probabilities are vLLM's ``raw_logprobs`` (the unmodified model distribution, as mathrl's), computed by
vLLM's kernels: the policy-gradient algorithms recompute them with the trainer and correct the difference
(``losses.truncated_importance_weights``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from mathrl import distributed
from mathrl.errors import RunError, UsageError
from mathrl.models import special_tokens
from mathrl.seeds import rng_state, set_rng_state
from mathrl.settings import ENGINES, one_of
from mathrl.sampler import Rollout, SamplingParams, _eos_ids, sample as mathrl_sample

INSTALL = 'pip install "mathrl[vllm]"'


class Mathrl:
    """mathrl's own sampler (``sampler.sample``) as an engine."""

    name = "mathrl"

    def sample(self, model, tokenizer, prompts: Sequence[str | Sequence[int]], k: int, params: SamplingParams,
               keys: Sequence[str] | None = None, progress=None) -> list[Rollout]:
        """K completions per prompt, ordered by (prompt, sample)."""
        return mathrl_sample(model, tokenizer, prompts, k, params, keys=keys, progress=progress)

    def close(self) -> None:
        pass


def create(policy, sampling, model_dir: str):
    """The engine ``sampling.engine`` (a ``settings.Sampling``) names, to sample for ``policy``: ``Mathrl``, or a
    ``VLLMEngine`` that starts at its first sample, from ``model_dir``, with a KV cache of ``sampling.token_budget``
    tokens. Here only what can be refused at once is checked (vLLM missing, FSDP, torchrun)."""
    one_of(sampling.engine, ENGINES, "engine")
    if sampling.engine == "mathrl":
        return Mathrl()
    if distributed.world_size() > 1 or distributed.is_sharded(policy):
        raise UsageError("--engine vllm runs one colocated engine in one process: not under torchrun or with --fsdp "
                         "(use --engine mathrl, or vLLM's own data/tensor parallelism outside mathrl)")
    _import_vllm()
    return VLLMEngine(str(model_dir), sampling.token_budget)


def check_installed(engine: str) -> None:
    """Refuse at once an engine that is not installed (vLLM is an optional extra): a study checks this before its
    first stage, instead of failing at its first sampling stage after pretraining."""
    one_of(engine, ENGINES, "engine")
    if engine == "vllm":
        _import_vllm()


def _import_vllm():
    # In-process engine core: the only way to hand it the trainer's tensors without a copy through a socket
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM's CPU worker would pin OpenMP threads to cores; the run's --threads stays in charge instead
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM's info lines would bury mathrl's progress
    try:
        import vllm
    except ImportError as e:
        raise UsageError(f"--engine vllm needs vLLM, an optional extra: {INSTALL} (on a CPU machine see "
                         f"docs/engines.md; import failed: {str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None
    except Exception as e:  # noqa: BLE001 - e.g. CUDA-linked torchvision on a CPU machine (docs/engines.md)
        raise UsageError(f"vLLM is installed but does not import ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); see docs/engines.md") from None
    return vllm


def hf_weights(model) -> list[tuple[str, torch.Tensor]]:
    """The policy's weights under its Hugging Face checkpoint names (what vLLM loads). A PEFT LoRA policy gives
    merged weights, base + the adapter's delta (``get_delta_weight``), computed aside: the trainer's modules are
    not merged in place (unmerging would round the base weights). Embedding rows trained in full beside the
    adapters (``trainable_token_indices``: RCRL's return tokens) are written into their table the same way
    (``get_merged_weights``), under the table's own name."""
    if not hasattr(model, "get_base_model"):
        return [(n, t.detach()) for n, t in model.state_dict().items()]
    from peft.tuners.lora import LoraLayer
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    base = model.get_base_model()
    merged = {}
    for module_name, module in base.named_modules():
        if isinstance(module, LoraLayer) and not module.merged:
            w = module.get_base_layer().weight.detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    w += module.get_delta_weight(adapter).detach().to(w.dtype)
            merged[f"{module_name}.base_layer.weight"] = w
        elif isinstance(module, TrainableTokensLayer) and not module.merged:
            merged[f"{module_name}.base_layer.weight"] = module.get_merged_weights(module.active_adapters).detach()
    out = []
    for n, t in base.state_dict().items():
        if "lora_" in n or ".trainable_tokens_" in n:
            continue
        out.append((n.replace(".token_adapter.base_layer.", ".").replace(".base_layer.", "."), merged.get(n, t.detach())))
    return out


def check_tokenizers(ours, theirs, where: str) -> None:
    """vLLM decodes the stop strings with its own tokenizer: it must be ours (same vocabulary, same EOS)."""
    if ours.get_vocab() != theirs.get_vocab() or ours.eos_token_id != theirs.eos_token_id:
        raise UsageError(f"{where}: vLLM's tokenizer differs from mathrl's ({len(theirs)} vs {len(ours)} tokens, "
                         f"EOS {theirs.eos_token_id} vs {ours.eos_token_id}); the engine would stop and decode "
                         "differently: use --engine mathrl or fix the model directory's tokenizer files")


class VLLMEngine:
    """A colocated vLLM ``LLM`` for one policy (see the module docstring)."""

    name = "vllm"

    def __init__(self, model_dir: str, token_budget: int):
        # optimizer steps taken in this process since the engine was made: the weights may have changed (_push)
        self.optimizer_steps = 0
        self.step_hook = register_optimizer_step_post_hook(self._count_step)
        self.model_dir = model_dir
        self.token_budget = token_budget
        self.llm = None
        self.n_ctx = 0
        self.pushed = None  # the (id, version) of every parameter at the last push
        self.tokenizer_dir = None
        self.sleeps = False  # CUDA: sleep between samples
        self.asleep = False

    # -- start -------------------------------------------------------------------------------------------------
    def _start(self, model, tokenizer) -> None:
        vllm = _import_vllm()
        from vllm import LLM, ModelRegistry
        from vllm.platforms import current_platform

        config = model.config
        arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
        device = next(model.parameters()).device.type
        if current_platform.device_type != device:
            raise UsageError(f"the installed vLLM build runs on {current_platform.device_type}, the policy on {device}: "
                             "install the vLLM build for this device (docs/engines.md) or use --engine mathrl")
        self.n_ctx = int(getattr(config, "max_position_embeddings", 0) or 2048)
        rows = model.get_input_embeddings().weight.shape[0]
        dtype = getattr(model, "mathrl_autocast", None) or next(model.parameters()).dtype
        # KV cache: --token-budget tokens (as mathrl's sampler), at least one full-length sequence
        per_token = _kv_bytes_per_token(config, dtype)
        kv_bytes = max(self.token_budget, self.n_ctx) * per_token if per_token else 1 << 30
        # the trainer's tokenizer, as it is now (RCRL adds return tokens to it), is the engine's
        self.tokenizer_dir = tempfile.mkdtemp(prefix="mathrl-vllm-tokenizer-")
        tokenizer.save_pretrained(self.tokenizer_dir)
        shutil.copy(os.path.join(self.model_dir, "config.json"), self.tokenizer_dir)  # vLLM reads it beside a tokenizer
        self.sleeps = device == "cuda"
        state = rng_state()  # vLLM seeds Python's, numpy's and torch's global generators when it starts
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op
        try:
            self.llm = LLM(model=self.model_dir, tokenizer=self.tokenizer_dir, dtype=str(dtype).removeprefix("torch."),
                           max_model_len=self.n_ctx, enforce_eager=device == "cpu", kv_cache_memory_bytes=kv_bytes,
                           # the architecture from the directory, the weights from the trainer (pushed before the
                           # first sample): its embedding table may have grown since (RCRL's return tokens)
                           hf_overrides={"vocab_size": rows}, load_format="dummy",
                           enable_sleep_mode=self.sleeps, enable_prefix_caching=True, seed=0)
        except Exception as e:  # noqa: BLE001 - whatever vLLM raises, the user gets one line
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

            cleanup_dist_env_and_memory()  # a half-started engine leaves its process group behind
            supported = arch in ModelRegistry.get_supported_archs()
            what = "" if supported else f"{arch} is not among vLLM {vllm.__version__}'s architectures; "
            raise UsageError(f"vLLM cannot load {self.model_dir} ({what}{type(e).__name__}: "
                             f"{(str(e).splitlines() or [''])[0][:300]}); use --engine mathrl") from None
        finally:
            torch.set_num_threads = set_num_threads
            set_rng_state(state)
        check_tokenizers(tokenizer, self.llm.get_tokenizer(), self.model_dir)

    def _count_step(self, optimizer, args, kwargs) -> None:
        self.optimizer_steps += 1

    def close(self) -> None:
        self.step_hook.remove()
        if self.llm is not None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the process may be exiting
                pass
            self.llm = None
        if self.tokenizer_dir:
            shutil.rmtree(self.tokenizer_dir, ignore_errors=True)
            self.tokenizer_dir = None

    # -- weights -----------------------------------------------------------------------------------------------
    def _push(self, model) -> None:
        """Hand the engine the trainer's weights if they may have changed since the last push: an optimizer step
        was taken (fused AdamW writes parameters without bumping their version counters, measured on torch 2.13),
        or a parameter was written in place otherwise (``load_state_dict``, a resume), which bumps its counter."""
        fingerprint = (self.optimizer_steps, tuple((id(p), p._version) for p in model.parameters()))
        if fingerprint == self.pushed:
            return
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(hf_weights(model)),
                                                          "is_checkpoint_format": True})
        # prefix caching shares a prompt's keys/values among its K samples; the cached ones are the old weights'
        self.llm.reset_prefix_cache()
        self.pushed = fingerprint

    # -- sample ------------------------------------------------------------------------------------------------
    def sample(self, model, tokenizer, prompts, k: int, params: SamplingParams, keys=None, progress=None
               ) -> list[Rollout]:
        params.validate()
        if k < 1:
            raise UsageError(f"K (samples per prompt) must be >= 1, got {k}")
        if params.calculator or params.step_marker:
            raise UsageError("--engine vllm cannot insert tokens while sampling (the calculator tool, RCRL's dense "
                             "step markers): use --engine mathrl")
        if params.hidden_states:  # a caller that asks for them gets them or an error, never rollouts without them
            raise UsageError("--engine vllm keeps no hidden states (Rollout.hidden); compute them with a forward pass "
                             "(rollouts.value_estimates) or use --engine mathrl")
        keys = [str(i) for i in range(len(prompts))] if keys is None else list(keys)
        if len(keys) != len(prompts):
            raise UsageError("keys and prompts differ in length")
        prompt_ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) if isinstance(p, str) else list(p)
                      for p in prompts]
        if self.llm is None:
            self._start(model, tokenizer)
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise UsageError(f"prompt {i} is empty")
            if len(ids) >= self.n_ctx:
                raise UsageError(f"prompt {i} has {len(ids)} tokens; the model's context is {self.n_ctx}")
        from vllm import SamplingParams as VP
        from vllm.inputs import TokensPrompt

        # vLLM matches stop strings in text without special tokens, so a stop string that is one special token (a
        # chat template's end of turn, runsetup.end_of_turn) stops it as a token id instead
        special = special_tokens(tokenizer)
        eos = sorted({*_eos_ids(model, tokenizer),
                      *(tokenizer.convert_tokens_to_ids(s) for s in params.stop_strings if s in special)})
        rows = model.get_input_embeddings().weight.shape[0]
        allowed = list(range(len(tokenizer))) if len(tokenizer) < rows else None  # as mathrl: no id without a token
        sps = [VP(n=k, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                  max_tokens=min(params.max_new_tokens, self.n_ctx - len(ids)), logprobs=0,
                  stop=list(s for s in params.stop_strings if s), stop_token_ids=eos, skip_special_tokens=True,
                  allowed_token_ids=allowed) for ids in prompt_ids]
        state = rng_state()
        try:
            if self.asleep:
                self.llm.wake_up()
                self.asleep = False
            self._push(model)
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.sleeps else []):
                torch.manual_seed(params.seed)
                outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], sps,
                                         use_tqdm=False)
            if self.sleeps:  # level 1: weights offloaded to host memory, KV cache freed, until the next sample
                self.llm.sleep(level=1)
                self.asleep = True
        except (UsageError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the engine died: one line; the run's last checkpoint stays
            self.close()
            raise RunError(f"the vLLM engine failed mid-run ({type(e).__name__}: "
                           f"{(str(e).splitlines() or [''])[0][:300]}); the last checkpoint is kept: rerun with "
                           "--resume (with --engine vllm or mathrl)") from None
        finally:
            set_rng_state(state)
        rollouts = []
        for i, out in enumerate(outs):
            if len(out.outputs) != k:
                raise RunError(f"the vLLM engine returned {len(out.outputs)} samples for prompt {i}, not {k}")
            for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index)):
                rollouts.append(_rollout(tokenizer, i, j, keys[i], prompt_ids[i], c, params.stop_strings))
        if progress is not None:
            progress(len(rollouts))
        return rollouts


def _kv_bytes_per_token(config, dtype) -> int | None:
    """Keys and values of one token in every layer, from a Llama-style config (None where it does not name the
    sizes; the engine then takes 1 GiB)."""
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // heads if heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    return 2 * layers * kv_heads * head_dim * torch.tensor([], dtype=dtype).element_size()


def _rollout(tokenizer, i: int, j: int, key: str, prompt_ids: list[int], c, stop_strings) -> Rollout:
    """One vLLM completion as mathrl's sampler would have written it: finish reasons eos / stop / length, the text
    decoded by the trainer's tokenizer without EOS and cut before the first stop string."""
    comp = list(c.token_ids)
    if c.finish_reason == "length":
        reason = "length"
    elif c.finish_reason == "stop":
        reason = "stop" if isinstance(c.stop_reason, str) else "eos"
    else:
        raise RunError(f"the vLLM engine ended a completion with {c.finish_reason!r}")
    text = tokenizer.decode(comp[:-1] if reason == "eos" else comp, skip_special_tokens=True)
    if reason == "stop":
        text = text[: min((text.find(s) for s in stop_strings if s and s in text), default=len(text))]
    logprobs = [float(step[token].logprob) for step, token in zip(c.logprobs, comp)]
    return Rollout(prompt_index=i, sample_index=j, key=key, prompt_ids=list(prompt_ids), completion_ids=comp,
                   logprobs=logprobs, sampled_mask=[True] * len(comp), text=text, finish_reason=reason)
