"""Instruct models: chat templates, system prompts, prompt templates, stop strings and the Wei et al. few-shot
exemplars, on a tiny random Qwen2-architecture model whose tokenizer has a Qwen-style ChatML template."""

import json

import pytest
import torch

from mathrl.cli import main

CHATML = ("{%- if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
          "{%- endif %}{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=512)


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.glob("*.safetensors"))))


@pytest.fixture(scope="module")
def chat(tiny_model_dir, tmp_path_factory):
    """A Qwen2 model (embedding table padded beyond the tokenizer, as in Qwen checkpoints) whose tokenizer is the
    synthetic task's with <|im_start|>/<|im_end|> added and a ChatML template; a jsonl task with other field names;
    a reward function in a file."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from mathrl.models import load_tokenizer
    from mathrl.tasks import load_task

    root = tmp_path_factory.mktemp("chat")
    tok = load_tokenizer(str(tiny_model_dir))
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"  # as in Qwen2.5-Instruct: the assistant's turn ends the completion
    tok.chat_template = CHATML
    config = AutoConfig.for_model("qwen2", vocab_size=len(tok) + 64, pad_token_id=tok.pad_token_id,
                                  eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, **SMALL)
    torch.manual_seed(0)
    model = root / "qwen2-chat"
    AutoModelForCausalLM.from_config(config).save_pretrained(model)
    tok.save_pretrained(model)
    rows = [{"problem": p.question, "final": p.solution} for p in load_task("synthetic", level=2).problems("train")[:40]]
    data = root / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    reward = root / "chat_reward.py"
    reward.write_text(
        "def reward(prompts, completions, question, **columns):\n"
        "    # the prompts the policy was sampled on are the chat template's, ending in the assistant's header\n"
        "    assert all(p.endswith('<|im_start|>assistant\\n') for p in prompts), prompts[0][-40:]\n"
        "    assert len(question) == len(completions)\n"
        "    return [len(c) % 3 / 2 for c in completions]  # differs within groups: signal\n")
    task = ["--task", f"jsonl:{data}", "--question-field", "problem", "--answer-field", "final"]
    return {"model": model, "data": data, "reward": reward, "task": task, "root": root}


def test_qwen2_chat_model_evaluates_and_trains_with_grpo_lora_on_a_jsonl_task_and_reward_function(chat, tmp_path):
    from mathrl.runsetup import task_for
    from mathrl.settings import Data

    small = ["--max-new-tokens", "8", "--threads", "1"]
    assert main(["eval", "--model", str(chat["model"]), *chat["task"], "--chat-template", "-n", "3", "-k", "2",
                 "--out", str(tmp_path / "eval"), *small]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n_questions"] == 3
    out = tmp_path / "grpo"
    assert main(["grpo", "--model", str(chat["model"]), *chat["task"], "--chat-template", "--lora-rank", "8",
                 "--reward", f"{chat['reward']}:reward", "--iterations", "2", "--prompts", "4", "-k", "2",
                 "--batch-size", "4", "--eval-size", "2", "--eval-k", "2", "--out", str(out), *small]) == 0
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["rollouts"] == 16 and all(h["zero_signal_fraction"] < 1 for h in history[1:])
    before, after = _weights(chat["model"]), _weights(out / "model")  # LoRA: the adapters merged into the weights
    assert any(not torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((out / "model" / "mathrl.json").read_text())
    assert meta["prompting"]["chat_template"] is True and meta["task"]["question_field"] == "problem"
    # the next command prompts the trained model the same way without the flags
    task = task_for(str(out / "model"), Data())
    assert task.prompt(task.problems("test")[0]).endswith("<|im_start|>assistant\n")


def test_a_reward_model_trained_on_chat_prompts_records_them_and_scores_with_them(chat, tmp_path):
    out = tmp_path / "orm"
    assert main(["orm", "train", "--model", str(chat["model"]), *chat["task"], "--chat-template", "--system-prompt",
                 "Be brief.", "--questions", "6", "-k", "2", "--epochs", "1", "--batch-size", "4",
                 "--max-new-tokens", "6", "--out", str(out), "--threads", "1"]) == 0
    prompting = json.loads((out / "model" / "mathrl.json").read_text())["prompting"]
    assert prompting["chat_template"] is True and prompting["system_prompt"] == "Be brief."
    rows = [json.loads(line) for line in chat["data"].read_text().splitlines()]
    data = tmp_path / "plain.jsonl"  # score reads the default field names
    data.write_text("".join(json.dumps({"question": r["problem"], "answer": r["final"]}) + "\n" for r in rows))
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps({"question": r["problem"], "completions": ["3 + 4 = 7\n#### 7", "#### 8"]})
                               + "\n" for r in rows[:3]))
    assert main(["score", "--task", f"jsonl:{data}", "--samples", str(samples), "--split", "train", "--orm",
                 str(out / "model"), "--out", str(tmp_path / "scored"), "--device", "cpu"]) == 0
    scored = [json.loads(line) for line in (tmp_path / "scored" / "scored.jsonl").read_text().splitlines()]
    assert scored and all(len(r["scores"]) == 2 and all(0 <= x <= 1 for x in r["scores"]) for r in scored)


def test_chat_prompts_are_the_templates_conversation_and_the_completion_is_the_assistant_turn(chat):
    from mathrl.models import load_tokenizer
    from mathrl.runsetup import task_for
    from mathrl.settings import Data, Prompting

    data = Data(task=f"jsonl:{chat['data']}", question_field="problem", answer_field="final")
    task = task_for(str(chat["model"]), data, Prompting(chat_template=True, system_prompt="Be brief.",
                                                       stop=["\n\nQ:"]))
    p, shot = task.problems("test")[0], task.problems("train")[0]
    assert task.prompt(p) == (f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{p.question}<|im_end|>\n"
                              "<|im_start|>assistant\n")
    # few-shot examples are earlier turns of the conversation
    assert task.prompt(p, [shot]) == (
        f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{shot.question}<|im_end|>\n"
        f"<|im_start|>assistant\n{shot.solution}<|im_end|>\n<|im_start|>user\n{p.question}<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert task.target(p) == p.solution  # no space after the assistant's header
    assert task.stop_strings == ("\n\nQuestion:", "\n\nQ:", "<|im_end|>")  # the template's end of turn, too
    tok = load_tokenizer(str(chat["model"]))
    ids = tok(task.prompt(p), add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3  # the markers are single special tokens
    # without --system-prompt the template's own default system message stays
    assert task_for(str(chat["model"]), data, Prompting(chat_template=True)).prompt(p).startswith(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_a_base_model_in_a_chat_template_stops_at_the_end_of_the_assistants_turn(chat, tmp_path):
    """A base model given a chat template (Qwen2.5 base: EOS <|endoftext|>, turns closed by <|im_end|>) would write
    past its turn into a next one; the template's end of turn is a stop string. The policy here writes <|im_end|>
    after three tokens whatever the prompt (its output layer is replaced): the completion stops there."""
    import shutil

    from mathrl.models import load_model
    from mathrl.runsetup import end_of_turn, task_for
    from mathrl.sampler import SamplingParams, sample
    from mathrl.settings import Data, Prompting

    base = tmp_path / "base"
    shutil.copytree(chat["model"], base)
    model, tok = load_model(str(base), device="cpu")
    tok.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    tok.eos_token = "<|endoftext|>"  # a base model's EOS: the end of a document, not of a turn
    tok.save_pretrained(base)
    model.config.eos_token_id = model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(base)
    model, tok = load_model(str(base), device="cpu")
    assert end_of_turn(tok) == "<|im_end|>"
    task = task_for(str(base), Data(task=f"jsonl:{chat['data']}", question_field="problem", answer_field="final"),
                    Prompting(chat_template=True))
    assert "<|im_end|>" in task.stop_strings
    end, digit = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("1")
    hidden = model.config.hidden_size
    counter = torch.nn.Linear(hidden, model.config.vocab_size)  # logits from a constant: "1" then, later, the end
    with torch.no_grad():
        counter.weight.zero_()
        counter.bias.fill_(-30.0)
        counter.bias[digit] = 10.0
    model.lm_head = counter
    prompt = task.prompt(task.problems("test")[0])
    params = SamplingParams(temperature=0.0, max_new_tokens=12, stop_strings=task.stop_strings)
    (runs_on,) = sample(model, tok, [prompt], 1, params)
    assert runs_on.finish_reason == "length" and len(runs_on.completion_ids) == 12
    with torch.no_grad():
        counter.bias[end] = 20.0  # the end of turn first
    (stopped,) = sample(model, tok, [prompt], 1, params)
    assert stopped.finish_reason == "stop" and stopped.completion_ids == [end] and stopped.text == ""
    (no_stop,) = sample(model, tok, [prompt], 1, SamplingParams(temperature=0.0, max_new_tokens=12))
    assert no_stop.finish_reason == "length"  # without the stop string it runs on: the test can fail


def test_a_bos_in_the_chat_template_is_not_added_twice(chat, tmp_path):
    """Llama-style templates start with the BOS token as text; prompts are tokenized without special tokens, so the
    sampled prompt and SFT's training sequence hold it exactly once."""
    import shutil

    from mathrl.algorithms.sft import build_examples
    from mathrl.models import load_model
    from mathrl.runsetup import task_for
    from mathrl.sampler import SamplingParams, sample
    from mathrl.settings import Data, Prompting

    model_dir = tmp_path / "bos"
    shutil.copytree(chat["model"], model_dir)
    (model_dir / "chat_template.jinja").write_text(
        "{{ bos_token }}{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    task = task_for(str(model_dir), Data(task=f"jsonl:{chat['data']}", question_field="problem", answer_field="final"),
                   Prompting(chat_template=True))
    model, tok = load_model(str(model_dir), device="cpu", dtype=torch.float32)
    p = task.problems("train")[0]
    assert task.prompt(p).startswith(tok.bos_token)
    rollout = sample(model, tok, [task.prompt(p)], 1, SamplingParams(max_new_tokens=2, seed=0))[0]
    assert rollout.prompt_ids[0] == tok.bos_token_id and rollout.prompt_ids.count(tok.bos_token_id) == 1
    example = build_examples(task, tok, [p], whole_sequence=False)[0]
    assert example.input_ids.count(tok.bos_token_id) == 1


