"""The runner: expand the grid, plan it (refusing what cannot run), then run it cell by cell.

Planning resolves every name, checks hyperparameter types, opens the backend (a missing key
or a dead endpoint fails here), loads the tasks and asks each tuner for its projected calls,
so an incompatible method × backend pair, a typo or a projected spend over a cap costs
nothing. Running writes one record per cell as soon as the cell finishes (atomically: a
crash leaves whole records only); `resume` skips cells whose record says ``ok`` or
``refused`` and re-runs the rest.

Spending caps (`RunConfig.limits` for the run, `RunConfig.cell_limits` for each cell) are
checked twice: against the projection before anything starts (refused with the projection
in the message), and call by call while running (`benchmarks.metering.SpendingGuard`): a cell
that reaches a cap stops, keeps its finished predictions and is marked ``budget_exhausted``.
A run's caps count what its finished records billed, so a resumed run does not start afresh.
If the endpoint goes away mid-run, the run stops with `BackendUnavailable`; the interrupted
cell writes nothing and is re-run by ``--resume``.

Where the cells run is the executor's business (`benchmarks.executors`: one after another in
this process, or as Ray tasks); each is run by `Runner.run_cell` either way.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import shutil
import tempfile
import threading
import time
import traceback
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from benchmarks.backends.base import Backend, make_backend
from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.cache import DEFAULT_CACHE_DIR, TRAINING_DIR, ResponseCache
from benchmarks.client import MeteredBlackBox
from benchmarks.companions import (
    black_box_dir,
    companion_disclosures,
    companion_refusal,
    companion_vocabulary,
    fill_companions,
)
from benchmarks.errors import BackendUnavailable, BudgetExhausted
from benchmarks.eval_memo import EvalMemo
from benchmarks.metering import (
    LIMIT_FLAGS,
    Limits,
    PriceTable,
    Spend,
    SpendingGuard,
    UsageMeter,
    total_tokens,
    total_usd,
)
from benchmarks.results import (
    CellRecord,
    RunStore,
    answer_warnings,
    cell_id,
    check_run_id,
    directory_bytes,
    new_run_id,
    provenance,
)
from benchmarks.tasks.base import Task, get_task
from methods.artifacts import TrainingCache, tree_digest
from methods.base import (
    AUTO_MODEL,
    NEXT_TOKEN_LOGITS,
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Disclosure,
    Example,
    Prediction,
    TuneContext,
    get_method,
    missing_capabilities,
)
from methods.prompting import label_token_ids
from methods.registry import BenchError

logger = logging.getLogger(__name__)

#: the shortest interval between two progress lines of a cell phase (plus one as it ends).
PROGRESS_EVERY_S = 10.0
EVAL_BATCH = 32  # examples per predict call: the progress granularity, not a model batch size
#: backend options that change how or where calls are made, not what they return (the
#: cache identity leaves them out too): a run may be resumed with other values, e.g. against
#: a restarted server on another port, or with a rotated key.
OPERATIONAL_OPTIONS = frozenset(
    {"concurrency", "max_retries", "timeout_s", "backoff_s", "base_url", "api_key_env",
     "api_key_file"}
)  # fmt: skip


@dataclass(frozen=True)
class BackendSpec:
    """A backend by registry name, model and options (never a key: keys stay in the env)."""

    name: str
    model: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The spec as recorded in run.json: a base URL without user info or query values."""
        from benchmarks.backends.openai_backend import safe_url

        options = dict(self.options)
        if options.get("base_url"):
            options["base_url"] = safe_url(str(options["base_url"]))
        return {"backend": self.name, "model": self.model, "options": options}


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
    #: keep white-box training outcomes in the cache (with `use_cache`).
    cache_training: bool = True
    prices: Path | None = None
    #: caps on the whole run's billed spending (a resumed run counts its finished records).
    limits: Limits = field(default_factory=Limits)
    #: caps on each cell's billed spending.
    cell_limits: Limits = field(default_factory=Limits)
    #: how cells are run: "local" (one after another here) or "ray" (`benchmarks.executors`);
    #: left out of `describe`, so a run may be resumed under the other executor.
    executor: str = "local"
    #: the Ray cluster to use (``auto``, ``ray://HOST:10001``); None starts a local one.
    ray_address: str | None = None

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


