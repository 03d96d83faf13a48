"""The dry-run projection is an upper bound: a real cell never bills more tokens or makes
more calls than its cell of the plan said "at most" (the pre-flight cap check relies on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.metering import total_tokens
from benchmarks.runner import BackendSpec, RunConfig, Runner

#: methods measured here (each on the zoo, 3 test examples, light budget).
METHODS = ["zero-shot", "zero-shot-likelihood", "few-shot"]


def _calls(usage: dict) -> int:
    return sum(r["calls"] for p in usage["idealized"].values() for r in p.values())


@pytest.mark.parametrize("method", METHODS)
def test_projection_is_an_upper_bound(method: str, tmp_path: Path) -> None:
    config = RunConfig(
        methods=[method],
        tasks=["zoo-sentiment"],
        backend=BackendSpec("zoo", "zoo-large"),
        limit=3,
        budget="light",
        results_dir=tmp_path / "results",
        cache_dir=tmp_path / "cache",
        run_id="p",
    )
    with Runner(config) as runner:
        plan = runner.plan()
        (cell,) = plan.cells
        projection = cell.projection
        assert projection is not None
        (record,) = runner.run(plan)
    assert record.status == "ok", record.reason
    tokens = total_tokens(record.usage, "idealized")
    calls = _calls(record.usage)
    assert tokens <= projection.tokens, (tokens, projection)
    assert calls <= projection.tune_calls + projection.eval_calls, (calls, projection)
