"""What `bench run` shows a person: the plan with its projected spend, a progress bar with
tokens and dollars, and the results. Methods never print; they send events here."""

from __future__ import annotations

import os
import sys
from typing import Any

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from benchmarks.metering import total_tokens
from benchmarks.results import CellRecord, RunStore


def fmt_usd(usd: float | None) -> str:
    return "n/a" if usd is None else f"${usd:,.4f}"


# A log has no width: rich would assume 80 columns and cut table cells to fit.
LOG_WIDTH = 1000


def _name_column(table: Table, title: str, names: list[str]) -> None:
    """A column of method or task names: never cut nor wrapped (other columns give way)."""
    width = max([len(title), *(len(n) for n in names)])
    table.add_column(title, no_wrap=True, min_width=width, overflow="ignore")


class RunConsole:
    """Prints to stderr so stdout stays clean for scripts."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            self.console.width = LOG_WIDTH
        self.bar: tqdm | None = None
        self.disable = bool(os.environ.get("TQDM_DISABLE")) or not sys.stderr.isatty()

    def print_plan(self, plan: Any, runner: Any) -> None:
        table = Table(title=f"plan: run {plan.store.run_id}", show_lines=False)
        _name_column(table, "method", [c.method for c in plan.cells])
        _name_column(table, "task", [c.task for c in plan.cells])
        for col in (
            "seeds",
            "status",
            "tune calls",
            "eval calls",
            "≤ tokens",
            "≤ $",
        ):
            table.add_column(col)
        seen: dict[tuple[str, str], list[int]] = {}
        first: dict[tuple[str, str], Any] = {}
        for cell in plan.cells:
            seen.setdefault((cell.method, cell.task), []).append(cell.seed)
            first.setdefault((cell.method, cell.task), cell)
        for key, seeds in seen.items():
            cell = first[key]
            p = cell.projection
            status = "ok" if cell.runnable else f"n/a (needs {', '.join(cell.missing)})"
            k = len(seeds)
            table.add_row(
                cell.method,
                cell.task,
                ",".join(map(str, seeds)),
                status,
                str(p.tune_calls * k) if p else "-",
                str(p.eval_calls * k) if p else "-",
                f"{p.tokens * k:,}" if p else "-",
                fmt_usd(None if not p or p.usd is None else p.usd * k) if p else "-",
            )
        self.console.print(table)
        t = plan.totals()
        self.console.print(
            f"projected: {t.tune_calls + t.eval_calls:,} calls, at most {t.tokens:,} tokens, "
            f"{fmt_usd(t.usd)} (model {runner.config.backend.model}; cache hits are free)"
        )

    def event(self, event: str, fields: dict[str, Any]) -> None:
        if event == "cell_start":
            self.close_bar()
            self.bar = tqdm(
                total=fields["n_eval"],
                desc=fields["cell"],
                unit="ex",
                disable=self.disable,
                leave=False,
                file=sys.stderr,
            )
        elif event == "phase_progress":
            state = "done" if fields["done"] else "so far"
            counts = f"{fields['calls']:,} calls, {fields['tokens']:,} billed tokens"
            if self.disable:  # a log: one line, never a carriage-return bar
                self.console.print(
                    f"  {fields['cell']}: {fields['phase']} {state}: {counts}", markup=False
                )
            elif self.bar is not None:
                self.bar.set_postfix_str(f"{fields['phase']}: {counts}")
        elif event == "eval_progress" and self.bar is not None:
            self.bar.n = fields["done"]
            self.bar.set_postfix(tokens=fields["tokens"], usd=fmt_usd(fields["usd"]))
        elif event == "cell_done":
            self.close_bar()
            self.console.print(
                f"  {fields['cell']}: accuracy {fields['accuracy']:.3f}, "
                f"{fields['tokens']:,} billed tokens"
            )
            for warning in fields.get("warnings") or ():
                self.console.print(f"  WARNING {fields['cell']}: {warning}", markup=False)
        elif event == "cell_failed":
            self.close_bar()
            self.console.print(f"  {fields['cell']}: FAILED: {fields['reason']}")
        elif event == "cell_refused":
            self.console.print(f"  {fields['cell']}: n/a ({fields['reason']})")
        elif event == "cell_skipped":
            self.console.print(f"  {fields['cell']}: already done (resume)")

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def print_results(self, records: list[CellRecord], store: RunStore) -> None:
        self.close_bar()
        table = Table(title=f"results: {store.root}")
        _name_column(table, "method", [r.method for r in records])
        _name_column(table, "task", [r.task for r in records])
        for col in (
            "seed",
            "accuracy",
            "tune tokens",
            "eval tokens",
            "cache hits",
            "status",
        ):
            table.add_column(col)
        for r in records:
            table.add_row(
                r.method,
                r.task,
                str(r.seed),
                "-" if r.accuracy is None else f"{r.accuracy:.3f}",
                f"{total_tokens(r.usage, 'billed', 'tune'):,}" if r.usage else "-",
                f"{total_tokens(r.usage, 'billed', 'eval'):,}" if r.usage else "-",
                str(r.usage.get("cache_hits", 0)) if r.usage else "-",
                r.status if r.status != "refused" else f"n/a ({r.reason})",
            )
        self.console.print(table)
