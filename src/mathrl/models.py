"""Models and tokenizers: load any Hugging Face causal LM, or build the tiny embedded default.

The embedded default is a ``transformers`` Llama (rotary positions, RMSNorm, SwiGLU, tied embeddings) sized
0.7M ("tiny", 3 blocks; the default), 0.9M ("tiny4") or 1.9M ("small") parameters, with a byte-level BPE
tokenizer trained locally by ``tokenizers`` on text of the task. Digits are always split into single tokens (as
in Llama and PaLM, whose tokenizers split numbers into digits) so every number is spelled with the same ten digit
tokens. On the synthetic task's closed vocabulary, BPE merges every template word and name into one token,
giving the "closed word vocabulary + single digits" tokenizer; on GSM8K text it is an ordinary small BPE. Both
are saved with ``save_pretrained``, so any HF tool loads them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable

import torch

from mathrl.errors import UsageError
from mathrl.record import model_dir
from mathrl.settings import PRECISIONS

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    ffn: int


# "tiny" has 3 blocks since 2026-12-01: on the embedded default's pretrain + SFT it trained at 0.81 of the
# 4-block model's step time and reached a wider verified-pass@32 gap (test maj@1 0.610, pass@32_verified 0.852;
# 4 blocks: 0.574, 0.754). "tiny4" is the former default, which the results measured before then used
# (docs/results.md).
SIZES = {
    "tiny": ModelSize(hidden=128, layers=3, heads=4, ffn=384),
    "tiny4": ModelSize(hidden=128, layers=4, heads=4, ffn=384),
    "small": ModelSize(hidden=160, layers=6, heads=4, ffn=448),
}


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer with single-digit numbers, trained on ``texts``; returns a HF fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        # One token per digit; the first digit of a number carries the space before it (" 20" -> " 2", "0"),
        # which keeps the ten digit tokens shared by all numbers and saves a token per number.
        pre_tokenizers.Split(Regex(r" ?\d"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", clean_up_tokenization_spaces=False
    )


def tokenizer_corpus(task) -> list[str]:
    """Text a task's tokenizer is trained on: prompts and target solutions of its train split."""
    if task.name == "synthetic":
        stream = task.stream("train", seed=12345)
        problems = [next(stream) for _ in range(4000)]
    else:
        problems = task.problems("train")
    return [task.prompt(p) + task.target(p) for p in problems]


def init_model(task, out: str | os.PathLike, size: str = "tiny", seed: int = 0, vocab_size: int | None = None,
               max_positions: int = 1024):
    """Create the embedded default (random weights + a tokenizer trained on the task) and save it to ``out``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if size not in SIZES:
        raise UsageError(f"unknown model size {size!r} (known: {', '.join(SIZES)})")
    s = SIZES[size]
    # The synthetic vocabulary is closed: BPE stops merging once every word is one token (~420 entries with the
    # 256 byte symbols). GSM8K text gets a small open BPE.
    vocab_size = vocab_size or (1024 if task.name == "synthetic" else 4096)
    tokenizer = train_tokenizer(tokenizer_corpus(task), vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden,
        intermediate_size=s.ffn,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    model = LlamaForCausalLM(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "mathrl.json").write_text(json.dumps({"task": task.name, "size": size, "seed": seed}, indent=1))
    return model, tokenizer


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_precision(precision: str, device: str, for_training: bool) -> tuple[torch.dtype, torch.dtype | None]:
    """(weight dtype, autocast dtype or None) for ``--precision``.

    ``bf16-mixed``: float32 weights (so AdamW's state and every update stay in float32: an update smaller than
    bf16's resolution, 2^-8 of a weight, is kept) and bf16 compute by autocast; ``bfloat16``: the weights
    themselves in bf16 (half the memory; small updates are lost); ``auto``: float32 on CPU, bf16-mixed for
    training on CUDA and bfloat16 for inference there. On CPU auto stays float32 even where the cores have bf16
    matrix units (AMX: a bf16 matmul of the embedded model's shapes ran 5x a float32 one, a training step ~1.5x):
    results would then depend on the machine, and bf16 costs precision; ask for bf16-mixed to trade them."""
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "auto":
        precision = "float32" if not str(device).startswith("cuda") else ("bf16-mixed" if for_training else "bfloat16")
    if precision == "bf16-mixed":
        return torch.float32, torch.bfloat16
    return (torch.bfloat16 if precision == "bfloat16" else torch.float32), None


def autocast(model):
    """The compute context of ``model``: bf16 autocast when it was loaded with ``bf16-mixed``, else nothing."""
    import contextlib

    dtype = getattr(model, "mathrl_autocast", None)
    if dtype is None:
        return contextlib.nullcontext()
    device = next(model.parameters()).device.type
    return torch.autocast(device_type=device, dtype=dtype)


def load_tokenizer(path: str | os.PathLike):
    from transformers import AutoTokenizer

    p = Path(path)
    if p.is_dir() and not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise UsageError(f"{p}: no tokenizer files (tokenizer.json / tokenizer_config.json) in the model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:
        # Batched sampling and training pad; a model without a pad token pads with EOS (masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise UsageError(f"{path}: the tokenizer has no EOS token; completions could never end")
    return tokenizer


def attention_options(kernel: str, device, for_training: bool, dtype, autocast_dtype) -> dict:
    """``from_pretrained``'s attention option: the kernel asked for (``--attn-implementation``), else, for bf16
    training on CPU, the plain matmul-softmax attention ("eager"), else transformers' choice (no option). Why
    eager there: torch's SDPA backward in bf16 on CPU ran 9x slower than in float32 (583 vs 67 ms over 3 steps of
    64 x 72 tokens, the embedded model), which made a bf16-mixed step slower than a float32 one (379 vs 302 ms);
    with eager attention it took 201 ms."""
    if kernel:
        return {"attn_implementation": kernel}
    if for_training and str(device).startswith("cpu") and torch.bfloat16 in (dtype, autocast_dtype):
        return {"attn_implementation": "eager"}
    return {}


def special_tokens(tokenizer) -> set[str]:
    """The texts of ``tokenizer``'s special and added tokens (each one id, never split)."""
    return set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())


