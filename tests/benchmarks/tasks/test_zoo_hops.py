"""zoo-hops: a consistent world, the yes/no extractor, chains whose last fact carries the answer,
the long tail of fact frequencies, and held-out (person, relation) pairs in the target."""

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
def drawn(task: ZooHops) -> list[Example]:
    rng = random.Random(0)
    return [task.draw_source(rng) for _ in range(3000)]


@pytest.fixture(scope="module")
def source(drawn: list[Example]) -> list[Example]:
    """The source questions about people of the world (not passers-by)."""
    return [ex for ex in drawn if not ex.meta["passer_by"]]


def test_passers_by_state_their_facts_and_are_not_of_the_world(drawn: list[Example]) -> None:
    world = hops_world()
    passers = [ex for ex in drawn if ex.meta["passer_by"]]
    assert 0.25 <= len(passers) / len(drawn) <= 0.35
    for ex in passers:
        assert ex.meta["person"] not in world.people
        person_fact = ex.meta["chain"].split(" . ")[0]
        town_job_or_pet = person_fact.split()[-1]
        assert town_job_or_pet in ex.input.split()  # the first hop is in the question
        assert ex.meta["person"] in ex.input.split(" . ")[0].split()
    yes = sum(ex.target == "yes" for ex in passers) / len(passers)
    assert 0.4 <= yes <= 0.6


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


def test_chain_states_the_asked_value_with_the_answer_polarity(task: ZooHops) -> None:
    """The chain's second fact is about the value asked, negated exactly when the answer is
    no, and the fact documents hold that sentence verbatim."""
    facts = " ".join(task.fact_documents(20000, 0))
    negated = 0
    for ex in task.examples("test"):
        last = ex.meta["chain"].split(" . ")[1]
        assert ex.meta["value"] in last
        is_negated = " not " in f" {last} " or "cannot" in last
        assert is_negated == (ex.target == "no")
        assert last.rstrip(" .") + " ." in facts
        negated += is_negated
    assert 0.3 <= negated / len(task.examples("test")) <= 0.7


def test_relations_held_out_and_splits_do_not_share_people(
    task: ZooHops, source: list[Example]
) -> None:
    world = hops_world()
    people = {split: {ex.meta["person"] for ex in task.examples(split)} for split in SPLITS}
    assert not people["train"] & people["test"] and not people["dev"] & people["test"]
    assert not people["train"] & people["dev"]
    target = set(world.target_people)
    assert set().union(*people.values()) <= target
    assert all(len(world.held_out[p]) == 2 for p in target)
    # the target asks only held-out pairs, the source never does, though it asks about the
    # target people's other relations (so their names are copied into chains in training)
    for split in SPLITS:
        assert all(
            ex.meta["relation"] in world.held_out[ex.meta["person"]] for ex in task.examples(split)
        )
    asked = {(ex.meta["person"], ex.meta["relation"]) for ex in source}
    assert not any(r in world.held_out.get(p, ()) for p, r in asked)
    assert len({p for p, _ in asked} & target) >= 0.9 * len(target)
    docs = task.fact_documents(3000, 0)
    assert all(any(p in d.split() for d in docs) for p in sorted(target)[:10])  # facts present


def test_target_rarer_people_and_relations(task: ZooHops, source: list[Example]) -> None:
    target = task.examples("train")

    def mean_rank(xs: list[Example]) -> float:
        return sum(ex.meta["rank"] for ex in xs) / len(xs)

    def rare_relations(xs: list[Example]) -> float:
        return sum(ex.meta["relation"] in ("ability", "climate") for ex in xs) / len(xs)

    assert 50 < mean_rank(source) < 70 < mean_rank(target)
    assert 0.2 <= rare_relations(source) <= 0.4
    assert rare_relations(target) >= 0.5
    assert {ex.meta["relation"] for ex in source} == {"region", "place", "ability", "climate"}


def test_fact_frequencies_are_long_tailed(task: ZooHops) -> None:
    world = hops_world()
    docs = task.fact_documents(8000, 0)
    counts = Counter(w for doc in docs for w in set(re.findall(r"[A-Z][a-z]+", doc)))
    freq = [counts[p] for p in world.people]
    head, tail = sum(freq[:10]), sum(freq[-10:])
    assert head >= 4 * tail > 0
    assert all(f > 0 for f in freq)  # every person's facts are in the corpus
    # frequency falls with rank: each fifth of the people is rarer than the one before
    fifths = [sum(freq[i : i + 24]) for i in range(0, 120, 24)]
    assert all(a > b for a, b in itertools.pairwise(fifths))


def test_corpus_mixes_qa_and_facts(task: ZooHops) -> None:
    docs = task.corpus(1000, 0)
    qa = sum("\nA: " in doc for doc in docs)
    assert 400 <= qa <= 500
    assert max(len(doc.split()) for doc in docs if "\nA: " not in doc) <= 40
