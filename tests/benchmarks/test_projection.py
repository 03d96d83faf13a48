"""The dry-run projection is an upper bound: a real cell never bills more tokens or makes
more calls than its cell of the plan said "at most" (the pre-flight cap check relies on it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.metering import total_tokens
from benchmarks.runner import BackendSpec, RunConfig, Runner
from methods.base import methods as registered

#: every built-in method, each on the zoo with 3 test examples at the light budget (about
#: 5 minutes in all on two CPU cores; bbox and proxy-tuning take most of it).
METHODS = sorted(name for name in registered.names() if not name.startswith("test-"))


def _calls(usage: dict) -> int:
    return sum(r["calls"] for p in usage["idealized"].values() for r in p.values())


#: ``--set`` overrides that change what a method spends.
OVERRIDES = [
    ("few-shot", {"k": 16}),
    ("opro", {"num_search_steps": 2, "num_generated_per_step": 4}),
]


@pytest.mark.parametrize(
    ("method", "overrides"),
    [(m, {}) for m in METHODS] + OVERRIDES,
    ids=[*METHODS, *(f"{m}-set" for m, _ in OVERRIDES)],
)
def test_projection_is_an_upper_bound(
    method: str, overrides: dict[str, Any], tmp_path: Path
) -> None:
    config = RunConfig(
        methods=[method],
        method_options={method: overrides} if overrides else {},
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
