"""Majority: the most common answer of the train split, for every test example.

The floor of every leaderboard: what a constant guess scores, with no call to the black box
(its row costs nothing). The answer is the most common ``Example.target`` of the train split
(ties: the first in sorted order, so it is deterministic), scored by the task like any
parsed answer.

It runs on every task. On classification, multiple-choice (letters) and yes/no tasks the
answers share one small set, and the row is the majority-class rate (the chance level a tuner
must clear). On free-form answers (gsm8k's numbers, zoo-arith) it is still defined, the most
frequent train number, and scores near zero: the floor is then near zero, which is true of
those tasks, not a malfunction. Its `variant` names the answer and how often train gives it.

Constant by design, its predictions are one answer throughout; the runner's one-answer
warning (`benchmarks.results.answer_warnings`), which flags a method whose outputs collapsed,
is not raised for it (``one_answer_by_design``): the row already says what it predicts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from methods.base import (
    AdaptedPolicy,
    BlackBox,
    BlackBoxTuner,
    CallPlan,
    Example,
    Prediction,
    TaskLike,
    TuneContext,
    policy_types,
    register_method,
)
from methods.registry import BenchError


@dataclass(frozen=True)
class MajorityConfig:
    """No hyperparameters: the baseline is defined by the train split alone."""


@policy_types.register("constant")
@dataclass
class ConstantPolicy(AdaptedPolicy):
    """The same answer for every example, without calling the black box.

    Attributes:
        answer: the answer given, normalised like `Example.target`.
    """

    kind: ClassVar[str] = "constant"
    answer: str

    def predict(
        self, examples: Sequence[Example], *, task: TaskLike, backend: BlackBox
    ) -> list[Prediction]:
        return [Prediction(ex.id, self.answer, self.answer) for ex in examples]

    def to_json(self) -> dict[str, Any]:
        return {"answer": self.answer}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], directory: Path) -> ConstantPolicy:
        return cls(answer=str(data["answer"]))


@register_method("majority")
class Majority(BlackBoxTuner):
    """The most common train answer for every example; no black-box call."""

    Config = MajorityConfig
    config: MajorityConfig
    requires: ClassVar[frozenset[str]] = frozenset()  # never calls the black box
    #: read by the runner: predictions that are one answer throughout are not flagged.
    one_answer_by_design: ClassVar[bool] = True

    variant: str | None = None

    def plan(self, *, task: TaskLike, train: Sequence[Example], dev: Sequence[Example]) -> CallPlan:
        return CallPlan(eval_calls_per_example=0.0, eval_samples_per_example=0.0)

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
        if not train:
            raise BenchError(
                f"majority takes the most common train answer; task {task.name} "
                "has no train examples"
            )
        counts = Counter(ex.target for ex in train)
        answer, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
        self.variant = f"always {answer!r} ({count} of {len(train)} train answers)"
        return ConstantPolicy(answer)
