"""AG News on the reference files: header variants, CSV quoting, labels and extraction."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.tasks import SPLITS, Task, get_task
from methods.base import Example
from methods.registry import BenchError


@pytest.fixture(scope="module")
def task(shared_data: Path) -> Task:
    return get_task("agnews", data_dir=shared_data)


@pytest.fixture(scope="module")
def splits(task: Task) -> dict[str, list[Example]]:
    return {split: task.examples(split) for split in SPLITS}


def test_split_sizes_and_labels(task: Task, splits: dict[str, list[Example]]) -> None:
    assert len(splits["train"]) == len(splits["dev"]) == 64
    assert len(splits["test"]) == 7600
    for split in SPLITS:
        per_label = {w: sum(ex.target == w for ex in splits[split]) for w in task.labels or ()}
        assert set(per_label.values()) == {len(splits[split]) // 4}
    first = splits["test"][0]
    assert first.input.startswith("Fears for T N pension after talks")
    assert first.target == "business" and first.meta["label"] == 2


@pytest.mark.parametrize("split", SPLITS)
def test_gold_scores_full_marks(task: Task, splits, split: str) -> None:
    for ex in splits[split]:
        assert task.score(task.extract(task.render_target(ex), ex), ex) == 1.0, ex.id


def test_quoted_rows_have_no_stray_quotes(splits: dict[str, list[Example]]) -> None:
    for split in SPLITS:
        for ex in splits[split]:
            assert not (ex.input.startswith('"') and ex.input.endswith('"')), ex.id
            assert '""' not in ex.input, ex.id
    quoted = [ex for ex in splits["test"] if "Music Manifesto" in ex.input]
    assert len(quoted) == 1
    assert quoted[0].input.startswith("Open Letter Against British Copyright Indoctrination")
    assert 'launched a "Music Manifesto" campaign' in quoted[0].input
    assert quoted[0].input.endswith("in your area.")


def test_splits_disjoint_and_deterministic(shared_data: Path, splits) -> None:
    texts = {split: {ex.input for ex in splits[split]} for split in SPLITS}
    assert not texts["train"] & texts["dev"] and not texts["train"] & texts["test"]
    again = get_task("agnews", data_dir=shared_data).examples("dev")
    assert again == splits["dev"]


def test_fewshot_seed(shared_data: Path, splits) -> None:
    other = get_task("agnews", data_dir=shared_data, fewshot_seed=100)
    assert other.examples("train") != splits["train"] and len(other.examples("train")) == 64
    with pytest.raises(BenchError, match="fewshot_seed"):
        get_task("agnews", fewshot_seed=43)


@pytest.mark.parametrize(
    ("output", "answer"),
    [
        (" business", "business"),
        (" Business.", "business"),
        (" Sci/Tech", "tech"),
        (" Technology", "tech"),
        (" Sports", "sports"),
        (" World News", "world"),
        (" entertainment", None),
        ("", None),
    ],
)
def test_extract_realistic_outputs(task: Task, splits, output: str, answer) -> None:
    ex = splits["test"][0]
    assert task.extract(output, ex) == answer
    assert task.score(task.extract(output, ex), ex) == float(answer == "business")


def test_render_has_instruction_and_demos(task: Task, splits: dict[str, list[Example]]) -> None:
    ex, demos = splits["test"][0], splits["train"][:2]
    prompt = task.render(ex, instruction=task.instructions[3], demos=demos)
    assert prompt.startswith(task.instructions[3])
    for demo in demos:
        assert f"Article: {demo.input}\nTopic: {demo.target}\n\n" in prompt
    assert prompt.endswith(f"Article: {ex.input}\nTopic:")
    assert task.labels == ("world", "sports", "business", "tech")
    assert len(set(task.instructions)) == len(task.instructions) >= 4
