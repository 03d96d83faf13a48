"""ScienceQA (text-only LLaVA test file): prompt parsing, hash splits, letters and extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from benchmarks.tasks._common import hash_split
from benchmarks.tasks.scienceqa import parse_prompt
from methods.base import Example


@pytest.fixture(scope="module")
def task(shared_data: Path) -> Task:
    return get_task("scienceqa", data_dir=shared_data)


@pytest.fixture(scope="module")
def splits(task: Task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_splits_cover_the_text_only_rows(splits: dict[str, list[Example]]) -> None:
    ids = [ex.id for split in SPLITS for ex in splits[split]]
    assert len(ids) == len(set(ids)) == 2224
    assert {split: len(splits[split]) for split in SPLITS} == {
        "train": 1316,
        "dev": 236,
        "test": 672,
    }
    for split in SPLITS:
        assert all(hash_split(ex.id) == split for ex in splits[split])


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: Task, splits, split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_gold_letters_and_contexts(splits: dict[str, list[Example]]) -> None:
    examples = [ex for split in SPLITS for ex in splits[split]]
    assert {ex.target for ex in examples} <= set("ABCDE")
    assert all(ex.choices and len(ex.choices) >= 2 for ex in examples)
    assert sum(ex.input.startswith("Context: ") for ex in examples) == 789
    assert not any("<image>" in ex.input for ex in examples)


def test_parse_prompt() -> None:
    prompt = (
        "Context: Hint: knitting is learned.\nIs the trait inherited?\nA. acquired\nB. inherited"
    )
    assert parse_prompt(prompt) == (
        "Context: Hint: knitting is learned.\nIs the trait inherited?",
        ["acquired", "inherited"],
    )
    letter = "Which closing is correct?\nA. See you soon,\nJanet\nB. See You Soon,\nJanet"
    assert parse_prompt(letter) == (
        "Which closing is correct?",
        ["See you soon,\nJanet", "See You Soon,\nJanet"],
    )
    assert parse_prompt("No choices here") is None
    assert parse_prompt("Q?\nA. one\nC. three") is None


def test_first_test_question(splits: dict[str, list[Example]]) -> None:
    examples = {ex.id: ex for split in SPLITS for ex in splits[split]}
    ex = examples["4"]
    assert ex.input.startswith("Which figure of speech is used in this text?\nSing, O goddess")
    assert ex.choices == ("chiasmus", "apostrophe") and ex.target == "B"


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        (" B", "B"),
        (" (B)", "B"),
        (" Answer: B", "B"),
        (" apostrophe", "B"),
        (" A. chiasmus", "A"),
        (" C", None),  # only two choices
        (" It is a metaphor.", None),
    ],
)
def test_extract_realistic_outputs(task: Task, splits, output: str, answer) -> None:
    ex = {ex.id: ex for split in SPLITS for ex in splits[split]}["4"]
    assert task.extract(output, ex) == answer
    assert task.score(task.extract(output, ex), ex) == float(answer == "B")


def test_choices_differing_in_case_only(task: Task, splits) -> None:
    # letter closings such as "See you soon,\nJanet" / "See You Soon,\nJanet"
    examples = [ex for split in SPLITS for ex in splits[split]]
    cased = [e for e in examples if len({c.casefold() for c in e.choices or ()}) == 1]
    assert len(cased) > 20
    for ex in cased:
        for i, choice in enumerate(ex.choices or ()):
            assert task.extract(f" {choice}", ex) == "ABCDE"[i], ex.id


def test_render_has_instruction_and_demos(task: Task, splits: dict[str, list[Example]]) -> None:
    ex, demos = splits["test"][0], splits["train"][:2]
    prompt = task.render(ex, instruction=task.instructions[0], demos=demos)
    assert prompt.startswith(task.instructions[0])
    for demo in demos:
        assert f"Question: {demo.input}\nA. {demo.choices[0]}\n" in prompt
        assert f"\nAnswer: {demo.target}\n\n" in prompt
    assert prompt.endswith("\nAnswer:")
    assert len(set(task.instructions)) == len(task.instructions) >= 4
