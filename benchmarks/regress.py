"""`bench regress`: a regression gate comparing a run against a baseline run, cell by cell.

Cells are grouped by method × task; each side is aggregated over its finished seeds. A
method × task regresses (exit 1) when, against the baseline:

- **accuracy** falls by more than the noise band plus ``--accuracy-tolerance`` (absolute,
  accuracy units; default 0.02). The band is `NOISE_SIGMAS` (2) standard errors of the
  difference of the two means, from the seeds' spread: 2·sqrt(s_b²/n_b + s_r²/n_r) with s the
  sample std over seeds (about a 95% band). With one seed on a side its spread is unknown and
  counts as 0, so only the tolerance applies;
- **tokens** rise by more than ``--token-tolerance`` (relative; default 0.10 = 10%). Tokens
  are a cell's tune + eval tokens, all roles, from a cold start (``idealized``: cache hits
  counted) by default, because billed tokens depend on how warm the cache was: a warm re-run
  bills nothing and would hide a rise, a cold run against a warm baseline would look like one.
  ``--token-count billed`` compares billed tokens instead;
- **compute** seconds rise by more than ``--compute-tolerance`` (relative; default 1.0, i.e.
  compute may double) plus ``--compute-slack`` seconds (default 1.0). White-box seconds on a
  shared CPU vary run to run by tens of percent, and a method that computes for a fraction of
  a second varies by multiples, hence the generous default and the absolute slack. GPU and
  CPU seconds are not compared with each other (noted, not failed);
- or it is **missing** from the run, or a seed of it there is not ``ok`` (failed, stopped by a
  spending cap, refused), while the baseline had it finished.

A method × task the baseline has no finished seed of (refused, failed) is not compared; one
only in the run is listed as new. Neither fails. Bad input (a missing folder, one that is not
a run, a run with no cell records) is a one-line error and exit 2.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.metering import total_tokens
from benchmarks.report import compute_seconds
from benchmarks.results import CellRecord, RunStore
from benchmarks.tasks.base import FINGERPRINT_SCHEME
from methods.registry import BenchError

#: standard errors in the accuracy noise band (about 95% for a difference of means).
NOISE_SIGMAS = 2.0

TokenCount = Literal["idealized", "billed"]


@dataclass(frozen=True)
class Tolerances:
    """How far a run may move from its baseline before the gate fails.

    Attributes:
        accuracy: absolute accuracy drop allowed beyond the noise band.
        tokens: relative rise in tokens allowed (0.1 = 10%).
        compute: relative rise in compute seconds allowed (1.0 = may double).
        compute_slack_s: absolute compute seconds allowed on top of the relative rise.
        token_count: compare ``idealized`` (cache hits counted) or ``billed`` tokens.
        sigmas: standard errors in the accuracy noise band.
    """

    accuracy: float = 0.02
    tokens: float = 0.10
    compute: float = 1.0
    compute_slack_s: float = 1.0
    token_count: TokenCount = "idealized"
    sigmas: float = NOISE_SIGMAS

    def __post_init__(self) -> None:
        for name in ("accuracy", "tokens", "compute", "compute_slack_s", "sigmas"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise BenchError(f"tolerance {name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class Side:
    """One method × task of one run, over its seeds."""

    accuracies: tuple[float, ...]
    """Accuracy of each finished seed."""
    tokens: float
    """Mean tokens per finished seed."""
    compute_s: float
    """Mean compute seconds per finished seed."""
    device: str
    n_eval: int
    not_ok: tuple[str, ...] = ()
    """``seed N: status`` of each seed that did not finish."""
    task_hashes: frozenset[str] = frozenset()
    """The task fingerprints of its records that cover the task's code, version and data
    location (`FINGERPRINT_SCHEME`); older records' are left out (they cannot tell)."""

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)


@dataclass
class Comparison:
    """The verdict on one method × task."""

    method: str
    task: str
    baseline: Side | None
    run: Side | None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    band: float = 0.0
    """The accuracy noise band (before the tolerance)."""

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def noise_band(
    baseline: Sequence[float], run: Sequence[float], sigmas: float = NOISE_SIGMAS
) -> float:
    """``sigmas`` standard errors of mean(run) - mean(baseline), from the seeds' sample std
    (a side with one seed contributes 0: its spread is unknown)."""

    def var_of_mean(values: Sequence[float]) -> float:
        return statistics.variance(values) / len(values) if len(values) > 1 else 0.0

    return sigmas * math.sqrt(var_of_mean(baseline) + var_of_mean(run))