def seed_globals(seed: int) -> None:
    """Seed the process-wide random states a method might read (torch, numpy, random) from
    the cell's seed: a cell then does the same whatever ran before it in the process (local,
    Ray worker, replay), and its training steps are found in the training cache."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Runner:
    """Plans and runs a `RunConfig`. Use as a context manager so backends are closed."""

    def __init__(self, config: RunConfig, *, on_event: EventSink | None = None):
        self.config = config
        self.on_event: EventSink = on_event or (lambda event, fields: None)
        self.prices = PriceTable(config.prices)
        self.cache = ResponseCache(config.cache_dir, enabled=config.use_cache)
        # Training outcomes live beside the answers they were trained on, and go with them.
        self.training_cache = (
            TrainingCache(Path(config.cache_dir) / TRAINING_DIR)
            if config.use_cache and config.cache_training
            else None
        )
        self.eval_memo = EvalMemo(Path(config.cache_dir), enabled=config.use_cache)
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
        from benchmarks.executors import check_executor

        check_executor(cfg.executor)  # an unknown name, or ray not installed: before spending
        for name in cfg.methods:
            get_method(name)
        for name in cfg.method_options:
            get_method(name)  # a typo in --set is an error, not an ignored override
        for name in cfg.methods:
            self.make_tuner(name)  # unknown keys, wrong types, out-of-range values
        from benchmarks.tasks.base import tasks as task_registry

        for name in [*cfg.tasks, *cfg.task_options]:
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
        assert self.backend is not None
        for name in cfg.tasks:
            options = cfg.task_options.get(name, {})
            if "prompt_format" in options:
                raise BenchError(
                    f"task {name}: prompt_format is not a task option; use --prompt-format"
                )
            try:
                # The task's answer limits follow the format the black box is prompted in.
                task = get_task(
                    name,
                    data_dir=cfg.data_dir,
                    prompt_format=self.backend.prompt_format,
                    **options,
                )
                splits = {split: task.examples(split) for split in ("train", "dev", "test")}
            except BenchError:
                raise
            except (TypeError, ValueError, KeyError, UnicodeError) as exc:
                raise BenchError(f"task {name}: {_one_line(exc)}") from exc
            if cfg.limit is not None:
                splits["test"] = splits["test"][: cfg.limit]
            if not splits["test"]:
                raise BenchError(f"task {name}: the test split is empty")
            self._check_labels(name, task, splits)
            _warn_overlap(name, splits)
            self.tasks[name] = task
            self.splits[name] = splits

    def _check_labels(self, name: str, task: Task, splits: dict[str, list[Example]]) -> None:
        """The label rules of a classification task with label words: every target is one
        of the labels, exactly (case included), and on a backend that reads next-token
        distributions no two labels share their first token (they could not be told apart).

        Raises:
            BenchError: naming the targets (and how many examples carry them) or the labels
                and their shared token.
        """
        labels = list(task.labels or ())
        if task.kind != "classification" or not labels:
            return
        stray = Counter(
            ex.target for split in splits.values() for ex in split if ex.target not in labels
        )
        if stray:
            shown = ", ".join(f"{t!r} ({n} examples)" for t, n in stray.most_common(5))
            more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
            raise BenchError(
                f"task {name}: targets that are not label words (case included): {shown}{more}; "
                f"the labels are {', '.join(map(repr, labels))}"
            )
        assert self.backend is not None
        if NEXT_TOKEN_LOGITS not in self.backend.capabilities:
            return  # labels are read by scoring or parsed: first tokens do not matter
        vocabulary = self._black_box_vocabulary
        if vocabulary is None:
            return
        try:
            label_token_ids(labels, vocabulary)
        except BenchError as exc:
            raise BenchError(f"task {name}: {exc}") from None

    def make_tuner(self, method: str) -> BlackBoxTuner:
        """The tuner with the run's budget preset and ``--set`` overrides, checked: unknown
        keys, values of the wrong type and values its Config rejects are one-line errors."""
        return self._tuner(method)[0]

    def _tuner(self, method: str) -> tuple[BlackBoxTuner, str | None]:
        """`make_tuner`, and what the method lacks when no companion model fits the black box
        (its companion fields the user did not set are filled for it: benchmarks/companions)."""
        cls = get_method(method)
        overrides = check_hyperparameters(cls, self.config.method_options.get(method, {}))
        try:
            tuner = cls.from_budget(self.config.budget, **overrides)
        except BenchError:
            raise
        except (TypeError, ValueError) as exc:  # a Config's own range checks
            raise BenchError(f"method {method}: bad hyperparameter ({_one_line(exc)})") from exc
        return fill_companions(tuner, self.config.backend.model, overrides.keys())

    def harness_disclosures(self, method: str, tuner: BlackBoxTuner) -> list[Disclosure]:
        """What the harness knows of a cell of ``method`` that a reader needs: the white-box
        models that filled its companion roles, and a prompt format other than the model's
        default (or a system turn)."""
        assert self.backend is not None
        options = self.config.method_options.get(method, {})
        overridden = {k for k, v in options.items() if v != AUTO_MODEL}
        out = [
            Disclosure("companion", line)
            for line in companion_disclosures(tuner, self.config.backend.model, overridden)
        ]
        used, default = self.backend.prompt_format, self.backend.default_prompt_format()
        if used != default:
            what = "one user turn of its chat template" if used == "chat" else "text as given"
            out.append(
                Disclosure(
                    "prompt-format",
                    f"prompts sent as {used} ({what}); {self.config.backend.model}'s default "
                    f"is {default}",
                )
            )
        if self.backend.system_prompt:
            out.append(
                Disclosure(
                    "prompt-format",
                    f"a system turn of {len(self.backend.system_prompt)} characters before "
                    "each prompt",
                )
            )
        return out

    def plan(self) -> Plan:
        """Resolve names, open backends, load tasks, and project every cell's spend."""
        cfg = self.config
        self._validate_names()
        store = self._open_store()
        self._open_backends()
        self._check_resume(store)
        self._load_tasks()
        assert self.backend is not None
        cells = []
        for method in cfg.methods:
            cls = get_method(method)
            missing = [
                self._with_probe_note(need)
                for need in missing_capabilities(cls.requires, frozenset(self.backend.capabilities))
            ]
            tuner, gap = self._tuner(method)
            if not missing:
                gap = gap or self._companion_refusal(tuner)
                missing = [gap] if gap else []
            for task_name in cfg.tasks:
                lacks = tuner.unsupported(self.tasks[task_name])
                refused = missing or ([lacks] if lacks else [])
                projection = None if refused else self._project(tuner, task_name)
                for seed in cfg.seeds:
                    cid = cell_id(method, task_name, cfg.backend.name, cfg.backend.model, seed)
                    cells.append(
                        PlannedCell(
                            method,
                            task_name,
                            seed,
                            cid,
                            sorted(r.replace("|", " or ") for r in cls.requires),
                            refused,
                            projection,
                        )
                    )
        return Plan(cells, store)

    def _companion_refusal(self, tuner: BlackBoxTuner) -> str | None:
        """Why ``tuner``'s white-box companions cannot serve this black box, or None."""
        if not tuner.companions:
            return None
        return companion_refusal(
            tuner, self.config.backend.model, self._black_box_vocabulary, resolve_model_dir
        )

    @functools.cached_property
    def _black_box_vocabulary(self) -> list[str] | None:
        """The black box's token strings: from its directory where it is on this machine (no
        server is started for it), else from the endpoint where it lists them."""
        from methods.base import NEXT_TOKEN_LOGITS

        assert self.backend is not None
        local = black_box_dir(self.config.backend.model)
        if local is not None:
            return companion_vocabulary(local)
        if NEXT_TOKEN_LOGITS in self.backend.capabilities:
            return list(self.backend.vocabulary())
        return None

    def _project(self, tuner: BlackBoxTuner, task_name: str) -> Projection:
        assert self.backend is not None
        task, splits = self.tasks[task_name], self.splits[task_name]
        try:
            plan: CallPlan = tuner.plan(task=task, train=splits["train"], dev=splits["dev"])
        except BenchError:
            raise
        except Exception as exc:  # e.g. a hyperparameter out of the range the method supports
            raise BenchError(
                f"method {tuner.name} cannot plan task {task_name} with "
                f"{tuner.hyperparameters()} ({type(exc).__name__}: {_one_line(exc)})"
            ) from exc
        # Upper bounds, not means: the longest test prompt, and a method's representative
        # prompt plus the spread of the test inputs' lengths (its example may be a short one).
        instruction = task.instructions[0] if task.instructions else None
        lengths = [
            self.backend.count_tokens(task.render(ex, instruction=instruction))
            for ex in splits["test"]
        ] or [0]
        spread = max(lengths) - min(lengths)
        if plan.eval_prompt is not None:
            eval_prompt_tokens = self.backend.count_tokens(plan.eval_prompt) + spread
        else:
            eval_prompt_tokens = max(lengths)
        tune_prompt_tokens = (
            self.backend.count_tokens(plan.tune_prompt) + spread
            if plan.tune_prompt
            else eval_prompt_tokens
        )
        n_test = len(splits["test"])
        eval_calls = round(n_test * plan.eval_calls_per_example)
        tune_calls = plan.calls + plan.proposer_calls
        prompt_tokens = plan.calls * tune_prompt_tokens + eval_calls * eval_prompt_tokens
        # Upper bound: every sample runs to max_tokens.
        completion_tokens = task.max_tokens * (
            max(plan.samples, plan.calls) + round(n_test * plan.eval_samples_per_example)
        )
        # A proposer call's meta-prompt grows with what the search found and its answer has
        # its own limit: where the proposer's context window is known, that bounds both
        # (counted as completion tokens, the dearer kind, for the dollar bound).
        window = self.proposer_backend.context_length if self.proposer_backend else None
        if window:
            completion_tokens += max(plan.proposer_samples, plan.proposer_calls) * window
        else:
            prompt_tokens += plan.proposer_calls * tune_prompt_tokens
            completion_tokens += plan.proposer_calls * task.max_tokens
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
        if cfg.run_id is not None:
            check_run_id(cfg.run_id)
        if cfg.resume:
            run_id = cfg.run_id or _latest_run(cfg.results_dir)
            store = RunStore(cfg.results_dir / run_id)
            if not store.exists():
                raise BenchError(f"--resume: no run {run_id!r} under {cfg.results_dir}")
            return store
        _check_writable(cfg.results_dir)
        run_id = cfg.run_id or new_run_id()
        store = RunStore(cfg.results_dir / run_id)
        if store.exists():
            raise BenchError(
                f"run {run_id!r} already exists under {cfg.results_dir}; pass --resume "
                "to continue it or choose another --run-id"
            )
        return store

    def describe_config(self) -> dict[str, Any]:
        """`RunConfig.describe` with each open backend's resolved prompt format in its
        options (a format left to the backend's default is recorded as resolved)."""
        described = self.config.describe()
        opened = (("backend", self.backend), ("proposer", self.proposer_backend))
        for role, backend in opened:
            spec = described.get(role)
            if isinstance(spec, dict) and backend is not None:
                spec["options"] = {**spec["options"], "prompt_format": backend.prompt_format}
        return described

    def _with_probe_note(self, need: str) -> str:
        """A missing capability (``a or b`` for alternatives), with what the endpoint's
        probe found against it."""
        assert self.backend is not None
        options = need.split(" or ")
        found = [(o, why) for o in options if (why := self.backend.why_not(o)) is not None]
        if not found:
            return need
        said = "; ".join(why if len(options) == 1 else f"{o}: {why}" for o, why in found)
        return f"{need}; the endpoint's probe found: {said}"

    def endpoint_records(self) -> dict[str, Any]:
        """The black box's (and a separate proposer's) `Backend.endpoint_record`."""
        assert self.backend is not None
        records = {"black_box": self.backend.endpoint_record()}
        if self.proposer_backend is not None and self.proposer_backend is not self.backend:
            records["proposer"] = self.proposer_backend.endpoint_record()
        return records

    def _check_resume(self, store: RunStore) -> None:
        """A resumed run must have been started with the same settings (after the backends
        are open: the prompt format a backend resolves is one of them)."""
        if not self.config.resume:
            return
        stored = store.read_spec().get("config")
        current = self.describe_config()
        if isinstance(stored, dict):
            # Runs from before the option used what the backend resolves by default.
            for role in ("backend", "proposer"):
                spec, now = stored.get(role), current.get(role)
                if isinstance(spec, dict) and isinstance(now, dict):
                    options = spec.get("options")
                    if isinstance(options, dict) and "prompt_format" not in options:
                        options["prompt_format"] = now["options"].get("prompt_format")
        if _comparable(stored) != _comparable(current):
            raise BenchError(
                f"--resume: run {store.run_id!r} was started with other settings; "
                "resume with the same flags or start a new run"
            )

    # -- spending caps --------------------------------------------------------------------

    def finished(self, plan: Plan) -> dict[str, CellRecord]:
        """Records of a resumed run that resume skips (ok or refused)."""
        if not (self.config.resume and plan.store.exists()):
            return {}
        records = {r.cell_id: r for r in plan.store.cells()}
        return {cid: r for cid, r in records.items() if r.status in ("ok", "refused")}

    def _spent(self, plan: Plan) -> Spend:
        """What the run's records on disk billed (all of them: failed cells paid too)."""
        spent = Spend()
        if self.config.resume and plan.store.exists():
            for record in plan.store.cells():
                part = Spend.of_summary(record.usage)
                spent.add(part.calls, part.tokens, part.usd)
        return spent

    def check_limits(self, plan: Plan) -> None:
        """Refuse, before anything is spent, a grid whose projected spend is over a cap, or
        a dollar cap on a model without a price. The message shows the projection."""
        cfg = self.config
        if not (cfg.limits.active or cfg.cell_limits.active):
            return
        for scope, limits in (("run", cfg.limits), ("cell", cfg.cell_limits)):
            if limits.usd is None:
                continue
            models = {b.model for b in (self.backend, self.proposer_backend) if b is not None}
            for model in sorted(models):
                if not self.prices.has(model):
                    raise BenchError(
                        f"{LIMIT_FLAGS[scope]['usd']}: model {model!r} has no price in price "
                        f"table {self.prices.version}, so a dollar cap cannot be enforced; give "
                        "its price in a --prices file, or cap tokens or calls instead"
                    )
        done = self.finished(plan)
        todo = [
            c for c in plan.cells if c.runnable and c.projection is not None and c.cid not in done
        ]
        for cell in todo:
            assert cell.projection is not None
            over = _over(cell.projection, cfg.cell_limits, Spend(), "cell")
            if over:
                raise BenchError(
                    f"cell {cell.cid} is projected to spend {_describe(cell.projection)}, over "
                    f"{over}; raise the cap or shrink the cell (--limit, --budget, --set)"
                )
        totals = Plan(todo, plan.store).totals()
        spent = self._spent(plan)
        over = _over(totals, cfg.limits, spent, "run")
        if over:
            already = (
                f" on top of {spent.calls:,} calls, {spent.tokens:,} tokens, ${spent.usd:.4f} "
                "already spent"
                if spent.calls
                else ""
            )
            raise BenchError(
                f"the run is projected to spend {_describe(totals)} in {len(todo)} cells"
                f"{already}, over {over}; raise the cap or shrink the grid "
                "(--limit, --seeds, --budget, --methods, --tasks)"
            )

    # -- running --------------------------------------------------------------------------

    def run(self, plan: Plan) -> list[CellRecord]:
        """Run every cell of ``plan`` not already finished; returns all records.

        Raises:
            BenchError: a projected spend over a cap (nothing is started), or another
                process holding the run.
            BackendUnavailable: the endpoint went away; finished cells are kept.
        """
        self.check_limits(plan)
        store = plan.store
        with store.lock():
            if not self.config.resume and store.exists():
                raise BenchError(
                    f"run {store.run_id!r} was just created by another process; "
                    "choose another --run-id"
                )
            store.remove_temporary_files()
            # The marker first: training outcomes and evaluated batches may come before any
            # answer, and `bench cache clear` deletes nothing in an unmarked folder.
            self.cache.mark()
            if not store.exists():
                store.write_spec(
                    {
                        "run_id": store.run_id,
                        "config": self.describe_config(),
                        "limits": {
                            "run": self.config.limits.describe(),
                            "cell": self.config.cell_limits.describe(),
                        },
                        "provenance": provenance(),
                        # what each endpoint was found to offer (the plan follows it)
                        "endpoints": self.endpoint_records(),
                        "cells": [c.cid for c in plan.cells],
                    }
                )
            guard = SpendingGuard(
                self.prices,
                run=self.config.limits,
                cell=self.config.cell_limits,
                run_spent=self._spent(plan),
            )
            from benchmarks.executors import make_executor

            # The executor runs the cells not finished yet (in this process, or on Ray).
            return make_executor(self.config).run(self, plan, guard)

    def _base(self, cell: PlannedCell) -> dict[str, Any]:
        """The fields every record of ``cell`` has, whatever its status."""
        cfg = self.config
        return {
            "cell_id": cell.cid,
            "method": cell.method,
            "task": cell.task,
            "backend": cfg.backend.name,
            "model": cfg.backend.model,
            "prompt_format": getattr(self.backend, "prompt_format", None),
            "system_prompt": getattr(self.backend, "system_prompt", None),
            "seed": cell.seed,
            "budget": cfg.budget,
            "requires": cell.requires,
        }

    def fail_cell(self, cell: PlannedCell, store: RunStore, reason: str) -> CellRecord:
        """Write a ``failed`` record for a cell that could not run at all (e.g. its worker
        kept dying), as `run_cell` does for a cell whose method raised."""
        return self._failed(
            store, self._base(cell), UsageMeter(self.prices), self.make_tuner(cell.method), reason
        )

    def run_cell(self, cell: PlannedCell, store: RunStore, guard: SpendingGuard) -> CellRecord:
        """Run one cell and write its record (refused, ok, failed or budget_exhausted).

        Raises:
            BackendUnavailable: the endpoint went away; this cell wrote nothing.
        """
        base = self._base(cell)
        if cell.missing:
            record = CellRecord(**base, status="refused", reason=f"needs {', '.join(cell.missing)}")
            store.write_cell(record)
            self.on_event("cell_refused", {"cell": cell.cid, "reason": record.reason})
            return record
        assert self.backend is not None and self.proposer_backend is not None
        task, splits = self.tasks[cell.task], self.splits[cell.task]
        meter = UsageMeter(self.prices)
        guard.start_cell()
        black_box = MeteredBlackBox(
            self.backend, meter=meter, role="task", cache=self.cache, guard=guard
        )
        proposer = MeteredBlackBox(
            self.proposer_backend, meter=meter, role="proposer", cache=self.cache, guard=guard
        )
        # Whatever an interrupted earlier attempt left of this cell's artifacts goes.
        shutil.rmtree(store.artifact_dir(cell.cid), ignore_errors=True)
        tuner = self.make_tuner(cell.method)
        seed_globals(cell.seed)
        context = TuneContext(
            seed=cell.seed,
            compute=meter,
            device=meter.device,
            on_event=lambda event, fields: self.on_event(event, {"cell": cell.cid, **fields}),
            workdir=store.artifact_dir(cell.cid),
            resolve_model=resolve_model_dir,
            training_cache=self.training_cache,
            disclosures=self.harness_disclosures(cell.method, tuner),
        )
        # Records and the trace carry what the tuner disclosed and sent, whatever the outcome.
        base = {**base, "disclosures": context.disclosures}
        store.clear_trace(cell.cid)
        self.on_event("cell_start", {"cell": cell.cid, "n_eval": len(splits["test"])})
        progress = PhaseProgress(self.on_event, cell.cid, meter)
        meter.on_record = progress.tick
        wall: dict[str, float] = {}
        rows: list[dict[str, Any]] = []
        phase = "tune"
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
            progress.emit("tune", done=True)
            policy.save(store.artifact_dir(cell.cid))
            if guard.tripped is not None:  # the method caught the refusal and went on
                raise guard.tripped
            phase = meter.phase = "eval"
            policy.compute = meter
            t0 = time.perf_counter()
            memo_key = (
                functools.partial(
                    self.eval_memo.key,
                    policy=policy,
                    policy_digest=tree_digest(store.artifact_dir(cell.cid)),
                    task=task,
                    task_hash=task.fingerprint(),
                    backend_identity=self.backend.identity(),
                )
                if self.eval_memo.enabled
                else None
            )
            for batch in _batches(splits["test"], EVAL_BATCH):
                key = memo_key(examples=batch) if memo_key is not None else None
                predictions = self.eval_memo.get(key, meter) if key is not None else None
                if predictions is None:
                    calls, computes = len(meter.calls), len(meter.computes)
                    try:
                        predictions = list(policy.predict(batch, task=task, backend=black_box))
                    except BudgetExhausted:
                        # The calls that fitted were sent and cached: keep their answers.
                        done = self._predict_each(policy, batch, task, black_box)
                        rows += _rows(task, batch, done)
                        raise
                    if len(predictions) != len(batch):
                        raise BenchError(
                            f"{cell.method}: {len(predictions)} predictions for "
                            f"{len(batch)} examples"
                        )
                    if key is not None:
                        spent = meter.calls[calls:], meter.computes[computes:]
                        self.eval_memo.put(key, predictions, *spent, batch)
                rows += _rows(task, batch, predictions)
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
            progress.emit("eval", done=True)
            if guard.tripped is not None:
                raise guard.tripped
        except BudgetExhausted as exc:
            wall[phase] = round(time.perf_counter() - t0, 3)
            store.write_trace(cell.cid, cell.method, context.trace)
            return self._exhausted(store, base, meter, tuner, task, exc, phase, rows, wall)
        except BackendUnavailable:
            raise  # stops the run; this cell writes nothing and is re-run by --resume
        except BenchError as exc:
            store.write_trace(cell.cid, cell.method, context.trace)
            return self._failed(store, base, meter, tuner, f"{exc}")
        except Exception as exc:  # a method bug fails its cell, not the run
            self.on_event(
                "cell_traceback",
                {"cell": cell.cid, "traceback": self._scrub(traceback.format_exc())},
            )
            store.write_trace(cell.cid, cell.method, context.trace)
            return self._failed(store, base, meter, tuner, f"{type(exc).__name__}: {exc}")
        record = _evaluated_record(store, base, meter, tuner, task, rows, wall, status="ok")
        store.write_trace(cell.cid, cell.method, context.trace)
        store.write_cell(record, rows)
        self.on_event(
            "cell_done",
            {
                "cell": cell.cid,
                "accuracy": record.accuracy,
                "tokens": total_tokens(record.usage, "billed"),
                "warnings": record.warnings,
            },
        )
        return record

    def _predict_each(
        self, policy: AdaptedPolicy, batch: Sequence[Example], task: Task, black_box: BlackBox
    ) -> list[Prediction]:
        """Predictions for the leading examples of ``batch`` that the cache (holding what was
        sent before a cap stopped the batch) or the remaining budget can answer."""
        if not self.cache.enabled:
            return []  # without a cache, answering again would pay twice
        out: list[Prediction] = []
        for ex in batch:
            try:
                out += policy.predict([ex], task=task, backend=black_box)
            except BudgetExhausted:
                break
        return out

    def _secrets(self) -> list[str]:
        found: list[str] = []
        for backend in (self.backend, self.proposer_backend):
            values = getattr(backend, "secret_values", None)
            if callable(values):
                found += [v for v in values() if v]
        return found

    def _scrub(self, text: str) -> str:
        """``text`` with any key a backend sends masked (defence in depth: backends mask
        their own messages, but a method's exception could quote anything)."""
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _exhausted(
        self,
        store: RunStore,
        base: dict[str, Any],
        meter: UsageMeter,
        tuner: BlackBoxTuner,
        task: Task,
        exc: BudgetExhausted,
        phase: str,
        rows: list[dict[str, Any]],
        wall: dict[str, float],
    ) -> CellRecord:
        n_test = len(self.splits[base["task"]]["test"])
        where = (
            "tuning" if phase == "tune" else f"evaluation, {len(rows)} of {n_test} examples done"
        )
        record = _evaluated_record(
            store,
            base,
            meter,
            tuner,
            task,
            rows,
            wall,
            status="budget_exhausted",
            reason=self._scrub(f"{exc} (stopped during {where})"),
        )
        store.write_cell(record, rows)
        self.on_event("cell_budget_exhausted", {"cell": base["cell_id"], "reason": record.reason})
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
            reason=self._scrub(_one_line(reason))[:500],
            usage=meter.summary(),
            hyperparameters=tuner.hyperparameters(),
            provenance=provenance(),
        )
        store.write_cell(record)
        self.on_event("cell_failed", {"cell": base["cell_id"], "reason": record.reason})
        return record


