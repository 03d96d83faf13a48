"""Majority: the most common train answer (ties: sorted first) for every example, with no
black-box call; in a run, a zero-cost row that is not flagged as one answer throughout."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from benchmarks.metering import total_tokens
from benchmarks.report import collect_cells, leaderboard_rows
from benchmarks.results import RunStore, answer_warnings
from benchmarks.runner import BackendSpec, RunConfig, Runner
from benchmarks.tasks.base import get_task
from methods import BenchError, Example, get_method, load_policy


class _NoCalls:
    model = "no-calls"
    capabilities: frozenset[str] = frozenset()
    context_length = None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"majority called the black box's {name}")


def _examples(targets: list[str]) -> list[Example]:
    return [Example(f"e{i}", f"q{i}", t) for i, t in enumerate(targets)]


def test_the_most_common_train_answer_for_every_example(tmp_path: Path) -> None:
    task = get_task("zoo-sentiment", n_train=40, n_dev=2, n_test=10)
    train = _examples(["pos"] * 3 + ["neg"] * 5 + ["neu"] * 4)
    tuner = get_method("majority")()
    policy = tuner.fit(train, task=task, backend=_NoCalls())  # type: ignore[arg-type]
    test = task.examples("test")
    preds = policy.predict(test, task=task, backend=_NoCalls())  # type: ignore[arg-type]
    assert [(p.example_id, p.answer, p.output) for p in preds] == [
        (ex.id, "neg", "neg") for ex in test
    ]
    assert tuner.variant == "always 'neg' (5 of 12 train answers)"
    policy.save(tmp_path)
    again = load_policy(tmp_path)
    assert again.predict(test[:2], task=task, backend=_NoCalls()) == preds[:2]  # type: ignore[arg-type]


def test_ties_go_to_the_sorted_first_answer_whatever_the_order() -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=2, n_test=2)
    for targets in (["7", "12", "7", "12"], ["12", "7", "12", "7"], ["12", "12", "7", "7"]):
        policy = get_method("majority")().fit(_examples(targets), task=task, backend=_NoCalls())  # type: ignore[arg-type]
        assert policy.answer == "12"  # type: ignore[attr-defined]  # "12" < "7" as text


def test_no_train_examples_and_hyperparameters_are_one_line_errors() -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=2, n_test=2)
    with pytest.raises(BenchError, match="task zoo-arith has no train examples"):
        get_method("majority")().fit([], task=task, backend=_NoCalls())  # type: ignore[arg-type]
    with pytest.raises(BenchError, match=r"majority: bad hyperparameter .*; valid: none"):
        get_method("majority").from_budget("light", k=3)


def test_a_run_shows_a_zero_cost_row_without_the_one_answer_warning(tmp_path: Path) -> None:
    config = RunConfig(
        methods=["majority"],
        tasks=["zoo-sentiment"],
        backend=BackendSpec("zoo", "zoo-large"),
        limit=30,  # enough examples for the one-answer check
        budget="light",
        results_dir=tmp_path / "results",
        cache_dir=tmp_path / "cache",
        run_id="m",
    )
    with Runner(config) as runner:
        plan = runner.plan()
        (cell,) = plan.cells
        assert cell.missing == [] and cell.requires == []
        assert cell.projection is not None and cell.projection.tokens == 0
        (record,) = runner.run(plan)
    assert record.status == "ok" and record.n_eval == 30
    assert total_tokens(record.usage, "idealized") == 0 and record.usage["compute"] == {}
    store = RunStore(tmp_path / "results" / "m")
    rows = store.predictions(record.cell_id)
    train = get_task("zoo-sentiment").examples("train")
    answer = Counter(ex.target for ex in train).most_common(1)[0][0]  # no tie on this split
    assert {r["answer"] for r in rows} == {answer}
    assert record.accuracy == sum(r["target"] == answer for r in rows) / 30
    # One answer throughout, which the check flags for any other method, is not flagged here.
    assert answer_warnings(rows) and record.warnings == []
    (row,) = leaderboard_rows(collect_cells([store]))["zoo-sentiment"]
    assert row.needs == "nothing" and row.tune_tokens == 0 and row.eval_tokens_per_1k == 0
    assert row.warnings == []
