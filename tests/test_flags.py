"""No flag that does nothing: every flag of every command either can affect the run, with the other flags given,
or is refused with one line.

The walk runs each command once per representative configuration (``WALKS``) on tiny models, with the config
classes instrumented to record which of their fields the run's code reads (reads by ``config.py``, which saves
the whole config as config.yaml, and by dataclass machinery do not count; validation runs before the run and is
not traced). Then, for every flag of the command, in that configuration:

- a flag the configuration gives must be read;
- a flag it does not give is added on the command line (at its default value: "given" comes from the parser)
  and must be refused (``UsageError``) when the run did not read it, or read it without effect
  (``Walk.refused_though_read``, each with its reason), and accepted otherwise.

The reads cannot see what a value does after it is read (a flag passed on to code that ignores it); those
refusals are listed by hand in ``refused_though_read``, which is also their test.
"""

from __future__ import annotations

import argparse

import contextlib
import dataclasses
import json
import sys
from dataclasses import dataclass
from typing import Callable

import pytest

from mathrl.cli import COMMANDS, build_parser, load, main
from mathrl.config import add_arguments, from_args, leaves
from mathrl.errors import UsageError

# Commands whose refusals another change is adding (their Config is being split into two modules): the walk runs
# them and reports, without failing. Empty this set once they refuse what they do not read.
PENDING: set[str] = set()

# (command, flag): why the walk cannot exercise it (a path that needs CUDA, torchrun or vLLM). The walk would
# otherwise report it; test_the_allow_list_has_no_stale_entry checks that each entry is still needed.
ALLOW: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Walk:
    """One representative configuration of ``command``: ``argv(env)`` (the fixtures' paths in ``env``), and the
    flags it reads without effect, refused anyway (flag -> why)."""

    command: str
    name: str
    argv: Callable[[dict], list[str]]
    refused_though_read: dict = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.command.replace(' ', '-')}:{self.name}"


SMALL = ["--max-new-tokens", "8", "--threads", "1"]
EVAL = ["--eval-size", "2", "--eval-k", "2"]
ONE_ROUND = "one round: it fine-tunes the start model whatever --retrain-from says"
# PPO/GRPO pass --vllm-is-cap to the old-policy pass, which uses it only for an engine whose log-probs are not the
# trainer's (vLLM's)
OWN_SAMPLER = {"vllm_is_cap": "mathrl's sampler: its log-probs are the trainer's, no importance weights"}


def _ei(e, *extra, evaluation=EVAL):
    return ["--model", e["policy"], "--questions", "3", "-k", "2", "--rounds", "1", "--batch-size", "4",
            *evaluation, *SMALL, *extra]


def _rcrl(e, *extra):
    return ["--model", e["policy"], "--questions", "3", "-k", "2", "--batch-size", "4", *EVAL, *SMALL, *extra]