def _evaluated_record(
    store: RunStore,
    base: dict[str, Any],
    meter: UsageMeter,
    tuner: BlackBoxTuner,
    task: Task,
    rows: Sequence[dict[str, Any]],
    wall: dict[str, float],
    **fields: Any,
) -> CellRecord:
    """The record of a cell that reached evaluation (finished, or stopped by a cap), its
    accuracy the mean score of the rows it has (None for none), with the bytes its saved
    artifacts take."""
    return CellRecord(
        **base,
        **fields,
        accuracy=sum(r["score"] for r in rows) / len(rows) if rows else None,
        n_eval=len(rows),
        usage=meter.summary(),
        hyperparameters=tuner.hyperparameters(),
        variant=getattr(tuner, "variant", None),
        # A baseline that is one answer by design (majority) is not a collapsed method.
        warnings=[] if tuner.one_answer_by_design else answer_warnings(rows),
        wall_s=wall,
        task_hash=task.fingerprint(),
        provenance=provenance(),
        artifact_bytes=directory_bytes(store.artifact_dir(base["cell_id"])),
    )


def _rows(
    task: Task, batch: Sequence[Example], predictions: Sequence[Prediction]
) -> list[dict[str, Any]]:
    """Prediction rows for the first ``len(predictions)`` examples of ``batch``."""
    return [
        {
            "id": ex.id,
            "output": pred.output,
            "answer": pred.answer,
            "target": ex.target,
            "score": task.score(pred.answer, ex),
            **({"extra": dict(pred.extra)} if pred.extra else {}),
            **({"prompt": pred.prompt} if pred.prompt is not None else {}),
        }
        for ex, pred in zip(batch[: len(predictions)], predictions, strict=True)
    ]


