"""The settings of ``mathrl sft`` (its loop: ``sft.py``), in a module that imports no torch so that ``mathrl sft
--help`` needs none (``algorithms/__init__.py`` says why the Configs live apart)."""

from __future__ import annotations

from dataclasses import dataclass

from mathrl.config import field, group, refuse
from mathrl.errors import UsageError
from mathrl.settings import compile_blocks, MODEL_SIZES, Backtranslated, Compute, Data, Evaluation, Lora, Optim, Prompting, Run, fsdp, \
    max_new_tokens, check_fsdp, one_of, resume, token_budget, validate_groups


@dataclass
class Config:
    COMMAND = "sft"  # (not a field) the command a run directory's config.yaml names: runsetup.start_run
    out: str = field("runs/sft", "run directory (the model is written to OUT/model)")
    model: str = field("", "initial model directory; empty: a fresh embedded-default model (--size)")
    size: str = field("tiny", "size of a fresh model (when --model is empty)")
    data: Data = group(Data, task="synthetic")
    prompting: Prompting = group(Prompting)  # the prompts of training and of the dev evaluations
    train_size: int | None = field(None, "synthetic: number of train problems (default: the task's, 20000)")
    epochs: int = field(3, "passes over the train split")
    backtranslation: Backtranslated = group(Backtranslated)  # synthetic pairs added to the training set
    # batch_size 16: the tiny model learns per step (16 beat 32 at equal time)
    optim: Optim = group(Optim, lr=3e-3, warmup_steps=100, batch_size=16)
    lora: Lora = group(Lora)
    whole_sequence_loss: bool = field(False, "loss on prompt tokens too (default: completion tokens only)")
    eval: Evaluation = group(Evaluation, eval_k=32, eval_split="dev")  # after each epoch
    max_new_tokens: int = max_new_tokens()
    token_budget: int = token_budget()
    compile: bool = compile_blocks()
    fsdp: bool = fsdp()
    checkpoint_every: int = field(0, "optimizer steps between checkpoints (0: at the end of each epoch)")
    log_every: int = field(20, "optimizer steps between log lines")
    run: Run = group(Run)
    compute: Compute = group(Compute)
    resume: bool = resume()

    def validate(self) -> None:
        validate_groups(self)
        check_fsdp(self.lora, self.fsdp)
        if self.prompting.chat_template and not self.model:
            raise UsageError("--chat-template needs --model: the chat template is the model's tokenizer's (a fresh "
                             "embedded model has none)")
        if self.lora.lora_rank and not self.model:
            raise UsageError("--lora-rank needs --model: adapters train on a pretrained model, not a fresh one")
        for name in ("epochs", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        one_of(self.size, MODEL_SIZES, "size")
        if self.model:
            refuse(self, ("size",), "with --model (it sizes a fresh model)")
        if not self.eval.eval_size:
            refuse(self, ("max_new_tokens", "token_budget"), "with --eval-size 0 (they limit the dev evaluations' "
                                                             "sampling; training samples nothing)")
        if self.checkpoint_every < 0:
            raise UsageError("checkpoint_every must be >= 0")
