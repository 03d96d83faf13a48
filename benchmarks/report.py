"""`bench report`: a Markdown leaderboard from result directories, never re-running anything.

Per task: method, the access it needs, accuracy mean ± std over seeds, gain over zero-shot,
billed tuning and inference tokens (and dollars, n/a where unpriced), compute seconds, and
"n/a (needs X)" for methods the backend could not serve. Cells stopped by a spending cap
(``budget_exhausted``) or failed are never averaged in: a method with none finished shows
"budget exhausted" or "failed", and one with some finished seeds says how many others
stopped.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from benchmarks.metering import PHASES, total_tokens, total_usd
from benchmarks.results import CellRecord, RunStore, write_atomic

REFERENCE = "zero-shot"


#: the leaderboard prices a method from a cold start (cache hits counted), so a warm cache
#: does not make a method look cheaper; billed totals stay in each cell record.
FLAVOUR = "idealized"


def _usd(record: CellRecord, phase: str) -> float | None:
    return total_usd(record.usage, FLAVOUR, phase)


def _compute(record: CellRecord) -> tuple[float, str]:
    seconds, device = 0.0, "cpu"
    for phase in PHASES:
        block = record.usage.get("compute", {}).get(phase)
        if block:
            seconds += block["seconds"]
            device = block["device"]
    return seconds, ("GPU" if device == "cuda" else "CPU")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def leaderboard_rows(records: Sequence[CellRecord]) -> dict[str, list[dict[str, object]]]:
    """Rows per task, one per method, aggregated over seeds."""
    by_task: dict[str, dict[str, list[CellRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_task[r.task][r.method].append(r)
    out: dict[str, list[dict[str, object]]] = {}
    for task, by_method in sorted(by_task.items()):
        ref = [r.accuracy for r in by_method.get(REFERENCE, []) if r.accuracy is not None]
        ref_mean = statistics.fmean(ref) if ref else None
        rows = []
        for method, recs in sorted(by_method.items()):
            ok = [r for r in recs if r.status == "ok" and r.accuracy is not None]
            refused = [r for r in recs if r.status == "refused"]
            stopped = {
                label: sum(r.status == status for r in recs)
                for status, label in (
                    ("budget_exhausted", "budget exhausted"),
                    ("failed", "failed"),
                )
            }
            row: dict[str, object] = {
                "method": method,
                "needs": ", ".join(recs[0].requires),
                "seeds": len(ok),
                "stopped": ", ".join(f"{n} {label}" for label, n in stopped.items() if n),
            }
            if not ok:
                if refused:
                    row["status"] = f"n/a ({refused[0].reason})"
                else:
                    row["status"] = next(
                        (
                            f"{label} ({n} of {len(recs)} seeds)"
                            for label, n in stopped.items()
                            if n
                        ),
                        recs[0].status,
                    )
                rows.append(row)
                continue
            mean, std = _mean_std([r.accuracy for r in ok if r.accuracy is not None])
            n = len(ok)
            row.update(
                status="ok",
                accuracy=mean,
                std=std,
                gain=None if ref_mean is None else mean - ref_mean,
                tune_tokens=sum(total_tokens(r.usage, FLAVOUR, "tune") for r in ok) / n,
                eval_tokens_per_1k=sum(
                    1000 * total_tokens(r.usage, FLAVOUR, "eval") / max(r.n_eval, 1) for r in ok
                )
                / n,
                tune_usd=_avg([_usd(r, "tune") for r in ok]),
                eval_usd_per_1k=_avg(
                    [
                        None if (u := _usd(r, "eval")) is None else 1000 * u / max(r.n_eval, 1)
                        for r in ok
                    ]
                ),
                compute_s=sum(_compute(r)[0] for r in ok) / n,
                compute_device=_compute(ok[0])[1],
            )
            rows.append(row)
        out[task] = rows
    return out


def _avg(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return statistics.fmean(v for v in values if v is not None)


def _money(v: object) -> str:
    return "n/a" if v is None else f"${float(v):.4f}"  # type: ignore[arg-type]


def render_markdown(records: Sequence[CellRecord], title: str) -> str:
    lines = [f"# {title}", ""]
    lines.append(
        "Tokens and dollars are a method's cost from a cold start (cache hits counted; billed "
        "totals of each run are in its cell records); dollars are n/a for unpriced models. "
        "Gain is over the `zero-shot` row of the same task. "
        "Compute is white-box seconds (GPU seconds on GPU, CPU seconds otherwise)."
    )
    for task, rows in leaderboard_rows(records).items():
        lines += [
            "",
            f"## {task}",
            "",
            "| method | needs | accuracy (mean ± std) | gain vs zero-shot | seeds | "
            "tune tokens | tune $ | eval tokens / 1k ex | eval $ / 1k ex | compute s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            if row["status"] != "ok":
                lines.append(
                    f"| {row['method']} | {row['needs']} | {row['status']} | | | | | | | |"
                )
                continue
            gain = row["gain"]
            seeds = f"{row['seeds']}" + (f" (+{row['stopped']})" if row["stopped"] else "")
            lines.append(
                f"| {row['method']} | {row['needs']} | {row['accuracy']:.3f} ± {row['std']:.3f} "
                f"| {'n/a' if gain is None else f'{gain:+.3f}'} | {seeds} "
                f"| {row['tune_tokens']:,.0f} | {_money(row['tune_usd'])} "
                f"| {row['eval_tokens_per_1k']:,.0f} | {_money(row['eval_usd_per_1k'])} "
                f"| {row['compute_s']:.2f} ({row['compute_device']}) |"
            )
    return "\n".join(lines) + "\n"


def write_report(stores: Sequence[RunStore], out_dir: Path) -> Path:
    records = [r for store in stores for r in store.cells()]
    title = "Leaderboard: " + ", ".join(s.run_id for s in stores)
    path = out_dir / "leaderboard.md"
    write_atomic(path, render_markdown(records, title))
    return path
