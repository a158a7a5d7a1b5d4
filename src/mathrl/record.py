"""What mathrl knows about a model, beside its weights, without torch: where a model named by a path or a hub id
is (``model_dir``) and what its ``mathrl.json`` records (``ModelRecord``, ``read_record``).

``mathrl.json`` records the task a model was trained for (so ``mathrl eval --model DIR`` needs no --task), the
stage that produced it, how many few-shot examples its prompts need (2 for the pretrained checkpoint, 0 after SFT)
and which (``exemplars``), and the prompt format (``prompting``: chat template, system prompt, prompt template, stop
strings) when it is not the plain one. Writing it is ``runsetup.write_record`` (rank 0 only, under torchrun).

Configs read records while they validate (``mathrl eval --calculator`` on a model recorded for the synthetic task
is refused before any work): this module imports no torch, so that a command's config module need not either.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from mathrl.errors import UsageError


def model_dir(path: str | os.PathLike) -> Path:
    """The local directory of a model named by ``path``: a directory, or a hub id ('Qwen/Qwen2.5-0.5B') found in
    the local Hugging Face cache (never a download: the hub may be unreachable, and a run should not wait on it)."""
    p = Path(path)
    if p.is_dir():
        return p
    if not p.exists() and _looks_like_hub_id(path):
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(path), local_files_only=True))
        except Exception:  # noqa: BLE001 - any miss is the same message
            raise UsageError(f"{path}: no such directory, and not in the local Hugging Face cache "
                             "(download it first, e.g. `hf download " + str(path) + "`, or pass a directory)") from None
    raise UsageError(f"model directory not found: {path}")


def _looks_like_hub_id(path) -> bool:
    """'gpt2' or 'owner/name': what the hub accepts; anything with more parts or a leading . or / is a path."""
    parts = str(path).split("/")
    return len(parts) <= 2 and all(parts) and not str(path).startswith((".", "~"))


@dataclass
class ModelRecord:
    """What ``mathrl.json`` beside a model's weights records (module docstring). Every field may be missing from a
    file (an older mathrl's, or a model another tool wrote): it then reads as its default here."""

    task: dict = field(default_factory=dict)  # the options that rebuild the task (tasks.task_options)
    stage: str = ""  # what wrote the model: init, pretrained, sft, ei, gae (ppo), grpo/rloo/reinforce++, rcrl-sparse, orm, sorm...
    shots: int = 0  # few-shot examples its prompts need
    exemplars: str = ""  # which (settings.EXEMPLARS; '': the train split)
    prompting: dict = field(default_factory=dict)  # its prompt format (PromptFormat.to_meta; {}: the plain one)
    base: str = ""  # the model it was trained from ("scratch": a new one)
    size: str = ""  # the embedded model's size (init, pretrain)
    condition: dict | None = None  # return-conditioned models: {"token": "[GOOD]", "dense": bool} (rcrl.py)
    label_ratio: float | None = None  # rcrl: the share of labelled samples it was trained on
    kind: str = ""  # reward models: orm or sorm
    policy: str = ""  # reward models: the policy whose samples they were trained on

    @classmethod
    def from_dict(cls, meta: dict) -> ModelRecord:
        """The record of a parsed mathrl.json; keys it does not know (a newer mathrl's, or ``models.init_model``'s
        ``seed``) are ignored, and a task recorded by name alone (``init_model``) is that name's defaults."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in meta.items() if k in names}
        if isinstance(values.get("task"), str):
            values["task"] = {"name": values["task"]}
        return cls(**values)

    def to_dict(self) -> dict:
        """The JSON object written: task, stage and shots always, the other fields where they are set."""
        return {k: v for k, v in asdict(self).items() if k in ("task", "stage", "shots") or v not in (None, "", {})}


def read_record(model: str | os.PathLike | None) -> ModelRecord:
    """What mathrl.json beside a model's weights records (an empty record when there is none, or no model).
    ``model``: a directory or a hub id in the local cache."""
    if not model:
        return ModelRecord()
    try:
        p = model_dir(model) / "mathrl.json"
    except UsageError:
        return ModelRecord()
    try:
        meta = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        meta = {}
    return ModelRecord.from_dict(meta) if isinstance(meta, dict) else ModelRecord()