def test_prompt_template_file_and_stop_flags_and_what_the_model_records(chat, tmp_path):
    from mathrl.config import add_arguments, from_args
    from mathrl.runsetup import prompt_format, task_for
    from mathrl.settings import Data, Prompting
    from mathrl.tasks.prompting import PromptFormat

    template = tmp_path / "template.txt"
    template.write_text("Solve step by step, then write '#### N'.\n\n{question}")
    data = Data(task=f"jsonl:{chat['data']}", question_field="problem", answer_field="final")
    task = task_for(str(chat["model"]), data, Prompting(chat_template=True, prompt_template=str(template)))
    p = task.problems("test")[0]
    assert f"<|im_start|>user\nSolve step by step, then write '#### N'.\n\n{p.question}<|im_end|>" in task.prompt(p)
    # `--stop A --stop B` and `--stop A B` both give both
    import argparse

    parser = argparse.ArgumentParser()
    from mathrl.commands import EvalConfig

    add_arguments(parser, EvalConfig)
    for argv in (["--stop", "X", "--stop", "Y"], ["--stop", "X", "Y"]):
        assert from_args(EvalConfig, parser.parse_args(["--model", "m", *argv])).prompting.stop == ["X", "Y"]
    # a model's record is the default; a flag overrides it, '' and --no-chat-template included
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    fmt = PromptFormat(chat_template=True, system_prompt="Be brief.", template="Q: {question}", stop=("\n\nQ:",))
    (recorded / "mathrl.json").write_text(json.dumps({"prompting": fmt.to_meta()}))
    assert prompt_format(str(recorded), Prompting()) == fmt
    assert prompt_format(str(recorded), Prompting(chat_template=False, prompt_template="", stop=[])) == PromptFormat(
        system_prompt="Be brief.")


