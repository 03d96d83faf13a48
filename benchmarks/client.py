"""The black box a tuner sees: a backend behind capability checks, the cache and the meter.

`MeteredBlackBox` implements `methods.BlackBox`. It is bound to one role (task, proposer,
judge); the meter's current phase (tune, eval) is set by the runner. Every prompt in a batch
is one call: it is looked up in the cache sample by sample, only the missing samples are sent
(in one batch to the backend, which runs them concurrently), and one `CallRecord` is written
per call, flagged `cached` when nothing had to be sent.

The wall time spent inside its methods and, of that, blocked on the endpoint is metered
(`UsageMeter.calling`, `UsageMeter.waiting`), so a cell's time splits into waiting, white-box
compute, the harness's own work and the method's. It is thread-safe: a method may call it
from several threads at once (BBT scores a CMA-ES population that way).

With a `SpendingGuard`, the calls a batch would send are first reserved against the spending
caps: those that fit are sent, the rest are not, and `BudgetExhausted` is raised once the
admitted ones are metered and cached (so what was paid for is kept).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import numpy as np

from benchmarks.backends.base import (
    Backend,
    CallResult,
    GenerateRequest,
    NextTokenRequest,
    PartialBatchError,
    ScoreRequest,
)
from benchmarks.cache import ResponseCache, cache_key
from benchmarks.errors import BudgetExhausted
from benchmarks.metering import CallRecord, Reservation, SpendingGuard, UsageMeter
from methods.base import (
    GENERATE,
    LOGPROBS,
    NEXT_TOKEN_LOGITS,
    PROMPT_EMBEDS,
    SCORE,
    CapabilityError,
    Completion,
    ScoredText,
)
from methods.registry import BenchError


def completion_to_json(c: Completion) -> dict[str, Any]:
    return {
        "text": c.text,
        "finish_reason": c.finish_reason,
        "tokens": list(c.tokens) if c.tokens is not None else None,
        "token_logprobs": list(c.token_logprobs) if c.token_logprobs is not None else None,
        "top_logprobs": [dict(t) for t in c.top_logprobs] if c.top_logprobs is not None else None,
    }


def completion_from_json(d: dict[str, Any]) -> Completion:
    """The `Completion` stored by `completion_to_json`.

    Raises:
        TypeError, KeyError: ``d`` is not of that shape (a damaged or foreign cache entry).
    """
    if not isinstance(d, dict) or not isinstance(d["text"], str):
        raise TypeError("completion: expected an object with a text string")
    finish = d.get("finish_reason", "stop")
    tokens = _optional_list(d, "tokens", str)
    token_logprobs = _optional_list(d, "token_logprobs", (int, float))
    top_logprobs = _optional_list(d, "top_logprobs", (dict, type(None)))
    if not isinstance(finish, str):
        raise TypeError("completion: finish_reason is not a string")
    return Completion(
        text=d["text"],
        finish_reason=finish,
        tokens=None if tokens is None else tuple(tokens),
        token_logprobs=None if token_logprobs is None else tuple(token_logprobs),
        top_logprobs=None if top_logprobs is None else tuple(top_logprobs),
    )


def _optional_list(d: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> list[Any] | None:
    """``d[name]``: None, or a list whose items are all of ``kind`` (TypeError otherwise)."""
    value = d.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise TypeError(f"{name}: expected a list of {kind}")
    return value


def _count(d: dict[str, Any], name: str) -> int:
    """A token count of a cached value (0 when absent); TypeError unless an integer >= 0."""
    value = d.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TypeError(f"{name}: expected an integer >= 0, got {value!r}")
    return value


def _scored_from_json(d: dict[str, Any]) -> ScoredText:
    tokens = _optional_list(d, "tokens", str)
    logprobs = _optional_list(d, "token_logprobs", (int, float))
    if tokens is None or logprobs is None or len(tokens) != len(logprobs):
        raise TypeError("score: tokens and token_logprobs must be lists of the same length")
    return ScoredText(tuple(tokens), tuple(logprobs))


def array_to_json(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def array_from_json(d: dict[str, Any]) -> np.ndarray:
    """The array stored by `array_to_json` (ValueError, TypeError or KeyError otherwise)."""
    raw = base64.b64decode(d["data"], validate=True)
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).copy()


def _logprob_row(d: dict[str, Any]) -> np.ndarray:
    """A cached next-token row: one vector (TypeError otherwise)."""
    row = array_from_json(d)
    if row.ndim != 1:
        raise TypeError(f"next_token: expected one row, got shape {list(row.shape)}")
    return row


def _sample_seed(seed: int | None, first_sample: int) -> int | None:
    """The seed of a request whose samples start at index ``first_sample``: ``seed`` itself
    from 0 (so a first request is what the endpoint gives for ``seed``), a seed derived from
    both otherwise, so that samples asked for beyond those already drawn (``sample_offset``,
    or the slots a partly cached call lacks) are fresh draws, not the first ones again."""
    if seed is None or first_sample == 0:
        return seed
    digest = hashlib.sha256(f"{seed}/{first_sample}".encode()).hexdigest()
    return int(digest[:8], 16) & 0x7FFFFFFF


def _split_evenly(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


R = TypeVar("R")
P = ParamSpec("P")


def _timed(
    method: Callable[Concatenate[MeteredBlackBox, P], R],
) -> Callable[Concatenate[MeteredBlackBox, P], R]:
    """Meter the wall time spent inside a black-box method (`UsageMeter.calling`)."""

    @functools.wraps(method)
    def timed(self: MeteredBlackBox, *args: P.args, **kwargs: P.kwargs) -> R:
        with self.meter.calling():
            return method(self, *args, **kwargs)

    return timed


def _call_batch(
    call: Callable[[Sequence[R]], list[CallResult[Any]]], requests: Sequence[R]
) -> tuple[list[CallResult[Any] | None], BaseException | None]:
    """Send a batch; on a partial failure keep what arrived (it was paid for) and the error."""
    if not requests:
        return [], None
    try:
        return list(call(requests)), None
    except PartialBatchError as exc:
        return exc.results, exc.error


class MeteredBlackBox:
    """`methods.BlackBox` over a `Backend`, with cache, meter and capability checks.

    Thread-safe (``thread_safe``): a method may call it from several threads at once, e.g.
    BBT scoring a population, and the calls then reach the endpoint together.
    """

    #: calls from several threads at once are safe (cache, meter, guard and backend are).
    thread_safe = True

    def __init__(
        self,
        backend: Backend,
        *,
        meter: UsageMeter,
        role: str = "task",
        cache: ResponseCache | None = None,
        guard: SpendingGuard | None = None,
    ):
        self.backend = backend
        self.meter = meter
        self.role = role
        self.cache = cache or ResponseCache(enabled=False)
        self.guard = guard if guard is not None and guard.active else None
        if self.guard is not None:
            backend.retry_gate = self.guard.admit_retry  # retries count against call caps
        # A backend that overrides count_tokens counts with the serving tokenizer; the base
        # class only estimates (4 characters a token), so caps then bound a prompt by bytes.
        self._exact_tokens = type(backend).count_tokens is not Backend.count_tokens
        # Token counts by text: prompts recur (every method scores the same test set), and a
        # replay from the cache would otherwise spend its time tokenizing.
        self._token_counts: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self.model = backend.model
        self.capabilities = frozenset(backend.capabilities)
        self.context_length = backend.context_length

    def count_tokens(self, text: str) -> int:
        count = self._token_counts.get(text)
        if count is None:
            with self._count_lock:  # one tokenizer call at a time (HF tokenizers may refuse)
                count = self.backend.count_tokens(text)
            if len(self._token_counts) >= 200_000:
                self._token_counts.clear()
            self._token_counts[text] = count
        return count

    def _require(self, capability: str) -> None:
        if capability not in self.capabilities:
            raise CapabilityError(
                f"{self.backend.name} backend ({self.model}) does not offer {capability!r}; "
                f"it offers: {', '.join(sorted(self.capabilities))}"
            )

    def _cached(self, key: str, build: Callable[[dict[str, Any]], R]) -> R | None:
        """The cached value under ``key`` rebuilt by ``build``, or None on a miss. An entry
        that does not rebuild (valid JSON of another shape: damaged, or written by other
        code) is a miss too, said once by the cache, and replaced by the fresh answer."""
        hit = self.cache.get(key)
        if hit is None:
            return None
        try:
            return build(hit)
        except (KeyError, TypeError, ValueError, AttributeError, binascii.Error) as exc:
            self.cache.reject(key, f"{type(exc).__name__}: {exc}")
            return None

    def _prompt_bound(self, text: str) -> int:
        """At least the prompt tokens the endpoint will bill for ``text``."""
        if self._exact_tokens:
            return self.count_tokens(text)
        # Byte-level BPE never makes more tokens than bytes; 16 covers a chat template.
        return len(text.encode("utf-8")) + 16

    def _reserve(
        self, bounds: Callable[[], list[tuple[int, int]]], n: int
    ) -> tuple[list[Reservation | None], BudgetExhausted | None]:
        """Reservations for ``n`` calls to send (None each without a guard), and the refusal
        of those beyond the caps. ``bounds`` gives each call's (prompt, completion) bound."""
        if self.guard is None or n == 0:
            return [None] * n, None
        admitted, refusal = self.guard.reserve(self.model, bounds())
        return list(admitted), refusal

    def _settle(self, ticket: Reservation | None, result: CallResult[Any] | None) -> None:
        if self.guard is None or ticket is None:
            return
        if result is None:
            self.guard.settle(ticket, answered=False)
        else:
            self.guard.settle(
                ticket,
                answered=True,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
            )

    def _record(
        self,
        kind: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cached: bool,
        latency_s: float = 0.0,
        samples: int = 1,
        retries: int = 0,
    ) -> None:
        self.meter.record(
            CallRecord(
                role=self.role,
                phase=self.meter.phase,
                model=self.model,
                kind=kind,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cached=cached,
                latency_s=latency_s,
                samples=samples,
                retries=retries,
                answered_at=0.0 if cached else time.perf_counter(),
            )
        )

    # -- generate -------------------------------------------------------------------------

    @_timed
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        self._require(GENERATE)
        if logprobs is not None:
            self._require(LOGPROBS)
        if n < 1:
            raise BenchError(f"generate: n must be >= 1, got {n}")
        params = {
            "temperature": float(temperature),
            "top_p": float(top_p),
            "max_tokens": int(max_tokens),
            "stop": list(stop or []),
            "seed": seed,
            "logprobs": logprobs,
        }
        ident = self.backend.identity()
        out: list[list[Completion | None]] = []
        keys: list[list[str]] = []
        missing: dict[int, list[int]] = {}  # prompt index -> sample slots not in the cache
        hit_tokens: list[tuple[int, int, int]] = []  # per prompt: (hits, prompt, completion)
        limits = [self._fit_max_tokens(p, max_tokens) for p in prompts]
        for i, prompt in enumerate(prompts):
            row: list[Completion | None] = []
            row_keys: list[str] = []
            hits = prompt_tokens = completion_tokens = 0
            for j in range(n):
                key = cache_key(
                    {
                        "kind": "generate",
                        "backend": ident,
                        "prompt": prompt,
                        **params,
                        "max_tokens": limits[i],
                        "sample": sample_offset + j,
                    }
                )
                row_keys.append(key)
                hit = self._cached(
                    key,
                    lambda h: (
                        completion_from_json(h["completion"]),
                        _count(h, "prompt_tokens"),
                        _count(h, "completion_tokens"),
                    ),
                )
                if hit is None:
                    row.append(None)
                    missing.setdefault(i, []).append(j)
                else:
                    row.append(hit[0])
                    hits += 1
                    prompt_tokens = hit[1]
                    completion_tokens += hit[2]
            out.append(row)
            keys.append(row_keys)
            hit_tokens.append((hits, prompt_tokens, completion_tokens))

        pending = list(missing.items())
        tickets, refusal = self._reserve(
            lambda: [
                (self._prompt_bound(prompts[i]), limits[i] * len(slots)) for i, slots in pending
            ],
            len(pending),
        )
        pending = pending[: len(tickets)]
        requests = [
            GenerateRequest(
                prompt=prompts[i],
                n=len(slots),
                temperature=temperature,
                top_p=top_p,
                max_tokens=limits[i],
                stop=tuple(stop or ()),
                seed=_sample_seed(seed, sample_offset + slots[0]),
                logprobs=logprobs,
            )
            for i, slots in pending
        ]
        results, failure = self._send(self.backend.generate_batch, requests, tickets)
        for (i, slots), result in zip(pending, results, strict=True):
            if result is None:
                continue
            if len(result.value) != len(slots):
                raise BenchError(
                    f"{self.backend.name}: asked for {len(slots)} samples, got {len(result.value)}"
                )
            shares = _split_evenly(result.completion_tokens, len(slots))
            for j, completion, share in zip(slots, result.value, shares, strict=True):
                out[i][j] = completion
                self.cache.put(
                    keys[i][j],
                    {
                        "completion": completion_to_json(completion),
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": share,
                    },
                    request={"kind": "generate", "model": self.model, "sample": sample_offset + j},
                )
            self._record(
                "generate",
                result.prompt_tokens,
                result.completion_tokens,
                cached=False,
                latency_s=result.latency_s,
                samples=len(slots),
                retries=result.retries,
            )
        for i, (hits, prompt_tokens, completion_tokens) in enumerate(hit_tokens):
            if hits:
                # The prompt is billed once per call: counted here only if nothing was sent.
                self._record(
                    "generate",
                    0 if i in missing else prompt_tokens,
                    completion_tokens,
                    cached=True,
                    samples=hits,
                )
        if failure is not None:
            raise failure
        if refusal is not None:
            raise refusal
        return [[c for c in row if c is not None] for row in out]

    def _send(
        self,
        call: Callable[[Sequence[Any]], list[CallResult[Any]]],
        requests: Sequence[Any],
        tickets: Sequence[Reservation | None],
    ) -> tuple[list[CallResult[Any] | None], BaseException | None]:
        """`_call_batch`, settling each reservation with what its call billed; the wall time
        is metered as waiting on the black box."""
        try:
            if requests:
                with self.meter.waiting():
                    results, failure = _call_batch(call, requests)
            else:
                results, failure = [], None
        except BaseException:
            for ticket in tickets:
                self._settle(ticket, None)
            raise
        for ticket, result in zip(tickets, results, strict=True):
            self._settle(ticket, result)
        return results, failure

    def _fit_max_tokens(self, prompt: str, max_tokens: int) -> int:
        """``max_tokens`` capped to what the context window leaves after the prompt (an
        upper bound, as API clients treat it), so a long prompt shortens the answer instead
        of failing the call; a prompt that fills the window is an error."""
        if not self.context_length:
            return int(max_tokens)
        room = self.context_length - self.count_tokens(prompt)
        if room < 1:
            raise BenchError(
                f"{self.model}: a prompt of {self.context_length - room} tokens does not fit the "
                f"context window of {self.context_length}"
            )
        return int(min(max_tokens, room))

    # -- score ----------------------------------------------------------------------------

    @_timed
    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        self._require(SCORE)
        if len(prompts) != len(continuations):
            raise BenchError("score: prompts and continuations differ in length")
        ident = self.backend.identity()
        out: list[ScoredText | None] = []
        keys, pending = [], []
        for i, (p, c) in enumerate(zip(prompts, continuations, strict=True)):
            key = cache_key({"kind": "score", "backend": ident, "prompt": p, "continuation": c})
            keys.append(key)
            scored = self._cached(key, lambda h: (_scored_from_json(h), _count(h, "prompt_tokens")))
            if scored is None:
                out.append(None)
                pending.append(i)
            else:
                out.append(scored[0])
                self._record("score", scored[1], 0, cached=True)
        tickets, refusal = self._reserve(
            lambda: [(self._prompt_bound(prompts[i] + continuations[i]), 0) for i in pending],
            len(pending),
        )
        pending = pending[: len(tickets)]
        results, failure = self._send(
            self.backend.score_batch,
            [ScoreRequest(prompts[i], continuations[i]) for i in pending],
            tickets,
        )
        for i, result in zip(pending, results, strict=True):
            if result is None:
                continue
            out[i] = result.value
            self.cache.put(
                keys[i],
                {
                    "tokens": list(result.value.tokens),
                    "token_logprobs": list(result.value.token_logprobs),
                    "prompt_tokens": result.prompt_tokens,
                },
                request={"kind": "score", "model": self.model},
            )
            self._record(
                "score",
                result.prompt_tokens,
                result.completion_tokens,
                cached=False,
                latency_s=result.latency_s,
                retries=result.retries,
            )
        if failure is not None:
            raise failure
        if refusal is not None:
            raise refusal
        return [s for s in out if s is not None]

    # -- next-token distributions ---------------------------------------------------------

    @_timed
    def next_token_logprobs(
        self, prompts: Sequence[str], *, soft_prompt: np.ndarray | None = None
    ) -> np.ndarray:
        self._require(NEXT_TOKEN_LOGITS)
        soft_hash = None
        if soft_prompt is not None:
            self._require(PROMPT_EMBEDS)
            soft_prompt = np.ascontiguousarray(soft_prompt, dtype=np.float32)
            soft_hash = hashlib.sha256(soft_prompt.tobytes()).hexdigest() + str(soft_prompt.shape)
        ident = self.backend.identity()
        rows: list[np.ndarray | None] = []
        keys, pending = [], []
        for i, p in enumerate(prompts):
            key = cache_key(
                {"kind": "next_token", "backend": ident, "prompt": p, "soft": soft_hash}
            )
            keys.append(key)
            row_hit = self._cached(
                key, lambda h: (_logprob_row(h["logprobs"]), _count(h, "prompt_tokens"))
            )
            if row_hit is None:
                rows.append(None)
                pending.append(i)
            else:
                rows.append(row_hit[0])
                self._record("next_token", row_hit[1], 0, cached=True)
        soft_rows = 0 if soft_prompt is None else int(soft_prompt.shape[0])
        tickets, refusal = self._reserve(
            lambda: [(self._prompt_bound(prompts[i]) + soft_rows, 0) for i in pending],
            len(pending),
        )
        pending = pending[: len(tickets)]
        sent, failure = self._send(
            self.backend.next_token_batch,
            [NextTokenRequest(prompts[i], soft_prompt) for i in pending],
            tickets,
        )
        if failure is not None:
            raise failure  # the next-token endpoint answers a batch whole or not at all
        results = [r for r in sent if r is not None]
        for i, result in zip(pending, results, strict=True):
            row = np.asarray(result.value, dtype=np.float32)
            rows[i] = row
            self.cache.put(
                keys[i],
                {"logprobs": array_to_json(row), "prompt_tokens": result.prompt_tokens},
                request={"kind": "next_token", "model": self.model},
            )
            self._record(
                "next_token",
                result.prompt_tokens,
                0,
                cached=False,
                latency_s=result.latency_s,
                retries=result.retries,
            )
        if refusal is not None:
            raise refusal
        if not rows:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([r for r in rows if r is not None])

    def vocabulary(self) -> list[str]:
        return list(self._described("vocabulary", self.backend.vocabulary))

    def embedding_stats(self) -> tuple[int, float, float]:
        self._require(PROMPT_EMBEDS)
        dim, mean, std = self._described("embedding_stats", self.backend.embedding_stats)
        return int(dim), float(mean), float(std)

    def _described(self, kind: str, fetch: Callable[[], Any]) -> Any:
        """A fact about the model (its vocabulary, its embedding statistics), cached like an
        answer: free to ask, but a replay that asked the server would have to start it."""
        request = {"kind": kind, "backend": self.backend.identity()}
        key = cache_key(request)

        def build(h: dict[str, Any]) -> list[Any]:
            if not isinstance(h["value"], list):
                raise TypeError(f"{kind}: expected a list")
            return list(h["value"])

        hit = self._cached(key, build)
        if hit is not None:
            return hit
        value = fetch()
        self.cache.put(key, {"value": list(value)}, request=request)
        return value
