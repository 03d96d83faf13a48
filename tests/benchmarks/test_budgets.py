"""Spending caps: ``--max-usd/--max-tokens/--max-calls`` (per run) and ``--max-cell-*`` (per
cell) refuse a grid whose projection is over them before anything is spent, and stop a cell
whose real spend reaches them: no call that could pass a cap is sent, finished predictions
are kept, and the cell is marked ``budget_exhausted`` in its record and in the report."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.cli import main
from benchmarks.client import MeteredBlackBox
from benchmarks.errors import BudgetExhausted
from benchmarks.faults import STATS_PATH, FaultSpec
from benchmarks.metering import Limits, PriceTable, Spend, SpendingGuard, UsageMeter
from benchmarks.results import RunStore
from benchmarks.server import ServerHandle, start_server
from benchmarks.tiny import torch_threads
from methods import BlackBoxTuner, register_method
from methods.base import (
    AdaptedPolicy,
    BlackBox,
    CallPlan,
    Example,
    PromptPolicy,
    TaskLike,
    TuneContext,
)
from methods.registry import BenchError
from tests.benchmarks.conftest import tiny_run_argv


@dataclass(frozen=True)
class _OverspenderConfig:
    #: tuning calls actually made (the plan claims one).
    calls: int = 8
    #: catch the budget error and carry on, as a careless method might.
    swallow: bool = False


@register_method("test-overspender")
class Overspender(BlackBoxTuner):
    """Spends more than it plans, in tuning and in evaluation (test fixture for the guard)."""

    Config = _OverspenderConfig
    config: _OverspenderConfig

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        return CallPlan(calls=1, eval_calls_per_example=0.1)  # both under-estimates

    def fit(
        self,
        train: Sequence[Example],
        *,
        task: TaskLike,
        backend: BlackBox,
        dev: Sequence[Example] | None = None,
        proposer: BlackBox | None = None,
        context: TuneContext | None = None,
    ) -> AdaptedPolicy:
        seed = context.seed if context else 0
        for i in range(self.config.calls):
            try:
                backend.generate([f"Q: seed {seed} probe {i}\nA:"], max_tokens=4)
            except BudgetExhausted:
                if not self.config.swallow:
                    raise
        return PromptPolicy(instruction=None)


# -- the guard on its own -----------------------------------------------------------------------


def _prices(tmp_path: Path, model: str = "m") -> PriceTable:
    path = tmp_path / "prices.yaml"
    path.write_text(
        f"version: t1\nmodels:\n  {model}: {{input_per_mtok: 1000, output_per_mtok: 2000}}\n"
    )
    return PriceTable(path)


def test_guard_admits_the_prefix_that_fits_and_settles_to_what_was_billed(tmp_path: Path) -> None:
    guard = SpendingGuard(_prices(tmp_path), cell=Limits(tokens=100), run=Limits(calls=5))
    guard.start_cell()
    admitted, refusal = guard.reserve("m", [(20, 10)] * 4)  # 30 tokens each at most
    assert len(admitted) == 3 and isinstance(refusal, BudgetExhausted)
    assert refusal.flag == "--max-cell-tokens" and refusal.scope == "cell"
    assert "--max-cell-tokens 100 reached" in str(refusal)
    assert guard.tripped is refusal
    for ticket in admitted[:2]:
        guard.settle(ticket, answered=True, prompt_tokens=20, completion_tokens=2)
    guard.settle(admitted[2], answered=False)  # a failed call is not billed
    assert (guard.spent["cell"].calls, guard.spent["cell"].tokens) == (2, 44)
    assert guard.spent["cell"].usd == pytest.approx(2 * (20 * 1000 + 2 * 2000) / 1e6)
    # A new cell starts from zero; the run's count goes on.
    guard.start_cell()
    assert guard.tripped is None
    admitted, refusal = guard.reserve("m", [(1, 1)] * 9)
    assert len(admitted) == 3 and refusal is not None and refusal.flag == "--max-calls"


def test_guard_counts_what_a_resumed_run_already_spent(tmp_path: Path) -> None:
    guard = SpendingGuard(
        _prices(tmp_path), run=Limits(usd=0.05), run_spent=Spend(3, 40, usd=0.049)
    )
    admitted, refusal = guard.reserve("m", [(1, 0)])  # $0.001 fits, exactly
    assert len(admitted) == 1 and refusal is None
    admitted, refusal = guard.reserve("m", [(1, 0)])
    assert not admitted and refusal is not None and refusal.flag == "--max-usd"


def test_guard_cannot_cap_dollars_of_an_unpriced_model(tmp_path: Path) -> None:
    guard = SpendingGuard(_prices(tmp_path), run=Limits(usd=1.0))
    with pytest.raises(BenchError, match="'other' has no price"):
        guard.reserve("other", [(1, 1)])


@pytest.mark.parametrize(
    "limits", [{"usd": -1}, {"tokens": float("nan")}, {"calls": "3"}, {"usd": float("inf")}]
)
def test_limits_are_validated(limits: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="spending cap"):
        Limits(**limits)


# -- through `bench run` --------------------------------------------------------------------------


@pytest.fixture
def server(tiny_server: ServerHandle) -> str:
    return tiny_server.base_url


def _run(tmp: Path, url: str, *extra: str, method: str = "test-overspender") -> int:
    return main(
        tiny_run_argv(
            url,
            *("--results-dir", str(tmp / "results"), "--cache-dir", str(tmp / "cache")),
            *("--run-id", "b", *extra),
            methods=method,
            seeds=None,  # the CLI's defaults, unless a test passes its own
            limit=None,
        )
    )


def _tree(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")) if root.exists() else []:
        h.update(str(path.relative_to(root)).encode())
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


def _billed_calls(usage: dict[str, Any]) -> int:
    return sum(r["calls"] for phase in usage["billed"].values() for r in phase.values())


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        (["--max-calls", "5"], "over --max-calls 5"),
        (["--max-tokens", "100"], "over --max-tokens 100"),
        (["--max-cell-calls", "11"], "over --max-cell-calls 11"),
        (["--max-cell-tokens", "50"], "over --max-cell-tokens 50"),
        (["--max-usd", "0.0001", "--prices", "PRICES"], "over --max-usd 0.0001"),
        (["--max-usd", "1"], "--max-usd: model 'tiny' has no price"),
        (["--max-cell-usd", "1"], "--max-cell-usd: model 'tiny' has no price"),
    ],
)
def test_over_the_projection_or_unpriced_is_refused_before_spending(
    tmp_path: Path,
    server: str,
    capsys: pytest.CaptureFixture[str],
    caps: list[str],
    expected: str,
) -> None:
    prices = _prices(tmp_path, "tiny")
    caps = [str(tmp_path / "prices.yaml") if c == "PRICES" else c for c in caps]
    assert prices.has("tiny")
    before = _tree(tmp_path / "results")
    code = _run(tmp_path, server, "--limit", "12", "--seeds", "0,1", *caps, method="zero-shot")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert expected in err[-1] and err[-1].startswith("bench: error:")
    if "no price" not in expected:  # the refusal shows the projection
        assert "projected to spend up to" in err[-1] and "tokens" in err[-1]
    assert _tree(tmp_path / "results") == before
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.json"))


def test_dry_run_applies_the_same_check(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = ["--limit", "4", "--dry-run"]
    assert _run(tmp_path, server, *opts, "--max-calls", "4", method="zero-shot") == 0
    assert _run(tmp_path, server, *opts, "--max-calls", "3", method="zero-shot") == 2
    assert "over --max-calls 3" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_tuning_stopped_by_a_cell_cap_then_resumed_with_a_larger_one(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _run(
        tmp_path, server, "--limit", "4", "--set", "test-overspender.calls=30",
        "--max-cell-calls", "10",
    )  # fmt: skip
    assert code == 1  # an incomplete grid is not a success
    (cell,) = RunStore(tmp_path / "results" / "b").cells()
    assert cell.status == "budget_exhausted" and cell.n_eval == 0 and cell.accuracy is None
    assert cell.reason and "--max-cell-calls 10 reached" in cell.reason
    assert "during tuning" in cell.reason
    assert _billed_calls(cell.usage) == 10  # exactly the cap, never more
    assert "BUDGET EXHAUSTED" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "results" / "b"), "--out", str(tmp_path / "rep")]) == 0
    board = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "| test-overspender |" in board and "budget exhausted (1 of 1 seeds)" in board
    # Resumed with room to finish: the 10 calls already paid for come from the cache.
    code = _run(
        tmp_path, server, "--limit", "4", "--set", "test-overspender.calls=30",
        "--max-cell-calls", "100", "--resume",
    )  # fmt: skip
    assert code == 0
    (cell,) = RunStore(tmp_path / "results" / "b").cells()
    assert cell.status == "ok" and cell.n_eval == 4
    assert cell.usage["cache_hits"] == 10 and _billed_calls(cell.usage) == 20 + 4


def test_evaluation_stopped_by_a_cap_keeps_the_finished_predictions(
    tmp_path: Path, server: str
) -> None:
    opts = ["--limit", "40", "--set", "test-overspender.calls=0"]
    assert _run(tmp_path, server, *opts, "--run-id", "full") == 0
    full = RunStore(tmp_path / "results" / "full")
    (reference,) = full.cells()
    # A fresh cache: the cap must bite on calls really sent. Batches are 32 examples: the
    # second batch has room for 4 more calls; those are sent, and kept.
    code = main(
        tiny_run_argv(
            server, *opts, "--max-cell-calls", "36",
            "--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "c2"),
            "--run-id", "capped",
            methods="test-overspender", seeds=None, limit=None,
        )
    )  # fmt: skip
    assert code == 1
    capped = RunStore(tmp_path / "results" / "capped")
    (cell,) = capped.cells()
    assert cell.status == "budget_exhausted" and cell.n_eval == 36
    assert cell.reason and "36 of 40 examples done" in cell.reason
    assert _billed_calls(cell.usage) == 36
    assert capped.predictions(cell.cell_id) == full.predictions(reference.cell_id)[:36]


def test_a_run_cap_spans_cells(tmp_path: Path, server: str) -> None:
    code = _run(tmp_path, server, "--limit", "2", "--seeds", "0,1", "--max-calls", "12")
    assert code == 1
    cells = {c.seed: c for c in RunStore(tmp_path / "results" / "b").cells()}
    assert cells[0].status == "ok" and _billed_calls(cells[0].usage) == 8 + 2
    assert cells[1].status == "budget_exhausted" and _billed_calls(cells[1].usage) == 2
    assert cells[1].reason and "--max-calls 12 reached" in cells[1].reason


def test_a_dollar_cap_is_never_passed(tmp_path: Path, server: str) -> None:
    _prices(tmp_path, "tiny")  # $1000 / $2000 per million tokens: about a cent a call
    code = _run(
        tmp_path, server, "--limit", "2", "--set", "test-overspender.calls=40",
        "--prices", str(tmp_path / "prices.yaml"), "--max-cell-usd", "0.2",
    )  # fmt: skip
    assert code == 1
    (cell,) = RunStore(tmp_path / "results" / "b").cells()
    assert cell.status == "budget_exhausted" and "--max-cell-usd 0.2" in (cell.reason or "")
    spent = Spend.of_summary(cell.usage)
    assert 0 < spent.usd <= 0.2 and spent.calls < 40


def test_a_method_that_swallows_the_error_is_still_stopped(tmp_path: Path, server: str) -> None:
    code = _run(
        tmp_path, server, "--limit", "2", "--set", "test-overspender.calls=20",
        "--set", "test-overspender.swallow=true", "--max-cell-calls", "5",
    )  # fmt: skip
    assert code == 1
    (cell,) = RunStore(tmp_path / "results" / "b").cells()
    assert cell.status == "budget_exhausted" and _billed_calls(cell.usage) == 5


# -- retries count against the call caps ---------------------------------------------------------


@pytest.fixture(scope="module")
def failing_server(tiny_model: Path) -> Iterator[ServerHandle]:
    spec = FaultSpec(0.3, seed=5, kinds=("500",))
    with torch_threads(1), start_server(tiny_model, model_name="tiny", faults=spec) as handle:
        yield handle


def _requests_served(server: ServerHandle) -> int:
    stats = httpx.get(server.base_url + STATS_PATH.removeprefix("/v1"), timeout=10).json()
    return int(stats["requests"])


def test_a_call_cap_caps_requests_sent_retries_included(failing_server: ServerHandle) -> None:
    """--max-calls 20 against a server failing 30% of requests: at most 20 requests reach
    it (each retry is one more), then the cap stops the work."""
    backend = OpenAIBackend(
        "tiny", base_url=failing_server.base_url, api="completions", max_retries=6, backoff_s=0.001
    )
    guard = SpendingGuard(PriceTable(), run=Limits(calls=20))
    guard.start_cell()
    box = MeteredBlackBox(backend, meter=UsageMeter(), guard=guard)
    before = _requests_served(failing_server)
    stopped = False
    try:
        for i in range(40):  # bounded: 40 calls would need 40 requests at least
            try:
                box.generate([f"Q: {i} + 1\nA:"], max_tokens=2)
            except BudgetExhausted as exc:
                assert "--max-calls 20" in str(exc)
                stopped = True
                break
    finally:
        backend.close()
    sent = _requests_served(failing_server) - before
    assert stopped and sent <= 20, sent
    assert box.meter.summary()["retries"] > 0  # the faults did cause retries


def test_help_says_a_call_cap_counts_retries(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-calls N model calls", "--max-cell-calls N model calls"):
        after = text.split(flag, 1)[1][:120]
        assert "retry" in after, after


def test_a_cap_message_names_what_was_billed_and_what_is_in_flight(tmp_path: Path) -> None:
    """Reservations of calls still in flight are not spending: the message says both."""
    guard = SpendingGuard(_prices(tmp_path), cell=Limits(tokens=100))
    guard.start_cell()
    first, _ = guard.reserve("m", [(20, 10)] * 2)  # 30 tokens each at most
    guard.settle(first[0], answered=True, prompt_tokens=20, completion_tokens=2)  # billed 22
    more, refusal = guard.reserve("m", [(20, 10)] * 2)  # 22 + 30 + 30 fits; + 30 does not
    assert len(more) == 1 and refusal is not None
    message = str(refusal)
    assert "billed 22 tokens" in message, message
    assert "with 60 tokens reserved for calls in flight" in message, message
    assert "the next call may need 30 tokens" in message
