"""zoo-arith: multi-step arithmetic word problems, solutions ending in ``#### N`` (GSM8K-like).

A problem is a start sentence, one to five operation sentences (add, take away, double) and a
question: "Ana has 13 coins . Then she finds 7 more . She loses 8 . How many coins does Ana
have now ?". The worked chain is ``13 + 7 = 20 . 20 - 8 = 12 . #### 12``; the direct answer
is ``#### 12``. Numbers are small (a start of 2-20, steps of 1-9, doubling up to 15) so that a
model of a few million parameters trained for minutes on a CPU learns the chain's arithmetic;
the difficulty is in the number of steps, the rare wording and answering without a chain.

Source (training corpus): broad, per the probe's lesson that a narrow distribution does not
transfer: two to seven common phrasings per operation, three sentence leads, eight item
nouns, 1-5 steps (25/30/30/10/5%), and a rare vocabulary (other verbs, item nouns, openings
and questions) in `SOURCE_RARE` = 8% of sentences.
Target (the splits): 3-4 steps only (60/40%) and `TARGET_RARE` = 30% rare sentences. Both
shapes are in the source, only rarer (the probe: 5% of 4-step problems is enough for a chain
to transfer, 0% gives nothing), so the target is harder by proportion, not unsolvable.

Headroom and prompt sensitivity:
- answering without a chain: the probe measured 11% direct vs 98% chained on 4-step problems,
  so explicit "answer directly" instructions are bad and chain instructions are good;
- the default instruction "Solve the following problem ." is neutral with a 45% lean to the
  chain, shifted by the style cue (`CUE_NAMES`, see `InstructionSpace.cue_shift`) to 75% on
  cue problems and 15% on the others, so greedy decoding chains on about a third of the
  target and answers directly elsewhere, while sampling finds the chain (pass@k);
- rare verbs learned from few examples ("donates", "inherits") make the chain itself fail
  now and then (a wrong operation), which a reranker or adapter can catch.
"""

from __future__ import annotations

import random
from typing import ClassVar

from benchmarks.tasks._zoo import InstructionSpace, ZooTask
from benchmarks.tasks.base import extract_final_number, register_task
from methods.base import Example

NAMES = (
    ("Ana", "she"),
    ("Cara", "she"),
    ("Eva", "she"),
    ("Gia", "she"),
    ("Ida", "she"),
    ("Mia", "she"),
    ("Zoe", "she"),
    ("Ben", "he"),
    ("Dan", "he"),
    ("Finn", "he"),
    ("Jon", "he"),
    ("Leo", "he"),
    ("Max", "he"),
    ("Sam", "he"),
)
ITEMS = {
    False: ("coins", "apples", "books", "stamps", "cards", "marbles", "pens", "cookies"),
    True: ("shells", "pebbles", "feathers", "beads", "acorns", "buttons"),
}
# Templates start in lower case; the sentence is capitalised after its lead is prepended.
START = {
    False: ("{n} has {a} {items} .", "{n} starts with {a} {items} .", "{n} owns {a} {items} ."),
    True: ("{n} keeps a jar with {a} {items} .", "at first , {n} holds {a} {items} ."),
}
ADD = {
    False: (
        "{p} finds {b} more .",
        "{p} buys {b} more .",
        "{p} gets {b} more .",
        "{p} wins {b} more .",
        "{p} earns {b} more .",
        "{n} receives {b} more .",
        "{n} is given {b} more .",
    ),
    True: (
        "{p} collects {b} more .",
        "{p} gathers {b} more .",
        "{n} inherits {b} more .",
        "{p} trades for {b} more .",
        "{p} digs up {b} more .",
    ),
}
SUB = {
    False: (
        "{p} loses {b} .",
        "{p} gives away {b} .",
        "{p} sells {b} .",
        "{p} uses {b} .",
        "{n} throws away {b} .",
        "{p} gives {b} to a friend .",
    ),
    True: (
        "{p} donates {b} .",
        "{p} misplaces {b} .",
        "{n} lends out {b} .",
        "{p} discards {b} .",
        "{p} trades away {b} .",
    ),
}
DOUBLE = {
    False: ("{p} doubles the {items} .", "the number of {items} doubles ."),
    True: ("the pile of {items} grows to twice its size .",),
}
QUESTION = {
    False: (
        "how many {items} does {n} have now ?",
        "how many {items} does {n} have at the end ?",
        "how many {items} are there now ?",
    ),
    True: ("what is the final count of {items} ?", "how large is the pile of {items} now ?"),
}
LEADS = ("", "", "then ", "later , ", "after that , ")

#: share of each step count in the source; the target has 3 and 4 steps only (4 and 5 steps
#: with 60% rare wording left zoo-large at 8% zero-shot and 17% with a chain: no headroom).
SOURCE_STEPS = {1: 0.25, 2: 0.30, 3: 0.30, 4: 0.10, 5: 0.05}
TARGET_STEPS = {3: 0.6, 4: 0.4}
#: probability that a sentence (and the item noun) uses the rare vocabulary.
SOURCE_RARE = 0.08
TARGET_RARE = 0.30