def accuracy_fell(
    baseline: Sequence[float], run: Sequence[float], tolerance: float, sigmas: float = NOISE_SIGMAS
) -> bool:
    """Whether the run's mean accuracy is below the baseline's by more than band + tolerance."""
    drop = statistics.fmean(baseline) - statistics.fmean(run)
    return drop > noise_band(baseline, run, sigmas) + tolerance + 1e-12


def rose(baseline: float, run: float, relative: float, slack: float = 0.0) -> bool:
    """Whether ``run`` exceeds ``baseline`` × (1 + relative) + slack (from 0, any rise past
    the slack counts)."""
    return run > baseline * (1 + relative) + slack + 1e-12


def _sides(records: Sequence[CellRecord], token_count: TokenCount) -> dict[tuple[str, str], Side]:
    groups: dict[tuple[str, str], list[CellRecord]] = defaultdict(list)
    for r in records:
        groups[(r.method, r.task)].append(r)
    out = {}
    for key, recs in sorted(groups.items()):
        recs.sort(key=lambda r: r.seed)
        ok = [r for r in recs if r.status == "ok" and r.accuracy is not None]
        finished = {id(r) for r in ok}
        not_ok = tuple(f"seed {r.seed}: {r.status}" for r in recs if id(r) not in finished)
        devices = sorted({compute_seconds(r)[1] for r in ok})
        out[key] = Side(
            accuracies=tuple(float(r.accuracy or 0.0) for r in ok),
            tokens=statistics.fmean(total_tokens(r.usage, token_count) for r in ok) if ok else 0.0,
            compute_s=statistics.fmean(compute_seconds(r)[0] for r in ok) if ok else 0.0,
            device="+".join(devices),
            n_eval=max((r.n_eval for r in ok), default=0),
            not_ok=not_ok,
            task_hashes=frozenset(
                r.task_hash
                for r in recs
                if r.task_hash and r.task_hash.startswith(FINGERPRINT_SCHEME)
            ),
        )
    return out


def compare(
    baseline: Sequence[CellRecord], run: Sequence[CellRecord], tolerances: Tolerances | None = None
) -> list[Comparison]:
    """Compare ``run`` against ``baseline`` per method × task (sorted by method, task)."""
    tol = tolerances or Tolerances()
    base_sides, run_sides = _sides(baseline, tol.token_count), _sides(run, tol.token_count)
    out = []
    for key in sorted({*base_sides, *run_sides}):
        b, r = base_sides.get(key), run_sides.get(key)
        c = Comparison(key[0], key[1], b, r)
        out.append(c)
        if b is None:
            c.notes.append("new in the run (not in the baseline)")
            continue
        if not b.accuracies:
            c.notes.append(
                f"not compared: the baseline has no finished seed ({', '.join(b.not_ok)})"
            )
            continue
        if r is None:
            c.failures.append("missing from the run")
            continue
        if b.task_hashes and r.task_hashes and b.task_hashes != r.task_hashes:
            c.failures.append(
                f"not the same task: fingerprint {', '.join(sorted(b.task_hashes))} in the "
                f"baseline, {', '.join(sorted(r.task_hashes))} in the run (its code, version, "
                "data or options changed; rebuild the baseline if that was intended)"
            )
            continue
        if r.not_ok:
            c.failures.append(f"not ok in the run ({', '.join(r.not_ok)})")
        if not r.accuracies:
            continue
        c.band = noise_band(b.accuracies, r.accuracies, tol.sigmas)
        if accuracy_fell(b.accuracies, r.accuracies, tol.accuracy, tol.sigmas):
            c.failures.append(
                f"accuracy fell {b.mean - r.mean:.3f} > band {c.band:.3f} + tolerance "
                f"{tol.accuracy:.3f}"
            )
        if rose(b.tokens, r.tokens, tol.tokens):
            c.failures.append(f"{tol.token_count} tokens rose {_pct(b.tokens, r.tokens)}")
        if b.device != r.device:
            c.notes.append(f"compute not compared: {b.device} seconds vs {r.device} seconds")
        elif rose(b.compute_s, r.compute_s, tol.compute, tol.compute_slack_s):
            c.failures.append(f"compute rose {_pct(b.compute_s, r.compute_s)}")
        if b.n_eval != r.n_eval:
            c.notes.append(f"examples differ: {b.n_eval} vs {r.n_eval}")
    return out


