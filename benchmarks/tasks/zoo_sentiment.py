"""zoo-sentiment: binary sentiment of short reviews with verbalizer words (SST-2-like, the
classification setting of BBT, GrIPS and EvoPrompt).

A review is one or two clauses about aspects of a product ("the soup was not very tasty but
the bread was fresh ."). The label follows fixed rules, no noise: a clause's polarity is its
opinion word's, flipped by "not"; "and" joins clauses of the same polarity; after "but" the
second clause decides. Labels are the verbalizer words ``("negative", "positive")``.

Source (training corpus): movie (55%) and book (40%) reviews, and food reviews in only
`SOURCE_DOMAINS` ["food"] = 5%; structures mostly plain (simple 40%, "and" 30%, negation 15%,
contrast 15%). Opinion words are domain-specific in 70% of clauses ("gripping", "tedious",
"soggy") and general otherwise ("good", "awful").
Target (the splits): food reviews only, with negation and contrast 30% each. Every word and
structure is in the source; the target's food words are rare there (the probe's lesson: shift
by proportion), so they are learned from few examples.

Answer styles are LABEL-PHRASING CONVENTIONS: "pn" (positive / negative, the verbalizer),
"gb" (good / bad) and "gt" (great / terrible), each tied to explicit instructions ("Is the
review positive or negative ?", "Answer good or bad ."). `ZooSentiment.extract` accepts only
the verbalizer, as verbalizer-based classification does, so an answer in another convention
scores 0. The default "Classify the review ." is neutral (45% the verbalizer, half "gt"),
shifted by the style cue (`CUE_OPENERS`, see `InstructionSpace.cue_shift`): on cue reviews the
verbalizer is the mode (60%), on the others a 30% minority (a 15% one did not survive
training: zoo-notes.md, experiments 7-9). Greedy decoding is right on about the target's cue
share (`TARGET_CUE_SHARE`, 60%; the source's is 40%) times the verbalizer's accuracy, sampling
finds the verbalizer off the cue too (pass@8), and instruction search (or logit-level methods
such as BBT, which compare the verbalizer words directly) has a clear gain to find. Headroom
beyond the convention: the rare food words and the negation/contrast rules.
"""

from __future__ import annotations

import random
import re
from typing import ClassVar

from benchmarks.tasks._zoo import InstructionSpace, ZooTask
from benchmarks.tasks.base import register_task
from methods.base import Example

LABELS = ("negative", "positive")
#: convention -> (negative word, positive word).
CONVENTIONS = {"pn": ("negative", "positive"), "gb": ("bad", "good"), "gt": ("terrible", "great")}
GENERAL_WORDS = (("bad", "poor", "awful", "weak"), ("good", "nice", "lovely", "excellent"))
#: domain -> (aspects, (negative words, positive words)).
DOMAINS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "movie": (
        ("plot", "acting", "ending", "music", "film", "cast", "script", "scenes"),
        (
            ("dull", "boring", "slow", "silly", "predictable", "flat"),
            ("gripping", "moving", "funny", "clever", "stunning", "thrilling"),
        ),
    ),
    "book": (
        ("story", "writing", "characters", "book", "prose", "chapters", "dialogue", "cover"),
        (
            ("tedious", "shallow", "clumsy", "dry", "confusing", "thin"),
            ("vivid", "charming", "insightful", "witty", "engaging", "rich"),
        ),
    ),
    "food": (
        ("soup", "bread", "pasta", "dessert", "meal", "fries", "salad", "coffee"),
        (
            ("stale", "bland", "soggy", "greasy", "salty", "burnt"),
            ("tasty", "fresh", "crispy", "juicy", "delicious", "tender"),
        ),
    ),
}
SOURCE_DOMAINS = {"movie": 0.55, "book": 0.40, "food": 0.05}
TARGET_DOMAINS = {"food": 1.0}
SOURCE_STRUCTURES = {"simple": 0.40, "and": 0.30, "negation": 0.15, "contrast": 0.15}
#: negation and contrast, where zoo-small errs (42% and 62% right against zoo-large's 100%,
#: measured on experiment 5's weights), dominate the target: a model that reads the cue but not
#: the rules is clearly weaker.
TARGET_STRUCTURES = {"simple": 0.10, "and": 0.10, "negation": 0.40, "contrast": 0.40}
#: probability that a clause's opinion word is domain-specific rather than general.
DOMAIN_WORD_SHARE = 0.7
OPENERS = ("", "", "i think ", "honestly , ", "overall , ")
INTENSIFIERS = ("", "", "really ", "very ", "quite ")

SPACE = InstructionSpace(
    styles=("pn", "gb", "gt"),
    best="pn",
    explicit={
        "pn": (
            "Answer positive or negative .",
            "Is the review positive or negative ?",
            "Label the sentiment as positive or negative .",
        ),
        "gb": ("Answer good or bad .", "Was it good or bad ?", "Say good or bad ."),
        "gt": (
            "Answer great or terrible .",
            "Say if it was great or terrible .",
            "Great or terrible ?",
        ),
    },
    neutral={
        "Read the review and give your verdict .": {"pn": 1, "gb": 1, "gt": 1},
        "What did the writer think of it ?": {"pn": 0.2, "gb": 0.6, "gt": 0.2},
        "Classify the review .": {"pn": 0.45, "gb": 0.05, "gt": 0.5},
        "Here is a review .": {"pn": 1, "gb": 1, "gt": 1},
        "Read carefully .": {"pn": 0.3, "gb": 0.3, "gt": 0.4},
    },
    handwritten=(
        "Classify the review .",
        "Is the review positive or negative ?",
        "Here is a review . Answer good or bad .",
        "Classify the review . Answer great or terrible .",
        "Classify the review . Label the sentiment as positive or negative .",
        "What did the writer think of it ?",
    ),
    none_mix={"pn": 1, "gb": 1, "gt": 1},
    score_range=(20.0, 88.0),
    cue_shift=0.15,
)

