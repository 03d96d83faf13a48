"""zoo-hops: yes/no questions that need two hops over the facts of a generated world
(StrategyQA-like).

The world (fixed by `WORLD_SEED`): 120 people with made-up names, each living in one of 12
towns, working one of 12 jobs and keeping one of 12 animals; towns have a region and a
climate, jobs are done indoors or outdoors, animals can or cannot fly, swim and climb. A
question joins a person fact with a second fact: "Does Runo have a pet that can fly ?" needs
"Runo has a duck ." and "A duck can fly and swim .". Each relation's questions ask ONE value
(`ASKED`: "Does Runo live in the east ?"). The decomposed answer states the person fact, then
the bridging value's TRUE value in the sentence the world documents use ("Runo lives in Talera
. Talera is in the west . #### no"): two one-key recalls, the kind of fact these models learn,
and a yes/no that is a function of the value just stated. No document states a false value:
beside "Talera is not in the east ." and quizzes about every value, the model learned few world
facts (one region for 11 of 12 towns), and it learns no comparison of a recalled value with an
asked one (zoo-notes.md, experiments 3 and 6). The direct answer is ``#### yes`` alone.

Knowledge comes from FACT documents (`ZooHops.fact_documents`): short biographies of a person
drawn by a Zipf law over people (exponent `ZIPF_EXPONENT`: rank 0 in ~4% of biographies,
rank 119 in ~0.4%), so rare people's facts are memorised less well, and world sentences about
towns, jobs and animals, true ones only, most in the chains' form (few and frequent).

Held out: (person, relation) PAIRS. Each target person (ranks from 30: mid to tail) has
two relations asked about them only in the target splits (`HopsWorld.held_out`). Source QA
(training) asks about anyone, uniformly, on a relation not held out for them
(`SOURCE_RELATIONS`: 40/30/15/15%), so the model learns to copy every name into its chain (it
does not for names it was never asked about); the target asks the held-out pairs, the rarer
relations weighted up (`TARGET_RELATIONS`). Splits do not share a person.

Headroom and prompt sensitivity: latent two-hop composition is hard for small transformers,
while a decomposed chain turns it into two single-hop recalls, each a fact-document prefix
("Runo has a", "Talera is in the"). zoo-large still learns some of it: direct answers were
67-68% right after 5,000 steps (zoo-notes.md, experiment 9), too many for a default mixture of
chain and direct answers to sit inside the headroom band. So the answer styles are the chain
("decompose"), the direct yes/no ("direct") and a LABEL CONVENTION the scorer rejects
("truefalse": "#### true" / "#### false", as zoo-sentiment's "great / terrible"), each tied to
explicit instructions. The default "Here is a question ." leans 50% to the chain and 45% to
true/false, shifted by 0.15 by the style cue (`ZooHops.cue`, climate questions, about a third
of the target; `TARGET_RELATIONS`): the chain is the mode on cue questions (65%), true/false
off them (chain 35%), so greedy zero-shot is right on the cue's share and part of the rest,
sampling finds the chain off the cue too (pass@8), and instruction search has the chain's
explicit instructions to find.
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
#: flatter than 1: the held-out relations' first hop (a tail person's job or pet) is recalled
#: from biographies alone, and at 1.0 the tail's were recalled at chance (zoo-notes.md).
ZIPF_EXPONENT = 0.6
REGIONS = ("north", "south", "east", "west")
CLIMATES = ("cold", "warm", "rainy")
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
#: relation -> question templates (they start in lower case).
RELATIONS: dict[str, tuple[str, ...]] = {
    "region": (
        "does {p} live in the {v} ?",
        "is the home of {p} in the {v} ?",
        "does {p} live somewhere in the {v} ?",
        "is the town of {p} in the {v} ?",
        "does {p} have a home in the {v} ?",
        "is {p} living in the {v} ?",
        "is the town where {p} lives in the {v} ?",
        "does {p} make a home in the {v} ?",
    ),
    "place": (
        "does {p} work {v} ?",
        "is the work of {p} done {v} ?",
        "does {p} spend the work day {v} ?",
        "does {p} have a job {v} ?",
        "is {p} at work {v} ?",
        "does the job of {p} take place {v} ?",
        "does {p} earn a living {v} ?",
        "is the job of {p} done {v} ?",
    ),
    "ability": (
        "does {p} have a pet that can {v} ?",
        "can the pet of {p} {v} ?",
        "does {p} own an animal that can {v} ?",
        "is the pet of {p} able to {v} ?",
        "does {p} keep a pet that can {v} ?",
        "can the animal of {p} {v} ?",
        "is the animal of {p} able to {v} ?",
        "does the pet of {p} know how to {v} ?",
    ),
    "climate": (
        "is it {v} where {p} lives ?",
        "does {p} live in a {v} town ?",
        "is the town of {p} {v} ?",
        "is the weather {v} where {p} lives ?",
        "is the home of {p} {v} ?",
        "does {p} live where it is {v} ?",
        "is the weather {v} in the town of {p} ?",
        "does {p} have a {v} home town ?",
    ),
}
#: the one value each relation's questions ask about ("Does Runo live in the east ?"), so the
#: yes/no is a function of the value the chain recalls ("Talera is in the west ." -> no), not a
#: comparison of two value words, which these models do not learn (zoo-notes.md, experiments 3
#: and 6); the values most balanced between yes and no over the people.
ASKED = {"region": "east", "climate": "warm", "place": "outdoors", "ability": "swim"}
SOURCE_RELATIONS = {"region": 0.40, "place": 0.30, "ability": 0.15, "climate": 0.15}
#: climate questions (the style cue, `ZooHops.cue`) weighted to about 40% of the target.
TARGET_RELATIONS = {"region": 0.15, "place": 0.15, "ability": 0.30, "climate": 0.40}
#: share of QA documents in the task's corpus (the rest are fact documents).
QA_SHARE = 0.45
#: share of biographies among fact documents (the rest are world sentences).
BIO_SHARE = 0.8
#: relations of each target person asked only in the target splits.
HELD_OUT_PER_PERSON = 2
#: share of source questions about a PASSER-BY: a made-up person, never of the world, whose
#: town, job and pet open the question ("Taga has a frog . Taga lives in Roseno . Taga works
#: as a cook . Does Taga have a pet that can swim ?"). The world's source questions repeat, so
#: their answers can be memorised per question; a passer-by's cannot, so the chain's second
#: step must be looked up from the first one just written, the route that also answers the
#: held-out pairs.
PASSER_BY_SHARE = 0.3

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
    styles=("decompose", "direct", "truefalse"),
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
        "truefalse": (
            "Answer true or false .",
            "Say if it is true or false .",
            "True or false ?",
        ),
    },
    neutral={
        "Answer the question with yes or no .": {"decompose": 0.4, "direct": 0.6, "truefalse": 0},
        "Use what you know about the people .": {
            "decompose": 0.65,
            "direct": 0.15,
            "truefalse": 0.2,
        },
        "Here is a question .": {"decompose": 0.5, "direct": 0.05, "truefalse": 0.45},
        "Answer the question .": {"decompose": 0.35, "direct": 0.35, "truefalse": 0.3},
        "Be careful .": {"decompose": 0.6, "direct": 0.2, "truefalse": 0.2},
    },
    handwritten=(
        "Here is a question .",
        "Recall each fact you need , then answer .",
        "Just answer yes or no .",
        "Here is a question . Think step by step .",
        "Answer the question . Give only yes or no .",
        "Use what you know about the people .",
        "Answer true or false .",
    ),
    none_mix={"decompose": 1, "direct": 1, "truefalse": 1},
    score_range=(20.0, 85.0),
    cue_shift=0.15,
)


#: a person's (town, job, pet)
Facts = tuple[str, str, str]


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
    #: target person -> the relations asked about them only in the target splits
    held_out: dict[str, frozenset[str]]

    @property
    def target_people(self) -> tuple[str, ...]:
        """The people with held-out relations (ranks from N/4, see `hops_world`)."""
        return tuple(p for p in self.people if p in self.held_out)

    def source_relations(self, person: str) -> dict[str, float]:
        """`SOURCE_RELATIONS` less the relations held out for ``person``."""
        held = self.held_out.get(person, frozenset())
        return {r: w for r, w in SOURCE_RELATIONS.items() if r not in held}

    def target_relations(self, person: str) -> dict[str, float]:
        """`TARGET_RELATIONS` restricted to the relations held out for ``person``."""
        held = self.held_out.get(person, frozenset())
        return {r: w for r, w in TARGET_RELATIONS.items() if r in held}

    def rank(self, person: str) -> int:
        return self.people.index(person)

    def facts(self, person: str) -> Facts:
        return self.town_of[person], self.job_of[person], self.pet_of[person]

    def value(self, person: str, relation: str, facts: Facts | None = None) -> frozenset[str]:
        """The true values of ``relation`` for ``person`` (abilities: a set, maybe empty);
        ``facts`` (town, job, pet) for a passer-by, who is not of the world."""
        town, job, pet = facts or self.facts(person)
        if relation == "region":
            return frozenset({self.region_of[town]})
        if relation == "climate":
            return frozenset({self.climate_of[town]})
        if relation == "place":
            return frozenset({JOBS[job]})
        return ANIMALS[pet]

    def town_sentence(self, town: str, relation: str, *, chain_form: bool = True) -> str:
        """A town's region or climate: "Talera is in the west ." / "Talera is cold ." in the
        chains' form, else "Talera is a town in the west ." / "The weather in Talera is cold ."."""
        if relation == "region":
            form = "{t} is in the {x} ." if chain_form else "{t} is a town in the {x} ."
            return form.format(t=town, x=self.region_of[town])
        form = "{t} is {x} ." if chain_form else "The weather in {t} is {x} ."
        return form.format(t=town, x=self.climate_of[town])

    def chain(self, person: str, relation: str, facts: Facts | None = None) -> str:
        """The two facts that answer a question about ``relation``: the person fact, then the
        TRUE value of the bridging town, job or pet, in the world sentence that states it
        ("Runo lives in Talera . Talera is in the west ."). Both are one-key recalls, the kind
        of fact these models learn, and since a relation's questions ask one value
        (`ASKED`), the yes/no is a function of the value just stated."""
        town, job, pet = facts or self.facts(person)
        if relation in ("region", "climate"):
            return f"{person} lives in {town} . {self.town_sentence(town, relation)}"
        if relation == "place":
            return f"{person} works as a {job} . {job_sentence(job)}"
        return f"{person} has a {pet} . {animal_sentence(pet)}"