def _pct(before: float, after: float) -> str:
    if before == 0:
        return "from 0" if after else "+0%"
    return f"{100 * (after - before) / before:+.1f}%"


def load_cells(path: Path, flag: str) -> list[CellRecord]:
    """The cell records of run folder ``path``; a one-line `BenchError` naming ``flag`` if it
    is not a run with cells."""
    if not path.exists():
        raise BenchError(f"{flag} {path}: no such directory")
    if not path.is_dir():
        raise BenchError(f"{flag} {path}: not a directory (give a run folder, results/<run-id>)")
    store = RunStore(path)
    if not store.exists():
        raise BenchError(f"{flag} {path}: not a run directory (no run.json; give results/<run-id>)")
    try:
        cells = store.cells()
    except ValueError as exc:  # pydantic's ValidationError, a broken record
        first = str(exc).strip().splitlines()[0]
        raise BenchError(f"{flag} {path}: unreadable cell record ({first})") from None
    if not cells:
        raise BenchError(f"{flag} {path}: no cell records under cells/ (has the run started?)")
    return cells


def _side_text(side: Side | None, fmt: str, attr: str) -> str:
    if side is None or not side.accuracies:
        return "—"
    return format(getattr(side, attr), fmt)


def _move(b: Side | None, r: Side | None, attr: str, fmt: str) -> str:
    """``before → after (change)``."""
    if b is None or r is None or not b.accuracies or not r.accuracies:
        return _side_text(b, fmt, attr) + " → " + _side_text(r, fmt, attr)
    before, after = getattr(b, attr), getattr(r, attr)
    change = f"{after - before:+.3f}" if attr == "mean" else _pct(before, after)
    return f"{format(before, fmt)} → {format(after, fmt)} ({change})"


def table(comparisons: Sequence[Comparison], tol: Tolerances) -> Table:
    """The comparisons as a rich table: what moved, by how much, and the verdict."""
    t = Table(title="bench regress: run against baseline", show_lines=False)
    for name in ("method", "task", "seeds", "accuracy", "allowed drop", "tokens", "compute s"):
        t.add_column(name, overflow="fold")
    t.add_column("verdict", overflow="fold")
    for c in comparisons:
        seeds = f"{len(c.baseline.accuracies) if c.baseline else 0}/" + (
            f"{len(c.run.accuracies)}" if c.run else "0"
        )
        if c.failed:
            verdict = "[bold red]REGRESSED[/]: " + escape("; ".join(c.failures))
        else:
            verdict = "[green]ok[/]"
        if c.notes:
            verdict += escape(" (" + "; ".join(c.notes) + ")")
        t.add_row(
            escape(c.method),
            escape(c.task),
            seeds,
            _move(c.baseline, c.run, "mean", ".3f"),
            f"{c.band + tol.accuracy:.3f}" if c.run and c.run.accuracies else "",
            _move(c.baseline, c.run, "tokens", ",.0f"),
            _move(c.baseline, c.run, "compute_s", ".2f"),
            verdict,
        )
    return t


def regress(
    baseline: Path, run: Path, tolerances: Tolerances, console: Console | None = None
) -> int:
    """Compare two run folders, print the table and a summary; 1 if anything regressed."""
    base_cells = load_cells(baseline, "--baseline")
    run_cells = load_cells(run, "--run")
    comparisons = compare(base_cells, run_cells, tolerances)
    # Not a terminal (CI logs): wide enough that the table's columns do not fold.
    console = console or Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(table(comparisons, tolerances))
    failed = [c for c in comparisons if c.failed]
    compared = [c for c in comparisons if c.baseline is not None and c.baseline.accuracies]
    if failed:
        names = escape(", ".join(f"{c.method} on {c.task}" for c in failed))
        console.print(
            f"[bold red]regressed[/]: {len(failed)} of {len(compared)} method × task pairs "
            f"({names})"
        )
        return 1
    console.print(f"[green]no regression[/]: {len(compared)} method × task pairs compared")
    return 0
