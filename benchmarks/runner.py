"""The runner: expand the grid, plan it (refusing what cannot run), then run it cell by cell.

Planning resolves every name, opens the backend (a missing key or a dead endpoint fails
here), loads the tasks and asks each tuner for its projected calls, so an incompatible
method × backend pair or a typo costs nothing. Running writes one record per cell as soon
as the cell finishes; `resume` skips cells whose record says ``ok``.
"""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.backends.base import Backend, make_backend
from benchmarks.cache import DEFAULT_CACHE_DIR, ResponseCache
from benchmarks.client import MeteredBlackBox
from benchmarks.metering import PriceTable, UsageMeter, total_tokens, total_usd
from benchmarks.results import CellRecord, RunStore, cell_id, new_run_id, provenance
from benchmarks.tasks.base import Task, get_task
from methods.base import (
    BlackBoxTuner,
    CallPlan,
    Example,
    TuneContext,
    get_method,
    missing_capabilities,
)
from methods.registry import BenchError

EVAL_BATCH = 32  # examples per predict call: the progress granularity, not a model batch size


@dataclass(frozen=True)
class BackendSpec:
    """A backend by registry name, model and options (never a key: keys stay in the env)."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model, "options": dict(self.options)}


@dataclass
class RunConfig:
    """Everything `bench run` was asked for."""

    methods: list[str]
    tasks: list[str]
    backend: BackendSpec
    seeds: list[int] = field(default_factory=lambda: [0])
    budget: str = "light"
    limit: int | None = None
    proposer: BackendSpec | None = None
    data_dir: Path | None = None
    task_options: dict[str, Any] = field(default_factory=dict)
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    results_dir: Path = Path("results")
    run_id: str | None = None
    resume: bool = False
    cache_dir: Path = DEFAULT_CACHE_DIR
    use_cache: bool = True
    prices: Path | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "methods": self.methods,
            "tasks": self.tasks,
            "backend": self.backend.describe(),
            "proposer": self.proposer.describe() if self.proposer else None,
            "seeds": self.seeds,
            "budget": self.budget,
            "limit": self.limit,
            "task_options": self.task_options,
            "method_options": self.method_options,
        }


@dataclass
class Projection:
    """Projected spend of one cell: calls and an upper bound on tokens and dollars."""

    tune_calls: int
    eval_calls: int
    prompt_tokens: int
    completion_tokens: int
    usd: float | None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class PlannedCell:
    method: str
    task: str
    seed: int
    cid: str
    requires: list[str]
    missing: list[str]
    projection: Projection | None

    @property
    def runnable(self) -> bool:
        return not self.missing


@dataclass
class Plan:
    cells: list[PlannedCell]
    store: RunStore

    def totals(self) -> Projection:
        runnable = [c.projection for c in self.cells if c.runnable and c.projection]
        usd = [p.usd for p in runnable]
        return Projection(
            tune_calls=sum(p.tune_calls for p in runnable),
            eval_calls=sum(p.eval_calls for p in runnable),
            prompt_tokens=sum(p.prompt_tokens for p in runnable),
            completion_tokens=sum(p.completion_tokens for p in runnable),
            usd=None if any(u is None for u in usd) else round(sum(u for u in usd if u), 4),
        )


EventSink = Callable[[str, dict[str, Any]], None]


class Runner:
    """Plans and runs a `RunConfig`. Use as a context manager so backends are closed."""

    def __init__(self, config: RunConfig, *, on_event: EventSink | None = None):
        self.config = config
        self.on_event: EventSink = on_event or (lambda event, fields: None)
        self.prices = PriceTable(config.prices)
        self.cache = ResponseCache(config.cache_dir, enabled=config.use_cache)
        self._stack = ExitStack()
        self.backend: Backend | None = None
        self.proposer_backend: Backend | None = None
        self.tasks: dict[str, Task] = {}
        self.splits: dict[str, dict[str, list[Example]]] = {}

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- planning -------------------------------------------------------------------------

    def _validate_names(self) -> None:
        cfg = self.config
        if not cfg.methods:
            raise BenchError("no methods given; pass --methods (see `bench ls methods`)")
        if not cfg.tasks:
            raise BenchError("no tasks given; pass --tasks (see `bench ls tasks`)")
        if not cfg.seeds:
            raise BenchError("no seeds given; pass --seeds like 0,1,2")
        if cfg.limit is not None and cfg.limit < 1:
            raise BenchError(f"--limit must be a positive integer, got {cfg.limit}")
        for name in cfg.methods:
            get_method(name)
        from benchmarks.tasks.base import tasks as task_registry

        for name in cfg.tasks:
            task_registry.get(name)
        from benchmarks.backends.base import backends as backend_registry

        backend_registry.get(cfg.backend.name)
        if cfg.proposer:
            backend_registry.get(cfg.proposer.name)

    def _open_backends(self) -> None:
        cfg = self.config
        self.backend = self._stack.enter_context(
            make_backend(cfg.backend.name, model=cfg.backend.model, **cfg.backend.options)
        )
        self.backend.check_ready()
        if cfg.proposer and cfg.proposer != cfg.backend:
            self.proposer_backend = self._stack.enter_context(
                make_backend(cfg.proposer.name, model=cfg.proposer.model, **cfg.proposer.options)
            )
            self.proposer_backend.check_ready()
        else:
            self.proposer_backend = self.backend

    def _load_tasks(self) -> None:
        cfg = self.config
        for name in cfg.tasks:
            task = get_task(name, data_dir=cfg.data_dir, **cfg.task_options.get(name, {}))
            splits = {split: task.examples(split) for split in ("train", "dev", "test")}
            if cfg.limit is not None:
                splits["test"] = splits["test"][: cfg.limit]
            if not splits["test"]:
                raise BenchError(f"task {name}: the test split is empty")
            self.tasks[name] = task
            self.splits[name] = splits

    def make_tuner(self, method: str) -> BlackBoxTuner:
        cls = get_method(method)
        return cls.from_budget(self.config.budget, **self.config.method_options.get(method, {}))

    def plan(self) -> Plan:
        """Resolve names, open backends, load tasks, and project every cell's spend."""
        cfg = self.config
        self._validate_names()
        store = self._open_store()
        self._open_backends()
        self._load_tasks()
        assert self.backend is not None
        cells = []
        for method in cfg.methods:
            cls = get_method(method)
            missing = missing_capabilities(cls.requires, frozenset(self.backend.capabilities))
            tuner = self.make_tuner(method)
            for task_name in cfg.tasks:
                projection = None if missing else self._project(tuner, task_name)
                for seed in cfg.seeds:
                    cid = cell_id(method, task_name, cfg.backend.name, cfg.backend.model, seed)
                    cells.append(
                        PlannedCell(
                            method,
                            task_name,
                            seed,
                            cid,
                            sorted(r.replace("|", " or ") for r in cls.requires),
                            missing,
                            projection,
                        )
                    )
        return Plan(cells, store)

    def _project(self, tuner: BlackBoxTuner, task_name: str) -> Projection:
        assert self.backend is not None
        task, splits = self.tasks[task_name], self.splits[task_name]
        plan: CallPlan = tuner.plan(task=task, train=splits["train"], dev=splits["dev"])
        sample = splits["test"][:20]
        if plan.eval_prompt is not None:
            eval_prompt_tokens = self.backend.count_tokens(plan.eval_prompt)
        else:
            eval_prompt_tokens = round(
                statistics.mean(
                    self.backend.count_tokens(
                        task.render(
                            ex, instruction=task.instructions[0] if task.instructions else None
                        )
                    )
                    for ex in sample
                )
            )
        tune_prompt_tokens = (
            self.backend.count_tokens(plan.tune_prompt) if plan.tune_prompt else eval_prompt_tokens
        )
        n_test = len(splits["test"])
        eval_calls = round(n_test * plan.eval_calls_per_example)
        tune_calls = plan.calls + plan.proposer_calls
        prompt_tokens = tune_calls * tune_prompt_tokens + eval_calls * eval_prompt_tokens
        # Upper bound: every sample runs to max_tokens.
        completion_tokens = task.max_tokens * (
            max(plan.samples, plan.calls)
            + plan.proposer_calls
            + round(n_test * plan.eval_samples_per_example)
        )
        usd = self.prices.dollars(self.backend.model, prompt_tokens, completion_tokens)
        return Projection(
            tune_calls,
            eval_calls,
            prompt_tokens,
            completion_tokens,
            None if usd is None else round(usd, 4),
        )

    def _open_store(self) -> RunStore:
        cfg = self.config
        if cfg.resume:
            run_id = cfg.run_id or _latest_run(cfg.results_dir)
            store = RunStore(cfg.results_dir / run_id)
            if not store.exists():
                raise BenchError(f"--resume: no run {run_id!r} under {cfg.results_dir}")
            if store.read_spec().get("config") != cfg.describe():
                raise BenchError(
                    f"--resume: run {run_id!r} was started with other settings; "
                    "resume with the same flags or start a new run"
                )
            return store
        run_id = cfg.run_id or new_run_id()
        store = RunStore(cfg.results_dir / run_id)
        if store.exists():
            raise BenchError(
                f"run {run_id!r} already exists under {cfg.results_dir}; pass --resume "
                "to continue it or choose another --run-id"
            )
        return store

    # -- running --------------------------------------------------------------------------

    def run(self, plan: Plan) -> list[CellRecord]:
        """Run every cell of ``plan`` not already finished; returns all records."""
        store = plan.store
        if not store.exists():
            store.write_spec(
                {
                    "run_id": store.run_id,
                    "config": self.config.describe(),
                    "provenance": provenance(),
                    "cells": [c.cid for c in plan.cells],
                }
            )
        records = []
        for cell in plan.cells:
            done = store.read_cell(cell.cid) if self.config.resume else None
            if done is not None and done.status in ("ok", "refused"):
                self.on_event("cell_skipped", {"cell": cell.cid})
                records.append(done)
                continue
            record = self._run_cell(cell, store)
            records.append(record)
        return records

    def _run_cell(self, cell: PlannedCell, store: RunStore) -> CellRecord:
        cfg = self.config
        base: dict[str, Any] = {
            "cell_id": cell.cid,
            "method": cell.method,
            "task": cell.task,
            "backend": cfg.backend.name,
            "model": cfg.backend.model,
            "seed": cell.seed,
            "budget": cfg.budget,
            "requires": cell.requires,
        }
        if cell.missing:
            record = CellRecord(**base, status="refused", reason=f"needs {', '.join(cell.missing)}")
            store.write_cell(record)
            self.on_event("cell_refused", {"cell": cell.cid, "reason": record.reason})
            return record
        assert self.backend is not None and self.proposer_backend is not None
        task, splits = self.tasks[cell.task], self.splits[cell.task]
        meter = UsageMeter(self.prices)
        black_box = MeteredBlackBox(self.backend, meter=meter, role="task", cache=self.cache)
        proposer = MeteredBlackBox(
            self.proposer_backend, meter=meter, role="proposer", cache=self.cache
        )
        tuner = self.make_tuner(cell.method)
        context = TuneContext(
            seed=cell.seed,
            compute=meter,
            device=meter.device,
            on_event=lambda event, fields: self.on_event(event, {"cell": cell.cid, **fields}),
            workdir=store.artifact_dir(cell.cid),
        )
        self.on_event("cell_start", {"cell": cell.cid, "n_eval": len(splits["test"])})
        wall: dict[str, float] = {}
        try:
            meter.phase = "tune"
            t0 = time.perf_counter()
            policy = tuner.fit(
                splits["train"],
                task=task,
                backend=black_box,
                dev=splits["dev"],
                proposer=proposer,
                context=context,
            )
            wall["tune"] = round(time.perf_counter() - t0, 3)
            policy.save(store.artifact_dir(cell.cid))
            meter.phase = "eval"
            t0 = time.perf_counter()
            rows: list[dict[str, Any]] = []
            for batch in _batches(splits["test"], EVAL_BATCH):
                for ex, pred in zip(
                    batch, policy.predict(batch, task=task, backend=black_box), strict=True
                ):
                    rows.append(
                        {
                            "id": ex.id,
                            "output": pred.output,
                            "answer": pred.answer,
                            "target": ex.target,
                            "score": task.score(pred.answer, ex),
                            **({"extra": dict(pred.extra)} if pred.extra else {}),
                        }
                    )
                summary = meter.summary()
                self.on_event(
                    "eval_progress",
                    {
                        "cell": cell.cid,
                        "done": len(rows),
                        "total": len(splits["test"]),
                        "tokens": total_tokens(summary, "billed"),
                        "usd": total_usd(summary, "billed"),
                    },
                )
            wall["eval"] = round(time.perf_counter() - t0, 3)
        except BenchError as exc:
            return self._failed(store, base, meter, tuner, f"{exc}")
        except Exception as exc:  # a method bug fails its cell, not the run
            self.on_event("cell_traceback", {"cell": cell.cid, "traceback": traceback.format_exc()})
            return self._failed(store, base, meter, tuner, f"{type(exc).__name__}: {exc}")
        record = CellRecord(
            **base,
            status="ok",
            accuracy=sum(r["score"] for r in rows) / len(rows),
            n_eval=len(rows),
            usage=meter.summary(),
            hyperparameters=tuner.hyperparameters(),
            variant=getattr(tuner, "variant", None),
            wall_s=wall,
            task_hash=task.fingerprint(),
            provenance=provenance(),
        )
        store.write_cell(record, rows)
        self.on_event(
            "cell_done",
            {
                "cell": cell.cid,
                "accuracy": record.accuracy,
                "tokens": total_tokens(record.usage, "billed"),
            },
        )
        return record

    def _failed(
        self,
        store: RunStore,
        base: dict[str, Any],
        meter: UsageMeter,
        tuner: BlackBoxTuner,
        reason: str,
    ) -> CellRecord:
        record = CellRecord(
            **base,
            status="failed",
            reason=reason.splitlines()[0][:500],
            usage=meter.summary(),
            hyperparameters=tuner.hyperparameters(),
            provenance=provenance(),
        )
        store.write_cell(record)
        self.on_event("cell_failed", {"cell": base["cell_id"], "reason": record.reason})
        return record


def _batches(items: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _latest_run(results_dir: Path) -> str:
    """The most recently started run (by its run.json), whatever its name."""
    specs = sorted(results_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    if not specs:
        raise BenchError(f"--resume: no runs under {results_dir}")
    return specs[-1].parent.name
