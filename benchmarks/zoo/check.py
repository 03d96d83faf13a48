"""`bench zoo check`: measure the testbed properties that make the zoo benchmark mean something.

a. headroom: zoo-large zero-shot accuracy on each target task in [20%, 70%], and pass@8 at
   temperature 1 at least 1.5x that accuracy;
b. prompt sensitivity: over the task's hand-written instructions, accuracy spreads by at
   least 15 points, and the default instruction (``instructions[0]``) is not the best;
c. zoo-large as proposer: at least 80% of its samples for OPRO meta-prompts and EvoPrompt
   crossover requests are well-formed new instructions;
d. zoo-small is clearly weaker (5 points or more) than zoo-large on every target task.

Runs the models in process (the same engine the server uses); prints and returns figures.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.engine import HFEngine
from benchmarks.tasks._zoo import (
    ZooTask,
    evoprompt_crossover_prompt,
    is_well_formed_instruction,
    opro_meta_prompt,
    parse_proposal,
)
from benchmarks.tasks.base import get_task
from methods.base import Example

TASKS = ("zoo-arith", "zoo-hops", "zoo-truth", "zoo-sentiment")
HEADROOM = (0.20, 0.70)
PASS_RATIO = 1.5
SPREAD = 0.15
PROPOSER_OK = 0.80
WEAKER_BY = 0.05


@dataclass
class TaskCheck:
    task: str
    accuracy: float
    pass_at_8: float
    by_instruction: list[float]
    small_accuracy: float
    proposer_ok: float
    failures: list[str] = field(default_factory=list)


def _accuracy(
    engine: HFEngine, task: ZooTask, examples: Sequence[Example], instruction: str | None
) -> float:
    prompts = [task.render(ex, instruction=instruction) for ex in examples]
    gens = engine.generate(prompts, max_tokens=task.max_tokens, stop=list(task.stop))
    return sum(
        task.score(task.extract(g.samples[0].text, ex), ex)
        for g, ex in zip(gens, examples, strict=True)
    ) / len(examples)


def _pass_at(
    engine: HFEngine, task: ZooTask, examples: Sequence[Example], k: int, seed: int
) -> float:
    prompts = [task.render(ex, instruction=task.instructions[0]) for ex in examples]
    gens = engine.generate(
        prompts, n=k, temperature=1.0, max_tokens=task.max_tokens, stop=list(task.stop), seed=seed
    )
    hits = 0
    for g, ex in zip(gens, examples, strict=True):
        hits += any(task.score(task.extract(s.text, ex), ex) == 1.0 for s in g.samples)
    return hits / len(examples)


def _proposer(engine: HFEngine, task: ZooTask, n: int, seed: int) -> float:
    rng = random.Random(seed)
    pool = list(task.instructions)
    prompts, existing = [], []
    for i in range(n):
        if i % 2 == 0:
            shown = rng.sample(pool, min(4, len(pool)))
            scored = [(t, rng.randint(10, 90)) for t in shown]
            prompts.append(opro_meta_prompt(scored))
            existing.append(shown)
        else:
            a, b = rng.sample(pool, 2)
            prompts.append(evoprompt_crossover_prompt(a, b))
            existing.append([a, b])
    gens = engine.generate(prompts, temperature=1.0, max_tokens=64, seed=seed)
    ok = sum(
        is_well_formed_instruction(parse_proposal(g.samples[0].text), existing=shown)
        for g, shown in zip(gens, existing, strict=True)
    )
    return ok / n


def check_zoo(
    large: Path, small: Path, *, n: int = 100, seed: int = 0, log: Callable[[str], None] = print
) -> list[TaskCheck]:
    """Measure properties a-d on ``n`` test examples per task."""
    big, little = HFEngine.load(large), HFEngine.load(small)
    out = []
    for name in TASKS:
        task = get_task(name)
        assert isinstance(task, ZooTask)
        examples = task.examples("test")[:n]
        by_instruction = [_accuracy(big, task, examples, ins) for ins in task.instructions]
        result = TaskCheck(
            task=name,
            accuracy=by_instruction[0],
            pass_at_8=_pass_at(big, task, examples, 8, seed),
            by_instruction=by_instruction,
            small_accuracy=_accuracy(little, task, examples, task.instructions[0]),
            proposer_ok=_proposer(big, task, 40, seed),
        )
        lo, hi = HEADROOM
        if not lo <= result.accuracy <= hi:
            result.failures.append(f"a: accuracy {result.accuracy:.2f} outside [{lo}, {hi}]")
        if result.pass_at_8 < PASS_RATIO * result.accuracy:
            result.failures.append(f"a: pass@8 {result.pass_at_8:.2f} < {PASS_RATIO}x accuracy")
        if max(by_instruction) - min(by_instruction) < SPREAD:
            result.failures.append("b: instruction spread under 15 points")
        if by_instruction[0] >= max(by_instruction):
            result.failures.append("b: the default instruction is the best")
        if result.proposer_ok < PROPOSER_OK:
            result.failures.append(f"c: {result.proposer_ok:.0%} well-formed proposals")
        if result.small_accuracy > result.accuracy - WEAKER_BY:
            result.failures.append("d: zoo-small not clearly weaker")
        log(
            f"{name}: zero-shot {result.accuracy:.2f}, pass@8 {result.pass_at_8:.2f}, "
            f"by instruction {[round(a, 2) for a in by_instruction]}, small "
            f"{result.small_accuracy:.2f}, proposer {result.proposer_ok:.0%}"
            + (f"  FAILS: {'; '.join(result.failures)}" if result.failures else "  ok")
        )
        out.append(result)
    return out


def as_json(results: Sequence[TaskCheck]) -> list[dict[str, Any]]:
    return [r.__dict__ for r in results]
