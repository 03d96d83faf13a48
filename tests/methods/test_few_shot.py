from __future__ import annotations

from collections import Counter

from benchmarks.tasks.base import Task
from methods import Example, TuneContext, get_method


class _Labels(Task):
    name = "labels"
    kind = "classification"
    labels = ("neg", "pos")
    instructions = ("Classify.", "Label it.")
    max_tokens = 3

    def load_split(self, split):  # type: ignore[no-untyped-def]
        # 30 negatives, 10 positives: an unbalanced draw would favour "neg".
        return [Example(f"{split}{i}", f"text {i}", "neg" if i < 30 else "pos") for i in range(40)]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip() or None


def test_few_shot_is_seeded_and_balanced() -> None:
    task = _Labels()
    train = task.examples("train")
    tuner = get_method("few-shot").from_budget("light")  # k = 4
    a = tuner.fit(train, task=task, backend=None, context=TuneContext(seed=0))  # type: ignore[arg-type]
    b = tuner.fit(train, task=task, backend=None, context=TuneContext(seed=0))  # type: ignore[arg-type]
    c = tuner.fit(train, task=task, backend=None, context=TuneContext(seed=1))  # type: ignore[arg-type]
    assert a.demos == b.demos  # type: ignore[attr-defined]
    assert a.demos != c.demos  # type: ignore[attr-defined]
    assert Counter(d.target for d in a.demos) == {"neg": 2, "pos": 2}  # type: ignore[attr-defined]
    assert a.instruction == "Classify."  # type: ignore[attr-defined]
    prompt = a.prompt(train[0], task)  # type: ignore[attr-defined]
    assert prompt.startswith("Classify.") and prompt.count("A:") == 5


def test_few_shot_plan_projects_longer_prompts_than_zero_shot() -> None:
    task = _Labels()
    train, dev = task.examples("train"), task.examples("dev")
    few = get_method("few-shot").from_budget("medium").plan(task=task, train=train, dev=dev)
    zero = get_method("zero-shot").from_budget("medium").plan(task=task, train=train, dev=dev)
    assert few.calls == 0 and zero.calls == 0
    assert few.eval_prompt is not None and few.eval_prompt.count("A:") == 9
    assert zero.eval_prompt is None


def test_zero_shot_uses_default_or_bare_instruction() -> None:
    task = _Labels()
    train = task.examples("train")
    policy = get_method("zero-shot")().fit(train, task=task, backend=None)  # type: ignore[arg-type]
    assert policy.instruction == "Classify."  # type: ignore[attr-defined]
    bare = get_method("zero-shot")(bare=True).fit(train, task=task, backend=None)  # type: ignore[arg-type]
    assert bare.instruction is None  # type: ignore[attr-defined]


class _Window:
    """Just enough of a black box to tell the context window and count tokens (words)."""

    context_length = 40

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def test_few_shot_drops_demos_that_do_not_fit_the_window() -> None:
    task = _Labels()
    train = task.examples("train")
    tuner = get_method("few-shot").from_budget("heavy")  # k = 16: far over 40 "tokens"
    policy = tuner.fit(train, task=task, backend=_Window(), context=TuneContext(seed=0))  # type: ignore[arg-type]
    longest = max(train, key=lambda ex: len(ex.input))
    assert 0 < len(policy.demos) < 16  # type: ignore[attr-defined]
    assert len(policy.prompt(longest, task).split()) + task.max_tokens <= 40  # type: ignore[attr-defined]
    assert tuner.variant == f"k={len(policy.demos)} (context 40)"  # type: ignore[attr-defined]


def test_few_shot_discloses_fewer_demonstrations_and_a_zero_shot_prompt() -> None:
    """k cut by the window is disclosed with its counts; with no room for any demonstration
    the row is zero-shot's prompt, disclosed as no change (computed from the policy)."""
    task = _Labels()
    train = task.examples("train")
    ctx = TuneContext(seed=0)
    policy = (
        get_method("few-shot")
        .from_budget("heavy")
        .fit(
            train,
            task=task,
            backend=_Window(),  # type: ignore[arg-type]
            context=ctx,
        )
    )
    k = len(policy.demos)  # type: ignore[attr-defined]
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "k-reduced",
            f"k = {k} of 16 demonstrations: more would not leave the longest training input "
            "and its answer in the 40-token window",
        )
    ]

    class _Tiny(_Window):
        context_length = 8  # the instruction and the longest input only

    ctx = TuneContext(seed=0)
    policy = (
        get_method("few-shot")
        .from_budget("light")
        .fit(
            train,
            task=task,
            backend=_Tiny(),  # type: ignore[arg-type]
            context=ctx,
        )
    )
    assert policy.demos == ()  # type: ignore[attr-defined]
    assert [d.kind for d in ctx.disclosures] == ["k-reduced", "no-change"]
    assert ctx.disclosures[1].detail.startswith("no demonstration fits: the prompt is zero-shot's")

    ctx = TuneContext(seed=0)
    get_method("few-shot").from_budget("light").fit(train, task=task, backend=None, context=ctx)  # type: ignore[arg-type]
    assert ctx.disclosures == []  # no window: all k demonstrations, nothing to disclose