def test_prompt_template_system_prompt_and_stop_strings_in_plain_prompts():
    from mathrl.tasks import load_task
    from mathrl.tasks.prompting import PromptFormat, completion_text, with_format

    base = load_task("synthetic", level=2)
    p, s1, s2 = base.problems("test")[0], *base.problems("train")[:2]
    template = "Solve it; end with \\boxed{{}}.\nQ: {question}\nA:"  # braces other than {question} stay as written
    task = with_format(base, PromptFormat(template=template, system_prompt="You are careful.", stop=("\n\nQ:",)))
    user = lambda q: template.replace("{question}", q)  # noqa: E731
    assert task.prompt(p, [s1, s2]) == ("You are careful.\n\n" + user(s1.question) + " " + s1.solution + "\n\n"
                                        + user(s2.question) + " " + s2.solution + "\n\n" + user(p.question))
    assert "\\boxed{{}}" in task.prompt(p) and task.target(p) == " " + p.solution
    assert task.stop_strings == base.stop_strings + ("\n\nQ:",)
    # a template that ends its prompt with a newline: the completion starts right after it
    lined = with_format(base, PromptFormat(template="Problem: {question}\nSolution:\n"))
    assert lined.target(p) == p.solution and completion_text("A:", " x ") == " x"
    # grading, steps and options are the task's own
    assert task.grade(p, p.solution).verified and task.level == base.level and task.name == "synthetic"
    assert with_format(base, PromptFormat()) is base  # the plain format leaves the task untouched