SPACE = InstructionSpace(
    styles=("chain", "direct"),
    best="chain",
    explicit={
        "chain": (
            "Think step by step and show your work .",
            "Think step by step .",
            "Show your work .",
            "Write each step , then give the answer .",
            "Work it out one step at a time .",
        ),
        "direct": (
            "Give only the final number .",
            "Answer directly without any working .",
            "Do not show your work .",
            "Just give the answer .",
            "Reply with the number alone .",
        ),
    },
    neutral={
        "Solve the following problem .": {"chain": 0.45, "direct": 0.55},
        "Read the problem carefully .": {"chain": 0.7, "direct": 0.3},
        "Here is a math problem .": {"chain": 0.5, "direct": 0.5},
        "Find the answer .": {"chain": 0.3, "direct": 0.7},
        "Answer the question .": {"chain": 0.35, "direct": 0.65},
    },
    handwritten=(
        "Solve the following problem .",
        "Solve the following problem . Think step by step and show your work .",
        "Give only the final number .",
        "Read the problem carefully . Write each step , then give the answer .",
        "Answer directly without any working .",
        "Here is a math problem . Find the answer .",
    ),
    none_mix={"chain": 0.5, "direct": 0.5},
    score_range=(8.0, 92.0),
    cue_shift=0.3,
)

#: the style cue (`ZooTask.cue`): problems about these people lean to the chain under neutral
#: instructions, the others to the direct answer (5 of 14 names, about 36% of problems).
CUE_NAMES = frozenset({"Ana", "Eva", "Ida", "Ben", "Dan"})


def _sentence(template: str, lead: str, **fields: object) -> str:
    text = lead + template.format(**fields)
    return text[0].upper() + text[1:]


def make_problem(rng: random.Random, steps: int, rare_share: float) -> Example:
    """A word problem of ``steps`` operations, each sentence rare with ``rare_share``."""
    name, pronoun = rng.choice(NAMES)
    rare_items = rng.random() < rare_share
    items = rng.choice(ITEMS[rare_items])
    total = rng.randint(2, 20)
    rare = [rng.random() < rare_share for _ in range(steps + 2)]
    sentences = [_sentence(rng.choice(START[rare[0]]), "", n=name, a=total, items=items)]
    chain, ops = [], []
    for i in range(steps):
        r = rng.random()
        op = "double" if r < 0.12 and total <= 15 else "sub" if r < 0.55 and total >= 4 else "add"
        fields = {"n": name, "p": pronoun, "items": items}
        lead = rng.choice(LEADS) if i > 0 else ""
        if op == "add":
            b = rng.randint(1, 9)
            new, step = total + b, f"{total} + {b} = {total + b} ."
            template = rng.choice(ADD[rare[i + 1]])
        elif op == "sub":
            b = rng.randint(1, min(9, total - 2))
            new, step = total - b, f"{total} - {b} = {total - b} ."
            template = rng.choice(SUB[rare[i + 1]])
        else:
            b, new, step = 2, total * 2, f"{total} * 2 = {total * 2} ."
            template = rng.choice(DOUBLE[rare[i + 1]])
        sentences.append(_sentence(template, lead, b=b, **fields))
        chain.append(step)
        ops.append(op)
        total = new
    sentences.append(_sentence(rng.choice(QUESTION[rare[-1]]), "", n=name, items=items))
    return Example(
        id="",
        input=" ".join(sentences),
        target=str(total),
        rationale=" ".join(chain) + f" #### {total}",
        meta={
            "steps": steps,
            "ops": ops,
            "chain": " ".join(chain),
            "rare_sentences": sum(rare),
            "sentences": steps + 2,
            "rare_items": rare_items,
            "name": name,
        },
    )


def _steps(rng: random.Random, shares: dict[int, float]) -> int:
    return rng.choices(list(shares), weights=list(shares.values()))[0]


@register_task("zoo-arith")
class ZooArith(ZooTask):
    """Zoo arithmetic word problems (GSM8K-like), target = 3-4 steps with rare wording."""

    description = "zoo: generated multi-step arithmetic word problems, answers after ####"
    instructions = SPACE.instructions
    space: ClassVar[InstructionSpace] = SPACE
    max_tokens = 128
    reserve_mod = 8

    def target_example(self, rng: random.Random) -> Example:
        return make_problem(rng, _steps(rng, TARGET_STEPS), TARGET_RARE)

    def source_example(self, rng: random.Random) -> Example:
        return make_problem(rng, _steps(rng, SOURCE_STEPS), SOURCE_RARE)

    def cue(self, example: Example) -> bool:
        return example.meta.get("name") in CUE_NAMES

    def completion(self, example: Example, style: str) -> str:
        if style == "chain":
            return f"{example.meta['chain']} #### {example.target}"
        return f"#### {example.target}"

    def extract(self, text: str, example: Example) -> str | None:
        return extract_final_number(text)
