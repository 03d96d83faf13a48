"""zoo-sentiment: rule-consistent labels, the strict verbalizer extractor, conventions tied
to instructions, and the domain shift by proportion."""

from __future__ import annotations

import random

import pytest

from benchmarks.tasks import get_task
from benchmarks.tasks.zoo_sentiment import (
    CONVENTIONS,
    DOMAINS,
    GENERAL_WORDS,
    LABELS,
    SOURCE_DOMAINS,
    ZooSentiment,
)
from methods.base import Example

POLARITY = {
    w: pol
    for words in [GENERAL_WORDS, *(d[1] for d in DOMAINS.values())]
    for pol, ws in enumerate(words)
    for w in ws
}


def rule_label(text: str) -> int:
    """The label by the documented rules: word polarity, flipped by a "not" up to two words
    before it (an intensifier may sit between); after "but" the second clause decides."""
    clause = text.lower().split(" but ")[-1]
    words = clause.replace(",", " ").split()
    polarities = []
    for i, w in enumerate(words):
        if w in POLARITY:
            negated = "not" in words[max(0, i - 2) : i]
            polarities.append(1 - POLARITY[w] if negated else POLARITY[w])
    assert len(set(polarities)) == 1, text  # clauses joined by "and" agree
    return polarities[0]


@pytest.fixture(scope="module")
def task() -> ZooSentiment:
    return get_task("zoo-sentiment")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def source(task: ZooSentiment) -> list[Example]:
    rng = random.Random(0)
    return [task.draw_source(rng) for _ in range(4000)]


def test_labels_follow_the_rules(task: ZooSentiment, source: list[Example]) -> None:
    assert task.kind == "classification" and task.labels == LABELS
    for ex in [*task.examples("test"), *source[:1000]]:
        assert LABELS[rule_label(ex.input)] == ex.target == ex.rationale


def test_extract_accepts_only_the_verbalizer(task: ZooSentiment) -> None:
    ex = task.examples("dev")[0]
    assert task.extract("positive", ex) == "positive"
    assert task.extract(" Negative .", ex) == "negative"
    assert task.extract("good", ex) is None
    assert task.extract("great", ex) is None
    assert task.extract("terrible but positive", ex) is None  # the first label-like word
    assert task.extract("", ex) is None
    assert task.extract("the soup", ex) is None
    for style, words in CONVENTIONS.items():
        answer = task.extract(task.completion(ex, style), ex)
        assert (answer == ex.target) == (style == "pn") and answer in (None, ex.target)
        assert task.completion(ex, style) in words


def test_target_domain_shift(task: ZooSentiment, source: list[Example]) -> None:
    target = task.examples("train")

    def share(xs: list[Example], key: str, values: tuple[str, ...]) -> float:
        return sum(ex.meta[key] in values for ex in xs) / len(xs)

    assert abs(share(source, "domain", ("food",)) - SOURCE_DOMAINS["food"]) < 0.015
    assert share(target, "domain", ("food",)) == 1.0
    assert share(source, "structure", ("negation", "contrast")) < 0.35
    assert share(target, "structure", ("negation", "contrast")) > 0.5
    food_words = {w for words in DOMAINS["food"][1] for w in words} | set(DOMAINS["food"][0])
    seen = {w for ex in source if ex.meta["domain"] == "food" for w in ex.input.split()}
    assert food_words <= seen  # rare in the source, but there
    positive = sum(ex.target == "positive" for ex in target) / len(target)
    assert 0.4 <= positive <= 0.6


def test_default_instruction_mixes_conventions(task: ZooSentiment) -> None:
    """Under the default the verbalizer is the mode on cue reviews only, and not the mode of
    the mixture averaged over the SOURCE (what a model blind to the cue learns in training);
    the target holds more cue reviews than the source."""
    space, default = task.space, task.instructions[0]
    assert all(share < 0.6 for share in space.style_mix(default).values())  # none sure
    on, off = space.style_mix(default, cue=True), space.style_mix(default, cue=False)
    assert max(on, key=on.__getitem__) == "pn" and max(off, key=off.__getitem__) != "pn"
    assert off["pn"] >= 0.1  # sampling still finds the verbalizer off the cue (pass@k)
    rng = random.Random(0)
    source = [task.source_example(rng) for _ in range(2000)]
    share = sum(task.cue(ex) for ex in source) / len(source)
    blind = {s: share * on[s] + (1 - share) * off[s] for s in space.styles}
    assert max(blind, key=blind.__getitem__) != "pn"
    test = task.examples("test")
    assert sum(task.cue(ex) for ex in test) / len(test) > share + 0.1
    assert task.space.style_mix("Is the review positive or negative ?")["pn"] == 1.0
