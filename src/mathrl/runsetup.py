"""Run setup, in one place: what every command does before and after its loop (run directory, device, threads,
seeds, the task for a model (``task_for``) and its few-shot examples, writing a model's ``mathrl.json``
(``write_record``; what it records and how it is read: ``record.py``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from mathrl import distributed
from mathrl.checkpoint import list_checkpoints
from mathrl.config import leaves, saved_command
from mathrl.errors import UsageError
from mathrl.models import count_parameters, load_tokenizer, special_tokens
from mathrl.record import ModelRecord, model_dir, read_record
from mathrl.seeds import seed_everything
from mathrl.settings import Data, Prompting, read_template
from mathrl.tasks import Task, load_task, recorded_level
from mathrl.tasks.exemplars import exemplars as exemplar_problems
from mathrl.tasks.jsonl import is_file_task
from mathrl.tasks.prompting import PromptFormat, with_format


def prepare_run_dir(out: str, resume: bool, command: str) -> Path:
    """Create the run directory of a ``mathrl command`` run; refuse to overwrite a run that has checkpoints unless
    resuming, and to resume another command's run (its checkpoint would load into the wrong optimizer and state)."""
    path = Path(out)
    if not resume and list_checkpoints(path):
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not path.exists():
        raise UsageError(f"--resume: no run at {out}")
    written = saved_command(path / "config.yaml") if resume else None
    if written and written != command:
        raise UsageError(f"--resume: {out} holds a `mathrl {written}` run, not a `mathrl {command}` one; resume it "
                         f"with `mathrl {written} --resume` or choose another --out")
    return output_dir(out)


