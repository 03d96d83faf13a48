"""GSM8K on the reference files: splits, gold parsing quirks, extraction and prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from benchmarks.tasks.gsm8k import DEV_SIZE
from methods.base import Example


@pytest.fixture(scope="module")
def task(shared_data: Path) -> Task:
    return get_task("gsm8k", data_dir=shared_data)


@pytest.fixture(scope="module")
def splits(task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_split_sizes(splits: dict[str, list[Example]]) -> None:
    assert len(splits["test"]) == 1319
    assert len(splits["dev"]) == DEV_SIZE
    assert len(splits["train"]) + len(splits["dev"]) == 7473


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task, splits: dict[str, list[Example]], split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_splits_disjoint_and_deterministic(shared_data: Path, splits) -> None:
    ids = {split: {ex.id for ex in splits[split]} for split in SPLITS}
    assert ids["train"].isdisjoint(ids["dev"]) and ids["train"].isdisjoint(ids["test"])
    again = get_task("gsm8k", data_dir=shared_data).examples("dev")
    assert [ex.id for ex in again] == [ex.id for ex in splits["dev"]]


def test_gold_quirks(splits: dict[str, list[Example]]) -> None:
    test = splits["test"]
    comma = [ex for ex in test if "#### 2,125" in (ex.rationale or "")]
    assert len(comma) == 1 and comma[0].target == "2125"
    assert sum("," in (ex.rationale or "").rsplit("####", 1)[1] for ex in test) == 14
    assert all("," not in ex.target and "." not in ex.target for ex in test)
    assert sorted(ex.target for ex in test if ex.target.startswith("-")) == ["-10", "-3"]
    train_dev = splits["train"] + splits["dev"]
    assert sum(ex.target.startswith("-") for ex in train_dev) == 3


def test_rationale_drops_calculator_annotations(splits: dict[str, list[Example]]) -> None:
    first = splits["test"][0]
    assert first.target == "18"
    assert first.rationale == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market.\n#### 18"
    )
    assert not any("<<" in (ex.rationale or "") for split in SPLITS for ex in splits[split])


@pytest.mark.parametrize(
    ("output", "answer", "score"),
    [
        (" She sells 9 eggs for $2 each: 9 * 2 = 18.\n#### 18", "18", 1.0),
        (" 9 * 2 = 18 dollars.", "18", 1.0),  # no marker: the last number
        (" 16 - 3 = 13, 13 * 2 = 26\n#### 26", "26", 0.0),
        (" #### $18.00", "18", 1.0),
        (" I am not sure how to solve this.", None, 0.0),
    ],
)
def test_extract_realistic_outputs(task, splits, output: str, answer, score: float) -> None:
    ex = splits["test"][0]
    assert task.extract(output, ex) == answer
    assert task.score(task.extract(output, ex), ex) == score


def test_render_has_instruction_and_demos(task, splits: dict[str, list[Example]]) -> None:
    demos = splits["train"][:2]
    prompt = task.render(splits["test"][0], instruction=task.instructions[0], demos=demos)
    assert prompt.startswith(task.instructions[0])
    for demo in demos:
        assert f"Q: {demo.input}\nA: {demo.rationale}\n\n" in prompt
    assert prompt.endswith(f"Q: {splits['test'][0].input}\nA:")
    assert len(set(task.instructions)) == len(task.instructions) >= 4