def test_wei2022_exemplars_are_the_eight_cot_examples_and_read_by_strict_extraction(chat):
    from mathrl.runsetup import few_shot_examples, task_for
    from mathrl.settings import Data
    from mathrl.tasks import load_task
    from mathrl.tasks.exemplars import WEI2022
    from mathrl.tasks.gsm8k import GSM8KTask

    assert len(WEI2022) == 8 and WEI2022[0].question.startswith("There are 15 trees in the grove")
    assert [e.question.split()[0] for e in WEI2022] == ["There", "If", "Leah", "Jason", "Shawn", "There", "Michael",
                                                        "Olivia"]
    strict = GSM8KTask(extract="strict")
    assert all(strict.grade(e, e.solution).correct for e in WEI2022)
    assert [e.answer for e in WEI2022] == ["6", "5", "39", "8", "9", "29", "33", "8"]
    task = task_for(str(chat["model"]), Data(task=f"jsonl:{chat['data']}", question_field="problem",
                                            answer_field="final"))
    shots = few_shot_examples(task, str(chat["model"]), 8, "wei2022")
    prompt = task.prompt(task.problems("test")[0], shots)
    assert prompt.count("Question: ") == 9 and "The answer is 8.\n#### 8\n\nQuestion:" in prompt
    assert few_shot_examples(task, str(chat["model"]), 2, "")[0].id.startswith("mine-")  # the default: train
    with pytest.raises(Exception, match="has 8 exemplars"):
        few_shot_examples(task, str(chat["model"]), 9, "wei2022")
    with pytest.raises(Exception, match="synthetic task"):
        few_shot_examples(load_task("synthetic"), str(chat["model"]), 2, "wei2022")


