"""zoo-hops: a consistent world, the yes/no extractor, the long tail of fact frequencies, and
held-out people with rarer relations in the target."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest

from benchmarks.tasks import SPLITS, get_task
from benchmarks.tasks.zoo_hops import ANIMALS, JOBS, ZooHops, extract_yes_no, hops_world
from methods.base import Example


@pytest.fixture(scope="module")
def task() -> ZooHops:
    return get_task("zoo-hops")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def source(task: ZooHops) -> list[Example]:
    rng = random.Random(0)
    return [task.draw_source(rng) for _ in range(3000)]


def test_extract() -> None:
    assert extract_yes_no("Ana lives in Tolo . Tolo is in the north . #### yes") == "yes"
    assert extract_yes_no("#### No .") == "no"
    assert extract_yes_no("#### maybe") is None
    assert extract_yes_no("yes #### ") is None
    assert extract_yes_no("I think the answer is yes") == "yes"  # no marker: last yes/no
    assert extract_yes_no("Tolo is in the north .") is None


def test_answers_follow_the_world(task: ZooHops) -> None:
    world = hops_world()
    for ex in task.examples("test") + task.examples("dev"):
        person, relation, value = ex.meta["person"], ex.meta["relation"], ex.meta["value"]
        assert person in ex.input and value in ex.input
        assert ex.target == ("yes" if value in world.value(person, relation) else "no")
        first = ex.meta["chain"].split(" . ")[0]
        assert first.startswith(person)  # the chain starts with the person fact
    assert set(world.region_of.values()) == {"north", "south", "east", "west"}
    assert all(JOBS[world.job_of[p]] in ("indoors", "outdoors") for p in world.people)
    assert all(world.pet_of[p] in ANIMALS for p in world.people)


def test_yes_no_balanced(task: ZooHops, source: list[Example]) -> None:
    for examples in (source, task.examples("train")):
        yes = sum(ex.target == "yes" for ex in examples) / len(examples)
        assert 0.4 <= yes <= 0.6


def test_people_held_out_and_splits_do_not_share_people(
    task: ZooHops, source: list[Example]
) -> None:
    world = hops_world()
    people = {split: {ex.meta["person"] for ex in task.examples(split)} for split in SPLITS}
    assert not people["train"] & people["test"] and not people["dev"] & people["test"]
    assert not people["train"] & people["dev"]
    target = set(world.target_people)
    assert set().union(*people.values()) <= target
    assert not {ex.meta["person"] for ex in source} & target
    docs = task.fact_documents(3000, 0)
    assert all(any(p in d.split() for d in docs) for p in sorted(target)[:10])  # facts present


def test_target_rarer_people_and_relations(task: ZooHops, source: list[Example]) -> None:
    target = task.examples("train")

    def mean_rank(xs: list[Example]) -> float:
        return sum(ex.meta["rank"] for ex in xs) / len(xs)

    def rare_relations(xs: list[Example]) -> float:
        return sum(ex.meta["relation"] in ("ability", "climate") for ex in xs) / len(xs)

    assert mean_rank(source) < 30 < 60 < mean_rank(target)
    assert 0.2 <= rare_relations(source) <= 0.4
    assert rare_relations(target) >= 0.5
    assert {ex.meta["relation"] for ex in source} == {"region", "place", "ability", "climate"}


def test_fact_frequencies_are_long_tailed(task: ZooHops) -> None:
    world = hops_world()
    docs = task.fact_documents(8000, 0)
    counts = Counter(w for doc in docs for w in set(re.findall(r"[A-Z][a-z]+", doc)))
    freq = [counts[p] for p in world.people]
    head, tail = sum(freq[:10]), sum(freq[-10:])
    assert head >= 10 * tail > 0
    assert all(f > 0 for f in freq)  # every person's facts are in the corpus
    # frequency falls with rank: each fifth of the people is rarer than the one before
    fifths = [sum(freq[i : i + 24]) for i in range(0, 120, 24)]
    assert all(a > b for a, b in itertools.pairwise(fifths))


def test_corpus_mixes_qa_and_facts(task: ZooHops) -> None:
    docs = task.corpus(1000, 0)
    qa = sum("\nA: " in doc for doc in docs)
    assert 400 <= qa <= 500
    assert max(len(doc.split()) for doc in docs if "\nA: " not in doc) <= 40
