"""What `bench run` prints: readable in a log as on a terminal."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.console import RunConsole
from benchmarks.results import CellRecord, RunStore
from benchmarks.tiny import tiny_model_dir, torch_threads
from methods import BlackBoxTuner, register_method
from methods.base import CallPlan, PromptPolicy


def _record(method: str, task: str) -> CellRecord:
    return CellRecord(
        cell_id=f"{method}__{task}__zoo__zoo-large__s0",
        method=method,
        task=task,
        backend="zoo",
        model="zoo-large",
        seed=0,
        budget="light",
        status="ok",
        accuracy=0.5,
    )


def test_results_table_never_truncates_names_in_a_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written to a file (no terminal, where rich assumes 80 columns), both EvoPrompt rows
    and a long task name read in full, not "evoprompt..."."""
    monkeypatch.delenv("COLUMNS", raising=False)
    console = RunConsole()
    long_task = "my-plugin-task-with-a-rather-long-name-indeed"
    records = [
        _record("evoprompt-ga", long_task),
        _record("evoprompt-de", long_task),
        _record("contrastive-decoding", "zoo-sentiment"),
    ]
    store = RunStore(tmp_path / "results" / "run-with-a-long-identifier-for-the-log")
    console.print_results(records, store)
    text = capsys.readouterr().err
    for name in ("evoprompt-ga", "evoprompt-de", "contrastive-decoding", long_task):
        assert name in text, text
    assert "…" not in text


def test_results_table_never_truncates_names_on_a_narrow_terminal(tmp_path: Path) -> None:
    """On a terminal of 60 columns the other columns give way, the names do not."""
    buffer = io.StringIO()
    console = RunConsole(Console(file=buffer, force_terminal=True, width=60, highlight=False))
    records = [_record("evoprompt-ga", "zoo-sentiment"), _record("evoprompt-de", "zoo-hops")]
    console.print_results(records, RunStore(tmp_path / "r"))
    text = buffer.getvalue()
    for name in ("evoprompt-ga", "evoprompt-de", "zoo-sentiment"):
        assert name in text, text


@dataclass(frozen=True)
class _TunesConfig:
    #: tuning calls to make (one per train example, the first ones).
    calls: int = 3


@register_method("test-tunes-a-little")
class _TunesALittle(BlackBoxTuner):
    """Makes a few tuning calls, then answers zero-shot (test fixture for progress)."""

    Config = _TunesConfig
    config: _TunesConfig

    def plan(self, *, task, train, dev):  # type: ignore[no-untyped-def]
        return CallPlan(calls=self.config.calls, samples=self.config.calls)

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        for example in train[: self.config.calls]:
            backend.generate([example.input], max_tokens=4)
        return PromptPolicy(instruction=None)


def test_progress_while_tuning_is_one_line_per_phase_in_a_log(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redirected output shows each cell's tuning and evaluation as lines with the calls
    and tokens so far, no carriage-return bar, and no more often than the bound allows."""
    from benchmarks import runner
    from benchmarks.cli import main

    monkeypatch.setattr(
        runner, "PROGRESS_EVERY_S", 3600.0, raising=False
    )  # only the end-of-phase lines
    argv = ["run", "--methods", "test-tunes-a-little", "--tasks", "zoo-sentiment"]
    argv += ["--backend", "hf", "--model", str(tiny_model_dir(tmp_path / "tiny"))]
    argv += ["--limit", "3", "--results-dir", str(tmp_path / "r"), "--run-id", "p"]
    argv += ["--cache-dir", str(tmp_path / "c")]
    with torch_threads(1):
        assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    tune = [line for line in err.splitlines() if ": tune " in line]
    evaluation = [line for line in err.splitlines() if ": eval " in line]
    assert len(tune) == 1 and len(evaluation) == 1, err
    assert "3 calls" in tune[0] and "billed tokens" in tune[0], tune
    assert "test-tunes-a-little" in tune[0]
    assert "3 calls" in evaluation[0], evaluation  # one greedy call per test example