def load_model(path: str | os.PathLike, device: str | None = None, dtype: torch.dtype | None = None,
               for_training: bool = False, precision: str = "auto", compute=None):
    """Load (model, tokenizer) from a local HF directory or a hub id in the local cache (``model_dir``); a
    directory of LoRA adapters alone (``--no-save-merged``) is loaded onto the base model it names, merged.

    ``compute`` (a ``settings.Compute``): the attention kernel, and gradient checkpointing for training.
    Checks that the tokenizer fits the model's embedding table: a mismatch is an error, not a silent
    out-of-range index at the first rare token.
    """
    from transformers import AutoModelForCausalLM

    p = path = model_dir(path)
    adapters = (p / "adapter_config.json").is_file() and not (p / "config.json").is_file()
    if p.is_dir() and not (p / "config.json").is_file() and not adapters:
        raise UsageError(f"{p}: not a model directory (no config.json)")
    device = device or default_device()
    autocast_dtype = None
    if dtype is None:
        dtype, autocast_dtype = resolve_precision(precision, device, for_training)
    tokenizer = load_tokenizer(path)
    options = attention_options(compute.attn_implementation if compute else "", device, for_training,
                                dtype, autocast_dtype)
    try:
        if adapters:
            model = _merged_adapters(p, dtype, options)
        else:
            model = _from_pretrained(AutoModelForCausalLM, path, dtype, options)
    except (OSError, ValueError, ImportError) as e:  # ImportError: an attention kernel that is not installed
        raise UsageError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    check_vocab(model, tokenizer, str(path))
    model.mathrl_autocast = autocast_dtype  # read by models.autocast in every forward pass mathrl makes
    if compute is not None and compute.gradient_checkpointing:
        gradient_checkpointing(model, str(path))
    model.to(device)
    model.train(for_training)
    return model, tokenizer


def _from_pretrained(auto_class, path, dtype, options: dict):
    """``auto_class.from_pretrained``, refusing a checkpoint that lacks some of the model's weights or holds them in
    another shape: transformers would start those at random, with a warning nobody sees (mathrl quietens its
    logging), and a model with a random layer trains and evaluates as if nothing were wrong."""
    model, info = auto_class.from_pretrained(str(path), dtype=dtype, output_loading_info=True, **options)
    missing = sorted(info.get("missing_keys") or []) + sorted(k[0] if isinstance(k, tuple) else k
                                                              for k in info.get("mismatched_keys") or [])
    if missing:
        raise UsageError(f"{path}: the checkpoint lacks {len(missing)} of the model's weights or holds them in "
                         f"another shape ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); "
                         "they would start at random")
    return model


def _merged_adapters(path: Path, dtype, options: dict):
    """The base model an adapter directory names (``base_model_name_or_path``), with the adapters merged in."""
    from transformers import AutoModelForCausalLM

    peft = _peft(f"{path} holds LoRA adapters")
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{path}: adapter_config.json names no base model (base_model_name_or_path)")
    model = _from_pretrained(AutoModelForCausalLM, model_dir(base), dtype, options)
    return peft.PeftModel.from_pretrained(model, str(path)).merge_and_unload()


