"""`bench report`: leaderboards, plots and a static HTML page from result directories, never
re-running anything.

Under ``--out`` (default ``reports/``) it writes ``leaderboard.md``; ``index.html`` with the
same tables (sortable by clicking a header), the plots, and for every cell a page
``cells/<cell>.html`` listing the predictions its run stored, so the folder is
self-contained (nothing is fetched when it is viewed); and ``plots/*.png|svg``.

Per task, one row per method, aggregated over seeds: the access it needs, accuracy mean ± std
over seeds ("± n/a" with one seed: one value has no spread), gain over the task's
``zero-shot`` row with a 95% confidence interval, tuning tokens and dollars, inference tokens
and dollars per 1,000 examples, white-box compute seconds (GPU or CPU, labelled), the share of
stored test predictions with no parsed answer (``unparsed``) and the most common parsed
answers with their shares (``top answers``), pooled over seeds; "n/a (needs X)" for methods
the backend could not serve. Cells stopped by a spending cap (``budget_exhausted``) or failed
are never averaged in: a method with none finished shows "budget exhausted" or "failed", and
one with some finished seeds says how many others stopped. A second gain column is over the
task's ``manual-best`` row (the best hand-written instruction on dev: what an instruction
search must beat), with the same bootstrap; "n/a (reason)" where the task has no finished
manual-best row.

Flags: ⚠ beside an accuracy marks a row with a cell whose record carries a warning or whose
stored predictions raise one now (`benchmarks.results.answer_warnings`: 95% or more of the
test predictions unparseable, or one answer where the targets are not), listed under the
table. A gain over a ``zero-shot`` row that is itself flagged is marked "⚠ over a flagged
zero-shot": it measures the reference's failure, not a significant gain of the method.
Disclosures: one sign per kind beside an accuracy marks what its cells disclosed
(`DISCLOSURE_MARKS`; "no change" is also written out), listed under the table with the cells
and the detail.

Gain interval: a paired two-level percentile bootstrap. Each replicate draws the test
examples with replacement (one draw, shared by the method and zero-shot, over the examples
both scored: the pairing removes the examples' own difficulty from the spread) and then,
separately for each side, its seeds with replacement; the gain of a replicate is the
difference of the two means. 2,000 replicates with a generator seeded by the task name, so
the interval is reproducible. With one seed only the examples vary; with few examples the
interval is rough. A cell without stored predictions has no interval (n/a, with the reason).
The gain over manual-best is the same computation with manual-best in zero-shot's place (the
same generator seed, so the same draws of examples).

Overall, the methods are ranked over one common set of tasks, as a mean over other or fewer
tasks is not comparable (`common_tasks`). A method "covers" a task where it has a finished
row. The candidate sets are the tasks ``zero-shot`` covers (all the report's tasks when it
covers none, and then there are no gains), intersected with what each method covers, and the
intersections of those sets; a set ranks the methods that cover all of it. The common set is
the candidate that ranks the most method × task results (tasks × methods ranked); ties go to
the set ranking more methods, then to the alphabetically first list of tasks. Every ranked
method is thus over exactly the same tasks, ``zero-shot`` among them, and never over fewer
than the others. Ranked rows, best accuracy first, count only the common tasks: accuracy, gain
and unparsed share are means over them of the per-task values (± is the std over seeds of the
per-seed mean over tasks, for the seeds every counted task has, n/a for one; the gain interval
averages the tasks' bootstrap replicates; both gains alike, the manual-best one saying over
how many tasks when manual-best finished fewer than the common ones); tuning tokens, dollars
and compute seconds are summed over them (the cost of tuning for all of them); inference per
1,000 examples is their mean. The other methods are listed apart, by name, each over the tasks
it covers, with its coverage ("2 of 4 tasks: zoo-arith, zoo-hops").

Cost ratios, in the form the BBox-Adapter paper uses: each method's tuning and inference cost
divided by a reference method's on the same task (``--cost-reference``, default ``bbox``), in
dollars when both are priced and in tokens otherwise; "n/a" with the reason where the
reference spent nothing. A table whose reference row is missing or not finished is replaced
by one line saying why, and when the reference finished no cell in the report at all there
are no cost-ratio tables.

Reproduction, after the overall section (`benchmarks.reproduction`): each method's paper's
headline claim beside the gain measured here over the method that plays the paper's baseline,
with a verdict (reproduced / not reproduced / not measurable here) and one line why.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.metering import PHASES, PriceTable, total_tokens, total_usd
from benchmarks.results import CellRecord, RunStore, answer_warnings, write_atomic
from methods.base import DISCLOSURE_KINDS
from methods.registry import BenchError

REFERENCE = "zero-shot"
#: the second gain reference: the best hand-written instruction (methods/manual_best.py).
MANUAL_BEST = "manual-best"
DEFAULT_COST_REFERENCE = "bbox"

#: the leaderboard prices a method from a cold start (cache hits counted), so a warm cache
#: does not make a method look cheaper; billed totals stay in each cell record.
FLAVOUR = "idealized"

#: bootstrap replicates and the interval's level.
REPLICATES = 2000
LEVEL = 0.95

#: shown under the title of the Markdown and HTML leaderboards.
NOTES = (
    "Tokens and dollars are a method's cost from a cold start (cache hits counted; billed "
    "totals of each run are in its cell records); dollars are n/a for unpriced models. "
    "Compute is white-box seconds (GPU seconds on GPU, CPU seconds otherwise).",
    "Gain is over the `zero-shot` row of the same task, and over its `manual-best` row (the best "
    "hand-written instruction on dev); each 95% interval is a paired percentile bootstrap over "
    "test examples and seeds (2,000 replicates).",
    "Overall: methods are ranked by accuracy over one common set of tasks, which every "
    "ranked method (`zero-shot` included) finished; each figure is over those tasks only: "
    "accuracy, gain and unparsed are their means, tuning tokens, dollars and compute their "
    "sums, inference per 1,000 examples their mean. Methods that did not finish all of them "
    "are listed apart with their coverage. ± is n/a with one seed.",
    "`unparsed` is the share of test predictions with no parsed answer; `top answers`, the "
    "most common parsed answers with their shares. ⚠ marks a row with a cell that is "
    "unparseable or one answer throughout (listed under the table), and a gain over a "
    "`zero-shot` row so flagged.",
)


@dataclass(frozen=True)
class ReportCell:
    """One cell record, the name of its page, and the predictions its run stored."""

    record: CellRecord
    key: str
    """File-name-safe and unique in the report (``cell_id``, or ``<run>--<cell_id>`` when two
    runs hold the same cell)."""
    predictions: tuple[dict[str, Any], ...] = ()
    run_id: str = ""
    trace: Path | None = None
    """The tuner's trace (``traces/<cell_id>.json`` of its run), where the run kept one."""

    def scores(self) -> dict[str, float]:
        """Score by example id."""
        return {
            str(p["id"]): float(p["score"])
            for p in self.predictions
            if "id" in p and isinstance(p.get("score"), (int, float))
        }


