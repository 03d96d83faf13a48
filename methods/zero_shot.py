"""Zero-shot: the untuned black box with the task's default instruction.

The reference row of every leaderboard: each method's gain is measured against it. No
tuning calls; inference is one greedy call per example.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    Example,
    PromptPolicy,
    TaskLike,
    TuneContext,
    register_method,
)


@dataclass(frozen=True)
class ZeroShotConfig:
    #: which of the task's manual instructions to use; 0 is the task's default (as in the
    #: zero-shot baselines of BBT, GrIPS and OPRO, which use the task's hand-written prompt).
    instruction_index: int = 0
    #: use no instruction at all (the bare template), as in Kojima et al.'s plain zero-shot.
    bare: bool = False


@register_method("zero-shot", "zeroshot")
class ZeroShot(BlackBoxTuner):
    """The untuned black box: the task's default instruction, no demonstrations."""

    Config = ZeroShotConfig
    config: ZeroShotConfig

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
        if self.config.bare or not task.instructions:
            return PromptPolicy(instruction=None)
        index = min(self.config.instruction_index, len(task.instructions) - 1)
        return PromptPolicy(instruction=task.instructions[index])
