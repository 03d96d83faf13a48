"""Manual-best: each hand-written instruction scored on dev as zero-shot answers with it, the
best (the earliest of a tie) answering test; no search where there is nothing to choose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from benchmarks.client import MeteredBlackBox
from benchmarks.tasks.base import Task, get_task
from methods import BUDGET_CALLS, BenchError, Completion, Example, PromptPolicy, get_method
from methods.base import TuneContext


class _Labels(Task):
    name = "labels"
    kind = "classification"
    labels = ("neg", "pos")
    instructions = ("Say it.", "Label it.", "Answer pos.", "Answer pos, really.")
    max_tokens = 3

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [Example(f"{split}{i}", f"text {i}", "pos" if i % 2 else "neg") for i in range(10)]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip() or None


class _ByInstruction:
    """Answers by the instruction at the top of the prompt: "Answer pos" ones say pos, "Label
    it." answers right, anything else says neg. Records every prompt it is sent."""

    model = "by-instruction"
    capabilities = frozenset({"generate"})
    context_length = None

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **_: Any) -> list[list[Completion]]:
        self.prompts += prompts
        out = []
        for prompt in prompts:
            if prompt.startswith("Answer pos"):
                answer = "pos"
            elif prompt.startswith("Label it."):
                number = int(prompt.rsplit("text ", 1)[1].split()[0])
                answer = "pos" if number % 2 else "neg"
            else:
                answer = "neg"
            out.append([Completion(f" {answer}")])
        return out


class _NoCalls:
    model = "no-calls"
    capabilities = frozenset({"generate"})
    context_length = None

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"manual-best called the black box's {name}")


def test_best_instruction_on_dev_wins_and_is_recorded() -> None:
    task = _Labels()
    box = _ByInstruction()
    tuner = get_method("manual-best")()
    dev = task.examples("dev")
    policy = tuner.fit(task.examples("train"), task=task, backend=box, dev=dev)  # type: ignore[arg-type]
    assert type(policy) is PromptPolicy and policy.instruction == "Label it."
    # Every instruction on every dev example, prompted exactly as zero-shot prompts.
    expected = [task.render(ex, instruction=i) for i in task.instructions for ex in dev]
    assert sorted(box.prompts) == sorted(expected)
    assert tuner.diagnostics["dev_scores"] == [0.5, 1.0, 0.5, 0.5]
    assert tuner.diagnostics["chosen"] == 1 and tuner.diagnostics["dev_examples"] == 10
    assert tuner.variant is not None
    assert tuner.variant.startswith("instruction [1] of 4 ([0]: the default), 'Label it.'")
    assert "dev score 1.000 on 10 examples, the default's 0.500" in tuner.variant
    plan = tuner.plan(task=task, train=task.examples("train"), dev=dev)
    assert plan.calls == len(box.prompts) == 40


def test_a_tie_goes_to_the_earliest_instruction() -> None:
    class Tied(_Labels):
        instructions = ("Say it.", "Answer pos.", "Answer pos, really.")  # all score 0.5

    task = Tied()
    tuner = get_method("manual-best")()
    policy = tuner.fit([], task=task, backend=_ByInstruction(), dev=task.examples("dev"))  # type: ignore[arg-type]
    assert policy.instruction == "Say it."  # type: ignore[attr-defined]
    assert tuner.diagnostics["dev_scores"] == [0.5, 0.5, 0.5]


@pytest.mark.parametrize(
    ("instructions", "expected", "variant"),
    [
        (("Only this.",), "Only this.", "one hand-written instruction: zero-shot"),
        ((), None, "no hand-written instruction: the bare template"),
    ],
)
def test_nothing_to_choose_is_zero_shot_without_a_call(
    instructions: tuple[str, ...], expected: str | None, variant: str
) -> None:
    class Few(_Labels):
        pass

    Few.instructions = instructions
    task = Few()
    tuner = get_method("manual-best").from_budget("light")
    policy = tuner.fit([], task=task, backend=_NoCalls(), dev=task.examples("dev"))  # type: ignore[arg-type]
    zero = get_method("zero-shot")().fit([], task=task, backend=_NoCalls())  # type: ignore[arg-type]
    assert policy.instruction == zero.instruction == expected  # type: ignore[attr-defined]
    assert tuner.variant is not None and tuner.variant.startswith(variant)
    assert tuner.plan(task=task, train=[], dev=task.examples("dev")).calls == 0


def test_presets_only_cap_the_dev_examples() -> None:
    task = _Labels()
    dev = [Example(f"d{i}", f"text {i}", "neg") for i in range(1000)]
    cls = get_method("manual-best")
    for budget, cap in BUDGET_CALLS.items():
        assert cls.presets[budget] == {"max_calls": cap}
        plan = cls.from_budget(budget).plan(task=task, train=[], dev=dev)
        assert plan.calls == 4 * min(200, cap // 4) <= cap
    assert cls.from_budget("paper").plan(task=task, train=[], dev=dev).calls == 4 * 200
    assert cls(num_dev=None).plan(task=task, train=[], dev=dev).calls == 4 * 1000
    box = _ByInstruction()
    tuner = cls(max_calls=9)  # two dev examples per instruction
    tuner.fit([], task=task, backend=box, dev=dev)  # type: ignore[arg-type]
    assert len(box.prompts) == 8 and tuner.diagnostics["dev_examples"] == 2


def test_bad_settings_and_an_empty_dev_split_are_one_line_errors() -> None:
    task = _Labels()
    with pytest.raises(BenchError, match="dev split is empty"):
        get_method("manual-best")().fit([], task=task, backend=_NoCalls(), dev=[])  # type: ignore[arg-type]
    with pytest.raises(BenchError, match="max_calls=3 is under one dev example per instruction"):
        get_method("manual-best")(max_calls=3).fit(
            [],
            task=task,
            backend=_NoCalls(),  # type: ignore[arg-type]
            dev=task.examples("dev"),
        )
    with pytest.raises(ValueError, match="num_dev must be >= 1"):
        get_method("manual-best")(num_dev=0)


def test_on_the_zoo_dev_scores_are_zero_shots_with_each_instruction(
    zoo_large: MeteredBlackBox,
) -> None:
    """Each instruction's dev score is what zero-shot with that instruction scores on the same
    dev examples, and the winner beats the default on zoo-sentiment (whose default is never
    the best instruction, by construction of the zoo)."""
    task = get_task("zoo-sentiment")
    dev = task.examples("dev")
    k = len(task.instructions)
    tuner = get_method("manual-best")(max_calls=12 * k)
    events: list[str] = []
    context = TuneContext(on_event=lambda event, fields: events.append(event))
    policy = tuner.fit([], task=task, backend=zoo_large, dev=dev, context=context)
    assert len(zoo_large.meter.calls) == 12 * k  # exactly the planned calls
    assert tuner.plan(task=task, train=[], dev=dev).calls == 12 * k
    assert events == ["manual_best_done"]
    scores = tuner.diagnostics["dev_scores"]
    for index, score in enumerate(scores):
        zero = get_method("zero-shot")(instruction_index=index).fit(
            [], task=task, backend=zoo_large
        )
        answers = zero.predict(dev[:12], task=task, backend=zoo_large)
        assert score == pytest.approx(
            sum(task.score(p.answer, ex) for p, ex in zip(answers, dev, strict=False)) / 12
        )
    best = tuner.diagnostics["chosen"]
    assert scores[best] == max(scores) > scores[0]
    assert policy.instruction == task.instructions[best] != task.instructions[0]  # type: ignore[attr-defined]