def output_dir(out: str | os.PathLike) -> Path:
    """The directory ``out``, created and checked writable: called before a command does its work, so that a bad
    ``--out`` (a file, a read-only place) costs a line, not the run."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to {out}: {e.strerror or e}") from None
    return path


def resolve_device(device: str) -> str:
    if device in ("", "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r} (cpu, cuda, cuda:N or auto)")
    return distributed.setup(device)  # under torchrun: join the process group, one GPU per rank


def write_record(model_dir: str | os.PathLike, record: ModelRecord) -> None:
    if distributed.is_main():
        Path(model_dir, "mathrl.json").write_text(json.dumps(record.to_dict(), indent=1))


def task_for(model: str | None, data: Data, prompting: Prompting | None = None, *, teaching: bool = False,
             **options) -> Task:
    """The task a command works on, for ``model`` and the ``settings.Data`` and ``settings.Prompting`` flags: the
    one way to build a task for a model (``tasks.load_task`` builds a task alone).

    Each ``data`` setting not given is the one the model records (its ``ModelRecord.task``). For a model mathrl
    did not train (no task recorded), gsm8k/svamp answers are read with flexible extraction unless --extract says
    otherwise (such a model has no reason to write mathrl's '#### N'), and the choice is printed. ``teaching``: the
    command teaches the task to the model (SFT) rather than continuing what it records: the task is the one
    ``data`` names, in its own surface and extraction, and only a synthetic level not given is the model's.
    ``options``: task options the command sets itself (SFT's ``train_size``). The prompts are in the format
    ``prompt_format`` gives (the flags, else the model's record); a chat template is the model's tokenizer's."""
    if model and not teaching:
        model_dir(model)  # a clear error for a missing directory or an uncached hub id
    recorded = read_record(model).task
    name = data.task or recorded.get("name")
    if not name:
        raise UsageError(f"{model} records no task; pass --task" if model else "--task is required")
    same = recorded.get("name") == name
    fields = data.fields()
    opts = {"level": data.level, "data_dir": data.data_dir, "extract": data.extract}
    if name == "synthetic" and data.level is None:
        opts["level"] = recorded_level(recorded)
    if not teaching and name != "synthetic":
        if data.extract is None and same:
            opts["extract"] = recorded.get("extract")
        elif data.extract is None and not recorded:
            opts["extract"] = "flexible"
            print(f"{model}: no task recorded with this model; {name} answers read with --extract flexible (the last "
                  "number; pass --extract strict for '#### N')")
        if is_file_task(name) and same and not any(fields.values()):
            fields = {k: recorded.get(k) for k in fields}
    if not teaching and name == "synthetic" and same:
        # the surface (synthetic: qa or prose) a model was trained to write is part of its task
        opts["surface"] = recorded.get("surface")
    task = load_task(name, **{**opts, **fields, **options})
    fmt = prompt_format(model, prompting)
    if model and not fmt.chat_template:
        fmt = replace(fmt, bos=leading_bos(model))
    return with_format(task, fmt, chat_renderer(model) if fmt.chat_template else None)


def leading_bos(model: str) -> str:
    """The BOS token's text if ``model``'s tokenizer puts one before every text it encodes (Gemma, Llama 2), else
    "" (the embedded default, Qwen, GPT-2). A model directory without tokenizer files gives "": loading the
    model says what is wrong."""
    try:
        tokenizer = load_tokenizer(model_dir(model))
    except UsageError:
        return ""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ""
    by_default = tokenizer("1")["input_ids"][:1] == [bos]
    in_the_text = tokenizer("1", add_special_tokens=False)["input_ids"][:1] == [bos]
    return tokenizer.bos_token if by_default and not in_the_text else ""


def prompt_format(model: str | None, prompting=None) -> PromptFormat:
    """The prompt format a command uses: its flags (a ``settings.Prompting``; None: none given), each one not given
    taken from what the model records (mathrl.json ``prompting``; nothing recorded: the plain format)."""
    recorded = PromptFormat.from_meta(read_record(model).prompting)
    if prompting is None:
        return recorded
    if prompting.prompt_template is None:
        template = recorded.template
    else:  # '' asks for no template, whatever the model records
        template = read_template(prompting.prompt_template) if prompting.prompt_template else ""
    pick = lambda given, kept: kept if given is None else given  # noqa: E731
    return PromptFormat(chat_template=pick(prompting.chat_template, recorded.chat_template),
                        system_prompt=pick(prompting.system_prompt, recorded.system_prompt), template=template,
                        stop=tuple(pick(prompting.stop, recorded.stop)))


def chat_renderer(model: str | None):
    """messages -> the prompt text by ``model``'s tokenizer's chat template, with the generation prompt (the
    assistant's turn starts where the completion starts). Special tokens in it (a BOS, ``<|im_start|>``) stay text
    here; prompts are tokenized with ``add_special_tokens=False``, which reads them back as their single ids, so
    no BOS is added twice."""
    if not model:
        raise UsageError("--chat-template needs --model: the chat template is the model's tokenizer's")
    tokenizer = load_tokenizer(model_dir(model))
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(f"{model}: --chat-template, but its tokenizer has no chat template (a base model? use "
                         "--prompt-template FILE instead)")

    def render(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    render.end_of_turn = end_of_turn(tokenizer)  # read by tasks.prompting.PromptedTask: a stop string
    return render


def end_of_turn(tokenizer) -> str:
    """The special token the chat template closes an assistant's turn with (``<|im_end|>``, ``<|eot_id|>``,
    ``<end_of_turn>``), or "" if it closes none or not with a special token. Instruct checkpoints list it among
    their EOS ids; a base model given a chat template often does not (Qwen2.5 base ends documents with
    ``<|endoftext|>``), and its completions would run past the turn into a next one: so prompts in a chat template
    stop at it, as at a stop string."""
    probe = "MATHRL_TURN_PROBE"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this conversation (with_format says why)
        return ""
    after = text[text.rfind(probe) + len(probe):].split() if probe in text else []
    return after[0] if after and after[0] in special_tokens(tokenizer) else ""


# Above this many parameters a model is not the embedded default, whose learning rates the commands' defaults are
TINY_MODEL_PARAMETERS = 10_000_000


def warn_tiny_default_lr(cfg, model) -> None:
    """One line when a model of more than ``TINY_MODEL_PARAMETERS`` parameters is to be trained at the command's
    default learning rate, which was tuned for the 0.7M-parameter embedded model (SFT 3e-3, PPO 1e-4): 10 to 1000
    times what published recipes use for 0.5B-7B models (docs/algorithms.md, "Real models").
    A rate the user gives that equals the default is taken as the default."""
    default = next(d for _, f, d, _ in leaves(type(cfg)) if f.name == "lr")
    n = count_parameters(model)
    if n > TINY_MODEL_PARAMETERS and cfg.optim.lr == default and distributed.is_main():
        print(f"warning: a {n / 1e6:.0f}M-parameter model at --lr {default:g}, this command's default for the 0.7M "
              "embedded model; real models want far smaller rates (docs/algorithms.md, 'Real models')")


def few_shot_examples(task, model_dir: str, shots: int, exemplars: str = ""):
    """The few-shot examples of the prompts: ``shots`` of them (-1: as many as the model records) from
    ``exemplars`` (``tasks.exemplars``; '': the model's recorded source, else the train split)."""
    record = read_record(model_dir)
    if shots < 0:
        shots = int(record.shots)
    return exemplar_problems(exemplars or record.exemplars or "train", task, shots)


# ----------------------------------------------------------------------------------------------------------
# Threads and seeds


def default_threads() -> int:
    """The cores this process may use (its CPU affinity mask, as a scheduler or ``taskset`` sets it).

    Not a sample of idle time: measured over a moment, a package download in the background made a whole study
    run on one thread (docs/results.md, 2026-12-01). A busy neighbour slows the run; it does not change the
    plan of the run."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def setup_threads(threads: int) -> int:
    n = threads if threads > 0 else default_threads()
    torch.set_num_threads(n)
    return n


@dataclass(frozen=True)
class RunContext:
    """Where a training run writes (``dir``) and what it runs on."""

    dir: Path
    device: str
    threads: int


def start_run(cfg) -> RunContext:
    """The first lines of every training command, for its config ``cfg`` (``out``, ``resume``, ``run``, its
    ``COMMAND``): the run directory (refusing to overwrite a run unless resuming, and to resume another command's),
    torch threads, the device (joining the process group under torchrun), the seeds."""
    run_dir = prepare_run_dir(cfg.out, cfg.resume, cfg.COMMAND)
    threads = setup_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    seed_everything(cfg.run.seed)
    return RunContext(run_dir, device, threads)