@dataclass(frozen=True)
class Disclosed:
    """A cell's disclosure (`CellRecord.disclosures`) as the tables mark and list it."""

    cell: str
    """The cell's page name (`ReportCell.key`)."""
    task: str
    seed: int
    kind: str
    detail: str


@dataclass
class Gain:
    """A row's gain over a reference row: the difference of mean accuracies, with its
    bootstrap interval, or why there is none."""

    value: float | None = None
    ci: tuple[float, float] | None = None
    replicates: np.ndarray | None = None
    note: str = ""
    """Why there is no gain (``value`` None) or no interval (``ci`` None)."""
    tasks: str = ""
    """Overall rows: ``k/n`` when the gain averages fewer tasks than the row counts."""


@dataclass
class Row:
    """One method on one task (or overall), aggregated over seeds."""

    method: str
    needs: str
    status: str
    """``ok``, or what the table shows instead of numbers."""
    cells: list[ReportCell] = field(default_factory=list)
    seeds: int = 0
    stopped: str = ""
    tasks: str = ""
    """Overall rows: tasks counted / tasks in the report."""
    accuracy: float | None = None
    std: float | None = None
    gain: float | None = None
    gain_ci: tuple[float, float] | None = None
    ci_note: str = ""
    """Why there is no interval."""
    tune_tokens: float | None = None
    tune_usd: float | None = None
    eval_tokens_per_1k: float | None = None
    eval_usd_per_1k: float | None = None
    compute_s: float | None = None
    compute_device: str = ""
    seed_accuracy: dict[int, float] = field(default_factory=dict)
    gain_replicates: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)
    """The cells' warnings (`CellRecord.warnings`, and `answer_warnings` of the stored
    predictions), each with its seed: marked in the tables."""
    covered: list[str] = field(default_factory=list)
    """Overall rows: the tasks the row's figures are over."""
    flagged_reference: list[str] = field(default_factory=list)
    """The tasks (of those counted) where the ``zero-shot`` row the gain is over is flagged."""
    unparsed: float | None = None
    """Share of the stored test predictions with no parsed answer (overall: mean over tasks);
    None without stored predictions."""
    answers: list[tuple[str, float]] = field(default_factory=list)
    """Each parsed answer with its share of the stored predictions, most common first."""
    manual_gain: Gain = field(default_factory=Gain)
    """The gain over the task's `MANUAL_BEST` row (overall: averaged like ``gain``)."""
    disclosures: list[Disclosed] = field(default_factory=list)
    """The finished cells' disclosures: a mark per kind beside the accuracy, listed under the
    table."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class CostRatio:
    """A method's tuning and inference cost relative to the reference method."""

    method: str
    tune: float | None
    tune_text: str
    eval: float | None
    eval_text: str


@dataclass(frozen=True)
class PlotRef:
    """A plot written as ``<stem>.png`` and ``<stem>.svg`` (``stem`` relative to the report)."""

    title: str
    stem: str


@dataclass
class Section:
    """The overall table or one task's."""

    name: str
    anchor: str
    rows: list[Row]
    ratios: list[CostRatio]
    plots: list[PlotRef] = field(default_factory=list)
    apart: list[Row] = field(default_factory=list)
    """Overall: the rows not ranked (partial coverage of `tasks`), with their coverage."""
    tasks: list[str] = field(default_factory=list)
    """Overall: the common tasks the ranked rows are over."""
    ratios_note: str = ""
    """Why a section has no cost ratios, when the reference finished cells elsewhere."""

    @property
    def overall(self) -> bool:
        return self.anchor == "overall"


@dataclass
class Report:
    """Everything the Markdown and HTML renderers show."""

    title: str
    cost_reference: str
    sections: list[Section]
    cells: list[ReportCell]


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote."""

    markdown: Path
    html: Path
    plots: list[Path]
    cell_pages: list[Path]


# -- per task ---------------------------------------------------------------------------------


def _usd(record: CellRecord, phase: str) -> float | None:
    usd = total_usd(record.usage, FLAVOUR, phase)
    if (
        usd is not None
        and "unpriced_models" not in record.usage
        and not _prices().has(record.model)
    ):
        return None  # a record from before the meter listed unpriced models
    return usd


@functools.cache
def _prices() -> PriceTable:
    return PriceTable()


def compute_seconds(record: CellRecord) -> tuple[float, str]:
    """White-box seconds over both phases, and the device label (GPU or CPU)."""
    seconds, device = 0.0, "cpu"
    for phase in PHASES:
        block = record.usage.get("compute", {}).get(phase)
        if block:
            seconds += block["seconds"]
            device = block["device"]
    return seconds, ("GPU" if device == "cuda" else "CPU")


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    mean = statistics.fmean(values)
    # One value has no spread to measure: None (shown n/a), not 0.
    return mean, statistics.stdev(values) if len(values) > 1 else None


def _avg(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def _as_cell(item: CellRecord | ReportCell) -> ReportCell:
    return item if isinstance(item, ReportCell) else ReportCell(item, item.cell_id)


def cell_warnings(cell: ReportCell) -> list[str]:
    """The record's warnings, and those its stored predictions raise now (`answer_warnings`:
    records written before a check existed are flagged too; not for a method that is one
    answer by design), each once."""
    now = [] if _one_answer_by_design(cell.record.method) else answer_warnings(cell.predictions)
    return list(dict.fromkeys([*cell.record.warnings, *now]))


@functools.cache
def _one_answer_by_design(method: str) -> bool:
    from methods.base import get_method

    try:
        return get_method(method).one_answer_by_design
    except BenchError:  # a plugin that is not installed where the report is built
        return False


def answer_shares(
    predictions: Sequence[Mapping[str, Any]],
) -> tuple[float | None, list[tuple[str, float]]]:
    """The share of ``predictions`` with no parsed answer (``answer`` None), and each parsed
    answer's share of them, most common first (ties by answer); None and [] for none."""
    if not predictions:
        return None, []
    counts = Counter(p.get("answer") for p in predictions)
    unparsed = counts.pop(None, 0) / len(predictions)
    named: Counter[str] = Counter()
    for answer, n in counts.items():
        named[answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)] += n
    ranked = sorted(named.items(), key=lambda item: (-item[1], item[0]))
    return unparsed, [(answer, n / len(predictions)) for answer, n in ranked]


