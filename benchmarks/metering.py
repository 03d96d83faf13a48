"""Metering: every model call and every stretch of white-box compute, recorded and priced.

Each call is a `CallRecord` (role, phase, tokens, cached or not, latency, retries). Two wall
times are kept per phase: how long callers were inside the black box's methods
(`UsageMeter.calling`: cache look-ups, metering and sending) and, of that, how long they were
blocked on the endpoint (`UsageMeter.waiting`); stretches that overlap, as concurrent calls
do, count once. A cell's wall time then splits into waiting, white-box compute, the
harness's own work around calls, and the method's logic. Totals
come in two flavours: *billed* (cache hits excluded: what this run paid) and *idealized*
(cache hits counted: what the method costs from a cold start), split by phase and role.
Dollars come from a versioned price table; a model without a price is n/a, never 0.
White-box work is timed with CUDA events on GPU and as process CPU seconds otherwise.

Spending caps (`Limits`, per run and per cell) are enforced by a `SpendingGuard`: before a
batch is sent, each call's upper bound (its prompt plus ``max_tokens`` per sample) is
reserved against every cap; the calls that fit go out, the rest are never sent and the guard
raises `BudgetExhausted`. Reservations are settled to the billed usage when the answers
arrive, so a cap is never passed (exactly so where the backend counts tokens with the
serving tokenizer; with an estimating backend the bound is the prompt's UTF-8 bytes).
"""

from __future__ import annotations

import contextlib
import math
import resource
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from benchmarks.errors import BudgetExhausted
from methods.registry import BenchError

Role = Literal["task", "proposer", "judge"]
Phase = Literal["tune", "eval"]
ROLES: tuple[str, ...] = ("task", "proposer", "judge")
PHASES: tuple[str, ...] = ("tune", "eval")


@dataclass(frozen=True)
class CallRecord:
    """One model call as the meter saw it."""

    role: str
    phase: str
    model: str
    kind: str  # generate | score | next_token
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    latency_s: float  # this request's send-to-answer seconds (concurrent ones overlap)
    samples: int = 1
    retries: int = 0
    answered_at: float = 0.0  # time.perf_counter() at the answer; 0: unknown (old records)


@dataclass(frozen=True)
class ComputeRecord:
    """One stretch of white-box work."""

    phase: str
    label: str
    device: str  # "cuda" or "cpu"
    seconds: float  # GPU seconds (CUDA events) on cuda, process CPU seconds on cpu
    wall_s: float
    peak_mem_mb: float
    cached: bool = False  # served from the training cache: seconds are what it cost then


@dataclass
class UsageTotals:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, rec: CallRecord) -> None:
        self.calls += 1
        self.prompt_tokens += rec.prompt_tokens
        self.completion_tokens += rec.completion_tokens
        self.retries += rec.retries


