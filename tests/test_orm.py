"""The reward model's ranking inside a question: the within-question AUC, the pairwise loss and its batches, by hand;
a training run on hand-labelled samples, and the flag's refusals."""

import dataclasses
import json
import math
import random

import pytest
import torch

from mathrl.algorithms.orm import Judged, RankedBatch, by_question, pack, question_batches, ranked_grads
from mathrl.cli import main
from mathrl.metrics import within_question_auc
from mathrl.reward_model import pairwise_loss
from mathrl.training import Example, collate


def test_within_question_auc_by_hand():
    # question a: correct 0.9, 0.4 vs incorrect 0.5: pairs (0.9>0.5) 1, (0.4<0.5) 0 -> 1/2
    # question b: correct 0.3 vs incorrect 0.3, 0.1: a tie 1/2 and a win 1 -> 3/4
    # question c: all correct, d: all incorrect -> no pairs, left out. Mean (1/2 + 3/4) / 2 = 5/8
    scores = [0.9, 0.4, 0.5, 0.3, 0.3, 0.1, 0.7, 0.2]
    labels = [True, True, False, True, False, False, True, False]
    questions = ["a", "a", "a", "b", "b", "b", "c", "d"]
    assert within_question_auc(scores, labels, questions) == pytest.approx(5 / 8)
    # the pooled AUC of the same scores differs: it compares across questions too
    # a score that only knows the question (every sample of a question scores alike) ranks nothing within one: 1/2
    assert within_question_auc([0.9, 0.9, 0.1, 0.1], [True, False, True, False], ["e", "e", "f", "f"]) == 0.5
    assert math.isnan(within_question_auc([0.2, 0.8], [True, True], ["g", "h"]))
    with pytest.raises(ValueError):
        within_question_auc([0.1], [True], [])


def test_pairwise_loss_by_hand():
    scores = torch.tensor([2.0, 0.0, 1.0, 3.0, -1.0, 5.0])
    correct = torch.tensor([True, False, True, False, True, True])
    question = torch.tensor([0, 0, 0, 1, 1, 2])
    # question 0: correct 2 and 1 vs incorrect 0: -log sigmoid(2) = log(1 + e^-2) = 0.126928,
    #   -log sigmoid(1) = log(1 + e^-1) = 0.313262; mean 0.220095
    # question 1: correct -1 vs incorrect 3: log(1 + e^4) = 4.018150
    # question 2: one correct sample, no pair. Sum 4.238245 over 2 questions
    total, n = pairwise_loss(scores, correct, question)
    assert n == 2
    assert total.item() == pytest.approx(0.5 * (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1)))
                                         + math.log1p(math.exp(4)))
    assert total.item() == pytest.approx(4.238245, abs=1e-6)
    # the same samples split into two questions-whole halves add up to the same sum
    a, _ = pairwise_loss(scores[:3], correct[:3], question[:3])
    b, _ = pairwise_loss(scores[3:], correct[3:], question[3:])
    assert (a + b).item() == pytest.approx(total.item())
    # samples of different questions are never compared: question 1's incorrect 3 against question 0 adds nothing
    assert pairwise_loss(scores[:4], correct[:4], question[:4])[0].item() == pytest.approx(0.220095, abs=1e-6)
    # the gradient raises the correct sample's score and lowers the incorrect one's
    s = scores.clone().requires_grad_(True)
    pairwise_loss(s, correct, question)[0].backward()
    assert s.grad[0] < 0 and s.grad[1] > 0 and s.grad[5] == 0


def test_question_batches_keep_questions_whole():
    questions = [q for q in "aabbbcdddd" for _ in range(1)] + ["e"] * 6
    batches = question_batches(questions, 5, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(len(questions)))
    for b in batches:
        qs = {questions[i] for i in b}
        assert all(sum(questions[i] == q for i in b) == questions.count(q) for q in qs)  # whole questions
        assert len(b) <= 5 or len(qs) == 1  # a question larger than the batch goes alone
    assert by_question([3, 0, 1, 2], ["x", "y", "x", "y"]) == [[3, 1], [0, 2]]
    assert pack([[0, 1], [2], [3, 4, 5], [6]], 3) == [[0, 1, 2], [3, 4, 5], [6]]