WALKS = [
    Walk("data show", "synthetic", lambda e: ["-n", "1"]),
    Walk("data stats", "characters", lambda e: []),
    Walk("data stats", "tokens", lambda e: ["--tokenizer", e["policy"]]),
    Walk("model init", "tiny", lambda e: []),
    Walk("pretrain", "tiny", lambda e: ["--steps", "2", "--batch-size", "2", "--seq-len", "32", "--checkpoint-every",
                                        "1", "--log-every", "1", "--threads", "1"]),
    Walk("sft", "from-a-model", lambda e: ["--model", e["policy"], "--epochs", "1", "--train-size", "8",
                                           "--batch-size", "4", *EVAL, *SMALL]),
    Walk("sft", "fresh-no-eval", lambda e: ["--epochs", "1", "--train-size", "8", "--batch-size", "4", "--eval-size",
                                            "0", "--threads", "1"]),
    Walk("sft", "backtranslated", lambda e: ["--model", e["policy"], "--epochs", "1", "--train-size", "8",
                                             "--batch-size", "4", "--backtranslated", e["pairs"],
                                             "--backtranslated-ratio", "0.5", "--eval-size", "0", "--threads", "1"]),
    Walk("backtranslate", "tiny", lambda e: ["--model", e["policy"], "--questions", "2", "-k", "2", "--reverse-size",
                                             "8", "--reverse-max-steps", "1", "--batch-size", "4", *SMALL]),
    Walk("orm train", "orm", lambda e: ["--model", e["policy"], "--questions", "6", "-k", "2", "--epochs", "1",
                                        *SMALL]),
    # 40 tokens from the untrained policy: some samples have two '.'-ended steps, whose prefix gets M rollouts
    Walk("orm train", "sorm", lambda e: ["--model", e["policy"], "--stepwise", "--questions", "6", "-k", "2",
                                         "--sorm-samples", "10", "--m", "1", "--epochs", "1", "--max-new-tokens",
                                         "40", "--threads", "1"]),
    Walk("ei", "sparse", lambda e: _ei(e, "--include-references", "--patience-size", "2"),
         {"retrain_from": ONE_ROUND}),
    Walk("ei", "orm-no-eval", lambda e: _ei(e, "--reward", "orm", "--orm", e["orm"], "--patience", "0",
                                            evaluation=["--eval-size", "0"]),
         {"retrain_from": ONE_ROUND, "eval_k": "no in-run evaluation: it would only label the history"}),
    Walk("ei", "backtranslated", lambda e: _ei(e, "--backtranslated", e["pairs"], "--backtranslated-ratio", "0.5",
                                               "--include-references", "--patience-size", "2"),
         {"retrain_from": ONE_ROUND}),
    Walk("ei", "reward-function", lambda e: _ei(e, "--reward", e["reward"], "--rounds", "2", "--retrain-from", "last",
                                                "--orm-threshold", "0.5", "--patience-size", "2")),
    Walk("rcrl", "sparse", lambda e: _rcrl(e),
         {"step_labels": "sparse returns: one return per solution, no step labels"}),
    Walk("rcrl", "dense", lambda e: _rcrl(e, "--returns", "dense")),
    Walk("rcrl", "dense-sorm", lambda e: _rcrl(e, "--returns", "dense", "--step-labels", "sorm", "--sorm", e["sorm"])),
    Walk("eval", "k", lambda e: ["--model", e["policy"], "-n", "2", "-k", "2", "--orm", e["orm"], *SMALL],
         {"calculator": "the synthetic task's solutions have no <<expr=result>> annotations"}),
    Walk("eval", "greedy", lambda e: ["--model", e["policy"], "-n", "2", "-k", "0", "--shots", "0", *SMALL],
         {"calculator": "the synthetic task's solutions have no <<expr=result>> annotations",
          "temperature": "-k 0: greedy decoding only", "k_problems": "-k 0: no samples to draw",
          "orm": "-k 0: no samples to rerank", "exemplars": "--shots 0: no few-shot examples"}),
    Walk("score", "plain", lambda e: ["--samples", e["samples"]]),
    Walk("score", "orm-audit", lambda e: ["--samples", e["samples"], "--orm", e["orm"], "--audit"]),
    Walk("study", "synthetic", lambda e: ["--quick"],
         {"data_dir": "the synthetic task is generated",
          **{f: "the embedded model is prompted in its own formats"
             for f in ("chat_template", "system_prompt", "prompt_template", "stop")}}),
    Walk("study", "gsm8k", lambda e: ["--task", "gsm8k", "--model", e["policy"], "--quick"],
         {"level": "levels are the synthetic task's"}),
    # two iterations (--eval-every is read after the first); GRPO learns from a reward function whose returns
    # differ within a group (the untrained policy solves nothing: sparse groups would all be zero-signal)
    Walk("ppo", "sparse", lambda e: ["--model", e["policy"], "--iterations", "2", "--prompts", "2", "-k", "2",
                                     "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("grpo", "reward-function", lambda e: ["--model", e["policy"], "--reward", e["reward"], "--iterations", "2",
                                               "--prompts", "2", "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("ppo", "orm-step-adaptive-kl", lambda e: ["--model", e["policy"], "--reward", "orm", "--orm", e["orm"],
                                                   "--orm-mode", "step", "--kl-target", "0.1", "--iterations", "2",
                                                   "--prompts", "2", "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("grpo", "rloo-kl-orm", lambda e: ["--model", e["policy"], "--advantage", "rloo", "--kl-coef", "0.1",
                                           "--reward", "orm", "--orm", e["orm"], "--iterations", "2", "--prompts",
                                           "2", "-k", "2", "--batch-size", "4", "--eval-size", "0", *SMALL],
         {**OWN_SAMPLER, "eval_k": "no in-run evaluation: it would only label the history"}),
    # backtracking (a reverse curriculum): the schedule reads its fraction, adaptive its threshold
    Walk("ppo", "backtrack-schedule", lambda e: ["--model", e["policy"], "--backtrack", "schedule",
                                                 "--backtrack-fraction", "0.5", "--iterations", "2", "--prompts", "2",
                                                 "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("grpo", "backtrack-adaptive", lambda e: ["--model", e["policy"], "--reward", e["reward"], "--backtrack",
                                                  "adaptive", "--backtrack-threshold", "0.5", "--iterations", "2",
                                                  "--prompts", "2", "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    # prioritized level replay: three iterations, so that the second and third replay seen questions
    Walk("ppo", "plr-abs-advantage", lambda e: ["--model", e["policy"], "--question-sampling", "plr", "--plr-score",
                                                "abs-advantage", "--plr-temperature", "0.2", "--plr-staleness", "0.3",
                                                "--plr-replay-prob", "0.9", "--iterations", "3", "--prompts", "2",
                                                "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("grpo", "plr-p1mp", lambda e: ["--model", e["policy"], "--reward", e["reward"], "--question-sampling", "plr",
                                        "--plr-score", "p1mp", "--plr-temperature", "0.2", "--plr-staleness", "0.3",
                                        "--plr-replay-prob", "0.9", "--iterations", "3", "--prompts", "2", "-k", "2",
                                        "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
    Walk("grpo", "refill-gspo", lambda e: ["--model", e["policy"], "--reward", e["reward"], "--zero-signal", "refill",
                                           "--refill-rounds", "2", "--max-rollouts", "12", "--overlong-buffer", "4",
                                           "--mask-truncated", "--policy-loss", "gspo", "--loss-aggregation",
                                           "sequence", "--clip-high", "0.28", "--iterations", "3", "--prompts", "2",
                                           "-k", "2", "--batch-size", "4", *EVAL, *SMALL],
         OWN_SAMPLER),
]

# values for flags whose default cannot be written on the command line (None, an empty list) or is not a valid
# choice on its own (a None-default bool is given as --no-X: the explicit form of "off")
GIVEN_VALUE = {"level": "2", "data_dir": "data", "extract": "strict", "question_field": "q", "answer_field": "a",
               "solution_field": "s", "system_prompt": "Solve it.", "prompt_template": "", "stop": "STOP",
               "tokenizer": "tok", "surface": "qa", "train_size": "8", "only": "sft"}


@pytest.fixture(scope="module")
def env(tiny_model_dir, tmp_path_factory):
    """The untrained tiny model as the policy, an ORM and a SORM trained on its samples, a samples file for
    ``score``, a reward function and a file of backtranslated pairs (three dev problems)."""
    root = tmp_path_factory.mktemp("flags")
    policy = str(tiny_model_dir)
    small = ["--questions", "4", "-k", "2", "--epochs", "1", "--max-new-tokens", "8", "--threads", "1"]
    assert main(["orm", "train", "--model", policy, "--out", str(root / "orm"), *small]) == 0
    assert main(["orm", "train", "--stepwise", "--model", policy, "--out", str(root / "sorm"), *small,
                 "--sorm-samples", "2", "--m", "1"]) == 0
    from mathrl.tasks import load_task

    samples = root / "samples.jsonl"
    samples.write_text("".join(json.dumps({"question": p.question, "completions": [p.solution, "no"]}) + "\n"
                               for p in load_task("synthetic").problems("test")[:2]))
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"question": p.question, "solution": p.solution, "answer": p.answer}) + "\n"
                             for p in load_task("synthetic", level=2).problems("dev")[:3]))
    (root / "flag_walk_reward.py").write_text("def reward(prompts, completions, **columns):\n"
                                              "    return [len(c) % 3 / 2 for c in completions]\n")
    sys.path.insert(0, str(root))
    yield {"root": root, "policy": policy, "orm": str(root / "orm" / "model"), "sorm": str(root / "sorm" / "model"),
           "samples": str(samples), "reward": "flag_walk_reward:reward", "pairs": str(pairs)}
    sys.path.remove(str(root))