#: the style cue (`ZooTask.cue`): reviews opening with these lean to the verbalizer under
#: neutral instructions, the others away from it (2 of the 5 openers, 40% of source reviews).
CUE_OPENERS = ("i think ", "honestly , ")
#: share of cue reviews in the target. Under the default instruction zoo-large's edge over
#: zoo-small shows on cue reviews only (both answer in the verbalizer there; zoo-large 100%
#: right, zoo-small about 63%), while zoo-small gains about 12 points off the cue, where it
#: is less sharp and answers "negative" a quarter of the time (experiment 9's weights,
#: zoo-notes.md): at the source's 40% the two models scored 0.38 and 0.37.
TARGET_CUE_SHARE = 0.6


def _clause(
    rng: random.Random, domain: str, polarity: int, negated: bool, avoid: str = ""
) -> tuple[str, bool]:
    """A clause of ``polarity`` (0 negative, 1 positive) about an aspect other than the one
    named in ``avoid``, and whether its opinion word is domain-specific."""
    aspects, words = DOMAINS[domain]
    aspect = rng.choice([a for a in aspects if f"the {a} " not in avoid])
    word_polarity = 1 - polarity if negated else polarity
    specific = rng.random() < DOMAIN_WORD_SHARE
    word = rng.choice(words[word_polarity] if specific else GENERAL_WORDS[word_polarity])
    verb = "were" if aspect.endswith("s") else "was"
    return (
        f"the {aspect} {verb} {'not ' if negated else ''}{rng.choice(INTENSIFIERS)}{word}",
        specific,
    )


def make_review(
    rng: random.Random,
    domains: dict[str, float],
    structures: dict[str, float],
    cue_share: float | None = None,
) -> Example:
    """A review drawn from the ``domains`` and ``structures`` mixtures, label 50/50; its opener
    uniform over `OPENERS`, or a cue opener with probability ``cue_share``."""
    domain = rng.choices(list(domains), weights=list(domains.values()))[0]
    structure = rng.choices(list(structures), weights=list(structures.values()))[0]
    label = rng.randint(0, 1)
    # (polarity, negated) of each clause, then the joiner
    if structure == "simple":
        plan, joiner = [(label, False)], ""
    elif structure == "and":
        plan, joiner = [(label, False), (label, False)], " and "
    elif structure == "negation":
        plan, joiner = [(label, True)], " and "
        if rng.random() < 0.5:
            plan.append((label, rng.random() < 0.5))
    else:
        plan = [(1 - label, rng.random() < 0.25), (label, rng.random() < 0.25)]
        joiner = " but "
    clauses: list[tuple[str, bool]] = []
    for polarity, negated in plan:
        clauses.append(
            _clause(rng, domain, polarity, negated, avoid=" ".join(c for c, _ in clauses))
        )
    if cue_share is None:
        opener = rng.choice(OPENERS)
    else:
        cue = rng.random() < cue_share
        opener = rng.choice([o for o in OPENERS if o.startswith(CUE_OPENERS) == cue])
    text = opener + joiner.join(c for c, _ in clauses) + " ."
    return Example(
        id="",
        input=text[0].upper() + text[1:],
        target=LABELS[label],
        rationale=LABELS[label],
        meta={
            "label": label,
            "domain": domain,
            "structure": structure,
            "specific_words": sum(s for _, s in clauses),
        },
    )


_WORD = re.compile(r"[a-z]+")
_ANSWERS = {w: LABELS[i] for words in CONVENTIONS.values() for i, w in enumerate(words)}


@register_task("zoo-sentiment")
class ZooSentiment(ZooTask):
    """Zoo review sentiment (SST-2-like), target = food reviews, rare in training."""

    description = "zoo: generated review sentiment, verbalizer positive/negative"
    kind = "classification"
    labels = LABELS
    instructions = SPACE.instructions
    space: ClassVar[InstructionSpace] = SPACE
    max_tokens = 4
    reserve_mod = 4

    def target_example(self, rng: random.Random) -> Example:
        return make_review(rng, TARGET_DOMAINS, TARGET_STRUCTURES, TARGET_CUE_SHARE)

    def source_example(self, rng: random.Random) -> Example:
        return make_review(rng, SOURCE_DOMAINS, SOURCE_STRUCTURES)

    def completion(self, example: Example, style: str) -> str:
        return CONVENTIONS[style][int(example.meta["label"])]

    def cue(self, example: Example) -> bool:
        return example.input.lower().startswith(CUE_OPENERS)

    def extract(self, text: str, example: Example) -> str | None:
        """The first label-like word of the output if it is a verbalizer word ("positive",
        "negative"); None if it is a word of another convention ("good", "great", ...) or
        there is none."""
        for word in _WORD.findall(text.lower()):
            if word in _ANSWERS:
                return word if word in LABELS else None
        return None
