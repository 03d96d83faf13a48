"""Executors: how a run's cells are run, once `benchmarks.runner.Runner` has planned them.

`LocalExecutor` (``--executor local``, the default) runs them one after another in this
process. `RayExecutor` (``--executor ray [--ray-address ADDR]``, needs the ``ray`` extra) runs
each cell as a Ray task, so a grid spreads over the cores of one machine or the nodes of a
cluster. Either way a cell is run by the same `Runner.run_cell` and writes its record through
the same `RunStore`, so a Ray run ends with the records a local run of the same grid and seeds
writes (timings and cache hits aside).

How a Ray run works:

- The driver (``bench run``) plans as usual (names, backends, tasks, projection, caps), holds
  the run lock and writes ``run.json``; it then puts what a worker needs in the object store
  once: the `RunConfig` (its paths made absolute), the loaded tasks and splits (so workers
  need no data files), the price table and the method classes (so plugin methods defined
  in a script reach the workers too).
- A worker process re-creates a `Runner` from that and keeps it for the next cells of the
  same run. Backends: a ``zoo`` backend whose server the driver started is reached at the
  driver's URL when the worker is on the driver's node (one copy of the model; the server
  micro-batches the workers' requests); on another node, or through Ray Client
  (``ray://``), the worker starts its own server from the same weights. Other backends are
  opened from their spec (an ``openai`` endpoint must be reachable from every node; ``hf``
  loads the model in each worker).
- Each cell declares its resources: one CPU, and one GPU when its method runs white-box
  models (`BlackBoxTuner.uses_white_box`) and the cluster has GPUs; other cells see no GPU,
  and a GPU cell's worker exits after it (freeing what torch cached on the device).
- A worker that dies (killed, out of memory, node lost) is replaced and its cell retried, up
  to ``max_retries`` times; a retry starts the cell afresh and overwrites whatever the dead
  attempt wrote, so no record is duplicated. A cell still without a record after that, or
  whose worker could not be set up, gets a ``failed`` record; a method that raises fails its
  cell in the worker, as in a local run.
- Run caps (``--max-usd/--max-tokens/--max-calls``) are kept by one small Ray actor that
  every worker asks before sending (cell caps are checked in the worker); an endpoint that
  goes away stops the run (exit 3, resumable), and Ctrl-C cancels the cells in flight.
- The response cache is one file per entry written by rename, so workers share it safely.
  On a multi-node cluster the results and cache directories must be on a filesystem shared
  by all nodes at the same path, and the project installed on every node.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from benchmarks.backends.base import Backend, make_backend
from benchmarks.errors import BackendUnavailable, BudgetExhausted
from benchmarks.metering import PriceTable, Reservation, Spend, SpendingGuard
from benchmarks.results import CellRecord, RunStore
from methods.registry import BenchError

if TYPE_CHECKING:
    from benchmarks.runner import BackendSpec, Plan, PlannedCell, RunConfig, Runner
    from benchmarks.tasks.base import Task
    from methods.base import BlackBoxTuner, Example

EXECUTORS = ("local", "ray")
#: times a cell is retried after its worker died, before it is recorded as failed.
RAY_MAX_RETRIES = 3
RAY_EXTRA = "pip install 'blackbox-bench[ray]'"


class Executor(Protocol):
    """Runs the cells of a planned run that are not finished yet."""

    def run(self, runner: Runner, plan: Plan, guard: SpendingGuard) -> list[CellRecord]:
        """Run ``plan``'s unfinished cells with ``runner`` (which holds the run lock), and
        return every cell's record in plan order (finished ones of a resumed run included).

        Raises:
            BackendUnavailable: the endpoint went away; finished cells are kept.
        """
        ...


def check_executor(name: str) -> None:
    """Raise a one-line `BenchError` for an unknown executor, or ``ray`` without Ray."""
    if name not in EXECUTORS:
        raise BenchError(f"unknown executor {name!r}; valid: {', '.join(EXECUTORS)}")
    if name == "ray":
        import_ray()


def make_executor(config: RunConfig) -> Executor:
    """The executor ``config`` asks for."""
    check_executor(config.executor)
    if config.executor == "ray":
        return RayExecutor(config.ray_address)
    return LocalExecutor()


def stopped(
    exc: BackendUnavailable, cell: PlannedCell, records: Sequence[CellRecord], plan: Plan
) -> BackendUnavailable:
    """``exc`` with what was kept and how to continue, for the command line."""
    finished = sum(r.status in ("ok", "refused") for r in records)
    store = plan.store
    return BackendUnavailable(
        f"{exc}. Stopped during cell {cell.cid}; {finished} of {len(plan.cells)} cells are "
        f"finished and kept in {store.root}; continue with --resume --run-id {store.run_id}"
    )


class LocalExecutor:
    """The cells one after another, in plan order, in this process."""

    def run(self, runner: Runner, plan: Plan, guard: SpendingGuard) -> list[CellRecord]:
        done = runner.finished(plan)
        records: list[CellRecord] = []
        for cell in plan.cells:
            if cell.cid in done:
                runner.on_event("cell_skipped", {"cell": cell.cid})
                records.append(done[cell.cid])
                continue
            try:
                record = runner.run_cell(cell, plan.store, guard)
            except BackendUnavailable as exc:
                raise stopped(exc, cell, records, plan) from None
            records.append(record)
        return records


# -- Ray --------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ``ray`` module, or a one-line `BenchError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError(
            f"--executor ray needs Ray, which is not installed; install it with {RAY_EXTRA}, "
            "or use --executor local"
        ) from None
    return ray


@dataclass
class _RunShare:
    """What every worker of one run needs, put in the object store once."""

    key: str  # one per run: a worker keeps its Runner while the key stays the same
    config: RunConfig
    store_root: Path
    tasks: dict[str, Task]
    splits: dict[str, dict[str, list[Example]]]
    prices: PriceTable
    methods: dict[str, type[BlackBoxTuner]]
    #: role ("backend", "proposer") -> URL of the zoo server the driver started.
    endpoints: dict[str, str | None]
    #: the driver's Ray node, where its loopback servers can be reached; None via Ray Client.
    driver_node: str | None


@dataclass
class _CellOutcome:
    """What a worker sends back for one cell."""

    record: CellRecord | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    #: the endpoint went away: the run stops (the message says why).
    unavailable: str | None = None
    #: the worker could not be set up for the cell (one line).
    error: str | None = None


class RayExecutor:
    """Each cell a Ray task; see the module docstring.

    Args:
        address: the cluster (``auto``, ``ray://HOST:10001``); None starts a local one (or
            joins the one ``$RAY_ADDRESS`` names), unless Ray is already initialized.
        max_retries: retries of a cell whose worker died (default `RAY_MAX_RETRIES`).
    """

    def __init__(self, address: str | None = None, *, max_retries: int | None = None):
        self.address = address
        self.max_retries = RAY_MAX_RETRIES if max_retries is None else max_retries

    def run(self, runner: Runner, plan: Plan, guard: SpendingGuard) -> list[CellRecord]:
        ray = import_ray()
        started = not ray.is_initialized()
        if started:
            connect_ray(ray, self.address)
        try:
            return self._run(ray, runner, plan, guard)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, runner: Runner, plan: Plan, guard: SpendingGuard) -> list[CellRecord]:
        from methods.base import get_method

        done = runner.finished(plan)
        records: dict[str, CellRecord] = {}
        todo: list[PlannedCell] = []
        for cell in plan.cells:
            if cell.cid in done:
                runner.on_event("cell_skipped", {"cell": cell.cid})
                records[cell.cid] = done[cell.cid]
            elif cell.missing:  # a refusal only writes its record: no need for a worker
                records[cell.cid] = runner.run_cell(cell, plan.store, guard)
            else:
                todo.append(cell)
        if todo:
            share = ray.put(_share(ray, runner, plan))
            ledger = None
            if runner.config.limits.active:
                ledger = (
                    ray.remote(num_cpus=0)(_RunLedger)
                    .options(max_restarts=0)
                    .remote(runner.prices, runner.config.limits, guard.spent["run"])
                )
            cluster_gpus = float(ray.cluster_resources().get("GPU", 0))
            # Declared at ray.remote, a GPU makes the worker exit after its cell (Ray's
            # max_calls=1), so the GPU memory torch keeps cached is freed for the next cell.
            # Ray leaves every GPU visible to a task that asked for none: hide them, so such a
            # cell runs on CPU as declared (and its workers are never reused for a GPU cell).
            # Only a dead worker is retried: a method's error already fails its cell.
            hide_gpus = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}
            tasks = {
                gpus: ray.remote(
                    num_cpus=1,
                    num_gpus=gpus,
                    max_retries=self.max_retries,
                    retry_exceptions=False,
                    **({} if gpus else {"runtime_env": hide_gpus}),
                )(_run_cell_job)
                for gpus in (0, 1)
            }
            pending: dict[Any, PlannedCell] = {}
            for cell in todo:
                gpus = gpus_for(get_method(cell.method), cluster_gpus)
                name = f"bench-cell:{cell.cid}"
                pending[tasks[gpus].options(name=name).remote(share, cell, ledger)] = cell
            try:
                self._collect(ray, runner, plan, pending, records)
            finally:
                for ref in pending:  # Ctrl-C, or the endpoint went away: stop the rest
                    ray.cancel(ref, force=True)
                if ledger is not None:
                    ray.kill(ledger)
        return [records[c.cid] for c in plan.cells]

    def _collect(
        self,
        ray: Any,
        runner: Runner,
        plan: Plan,
        pending: dict[Any, PlannedCell],
        records: dict[str, CellRecord],
    ) -> None:
        """Take each cell's outcome as it finishes, until none is pending."""
        from ray.exceptions import RayError

        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(ref)
            try:
                outcome: _CellOutcome = ray.get(ref)
            except RayError as exc:  # the worker kept dying, or the task could not run at all
                if _is_worker_death(exc):
                    n = self.max_retries + 1
                    attempts = f"{n} attempt{'s' if n > 1 else ''}"
                    reason = f"the worker died ({attempts}): {_ray_error_line(exc)}"
                else:
                    reason = f"worker failed: {_ray_error_line(exc)}"
                records[cell.cid] = runner.fail_cell(cell, plan.store, reason)
                continue
            for event, fields in outcome.events:
                runner.on_event(event, fields)
            if outcome.unavailable is not None:
                finished = [records[c.cid] for c in plan.cells if c.cid in records]
                raise stopped(BackendUnavailable(outcome.unavailable), cell, finished, plan)
            if outcome.error is not None:
                records[cell.cid] = runner.fail_cell(cell, plan.store, outcome.error)
            else:
                assert outcome.record is not None
                records[cell.cid] = outcome.record