_SKIP_READERS = ("mathrl/config.py", "/dataclasses.py", "<string>")


@contextlib.contextmanager
def field_reads(cls, reads: set):
    """Record in ``reads`` the leaf fields of config class ``cls`` and of its groups that code reads, while the
    context lasts (not reads by config.py or by dataclass machinery)."""
    classes = [cls] + [f.metadata["group"] for f in dataclasses.fields(cls) if "group" in f.metadata]
    saved = []
    for c in classes:
        names = frozenset(f.name for f in dataclasses.fields(c) if "group" not in f.metadata)

        def getattribute(self, name, _names=names):
            if name in _names and not sys._getframe(1).f_code.co_filename.endswith(_SKIP_READERS):
                reads.add(name)
            return object.__getattribute__(self, name)

        saved.append((c, c.__dict__.get("__getattribute__")))
        c.__getattribute__ = getattribute
    try:
        yield
    finally:
        for c, old in saved:
            if old is None:
                del c.__getattribute__
            else:
                c.__getattribute__ = old


def _config(command: str, argv: list[str]):
    args = build_parser(command).parse_args([*command.split(), *argv])
    cls, func = load(COMMANDS[args.func].config), load(COMMANDS[args.func].run)
    return cls, func, from_args(cls, args)


_OUT = {"study", "pretrain", "sft", "orm train", "ei", "rcrl", "eval", "score", "model init", "ppo", "grpo",
        "backtranslate"}
