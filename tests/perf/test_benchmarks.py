"""pytest-benchmark figures of the fast paths, printed and never asserted. By default
(``--benchmark-disable`` in pyproject) each runs once as a plain test; measure with
``.venv/bin/pytest tests/perf --benchmark-enable``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from benchmarks.backends.hf import HFBackend
from benchmarks.backends.openai_backend import AdaptiveLimiter
from benchmarks.cache import ResponseCache
from benchmarks.client import MeteredBlackBox
from benchmarks.metering import UsageMeter
from benchmarks.tiny import tiny_model_dir, torch_threads

pytestmark = pytest.mark.perf

PROMPTS = [f"Q: {i} + {i % 7}\nA:" for i in range(200)]


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory) -> tuple[HFBackend, Path]:
    """The tiny model and a cache holding its greedy answers to `PROMPTS`."""
    root = tmp_path_factory.mktemp("perf")
    backend = HFBackend(str(tiny_model_dir(root / "m")))
    backend.check_ready()
    with torch_threads(1):
        MeteredBlackBox(backend, meter=UsageMeter(), cache=ResponseCache(root / "cache")).generate(
            PROMPTS, max_tokens=4
        )
    return backend, root / "cache"


def test_replay_from_the_cache(benchmark: Any, warm: tuple[HFBackend, Path]) -> None:
    """200 cached calls: what a replay pays per call (keys, file reads, metering)."""
    backend, cache = warm

    def replay() -> UsageMeter:
        meter = UsageMeter()
        box = MeteredBlackBox(backend, meter=meter, cache=ResponseCache(cache))
        box.generate(PROMPTS, max_tokens=4)
        return meter

    meter = benchmark(replay)
    assert all(c.cached for c in meter.calls) and len(meter.calls) == len(PROMPTS)
    assert meter.summary()["wait_s"] == {}  # nothing was sent


def test_limiter_slot_overhead(benchmark: Any) -> None:
    """1,000 attempts through the AIMD gate with nothing to wait on."""
    limiter = AdaptiveLimiter(64)

    async def attempts() -> int:
        async def one() -> None:
            async with limiter.slot():
                pass

        await asyncio.gather(*(one() for _ in range(1000)))
        return limiter.in_flight

    assert benchmark(lambda: asyncio.run(attempts())) == 0
