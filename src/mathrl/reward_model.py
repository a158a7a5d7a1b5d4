"""Outcome reward models (ORM) and stepwise ORMs (SORM): p(the final answer will be correct | prefix).

The model is a token-classification head on the policy's trunk (one label: a logit per token), initialised from
the policy checkpoint, so it reads exactly what the policy writes, and saved as an ordinary HF directory. Where
transformers has an ``AutoModelForTokenClassification`` class for the architecture it is used; the many
architectures without one (136 of 196 causal LMs in transformers 5.24: Gemma 3, OLMo 2, Granite...) get
``TrunkForTokenClassification``: the causal LM's own trunk (``AutoModel``) and a linear head, the same thing.

- **ORM** (Cobbe et al. 2021 verifiers; Havrilla et al. 2024 section 3): every completion token of a sampled
  solution is labelled with the solution's final correctness (sparse reward); binary cross-entropy on those
  tokens. Its score for a solution is the probability at the last token.
- **SORM** (GLoRe, Havrilla et al. 2024b, arXiv 2402.10963): labels per step estimate the optimal value V* of
  the prefix ending at that step: from the prefix, sample M continuations with the policy; the step is good if
  any continuation reaches a correct answer. Tokens of a step carry their step's label.

A token-level BCE is minimised, above all, by knowing which *questions* are hard: in a study on the embedded
default its pooled held-out AUC was 0.78 while, inside one question's samples, it was 0.46, and reranking picked
wrong answers. ``pairwise_loss`` (``orm train --pairwise-weight``) is the objective that reranking asks for, the
Bradley-Terry loss of a question's correct samples outscoring its incorrect ones (as reward models for
preference pairs are trained: Ouyang et al. 2022, eq. 1), on the final-token logit that is the ORM's score. (On
the embedded default it did not help: the 0.7M model cannot check the arithmetic that separates a question's
samples; docs/results.md.)

``score_texts`` (for rerank@K and as a learned reward) and ``step_scores`` read the probabilities back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from mathrl.errors import UsageError
from mathrl.models import attention_options, autocast, load_tokenizer, resolve_precision
from mathrl.tasks.prompting import completion_text


def _trunk_class():
    from transformers import AutoModel, PreTrainedModel
    from transformers.modeling_outputs import TokenClassifierOutput

    class TrunkForTokenClassification(PreTrainedModel):
        """A causal LM's trunk with a linear head on its last hidden state: logits (B, T, num_labels)."""

        base_model_prefix = "model"  # a causal-LM checkpoint's "model.*" weights load into the trunk
        supports_gradient_checkpointing = True  # the trunk's blocks checkpoint themselves

        def __init__(self, config):
            super().__init__(config)
            self.model = AutoModel.from_config(config)
            self._no_split_modules = getattr(self.model, "_no_split_modules", None)
            self.score = torch.nn.Linear(config.hidden_size, config.num_labels)
            self.post_init()

        def _init_weights(self, module):
            if module is getattr(self, "score", None):
                torch.nn.init.normal_(module.weight, std=0.02)
                torch.nn.init.zeros_(module.bias)

        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
            return TokenClassifierOutput(logits=self.score(hidden))

    return TrunkForTokenClassification


