"""zoo-hops: a consistent world, the yes/no extractor, chains that recall true values only,
the long tail of fact frequencies, and held-out (person, relation) pairs in the target."""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter

import pytest

from benchmarks.tasks import SPLITS, get_task
from benchmarks.tasks.zoo_hops import (
    ANIMALS,
    JOBS,
    REGIONS,
    ZooHops,
    extract_yes_no,
    hops_world,
)
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
    assert extract_yes_no("#### true") is None  # the true/false convention scores nothing


def test_default_instruction_leans_by_cue(task: ZooHops) -> None:
    """Under the default the chain is the mode on cue (climate) questions only; off the cue the
    mode is the true/false convention, which scores nothing, while the chain keeps a minority
    large enough for sampling to find (pass@k). Cue questions are a minority of the target."""
    space, default = task.space, task.instructions[0]
    on, off = space.style_mix(default, cue=True), space.style_mix(default, cue=False)
    assert max(on, key=on.__getitem__) == "decompose"
    assert max(off, key=off.__getitem__) == "truefalse" and off["decompose"] >= 0.3
    test = task.examples("test")
    assert all(task.cue(ex) == (ex.meta["relation"] == "climate") for ex in test)
    assert 0.25 <= sum(task.cue(ex) for ex in test) / len(test) <= 0.5
    explicit = space.style_mix("Answer true or false .")
    assert explicit["truefalse"] == 1.0


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
    for examples in (source, *(task.examples(split) for split in SPLITS)):
        yes = sum(ex.target == "yes" for ex in examples) / len(examples)
        assert 0.4 <= yes <= 0.6


def test_chain_recalls_the_true_value_in_a_sentence_of_the_facts(task: ZooHops) -> None:
    """The chain's second fact states the bridging value's TRUE value(s), verbatim as the fact
    documents do; the answer is yes exactly when the asked value is among them; and no fact
    document states a false value (they made the model learn no world fact)."""
    world = hops_world()
    docs = task.fact_documents(20000, 0)
    facts = " ".join(docs)
    for ex in task.examples("test"):
        second = ex.meta["chain"].split(" . ", 1)[1]
        assert second in facts
        stated = second.split(" cannot ")[0].rstrip(" .").split()
        assert (ex.meta["value"] in stated) == (ex.target == "yes")
    for town in world.towns:
        for region in REGIONS:
            said = f"{town} is in the {region} ." in facts
            assert said == (region == world.region_of[town])
    assert " not " not in facts and all("cannot" not in d or "or climb" in d for d in docs)


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
