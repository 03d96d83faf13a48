"""Few-shot: k in-context demonstrations drawn from the training set.

The second reference row: what plain in-context learning buys, and what it costs in
inference tokens (every test prompt carries the k demonstrations). Demonstrations are drawn
at random with the cell's seed, class-balanced for classification tasks as in LM-BFF's
demonstration sampling; no tuning calls are made.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Example,
    PromptPolicy,
    TaskLike,
    TuneContext,
    register_method,
)


@dataclass(frozen=True)
class FewShotConfig:
    #: demonstrations per prompt; 8 as in the chain-of-thought GSM8K prompts of Wei et al.
    #: (2022), the setting the BBox-Adapter and OPRO papers compare against.
    k: int = 8
    #: draw the same number of demonstrations per label on classification tasks.
    balanced: bool = True
    #: keep the task's default instruction in front of the demonstrations.
    with_instruction: bool = True

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0 demonstrations, got {self.k}")


@register_method("few-shot", "fewshot", "icl")
class FewShot(BlackBoxTuner):
    """In-context learning with k random (seeded) training demonstrations."""

    Config = FewShotConfig
    config: FewShotConfig
    variant: str | None = None
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "light": {"k": 4},
        "medium": {"k": 8},
        "heavy": {"k": 16},
    }

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        # An upper bound whatever the seed draws: the k longest demonstrations, after the
        # longest training input (the runner adds the spread of the test inputs).
        k = min(self.config.k, len(train))
        demos = sorted(
            train, key=lambda ex: len(ex.input) + len(task.render_target(ex)), reverse=True
        )[:k]
        eval_prompt = (
            task.render(
                max(train, key=lambda ex: len(ex.input)),
                instruction=self._instruction(task),
                demos=demos,
            )
            if train
            else None
        )
        return CallPlan(eval_prompt=eval_prompt)

    def fit(
        self,
        train: Sequence[Example],
        *,
        task: TaskLike,
        backend: BlackBox,
        dev: Sequence[Example] | None = None,
        proposer: BlackBox | None = None,
        context: TuneContext | None = None,
    ) -> AdaptedPolicy:
        ctx = context or TuneContext()
        demos = self._choose(train, task, random.Random(ctx.seed))
        policy = PromptPolicy(instruction=self._instruction(task), demos=tuple(demos))
        limit = getattr(backend, "context_length", None)
        if limit and train:
            # Keep the longest training input within the window: drop demonstrations from the
            # end until it fits, and say so (the variant goes into the result record).
            probe = max(train, key=lambda ex: len(ex.input))
            while policy.demos and (
                backend.count_tokens(policy.prompt(probe, task)) + task.max_tokens > limit
            ):
                policy = PromptPolicy(policy.instruction, policy.demos[:-1])
            if len(policy.demos) < len(demos):
                self.variant = f"k={len(policy.demos)} (context {limit})"
                ctx.disclose(
                    "k-reduced",
                    f"k = {len(policy.demos)} of {len(demos)} demonstrations: more would not "
                    f"leave the longest training input and its answer in the {limit}-token "
                    "window",
                )
        if demos and not policy.demos:
            ctx.disclose(
                "no-change",
                "no demonstration fits: the prompt is zero-shot's (the task's instruction 0 alone)"
                if policy.instruction is not None
                else "no demonstration fits: the prompt is the bare template",
            )
        return policy

    def _instruction(self, task: TaskLike) -> str | None:
        return task.instructions[0] if self.config.with_instruction and task.instructions else None

    def _choose(
        self, train: Sequence[Example], task: TaskLike, rng: random.Random
    ) -> list[Example]:
        k = min(self.config.k, len(train))
        if self.config.balanced and task.kind == "classification":
            return _balanced_sample(train, k, rng)
        return rng.sample(list(train), k)


def _balanced_sample(train: Sequence[Example], k: int, rng: random.Random) -> list[Example]:
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in train:
        by_label[ex.target].append(ex)
    pools = [rng.sample(group, len(group)) for _, group in sorted(by_label.items())]
    demos: list[Example] = []
    while len(demos) < k and any(pools):
        for pool in pools:
            if pool and len(demos) < k:
                demos.append(pool.pop())
    rng.shuffle(demos)
    return demos
