"""SST-2 on the reference files: few-shot seeds, GLUE validation as test, label extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from benchmarks.tasks._common import FEWSHOT_SEEDS
from methods.base import Example
from methods.registry import BenchError


@pytest.fixture(scope="module")
def task(shared_data: Path) -> Task:
    return get_task("sst2", data_dir=shared_data)


@pytest.fixture(scope="module")
def splits(task: Task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_split_sizes_and_labels(splits: dict[str, list[Example]]) -> None:
    assert len(splits["train"]) == len(splits["dev"]) == 32
    assert len(splits["test"]) == 872
    assert sum(ex.target == "positive" for ex in splits["test"]) == 444
    assert sum(ex.target == "positive" for ex in splits["train"]) == 16
    first = splits["test"][0]
    assert first.input == "it 's a charming and often affecting journey ."  # trailing space gone
    assert first.target == "positive" and first.meta["label"] == 1


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: Task, splits, split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_splits_disjoint_and_deterministic(shared_data: Path, splits) -> None:
    texts = {split: {ex.input for ex in splits[split]} for split in SPLITS}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
    again = get_task("sst2", data_dir=shared_data).examples("train")
    assert again == splits["train"]


def test_fewshot_seed_picks_the_files(shared_data: Path, splits) -> None:
    other = get_task("sst2", data_dir=shared_data, fewshot_seed="13")
    assert other.examples("train") != splits["train"] and len(other.examples("train")) == 32
    for seed in FEWSHOT_SEEDS:
        assert len(get_task("sst2", data_dir=shared_data, fewshot_seed=seed).examples("dev")) == 32


@pytest.mark.parametrize("seed", [0, 7, "42x", None])
def test_bad_fewshot_seed_raises(seed: object) -> None:
    with pytest.raises(BenchError, match="fewshot_seed must be one of 13, 21, 42, 87, 100"):
        get_task("sst2", fewshot_seed=seed)


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        (" positive", "positive"),
        (" Negative.", "negative"),
        (" great", "positive"),  # BBT's verbalizer words count
        (" bad", "negative"),
        (" The sentiment is positive", "positive"),
        (" neutral", None),
        ("", None),
    ],
)
def test_extract_realistic_outputs(task: Task, splits, output: str, answer) -> None:
    ex = splits["test"][0]
    assert task.extract(output, ex) == answer
    assert task.score(task.extract(output, ex), ex) == float(answer == "positive")


def test_render_has_instruction_and_demos(task: Task, splits: dict[str, list[Example]]) -> None:
    ex, demos = splits["test"][0], splits["train"][:2]
    prompt = task.render(ex, instruction=task.instructions[0], demos=demos)
    assert prompt.startswith(task.instructions[0])
    for demo in demos:
        assert f"Review: {demo.input}\nSentiment: {demo.target}\n\n" in prompt
    assert prompt.endswith(f"Review: {ex.input}\nSentiment:")
    assert task.labels == ("negative", "positive") and task.stop == ("\n",)
    assert len(set(task.instructions)) == len(task.instructions) >= 4