class PriceTable:
    """Dollars per million tokens by model, from a YAML file (default: the bundled table)."""

    def __init__(self, path: Path | None = None):
        try:
            text = (
                path.read_text(encoding="utf-8")
                if path is not None
                else resources.files("benchmarks")
                .joinpath("prices.yaml")
                .read_text(encoding="utf-8")
            )
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"price table {path}: cannot read ({_first_line(exc)})") from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise BenchError(f"price table {path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise BenchError(f"price table {path}: expected a mapping with a 'models' mapping")
        self.version = str(data.get("version", "unversioned"))
        self.models: dict[str, tuple[float, float]] = {}
        for name, entry in (data.get("models") or {}).items():
            try:
                pin, pout = float(entry["input_per_mtok"]), float(entry["output_per_mtok"])
            except (KeyError, TypeError, ValueError) as exc:
                raise BenchError(
                    f"price table {path}: model {name!r} needs input_per_mtok and output_per_mtok"
                ) from exc
            if not (math.isfinite(pin) and math.isfinite(pout) and pin >= 0 and pout >= 0):
                raise BenchError(
                    f"price table {path}: model {name!r} has a negative or non-finite price"
                )
            self.models[str(name)] = (pin, pout)

    def has(self, model: str) -> bool:
        return model in self.models

    def dollars(self, model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
        """The price of the tokens, or None when the model has no price."""
        if model not in self.models:
            return None
        pin, pout = self.models[model]
        return (prompt_tokens * pin + completion_tokens * pout) / 1e6


class UsageMeter:
    """Collects call and compute records for one grid cell; thread-safe."""

    def __init__(self, prices: PriceTable | None = None, device: str | None = None):
        self.prices = prices or PriceTable()
        self.calls: list[CallRecord] = []
        self.computes: list[ComputeRecord] = []
        self.phase: str = "tune"
        self._lock = threading.Lock()
        self.device = device or _default_device()
        #: wall seconds some caller was blocked on the black box, by phase.
        self.wait_s: dict[str, float] = {}
        #: wall seconds some caller was inside a black-box method (waits included), by phase.
        self.call_s: dict[str, float] = {}
        self._inside = {"wait": 0, "call": 0}
        self._since = {"wait": 0.0, "call": 0.0}
        #: called (outside the lock) after each call is recorded, e.g. to show progress.
        self.on_record: Callable[[], None] | None = None

    def record(self, rec: CallRecord) -> None:
        with self._lock:
            self.calls.append(rec)
        if self.on_record is not None:
            self.on_record()

    def progress(self, phase: str) -> tuple[int, int]:
        """(calls, billed tokens) of one phase so far, all roles, cache hits counted as calls
        but not as tokens."""
        with self._lock:
            calls = [c for c in self.calls if c.phase == phase]
        return len(calls), sum(c.prompt_tokens + c.completion_tokens for c in calls if not c.cached)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time a stretch spent blocked on the black box (requests sent, answers awaited).

        Wall clock from the first waiter in to the last one out: concurrent waits (threads
        of one method calling at once) count once, so the total never exceeds the wall time.
        """
        with self._stretch("wait", self.wait_s):
            yield

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Time a stretch inside a black-box method (cache, metering and any wait), counted
        like `waiting`; the difference is the harness's own work around calls."""
        with self._stretch("call", self.call_s):
            yield

    @contextlib.contextmanager
    def _stretch(self, kind: str, totals: dict[str, float]) -> Iterator[None]:
        with self._lock:
            if self._inside[kind] == 0:
                self._since[kind] = time.perf_counter()
            self._inside[kind] += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside[kind] -= 1
                if self._inside[kind] == 0:
                    spent = time.perf_counter() - self._since[kind]
                    totals[self.phase] = totals.get(self.phase, 0.0) + spent

    @contextlib.contextmanager
    def compute(self, label: str) -> Iterator[dict[str, float]]:
        """Time white-box work in the current phase (CUDA events on GPU, CPU seconds else);
        the yielded dict holds the block's ``seconds``, ``wall_s`` and ``peak_mem_mb`` after."""
        device = self.device
        wall0 = time.perf_counter()
        block: dict[str, float] = {}
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield block
            finally:
                end.record()
                torch.cuda.synchronize()
                seconds = start.elapsed_time(end) / 1000.0
                peak = torch.cuda.max_memory_allocated() / 2**20
                block.update(self._add_compute(label, device, seconds, wall0, peak))
        else:
            cpu0 = time.process_time()
            try:
                yield block
            finally:
                seconds = time.process_time() - cpu0
                # ru_maxrss is the process high-water mark (KiB on Linux), not this block's.
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                block.update(self._add_compute(label, device, seconds, wall0, peak))

    def credit(self, label: str, seconds: float, wall_s: float, peak_mem_mb: float) -> None:
        """Count white-box work served from the training cache: what it cost when it ran
        (so reports show a method's cold-start compute, as they count cached tokens), kept
        apart from the work this process did (``cached_seconds``; ``wall_s`` leaves it out)."""
        rec = ComputeRecord(self.phase, label, self.device, seconds, wall_s, peak_mem_mb, True)
        with self._lock:
            self.computes.append(rec)

    def _add_compute(
        self, label: str, device: str, seconds: float, wall0: float, peak: float
    ) -> dict[str, float]:
        rec = ComputeRecord(
            self.phase, label, device, seconds, time.perf_counter() - wall0, round(peak, 1)
        )
        with self._lock:
            self.computes.append(rec)
        return {"seconds": rec.seconds, "wall_s": rec.wall_s, "peak_mem_mb": rec.peak_mem_mb}

    def summary(self) -> dict[str, Any]:
        """Billed and idealized usage by phase and role, dollars, compute, and the wall
        seconds spent waiting on the black box (``wait_s``) and inside its methods
        (``call_s``, waits included) by phase, as JSON."""
        with self._lock:
            calls, computes = list(self.calls), list(self.computes)
            stretches = {"wait_s": dict(self.wait_s), "call_s": dict(self.call_s)}
        out = summarize(calls, computes, self.prices)
        for name, totals in stretches.items():
            out[name] = {phase: round(totals[phase], 4) for phase in PHASES if phase in totals}
        return out


def summarize(
    calls: Iterable[CallRecord], computes: Iterable[ComputeRecord], prices: PriceTable
) -> dict[str, Any]:
    calls = list(calls)
    out: dict[str, Any] = {"price_table": prices.version, "billed": {}, "idealized": {}}
    for flavour in ("billed", "idealized"):
        for phase in PHASES:
            block: dict[str, Any] = {}
            for role in ROLES:
                chosen = [
                    c
                    for c in calls
                    if c.phase == phase
                    and c.role == role
                    and (flavour == "idealized" or not c.cached)
                ]
                if not chosen:
                    continue
                totals = UsageTotals()
                for c in chosen:
                    totals.add(c)
                block[role] = {
                    "calls": totals.calls,
                    "prompt_tokens": totals.prompt_tokens,
                    "completion_tokens": totals.completion_tokens,
                    "tokens": totals.tokens,
                    "retries": totals.retries,
                    "usd": _dollars(chosen, prices),
                }
            out[flavour][phase] = block
    # By phase, the models without a price: they make that phase's dollars n/a. A phase
    # that made no call takes the cell's (zero-shot tuning on an unpriced model is n/a,
    # not $0, which would read as a price of nothing).
    unpriced = {c.model for c in calls if not prices.has(c.model)}
    out["unpriced_models"] = {
        phase: sorted(
            {c.model for c in calls if c.phase == phase and c.model in unpriced}
            if any(c.phase == phase for c in calls)
            else unpriced
        )
        for phase in PHASES
    }
    out["cache_hits"] = sum(1 for c in calls if c.cached)
    out["calls"] = len(calls)
    out["retries"] = sum(c.retries for c in calls)
    # Concurrent requests overlap: their latencies summed can be many times the wall time.
    out["request_wall_s"] = round(_request_wall_s([c for c in calls if not c.cached]), 3)
    out["request_latency_sum_s"] = round(sum(c.latency_s for c in calls if not c.cached), 3)
    out["compute"] = _compute_summary(list(computes))
    return out


def _request_wall_s(calls: list[CallRecord]) -> float:
    """Wall seconds with at least one request in flight: the union of the requests'
    intervals (a record without an answer time counts its whole latency)."""
    spans = sorted((c.answered_at - c.latency_s, c.answered_at) for c in calls if c.answered_at)
    total = sum(c.latency_s for c in calls if not c.answered_at)
    end = float("-inf")
    for start, stop in spans:
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def request_seconds(usage: dict[str, Any]) -> tuple[float | None, float | None]:
    """(wall seconds with a request in flight, per-request latencies summed) of a cell's
    usage; records written before the two were told apart hold only the sum (``latency_s``),
    and their wall time is unknown (None)."""
    if "request_latency_sum_s" in usage:
        return usage.get("request_wall_s"), usage["request_latency_sum_s"]
    return None, usage.get("latency_s")


def _dollars(calls: list[CallRecord], prices: PriceTable) -> float | None:
    total = 0.0
    for c in calls:
        usd = prices.dollars(c.model, c.prompt_tokens, c.completion_tokens)
        if usd is None:
            return None  # one unpriced model makes the sum unknown, not smaller
        total += usd
    return round(total, 6)


def _compute_summary(computes: list[ComputeRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for phase in PHASES:
        recs = [c for c in computes if c.phase == phase]
        if recs:
            out[phase] = {
                # What the work costs from a cold start (cached blocks at their stored cost)...
                "seconds": round(sum(c.seconds for c in recs), 4),
                # ...of which served from the training cache; wall_s is this process's alone.
                "cached_seconds": round(sum(c.seconds for c in recs if c.cached), 4),
                "wall_s": round(sum(c.wall_s for c in recs if not c.cached), 4),
                "device": recs[0].device,
                "peak_mem_mb": max(c.peak_mem_mb for c in recs),
                "blocks": _merge_blocks(recs),
            }
    return out


def _merge_blocks(recs: list[ComputeRecord]) -> list[dict[str, Any]]:
    """One entry per label (in first-seen order) with summed seconds and a ``count``: methods
    time white-box work per decoding step, which would otherwise be hundreds of blocks."""
    merged: dict[tuple[str, bool], dict[str, Any]] = {}
    for c in recs:
        entry = merged.setdefault(
            (c.label, c.cached), {**asdict(c), "seconds": 0.0, "wall_s": 0.0, "count": 0}
        )
        entry["seconds"] = round(entry["seconds"] + c.seconds, 6)
        entry["wall_s"] = round(entry["wall_s"] + c.wall_s, 6)
        entry["peak_mem_mb"] = max(entry["peak_mem_mb"], c.peak_mem_mb)
        entry["count"] += 1
    for entry in merged.values():
        if not entry["cached"]:
            del entry["cached"]  # records stay as they were for work that ran
    return list(merged.values())


def total_tokens(summary: dict[str, Any], flavour: str = "billed", phase: str | None = None) -> int:
    """Tokens in a `summarize` result, all roles, one phase or both."""
    phases = [phase] if phase else list(PHASES)
    return sum(
        role["tokens"] for p in phases for role in summary.get(flavour, {}).get(p, {}).values()
    )


def total_usd(
    summary: dict[str, Any], flavour: str = "billed", phase: str | None = None
) -> float | None:
    """Dollars in a `summarize` result, all roles, one phase or both; None if a model of
    those phases is unpriced (`summarize`'s ``unpriced_models``)."""
    phases = [phase] if phase else list(PHASES)
    unpriced = summary.get("unpriced_models") or {}
    if any(unpriced.get(p) for p in phases):
        return None
    total = 0.0
    for p in phases:
        for role in summary.get(flavour, {}).get(p, {}).values():
            if role["usd"] is None:
                return None
            total += role["usd"]
    return total


# -- spending caps --------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Caps on billed spending (cache hits are free); None means no cap.

    Attributes:
        usd: dollars, at the price table's prices (a model without a price cannot be capped).
        tokens: prompt plus completion tokens.
        calls: prompts sent (each element of a batch is one call, whatever its ``n``).
    """

    usd: float | None = None
    tokens: int | None = None
    calls: int | None = None

    def __post_init__(self) -> None:
        for name in ("usd", "tokens", "calls"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BenchError(f"spending cap {name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise BenchError(f"spending cap {name} must be finite and >= 0, got {value!r}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.usd, self.tokens, self.calls))

    def describe(self) -> dict[str, float | int | None]:
        return {"usd": self.usd, "tokens": self.tokens, "calls": self.calls}


#: the options that set each cap, for messages (`bench run --help` documents them).
LIMIT_FLAGS: dict[str, dict[str, str]] = {
    "run": {"usd": "--max-usd", "tokens": "--max-tokens", "calls": "--max-calls"},
    "cell": {"usd": "--max-cell-usd", "tokens": "--max-cell-tokens", "calls": "--max-cell-calls"},
}


@dataclass
class Spend:
    """Billed calls, tokens and dollars so far (or reserved for calls in flight)."""

    calls: int = 0
    tokens: int = 0
    usd: float = 0.0

    def add(self, calls: int, tokens: int, usd: float) -> None:
        self.calls += calls
        self.tokens += tokens
        self.usd += usd

    @classmethod
    def of_summary(cls, summary: dict[str, Any]) -> Spend:
        """What a `summarize` result billed (unpriced dollars count as 0 here: a dollar cap
        is refused for unpriced models before anything is spent)."""
        calls = sum(
            role["calls"] for phase in summary.get("billed", {}).values() for role in phase.values()
        )
        return cls(calls, total_tokens(summary, "billed"), total_usd(summary, "billed") or 0.0)


@dataclass(frozen=True)
class Reservation:
    """The upper bound charged for one admitted call, until it is settled."""

    model: str
    tokens: int
    usd: float


class SpendingGuard:
    """Admits calls while the run's and the current cell's caps hold.

    Args:
        prices: the price table dollars are computed with.
        run: caps on the whole run.
        cell: caps on each cell.
        run_spent: what the run had already billed (finished cells of a resumed run).
    """

    def __init__(
        self,
        prices: PriceTable,
        *,
        run: Limits | None = None,
        cell: Limits | None = None,
        run_spent: Spend | None = None,
    ):
        self.prices = prices
        self.limits = {"run": run or Limits(), "cell": cell or Limits()}
        #: billed plus reserved: what the caps are checked against.
        self.spent = {"run": run_spent or Spend(), "cell": Spend()}
        #: of `spent`, the upper bounds reserved for calls not settled yet (in flight).
        self.in_flight = {"run": Spend(), "cell": Spend()}
        #: the first refusal of the current cell, kept even if a method swallowed it.
        self.tripped: BudgetExhausted | None = None
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return any(limits.active for limits in self.limits.values())

    def start_cell(self) -> None:
        with self._lock:
            self.spent["cell"] = Spend()
            self.in_flight["cell"] = Spend()
            self.tripped = None

    def _usd(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        usd = self.prices.dollars(model, prompt_tokens, completion_tokens)
        if usd is None:
            if any(limits.usd is not None for limits in self.limits.values()):
                raise BenchError(
                    f"model {model!r} has no price in price table {self.prices.version}; "
                    "a dollar cap cannot be enforced"
                )
            return 0.0
        return usd

    def reserve(
        self, model: str, calls: Sequence[tuple[int, int]]
    ) -> tuple[list[Reservation], BudgetExhausted | None]:
        """Admit the longest prefix of ``calls`` (prompt tokens, completion tokens at most)
        that keeps every cap, charging each its upper bound. Returns the reservations of the
        admitted calls and, when some were refused, the error to raise once those are done."""
        admitted: list[Reservation] = []
        with self._lock:
            for prompt_tokens, completion_tokens in calls:
                tokens = prompt_tokens + completion_tokens
                usd = self._usd(model, prompt_tokens, completion_tokens)
                refusal = self._refusal(tokens, usd)
                if refusal is not None:
                    self.tripped = self.tripped or refusal
                    return admitted, refusal
                for scope in self.spent:
                    self.spent[scope].add(1, tokens, usd)
                    self.in_flight[scope].add(1, tokens, usd)
                admitted.append(Reservation(model, tokens, usd))
        return admitted, None

    def admit_retry(self, model: str, calls: int = 1) -> None:
        """Count a retry's resent calls against the call caps (a cap on calls caps the
        requests sent); its tokens are already reserved by the call it repeats.

        Raises:
            BudgetExhausted: the retry would pass a call cap; it is not sent.
        """
        admitted, refusal = self.reserve(model, [(0, 0)] * calls)
        with self._lock:
            for flying in self.in_flight.values():
                flying.add(-len(admitted), 0, 0.0)  # sent: spent at once, never settled
        if refusal is not None:
            raise refusal

    def _refusal(self, tokens: int, usd: float) -> BudgetExhausted | None:
        for scope in ("cell", "run"):
            limits, spent, flying = self.limits[scope], self.spent[scope], self.in_flight[scope]
            checks = (
                ("calls", limits.calls, spent.calls, flying.calls, 1, "{:,} calls"),
                ("tokens", limits.tokens, spent.tokens, flying.tokens, tokens, "{:,} tokens"),
                ("usd", limits.usd, spent.usd, flying.usd, usd, "${:,.6f}"),
            )
            for name, cap, used, reserved, need, fmt in checks:
                if cap is not None and used + need > cap * (1 + 1e-12):
                    flag = LIMIT_FLAGS[scope][name]
                    billed = "sent" if name == "calls" else "billed"
                    return BudgetExhausted(
                        f"{flag} {cap:g} reached: this {scope} has {billed} "
                        f"{fmt.format(used - reserved)}, with {fmt.format(reserved)} reserved "
                        f"for calls in flight, and the next call may need {fmt.format(need)}",
                        flag=flag,
                        scope=scope,
                    )
        return None

    def settle(
        self,
        reservation: Reservation,
        *,
        answered: bool,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Replace a reservation's upper bound by what was billed; a call that got no answer
        is taken back (a failed request is not billed)."""
        billed = prompt_tokens + completion_tokens if answered else 0
        usd = self._usd(reservation.model, prompt_tokens, completion_tokens) if billed else 0.0
        with self._lock:
            for scope, spent in self.spent.items():
                spent.add(int(answered) - 1, billed - reservation.tokens, usd - reservation.usd)
                self.in_flight[scope].add(-1, -reservation.tokens, -reservation.usd)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