_READS: dict[str, set] = {}


def _walk_argv(walk: Walk, env) -> list[str]:
    out = ["--out", str(env["root"] / "walks" / walk.id.replace(":", "-"))] if walk.command in _OUT else []
    return [*walk.argv(env), *out]


def walk_reads(walk: Walk, env, monkeypatch) -> set:
    """The fields ``walk``'s run reads (run once per module)."""
    if walk.id not in _READS:
        cls, func, cfg = _config(walk.command, _walk_argv(walk, env))
        if walk.command == "study":
            # the plan and the study's own settings; the stages are other commands (walked themselves)
            from mathrl import report, study

            monkeypatch.setattr(study, "run_stages", lambda *a, **k: None)
            monkeypatch.setattr(report, "write_report", lambda *a, **k: "report")
        reads: set = set()
        with field_reads(cls, reads):
            func(cfg)
        _READS[walk.id] = reads
    return _READS[walk.id]


def _given_args(name: str, default, argv: list[str]) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool) or (default is None and name in ("chat_template", "save_merged", "sft_compile")):
        return [flag if default else "--no-" + flag[2:]]
    value = GIVEN_VALUE.get(name, default)
    if isinstance(value, (list, tuple)):
        value = value[0]
    return [f"{flag}={value}"]


def _flags_of(argv: list[str], cls) -> set:
    """The fields ``argv`` gives."""
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return set(vars(parser.parse_args(argv))) - {"config"}


def _cases():
    cases = []
    for walk in WALKS:
        cls = load(COMMANDS[walk.command].config)
        for _, f, default, _ in leaves(cls):
            if (walk.command, f.name) in ALLOW:
                continue
            marks = [pytest.mark.xfail(reason="being split into two modules", strict=False)] \
                if walk.command in PENDING else []
            cases.append(pytest.param(walk, f.name, default, id=f"{walk.id}:--{f.name.replace('_', '-')}",
                                      marks=marks))
    return cases


@pytest.mark.parametrize("walk,name,default", _cases())
def test_a_flag_is_read_or_refused(walk, name, default, env, monkeypatch):
    reads = walk_reads(walk, env, monkeypatch)
    argv = _walk_argv(walk, env)
    cls = load(COMMANDS[walk.command].config)
    if name in _flags_of(argv, cls):
        assert name in reads, f"{walk.id} gives --{name} and the run never reads it"
        assert name not in walk.refused_though_read
        return
    refused = name not in reads or name in walk.refused_though_read
    extra = _given_args(name, default, argv)
    if refused:
        with pytest.raises(UsageError, match="--" + name.replace("_", "-")) as e:
            _config(walk.command, [*argv, *extra])
        assert "\n" not in str(e.value)
    else:
        _config(walk.command, [*argv, *extra])  # read: accepted


def test_the_hand_listed_refusals_name_flags_the_run_reads(env, monkeypatch):
    """An entry of ``refused_though_read`` whose flag the run does not read belongs to the walk itself."""
    for walk in WALKS:
        if walk.command in PENDING:
            continue
        reads = walk_reads(walk, env, monkeypatch)
        assert set(walk.refused_though_read) <= reads, (walk.id, set(walk.refused_though_read) - reads)


def test_the_allow_list_has_no_stale_entry(env, monkeypatch):
    """Each allow-listed flag exists, and some walk of its command neither reads nor refuses it."""
    for (command, name), why in ALLOW.items():
        cls = load(COMMANDS[command].config)
        default = {f.name: d for _, f, d, _ in leaves(cls)}[name]
        needed = False
        for walk in [w for w in WALKS if w.command == command]:
            argv = _walk_argv(walk, env)
            if name in walk_reads(walk, env, monkeypatch):
                continue
            try:
                _config(command, [*argv, *_given_args(name, default, argv)])
                needed = True
            except UsageError:
                pass
        assert needed, f"ALLOW[{command!r}, {name!r}] ({why}) is stale: the walk exercises it now"


def test_the_walk_covers_every_command():
    assert {w.command for w in WALKS} == set(COMMANDS)
