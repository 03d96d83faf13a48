from __future__ import annotations

from pathlib import Path

import pytest

from methods import (
    BUDGET_CALLS,
    BUDGETS,
    CAPABILITIES,
    BenchError,
    Example,
    PromptPolicy,
    get_method,
    load_policy,
    methods,
    missing_capabilities,
)


def test_missing_capabilities_orders_and_handles_alternatives() -> None:
    offered = frozenset({"generate", "logprobs"})
    assert missing_capabilities(frozenset({"generate"}), offered) == []
    assert missing_capabilities(frozenset({"prompt_embeds", "score"}), offered) == [
        "score",
        "prompt_embeds",
    ]
    assert missing_capabilities(frozenset({"next_token_logits|score"}), offered) == [
        "next_token_logits or score"
    ]
    assert missing_capabilities(frozenset({"next_token_logits|logprobs"}), offered) == []


def test_prompt_policy_round_trips(tmp_path: Path) -> None:
    demo = Example("d1", "1+1?", "2", rationale="1+1=2 #### 2", choices=None, meta={"k": 1})
    policy = PromptPolicy(instruction="Think.", demos=(demo,))
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, PromptPolicy)
    assert loaded == policy


def test_load_policy_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="no policy"):
        load_policy(tmp_path)
    (tmp_path / "policy.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(BenchError, match="not valid JSON"):
        load_policy(tmp_path)
    (tmp_path / "policy.json").write_text('{"kind": "nope"}', encoding="utf-8")
    with pytest.raises(BenchError, match="unknown policy type 'nope'"):
        load_policy(tmp_path)


def test_every_registered_method_is_well_formed() -> None:
    for name in methods.names():
        cls = get_method(name)
        assert cls.name == name
        # Empty only for a method that never calls the black box (majority).
        assert all(opt in CAPABILITIES for need in cls.requires for opt in need.split("|")), (
            f"{name} declares unknown capabilities"
        )
        assert cls.__doc__, f"{name} has no docstring"
        for budget in BUDGETS:
            tuner = cls.from_budget(budget)
            assert tuner.hyperparameters() is not None


def test_budget_presets_fit_their_call_caps() -> None:
    from benchmarks.tasks.base import Task

    class Tiny(Task):
        name = "tiny"
        instructions = ("Answer.",)

        def load_split(self, split):  # type: ignore[no-untyped-def]
            return [Example(f"{split}{i}", f"q{i}", str(i)) for i in range(50)]

        def extract(self, text: str, example: Example) -> str | None:
            return text.strip() or None

    task = Tiny()
    train, dev = task.examples("train"), task.examples("dev")
    for name in methods.names():
        cls = get_method(name)
        for budget, cap in BUDGET_CALLS.items():
            plan = cls.from_budget(budget).plan(task=task, train=train, dev=dev)
            assert plan.calls + plan.proposer_calls <= cap, f"{name}/{budget} plans too many calls"


def test_bad_hyperparameter_names_valid_ones() -> None:
    with pytest.raises(BenchError, match="valid: k, balanced, with_instruction"):
        get_method("few-shot").from_budget("light", kk=3)
    with pytest.raises(BenchError, match="unknown budget"):
        get_method("few-shot").from_budget("huge")


# -- disclosures and traces -------------------------------------------------------------------


def test_tune_context_collects_disclosures_once_and_refuses_unknown_kinds() -> None:
    from methods import TuneContext

    ctx = TuneContext()
    ctx.disclose("not-sent", "3 of 9 requests not sent")
    ctx.disclose("not-sent", "3 of 9 requests not sent")  # said twice: kept once
    ctx.disclose("no-change", "returned its start")
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        ("not-sent", "3 of 9 requests not sent"),
        ("no-change", "returned its start"),
    ]
    with pytest.raises(BenchError, match="unknown disclosure kind 'cut'; valid: no-change"):
        ctx.disclose("cut", "x")  # type: ignore[arg-type]


def test_tune_context_traces_every_event_and_still_forwards_it() -> None:
    from methods import TuneContext

    seen: list[tuple[str, dict[str, object]]] = []
    ctx = TuneContext(on_event=lambda e, f: seen.append((e, dict(f))))
    ctx.on_event("step", {"step": 0, "loss": 1.5})
    ctx.on_event("done", {})
    assert seen == [("step", {"step": 0, "loss": 1.5}), ("done", {})]
    assert ctx.trace == [{"event": "step", "step": 0, "loss": 1.5}, {"event": "done"}]


def test_prompt_policy_predictions_keep_the_prompt_sent() -> None:
    from methods import Completion

    class _Echo:
        def generate(self, prompts, **kwargs):  # type: ignore[no-untyped-def]
            return [[Completion("yes")] for _ in prompts]

    class _Task:
        max_tokens, stop = 2, ()

        def render(self, example, *, instruction=None, demos=()):  # type: ignore[no-untyped-def]
            return f"{instruction}|{example.input}"

        def extract(self, text, example):  # type: ignore[no-untyped-def]
            return text

    examples = [Example("a", "x", "yes"), Example("b", "y", "no")]
    out = PromptPolicy(instruction="Say").predict(examples, task=_Task(), backend=_Echo())  # type: ignore[arg-type]
    assert [p.prompt for p in out] == ["Say|x", "Say|y"]
