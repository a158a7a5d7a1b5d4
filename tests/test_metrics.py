"""Metric functions, with expected values derived by hand (metrics.py)."""

import math

import pytest

from mathrl.metrics import auc, distinct_count, maj_at_k, majority_vote_score, pass_at_k, rerank_at_k, rerank_score


def test_pass_at_k_by_hand():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1 (n-c < k)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(10, 0, 5) == 0.0
    # verl PR #7240's example: 1 correct of 4 -> pass@4 is 1.0 (a bootstrap best@4 gives 0.684)
    assert pass_at_k(4, 1, 4) == 1.0
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)  # k > n
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_pass_at_k_matches_combinatorial_form():
    for n in range(1, 12):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact)


def test_majority_vote_tie_rule_and_unparsed():
    # "5" twice, "6" once: 5 wins -> 1 if the reference is 5
    assert majority_vote_score(["5", "6", "5"], "5") == 1.0
    assert majority_vote_score(["5", "6", "5"], "6") == 0.0
    # tie between 5 and 6: the reference is one of 2 winners -> 1/2, whatever the order
    assert majority_vote_score(["5", "6"], "5") == 0.5
    assert majority_vote_score(["6", "5"], "5") == 0.5
    # unparsed answers never vote, even when they are the most frequent: 7 wins alone
    assert majority_vote_score([None, None, None, "7"], "7") == 1.0
    assert majority_vote_score([None, None], "7") == 0.0


def test_maj_at_k_uses_all_samples_when_k_equals_n_and_averages_subsets_otherwise():
    answers = ["1", "1", "2", "2", "2"]
    assert maj_at_k(answers, "2", 5) == 1.0
    # k=1: each subset is one answer; the average over many subsets approaches the sample accuracy 3/5
    assert maj_at_k(answers, "2", 1, n_subsets=2000) == pytest.approx(0.6, abs=0.05)
    # deterministic
    assert maj_at_k(answers, "2", 3) == maj_at_k(answers, "2", 3)


def test_rerank():
    # the top score (0.9) is the wrong one -> 0
    assert rerank_score([0.1, 0.9, 0.5], [True, False, True]) == 0.0
    # two samples share the top score, one correct -> 1/2
    assert rerank_score([0.9, 0.9, 0.1], [True, False, False]) == 0.5
    assert rerank_at_k([0.2, 0.8], [False, True], 2) == 1.0


def test_auc_and_diversity():
    # positives 0.9, 0.8 vs negatives 0.1: perfect ranking
    assert auc([0.9, 0.1, 0.8], [True, False, True]) == 1.0
    # pairs (pos, neg): (0.5 vs 0.5) tie -> 1/2
    assert auc([0.5, 0.5], [True, False]) == 0.5
    # pos {0.3, 0.7} vs neg {0.5}: one of two pairs right -> 0.5
    assert auc([0.3, 0.7, 0.5], [True, True, False]) == 0.5
    assert math.isnan(auc([0.1], [True]))
    assert distinct_count(["1", "1", None, "2"]) == 2


def test_summarize_k_problems_and_verified_diversity():
    # 3 problems, greedy on all, K=2 samples on the first 2 only (evaluate(..., k_problems=2))
    from mathrl.evaluate import QuestionResult, question_record, summarize
    from mathrl.tasks.base import Grade, Problem, StepCheck

    ok, bad_step = StepCheck((), 1, None), StepCheck((), 1, 0)
    probs = [Problem(id=f"p{i}", question="q", solution="s", answer=str(i), difficulty=1) for i in range(3)]
    right, lucky, wrong = Grade("0", True, ok), Grade("0", True, bad_step), Grade("9", False, ok)
    results = [
        # p0: two different texts, both answer-correct, one step-verified
        QuestionResult(probs[0], [right, lucky], ["a = 1.", "a = 2."], greedy=right, greedy_text="a = 1."),
        # p1: the same verified text twice
        QuestionResult(probs[1], [right, right], ["b = 1.", "b  =  1."], greedy=wrong, greedy_text="x"),
        QuestionResult(probs[2], [], [], greedy=right, greedy_text="c"),  # greedy only
    ]
    m = summarize(results)
    assert m["maj@1"] == 2 / 3 and m["n_sampled_questions"] == 2 and m["n_samples"] == 2
    assert m["pass@2"] == 1.0 and m["pass@2_verified"] == 1.0  # over the 2 sampled problems
    # distinct texts: p0 2, p1 1 (whitespace-normalised) -> 1.5; verified-correct texts: p0 1, p1 1 -> 1.0
    assert m["distinct_solutions"] == 1.5 and m["distinct_correct_solutions"] == 1.5
    assert m["distinct_verified_solutions"] == 1.0
    # per question (samples.jsonl): p0's verified texts {"a = 1."} -> 1, p1's {"b = 1."} -> 1; p2 has no samples
    assert question_record(results[0]) == {"id": "p0", "difficulty": 1, "greedy_correct": True,
                                           "greedy_verified": True, "n": 2, "c": 2, "c_verified": 1,
                                           "distinct_verified": 1}
    assert question_record(results[2])["n"] == 0 and question_record(results[2])["distinct_verified"] is None


def test_per_question_distinct_verified_averages_to_the_aggregate():
    # the study pairs distinct_verified per question (F7): its mean over the sampled questions is metrics.json's
    # distinct_verified_solutions. p0: 3 verified texts, 2 distinct up to whitespace and case ("x = 1." twice) and
    # a wrong one; p1: 1 verified of 3; p2: none verified -> (2 + 1 + 0) / 3 = 1.0; p3 greedy only (not counted)
    from mathrl.evaluate import QuestionResult, question_record, summarize
    from mathrl.tasks.base import Grade, Problem, StepCheck

    ok, bad = StepCheck((), 1, None), StepCheck((), 1, 0)
    v, w = Grade("1", True, ok), Grade("2", False, bad)
    probs = [Problem(id=f"p{i}", question="q", solution="s", answer="1", difficulty=1) for i in range(4)]
    results = [QuestionResult(probs[0], [v, v, v, w], ["x = 1.", "X  = 1.", "y = 1.", "z"], greedy=v, greedy_text="x"),
               QuestionResult(probs[1], [v, w, w, w], ["x = 1.", "a", "b", "c"], greedy=v, greedy_text="x"),
               QuestionResult(probs[2], [w, w, w, w], ["a", "b", "c", "d"], greedy=w, greedy_text="a"),
               QuestionResult(probs[3], [], [], greedy=v, greedy_text="x")]
    per_question = [question_record(r)["distinct_verified"] for r in results]
    assert per_question == [2, 1, 0, None]
    sampled = [x for x in per_question if x is not None]
    assert summarize(results)["distinct_verified_solutions"] == sum(sampled) / len(sampled) == 1.0