def _peft(why: str):
    try:
        import peft
    except ImportError:
        raise UsageError(f"{why}: that needs peft (pip install \"mathrl[lora]\")") from None
    return peft


def disable_dropout(model) -> None:
    """Dropout off in every pass of ``model``, training mode included, for the policy-gradient loops: their ratio
    pi / pi_old is 1 before the first update only if the learner's passes compute what the sampler's (in eval
    mode) did, and PPO's KL and clipping would otherwise read dropout noise (a tiny GPT-2 with dropout 0.1 gave
    log-prob gaps up to 0.16 at the first epoch). TRL's trainers do the same. Dropout modules get p = 0; attention
    classes that keep their dropout rate as a float attribute (transformers' ``attention_dropout``, applied only
    in training mode) get 0.0. The embedded default has no dropout; supervised fine-tunes keep the model's."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def gradient_checkpointing(model, where: str = "model") -> None:
    """Recompute each block's activations in the backward pass (``--gradient-checkpointing``). Non-reentrant
    checkpointing: the reentrant kind needs inputs that require gradients, which frozen LoRA embeddings lack.
    A training forward pass with checkpointing cannot keep a KV cache (transformers drops it), so
    ``rollouts.forward_policy`` then runs prompt and completion as one sequence instead of sharing the prompt's
    cache."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(f"{where}: {type(model).__name__} does not support gradient checkpointing")
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers 5.x's name; 4.x: gradient_...
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:  # pragma: no cover - transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.mathrl_checkpointing = True  # read by rollouts.forward_policy (transformers renames its own flag in 5.x)


def apply_lora(model, lora, base: str | os.PathLike, task_type: str = "CAUSAL_LM", trainable_tokens=()):
    """``model`` with LoRA adapters (a ``settings.Lora``; PEFT) on ``lora.lora_targets``, the rest frozen.

    ``base``: the start model's directory, recorded in the adapters' config so that an adapter directory
    (``--no-save-merged``) loads onto it. ``task_type`` TOKEN_CLS: a reward model, whose new head trains in full.
    ``trainable_tokens``: embedding rows trained in full beside the adapters (RCRL's new return tokens, which no
    adapter could give a meaning). A target that matches no module of the model is a one-line error."""
    peft = _peft("--lora-rank")
    targets = lora.lora_targets[0] if list(lora.lora_targets) == ["all-linear"] else list(lora.lora_targets)
    extra = {"trainable_token_indices": list(trainable_tokens)} if trainable_tokens else {}
    if task_type == "TOKEN_CLS":  # a reward model's new head trains in full, and gets no adapter of its own
        heads = [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), torch.nn.Module)]
        extra.update(modules_to_save=heads, exclude_modules=heads)
    config = peft.LoraConfig(r=lora.lora_rank, lora_alpha=lora.lora_alpha or 2 * lora.lora_rank, lora_dropout=0.0,
                             target_modules=targets, task_type=task_type, **extra)
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UsageError(f"--lora-targets {' '.join(lora.lora_targets)}: {str(e).splitlines()[0]} (the model's "
                         f"linear modules: {', '.join(names)})") from None
    wrapped.peft_config["default"].base_model_name_or_path = str(Path(model_dir(base)).resolve())
    return wrapped


def final_model(model, lora):
    """What a run writes as OUT/model: the model; after LoRA, the merged weights (the default) or the PEFT model,
    whose ``save_pretrained`` writes the adapters alone (``--no-save-merged``)."""
    if not lora.lora_rank or not lora.merged:
        return model
    return model.merge_and_unload()


def check_vocab(model, tokenizer, where: str = "model") -> None:
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:
        raise UsageError(
            f"{where}: tokenizer has {len(tokenizer)} tokens but the model's embedding table has {n_embed} rows "
            "(tokenizer and model do not belong together)"
        )


def block_class_names(model) -> set[str]:
    """The class names of a Hugging Face model's transformer blocks (what it lists in ``_no_split_modules``), the
    unit that FSDP shards and ``sft --compile`` compiles."""
    return set(getattr(model, "_no_split_modules", None) or ())


@functools.cache
def _kv_cache_name() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in {f.name for f in fields(CausalLMOutputWithPast)} else "past_key_values"


def kv_cache_arg(cache) -> dict:
    """``{name: cache}`` to pass a KV cache to a transformers model's forward. transformers 5.x renamed the
    argument (and the output field) ``past_key_values`` to ``cache``, with the old name removed in 5.40; earlier
    versions know only the old name. We support both (pyproject: transformers>=4.56,<6)."""
    return {_kv_cache_name(): cache}


def kv_cache_of(output):
    """The KV cache a forward pass returned (see ``kv_cache_arg``)."""
    return getattr(output, _kv_cache_name())


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
