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