def gpus_for(method: type[BlackBoxTuner], cluster_gpus: float) -> int:
    """GPUs a cell of ``method`` asks for: one if it runs white-box models and the cluster
    has a GPU, else none (it then runs on CPU, as it would on a machine without one)."""
    return 1 if method.uses_white_box and cluster_gpus >= 1 else 0


def connect_ray(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address``; with None, the one ``$RAY_ADDRESS`` names (Ray's
    convention) or else a new local cluster, never one a past ``ray start`` left behind.

    Raises:
        BenchError: the cluster cannot be started or reached (one line).
    """
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if target == "local":
        # Started here, for this run: no dashboard (it needs ray[default] and a port).
        options["include_dashboard"] = False
    try:
        ray.init(address=target, **options)
    except Exception as exc:  # ConnectionError, ValueError, ...: all mean "no cluster"
        where = "a local Ray cluster" if target == "local" else f"Ray cluster {target}"
        raise BenchError(f"{where}: cannot start or connect ({_first_line(exc)})") from None


def _share(ray: Any, runner: Runner, plan: Plan) -> _RunShare:
    from benchmarks.backends.zoo import ZooBackend
    from methods.base import get_method

    cfg = runner.config
    absolute = dataclasses.replace(
        cfg,
        results_dir=cfg.results_dir.resolve(),
        cache_dir=cfg.cache_dir.resolve(),
        data_dir=cfg.data_dir.resolve() if cfg.data_dir else None,
        prices=cfg.prices.resolve() if cfg.prices else None,
    )
    endpoints: dict[str, str | None] = {}
    for role, backend in (("backend", runner.backend), ("proposer", runner.proposer_backend)):
        if isinstance(backend, ZooBackend):
            backend.start()  # workers share the driver's server, so it must be up before them
            endpoints[role] = backend.base_url
        else:
            endpoints[role] = None
    from ray.util.client import ray as ray_client

    client_mode = ray_client.is_connected()
    return _RunShare(
        key=uuid.uuid4().hex,
        config=absolute,
        store_root=plan.store.root.resolve(),
        tasks=dict(runner.tasks),
        splits=dict(runner.splits),
        prices=runner.prices,
        methods={name: get_method(name) for name in cfg.methods},
        endpoints=endpoints,
        driver_node=None if client_mode else ray.get_runtime_context().get_node_id(),
    )


def _is_worker_death(exc: BaseException) -> bool:
    from ray.exceptions import NodeDiedError, OutOfMemoryError, WorkerCrashedError

    return isinstance(exc, (WorkerCrashedError, OutOfMemoryError, NodeDiedError))


def _ray_error_line(exc: BaseException) -> str:
    """The first meaningful line of a Ray error (they start with a header line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- worker side ------------------------------------------------------------------------------

#: the Runner this worker process keeps for the run it last served: (share key, runner).
_WORKER_RUNNER: tuple[str, Runner] | None = None


def _run_cell_job(share: _RunShare, cell: PlannedCell, ledger: Any) -> _CellOutcome:
    """One cell in a Ray worker: the body of the Ray task."""
    try:
        runner = _worker_runner(share)
    except BackendUnavailable as exc:
        return _CellOutcome(unavailable=str(exc))
    except Exception as exc:  # e.g. an endpoint this node cannot reach
        return _CellOutcome(error=f"worker set-up: {type(exc).__name__}: {_first_line(exc)}")
    events: list[tuple[str, dict[str, Any]]] = []
    runner.on_event = lambda event, fields: events.append((event, dict(fields)))
    guard = _SharedRunGuard(share.prices, cell=share.config.cell_limits, ledger=ledger)
    try:
        record = runner.run_cell(cell, RunStore(share.store_root), guard)
    except BackendUnavailable as exc:
        return _CellOutcome(events=events, unavailable=str(exc))
    return _CellOutcome(record=record, events=events)


def _worker_runner(share: _RunShare) -> Runner:
    """This process's Runner for ``share``'s run, made on its first cell."""
    global _WORKER_RUNNER
    if _WORKER_RUNNER is not None:
        key, runner = _WORKER_RUNNER
        if key == share.key:
            return runner
        _WORKER_RUNNER = None
        runner.__exit__(None, None, None)
    from benchmarks.runner import Runner
    from methods.base import methods

    for name, cls in share.methods.items():
        if name not in methods:  # defined in the driver's script: not importable here
            methods.add(name, cls)
    runner = Runner(share.config)
    try:
        runner.prices = share.prices
        runner.tasks, runner.splits = dict(share.tasks), dict(share.splits)
        local = _on_driver_node(share.driver_node)
        cfg = share.config
        runner.backend = runner._stack.enter_context(
            open_worker_backend(cfg.backend, share.endpoints["backend"] if local else None)
        )
        if cfg.proposer and cfg.proposer != cfg.backend:
            runner.proposer_backend = runner._stack.enter_context(
                open_worker_backend(cfg.proposer, share.endpoints["proposer"] if local else None)
            )
        else:
            runner.proposer_backend = runner.backend
    except BaseException:
        runner.__exit__(None, None, None)
        raise
    _WORKER_RUNNER = (share.key, runner)
    return runner


@atexit.register
def _close_worker_runner() -> None:
    """Close the kept Runner's backends (and any server it started) when the worker exits."""
    if _WORKER_RUNNER is not None:
        _WORKER_RUNNER[1].__exit__(None, None, None)


def _on_driver_node(driver_node: str | None) -> bool:
    if driver_node is None:
        return False
    import ray

    return bool(ray.get_runtime_context().get_node_id() == driver_node)


def open_worker_backend(spec: BackendSpec, url: str | None) -> Backend:
    """The backend ``spec`` names, ready, for a worker. With ``url`` (the driver's zoo server,
    reachable from this node) a ``zoo`` backend uses that server instead of starting its own:
    same model and cache identity, one copy of the weights.

    Raises:
        BackendUnavailable: the driver's server is not answering.
        BenchError: the backend cannot be opened or reached.
    """
    from benchmarks.backends.openai_backend import OpenAIBackend
    from benchmarks.backends.zoo import ZooBackend

    backend = make_backend(spec.name, model=spec.model, **spec.options)
    try:
        if url is not None and isinstance(backend, ZooBackend):
            backend.base_url = url
            try:
                # The HTTP check alone (reach the server, read its capabilities):
                # ZooBackend.check_ready would start a second server.
                OpenAIBackend.check_ready(backend)
            except BenchError as exc:
                raise BackendUnavailable(f"zoo backend: the driver's server: {exc}") from None
        else:
            backend.check_ready()
    except BaseException:
        backend.close()
        raise
    return backend


@dataclass(frozen=True)
class _PairedReservation(Reservation):
    """A call's reservation against the cell caps here and the run caps in the ledger."""

    run: Reservation | None = None


class _SharedRunGuard(SpendingGuard):
    """A worker's guard: cell caps here, run caps in the run's `_RunLedger` actor (shared by
    every worker), asked before each batch is sent and told what each call billed."""

    def __init__(self, prices: PriceTable, *, cell: Any, ledger: Any):
        super().__init__(prices, cell=cell)
        self.ledger = ledger

    @property
    def active(self) -> bool:
        return self.ledger is not None or super().active

    def reserve(
        self, model: str, calls: Sequence[tuple[int, int]]
    ) -> tuple[list[Reservation], BudgetExhausted | None]:
        admitted, refusal = super().reserve(model, calls)
        if self.ledger is None or not admitted:
            return admitted, refusal
        import ray

        granted, run_refusal = ray.get(
            self.ledger.reserve.remote(model, list(calls[: len(admitted)]))
        )
        for local in admitted[len(granted) :]:  # the run cap came first: take these back
            super().settle(local, answered=False)
        if run_refusal is not None:
            message, flag, scope = run_refusal
            refusal = BudgetExhausted(message, flag=flag, scope=scope)
            with self._lock:
                self.tripped = self.tripped or refusal
        paired: list[Reservation] = [
            _PairedReservation(r.model, r.tokens, r.usd, run=g)
            for r, g in zip(admitted, granted, strict=False)
        ]
        return paired, refusal

    def settle(
        self,
        reservation: Reservation,
        *,
        answered: bool,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        super().settle(
            reservation,
            answered=answered,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if isinstance(reservation, _PairedReservation) and self.ledger is not None:
            # Not waited for: an actor runs one caller's calls in order, so the next
            # reserve of this worker already sees it.
            self.ledger.settle.remote(reservation.run, answered, prompt_tokens, completion_tokens)


class _RunLedger:
    """The run caps' spending, kept in one Ray actor for all workers."""

    def __init__(self, prices: PriceTable, limits: Any, spent: Spend):
        self.guard = SpendingGuard(prices, run=limits, run_spent=Spend(**vars(spent)))

    def reserve(
        self, model: str, calls: list[tuple[int, int]]
    ) -> tuple[list[Reservation], tuple[str, str, str] | None]:
        admitted, refusal = self.guard.reserve(model, calls)
        # An exception with keyword-only fields does not survive pickling: send its parts.
        return admitted, None if refusal is None else (str(refusal), refusal.flag, refusal.scope)

    def settle(
        self, reservation: Reservation, answered: bool, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.guard.settle(
            reservation,
            answered=answered,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def spent(self) -> Spend:
        return self.guard.spent["run"]