@pytest.mark.parametrize("make_argv,message", [
    (lambda c, d: ["eval", "--model", str(d), "--chat-template"], "its tokenizer has no chat template"),
    (lambda c, d: ["eval", "--model", str(c["model"]), *c["task"], "--prompt-template", str(c["root"] / "bad.txt")],
     "needs a {question} placeholder"),
    (lambda c, d: ["eval", "--model", str(d), "--prompt-template", "/nonexistent/template.txt"], "cannot read it"),
    (lambda c, d: ["grpo", "--model", str(d), "--stop", ""], "a stop string may not be empty"),
    (lambda c, d: ["grpo", "--model", str(c["model"]), *c["task"], "--lora-rank", "4", "--lora-targets", "qkv_fused",
                   "--out", str(c["root"] / "bad-lora")], "--lora-targets qkv_fused"),
    (lambda c, d: ["sft", "--chat-template"], "--chat-template needs --model"),
    (lambda c, d: ["sft", "--model", str(d), "--no-save-merged"], "without LoRA"),
    (lambda c, d: ["grpo", "--model", str(d), "--lora-targets", "q_proj"], "without LoRA"),
    (lambda c, d: ["rcrl", "--model", str(d), "--lora-rank", "2", "--no-save-merged"], "its LoRA runs save merged"),
    (lambda c, d: ["eval", "--model", str(d), "--exemplars", "gpt4"], "unknown exemplars 'gpt4'"),
    (lambda c, d: ["eval", "--model", str(d), "--shots", "2", "--exemplars", "wei2022"], "GSM8K word problems"),
    (lambda c, d: ["eval", "--model", str(d), "--gradient-checkpointing"], "eval trains nothing"),
    (lambda c, d: ["eval", "--model", str(d), "--attn-implementation", "fast"], "unknown attn_implementation 'fast'"),
    (lambda c, d: ["ei", "--model", str(d), "--lora-rank", "2", "--fsdp"], "--fsdp with --lora-rank"),
    (lambda c, d: ["sft", "--compile", "--gradient-checkpointing"], "--compile with --gradient-checkpointing"),
])
def test_bad_prompting_input_is_one_line_and_exit_2(chat, tiny_model_dir, make_argv, message, capsys):
    (chat["root"] / "bad.txt").write_text("Answer this: {q}\n")
    assert main(make_argv(chat, tiny_model_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err, err


def test_return_tokens_in_a_table_padded_beyond_the_tokenizer_start_at_the_trained_rows_mean(chat):
    """Qwen checkpoints pad the embedding table beyond the tokenizer; RCRL's [GOOD]/[BAD] land on padding rows that
    were never trained. The table keeps its size and those rows start at the mean of the trained rows, in the input
    and the output table (untied here)."""
    from mathrl.algorithms.rcrl import add_return_tokens
    from mathrl.models import load_model

    model, tok = load_model(str(chat["model"]), device="cpu")
    rows, trained = model.get_input_embeddings().weight.shape[0], len(tok)
    assert rows >= trained + 2 and not model.config.tie_word_embeddings
    before = {n: t.weight.detach().clone() for n, t in (("in", model.get_input_embeddings()),
                                                         ("out", model.get_output_embeddings()))}
    good, bad = add_return_tokens(model, tok)
    assert (good, bad) == (trained, trained + 1)
    for name, table in (("in", model.get_input_embeddings()), ("out", model.get_output_embeddings())):
        w = table.weight.detach()
        assert w.shape[0] == rows  # not shrunk to the tokenizer
        mean = before[name][:trained].mean(0)
        assert torch.allclose(w[good], mean) and torch.allclose(w[bad], mean)
        assert not torch.allclose(before[name][good], mean)  # the padding row it replaced was not the mean
        assert torch.equal(w[:trained], before[name][:trained]) and torch.equal(w[bad + 1:], before[name][bad + 1:])


def test_a_model_whose_tokenizer_adds_a_bos_gets_it_once_before_every_plain_prompt(tiny_model_dir, tmp_path):
    """Prompts are tokenized without special tokens (a chat template writes its own BOS); a model trained with a
    BOS before every text (Gemma, Llama 2) gets it as the prompt's first token, once, in sampling and in SFT's
    training sequence alike. The embedded tokenizer adds none: its prompts are unchanged."""
    import shutil

    from mathrl.models import load_tokenizer
    from mathrl.runsetup import task_for
    from mathrl.settings import Data

    plain = task_for(str(tiny_model_dir), Data())
    p = plain.problems("test")[0]
    assert not plain.prompt(p).startswith("<s>")
    d = tmp_path / "bos"
    shutil.copytree(tiny_model_dir, d)
    tok = load_tokenizer(str(d))
    tok.add_bos_token = True
    tok.save_pretrained(d)
    tok = load_tokenizer(str(d))
    task = task_for(str(d), Data())
    assert task.prompt(p) == "<s>" + plain.prompt(p)
    for text in (task.prompt(p), task.prompt(p) + task.target(p)):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert ids[1:] == tok(text[len("<s>"):], add_special_tokens=False)["input_ids"]