def token_classifier(path, num_labels: int = 1, attn_implementation: str = "", precision: str | None = None,
                     device: str = "cpu", trained: bool = False):
    """A token classifier initialised from (or saved as) the model directory ``path``: transformers' own class
    where the architecture has one, else ``TrunkForTokenClassification``.

    ``precision`` (``--precision``, for training): the weights' dtype and the autocast of ``models.autocast``, as
    ``models.load_model`` gives a policy (bf16 training on CPU also takes the matmul-softmax attention there);
    None keeps the checkpoint's own dtype and no autocast (scoring). ``trained``: ``path`` must be a reward model
    (its head included); a policy's directory is refused, as its head would start at random."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"{path}: no config.json (a directory of LoRA adapters alone? a reward model starts from "
                         "full weights: save the policy with its adapters merged)")
    dtype, autocast_dtype = resolve_precision(precision, device, True) if precision else (None, None)
    options = attention_options(attn_implementation, device, precision is not None, dtype, autocast_dtype)
    config = AutoConfig.from_pretrained(str(path), num_labels=num_labels, **options)
    def load(cls):  # (model, what loading found: missing_keys...)
        return cls.from_pretrained(str(path), config=config, dtype=dtype, output_loading_info=True)

    if "TrunkForTokenClassification" in (config.architectures or []):
        model, info = load(_trunk_class())
    else:
        try:
            model, info = load(AutoModelForTokenClassification)
        except ValueError as e:
            if "Unrecognized configuration class" not in str(e):
                raise
            model, info = load(_trunk_class())
    missing = sorted(info.get("missing_keys") or [])
    if trained and missing:
        raise UsageError(f"{path} is not a reward model: it lacks {', '.join(missing[:3])} (a policy's directory? "
                         "train one with `mathrl orm train`)")
    model.mathrl_autocast = autocast_dtype  # read by models.autocast in every forward pass mathrl makes
    return model


def pairwise_loss(scores: torch.Tensor, correct: torch.Tensor, question: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Within-question Bradley-Terry loss: for each question with both a correct and an incorrect sample, the mean
    over its (correct i, incorrect j) pairs of -log sigmoid(s_i - s_j); returns (its sum over those questions, their
    number), so that a batch split into micro-batches of whole questions divides by the batch's count.

    scores: (N,) float logits; correct: (N,) bool; question: (N,) long, one id per question. Samples of different
    questions are never compared: which question is easier is not the reward model's to rank."""
    pair = (question[:, None] == question[None, :]) & correct[:, None] & ~correct[None, :]  # (N, N): i beats j
    nll = -torch.nn.functional.logsigmoid(scores[:, None] - scores[None, :])  # (N, N)
    ids, row_question = torch.unique(question, return_inverse=True)
    pair_sum = torch.zeros(len(ids), dtype=nll.dtype, device=nll.device).index_add(0, row_question,
                                                                                     (nll * pair).sum(1))
    pair_count = torch.zeros(len(ids), dtype=nll.dtype, device=nll.device).index_add(0, row_question,
                                                                                       pair.sum(1).to(nll.dtype))
    mixed = pair_count > 0
    return (pair_sum[mixed] / pair_count[mixed]).sum(), int(mixed.sum())


class RewardModel:
    """A loaded reward model plus the tokenizer it shares with its policy."""

    def __init__(self, model, tokenizer, kind: str = "orm"):
        self.model = model
        self.tokenizer = tokenizer
        self.kind = kind

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def token_probs(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int = 64):
        """p(correct) after every completion token: a list of (completion token ids, probabilities) per text."""
        self.model.eval()
        out = []
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        comp_ids = self.tokenizer([completion_text(p, c) for p, c in zip(prompts, completions)],
                                  add_special_tokens=False)["input_ids"]
        order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(comp_ids[i]))
        results = [None] * len(prompts)
        pad = self.tokenizer.pad_token_id
        n_ctx = int(getattr(self.model.config, "max_position_embeddings", 1 << 30))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            seqs = [(prompt_ids[i] + comp_ids[i])[-n_ctx:] for i in idx]
            t = max(len(s) for s in seqs)
            ids = torch.full((len(idx), t), pad, dtype=torch.long)
            att = torch.zeros((len(idx), t), dtype=torch.long)
            for r, s in enumerate(seqs):
                ids[r, : len(s)] = torch.tensor(s)
                att[r, : len(s)] = 1
            with autocast(self.model):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=att.to(self.device)).logits[..., 0]
            probs = torch.sigmoid(logits.float()).cpu()
            for r, i in enumerate(idx):
                n = len(seqs[r])
                m = min(len(comp_ids[i]), n)
                results[i] = (comp_ids[i][-m:] if m else [], probs[r, n - m : n].tolist())
        out.extend(results)
        return out

    def score_texts(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """p(correct) of each whole completion (the probability at its last token; 0.5 for an empty one)."""
        return [p[-1] if p else 0.5 for _, p in self.token_probs(prompts, completions)]


def load_reward_model(path: str, policy_tokenizer=None, device: str = "cpu") -> RewardModel:
    """Load a reward model directory; its tokenizer must be the policy's (checked when one is given).

    The policy may have added tokens of its own (RCRL's return tokens, which decoding skips): every token of the
    reward model's vocabulary must then keep its id in the policy's, since the reward model reads decoded text."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise UsageError(f"reward model directory not found or incomplete: {path}")
    tokenizer = load_tokenizer(p)
    if policy_tokenizer is not None and not (tokenizer.get_vocab().items() <= policy_tokenizer.get_vocab().items()):
        raise UsageError(f"reward model {path} uses a different tokenizer than the policy; train it from the "
                         "policy's checkpoint")
    meta = json.loads((p / "mathrl.json").read_text()) if (p / "mathrl.json").is_file() else {}
    try:
        model = token_classifier(p, trained=True)
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: cannot load reward model ({str(e).splitlines()[0]})") from None
    model.to(device)
    return RewardModel(model, tokenizer, kind=meta.get("kind", "orm"))