def _warn_overlap(name: str, splits: dict[str, list[Example]]) -> None:
    """Warn when test examples also appear in train or dev (same input, whitespace and case
    aside): a tuner may have seen them, so accuracy on them is not a test."""

    def key(ex: Example) -> str:
        return " ".join(ex.input.split()).casefold()

    seen = {split: {key(ex) for ex in splits[split]} for split in ("train", "dev")}
    test = splits["test"]
    found = {split: sum(key(ex) in keys for ex in test) for split, keys in seen.items()}
    leaked = sum(any(key(ex) in keys for keys in seen.values()) for ex in test)
    if leaked:
        where = ", ".join(f"{n} in {split}" for split, n in found.items() if n)
        logger.warning(
            "task %s: %d of %d test examples are also in train or dev (%s); their accuracy "
            "is not a held-out measure",
            name,
            leaked,
            len(test),
            where,
        )


class PhaseProgress:
    """A cell phase's calls and billed tokens so far, sent as ``phase_progress`` events at
    most every `PROGRESS_EVERY_S` while calls are recorded, and once as the phase ends."""

    def __init__(self, on_event: EventSink, cell: str, meter: UsageMeter):
        self.on_event, self.cell, self.meter = on_event, cell, meter
        self._lock = threading.Lock()
        self._last = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < PROGRESS_EVERY_S:
                return
            self._last = now
        self.emit(self.meter.phase, done=False)

    def emit(self, phase: str, *, done: bool) -> None:
        calls, tokens = self.meter.progress(phase)
        fields = {"cell": self.cell, "phase": phase, "calls": calls, "tokens": tokens}
        self.on_event("phase_progress", {**fields, "done": done})


