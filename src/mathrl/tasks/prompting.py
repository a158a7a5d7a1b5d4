"""How a question becomes a prompt when a model needs more than its task's own ``Question:/Answer:`` format: an
instruct model's chat template, a system prompt, a prompt template of the user's, extra stop strings.

``PromptFormat`` is what the user asked for (``--chat-template``, ``--system-prompt``, ``--prompt-template FILE``,
``--stop``). Every command that writes a model records it in mathrl.json (``prompting``, beside ``shots``), so
the next command prompts that model the same way without the flags. ``with_format(task, fmt, chat)`` is the task
prompted that way; for the plain format it is the task itself, untouched.

A prompt, for a question and few-shot (question, solution) pairs:

- **chat template**: [the system message], a user turn with each shot's question and an assistant turn with its
  solution, then a user turn with the question; rendered by the tokenizer's own template with its generation
  prompt, so the completion is the assistant's turn (``chat`` is the renderer: this package knows no tokenizer);
- **prompt template, no chat**: each shot as template(question) + solution + a blank line, then
  template(question), so the shots show the model the format it is asked to continue;
- **neither**: the task's own prompt;
- a **system prompt** without a chat template is the prompt's first paragraph.

A template's ``{question}`` is its only placeholder, replaced literally (other braces, such as ``\\boxed{}`` in an
instruction, stay as written). A completion follows its prompt with a space when the prompt ends in a word
("Answer:" -> " 42") and directly when it ends in whitespace (a chat template's "assistant\\n")
(``completion_text``); targets, the samples EI and RCRL train on, and the texts a reward model reads all follow
that rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from mathrl.errors import UsageError
from mathrl.settings import PLACEHOLDER, check_stop, check_template
from mathrl.tasks.base import Problem


@dataclass(frozen=True)
class PromptFormat:
    """How prompts are formatted (see the module docstring). ``template``: the prompt template's text (the file's
    contents, so that a model directory records it whole); ``stop``: stop strings beyond the task's own."""

    chat_template: bool = False
    system_prompt: str = ""
    template: str = ""
    stop: tuple[str, ...] = ()
    # the BOS token's text, leading every prompt outside a chat template, for a model whose tokenizer adds one
    # (Gemma, Llama 2: trained with it first). Prompts are tokenized without special tokens (a chat template writes
    # its own), which reads it back as its one id. Not recorded: the model's tokenizer says it each time
    bos: str = ""

    @property
    def plain(self) -> bool:
        return self == PromptFormat()

    def to_meta(self) -> dict:
        return {"chat_template": self.chat_template, "system_prompt": self.system_prompt,
                "template": self.template, "stop": list(self.stop)}

    @classmethod
    def from_meta(cls, meta: dict) -> "PromptFormat":
        return cls(chat_template=bool(meta.get("chat_template", False)), system_prompt=meta.get("system_prompt", ""),
                   template=meta.get("template", ""), stop=tuple(meta.get("stop", ())))


def completion_text(prompt: str, text: str) -> str:
    """The completion that writes solution ``text`` after ``prompt``: a space after a prompt that ends in a word,
    none after one that ends in whitespace (module docstring)."""
    return ("" if prompt[-1:].isspace() else " ") + text.strip()


class PromptedTask:
    """``task`` with its prompts in format ``fmt``; grading, steps and data are the task's own.

    ``chat(messages) -> text`` renders a conversation with the model's chat template and its generation prompt
    (needed when ``fmt.chat_template``). Attributes this class does not define (the task's options: ``extract``,
    ``level``, ``fields()``...) are the task's."""

    def __init__(self, task, fmt: PromptFormat, chat: Callable[[list[dict]], str] | None = None):
        if fmt.chat_template and chat is None:
            raise ValueError("a chat-template format needs a renderer")
        check_stop(fmt.stop)
        if fmt.template:
            check_template(fmt.template, "prompt template")
        self.task, self.format, self._chat = task, fmt, chat
        self.name, self.step_end = task.name, task.step_end
        # the chat template's end of an assistant turn (``runsetup.end_of_turn``) stops a completion, too
        turn_end = (getattr(chat, "end_of_turn", ""),) if fmt.chat_template else ()
        extra = tuple(dict.fromkeys(s for s in (*fmt.stop, *turn_end) if s and s not in task.stop_strings))
        self.stop_strings = tuple(task.stop_strings) + extra

    def __getattr__(self, name):  # only called for attributes not found on self: the task's own options
        if name == "task":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.task, name)

    def _user(self, question: str) -> str:
        return self.format.template.replace(PLACEHOLDER, question) if self.format.template else question

    def prompt(self, problem: Problem, shots: Sequence[Problem] = ()) -> str:
        fmt = self.format
        if fmt.chat_template:
            messages = [{"role": "system", "content": fmt.system_prompt}] if fmt.system_prompt else []
            for s in shots:
                messages += [{"role": "user", "content": self._user(s.question)},
                             {"role": "assistant", "content": self.task.target(s).strip()}]
            messages.append({"role": "user", "content": self._user(problem.question)})
            return self._chat(messages)
        if fmt.template:
            blocks = [self._user(s.question) for s in shots]
            blocks = [b + completion_text(b, self.task.target(s)) + "\n\n" for b, s in zip(blocks, shots)]
            text = "".join(blocks) + self._user(problem.question)
        else:
            text = self.task.prompt(problem, shots)
        return fmt.bos + (f"{fmt.system_prompt}\n\n{text}" if fmt.system_prompt else text)

    def target(self, problem: Problem) -> str:
        return completion_text(self.prompt(problem), self.task.target(problem))

    def problems(self, split: str) -> list[Problem]:
        return self.task.problems(split)

    def extract_answer(self, text: str):
        return self.task.extract_answer(text)

    def grade(self, problem: Problem, completion: str):
        return self.task.grade(problem, completion)

    def step_results(self, text: str) -> list[str]:
        return self.task.step_results(text)

    def step_spans(self, text: str) -> list[tuple[int, int]]:
        return self.task.step_spans(text)


def with_format(task, fmt: PromptFormat, chat: Callable[[list[dict]], str] | None = None):
    """``task`` prompted in format ``fmt``: the task itself for the plain format. The chat renderer is tried once
    here, so that a template that cannot render a conversation (say, one without a system role given a system
    prompt) fails before any work, in one line."""
    if fmt.plain:
        return task
    prompted = PromptedTask(task, fmt, chat)
    probe = Problem(id="probe", question="What is 2 + 3?", solution="#### 5", answer="5")
    try:
        prompted.prompt(probe)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - a Jinja error of the model's own template
        raise UsageError(f"the chat template cannot render this conversation ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return prompted


def prompt_record(task) -> dict:
    """What mathrl.json records of ``task``'s prompt format (nothing for the plain format)."""
    return {"prompting": task.format.to_meta()} if isinstance(task, PromptedTask) else {}
