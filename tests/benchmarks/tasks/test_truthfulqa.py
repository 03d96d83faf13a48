"""TruthfulQA MC1/MC2 on the reference file: splits, shuffled choices, letters and options."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from benchmarks.tasks._common import extract_choice, hash_split
from benchmarks.tasks.truthfulqa import TruthfulQA
from methods.base import Example
from methods.registry import BenchError


@pytest.fixture(scope="module", params=[1, 2], ids=["mc1", "mc2"])
def task(request: pytest.FixtureRequest, shared_data: Path) -> TruthfulQA:
    task = get_task("truthfulqa", data_dir=shared_data, mc=request.param)
    assert isinstance(task, TruthfulQA)
    return task


@pytest.fixture(scope="module")
def splits(task: Task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_splits_cover_all_questions_disjointly(splits: dict[str, list[Example]]) -> None:
    ids = [ex.id for split in SPLITS for ex in splits[split]]
    assert len(ids) == len(set(ids)) == 817
    sizes = {split: len(splits[split]) for split in SPLITS}
    assert 0.5 < sizes["train"] / 817 < 0.7 and 0.05 < sizes["dev"] / 817 < 0.15
    assert sizes == {"train": 454, "dev": 91, "test": 272}  # pinned: the hash split is stable


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: TruthfulQA, splits, split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_every_correct_letter_scores_and_no_other(task: TruthfulQA, splits) -> None:
    for ex in splits["dev"]:
        assert ex.choices is not None
        for i in range(len(ex.choices)):
            letter = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i]
            assert task.score(task.extract(f" {letter}", ex), ex) == (letter in ex.meta["correct"])


def test_choices_are_shuffled(task: TruthfulQA, splits: dict[str, list[Example]]) -> None:
    examples = [ex for split in SPLITS for ex in splits[split]]
    # the file lists a true answer first: in file order "A" would be correct every time
    first_correct = sum("A" in ex.meta["correct"] for ex in examples) / len(examples)
    assert first_correct < (0.3 if task.mc == 1 else 0.6)
    assert len({ex.target for ex in examples}) >= 5
    again = get_task("truthfulqa", data_dir=task.data_dir, mc=task.mc).examples("test")
    assert [ex.choices for ex in again] == [ex.choices for ex in splits["test"]]


def test_mc1_has_one_correct_and_mc2_several(task: TruthfulQA, splits) -> None:
    examples = [ex for split in SPLITS for ex in splits[split]]
    counts = [len(ex.meta["correct"]) for ex in examples]
    if task.mc == 1:
        assert set(counts) == {1}
    else:
        assert sum(n > 1 for n in counts) == 767 and max(counts) == 14
    for ex in examples:
        assert ex.target == ex.meta["correct"][0]


def test_split_is_keyed_on_the_question(splits: dict[str, list[Example]]) -> None:
    for split in SPLITS:
        assert all(hash_split(ex.input) == split for ex in splits[split])


@pytest.mark.parametrize(
    ("output", "letter"),
    [
        (" B", "B"),
        (" B.", "B"),
        (" (B)", "B"),
        (" B) Paris", "B"),
        (" Answer: B", "B"),
        (" The correct answer is (C).", "C"),
        (" **C**", "C"),
        (" Nothing happens", "A"),  # a choice's own text
        (" nothing happens.", "A"),
        (" Nothing happens, you digest them", "B"),  # the longest choice that matches
        (" E.T. is the best film", "D"),  # the choice "E.T.", not the letter E
        (" E.T. phone home", "D"),
        (" A lot of things can happen", None),  # not the letter A
        (" E", "E"),
        (" F", None),  # beyond the last choice
        (" I don't know", None),
        ("", None),
    ],
)
def test_extract_choice(output: str, letter: str | None) -> None:
    choices = ("Nothing happens.", "Nothing happens, you digest them", "You die", "E.T.", "Not")
    assert extract_choice(output, choices) == letter


def test_render_has_instruction_demos_and_lettered_choices(task: TruthfulQA, splits) -> None:
    ex, demos = splits["test"][0], splits["train"][:2]
    prompt = task.render(ex, instruction=task.instructions[1], demos=demos)
    assert prompt.startswith(task.instructions[1])
    for demo in demos:
        assert f"Question: {demo.input}\nA. {demo.choices[0]}\n" in prompt
        assert f"\nAnswer: {demo.target}\n\n" in prompt
    assert prompt.endswith(f"{chr(ord('A') + len(ex.choices) - 1)}. {ex.choices[-1]}\nAnswer:")
    assert len(set(task.instructions)) == len(task.instructions) >= 4


@pytest.mark.parametrize("mc", [0, 3, "x", None])
def test_bad_mc_option_raises(mc: object) -> None:
    with pytest.raises(BenchError, match="option mc must be 1 or 2"):
        get_task("truthfulqa", mc=mc)
