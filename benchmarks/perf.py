"""Performance figures, printed and never asserted (`bench perf ...`).

- `server_throughput` (`bench perf server`): the zoo server's generated tokens per second
  under concurrent requests, as a ratio to direct batched `generate()` in one process on the
  same machine. Both sides decode the same prompts greedily to the same length; the server
  side sends one request per prompt, all at once, through the official async `openai`
  client, so the figure includes HTTP, JSON and the server's micro-batching. The two sides
  take turns and the best of each is kept; CPU seconds per token (client plus server
  process) are reported too, a figure less at the mercy of other load on a shared machine.
- `time_suite` (`bench perf suite`): the wall time of a grid (default: every method on
  zoo-sentiment, light, seed 0, from an empty cache) and, per method, the shares spent
  waiting on the black box, in metered white-box compute, in the harness's work around calls
  (cache, metering) and in the rest (the method's own logic), from the cell records.
- `Replay` (`bench perf replay`): that grid run cold, then again from the warm cache; the
  replay's wall time as a ratio of the first run's.
- `ray_overhead` (`bench perf ray`): the wall time of one small grid run by the Ray executor
  over that of the local one (`benchmarks.executors`), with cold and with warm workers.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.engine import HFEngine
from benchmarks.server import ServerHandle, start_server
from benchmarks.tasks.base import get_task
from benchmarks.tiny import torch_threads


@dataclass(frozen=True)
class Throughput:
    """Tokens per second of each side, and CPU seconds per token where they were measured
    (the served side counts the client's and the server process's CPU)."""

    direct_tps: float
    server_tps: float
    concurrency: int
    max_tokens: int
    direct_cpu_per_token: float | None = None
    server_cpu_per_token: float | None = None
    tokens_per_answer: float | None = None
    prompts_per_request: int = 1

    @property
    def ratio(self) -> float:
        return self.server_tps / self.direct_tps

    def _requests(self) -> str:
        if self.prompts_per_request <= 1:
            return "requests"
        sent = -(-self.concurrency // self.prompts_per_request)
        return f"prompts in {sent} requests of up to {self.prompts_per_request}"

    def describe(self) -> str:
        text = (
            f"direct batched generate: {self.direct_tps:,.0f} tokens/s; server under "
            f"{self.concurrency} concurrent {self._requests()}: {self.server_tps:,.0f} "
            "tokens/s; "
            f"ratio {self.ratio:.2f} (max_tokens {self.max_tokens}"
        )
        if self.tokens_per_answer is not None:
            text += f", {self.tokens_per_answer:.1f} tokens per answer"
        text += ")"
        if self.direct_cpu_per_token and self.server_cpu_per_token:
            text += (
                f"; CPU per token: direct {1e3 * self.direct_cpu_per_token:.2f} ms, served "
                f"{1e3 * self.server_cpu_per_token:.2f} ms (client + server), ratio "
                f"{self.direct_cpu_per_token / self.server_cpu_per_token:.2f}"
            )
        return text


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _prompts(n: int, task_name: str = "zoo-hops") -> list[str]:
    task = get_task(task_name)
    return [task.render(ex, instruction=task.instructions[0]) for ex in task.examples("test")[:n]]


def server_throughput(
    model_dir: Path,
    *,
    concurrency: int = 32,
    max_tokens: int = 48,
    repeats: int = 5,
    task: str = "zoo-hops",
    prompts_per_request: int = 1,
) -> Throughput:
    """Best of ``repeats`` for each side, the two sides taking turns (so a burst of load
    from elsewhere on a shared machine hits both alike); each side is warmed up first.

    Args:
        model_dir: the model both sides load.
        concurrency: prompts (one request each on the served side).
        max_tokens: the most tokens per answer (answers may end sooner, at EOS).
        repeats: measurements per side.
        task: the task whose test prompts are sent (zoo-hops answers in 3 tokens, so the
            figure is mostly per-request cost; zoo-truth's answers run to about 10).
        prompts_per_request: >1 sends the prompts as lists of this many per request, as
            the openai backend does to the project's server (`PROMPTS_PER_REQUEST`).
    """
    prompts = _prompts(concurrency, task)
    engine = HFEngine.load(model_dir)
    # The server runs small CPU models on one torch thread; the direct side does the same,
    # so the ratio measures serving overhead, not a thread setting.
    threads = 1 if engine.device == "cpu" else torch.get_num_threads()

    def direct() -> tuple[float, float, int]:
        with torch_threads(threads):
            t0, c0 = time.perf_counter(), time.process_time()
            gens = engine.generate(prompts, max_tokens=max_tokens)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, sum(g.completion_tokens for g in gens)

    async def burst(client: Any) -> tuple[float, float, int]:
        t0, c0 = time.perf_counter(), time.process_time()
        step = max(1, prompts_per_request)
        chunks = [
            prompts[lo] if step == 1 else prompts[lo : lo + step]
            for lo in range(0, len(prompts), step)
        ]
        responses = await asyncio.gather(
            *(
                client.completions.create(
                    model=model_dir.name, prompt=chunk, max_tokens=max_tokens, temperature=0.0
                )
                for chunk in chunks
            )
        )
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, sum(r.usage.completion_tokens if r.usage else 0 for r in responses)

    best_direct = best_served = 0.0
    direct_cpu: list[float] = []
    served_cpu: list[float] = []
    answer_tokens = 0

    async def measure(handle: ServerHandle) -> None:
        nonlocal best_direct, best_served, answer_tokens
        import openai

        # One client for all bursts, as the openai backend keeps one: its connections stay
        # open between bursts instead of 32 new ones each time.
        client = openai.AsyncOpenAI(base_url=handle.base_url, api_key="EMPTY", max_retries=0)
        try:
            direct()
            await burst(client)  # warm-up
            for _ in range(repeats):
                wall, cpu, tokens = direct()  # blocks the loop: nothing is in flight
                best_direct = max(best_direct, tokens / wall)
                direct_cpu.append(cpu / max(tokens, 1))
                before = _process_cpu_s(handle.pid)
                wall, cpu, tokens = await burst(client)
                after = _process_cpu_s(handle.pid)
                best_served = max(best_served, tokens / wall)
                if before is not None and after is not None:
                    served_cpu.append((cpu + after - before) / max(tokens, 1))
                answer_tokens = tokens
        finally:
            await client.close()

    with start_server(model_dir, model_name=model_dir.name) as handle:
        asyncio.run(measure(handle))
    return Throughput(
        best_direct,
        best_served,
        concurrency,
        max_tokens,
        direct_cpu_per_token=min(direct_cpu) if direct_cpu else None,
        server_cpu_per_token=min(served_cpu) if served_cpu else None,
        tokens_per_answer=answer_tokens / len(prompts),
        prompts_per_request=max(1, prompts_per_request),
    )


# -- `bench perf ray` -------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOverhead:
    """Wall seconds of one small grid run by each executor (`Runner.run` only: planning and
    the zoo server's start are left out), each run from an empty cache."""

    local_s: float
    ray_cold_s: float
    ray_warm_s: float
    cluster_start_s: float | None
    cells: int
    workers: int

    @property
    def ratio(self) -> float:
        """Ray's wall time over the local one, workers already warm (>1: overhead)."""
        return self.ray_warm_s / self.local_s

    def describe(self) -> str:
        start = (
            f"; cluster start {self.cluster_start_s:.1f} s, not included"
            if self.cluster_start_s is not None
            else ""
        )
        return (
            f"{self.cells} cells: local executor {self.local_s:.1f} s; ray executor on "
            f"{self.workers} CPUs {self.ray_warm_s:.1f} s with warm workers (ratio "
            f"{self.ratio:.2f}), {self.ray_cold_s:.1f} s on the first run (cold workers, "
            f"ratio {self.ray_cold_s / self.local_s:.2f}){start}"
        )


def ray_overhead(
    model: str = "zoo-large",
    *,
    methods: tuple[str, ...] = ("zero-shot", "few-shot"),
    task: str = "zoo-sentiment",
    seeds: tuple[int, ...] = (0, 1),
    limit: int = 20,
    address: str | None = None,
) -> RayOverhead:
    """The same grid on the ``zoo`` backend (``model``: a zoo name or model directory) run
    once by the local executor and twice by the Ray one (cold, then warm workers)."""
    import tempfile

    from benchmarks.executors import connect_ray, import_ray
    from benchmarks.runner import BackendSpec, RunConfig, Runner

    ray = import_ray()
    started_s = None
    if not ray.is_initialized():
        t0 = time.perf_counter()
        connect_ray(ray, address)
        started_s = time.perf_counter() - t0
    try:
        with tempfile.TemporaryDirectory(prefix="bench-perf-ray-") as tmp:

            def timed(name: str, executor: str) -> tuple[float, int]:
                config = RunConfig(
                    methods=list(methods),
                    tasks=[task],
                    backend=BackendSpec("zoo", model),
                    seeds=list(seeds),
                    limit=limit,
                    results_dir=Path(tmp) / "results",
                    run_id=name,
                    cache_dir=Path(tmp) / f"cache-{name}",  # every run pays every call
                    executor=executor,
                )
                with Runner(config) as runner:
                    plan = runner.plan()
                    t0 = time.perf_counter()
                    records = runner.run(plan)
                    return time.perf_counter() - t0, len(records)

            local_s, cells = timed("local", "local")
            cold_s, _ = timed("ray-cold", "ray")
            warm_s, _ = timed("ray-warm", "ray")
        workers = int(ray.cluster_resources().get("CPU", 0))
    finally:
        if started_s is not None:
            ray.shutdown()
    return RayOverhead(local_s, cold_s, warm_s, started_s, cells, workers)


# -- `bench perf suite` and `bench perf replay` ------------------------------------------------


@dataclass(frozen=True)
class MethodTime:
    """Where one method's cells spent their wall time (tune and eval, summed over cells).

    Attributes:
        method: the method.
        cells: its cells counted.
        wall_s: wall seconds of tuning and evaluation (the cell records' ``wall_s``).
        wait_s: of which blocked on the black box (usage ``wait_s``; None in records
            written before it was metered).
        call_s: of which inside the black box's methods, waits included (usage ``call_s``;
            the rest of it is the harness's work around calls: cache, keys, metering).
        compute_s: of which in metered white-box compute (wall seconds of the blocks).
    """

    method: str
    cells: int
    wall_s: float
    wait_s: float | None
    call_s: float | None
    compute_s: float

    @property
    def harness_s(self) -> float | None:
        """The harness's own work around calls: cache look-ups and writes, keys, metering."""
        if self.wait_s is None or self.call_s is None:
            return None
        return max(0.0, self.call_s - self.wait_s)

    @property
    def other_s(self) -> float | None:
        """The rest: the method's own logic (search, parsing, unmetered model loading and
        library imports) and the runner's bookkeeping between calls."""
        inside = self.call_s if self.call_s is not None else self.wait_s
        if inside is None:
            return None
        return max(0.0, self.wall_s - inside - self.compute_s)


@dataclass(frozen=True)
class SuiteTime:
    """One timed run of a grid: planning (the zoo server's start included) and the cells
    (``total_s`` 0 when the times come from records alone)."""

    total_s: float
    plan_s: float
    methods: list[MethodTime]

    @property
    def cells_s(self) -> float:
        return sum(m.wall_s for m in self.methods)

    def table(self) -> str:
        """The per-method shares of wall time, as fixed-width text."""

        def share(part: float | None, whole: float) -> str:
            return "n/a" if part is None else f"{100 * part / whole:5.1f}%" if whole else "  -  "

        def total(parts: list[float | None]) -> float | None:
            return None if None in parts else sum(p or 0.0 for p in parts)

        lines = [
            f"{'method':<22} {'cells':>5} {'wall s':>8} {'black box':>9} {'compute':>8} "
            f"{'harness':>8} {'method+rest':>11}"
        ]
        rows = [
            (m.method, m.cells, m.wall_s, m.wait_s, m.compute_s, m.harness_s, m.other_s)
            for m in self.methods
        ]
        ms = self.methods
        rows.append(
            (
                "all cells",
                sum(m.cells for m in ms),
                self.cells_s,
                total([m.wait_s for m in ms]),
                sum(m.compute_s for m in ms),
                total([m.harness_s for m in ms]),
                total([m.other_s for m in ms]),
            )
        )
        for name, cells, wall, wait, compute, harness, other in rows:
            lines.append(
                f"{name:<22} {cells:>5} {wall:>8.1f} {share(wait, wall):>9} "
                f"{share(compute, wall):>8} {share(harness, wall):>8} {share(other, wall):>11}"
            )
        if self.total_s > 0:  # 0: read from records, the run's own total is unknown
            lines.append(
                f"total {self.total_s:.1f} s: planning and server start {self.plan_s:.1f} s, "
                f"cells {self.cells_s:.1f} s, the rest (records, closing) "
                f"{max(0.0, self.total_s - self.plan_s - self.cells_s):.1f} s"
            )
        return "\n".join(lines)


def method_times(records: Sequence[Any]) -> list[MethodTime]:
    """Per-method wall, black-box wait, in-call and compute seconds from cell records
    (`CellRecord` objects or their JSON); refused cells (nothing ran) are left out."""
    sums: dict[str, dict[str, float | None]] = {}
    cells: dict[str, int] = {}
    for rec in records:
        data = rec if isinstance(rec, dict) else rec.model_dump()
        if data.get("status") == "refused":
            continue
        usage = data.get("usage") or {}
        row = sums.setdefault(data["method"], {"wall": 0.0, "wait": 0.0, "call": 0.0, "cpu": 0.0})
        parts: dict[str, float | None] = {
            "wall": sum((data.get("wall_s") or {}).values()),
            "wait": sum(usage["wait_s"].values()) if "wait_s" in usage else None,
            "call": sum(usage["call_s"].values()) if "call_s" in usage else None,
            "cpu": sum(b.get("wall_s", 0.0) for b in (usage.get("compute") or {}).values()),
        }
        for key, value in parts.items():
            before = row[key]
            row[key] = None if value is None or before is None else before + value
        cells[data["method"]] = cells.get(data["method"], 0) + 1
    return [
        MethodTime(name, cells[name], row["wall"] or 0.0, row["wait"], row["call"], row["cpu"] or 0)
        for name, row in sorted(sums.items())
    ]


def time_suite(config: Any) -> SuiteTime:
    """Plan and run ``config`` (a `benchmarks.runner.RunConfig`), timing both."""
    from benchmarks.runner import Runner

    t0 = time.perf_counter()
    with Runner(config) as runner:
        plan = runner.plan()
        planned = time.perf_counter() - t0
        records = runner.run(plan)
    return SuiteTime(time.perf_counter() - t0, planned, method_times(records))


def suite_config(
    workdir: Path,
    run_id: str,
    *,
    model: str = "zoo-large",
    methods: Sequence[str] | None = None,
    tasks: Sequence[str] = ("zoo-sentiment",),
    seeds: Sequence[int] = (0,),
    budget: str = "light",
    limit: int | None = None,
) -> Any:
    """The `RunConfig` of the default embedded suite (every method, `zoo` backend) writing
    its results and cache under ``workdir``."""
    from benchmarks.runner import BackendSpec, RunConfig
    from methods.base import methods as method_registry

    return RunConfig(
        methods=list(methods or method_registry.names()),
        tasks=list(tasks),
        backend=BackendSpec("zoo", model),
        seeds=list(seeds),
        budget=budget,
        limit=limit,
        results_dir=workdir / "results",
        run_id=run_id,
        cache_dir=workdir / "cache",
    )


@dataclass(frozen=True)
class Replay:
    """A cold run of a grid and its replay from the warm cache."""

    first: SuiteTime
    replay: SuiteTime

    @property
    def ratio(self) -> float:
        return self.replay.total_s / self.first.total_s

    def describe(self) -> str:
        compute = sum(m.compute_s for m in self.replay.methods)
        waits = [m.wait_s for m in self.replay.methods]
        wait = "n/a" if None in waits else f"{sum(w or 0.0 for w in waits):.1f} s"
        return (
            f"first run {self.first.total_s:.1f} s; replay from the cache "
            f"{self.replay.total_s:.1f} s: ratio {self.ratio:.3f}. The replay spent "
            f"{compute:.1f} s in white-box compute that no cache held (training steps and "
            f"evaluated batches are cached; what a method computes between them is not) and "
            f"{wait} waiting on the black box; without the compute the ratio would be "
            f"{(self.replay.total_s - compute) / self.first.total_s:.3f}."
        )
