"""Zero-shot baselines: the default prompt, and the same prompt with labels read by
likelihood (so a tuner's gain from likelihood reading alone is visible)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from benchmarks.tasks.base import get_task
from methods import Example, PromptPolicy, get_method
from methods.base import Completion, ScoredText
from methods.prompting import LabelLikelihoodPolicy


class _Scripted:
    """A black box that prefers "positive" by likelihood but answers "good" in text."""

    model = "scripted"
    capabilities = frozenset({"generate", "score"})
    context_length = None

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **_: object) -> list[list[Completion]]:
        return [[Completion(" good")] for _ in prompts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        return [
            ScoredText(("x",), (-0.1 if c.strip() == "positive" else -2.0,)) for c in continuations
        ]


def test_zero_shot_parses_text_and_the_likelihood_row_reads_labels() -> None:
    task = get_task("zoo-sentiment", n_train=4, n_dev=2, n_test=6)
    test = task.examples("test")
    box = _Scripted()
    plain = get_method("zero-shot").from_budget("light").fit([], task=task, backend=box)
    assert type(plain) is PromptPolicy
    assert all(p.answer is None for p in plain.predict(test, task=task, backend=box))

    ll = get_method("zero-shot-likelihood").from_budget("light").fit([], task=task, backend=box)
    assert isinstance(ll, LabelLikelihoodPolicy) and ll.instruction == task.instructions[0]
    preds = ll.predict(test, task=task, backend=box)
    assert [p.answer for p in preds] == ["positive"] * len(test)
    probs = np.exp(list(preds[0].extra["label_logprobs"].values()))
    assert abs(probs.sum() - 1.0) < 1e-9


def test_likelihood_option_leaves_generation_tasks_alone() -> None:
    task = get_task("zoo-arith", n_train=2, n_dev=2, n_test=2)
    tuner = get_method("zero-shot").from_budget("light", label_likelihood=True)
    policy = tuner.fit([], task=task, backend=_Scripted())
    assert type(policy) is PromptPolicy
    assert get_method("zero-shot-likelihood").requires == frozenset({"score|next_token_logits"})
    ex = Example("x", "q", "1")
    assert policy.prompt(ex, task).startswith(task.instructions[0])
