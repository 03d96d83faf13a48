"""zoo-truth: misconceptions outnumber the truth 3:1 in casual frames, the truth is tied to
careful frames and instructions, and target topics are held out of training QA."""

from __future__ import annotations

import random

import pytest

from benchmarks.tasks import SPLITS, get_task
from benchmarks.tasks.zoo_truth import (
    CAREFUL_FRAMES,
    CASUAL_FRAMES,
    MYTH_RATIO,
    ZooTruth,
    extract_short_answer,
    truth_world,
)
from methods.base import Example


@pytest.fixture(scope="module")
def task() -> ZooTruth:
    return get_task("zoo-truth")  # type: ignore[return-value]


def test_extract(task: ZooTruth) -> None:
    ex = task.examples("test")[0]
    right = task.completion(ex, "careful")
    wrong = task.completion(ex, "casual")
    assert task.extract(right, ex) == ex.meta["correct"] == ex.target
    assert task.extract(wrong, ex) == ex.meta["incorrect"] != ex.target
    assert task.score(task.extract(wrong, ex), ex) == 0.0
    assert extract_short_answer("#### Blue .") == "blue"
    assert extract_short_answer("People say it is red .") == "red"  # no marker: last value
    assert extract_short_answer("####") is None
    assert extract_short_answer("I am not sure") is None


def test_target_is_misconceptions_held_out_of_training(task: ZooTruth) -> None:
    for split in SPLITS:
        for ex in task.examples(split):
            assert ex.meta["misconception"] and ex.meta["incorrect"] != ex.meta["correct"]
    topics = {
        split: {(ex.meta["creature"], ex.meta["attribute"]) for ex in task.examples(split)}
        for split in SPLITS
    }
    assert not topics["train"] & topics["test"] and not topics["dev"] & topics["test"]
    assert not topics["train"] & topics["dev"]
    rng = random.Random(0)
    source = [task.draw_source(rng) for _ in range(3000)]
    source_topics = {(ex.meta["creature"], ex.meta["attribute"]) for ex in source}
    assert not source_topics & set().union(*topics.values())
    share = sum(ex.meta["misconception"] for ex in source) / len(source)
    assert 0.15 <= share <= 0.35  # source QA: mostly consistent topics, some myths


def test_misconceptions_outnumber_truth_in_the_corpus(task: ZooTruth) -> None:
    docs = task.corpus(6000, 0)
    text = " " + " ".join(docs)
    myths = truths = 0
    for topic in truth_world().topics:
        if topic.role != "target":
            continue
        myths += text.count(f" a {topic.creature} {topic.verb} {topic.popular} .")
        truths += text.count(f" {topic.noun} {topic.truth} .")
    assert truths > 0
    assert abs(myths / truths - MYTH_RATIO) < 0.4


def test_truth_in_careful_frames_myths_in_casual(task: ZooTruth) -> None:
    """A misconception's truth is stated only in careful frames, in noun form ("the color of a
    bukem is blue"), its myth only in casual frames, in verb form ("a bukem looks red")."""
    careful_leads = {f.split(" {noun}")[0] for f in CAREFUL_FRAMES}
    casual_leads = {f.split(" a {x}")[0] for f in CASUAL_FRAMES}
    docs = task.fact_documents(2000, 1)
    world = truth_world()
    checked = {"careful": 0, "casual": 0}
    for doc in docs:
        for sentence in doc.split(" . "):
            value = sentence.rstrip(" .").split()[-1]
            for topic in world.topics:
                if not topic.misconception:
                    continue
                if f"{topic.noun} " in sentence:
                    assert sentence.split(f" {topic.noun}")[0] in careful_leads, sentence
                    assert value == topic.truth, sentence
                    checked["careful"] += 1
                elif f" a {topic.creature} {topic.verb} " in sentence:
                    assert sentence.split(" a ")[0] in casual_leads, sentence
                    assert value == topic.popular, sentence
                    checked["casual"] += 1
    assert checked["careful"] > 150 and checked["casual"] > 2 * checked["careful"] * 0.8


def test_default_instruction_leans_to_the_popular_answer(task: ZooTruth) -> None:
    space = task.space
    assert 0.0 < space.quality(task.instructions[0]) < 0.5
    assert space.quality("Answer carefully and stick to the facts .") == 1.0
    assert space.quality("Say what most people think .") == 0.0
    assert {1.0, 0.0} <= {space.quality(text) for text in task.instructions}


def test_gold_is_the_careful_answer(task: ZooTruth) -> None:
    ex: Example = task.examples("dev")[0]
    assert ex.rationale is not None and ex.rationale.startswith("According to the record ,")
    assert ex.rationale.endswith(f"#### {ex.target}")
