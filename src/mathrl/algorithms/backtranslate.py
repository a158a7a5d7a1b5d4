"""Backtranslated training data (``mathrl backtranslate``): new (question, solution) pairs made by writing a
question for a solution, with a model trained to go backwards.

Havrilla et al. 2024 report that synthetic training data made by backtranslation degraded performance; their
method is not described in what is available of the paper, so this is the standard recipe, stated here:
backtranslation as in machine translation (Sennrich et al. 2016: a target -> source model turns target-side text
into synthetic source sentences), with the target side a solution and the source side its question, and the
round-trip filter of synthetic question generation (Alberti et al. 2019, "Synthetic QA corpora generation with
roundtrip consistency"). Not followed: MetaMath's "backward" questions (Yu et al. 2023) mask a number of a real
question, and MuggleMath (Li et al. 2023) rewrites real questions with a large model; neither writes a question
for a new solution. Loop:

1. **learn** the reverse model: the forward model (an SFT model, which writes solutions) fine-tuned on
   (solution -> question) pairs of train problems: prompt ``Solution: <reference solution>\\nQuestion:``
   (``tasks.base.reverse_prompt``), target `` <question>`` and EOS, loss on the question tokens, for
   ``--reverse-epochs`` (capped by ``--reverse-max-steps``) with SFT's optimizer settings. Its problems are the
   train problems after the ``--questions`` of one seeded shuffled pass: it never sees the questions whose
   solutions it will backtranslate, so it cannot answer by recalling them (the monolingual side of Sennrich et
   al. is text without a source too);
2. **collect**: K solutions (``-k``, ``--temperature``) of each of ``--questions`` train questions, sampled from
   the forward model, then one question for each solution sampled from the reverse model (at ``--temperature``
   too: Edunov et al. 2018 found sampled synthetic sources better than beam search). Solutions are sampled, not
   made by perturbing references: new solution texts in the model's own distribution, and no code that edits a
   task's solution format (which only the Task may read);
3. **score**: each (question, solution) pair goes through the filter (``filter_pairs``): *malformed* (a solution
   without an answer the task can read, a solution or question cut at the length limit, an empty question);
   *failed round trip* (the forward model, prompted with the generated question and decoding greedily, does not
   reach the solution's final answer, as the task grades it: Alberti et al.'s round-trip consistency);
   *duplicate* (its question, up to whitespace and case, is a real question of the train, dev or test split, or
   the question of a pair kept before it); else *kept*. generated = malformed + failed round trip + duplicates +
   kept;
4. **write** OUT/backtranslated.jsonl (``question``, ``solution``, ``answer`` and ``source_id``, the train
   question whose sampled solution it is: the task's jsonl format, ``tasks/jsonl.py``; ``sft``/``ei
   --backtranslated`` read it) and OUT/summary.json with the counts; the reverse model is OUT/reverse.

A checkpoint after each phase holds the reverse model and the state (``BTState``); ``--resume`` continues at the
phase it stopped in. Sampling is counter-based and the reverse model's fine-tuning is a pure function of the seed,
so a phase run again gives what it gave before (the reverse model's fine-tuning is not checkpointed inside: an
interrupted one starts again from the forward model).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from mathrl import checkpoint as ckpt
from mathrl import distributed, engines
from mathrl.algorithms.backtranslate_config import Config
from mathrl.errors import UsageError
from mathrl.metrics import normalize_solution
from mathrl.models import load_model
from mathrl.record import ModelRecord
from mathrl.runlog import RunLogger, progress
from mathrl.runsetup import few_shot_examples, start_run, task_for, write_record
from mathrl.sampler import sampling_params
from mathrl.seeds import rng_state
from mathrl.tasks import task_options
from mathrl.tasks.base import REVERSE_STOP_STRINGS, Problem, reverse_prompt
from mathrl.tasks.prompting import completion_text
from mathrl.training import completion_example, make_optimizer, train_steps

LOG_EVERY = 20  # reverse-model optimizer steps between log lines
PHASES = ("reverse", "collect", "score")


@dataclass(frozen=True)
class Candidate:
    """A generated pair before the filter: a solution the forward model sampled for train question ``source_id``
    and the question the reverse model wrote for it, with how each sample ended (``eos``, ``stop`` or ``length``)."""

    source_id: str
    solution: str
    solution_finish: str
    question: str
    question_finish: str


@dataclass(frozen=True)
class Pair:
    """A kept pair: one row of OUT/backtranslated.jsonl. ``answer``: the solution's final answer as the task reads
    it."""

    question: str
    solution: str
    answer: str
    source_id: str


@dataclass(frozen=True)
class Filtered:
    """What ``filter_pairs`` made of the candidates: the kept pairs and a count per reason to drop one."""

    kept: tuple[Pair, ...]
    generated: int
    malformed: int
    failed_round_trip: int
    duplicates_of_real: int  # the question of a real problem (train, dev or test)
    duplicates_of_generated: int  # the question of a pair kept before

    @property
    def duplicates(self) -> int:
        return self.duplicates_of_real + self.duplicates_of_generated

    def counts(self) -> dict:
        return {"generated": self.generated, "malformed": self.malformed, "failed_round_trip": self.failed_round_trip,
                "duplicates": self.duplicates, "duplicates_of_real": self.duplicates_of_real,
                "duplicates_of_generated": self.duplicates_of_generated, "kept": len(self.kept)}


@dataclass
class BTState:
    """What a backtranslate run carries across phases (saved in each phase's checkpoint): ``phase`` reverse ->
    collect -> score, the reverse model's optimizer steps, the candidates once collected (``Candidate`` fields)."""

    phase: str = "reverse"
    reverse_steps: int = 0
    candidates: list = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BTState":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def round_trip_problem(task, candidate: Candidate, index: int) -> Problem | None:
    """The problem a candidate claims, for the round trip: its generated question with its solution's final answer
    (as the task reads it); None for a malformed candidate (no readable answer, a sample cut at the length limit,
    an empty question)."""
    question = candidate.question.strip()
    if not question or "length" in (candidate.solution_finish, candidate.question_finish):
        return None
    answer = task.extract_answer(candidate.solution)
    if answer is None:
        return None
    return Problem(id=f"backtranslated-{index}", question=question, solution=candidate.solution.strip(),
                   answer=answer)


def question_keys(problems: Iterable[Problem]) -> set[str]:
    """Questions up to whitespace and case (``metrics.normalize_solution``): what counts as the same question."""
    return {normalize_solution(p.question) for p in problems}


def filter_pairs(task, candidates: Sequence[Candidate], replies: Sequence[str | None], real: set[str]) -> Filtered:
    """The filter of step 3 (module docstring), in this order: malformed, failed round trip, duplicate (of a real
    question, ``real`` as ``question_keys`` gives them, then of a pair kept before), kept. ``replies[i]``: the
    forward model's greedy completion of candidate i's generated question (None for a malformed one, which is not
    sampled)."""
    kept: list[Pair] = []
    seen: set[str] = set()
    malformed = failed = of_real = of_generated = 0
    for i, (c, reply) in enumerate(zip(candidates, replies, strict=True)):
        problem = round_trip_problem(task, c, i)
        if problem is None:
            malformed += 1
            continue
        if reply is None:
            raise ValueError(f"candidate {i} is well formed but has no round-trip reply")
        if not task.grade(problem, reply).correct:
            failed += 1
            continue
        key = normalize_solution(problem.question)
        if key in real:
            of_real += 1
        elif key in seen:
            of_generated += 1
        else:
            seen.add(key)
            kept.append(Pair(problem.question, problem.solution, problem.answer, c.source_id))
    return Filtered(tuple(kept), len(candidates), malformed, failed, of_real, of_generated)


def reverse_examples(task, tokenizer, problems: Sequence[Problem]):
    """One Example per problem for the reverse model: ``reverse_prompt(reference solution)`` + `` question`` + EOS,
    the loss on the question and EOS."""
    prompts = [reverse_prompt(task.target(p)) for p in problems]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    question_ids = tokenizer([completion_text(pr, p.question) for pr, p in zip(prompts, problems)],
                             add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [completion_example(a, b + [eos]) for a, b in zip(prompt_ids, question_ids)]


def real_questions(task) -> set[str]:
    """The questions of every split the task has (train: nothing new; dev and test: a leak into evaluation)."""
    keys: set[str] = set()
    for split in ("train", "dev", "test"):
        try:
            keys |= question_keys(task.problems(split))
        except UsageError:  # a user's data without this split: no question of it to repeat
            pass
    return keys


def train(cfg: Config) -> Path:
    ctx = start_run(cfg)
    run_dir, device = ctx.dir, ctx.device
    task = task_for(cfg.model, cfg.data, cfg.prompting)
    forward, tokenizer = load_model(cfg.model, device=device, precision=cfg.run.precision, compute=cfg.compute)
    reverse, _ = load_model(cfg.model, device=device, for_training=True, precision=cfg.run.precision,
                            compute=cfg.compute)
    engine = engines.create(forward, cfg.sampling, cfg.model)  # mathrl's sampler: it samples from either model
    shots = few_shot_examples(task, cfg.model, -1)  # the forward model's prompts, as recorded with it
    train_split = task.problems("train")
    order = list(range(len(train_split)))
    random.Random(cfg.run.seed).shuffle(order)
    n_sources = min(cfg.questions, len(train_split))
    sources = [train_split[i] for i in order[:n_sources]]
    rest = [train_split[i] for i in order[n_sources:]]
    reverse_problems = rest[: cfg.reverse_size] if cfg.reverse_size else rest
    if not reverse_problems:
        raise UsageError(f"--questions {cfg.questions} leaves no train problem for the reverse model to learn from "
                         f"(the split has {len(train_split)})")

    st = BTState()
    last = ckpt.latest_checkpoint(run_dir) if cfg.resume else None
    if last is not None:
        ckpt.load_weights_into(reverse, last)
        st = BTState.from_dict(ckpt.load_state(last))
        print(f"resumed {run_dir} at phase {st.phase}")
    logger = RunLogger(run_dir, cfg, resume_step=st.reverse_steps if last is not None else None)

    def save() -> None:
        ckpt.save_checkpoint(run_dir, PHASES.index(st.phase), reverse, tokenizer, {**st.to_dict(), "rng": rng_state()})

    print(f"backtranslate: {n_sources} questions x K={cfg.sampling.k} solutions, reverse model on "
          f"{len(reverse_problems)} problems, {ctx.threads} threads, {device}")
    if st.phase == "reverse":
        # step 1: fine-tune the reverse model on (solution -> question) pairs of problems it will not backtranslate
        examples = reverse_examples(task, tokenizer, reverse_problems)
        total = math.ceil(math.ceil(len(examples) / cfg.optim.batch_size) * cfg.reverse_epochs)
        total = min(total, cfg.reverse_max_steps) if cfg.reverse_max_steps else total
        optimizer = make_optimizer(reverse, cfg.optim.lr, cfg.optim.weight_decay)
        bar = progress(total, "backtranslate: reverse model", "step")
        done = 0
        try:
            for s in train_steps(reverse, optimizer, examples, cfg.optim, pad_id=tokenizer.pad_token_id,
                                 device=device, total_steps=total, seed=cfg.run.seed):
                done = s.step
                bar.update(1)
                bar.set_postfix(loss=f"{s.loss:.3f}")
                if s.step % LOG_EVERY == 0 or s.step == total:
                    logger.log(s.step, reverse_loss=s.loss, grad_norm=s.grad_norm, lr=s.lr, epoch=s.epoch)
        except FloatingPointError as e:
            raise ckpt.divergence_error(run_dir, done + 1, f"reverse model: {e}") from None
        bar.close()
        del optimizer
        st.phase, st.reverse_steps = "collect", total
        save()
        ckpt.save_model_dir(reverse, tokenizer, run_dir / "reverse")
        write_record(run_dir / "reverse", ModelRecord(task=task_options(task), stage="reverse", base=cfg.model))

    if st.phase == "collect":
        # step 2: K solutions per question from the forward model, one question per solution from the reverse one
        prompts = [task.prompt(p, shots) for p in sources]
        bar = progress(len(prompts) * cfg.sampling.k, "backtranslate: solutions", "sample")
        solutions = engine.sample(forward, tokenizer, prompts, cfg.sampling.k,
                                  sampling_params(cfg.sampling, task.stop_strings, seed=cfg.run.seed),
                                  keys=[p.id for p in sources], progress=bar.update)
        bar.close()
        reverse.eval()
        bar = progress(len(solutions), "backtranslate: questions", "sample")
        questions = engine.sample(reverse, tokenizer, [reverse_prompt(r.text) for r in solutions], 1,
                                  sampling_params(cfg.sampling, REVERSE_STOP_STRINGS, seed=cfg.run.seed + 1),
                                  keys=[f"{r.key}/{r.sample_index}" for r in solutions], progress=bar.update)
        bar.close()
        st.candidates = [dataclasses.asdict(Candidate(sources[s.prompt_index].id, s.text.strip(), s.finish_reason,
                                                      q.text.strip(), q.finish_reason))
                         for s, q in zip(solutions, questions, strict=True)]
        st.phase = "score"
        save()

    # step 3: the round trip (the forward model, greedy, on each well-formed generated question) and the filter
    candidates = [Candidate(**c) for c in st.candidates]
    problems = [round_trip_problem(task, c, i) for i, c in enumerate(candidates)]
    checked = [p for p in problems if p is not None]
    bar = progress(len(checked), "backtranslate: round trip", "sample")
    rollouts = engine.sample(forward, tokenizer, [task.prompt(p, shots) for p in checked], 1,
                             sampling_params(cfg.sampling, task.stop_strings, temperature=0.0, seed=cfg.run.seed),
                             keys=[p.id for p in checked], progress=bar.update) if checked else []
    bar.close()
    reply = {p.id: r.text for p, r in zip(checked, rollouts, strict=True)}
    result = filter_pairs(task, candidates, [reply[p.id] if p else None for p in problems], real_questions(task))
    engine.close()

    # step 4: write the pairs and the counts
    counts = result.counts()
    summary = {**counts, "questions": n_sources, "k": cfg.sampling.k, "reverse_problems": len(reverse_problems),
               "reverse_steps": st.reverse_steps, "model": str(cfg.model), "task": task_options(task)}
    out = run_dir / "backtranslated.jsonl"
    if distributed.is_main():
        out.write_text("".join(json.dumps(dataclasses.asdict(p)) + "\n" for p in result.kept))
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    logger.log(st.reverse_steps, **counts)
    logger.close()
    print(f"backtranslate: {counts['generated']} generated, {counts['malformed']} malformed, "
          f"{counts['failed_round_trip']} failed the round trip, {counts['duplicates']} duplicates "
          f"({counts['duplicates_of_real']} of real questions, {counts['duplicates_of_generated']} of generated "
          f"ones), {counts['kept']} kept; written to {out}")
    return out


def main(cfg: Config) -> None:
    train(cfg)
