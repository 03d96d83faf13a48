"""`bench perf server`: the zoo server's generated tokens per second under concurrent
requests, as a ratio to direct batched `generate()` in one process on the same machine.

Both sides decode the same prompts greedily to the same length; the server side sends one
request per prompt, all at once, through the official async `openai` client, so the figure
includes HTTP, JSON and the server's micro-batching. Figures are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.engine import HFEngine
from benchmarks.server import start_server
from benchmarks.tasks.base import get_task
from benchmarks.tiny import torch_threads


@dataclass(frozen=True)
class Throughput:
    direct_tps: float
    server_tps: float
    concurrency: int
    max_tokens: int

    @property
    def ratio(self) -> float:
        return self.server_tps / self.direct_tps

    def describe(self) -> str:
        return (
            f"direct batched generate: {self.direct_tps:,.0f} tokens/s; server under "
            f"{self.concurrency} concurrent requests: {self.server_tps:,.0f} tokens/s; "
            f"ratio {self.ratio:.2f} (max_tokens {self.max_tokens})"
        )


def _prompts(n: int) -> list[str]:
    task = get_task("zoo-hops")
    return [task.render(ex, instruction=task.instructions[0]) for ex in task.examples("test")[:n]]


def server_throughput(
    model_dir: Path, *, concurrency: int = 32, max_tokens: int = 48, repeats: int = 3
) -> Throughput:
    """Best of ``repeats`` for each side (first call of each warms up)."""
    prompts = _prompts(concurrency)
    engine = HFEngine.load(model_dir)
    direct = 0.0
    # The server runs small CPU models on one torch thread; the direct side does the same,
    # so the ratio measures serving overhead, not a thread setting.
    with torch_threads(1 if engine.device == "cpu" else torch.get_num_threads()):
        engine.generate(prompts[:2], max_tokens=4)
        for _ in range(repeats):
            t0 = time.perf_counter()
            gens = engine.generate(prompts, max_tokens=max_tokens)
            tokens = sum(g.completion_tokens for g in gens)
            direct = max(direct, tokens / (time.perf_counter() - t0))
    del engine

    async def burst(base_url: str) -> float:
        import openai

        client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0)
        try:
            t0 = time.perf_counter()
            responses = await asyncio.gather(
                *(
                    client.completions.create(
                        model=model_dir.name, prompt=p, max_tokens=max_tokens, temperature=0.0
                    )
                    for p in prompts
                )
            )
            elapsed = time.perf_counter() - t0
        finally:
            await client.close()
        return sum(r.usage.completion_tokens if r.usage else 0 for r in responses) / elapsed

    served = 0.0
    with start_server(model_dir, model_name=model_dir.name) as handle:
        asyncio.run(burst(handle.base_url))  # warm-up
        for _ in range(repeats):
            served = max(served, asyncio.run(burst(handle.base_url)))
    return Throughput(direct, served, concurrency, max_tokens)
