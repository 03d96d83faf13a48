"""The metered black box over a real in-process model: samples cached one by one, billed vs
cached calls, capability checks, what happens to paid-for answers when a batch fails, and the
wall time metered as waiting on the black box. Also the openai backend's adaptive (AIMD)
bound on requests in flight: its arithmetic, and against the tiny server injecting 429s."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest

from benchmarks import metering
from benchmarks.backends.base import CallResult, GenerateRequest, PartialBatchError, ScoreRequest
from benchmarks.backends.hf import HFBackend
from benchmarks.backends.openai_backend import AdaptiveLimiter, OpenAIBackend
from benchmarks.cache import ResponseCache
from benchmarks.client import MeteredBlackBox
from benchmarks.faults import STATS_PATH, FaultSpec
from benchmarks.metering import UsageMeter
from benchmarks.server import ServerHandle, start_server
from benchmarks.tiny import tiny_model_dir, torch_threads
from methods import CapabilityError, Completion
from methods.registry import BenchError


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> HFBackend:
    hf = HFBackend(str(tiny_model_dir(tmp_path_factory.mktemp("tiny"))))
    hf.check_ready()
    return hf


class _Counting(HFBackend):
    """Counts the samples actually sent to the model."""

    sent: int = 0

    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        type(self).sent += sum(r.n for r in requests)
        return super().generate_batch(requests)


def test_samples_are_cached_by_index(tmp_path: Path, backend: HFBackend) -> None:
    counting = _Counting(str(backend.path))
    meter = UsageMeter()
    bb = MeteredBlackBox(counting, meter=meter, cache=ResponseCache(tmp_path))
    with torch_threads(1):
        two = bb.generate(["Q: 1 + 1\nA:"], n=2, temperature=1.0, max_tokens=6, seed=3)
        four = bb.generate(["Q: 1 + 1\nA:"], n=4, temperature=1.0, max_tokens=6, seed=3)
        more = bb.generate(
            ["Q: 1 + 1\nA:"], n=2, temperature=1.0, max_tokens=6, seed=3, sample_offset=4
        )
    assert _Counting.sent == 2 + 2 + 2  # only the missing samples were ever sent
    assert [c.text for c in four[0][:2]] == [c.text for c in two[0]]
    assert len(more[0]) == 2
    calls = meter.calls
    # call 2 was half cached: one billed record for the 2 new samples, one cached for the 2 old
    assert [(c.cached, c.samples) for c in calls] == [(False, 2), (False, 2), (True, 2), (False, 2)]
    assert calls[2].prompt_tokens == 0  # the prompt was billed with the samples sent


def test_second_pass_is_free_and_identical(tmp_path: Path, backend: HFBackend) -> None:
    cache = ResponseCache(tmp_path)
    prompts = ["Q: 2 + 3\nA:", "Q: 4 + 4\nA:"]
    with torch_threads(1):
        m1, m2 = UsageMeter(), UsageMeter()
        a = MeteredBlackBox(backend, meter=m1, cache=cache).generate(prompts, max_tokens=5)
        b = MeteredBlackBox(backend, meter=m2, cache=cache).generate(prompts, max_tokens=5)
        s = MeteredBlackBox(backend, meter=m2, cache=cache).score(prompts, [" 5", " 8"])
        s2 = MeteredBlackBox(backend, meter=m2, cache=cache).score(prompts, [" 5", " 8"])
        nt = MeteredBlackBox(backend, meter=m2, cache=cache).next_token_logprobs(prompts)
        nt2 = MeteredBlackBox(backend, meter=m2, cache=cache).next_token_logprobs(prompts)
    assert a == b
    assert s == s2
    np.testing.assert_array_equal(nt, nt2)
    assert all(c.cached for c in m2.calls[:2])
    summary = m2.summary()
    assert (
        summary["idealized"]["tune"]["task"]["tokens"] > summary["billed"]["tune"]["task"]["tokens"]
    )


def test_facts_about_the_model_are_cached_like_answers(tmp_path: Path, backend: HFBackend) -> None:
    """A replay that needs the vocabulary or embedding statistics (BBT) must not have to ask
    the server (which would start it)."""
    asked: list[str] = []

    class Asking(HFBackend):
        def vocabulary(self) -> list[str]:
            asked.append("vocabulary")
            return super().vocabulary()

        def embedding_stats(self) -> tuple[int, float, float]:
            asked.append("embedding_stats")
            return super().embedding_stats()

    asking = Asking(str(backend.path))
    asking.check_ready()
    cache = ResponseCache(tmp_path)
    first = MeteredBlackBox(asking, meter=UsageMeter(), cache=cache)
    again = MeteredBlackBox(asking, meter=UsageMeter(), cache=cache)
    assert first.vocabulary() == again.vocabulary() == backend.vocabulary()
    assert first.embedding_stats() == again.embedding_stats() == backend.embedding_stats()
    assert asked == ["vocabulary", "embedding_stats"]


def test_capabilities_are_checked(backend: HFBackend) -> None:
    class TextOnly(HFBackend):
        capabilities = frozenset({"generate"})

    bb = MeteredBlackBox(TextOnly(str(backend.path)), meter=UsageMeter())
    with pytest.raises(CapabilityError, match="does not offer 'score'"):
        bb.score(["a"], ["b"])
    with pytest.raises(CapabilityError, match="'logprobs'"):
        bb.generate(["a"], logprobs=2)
    with pytest.raises(CapabilityError, match="'next_token_logits'"):
        bb.next_token_logprobs(["a"])


def test_partial_failure_keeps_paid_answers(tmp_path: Path, backend: HFBackend) -> None:
    class HalfBroken(HFBackend):
        def generate_batch(self, requests):  # type: ignore[no-untyped-def]
            good = super().generate_batch(requests[:1])
            raise PartialBatchError(RuntimeError("boom"), [*good, *[None] * (len(requests) - 1)])

    meter = UsageMeter()
    cache = ResponseCache(tmp_path)
    bb = MeteredBlackBox(HalfBroken(str(backend.path)), meter=meter, cache=cache)
    with torch_threads(1), pytest.raises(RuntimeError, match="boom"):
        bb.generate(["Q: 1\nA:", "Q: 2\nA:"], max_tokens=3)
    assert len(meter.calls) == 1 and not meter.calls[0].cached  # the answer that arrived is billed
    assert cache.stats().entries == 1  # ... and cached, so a retry does not pay twice


def test_max_tokens_is_capped_to_the_context_window(backend: HFBackend) -> None:
    bb = MeteredBlackBox(backend, meter=UsageMeter())
    bb.context_length = 24
    prompt = "Q: 1 + 2 + 3\nA:"
    room = 24 - backend.count_tokens(prompt)
    with torch_threads(1):
        (out,) = bb.generate([prompt], max_tokens=500, temperature=1.0, seed=0)
    assert bb.meter.calls[-1].completion_tokens <= room
    assert out[0].finish_reason in ("length", "stop")
    with pytest.raises(BenchError, match="does not fit the context window of 24"):
        bb.generate(["word " * 40], max_tokens=5)


class _Seeds(HFBackend):
    """Records the seed of every generate request sent."""

    seeds: ClassVar[list[int | None]] = []

    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        type(self).seeds += [r.seed for r in requests]
        return super().generate_batch(requests)


def test_samples_beyond_the_cached_ones_are_fresh_draws(tmp_path: Path, backend: HFBackend) -> None:
    bb = MeteredBlackBox(
        _Seeds(str(backend.path)), meter=UsageMeter(), cache=ResponseCache(tmp_path)
    )
    args = {"temperature": 1.0, "max_tokens": 6, "seed": 3}
    with torch_threads(1):
        bb.generate(["Q: 1 + 1\nA:"], n=2, **args)
        bb.generate(["Q: 1 + 1\nA:"], n=4, **args)  # samples 2-3 missing
        bb.generate(["Q: 1 + 1\nA:"], n=2, sample_offset=4, **args)  # samples 4-5
        bb.generate(["Q: 1 + 1\nA:"], n=2, sample_offset=4, **args)  # all cached
    first, second, third = _Seeds.seeds
    # the first request uses the caller's seed; later ones do not repeat it (or each other), so
    # sample 4 is not sample 0 again under another cache key
    assert first == 3 and len({first, second, third}) == 3


# -- waiting on the black box -----------------------------------------------------------------


def test_overlapping_waits_count_once(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = itertools.count()  # each reading of the clock is one second later
    monkeypatch.setattr(metering.time, "perf_counter", lambda: float(next(clock)))
    meter = UsageMeter()
    first, second = meter.waiting(), meter.waiting()
    first.__enter__()  # t = 0: the first waiter starts the stretch
    second.__enter__()  # a second thread joins: no clock reading
    first.__exit__(None, None, None)  # one still waits: no clock reading
    second.__exit__(None, None, None)  # t = 1: the last one out ends it
    assert meter.wait_s == {"tune": 1.0}  # not 2: concurrent waits are one stretch
    meter.phase = "eval"
    with meter.waiting():  # t = 2 .. 3
        pass
    assert meter.summary()["wait_s"] == {"tune": 1.0, "eval": 1.0}


def test_sends_are_metered_as_waiting_and_cache_hits_only_as_calls(
    tmp_path: Path, backend: HFBackend
) -> None:
    meter = UsageMeter()
    bb = MeteredBlackBox(backend, meter=meter, cache=ResponseCache(tmp_path))
    assert meter.summary()["wait_s"] == {} and meter.summary()["call_s"] == {}
    with torch_threads(1):
        bb.generate(["Q: 1 + 1\nA:", "Q: 2 + 2\nA:"], max_tokens=4)
    first = meter.summary()
    waited, inside = first["wait_s"]["tune"], first["call_s"]["tune"]
    assert 0 < waited <= inside  # time in the call covers the wait, plus cache and metering
    with torch_threads(1):
        bb.generate(["Q: 1 + 1\nA:", "Q: 2 + 2\nA:"], max_tokens=4)  # all cached
    again = meter.summary()
    assert again["wait_s"]["tune"] == waited  # nothing sent: no wait
    assert again["call_s"]["tune"] > inside  # but reading the cache is in the call


# -- the adaptive bound on requests in flight -------------------------------------------------


def test_limiter_halves_on_429_once_per_window_and_grows_back_by_one() -> None:
    limiter = AdaptiveLimiter(8)
    assert (limiter.limit, limiter.epoch) == (8, 0)
    limiter.on_throttle(0)
    assert limiter.limit == 4
    limiter.on_throttle(0)  # sent before the cut: that cut already answered it
    assert limiter.limit == 4
    for expected in (2, 1, 1):  # sent after each cut: halves again, never below 1
        limiter.on_throttle(limiter.epoch)
        assert limiter.limit == expected
    assert limiter.lowest == 1 and limiter.throttles == 5
    # additive increase: a window's worth of successes (the bound itself) adds one
    grown = []
    for _ in range(1 + 2 + 3 + 4 + 5 + 6 + 7):
        limiter.on_success()
        grown.append(limiter.limit)
    assert grown[0] == 2 and grown[2] == 3 and grown[5] == 4 and grown[-1] == 8
    for _ in range(20):
        limiter.on_success()
    assert limiter.limit == 8  # never above the ceiling
    assert list(limiter.history) == [8, 4, 2, 1, 2, 3, 4, 5, 6, 7, 8]


def test_a_429_restarts_the_run_of_successes() -> None:
    limiter = AdaptiveLimiter(4)
    limiter.on_throttle(0)
    assert limiter.limit == 2
    limiter.on_success()
    limiter.on_throttle(0)  # a stale 429: no cut, but the run starts over
    limiter.on_success()
    assert limiter.limit == 2
    limiter.on_success()
    assert limiter.limit == 3


def test_limiter_rejects_a_ceiling_below_one() -> None:
    with pytest.raises(BenchError, match="ceiling must be >= 1"):
        AdaptiveLimiter(0)


def test_slots_keep_requests_in_flight_under_the_bound() -> None:
    limiter = AdaptiveLimiter(6)
    limiter.on_throttle(0)  # bound 3
    seen: list[tuple[int, int]] = []  # (in flight, bound) as each attempt starts

    async def attempt(i: int) -> int:
        async with limiter.slot():
            seen.append((limiter.in_flight, limiter.limit))
            await asyncio.sleep(0.001)
        return i

    async def burst() -> list[int]:
        return list(await asyncio.gather(*(attempt(i) for i in range(40))))

    assert asyncio.run(burst()) == list(range(40))
    assert all(flying <= bound for flying, bound in seen)
    assert seen[:3] == [(1, 3), (2, 3), (3, 3)]  # the first wave: three, not six
    assert max(flying for flying, _ in seen) == 6  # 40 successes grew it back to the ceiling
    assert limiter.in_flight == 0 and limiter.limit == 6


@pytest.fixture(scope="module")
def throttling_server(tiny_model: Path) -> Iterator[ServerHandle]:
    spec = FaultSpec(0.25, seed=11, kinds=("429",))
    with torch_threads(1), start_server(tiny_model, model_name="tiny", faults=spec) as handle:
        yield handle


def test_the_bound_drops_on_429s_recovers_and_loses_nothing(
    throttling_server: ServerHandle, tiny_server: ServerHandle
) -> None:
    requests = [GenerateRequest(prompt=f"Q: {i} + {i}\nA:", max_tokens=4) for i in range(96)]
    clean = OpenAIBackend("tiny", base_url=tiny_server.base_url, api="completions")
    throttled = OpenAIBackend(
        "tiny",
        base_url=throttling_server.base_url,
        api="completions",
        concurrency=8,
        max_retries=30,
        backoff_s=0.005,
    )
    try:
        expected = [r.value[0].text for r in clean.generate_batch(requests)]
        results = throttled.generate_batch(requests)
    finally:
        clean.close()
        throttled.close()
    stats = httpx.get(throttling_server.base_url + STATS_PATH.removeprefix("/v1")).json()
    injected = stats["injected"].get("429", 0)
    assert injected > 0
    # no request lost: every one answered, as without faults, one retry per 429 it met
    assert [r.value[0].text for r in results] == expected
    assert sum(r.retries for r in results) == injected == throttled.limiter.throttles
    limiter = throttled.limiter
    history = list(limiter.history)
    assert limiter.lowest < 8  # the bound dropped ...
    low = history.index(limiter.lowest)
    assert max(history[low:]) > limiter.lowest  # ... and grew back
    assert limiter.in_flight == 0 and limiter.limit <= limiter.ceiling == 8


# -- several prompts per request (completions API, a server that takes lists) ------------------


def test_prompt_lists_give_the_answers_and_usage_of_single_requests(
    tiny_server: ServerHandle,
) -> None:
    requests = [
        GenerateRequest(prompt=f"Q: {i} * 3\nA:", max_tokens=3 + i % 2, logprobs=2)
        for i in range(37)
    ]
    scores = [ScoreRequest(f"Q: {i} * 3\nA:", f" {3 * i}") for i in range(20)]
    single = OpenAIBackend("tiny", base_url=tiny_server.base_url, api="completions")
    listed = OpenAIBackend("tiny", base_url=tiny_server.base_url, api="completions")
    try:
        listed.check_ready()  # reads prompt_lists from the server's model card
        assert listed.prompt_lists and not single.prompt_lists
        chunks = listed._chunks(requests, lambda r: r.max_tokens)
        assert len(chunks) == 4 and max(len(c) for c in chunks) == 16  # 19 + 18 prompts
        one, many = single.generate_batch(requests), listed.generate_batch(requests)
        s_one, s_many = single.score_batch(scores), listed.score_batch(scores)
    finally:
        single.close()
        listed.close()
    # the same tokens; logprobs agree to float noise (rows ran in other batch shapes)
    assert [[(c.text, c.tokens) for c in r.value] for r in many] == [
        [(c.text, c.tokens) for c in r.value] for r in one
    ]
    for a, b in zip(many, one, strict=True):
        np.testing.assert_allclose(a.value[0].token_logprobs, b.value[0].token_logprobs, atol=1e-5)
    assert [(r.prompt_tokens, r.completion_tokens) for r in many] == [
        (r.prompt_tokens, r.completion_tokens) for r in one
    ]
    assert [r.value.tokens for r in s_many] == [r.value.tokens for r in s_one]
    for a, b in zip(s_many, s_one, strict=True):
        np.testing.assert_allclose(a.value.token_logprobs, b.value.token_logprobs, atol=1e-5)
    assert [r.prompt_tokens for r in s_many] == [r.prompt_tokens for r in s_one]


def test_prompt_lists_survive_429s_and_count_each_retry_once(
    throttling_server: ServerHandle, tiny_server: ServerHandle
) -> None:
    requests = [GenerateRequest(prompt=f"Q: {i} - 1\nA:", max_tokens=3) for i in range(64)]
    clean = OpenAIBackend("tiny", base_url=tiny_server.base_url, api="completions")
    listed = OpenAIBackend(
        "tiny",
        base_url=throttling_server.base_url,
        api="completions",
        max_retries=30,
        backoff_s=0.005,
    )
    try:
        listed.check_ready()  # its capability probe is not part of the count
        before = httpx.get(throttling_server.base_url + STATS_PATH.removeprefix("/v1")).json()
        expected = [r.value[0].text for r in clean.generate_batch(requests)]
        results = listed.generate_batch(requests)
    finally:
        clean.close()
        listed.close()
    after = httpx.get(throttling_server.base_url + STATS_PATH.removeprefix("/v1")).json()
    injected = after["injected"].get("429", 0) - before["injected"].get("429", 0)
    assert after["requests"] - before["requests"] == 4 + injected  # 4 lists of 16, and retries
    assert [r.value[0].text for r in results] == expected
    assert sum(r.retries for r in results) == injected


def test_a_cache_entry_of_the_wrong_shape_is_a_miss_said_once(
    tmp_path: Path, backend: HFBackend, caplog: pytest.LogCaptureFixture
) -> None:
    import json
    import logging

    cache = ResponseCache(tmp_path)
    prompts = ["Q: 2 + 3\nA:", "Q: 4 + 4\nA:"]
    with torch_threads(1):
        bb = MeteredBlackBox(backend, meter=UsageMeter(), cache=cache)
        first = bb.generate(prompts, max_tokens=5)
        bb.score(prompts, [" 5", " 8"])
        bb.next_token_logprobs(prompts)
        bb.vocabulary()
        entries = sorted(tmp_path.glob("*/*.json"))
        garbage: list[object] = [
            {"value": {"completion": "garbage"}},
            {"value": "garbage"},
            ["not", "an", "object"],
            {"value": {"tokens": 3, "token_logprobs": None, "prompt_tokens": "x"}},
            {"value": {"logprobs": {"shape": [2, 2], "data": "AAAA"}, "prompt_tokens": 1}},
            {"value": {"value": 5}},
        ]
        for i, path in enumerate(entries):
            path.write_text(json.dumps(garbage[i % len(garbage)]), encoding="utf-8")
        caplog.set_level(logging.WARNING)
        again = MeteredBlackBox(backend, meter=UsageMeter(), cache=ResponseCache(tmp_path))
        assert [[c.text for c in row] for row in again.generate(prompts, max_tokens=5)] == [
            [c.text for c in row] for row in first
        ]
        again.score(prompts, [" 5", " 8"])
        again.next_token_logprobs(prompts)
        assert again.vocabulary() == backend.vocabulary()
    warnings = [r for r in caplog.records if "cache entry" in r.getMessage()]
    assert len(warnings) == 1 and "treated as a miss" in warnings[0].getMessage(), warnings
    # Each bad entry was replaced by the fresh answer: a third pass is all hits.
    third = MeteredBlackBox(backend, meter=UsageMeter(), cache=ResponseCache(tmp_path))
    third.generate(prompts, max_tokens=5)
    assert all(c.cached for c in third.meter.calls)