def _batches(items: Sequence[Example], size: int) -> Iterator[Sequence[Example]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _check_writable(results_dir: Path) -> None:
    """Refuse, while planning, a results folder that cannot be written: a folder made and
    removed again in its nearest existing ancestor shows it, leaving nothing behind."""
    existing = results_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BenchError(f"--results-dir {results_dir}: {existing} is not a directory")
    try:
        Path(tempfile.mkdtemp(prefix=".bench-probe-", dir=existing)).rmdir()
    except OSError as exc:
        raise BenchError(
            f"--results-dir {results_dir}: cannot write there ({exc.strerror or exc}); "
            "choose a writable folder"
        ) from None


def _latest_run(results_dir: Path) -> str:
    """The most recently started run (by its run.json), whatever its name."""
    specs = sorted(results_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    if not specs:
        raise BenchError(f"--resume: no runs under {results_dir}")
    return specs[-1].parent.name


def _one_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _comparable(config: Any) -> Any:
    """A run config without the backend options that do not change results."""
    if not isinstance(config, dict):
        return config
    out = dict(config)
    for role in ("backend", "proposer"):
        spec = out.get(role)
        if isinstance(spec, dict) and isinstance(spec.get("options"), dict):
            options = {k: v for k, v in spec["options"].items() if k not in OPERATIONAL_OPTIONS}
            out[role] = {**spec, "options": options}
    return out


def _describe(p: Projection) -> str:
    usd = "unpriced" if p.usd is None else f"${p.usd:,.4f}"
    return f"up to {p.tune_calls + p.eval_calls:,} calls, {p.tokens:,} tokens, {usd}"


def _over(p: Projection, limits: Limits, spent: Spend, scope: str) -> str | None:
    """The first cap that ``spent`` plus projection ``p`` passes, as "--flag CAP"."""
    flags = LIMIT_FLAGS[scope]
    if limits.calls is not None and spent.calls + p.tune_calls + p.eval_calls > limits.calls:
        return f"{flags['calls']} {limits.calls:g}"
    if limits.tokens is not None and spent.tokens + p.tokens > limits.tokens:
        return f"{flags['tokens']} {limits.tokens:g}"
    if limits.usd is not None and p.usd is not None and spent.usd + p.usd > limits.usd:
        return f"{flags['usd']} {limits.usd:g}"
    return None


# -- hyperparameter checks ----------------------------------------------------------------


def check_hyperparameters(cls: type[BlackBoxTuner], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` checked against the types of ``cls.Config``'s fields: a value of the
    wrong type, or a non-finite number, is a one-line `BenchError` naming the field and the
    type it takes. Lists become tuples where the field is a tuple; ints become floats where
    it is a float. Unknown keys are left to the tuner (which lists the valid ones)."""
    try:
        hints = typing.get_type_hints(cls.Config)
    except Exception:  # unresolvable annotations: nothing to check against
        return dict(overrides)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in fields or key not in hints:
            out[key] = value
            continue
        try:
            out[key] = _coerce(value, hints[key])
        except TypeError as exc:
            raise BenchError(
                f"--set {cls.name}.{key}={_short(value)}: {exc}; expected {_type_name(hints[key])}"
            ) from None
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as a ``hint``, or TypeError."""
    if hint is Any or hint is object:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            try:
                return _coerce(value, arg)
            except TypeError:
                continue
        raise TypeError(f"{type(value).__name__} is not allowed")
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise TypeError(f"{_short(value)} is not one of {', '.join(map(repr, args))}")
    if hint is type(None):
        if value is None:
            return None
        raise TypeError("expected null")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"{type(value).__name__} is not a boolean")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(f"{type(value).__name__} is not an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise TypeError("not a finite number")
            return float(value)
        raise TypeError(f"{type(value).__name__} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"{type(value).__name__} is not a string")
    container = origin or hint
    if container in (tuple, list, Sequence, set, frozenset) or (
        isinstance(container, type) and issubclass(container, (list, tuple))
    ):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{type(value).__name__} is not a list")
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise TypeError(f"expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True))
        item = args[0] if args else Any
        items = [_coerce(v, item) for v in value]
        return tuple(items) if container in (tuple, Sequence) else items
    if container in (dict, Mapping):
        if not isinstance(value, dict):
            raise TypeError(f"{type(value).__name__} is not a mapping")
        return value
    return value  # a type this check does not know: left to the method


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")
