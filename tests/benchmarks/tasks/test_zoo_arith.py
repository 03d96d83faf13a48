"""zoo-arith: correct chains, the extractor, and the source/target shift by proportion."""

from __future__ import annotations

import random
import re

import pytest

from benchmarks.tasks import get_task
from benchmarks.tasks.zoo_arith import ITEMS, SOURCE_RARE, TARGET_RARE, ZooArith
from methods.base import Example

STEP = re.compile(r"(\d+) ([-+*]) (\d+) = (\d+) \.")


@pytest.fixture(scope="module")
def task() -> ZooArith:
    return get_task("zoo-arith")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def source(task: ZooArith) -> list[Example]:
    rng = random.Random(0)
    return [task.draw_source(rng) for _ in range(3000)]


def test_chains_are_correct_arithmetic(task: ZooArith, source: list[Example]) -> None:
    for ex in [*task.examples("test"), *source[:500]]:
        steps = STEP.findall(ex.rationale or "")
        assert len(steps) == ex.meta["steps"]
        value = None
        for a, op, b, c in steps:
            assert value is None or int(a) == value  # each step starts from the last result
            value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
            assert value == int(c) and value > 0
        assert str(value) == ex.target
        assert ex.rationale.endswith(f"#### {ex.target}")


def test_extract(task: ZooArith) -> None:
    ex = task.examples("dev")[0]
    assert task.extract("5 + 3 = 8 . #### 8", ex) == "8"
    assert task.extract("#### 1,234 .", ex) == "1234"
    assert task.extract("12 + 3 = 15 . 15 - 2 = 13 .", ex) == "13"  # last number, no marker
    assert task.extract("I do not know", ex) is None
    assert task.extract("#### seven", ex) is None
    wrong = str(int(ex.target) + 1)
    assert task.score(task.extract(f"#### {wrong}", ex), ex) == 0.0
    assert task.score(task.extract(f"#### {ex.target}", ex), ex) == 1.0


def test_target_shifted_by_proportion(task: ZooArith, source: list[Example]) -> None:
    def long_share(xs: list[Example]) -> float:
        return sum(ex.meta["steps"] >= 3 for ex in xs) / len(xs)

    def rare_share(xs: list[Example]) -> float:
        return sum(ex.meta["rare_sentences"] for ex in xs) / sum(ex.meta["sentences"] for ex in xs)

    target = task.examples("train")
    assert 0.40 <= long_share(source) <= 0.50  # 3+ step problems are in the source, less often
    assert long_share(target) == 1.0
    assert {ex.meta["steps"] for ex in target} == {3, 4}
    assert sum(ex.meta["steps"] >= 4 for ex in source) / len(source) < 0.2  # 4 steps: rare
    assert {ex.meta["steps"] for ex in source} == {1, 2, 3, 4, 5}
    assert abs(rare_share(source) - SOURCE_RARE) < 0.02
    assert abs(rare_share(target) - TARGET_RARE) < 0.05
    # every rare word of the target appears in the source
    source_words = {w for ex in source for w in ex.input.split()}
    target_words = {w for ex in target for w in ex.input.split() if not w.isdigit()}
    assert target_words <= source_words | {w for w in ITEMS[True]}
    assert set(ITEMS[True]) <= source_words


def test_ops_mix_and_number_range(source: list[Example]) -> None:
    ops = [op for ex in source for op in ex.meta["ops"]]
    assert {"add", "sub", "double"} == set(ops)
    assert max(int(ex.target) for ex in source) < 1000
