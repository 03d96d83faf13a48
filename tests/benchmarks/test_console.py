"""What `bench run` prints: readable in a log as on a terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from benchmarks.console import RunConsole
from benchmarks.results import CellRecord, RunStore


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
