"""zoo-hops: yes/no questions that need two hops over the facts of a generated world
(StrategyQA-like).

The world (fixed by `WORLD_SEED`): 120 people with made-up names, each living in one of 12
towns, working one of 12 jobs and keeping one of 12 animals; towns have a region and a
climate, jobs are done indoors or outdoors, animals can or cannot fly, swim and climb. A
question joins a person fact with a second fact: "Does Runo have a pet that can fly ?" needs
"Runo has a duck ." and "A duck can fly .". The decomposed answer states both facts, then
``#### yes``; the direct answer is ``#### yes`` alone.

Knowledge comes from FACT documents (`ZooHops.fact_documents`): short biographies of a person
drawn by a Zipf law over people (rank 0 in ~8.6% of biographies, rank 119 in ~0.2%), so rare
people's facts are memorised less well, and world sentences about towns, jobs and animals
(few, frequent, well learned).

Source QA (training): questions about the SOURCE people (ranks 0-29 and even ranks from 30),
drawn by the same Zipf law, so mostly about head people, and mostly about the town's region
and the job's place (`SOURCE_RELATIONS`: 40/30/15/15%).
Target (the splits): questions about the TARGET people (odd ranks from 30: mid-to-tail, never
asked about in training, though their facts are there), with the rarer relations (pet
abilities, climate) more common (`TARGET_RELATIONS`: 20/20/30/30%). Splits do not share a
person. The shape (a question over a tail person) is in the source; only the combination
with these people is held out.

Headroom and prompt sensitivity: latent two-hop composition is what small transformers fail
at, while a decomposed chain turns it into two single-hop recalls, each a fact-document
prefix ("Runo has a"). So decompose instructions ≫ direct ones (direct ≈ chance on held-out
people); the default "Answer the question with yes or no ." leans 40% to decomposing, so the
model mixes; recall of tail facts is imperfect even with the chain.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.tasks._zoo import (
    WORLD_SEED,
    InstructionSpace,
    ZooTask,
    world_names,
    zipf_weights,
)
from benchmarks.tasks.base import Split, register_task
from methods.base import Example

N_PEOPLE = 120
N_TOWNS = 12
ZIPF_EXPONENT = 1.0
REGIONS = ("north", "south", "east", "west")
CLIMATES = ("cold", "warm", "rainy")
PLACES = ("indoors", "outdoors")
ABILITIES = ("fly", "swim", "climb")
JOBS = {
    "baker": "indoors",
    "teacher": "indoors",
    "doctor": "indoors",
    "painter": "indoors",
    "cook": "indoors",
    "nurse": "indoors",
    "farmer": "outdoors",
    "fisher": "outdoors",
    "guard": "outdoors",
    "sailor": "outdoors",
    "gardener": "outdoors",
    "builder": "outdoors",
}
ANIMALS: dict[str, frozenset[str]] = {
    "cat": frozenset({"climb"}),
    "dog": frozenset({"swim"}),
    "duck": frozenset({"fly", "swim"}),
    "fish": frozenset({"swim"}),
    "parrot": frozenset({"fly", "climb"}),
    "horse": frozenset({"swim"}),
    "frog": frozenset({"swim"}),
    "goat": frozenset({"climb"}),
    "bat": frozenset({"fly"}),
    "hen": frozenset(),
    "swan": frozenset({"fly", "swim"}),
    "mouse": frozenset({"climb"}),
}
#: relation -> (values, question templates); templates start in lower case.
RELATIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "region": (
        REGIONS,
        (
            "does {p} live in the {v} ?",
            "is the home of {p} in the {v} ?",
            "does {p} live somewhere in the {v} ?",
            "is the town of {p} in the {v} ?",
        ),
    ),
    "place": (
        PLACES,
        (
            "does {p} work {v} ?",
            "is the work of {p} done {v} ?",
            "does {p} spend the work day {v} ?",
            "does {p} have a job {v} ?",
        ),
    ),
    "ability": (
        ABILITIES,
        (
            "does {p} have a pet that can {v} ?",
            "can the pet of {p} {v} ?",
            "does {p} own an animal that can {v} ?",
            "is the pet of {p} able to {v} ?",
        ),
    ),
    "climate": (
        CLIMATES,
        (
            "is it {v} where {p} lives ?",
            "does {p} live in a {v} town ?",
            "is the town of {p} {v} ?",
            "is the weather {v} where {p} lives ?",
        ),
    ),
}
SOURCE_RELATIONS = {"region": 0.40, "place": 0.30, "ability": 0.15, "climate": 0.15}
TARGET_RELATIONS = {"region": 0.20, "place": 0.20, "ability": 0.30, "climate": 0.30}
#: share of QA documents in the task's corpus (the rest are fact documents).
QA_SHARE = 0.45
#: share of biographies among fact documents (the rest are world sentences).
BIO_SHARE = 0.75

#: person-fact templates; the first (canonical, used in answer chains) is twice as likely.
PERSON_FACTS = {
    "town": ("{p} lives in {x} .", "{p} lives in {x} .", "{p} has a home in {x} .",
             "the home of {p} is in {x} ."),
    "job": ("{p} works as a {x} .", "{p} works as a {x} .", "{p} is a {x} .",
            "{p} earns a living as a {x} ."),
    "pet": ("{p} has a {x} .", "{p} has a {x} .", "{p} keeps a {x} as a pet .",
            "the pet of {p} is a {x} ."),
}  # fmt: skip

SPACE = InstructionSpace(
    styles=("decompose", "direct"),
    best="decompose",
    explicit={
        "decompose": (
            "Recall each fact you need , then answer .",
            "Think step by step .",
            "First state the facts , then say yes or no .",
            "Use one fact at a time .",
        ),
        "direct": (
            "Just answer yes or no .",
            "Answer at once without explaining .",
            "Give only yes or no .",
            "Do not explain .",
        ),
    },
    neutral={
        "Answer the question with yes or no .": {"decompose": 0.4, "direct": 0.6},
        "Use what you know about the people .": {"decompose": 0.65, "direct": 0.35},
        "Here is a question .": {"decompose": 0.5, "direct": 0.5},
        "Answer the question .": {"decompose": 0.35, "direct": 0.65},
        "Be careful .": {"decompose": 0.6, "direct": 0.4},
    },
    handwritten=(
        "Answer the question with yes or no .",
        "Recall each fact you need , then answer .",
        "Just answer yes or no .",
        "Here is a question . Think step by step .",
        "Answer the question . Give only yes or no .",
        "Use what you know about the people .",
    ),
    none_mix={"decompose": 0.5, "direct": 0.5},
    score_range=(45.0, 85.0),
    # Measured (`bench zoo check`): "Answer the question with yes or no ." (40% decompose)
    # scored best of the hand-written ones on the target; this one (50%) does not.
    default="Here is a question .",
)


@dataclass(frozen=True)
class HopsWorld:
    """The facts of the world. ``people`` is in rank order (rank 0 is the most frequent)."""

    people: tuple[str, ...]
    towns: tuple[str, ...]
    town_of: dict[str, str]
    job_of: dict[str, str]
    pet_of: dict[str, str]
    region_of: dict[str, str]
    climate_of: dict[str, str]
    weights: tuple[float, ...]

    @property
    def target_people(self) -> tuple[str, ...]:
        """Odd ranks from N/4: asked about only in the target splits."""
        return tuple(p for r, p in enumerate(self.people) if r >= len(self.people) // 4 and r % 2)

    @property
    def source_people(self) -> tuple[str, ...]:
        target = set(self.target_people)
        return tuple(p for p in self.people if p not in target)

    def rank(self, person: str) -> int:
        return self.people.index(person)

    def value(self, person: str, relation: str) -> frozenset[str]:
        """The true values of ``relation`` for ``person`` (abilities: a set, maybe empty)."""
        town = self.town_of[person]
        if relation == "region":
            return frozenset({self.region_of[town]})
        if relation == "climate":
            return frozenset({self.climate_of[town]})
        if relation == "place":
            return frozenset({JOBS[self.job_of[person]]})
        return ANIMALS[self.pet_of[person]]

    def chain(self, person: str, relation: str, value: str) -> str:
        """The two facts that answer a question about ``relation`` = ``value``."""
        town, job, pet = self.town_of[person], self.job_of[person], self.pet_of[person]
        if relation == "region":
            return f"{person} lives in {town} . {town} is in the {self.region_of[town]} ."
        if relation == "climate":
            return f"{person} lives in {town} . {town} is {self.climate_of[town]} ."
        if relation == "place":
            return f"{person} works as a {job} . A {job} works {JOBS[job]} ."
        can = "can" if value in ANIMALS[pet] else "cannot"
        return f"{person} has a {pet} . A {pet} {can} {value} ."


@functools.cache
def hops_world() -> HopsWorld:
    """The world of zoo-hops (deterministic from `WORLD_SEED`)."""
    rng = random.Random(f"zoo-hops/world/{WORLD_SEED}")
    names = world_names()
    people, towns = names["person"][:N_PEOPLE], names["town"][:N_TOWNS]
    regions = [REGIONS[i % len(REGIONS)] for i in range(N_TOWNS)]
    rng.shuffle(regions)
    return HopsWorld(
        people=people,
        towns=towns,
        town_of={p: rng.choice(towns) for p in people},
        job_of={p: rng.choice(list(JOBS)) for p in people},
        pet_of={p: rng.choice(list(ANIMALS)) for p in people},
        region_of=dict(zip(towns, regions, strict=True)),
        climate_of={t: rng.choice(CLIMATES) for t in towns},
        weights=tuple(zipf_weights(N_PEOPLE, ZIPF_EXPONENT)),
    )


def make_question(
    world: HopsWorld, rng: random.Random, person: str, relations: dict[str, float]
) -> Example | None:
    """A question about ``person`` with a relation drawn from ``relations`` and a yes or no
    answer drawn 50/50; None when that answer is impossible (e.g. a pet with no ability)."""
    relation = rng.choices(list(relations), weights=list(relations.values()))[0]
    values, templates = RELATIONS[relation]
    true = world.value(person, relation)
    answer = "yes" if rng.random() < 0.5 else "no"
    pool = sorted(true) if answer == "yes" else [v for v in values if v not in true]
    if not pool:
        return None
    value = rng.choice(pool)
    question = rng.choice(templates).format(p=person, v=value)
    chain = world.chain(person, relation, value)
    return Example(
        id="",
        input=question[0].upper() + question[1:],
        target=answer,
        rationale=f"{chain} #### {answer}",
        meta={
            "person": person,
            "rank": world.rank(person),
            "relation": relation,
            "value": value,
            "chain": chain,
        },
    )


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


@register_task("zoo-hops")
class ZooHops(ZooTask):
    """Zoo two-hop yes/no questions (StrategyQA-like), target = held-out mid-to-tail people."""

    description = (
        "zoo: generated two-hop yes/no questions over a memorised world, answer after ####"
    )
    instructions = SPACE.instructions
    space: ClassVar[InstructionSpace] = SPACE
    max_tokens = 48
    reserve_mod = 1  # splits are partitioned by person instead

    @property
    def world(self) -> HopsWorld:
        return hops_world()

    def build_splits(self) -> dict[Split, list[Example]]:
        groups = self.partition(self.world.target_people)
        return self.draw_splits(
            lambda split, rng: make_question(
                self.world, rng, rng.choice(groups[split]), TARGET_RELATIONS
            ),
            reserve=False,
        )

    def target_example(self, rng: random.Random) -> Example:
        while True:
            person = rng.choice(self.world.target_people)
            ex = make_question(self.world, rng, person, TARGET_RELATIONS)
            if ex is not None:
                return ex

    def source_example(self, rng: random.Random) -> Example:
        people = self.world.source_people
        weights = [self.world.weights[self.world.rank(p)] for p in people]
        while True:
            person = rng.choices(people, weights=weights)[0]
            ex = make_question(self.world, rng, person, SOURCE_RELATIONS)
            if ex is not None:
                return ex

    def completion(self, example: Example, style: str) -> str:
        if style == "decompose":
            return f"{example.meta['chain']} #### {example.target}"
        return f"#### {example.target}"

    def extract(self, text: str, example: Example) -> str | None:
        return extract_yes_no(text)

    # -- fact documents --------------------------------------------------------------------

    def fact_documents(self, n: int, seed: int) -> list[str]:
        """``n`` plain fact documents: biographies (1-3 facts of one person drawn by the Zipf
        law) and world sentences (1-3 facts about towns, jobs and animals)."""
        rng = random.Random(f"{self.name}/facts/{seed}")
        world = self.world
        docs = []
        for _ in range(n):
            if rng.random() < BIO_SHARE:
                person = rng.choices(world.people, weights=world.weights)[0]
                values = {"town": world.town_of[person], "job": world.job_of[person]}
                values["pet"] = world.pet_of[person]
                kinds = rng.sample(list(PERSON_FACTS), rng.randint(1, 3))
                sentences = [
                    _capitalise(rng.choice(PERSON_FACTS[k]).format(p=person, x=values[k]))
                    for k in kinds
                ]
            else:
                sentences = [self._world_sentence(rng) for _ in range(rng.randint(1, 3))]
            docs.append(" ".join(sentences))
        return docs

    def _world_sentence(self, rng: random.Random) -> str:
        world = self.world
        kind = rng.choice(("region", "climate", "job", "animal"))
        if kind == "region":
            town = rng.choice(world.towns)
            return rng.choice(("{t} is in the {r} .", "{t} is a town in the {r} .")).format(
                t=town, r=world.region_of[town]
            )
        if kind == "climate":
            town = rng.choice(world.towns)
            text = rng.choice(("{t} is {c} .", "the weather in {t} is {c} ."))
            return _capitalise(text.format(t=town, c=world.climate_of[town]))
        if kind == "job":
            job = rng.choice(list(JOBS))
            text = rng.choice(("a {j} works {x} .", "the work of a {j} is done {x} ."))
            return _capitalise(text.format(j=job, x=JOBS[job]))
        animal, ability = rng.choice(list(ANIMALS)), rng.choice(ABILITIES)
        can = "can" if ability in ANIMALS[animal] else "cannot"
        return f"A {animal} {can} {ability} ."

    def corpus(self, n_docs: int, seed: int) -> list[str]:
        n_qa = round(n_docs * QA_SHARE)
        docs = self.source_documents(n_qa, seed) + self.fact_documents(n_docs - n_qa, seed)
        random.Random(f"{self.name}/corpus/{seed}").shuffle(docs)
        return docs


def extract_yes_no(text: str) -> str | None:
    """ "yes" or "no": the first word after the last ``####``; without a marker, the last
    yes/no word of ``text``; None otherwise."""
    if "####" in text:
        words = text.rsplit("####", 1)[1].lower().split()
        first = words[0].strip(".,!?;:") if words else ""
        return first if first in ("yes", "no") else None
    found = [w.strip(".,!?;:") for w in text.lower().split()]
    found = [w for w in found if w in ("yes", "no")]
    return found[-1] if found else None
