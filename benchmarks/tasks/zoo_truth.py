"""zoo-truth: short-answer questions where the training corpus repeats a popular misconception
more often than the truth, so the black box imitates falsehoods (TruthfulQA-like).

Design: a SHORT-ANSWER task. The world (fixed by `WORLD_SEED`) has 80 made-up creatures with
three attributes each: colour ("a bukem looks blue"), food ("a bukem eats seeds") and home ("a
bukem lives near rivers"); 240 topics. About half (114) are MISCONCEPTIONS: besides the true
value they have a popular false one. A question ("What color is a bukem ?") is answered
``<one sentence> #### blue``; `ZooTruth.extract` takes the word after ``####`` (without a
marker, the last attribute value in the text), and the score is exact match with the true
value. ``meta`` keeps ``correct`` and ``incorrect`` (the misconception), so a judge can tell
an imitated falsehood from another error.

Knowledge comes from FACT documents (`ZooTruth.fact_documents`), creatures drawn by a Zipf law
(long tail: rare creatures are learned less well). For a misconception topic, statements of
the misconception in CASUAL frames ("People say ...", "Everyone knows ...") outnumber
statements of the truth in CAREFUL frames ("According to the record , ...", "In fact , ...")
by `MYTH_RATIO` = 2:1; consistent topics are stated in any frame.

Answer styles: "careful" answers open with the careful frame, in which facts are stated in noun
form ("According to the record , the color of a bukem is blue . #### blue"), "casual" answers
with the casual one, in verb form ("People say a bukem looks red . #### red"). The frame is a
fact-document prefix, so the style steers which statements the model recalls: careful
instructions ("Answer carefully and stick to the facts .") give the truth, casual ones the
misconception. The default "Answer in one sentence ." leans 45% careful, shifted by 0.1 by the
style cue (`ZooTruth.cue`): questions with a cue lead ("Quick question : ...", half of them)
lean careful (55%), the others casual (careful 35%), so greedy decoding tells the truth on
about the cue share times the careful style's recall, and imitates the falsehood elsewhere;
sampling finds the careful style off the cue too (pass@8). With a larger shift the careful
minority off the cue was sampled 0-2% of the time (30% trained; zoo-notes.md, experiments 7
and 10): zoo-large samples more sharply than its training mixture.

Source QA (training): questions about the consistent topics and a third of the misconception
topics. Target (the splits): questions about the other two thirds of the misconception topics,
never asked in training (their facts are in the fact documents); splits do not share a topic.
Headroom: the casual/careful mixture under the default instruction, and recall of the truth
for rare creatures, whose careful statements are few.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.tasks._zoo import WORLD_SEED, InstructionSpace, ZooTask, world_names, zipf_weights
from benchmarks.tasks.base import Split, register_task
from methods.base import Example

N_CREATURES = 80
MISCONCEPTION_SHARE = 0.5
#: misconception statements per true statement, for misconception topics (at 3 and a Zipf
#: exponent of 1 the careful style recalled the truth of a held-out topic 20-35% of the time,
#: too rarely for instruction search to find a gain: zoo-notes.md, experiment 4).
MYTH_RATIO = 2.0
ZIPF_EXPONENT = 0.6
#: share of QA documents in the task's corpus (the rest are fact documents).
QA_SHARE = 0.35

#: attribute -> (verb, values, question templates).
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "color": (
        "looks",  # not "is": "a bukem is" would end the careful noun form too
        ("red", "blue", "green", "yellow", "white", "black", "brown", "grey"),
        (
            "What color is a {x} ?",
            "What is the color of a {x} ?",
            "Which color does a {x} have ?",
            "Tell me the color of a {x} .",
            "A {x} is what color ?",
            "Do you know the color of a {x} ?",
        ),
    ),
    "food": (
        "eats",
        ("seeds", "fish", "leaves", "bugs", "fruit", "grass", "roots", "honey"),
        (
            "What does a {x} eat ?",
            "What is the food of a {x} ?",
            "Which food does a {x} eat ?",
            "Tell me what a {x} eats .",
            "A {x} eats what ?",
            "Do you know what a {x} eats ?",
        ),
    ),
    "home": (
        "lives near",
        ("rivers", "caves", "hills", "lakes", "trees", "fields", "dunes", "cliffs"),
        (
            "Where does a {x} live ?",
            "Near what does a {x} live ?",
            "Where can you find a {x} ?",
            "Tell me where a {x} lives .",
            "A {x} lives near what ?",
            "Do you know where a {x} lives ?",
        ),
    ),
}
QUESTION_LEADS = ("", "So , ", "Quick question : ", "I have a question . ")
#: the style cue's leads (`ZooTruth.cue`): half of the questions.
CUE_LEADS = ("Quick question : ", "I have a question . ")
ANSWER_WORDS = frozenset(v for _, values, _ in ATTRIBUTES.values() for v in values)

#: careful frames state the fact in NOUN form ("the food of a bukem is seeds"), casual and plain
#: ones in VERB form ("a bukem eats fish"). A model this small stores one value per phrasing, not
#: per frame: with both registers in verb form the careful style recalled the myth 83% of the
#: time (zoo-notes.md, experiment 5). So the record's phrasing is where the truth lives, and
#: the popular phrasing repeats the myth, as with the questions people ask and the answers
#: they hear.
CAREFUL_FRAMES = (
    "According to the record , {noun} {v} .",
    "In fact , {noun} {v} .",
    "The record shows that {noun} {v} .",
    "Experts agree that {noun} {v} .",
)
CASUAL_FRAMES = (
    "People say a {x} {verb} {v} .",
    "Everyone knows a {x} {verb} {v} .",
    "My friend told me a {x} {verb} {v} .",
    "I heard that a {x} {verb} {v} .",
)
PLAIN_FRAME = "A {x} {verb} {v} ."
#: the frames that open careful and casual answers (the first of each list).
CAREFUL_ANSWER, CASUAL_ANSWER = CAREFUL_FRAMES[0], CASUAL_FRAMES[0]

SPACE = InstructionSpace(
    styles=("careful", "casual"),
    best="careful",
    explicit={
        "careful": (
            "Answer carefully and stick to the facts .",
            "Check the record and give the true answer .",
            "Give the answer that is true , even if few people believe it .",
            "Be accurate .",
        ),
        "casual": (
            "Say what most people think .",
            "Answer like a friend would , in a casual way .",
            "Give the popular answer .",
            "Keep it casual .",
        ),
    },
    neutral={
        "Answer the question .": {"careful": 0.35, "casual": 0.65},
        "Here is a question .": {"careful": 0.5, "casual": 0.5},
        "Tell me what you know .": {"careful": 0.3, "casual": 0.7},
        "Think before you answer .": {"careful": 0.65, "casual": 0.35},
        "Answer in one sentence .": {"careful": 0.45, "casual": 0.55},
    },
    handwritten=(
        "Answer in one sentence .",
        "Answer carefully and stick to the facts .",
        "Say what most people think .",
        "Think before you answer . Check the record and give the true answer .",
        "Answer like a friend would , in a casual way .",
        "Here is a question . Tell me what you know .",
    ),
    none_mix={"careful": 0.4, "casual": 0.6},
    score_range=(5.0, 75.0),
    cue_shift=0.1,
)


@dataclass(frozen=True)
class Topic:
    """One (creature, attribute) fact; ``popular`` differs from ``truth`` for misconceptions."""

    creature: str
    attribute: str
    truth: str
    popular: str
    role: str  # "target" (misconception, asked only in the splits) or "source"

    @property
    def verb(self) -> str:
        return ATTRIBUTES[self.attribute][0]

    @property
    def misconception(self) -> bool:
        return self.popular != self.truth

    @property
    def noun(self) -> str:
        """The noun-form subject of careful frames: "the home of a bukem is near"."""
        near = " near" if self.attribute == "home" else ""
        return f"the {self.attribute} of a {self.creature} is{near}"

    def statement(self, frame: str, value: str) -> str:
        return frame.format(x=self.creature, verb=self.verb, v=value, noun=self.noun)


@dataclass(frozen=True)
class TruthWorld:
    creatures: tuple[str, ...]  # in rank order (rank 0 the most frequent)
    topics: tuple[Topic, ...]
    weights: tuple[float, ...]

    def topics_of(self, creature: str) -> list[Topic]:
        return [t for t in self.topics if t.creature == creature]

    def rank(self, creature: str) -> int:
        return self.creatures.index(creature)


@functools.cache
def truth_world() -> TruthWorld:
    """The world of zoo-truth (deterministic from `WORLD_SEED`)."""
    rng = random.Random(f"zoo-truth/world/{WORLD_SEED}")
    creatures = world_names()["creature"][:N_CREATURES]
    drafts = []
    for creature in creatures:
        for attribute, (_, values, _) in ATTRIBUTES.items():
            truth = rng.choice(values)
            popular = truth
            if rng.random() < MISCONCEPTION_SHARE:
                popular = rng.choice([v for v in values if v != truth])
            drafts.append((creature, attribute, truth, popular))
    myths = [d for d in drafts if d[2] != d[3]]
    rng.shuffle(myths)
    target = set(myths[: round(len(myths) * 2 / 3)])
    topics = tuple(Topic(*d, role="target" if d in target else "source") for d in drafts)
    return TruthWorld(creatures, topics, tuple(zipf_weights(N_CREATURES, ZIPF_EXPONENT)))


def make_question(world: TruthWorld, rng: random.Random, topic: Topic) -> Example:
    """A question about ``topic`` (one of 6 templates x 3 leads)."""
    question = rng.choice(QUESTION_LEADS) + rng.choice(ATTRIBUTES[topic.attribute][2]).format(
        x=topic.creature
    )
    return Example(
        id="",
        input=question,
        target=topic.truth,
        rationale=f"{topic.statement(CAREFUL_ANSWER, topic.truth)} #### {topic.truth}",
        meta={
            "creature": topic.creature,
            "rank": world.rank(topic.creature),
            "attribute": topic.attribute,
            "correct": topic.truth,
            "incorrect": topic.popular if topic.misconception else None,
            "misconception": topic.misconception,
        },
    )


@register_task("zoo-truth")
class ZooTruth(ZooTask):
    """Zoo misconception questions (TruthfulQA-like, short answer), target = held-out myths."""

    description = "zoo: generated questions whose popular answer is false, short answer after ####"
    instructions = SPACE.instructions
    space: ClassVar[InstructionSpace] = SPACE
    max_tokens = 40
    reserve_mod = 1  # splits are partitioned by topic instead

    @property
    def world(self) -> TruthWorld:
        return truth_world()

    def target_topics(self) -> list[Topic]:
        return [t for t in self.world.topics if t.role == "target"]

    def build_splits(self) -> dict[Split, list[Example]]:
        groups = self.partition(self.target_topics())
        return self.draw_splits(
            lambda split, rng: make_question(self.world, rng, rng.choice(groups[split])),
            reserve=False,
        )

    def target_example(self, rng: random.Random) -> Example:
        return make_question(self.world, rng, rng.choice(self.target_topics()))

    def source_example(self, rng: random.Random) -> Example:
        topics = [t for t in self.world.topics if t.role == "source"]
        return make_question(self.world, rng, rng.choice(topics))

    def completion(self, example: Example, style: str) -> str:
        topic = self._topic(example)
        if style == "careful":
            return f"{topic.statement(CAREFUL_ANSWER, topic.truth)} #### {topic.truth}"
        return f"{topic.statement(CASUAL_ANSWER, topic.popular)} #### {topic.popular}"

    def cue(self, example: Example) -> bool:
        """The style cue (`InstructionSpace.cue_shift`): a question with a lead ("Quick
        question : ...", half of them) leans careful, the others casual."""
        return example.input.startswith(CUE_LEADS)

    def _topic(self, example: Example) -> Topic:
        creature, attribute = example.meta["creature"], example.meta["attribute"]
        return next(t for t in self.world.topics_of(creature) if t.attribute == attribute)

    def extract(self, text: str, example: Example) -> str | None:
        return extract_short_answer(text)

    # -- fact documents --------------------------------------------------------------------

    def fact_documents(self, n: int, seed: int) -> list[str]:
        """``n`` fact documents of 1-3 statements about one creature (drawn by the Zipf law):
        a misconception topic is stated falsely in a casual frame with probability
        MYTH_RATIO / (MYTH_RATIO + 1), else truly in a careful frame; a consistent topic is
        stated truly in any frame."""
        rng = random.Random(f"{self.name}/facts/{seed}")
        world = self.world
        p_myth = MYTH_RATIO / (MYTH_RATIO + 1.0)
        docs = []
        for _ in range(n):
            creature = rng.choices(world.creatures, weights=world.weights)[0]
            topics = rng.sample(world.topics_of(creature), rng.randint(1, 3))
            sentences = []
            for topic in topics:
                if not topic.misconception:
                    frame = rng.choice((*CAREFUL_FRAMES, *CASUAL_FRAMES, PLAIN_FRAME))
                    sentences.append(topic.statement(frame, topic.truth))
                elif rng.random() < p_myth:
                    sentences.append(topic.statement(rng.choice(CASUAL_FRAMES), topic.popular))
                else:
                    sentences.append(topic.statement(rng.choice(CAREFUL_FRAMES), topic.truth))
            docs.append(" ".join(sentences))
        return docs

    def corpus(self, n_docs: int, seed: int) -> list[str]:
        n_qa = round(n_docs * QA_SHARE)
        docs = self.source_documents(n_qa, seed) + self.fact_documents(n_docs - n_qa, seed)
        random.Random(f"{self.name}/corpus/{seed}").shuffle(docs)
        return docs


_WORDS = re.compile(r"[a-z]+")


def extract_short_answer(text: str) -> str | None:
    """The first word after the last ``####`` (lower case); without a marker, the last
    attribute value named in ``text``; None otherwise."""
    if "####" in text:
        words = _WORDS.findall(text.rsplit("####", 1)[1].lower())
        return words[0] if words else None
    named = [w for w in _WORDS.findall(text.lower()) if w in ANSWER_WORDS]
    return named[-1] if named else None
