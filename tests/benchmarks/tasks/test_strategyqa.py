"""StrategyQA on the reference files: splits, yes/no golds, fact rationales and extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from benchmarks.tasks.strategyqa import DEV_SIZE
from methods.base import Example


@pytest.fixture(scope="module")
def task(shared_data: Path) -> Task:
    return get_task("strategyqa", data_dir=shared_data)


@pytest.fixture(scope="module")
def splits(task: Task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_split_sizes_and_labels(splits: dict[str, list[Example]]) -> None:
    assert len(splits["test"]) == 229
    assert len(splits["dev"]) == DEV_SIZE
    assert len(splits["train"]) + len(splits["dev"]) == 2061
    assert sum(ex.target == "yes" for ex in splits["test"]) == 107  # True 107 / False 122
    assert {ex.target for split in SPLITS for ex in splits[split]} == {"yes", "no"}


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: Task, splits, split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_splits_disjoint_and_deterministic(shared_data: Path, splits) -> None:
    ids = {split: {ex.id for ex in splits[split]} for split in SPLITS}
    assert not ids["train"] & ids["dev"] and not ids["train"] & ids["test"]
    assert not ids["dev"] & ids["test"]
    again = get_task("strategyqa", data_dir=shared_data).examples("dev")
    assert [ex.id for ex in again] == [ex.id for ex in splits["dev"]]


def test_rationale_is_facts_then_answer(splits: dict[str, list[Example]]) -> None:
    first = splits["test"][0]
    assert first.id == "e0044a7b4d146d611e73" and first.target == "no"
    assert first.rationale == (
        "Albany, GA has around 75,000 people\nAlbany, NY has almost 100,000 people\n#### no"
    )


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        (" Albany, GA has 75,000 people.\nAlbany, NY has 100,000 people.\n#### No.", "no"),
        (" Albany, GA is small.\n#### yes", "yes"),
        (" #### Yes, it will.", "yes"),
        (" No, it will not.", "no"),  # no marker: the first standalone yes/no
        (" Nobody knows; yes, probably.", "yes"),  # "Nobody" is not "no"
        (" The facts are unclear.\n#### maybe", None),
        (" #### not likely", None),
        (" I cannot say.", None),
    ],
)
def test_extract_realistic_outputs(task: Task, splits, output: str, answer) -> None:
    ex = splits["test"][0]
    assert task.extract(output, ex) == answer
    assert task.score(answer, ex) == float(answer == "no")


def test_render_has_instruction_and_demos(task: Task, splits: dict[str, list[Example]]) -> None:
    demos = splits["train"][:2]
    prompt = task.render(splits["test"][0], instruction=task.instructions[2], demos=demos)
    assert prompt.startswith(task.instructions[2])
    for demo in demos:
        assert f"Q: {demo.input}\nA: {demo.rationale}\n\n" in prompt
    assert prompt.endswith(f"Q: {splits['test'][0].input}\nA:")
    assert len(set(task.instructions)) == len(task.instructions) >= 4


def _cut(text: str, stops: tuple[str, ...]) -> str:
    """``text`` as an API returns it with ``stops``: up to the earliest stop, excluded."""
    ends = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(ends)] if ends else text


@pytest.mark.parametrize("prompt_format", ["raw", "chat"])
def test_stops_catch_an_invented_next_question(prompt_format: str) -> None:
    # The model answers, then invents the next question as "Question:" (not "Q:") and answers
    # that too: the stops must end the answer before it.
    task = get_task("strategyqa", prompt_format=prompt_format)
    ex = Example("q", "Is water wet?", "yes")
    rambling = "Water is a liquid.\n#### yes\n\nQuestion: Can fish fly?\nFish swim.\n#### no"
    assert task.extract(_cut(rambling, task.stop), ex) == "yes"