def bootstrap_gain(
    method: Sequence[Mapping[str, float]],
    reference: Sequence[Mapping[str, float]],
    *,
    replicates: int = REPLICATES,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap replicates of mean(method) - mean(reference), paired over examples.

    Args:
        method: per seed (cell), score by example id.
        reference: the same for the reference method.
        replicates: how many replicates.
        seed: seeds the generator (the same seed gives the same replicates).

    Returns:
        ``replicates`` gains, one per replicate.

    Raises:
        ValueError: a side has no seeds, or no example was scored by every seed of both.
    """
    if not method or not reference:
        raise ValueError("no seeds with stored predictions")
    common = set.intersection(*(set(s) for s in (*method, *reference)))
    if not common:
        raise ValueError("no test example scored by every seed of both methods")
    ids = sorted(common)
    m = np.array([[s[i] for i in ids] for s in method], dtype=float)
    r = np.array([[s[i] for i in ids] for s in reference], dtype=float)
    rng = np.random.default_rng(seed)
    n = len(ids)
    # The examples of each replicate: one draw, used by both sides (the pairing), as
    # counts per example; in chunks of replicates so memory stays bounded.
    draws = rng.integers(0, n, size=(replicates, n))
    parts_m, parts_r = [], []
    for chunk in np.array_split(draws, max(1, replicates * n // 2_000_000)):
        offsets = (np.arange(len(chunk))[:, None] * n + chunk).ravel()
        weights = np.bincount(offsets, minlength=len(chunk) * n).reshape(len(chunk), n) / n
        parts_m.append(m @ weights.T)
        parts_r.append(r @ weights.T)
    per_seed_m = np.concatenate(parts_m, axis=1)  # (seeds, replicates)
    per_seed_r = np.concatenate(parts_r, axis=1)
    pick_m = rng.integers(0, len(m), size=(replicates, len(m)))
    pick_r = rng.integers(0, len(r), size=(replicates, len(r)))
    cols = np.arange(replicates)[:, None]
    mean_m = per_seed_m.T[cols, pick_m].mean(axis=1)
    mean_r = per_seed_r.T[cols, pick_r].mean(axis=1)
    return np.asarray(mean_m - mean_r)


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central percentile interval of ``replicates``."""
    tail = (1 - level) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return float(low), float(high)


def task_seed(task: str) -> int:
    """The bootstrap's generator seed for ``task`` (the reproduction table draws the same)."""
    # Stable across processes (unlike hash()); each task gets its own draws, shared by its
    # methods, so tasks are independent in the overall interval.
    return zlib.crc32(task.encode("utf-8"))


def leaderboard_rows(
    cells: Sequence[CellRecord | ReportCell],
) -> dict[str, list[Row]]:
    """Rows per task (sorted), one per method (sorted), aggregated over seeds. Gain
    intervals need `ReportCell`s with predictions; bare records give none."""
    by_task: dict[str, dict[str, list[ReportCell]]] = defaultdict(lambda: defaultdict(list))
    for item in cells:
        cell = _as_cell(item)
        by_task[cell.record.task][cell.record.method].append(cell)
    out: dict[str, list[Row]] = {}
    for task, by_method in sorted(by_task.items()):
        ref_cells = [c for c in by_method.get(REFERENCE, []) if is_finished(c.record)]
        ref_mean = statistics.fmean(c.record.accuracy for c in ref_cells) if ref_cells else None  # type: ignore[misc]
        manual_cells = [c for c in by_method.get(MANUAL_BEST, []) if is_finished(c.record)]
        rows = []
        for method, group in sorted(by_method.items()):
            group.sort(key=lambda c: (c.record.seed, c.run_id))
            row = _task_row(method, group)
            if row.ok:
                _add_gain(row, task, ref_cells, ref_mean)
                row.manual_gain = _manual_gain(row, task, manual_cells)
            rows.append(row)
        out[task] = rows
    return out


def is_finished(record: CellRecord) -> bool:
    """A cell the accuracy counts: finished ok, with an accuracy."""
    return record.status == "ok" and record.accuracy is not None


def _task_row(method: str, group: list[ReportCell]) -> Row:
    records = [c.record for c in group]
    ok = [c for c in group if is_finished(c.record)]
    refused = [r for r in records if r.status == "refused"]
    stopped = {
        label: sum(r.status == status for r in records)
        for status, label in (("budget_exhausted", "budget exhausted"), ("failed", "failed"))
    }
    row = Row(
        method=method,
        needs=", ".join(records[0].requires) or "nothing",  # majority makes no call
        status="ok",
        cells=list(group),
        seeds=len(ok),
        stopped=", ".join(f"{n} {label}" for label, n in stopped.items() if n),
    )
    if not ok:
        if refused:
            row.status = f"n/a ({refused[0].reason})"
        else:
            row.status = next(
                (f"{label} ({n} of {len(records)} seeds)" for label, n in stopped.items() if n),
                records[0].status,
            )
        return row
    recs = [c.record for c in ok]
    row.warnings = [f"seed {c.record.seed}: {w}" for c in ok for w in cell_warnings(c)]
    row.disclosures = disclosed(ok)
    if all(c.predictions for c in ok):  # pooled over seeds; a seed without them: n/a
        row.unparsed, row.answers = answer_shares([p for c in ok for p in c.predictions])
    mean, std = _mean_std([r.accuracy for r in recs if r.accuracy is not None])
    n = len(recs)
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in recs:
        by_seed[r.seed].append(float(r.accuracy or 0.0))
    row.accuracy, row.std = mean, std
    row.seed_accuracy = {s: statistics.fmean(v) for s, v in sorted(by_seed.items())}
    row.tune_tokens = sum(total_tokens(r.usage, FLAVOUR, "tune") for r in recs) / n
    row.eval_tokens_per_1k = (
        sum(1000 * total_tokens(r.usage, FLAVOUR, "eval") / max(r.n_eval, 1) for r in recs) / n
    )
    row.tune_usd = _avg([_usd(r, "tune") for r in recs])
    row.eval_usd_per_1k = _avg(
        [None if (u := _usd(r, "eval")) is None else 1000 * u / max(r.n_eval, 1) for r in recs]
    )
    row.compute_s = sum(compute_seconds(r)[0] for r in recs) / n
    row.compute_device = compute_seconds(recs[0])[1]
    return row


def _add_gain(row: Row, task: str, ref_cells: list[ReportCell], ref_mean: float | None) -> None:
    if ref_mean is None or row.accuracy is None:
        row.ci_note = f"no finished {REFERENCE} row"
        return
    row.gain = row.accuracy - ref_mean
    if row.method != REFERENCE and any(cell_warnings(c) for c in ref_cells):
        row.flagged_reference = [task]  # the gain measures zero-shot's failure as much
    if row.method == REFERENCE:
        row.gain_ci = (0.0, 0.0)  # zero-shot against itself: no gain, by definition
        row.gain_replicates = np.zeros(REPLICATES)
        return
    row.gain_replicates, note = gain_replicates(row.cells, ref_cells, task)
    if row.gain_replicates is None:
        row.ci_note = note
        return
    row.gain_ci = interval(row.gain_replicates)


#: why a gain has no interval when a side's cells stored no predictions.
NO_PREDICTIONS = "no stored predictions"


def gain_replicates(
    cells: Sequence[ReportCell], ref_cells: Sequence[ReportCell], task: str
) -> tuple[np.ndarray | None, str]:
    """`bootstrap_gain` of ``cells`` over ``ref_cells`` (their finished ones) with the task's
    seed, so every gain of a task shares its draws; (None, why) when there is none."""
    mine = [c.scores() for c in cells if is_finished(c.record)]
    theirs = [c.scores() for c in ref_cells if is_finished(c.record)]
    if not all(mine) or not all(theirs):
        return None, NO_PREDICTIONS
    try:
        return bootstrap_gain(mine, theirs, seed=task_seed(task)), ""
    except ValueError as exc:
        return None, str(exc)


def _manual_gain(row: Row, task: str, manual_cells: list[ReportCell]) -> Gain:
    """``row``'s gain over the task's finished manual-best cells, bootstrapped as `_add_gain`
    does over zero-shot (same seed: the same draws of examples)."""
    if not manual_cells or row.accuracy is None:
        return Gain(note=f"no finished {MANUAL_BEST} row")
    value = row.accuracy - statistics.fmean(float(c.record.accuracy or 0.0) for c in manual_cells)
    if row.method == MANUAL_BEST:
        return Gain(0.0, (0.0, 0.0), np.zeros(REPLICATES))  # itself: no gain, by definition
    replicates, note = gain_replicates(row.cells, manual_cells, task)
    if replicates is None:
        return Gain(value, note=note)
    return Gain(value, interval(replicates), replicates)


def _overall_gain(per_task: Sequence[Gain], counted: int) -> Gain:
    """The mean of the tasks' gains (those that have one) with their replicates averaged, as
    the overall zero-shot gain is; ``counted`` is how many tasks the row counts."""
    gained = [g for g in per_task if g.value is not None]
    if not gained:
        return Gain(note=next((g.note for g in per_task if g.note), "no task has a gain"))
    value = statistics.fmean(g.value for g in gained if g.value is not None)
    tasks = f"{len(gained)}/{counted}" if len(gained) < counted else ""
    replicates = [g.replicates for g in gained if g.replicates is not None]
    if len(replicates) < len(gained):
        note = next(g.note for g in gained if g.replicates is None)
        return Gain(value, note=note, tasks=tasks)
    mean = np.mean(replicates, axis=0)
    return Gain(value, interval(mean), mean, tasks=tasks)


# -- overall ----------------------------------------------------------------------------------


class OverallRows(NamedTuple):
    """The overall table: its common tasks, the rows ranked over them, the rows apart."""

    tasks: list[str]
    ranked: list[Row]
    """Finished on every common task, figures over those tasks only; by accuracy, best first."""
    apart: list[Row]
    """The others (by name), each over the tasks it finished, with its coverage."""


def common_tasks(by_task: Mapping[str, Sequence[Row]]) -> list[str]:
    """The tasks the overall ranking is over (sorted; the module docstring says how)."""
    done: dict[str, frozenset[str]] = defaultdict(frozenset)
    for task, rows in by_task.items():
        for r in rows:
            done[r.method] |= {task} if r.ok else set()
    allowed = done.get(REFERENCE) or frozenset(by_task)  # gains need zero-shot on every task
    # The best set is the intersection of some methods' tasks (growing a set to that
    # intersection loses no method), so the closure of those sets under intersection holds it.
    candidates: set[frozenset[str]] = {d & allowed for d in done.values() if d & allowed}
    frontier = set(candidates)
    while frontier:
        frontier = {a & b for a in frontier for b in candidates if a & b} - candidates
        candidates |= frontier

    def key(tasks: frozenset[str]) -> tuple[int, int, tuple[str, ...]]:
        ranked = sum(tasks <= d for d in done.values())
        return -len(tasks) * ranked, -ranked, tuple(sorted(tasks))

    if not candidates:
        return []
    best: frozenset[str] = min(candidates, key=key)
    return sorted(best)


def overall_rows(by_task: Mapping[str, Sequence[Row]]) -> OverallRows:
    """Rank the methods that finished every common task (`common_tasks`) over those tasks;
    list the others apart, each over the tasks it finished. Accuracy and gain are averaged
    over tasks, tuning tokens, dollars and compute summed, inference per 1,000 examples
    averaged."""
    n_tasks = len(by_task)
    tasks = common_tasks(by_task)
    ranked, apart = [], []
    for method in sorted({r.method for rows in by_task.values() for r in rows}):
        mine = {t: r for t, rows in by_task.items() for r in rows if r.method == method}
        done = sorted(t for t, r in mine.items() if r.ok)
        if tasks and set(tasks) <= set(done):
            row = _overall_row(method, {t: mine[t] for t in tasks})
            row.tasks = f"{len(tasks)}/{n_tasks}"
            ranked.append(row)
        else:
            row = _overall_row(method, mine)
            row.tasks = f"{len(done)} of {n_tasks} tasks" + (f": {', '.join(done)}" if done else "")
            apart.append(row)
    ranked.sort(key=lambda r: (-(r.accuracy or 0.0), r.method))
    return OverallRows(tasks, ranked, apart)


def _overall_row(method: str, mine: Mapping[str, Row]) -> Row:
    """``method``'s rows of the tasks in ``mine``, aggregated over them."""
    ok = {t: r for t, r in mine.items() if r.ok}
    first = next(iter(mine.values()))
    row = Row(
        method=method,
        needs=first.needs,
        status="ok",
        cells=[c for r in mine.values() for c in r.cells],
        seeds=min((r.seeds for r in ok.values()), default=0),
        covered=sorted(ok),
    )
    if not ok:
        row.status = "; ".join(dict.fromkeys(r.status for r in mine.values()))
        return row
    rows = list(ok.values())
    row.accuracy = statistics.fmean(r.accuracy for r in rows if r.accuracy is not None)
    row.warnings = [f"{task}, {w}" for task, r in ok.items() for w in r.warnings]
    row.disclosures = [d for r in ok.values() for d in r.disclosures]
    row.flagged_reference = [t for t, r in ok.items() if r.flagged_reference]
    rates = [r.unparsed for r in rows]
    row.unparsed = None if None in rates else statistics.fmean(r for r in rates if r is not None)
    common = set.intersection(*(set(r.seed_accuracy) for r in rows))
    per_seed = [statistics.fmean(r.seed_accuracy[s] for r in rows) for s in sorted(common)]
    row.std = statistics.stdev(per_seed) if len(per_seed) > 1 else None  # one seed: n/a
    gained = [r for r in rows if r.gain is not None]
    if gained:
        row.gain = statistics.fmean(r.gain for r in gained if r.gain is not None)
        replicates = [r.gain_replicates for r in gained if r.gain_replicates is not None]
        if len(replicates) == len(gained):
            row.gain_replicates = np.mean(replicates, axis=0)
            row.gain_ci = interval(row.gain_replicates)
        else:
            row.ci_note = next(r.ci_note for r in gained if r.gain_replicates is None)
    else:
        row.ci_note = f"no finished {REFERENCE} row"
    row.manual_gain = _overall_gain([r.manual_gain for r in rows], len(rows))
    row.tune_tokens = sum(r.tune_tokens or 0.0 for r in rows)
    row.tune_usd = _sum_or_none([r.tune_usd for r in rows])
    row.eval_tokens_per_1k = statistics.fmean(r.eval_tokens_per_1k or 0.0 for r in rows)
    row.eval_usd_per_1k = _avg([r.eval_usd_per_1k for r in rows])
    row.compute_s = sum(r.compute_s or 0.0 for r in rows)
    row.compute_device = "+".join(sorted({r.compute_device for r in rows}))
    return row


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


# -- cost ratios ------------------------------------------------------------------------------


def cost_ratios(rows: Sequence[Row], reference: str) -> list[CostRatio]:
    """Each row's tuning and inference cost over the ``reference`` row's (dollars when both
    are priced, tokens otherwise), with "n/a (reason)" where there is no ratio."""
    ref = next((r for r in rows if r.method == reference), None)
    out = []
    for row in rows:
        ratios = []
        for what, usd, tokens in (
            ("tuning", "tune_usd", "tune_tokens"),
            ("inference", "eval_usd_per_1k", "eval_tokens_per_1k"),
        ):
            ratios.append(_ratio(row, ref, reference, what, usd, tokens))
        (tune, tune_text), (ev, eval_text) = ratios
        out.append(CostRatio(row.method, tune, tune_text, ev, eval_text))
    return out


def _ratio(
    row: Row, ref: Row | None, reference: str, what: str, usd: str, tokens: str
) -> tuple[float | None, str]:
    if ref is None:
        return None, f"n/a ({reference} not in this table)"
    if not ref.ok:
        return None, f"n/a ({reference}: {_bare(ref.status)})"
    if not row.ok:
        return None, f"n/a ({_bare(row.status)})"
    mine, theirs = getattr(row, usd), getattr(ref, usd)
    unit = "$"
    if mine is None or theirs is None:  # unpriced on either side: compare tokens
        mine, theirs, unit = getattr(row, tokens), getattr(ref, tokens), "tokens"
    if not theirs:
        return None, f"n/a ({reference} spent 0 {what} {'dollars' if unit == '$' else 'tokens'})"
    value = float(mine) / float(theirs)
    return value, f"{value:.2f}x ({unit})"


def _bare(status: str) -> str:
    """``n/a (needs X)`` -> ``needs X``, for quoting inside another n/a."""
    return status[5:-1] if status.startswith("n/a (") and status.endswith(")") else status


# -- Markdown ---------------------------------------------------------------------------------


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"${v:.4f}"


#: beside an accuracy whose cells carry warnings (listed under the table).
WARNING_MARK = "⚠"


def format_accuracy(row: Row) -> str:
    """``mean ± std``; ``± n/a`` with one seed (no spread to measure)."""
    if row.accuracy is None:
        return row.status
    mark = f" {WARNING_MARK}" if row.warnings else ""
    spread = "n/a" if row.std is None else f"{row.std:.3f}"
    return f"{row.accuracy:.3f} ± {spread}{mark}" + disclosure_marks(row)


#: after a gain whose ``zero-shot`` reference is flagged (unparseable or one answer).
FLAGGED_REFERENCE = f"{WARNING_MARK} over a flagged {REFERENCE}"


#: the mark of each disclosure kind (`methods.base.DISCLOSURE_KINDS`) beside an accuracy; a
#: kind from a later version of the record shows as `OTHER_MARK`.
DISCLOSURE_MARKS: dict[str, str] = {
    "no-change": "∅",
    "truncated": "✂",
    "not-sent": "⊘",
    "k-reduced": "↓",
    "substitute": "≈",
    "companion": "◇",
    "prompt-format": "¶",
}
OTHER_MARK = "†"


def disclosed(cells: Sequence[ReportCell]) -> list[Disclosed]:
    """The disclosures of ``cells``, in order."""
    return [
        Disclosed(c.key, c.record.task, c.record.seed, d.kind, d.detail)
        for c in cells
        for d in c.record.disclosures
    ]


def disclosure_marks(row: Row) -> str:
    """The marks of the row's disclosure kinds (" ∅✂"), then "no change" in words when a
    cell returned its starting prompt or point (with how many, when not all did)."""
    kinds = {d.kind for d in row.disclosures}
    marks = [mark for kind, mark in DISCLOSURE_MARKS.items() if kind in kinds]
    marks += [OTHER_MARK] if kinds - set(DISCLOSURE_MARKS) else []
    text = f" {''.join(marks)}" if marks else ""
    unchanged = {d.cell for d in row.disclosures if d.kind == "no-change"}
    if unchanged:
        cells = sum(is_finished(c.record) for c in row.cells)
        text += " no change" + ("" if len(unchanged) >= cells else f" ({len(unchanged)}/{cells})")
    return text


@dataclass(frozen=True)
class LegendLine:
    """One legend entry: a method's disclosure of one kind and detail, and the cells (page
    name, task, seed) that made it."""

    method: str
    kind: str
    detail: str
    cells: tuple[tuple[str, str, int], ...]
    every: bool = False
    """Whether every finished cell of the row said it (listed as such, not cell by cell)."""

    @property
    def mark(self) -> str:
        return DISCLOSURE_MARKS.get(self.kind, OTHER_MARK)


def disclosure_legend(section: Section) -> list[LegendLine]:
    """The section's disclosures, one entry per method, kind and detail (cells that said the
    same are grouped), in row order, marks in `DISCLOSURE_MARKS` order."""
    lines: list[LegendLine] = []
    for row in [*section.rows, *section.apart]:
        finished = sum(is_finished(c.record) for c in row.cells)
        groups: dict[tuple[str, str], list[tuple[str, str, int]]] = {}
        for d in row.disclosures:
            groups.setdefault((d.kind, d.detail), []).append((d.cell, d.task, d.seed))
        for (kind, detail), cells in sorted(groups.items(), key=lambda g: _kind_order(g[0][0])):
            every = len({c[0] for c in cells}) >= finished > 1
            lines.append(LegendLine(row.method, kind, detail, tuple(cells), every))
    return lines


def _kind_order(kind: str) -> int:
    kinds = list(DISCLOSURE_MARKS)
    return kinds.index(kind) if kind in kinds else len(kinds)


def legend_cells(
    line: LegendLine, *, overall: bool, link: Callable[[str, str], str] | None = None
) -> str:
    """Where a legend entry holds: "seeds 0, 1" (a task's table) or "t1 seeds 0, 1; t2 seed
    0" (overall), "every cell" when all the row's finished cells said it; ``link(page,
    text)`` turns each seed into a link to its cell's page."""
    if line.every:
        return "every cell"
    by_task: dict[str, list[tuple[str, int]]] = {}
    for page, task, seed in line.cells:
        by_task.setdefault(task, []).append((page, seed))
    parts = []
    for task, seeds in by_task.items():
        label = "seed" if len(seeds) == 1 else "seeds"
        shown = ", ".join(link(page, str(s)) if link else str(s) for page, s in seeds)
        parts.append(f"{task} {label} {shown}" if overall else f"{label} {shown}")
    return "; ".join(parts)


def _markdown_legend(section: Section) -> list[str]:
    """The disclosures under a Markdown table: the marks' meanings, then each entry."""
    legend = disclosure_legend(section)
    if not legend:
        return []
    key = "; ".join(
        f"{DISCLOSURE_MARKS.get(k, OTHER_MARK)} {k}: {DISCLOSURE_KINDS.get(k, 'a later kind')}"
        for k in sorted({line.kind for line in legend}, key=_kind_order)
    )
    lines = ["", f"Disclosures (marks beside the accuracy): {key}.", ""]
    for line in legend:
        where = legend_cells(
            line, overall=section.overall, link=lambda page, text: f"[{text}](cells/{page}.html)"
        )
        lines.append(f"- {line.mark} {line.kind}, `{line.method}` {where}: {line.detail}")
    return lines


def format_gain(row: Row) -> str:
    """``+0.050 [-0.010, +0.110]``; n/a, or the gain with why it has no interval; marked when
    the reference it is over is flagged."""
    if row.gain is None:
        return "n/a"
    if row.gain_ci is None:
        text = f"{row.gain:+.3f} (no CI: {row.ci_note})"
    else:
        low, high = row.gain_ci
        text = f"{row.gain:+.3f} [{low:+.3f}, {high:+.3f}]"
    if not row.flagged_reference:
        return text
    where = f" on {len(row.flagged_reference)} of {len(row.covered)} tasks" if row.covered else ""
    return f"{text} {FLAGGED_REFERENCE}{where}"


def format_unparsed(row: Row) -> str:
    """The share of predictions with no parsed answer, ``74%``; n/a without predictions."""
    return "n/a" if row.unparsed is None else f"{row.unparsed:.0%}"


#: answers shown per row, and the characters shown of each.
TOP_ANSWERS = 3
ANSWER_CHARS = 16


def format_answers(row: Row) -> str:
    """The most common parsed answers with their shares, ``no 60%, yes 40%`` (``+N more``)."""
    if row.unparsed is None:
        return "n/a"
    if not row.answers:
        return "none parsed"
    shown = []
    for answer, share in row.answers[:TOP_ANSWERS]:
        text = " ".join(answer.split()) or repr(answer)
        if len(text) > ANSWER_CHARS:
            text = text[: ANSWER_CHARS - 1] + "…"
        shown.append(f"{text} {share:.0%}")
    more = len(row.answers) - TOP_ANSWERS
    return ", ".join(shown) + (f" (+{more} more)" if more > 0 else "")


def format_manual_gain(row: Row) -> str:
    """The gain over manual-best as `format_gain` writes it, "n/a (reason)" without one, and
    overall "(over k/n tasks)" when it averages fewer tasks than the row counts."""
    gain = row.manual_gain
    if gain.value is None:
        return f"n/a ({gain.note})" if gain.note else "n/a"
    if gain.ci is None:
        text = f"{gain.value:+.3f} (no CI: {gain.note})"
    else:
        text = f"{gain.value:+.3f} [{gain.ci[0]:+.3f}, {gain.ci[1]:+.3f}]"
    return text + (f" (over {gain.tasks} tasks)" if gain.tasks else "")


def format_compute(row: Row) -> str:
    return "" if row.compute_s is None else f"{row.compute_s:.2f} ({row.compute_device})"


def format_seeds(row: Row) -> str:
    return f"{row.seeds}" + (f" (+{row.stopped})" if row.stopped else "")


def _md(text: str) -> str:
    """``text`` safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _markdown_table(section: Section, rows: Sequence[Row] | None = None) -> list[str]:
    if section.overall:
        head = (
            "| method | needs | tasks | accuracy (mean ± std) | gain vs zero-shot [95% CI] | "
            "gain vs manual-best [95% CI] | tune tokens (sum) | tune $ (sum) | "
            "eval tokens / 1k ex (mean) | eval $ / 1k ex (mean) | compute s (sum) | "
            "unparsed (mean) |"
        )
    else:
        head = (
            "| method | needs | accuracy (mean ± std) | gain vs zero-shot [95% CI] | "
            "gain vs manual-best [95% CI] | seeds | "
            "tune tokens | tune $ | eval tokens / 1k ex | eval $ / 1k ex | compute s | "
            "unparsed | top answers |"
        )
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for row in section.rows if rows is None else rows:
        if not row.ok:
            lines.append(
                f"| {row.method} | {row.needs} | "
                + (f"{row.tasks} | " if section.overall else "")
                + f"{row.status} |"
                + " |" * (8 if section.overall else 10)
            )
            continue
        third = row.tasks if section.overall else None
        cells = [row.method, row.needs]
        if third is not None:
            cells.append(third)
        cells += [format_accuracy(row), format_gain(row), format_manual_gain(row)]
        if third is None:
            cells.append(format_seeds(row))
        cells += [
            f"{row.tune_tokens or 0:,.0f}",
            _money(row.tune_usd),
            f"{row.eval_tokens_per_1k or 0:,.0f}",
            _money(row.eval_usd_per_1k),
            format_compute(row),
            format_unparsed(row),
        ]
        if third is None:
            cells.append(_md(format_answers(row)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: above the overall table's rows that are not ranked.
APART_NOTE = (
    "Not ranked (partial coverage): each row is over the tasks it finished, so it is not "
    "comparable with the ranking above."
)

#: under a table where a gain is over a flagged reference.
FLAGGED_REFERENCE_NOTE = (
    f"`{FLAGGED_REFERENCE}`: that gain is over a `{REFERENCE}` row that is itself flagged "
    "(unparseable or one answer throughout); it measures the reference's failure, not a "
    "significant gain of the method."
)


def ranking_note(section: Section, n_tasks: int) -> str:
    """What the overall ranking is over."""
    if not section.tasks:
        return "No task was finished by every ranked method alike: nothing is ranked."
    return (
        f"Ranked by accuracy over the {len(section.tasks)} of {n_tasks} tasks that every ranked "
        f"method finished ({', '.join(section.tasks)}); each figure, gain included, is over "
        "those tasks only."
    )


def render_markdown(report: Report) -> str:
    """The leaderboard as Markdown: overall, then each task, each with its cost ratios and
    plots."""
    lines = [f"# {report.title}", "", *(f"{note}\n" for note in NOTES)]
    ref = report.cost_reference
    n_tasks = len(report.sections) - 1
    for section in report.sections:
        heading = "Overall" if section.overall else section.name
        lines += ["", f"## {heading}", ""]
        if section.overall:
            lines += [ranking_note(section, n_tasks), ""]
        lines += _markdown_table(section)
        if section.apart:
            lines += ["", APART_NOTE, "", *_markdown_table(section, section.apart)]
        rows = [*section.rows, *section.apart]
        flagged = [(row.method, w) for row in rows for w in row.warnings]
        if flagged or any(row.flagged_reference for row in rows):
            lines += ["", f"{WARNING_MARK} Warnings:", ""]
            lines += [f"- {WARNING_MARK} `{method}` {warning}" for method, warning in flagged]
            if any(row.flagged_reference for row in rows):
                lines.append(f"- {FLAGGED_REFERENCE_NOTE}")
        lines += _markdown_legend(section)
        if section.ratios:
            lines += [
                "",
                f"Cost relative to `{ref}` (method ÷ {ref}; dollars when priced, tokens "
                "otherwise):",
                "",
                f"| method | tuning cost ÷ {ref} | inference cost ÷ {ref} |",
                "|---|---|---|",
            ]
            lines += [f"| {c.method} | {c.tune_text} | {c.eval_text} |" for c in section.ratios]
        elif section.ratios_note:
            lines += ["", section.ratios_note]
        if section.plots:
            lines.append("")
            lines += [f"![{p.title}]({p.stem}.svg)" for p in section.plots]
        if section.overall:
            from benchmarks.reproduction import reproduction_markdown

            lines += reproduction_markdown(report)
    return "\n".join(lines) + "\n"


# -- building and writing ---------------------------------------------------------------------


def slug(text: str) -> str:
    """``text`` made safe for a file name or an HTML id."""
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)


def collect_cells(stores: Sequence[RunStore]) -> list[ReportCell]:
    """Every cell record of ``stores`` with its stored predictions and a unique page name."""
    loaded = [(store, store.cells()) for store in stores]
    counts = Counter(r.cell_id for _, records in loaded for r in records)
    return [
        ReportCell(
            record=r,
            key=r.cell_id if counts[r.cell_id] == 1 else f"{slug(store.run_id)}--{r.cell_id}",
            predictions=tuple(store.predictions(r.cell_id)),
            run_id=store.run_id,
            trace=store.trace_path(r.cell_id) if store.trace_path(r.cell_id).is_file() else None,
        )
        for store, records in loaded
        for r in records
    ]


def build_report(
    cells: Sequence[ReportCell], title: str, cost_reference: str = DEFAULT_COST_REFERENCE
) -> Report:
    """Tables for the cells (plots are added by `write_report`)."""
    by_task = leaderboard_rows(cells)
    overall = overall_rows(by_task)
    sections = [Section("overall", "overall", overall.ranked, [], [], overall.apart, overall.tasks)]
    sections += [Section(task, f"task-{slug(task)}", rows, []) for task, rows in by_task.items()]
    # Ratios against a reference with no finished cell anywhere would all read n/a: left out.
    ran = any(r.method == cost_reference and r.ok for rows in by_task.values() for r in rows)
    for section in sections if ran else []:
        ref = next((r for r in section.rows if r.method == cost_reference), None)
        if ref is not None and ref.ok:
            section.ratios = cost_ratios(section.rows, cost_reference)
        elif ref is not None:
            section.ratios_note = f"No cost ratios here: `{cost_reference}`: {_bare(ref.status)}."
        elif section.overall:
            section.ratios_note = f"No cost ratios here: `{cost_reference}` is not ranked."
        else:
            section.ratios_note = f"No cost ratios here: `{cost_reference}` did not run this task."
    return Report(title, cost_reference, sections, list(cells))


def check_cost_reference(name: str, cells: Sequence[ReportCell]) -> None:
    """A typo in ``--cost-reference`` is an error; a real method absent from the runs is not
    (the cost-ratio tables are left out)."""
    if any(c.record.method == name for c in cells):
        return
    from methods.base import methods

    if name not in methods:
        raise BenchError(f"--cost-reference: {methods.unknown_message(name)}")


def write_report(
    stores: Sequence[RunStore],
    out_dir: Path,
    *,
    cost_reference: str = DEFAULT_COST_REFERENCE,
) -> ReportFiles:
    """Write the Markdown leaderboard, the plots, the HTML page and the per-cell pages.

    Args:
        stores: the runs to report on (only their files are read).
        out_dir: the report folder (created).
        cost_reference: the method cost ratios are taken against.

    Returns:
        The paths written. Files an earlier report left in ``cells/`` and ``plots/`` that this
        one did not write are removed, so the folder describes these runs only.
    """
    from benchmarks.report_html import render_cell_page, render_index

    cells = collect_cells(stores)
    check_cost_reference(cost_reference, cells)
    title = "Leaderboard: " + ", ".join(s.run_id for s in stores)
    report = build_report(cells, title, cost_reference)
    plots = _write_plots(report, out_dir)
    md = out_dir / "leaderboard.md"
    write_atomic(md, render_markdown(report))
    pages, traces = [], []
    for cell in cells:
        page = out_dir / "cells" / f"{cell.key}.html"
        write_atomic(page, render_cell_page(cell, report))
        pages.append(page)
        if cell.trace is not None:  # beside its page, so the report folder is self-contained
            traces.append(out_dir / "cells" / f"{cell.key}.trace.json")
            write_atomic(traces[-1], cell.trace.read_text(encoding="utf-8"))
    index = out_dir / "index.html"
    write_atomic(index, render_index(report))
    _remove_stale(out_dir / "cells", ("*.html", "*.trace.json"), {*pages, *traces})
    _remove_stale(out_dir / "plots", ("*.png", "*.svg"), set(plots))
    return ReportFiles(md, index, plots, pages)


def _remove_stale(folder: Path, patterns: Sequence[str], keep: set[Path]) -> None:
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path not in keep:
                path.unlink()


def _write_plots(report: Report, out_dir: Path) -> list[Path]:
    from benchmarks.plots import Bar, Point, cost_figure, gain_figure, save_figure

    written: list[Path] = []
    for section in report.sections:
        if section.overall and len(report.sections) == 2:
            continue  # one task: its own plots say it all
        ok = [r for r in section.rows if r.ok and r.accuracy is not None]
        name = "all tasks" if section.overall else section.name
        stem = "all-tasks" if section.overall else section.anchor
        figures = []
        if ok:
            priced = all(r.tune_usd is not None and r.eval_usd_per_1k is not None for r in ok)
            sums = " (summed over tasks)" if section.overall else ""
            devices = "+".join(sorted({r.compute_device for r in ok}))
            for kind, attr, label in (
                (
                    "tuning",
                    "tune_usd" if priced else "tune_tokens",
                    ("tuning dollars" if priced else "tuning tokens") + sums,
                ),
                (
                    "inference",
                    "eval_usd_per_1k" if priced else "eval_tokens_per_1k",
                    ("inference dollars" if priced else "inference tokens") + " per 1k examples",
                ),
                (
                    "compute",
                    "compute_s",
                    f"white-box compute seconds ({devices})" + sums,
                ),
            ):
                points = [
                    Point(r.method, float(getattr(r, attr) or 0.0), r.accuracy or 0.0) for r in ok
                ]
                title = f"{name}: accuracy vs {kind} cost (Pareto front ringed)"
                figures.append((kind, title, cost_figure(points, xlabel=label, title=title)))
            bars = [
                Bar(r.method, r.gain, *(r.gain_ci or (None, None)))
                for r in ok
                if r.gain is not None and r.method != REFERENCE
            ]
            if bars:
                title = f"{name}: gain over {REFERENCE}"
                figures.append(("gain", title, gain_figure(bars, title=title)))
        for kind, title, fig in figures:
            rel = f"plots/{stem}-{kind}"
            written += save_figure(fig, out_dir / rel)
            section.plots.append(PlotRef(title, rel))
    return written
