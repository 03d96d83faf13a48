"""Zero-shot: the untuned black box with the task's default instruction.

The reference row of every leaderboard: each method's gain is measured against it. No
tuning calls; inference is one greedy call per example.

``zero-shot-likelihood`` is the same untuned prompt with classification answers read as the
most likely label word (the scoring of BBT, GrIPS and LM-BFF) instead of parsed from greedy
text. Tuners that predict by likelihood owe part of their gain over ``zero-shot`` to that
reading alone; this row separates it from what their search found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
from methods.prompting import LabelLikelihoodPolicy, is_labelled


@dataclass(frozen=True)
class ZeroShotConfig:
    #: which of the task's manual instructions to use; 0 is the task's default (as in the
    #: zero-shot baselines of BBT, GrIPS and OPRO, which use the task's hand-written prompt).
    instruction_index: int = 0
    #: use no instruction at all (the bare template), as in Kojima et al.'s plain zero-shot.
    bare: bool = False
    #: read classification answers as the most likely label word (``score`` or
    #: ``next_token_logits``) instead of parsing greedy text; other tasks are unaffected.
    label_likelihood: bool = False


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
        instruction = None
        if not self.config.bare and task.instructions:
            instruction = task.instructions[
                min(self.config.instruction_index, len(task.instructions) - 1)
            ]
        if self.config.label_likelihood and is_labelled(task):
            return LabelLikelihoodPolicy(instruction=instruction)
        return PromptPolicy(instruction=instruction)


@register_method("zero-shot-likelihood", "zero-shot-ll")
class ZeroShotLikelihood(ZeroShot):
    """The untuned prompt, classification labels read by likelihood (see the module doc)."""

    requires = frozenset({"score|next_token_logits"})

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        if not is_labelled(task):
            return CallPlan()
        # At most one scoring call per label (the score path); each bills the prompt and
        # the label's tokens, which the per-sample completion bound covers.
        labels = len(task.labels or ())
        return CallPlan(eval_calls_per_example=labels, eval_samples_per_example=labels)

    def __init__(self, config: ZeroShotConfig | None = None, **overrides: object):
        super().__init__(config, **{"label_likelihood": True, **overrides})
