"""The metered black box over a real in-process model: samples cached one by one, billed vs
cached calls, capability checks, and what happens to paid-for answers when a batch fails."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from benchmarks.backends.base import CallResult, GenerateRequest, PartialBatchError
from benchmarks.backends.hf import HFBackend
from benchmarks.cache import ResponseCache
from benchmarks.client import MeteredBlackBox
from benchmarks.metering import UsageMeter
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
