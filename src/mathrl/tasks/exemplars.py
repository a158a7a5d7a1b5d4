"""Few-shot exemplars from the literature, for ``--exemplars`` (the default few-shot examples are the first N
problems of the task's train split).

``wei2022``: the 8 chain-of-thought exemplars for math word problems of Wei et al. 2022 ("Chain-of-Thought
Prompting Elicits Reasoning in Large Language Models", Table 20), the standard 8-shot GSM8K prompt
(lm-evaluation-harness ``gsm8k_cot``). Questions and reasoning are the paper's, word for word; each solution ends
with the paper's "The answer is N." and then a line ``#### N`` (our addition), so that a model that copies the
exemplars' format is read by ``--extract strict`` as it is by flexible extraction.
"""

from __future__ import annotations

from mathrl.errors import UsageError
from mathrl.settings import EXEMPLARS
from mathrl.tasks.base import Problem

_WEI2022 = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
     "there will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have "
     "been 21 - 15 = 6. The answer is 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. The answer is 39.", "39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. "
     "The answer is 8.", "8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have "
     "now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "The answer is 9.", "9"),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. The answer is 29.", "29"),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, "
     "he had 35 - 2 = 33 golf balls. The answer is 33.", "33"),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. The answer is 8.", "8"),
)

WEI2022 = tuple(Problem(id=f"wei2022-{i}", question=q, solution=f"{s}\n#### {a}", answer=a, difficulty=1)
                for i, (q, s, a) in enumerate(_WEI2022))

def exemplars(name: str, task, n: int) -> list[Problem]:
    """The first ``n`` few-shot examples of source ``name`` for ``task``: its train split's first problems
    (``train``) or the Wei et al. exemplars, which fit tasks whose solutions are GSM8K-style text."""
    if name not in EXEMPLARS:
        raise UsageError(f"unknown exemplars {name!r} (known: {', '.join(EXEMPLARS)})")
    if name == "train":
        return task.problems("train")[:n]
    if task.name == "synthetic":
        raise UsageError("--exemplars wei2022 are GSM8K word problems; the synthetic task's prompts take its own "
                         "examples (--exemplars train)")
    if n > len(WEI2022):
        raise UsageError(f"--exemplars wei2022 has {len(WEI2022)} exemplars; --shots {n} asks for more")
    return list(WEI2022[:n])