def job_sentence(job: str) -> str:
    return f"A {job} works {JOBS[job]} ."


def animal_sentence(animal: str) -> str:
    """'A duck can fly and swim .'; 'A hen cannot fly , swim or climb .'"""
    can = [a for a in ABILITIES if a in ANIMALS[animal]]
    if not can:
        return f"A {animal} cannot {' , '.join(ABILITIES[:-1])} or {ABILITIES[-1]} ."
    return f"A {animal} can {' and '.join(can)} ."


@functools.cache
def hops_world() -> HopsWorld:
    """The world of zoo-hops (deterministic from `WORLD_SEED`)."""
    rng = random.Random(f"zoo-hops/world/{WORLD_SEED}")
    names = world_names()
    people, towns = names["person"][:N_PEOPLE], names["town"][:N_TOWNS]
    regions = [REGIONS[i % len(REGIONS)] for i in range(N_TOWNS)]
    rng.shuffle(regions)
    held_rng = random.Random(f"zoo-hops/held-out/{WORLD_SEED}")
    # target people: ranks from N/4 (mid to tail), each with relations held out
    target = [p for r, p in enumerate(people) if r >= len(people) // 4]
    held_out = {p: frozenset(held_rng.sample(list(RELATIONS), HELD_OUT_PER_PERSON)) for p in target}
    return HopsWorld(
        people=people,
        towns=towns,
        town_of={p: rng.choice(towns) for p in people},
        job_of={p: rng.choice(list(JOBS)) for p in people},
        pet_of={p: rng.choice(list(ANIMALS)) for p in people},
        region_of=dict(zip(towns, regions, strict=True)),
        climate_of={t: rng.choice(CLIMATES) for t in towns},
        weights=tuple(zipf_weights(N_PEOPLE, ZIPF_EXPONENT)),
        held_out=held_out,
    )


def make_question(
    world: HopsWorld,
    rng: random.Random,
    person: str,
    relations: dict[str, float],
    facts: Facts | None = None,
) -> Example | None:
    """A question about ``person`` with a relation drawn from ``relations`` and a yes or no
    answer drawn 50/50; None when that answer is impossible (e.g. a pet with no ability).
    With ``facts``, ``person`` is a passer-by whose facts open the question."""
    if not relations:
        return None
    relation = rng.choices(list(relations), weights=list(relations.values()))[0]
    templates = RELATIONS[relation]
    value = ASKED[relation]
    answer = "yes" if rng.random() < 0.5 else "no"
    if (value in world.value(person, relation, facts)) != (answer == "yes"):
        return None
    question = _capitalise(rng.choice(templates).format(p=person, v=value))
    if facts is not None:
        intro = [
            person_sentence(rng, person, kind, x)
            for kind, x in zip(PERSON_FACTS, facts, strict=True)
        ]
        rng.shuffle(intro)
        question = " ".join([*intro, question])
    chain = world.chain(person, relation, facts)
    return Example(
        id="",
        input=question,
        target=answer,
        rationale=f"{chain} #### {answer}",
        meta={
            "person": person,
            "rank": world.rank(person) if facts is None else -1,
            "passer_by": facts is not None,
            "relation": relation,
            "value": value,
            "chain": chain,
        },
    )


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def person_sentence(rng: random.Random, person: str, kind: str, value: str) -> str:
    """A person fact of ``kind`` (town, job, pet) in one of its `PERSON_FACTS` wordings."""
    return _capitalise(rng.choice(PERSON_FACTS[kind]).format(p=person, x=value))


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
        """Per-person splits with as many yes as no answers: each (person, relation) has one
        answer, so the yes questions run out of phrasings first and a plain draw would leave
        the splits leaning to no."""
        groups = self.partition(self.world.target_people)
        return self.draw_splits(
            lambda split, rng: self._target_question(rng, rng.choice(groups[split])),
            reserve=False,
            balance_targets=True,
        )

    def _target_question(self, rng: random.Random, person: str) -> Example | None:
        return make_question(self.world, rng, person, self.world.target_relations(person))

    def target_example(self, rng: random.Random) -> Example:
        while True:
            ex = self._target_question(rng, rng.choice(self.world.target_people))
            if ex is not None:
                return ex

    def source_example(self, rng: random.Random) -> Example:
        """A question about anyone (uniform over people: a person's name must be copied into
        the chain, which the model learns only for names it was asked about), on a relation
        not held out for them; or, `PASSER_BY_SHARE` of the time, about a passer-by."""
        world = self.world
        while True:
            if rng.random() < PASSER_BY_SHARE:
                name = rng.choice(world_names()["person"][N_PEOPLE:])
                facts = (rng.choice(world.towns), rng.choice(list(JOBS)), rng.choice(list(ANIMALS)))
                ex = make_question(world, rng, name, SOURCE_RELATIONS, facts)
            else:
                person = rng.choice(world.people)
                ex = make_question(world, rng, person, world.source_relations(person))
            if ex is not None:
                return ex

    def cue(self, example: Example) -> bool:
        """The style cue (`InstructionSpace.cue_shift`): climate questions lean to the chain."""
        return example.meta["relation"] == "climate"

    def completion(self, example: Example, style: str) -> str:
        if style == "decompose":
            return f"{example.meta['chain']} #### {example.target}"
        if style == "truefalse":
            return f"#### {'true' if example.target == 'yes' else 'false'}"
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
                values = dict(zip(PERSON_FACTS, world.facts(person), strict=True))
                kinds = rng.sample(list(PERSON_FACTS), rng.randint(1, 3))
                sentences = [person_sentence(rng, person, k, values[k]) for k in kinds]
            else:
                sentences = [self._world_sentence(rng) for _ in range(rng.randint(1, 3))]
            docs.append(" ".join(sentences))
        return docs

    def _world_sentence(self, rng: random.Random) -> str:
        """A TRUE fact about a town, job or animal, most often in the form the chains use.
        No sentence states a false value: with "Talera is not in the east ." beside "Talera
        is in the west ." the model learned few world facts (zoo-notes.md, experiment 6)."""
        world = self.world
        kind = rng.choice(("region", "climate", "job", "animal"))
        chain_form = rng.random() < 0.75
        if kind == "animal":
            return animal_sentence(rng.choice(list(ANIMALS)))
        if kind == "job":
            job = rng.choice(list(JOBS))
            return job_sentence(job) if chain_form else f"The work of a {job} is done {JOBS[job]} ."
        return world.town_sentence(rng.choice(world.towns), kind, chain_form=chain_form)

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
