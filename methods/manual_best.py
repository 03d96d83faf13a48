"""Manual-best: the best of the task's hand-written instructions, chosen on dev.

The bar every instruction search must clear: a search that does not beat the best prompt a
person wrote for the task has found nothing a reader could not have picked by hand. Each of
the task's instructions (``task.instructions``, the default first) is scored on the first
dev examples exactly as `zero-shot` answers with it (the task's template, one greedy call per
example, the answer parsed and scored by the task; no label likelihood), and the best one
(ties: the earliest, so the default wins a tie) answers the test split. This is the scoring
step with which EvoPrompt initialises its population (``evoluter.py`` ``init_pop``: every
manual prompt scored on dev) and the "best manual template" GPS reports against, without the
search that follows.

The dev subset is the split's first examples, the same for every seed: decoding is greedy,
so the seeds of a cell agree, as zero-shot's do. The budget presets differ only in how many
dev examples there are (``max_calls``, the preset's call cap, divided by the number of
instructions); ``paper`` scores ``num_dev`` of them with no cap.

A task with one hand-written instruction (or none) has nothing to choose from: the tuner
makes no call and answers with that instruction (or the bare template), which is zero-shot,
and its `variant` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from methods.base import (
    BUDGET_CALLS,
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
from methods.prompting import score_instructions
from methods.registry import BenchError


@dataclass(frozen=True)
class ManualBestConfig:
    #: dev examples each instruction is scored on (the split's first ones): 200, the dev set
    #: EvoPrompt scores its manual prompts on for classification (``data/cls/*/dev.txt``).
    #: None: the whole dev split.
    num_dev: int | None = 200
    #: cap on tuning calls (instructions x dev examples); the dev subset shrinks to fit it.
    #: None: no cap (the ``paper`` preset).
    max_calls: int | None = None

    def __post_init__(self) -> None:
        if self.num_dev is not None and self.num_dev < 1:
            raise ValueError(f"num_dev must be >= 1 dev example (or None), got {self.num_dev}")
        if self.max_calls is not None and self.max_calls < 1:
            raise ValueError(f"max_calls must be >= 1 call (or None), got {self.max_calls}")


@register_method("manual-best")
class ManualBest(BlackBoxTuner):
    """The task's best hand-written instruction on dev, answering like zero-shot."""

    Config = ManualBestConfig
    config: ManualBestConfig
    # A baseline: the presets change only the dev examples scored (through the call cap).
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        budget: {"max_calls": calls} for budget, calls in BUDGET_CALLS.items()
    }

    variant: str | None = None

    def __init__(self, config: Any = None, **overrides: Any):
        super().__init__(config, **overrides)
        #: what the last `fit` scored: instructions, their dev scores, the winner's index.
        self.diagnostics: dict[str, Any] = {}

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        instructions = task.instructions
        if len(instructions) < 2:
            return CallPlan()  # zero-shot: nothing to score
        n = self._dev_size(len(instructions), len(dev))
        if n < 1:
            return CallPlan()  # `fit` refuses before any call
        # Upper bounds: the longest instruction on the longest scored dev example (tuning),
        # and on the longest input the task shows (the winner may be the longest instruction).
        longest = max(instructions, key=len)
        scored = dev[:n]
        tune_probe = max(scored, key=lambda ex: len(task.render(ex, instruction=longest)))
        eval_probe = max([*train, *dev], key=lambda ex: len(task.render(ex, instruction=longest)))
        calls = len(instructions) * n
        return CallPlan(
            calls=calls,
            samples=calls,
            tune_prompt=task.render(tune_probe, instruction=longest),
            eval_prompt=task.render(eval_probe, instruction=longest),
        )

    def _dev_size(self, n_instructions: int, n_dev: int) -> int:
        """Dev examples scored: ``num_dev`` of them, fewer to keep within ``max_calls``."""
        n = n_dev if self.config.num_dev is None else min(n_dev, self.config.num_dev)
        if self.config.max_calls is not None:
            n = min(n, self.config.max_calls // n_instructions)
        return n

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
        instructions = list(task.instructions)
        if len(instructions) < 2:
            self.variant = (
                "one hand-written instruction: zero-shot, nothing to choose"
                if instructions
                else "no hand-written instruction: the bare template, as zero-shot"
            )
            self.diagnostics = {"instructions": instructions, "dev_scores": [], "chosen": 0}
            return PromptPolicy(instruction=instructions[0] if instructions else None)
        dev = list(dev or ())
        n = self._dev_size(len(instructions), len(dev))
        if not dev:
            raise BenchError(
                f"manual-best scores task {task.name}'s {len(instructions)} instructions on "
                "dev examples, and its dev split is empty"
            )
        if n < 1:
            raise BenchError(
                f"manual-best: max_calls={self.config.max_calls} is under one dev example per "
                f"instruction ({len(instructions)} instructions); raise it to at least "
                f"{len(instructions)}"
            )
        scores = score_instructions(instructions, dev[:n], task=task, backend=backend)
        # max keeps the first of equal scores: the default instruction wins a tie.
        best = max(range(len(instructions)), key=lambda i: scores[i])
        self.variant = (
            f"instruction [{best}] of {len(instructions)} ([0]: the default), "
            f"{instructions[best]!r}: dev score {scores[best]:.3f} on {n} examples, the "
            f"default's {scores[0]:.3f}"
        )
        self.diagnostics = {
            "instructions": instructions,
            "dev_scores": scores,
            "chosen": best,
            "dev_examples": n,
        }
        ctx.on_event("manual_best_done", dict(self.diagnostics))
        return PromptPolicy(instruction=instructions[best])