def _tiny_classifier():
    from transformers import LlamaConfig, LlamaForTokenClassification

    torch.manual_seed(0)
    model = LlamaForTokenClassification(LlamaConfig(
        vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, num_labels=1, pad_token_id=0))
    return model.eval()  # no dropout: the two runs below must see the same function


def test_ranked_grads_accumulate_exactly_over_micro_batches_of_whole_questions():
    rng = random.Random(0)
    examples = []
    for i in range(8):  # 2 questions of 4 samples, correct and incorrect alternating
        prompt = [rng.randrange(3, 32) for _ in range(rng.randint(2, 5))]
        completion = [rng.randrange(3, 32) for _ in range(rng.randint(1, 5))]
        examples.append(Example(tuple(prompt + completion), (False,) * len(prompt) + (True,) * len(completion),
                                (0.0,) * len(prompt) + (float(i % 2 == 0),) * len(completion)))
    correct = torch.tensor([i % 2 == 0 for i in range(8)])
    question = torch.tensor([i // 4 for i in range(8)])
    total = sum(sum(e.loss_mask) for e in examples)
    whole, split = _tiny_classifier(), _tiny_classifier()
    loss_whole = ranked_grads(whole, [RankedBatch(collate(examples, 0), correct, question)], "cpu", total, 2, 1.0)
    blank = Example(examples[0].input_ids, (False,) * len(examples[0].input_ids), examples[0].labels)
    # one question per micro-batch, plus FSDP's blank pass (no targets, alone in its question): the same gradient
    loss_split = ranked_grads(split, [RankedBatch(collate(examples[:4], 0), correct[:4], question[:4]),
                                      RankedBatch(collate(examples[4:], 0), correct[4:], question[4:]),
                                      RankedBatch(collate([blank], 0), torch.tensor([False]), torch.tensor([-1]))],
                              "cpu", total, 2, 1.0)
    assert loss_split == pytest.approx(loss_whole, rel=1e-6)
    for (name, a), (_, b) in zip(whole.named_parameters(), split.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def _labelled(out, n_questions: int):
    """Hand-labelled samples for the first questions of the synthetic task: the reference solution (correct) and
    the same with a wrong final answer (incorrect), twice each, written where ``orm train`` reuses them."""
    from mathrl.tasks import load_task

    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, p in enumerate(load_task("synthetic", level=2).problems("train")[:n_questions]):
        wrong = p.solution.rsplit("####", 1)[0] + f"#### {int(p.answer) + 1}"
        for text, ok in ((p.solution, True), (wrong, False), (p.solution, True), (wrong, False)):
            records.append(Judged(p.id, i, text, ok, None, 1))
    (out / "labelled.jsonl").write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in records))


def _weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.glob("*.safetensors"))))


def _train(tiny_model_dir, out, *extra):
    _labelled(out, 10)
    assert main(["orm", "train", "--model", str(tiny_model_dir), "--out", str(out), "--questions", "10",
                 "--heldout", "0.2", "--epochs", "2", "--batch-size", "8", "--warmup-steps", "0", "--threads", "1",
                 *extra]) == 0
    return _weights(out / "model")


def test_pairwise_training_changes_the_weights(tiny_model_dir, tmp_path):
    start = _weights(tiny_model_dir)
    whole = _train(tiny_model_dir, tmp_path / "whole", "--pairwise-weight", "1")
    trunk = [k for k in whole if k in start and whole[k].shape == start[k].shape]
    assert trunk and any(not torch.equal(whole[k], start[k]) for k in trunk)
    report = json.loads((tmp_path / "whole" / "report.json").read_text())
    assert report["n_heldout_mixed_questions"] == 2 and 0 <= report["auc_within_question"] <= 1
    # the pairwise term moves the weights elsewhere than the BCE alone
    bce = _train(tiny_model_dir, tmp_path / "bce", "--pairwise-weight", "0")
    assert any(not torch.allclose(whole[k], bce[k], atol=1e-4) for k in whole)


@pytest.mark.parametrize("argv,message", [
    (["--pairwise-weight", "1", "-k", "1"], "-k 1 leaves no question two samples to rank"),
    (["--pairwise-weight", "-1"], "pairwise-weight must be >= 0"),
])
def test_pairwise_weight_refused_where_it_does_nothing(argv, message, capsys):
    assert main(["orm", "train", "--model", "x", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and message in err and "\n" not in err
