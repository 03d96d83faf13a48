"""Aligner: the data it asks the black box for, the triples it trains on, the presets, and a
corrector that learns to replace wrong scripted answers by the gold ones; then a short light
run on zoo-large (calls as planned, deterministic, saved and reloaded).

Preset learning rate (light, zoo-truth, 300 questions, 200 test examples, zoo weights of
2026-11): 2e-5 (official) 0.20, 3e-4 0.28, 1e-3 0.11 accuracy against 0.09 for the black box
alone; training costs about 10 CPU-seconds (3 epochs of 300 triples on zoo-small)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.tasks.base import get_task
from methods import BUDGET_CALLS, TuneContext, get_method, load_policy
from methods.aligner import Aligner
from methods.corrector import CorrectorPolicy
from tests.methods.test_corrector import RecordingCompute, ScriptedBlackBox, SumTask


def _context(events: list[tuple[str, dict[str, Any]]], seed: int = 0) -> TuneContext:
    return TuneContext(
        seed=seed,
        resolve_model=resolve_model_dir,
        on_event=lambda e, f: events.append((e, dict(f))),
        compute=RecordingCompute(),
    )


FAST = {
    "template": "compact",
    "lr": 3e-3,
    "batch_size": 3,
    "schedule": "constant",
    "warmup_ratio": 0.0,
}


def test_fit_asks_one_greedy_answer_per_question_and_learns_to_correct() -> None:
    task = SumTask()
    train = task.examples("train")
    bb = ScriptedBlackBox(lambda prompt, k: " #### 0")
    tuner = Aligner(n_questions=3, epochs=80, **FAST)
    plan = tuner.plan(task=task, train=train, dev=[])
    events: list[tuple[str, dict[str, Any]]] = []
    context = _context(events, seed=5)
    policy = tuner.fit(train, task=task, backend=bb, context=context)

    chosen = random.Random(5).sample(list(train), 3)
    assert len(bb.calls) == 1 and len(bb.calls[0]["prompts"]) == plan.calls == 3
    call = bb.calls[0]
    assert call["prompts"] == [task.render(ex, instruction=task.instructions[0]) for ex in chosen]
    assert call["n"] == 1 and call["temperature"] == 0.0 and call["seed"] is None
    assert events[0] == ("data", {"questions": 3, "triples": 3, "upstream_accuracy": 0.0})
    assert [e for e, _ in events[1:]] == ["sft"] * 80 + ["train_loss"]
    # the trace keeps the epochs' losses after training, whether it ran or was cached
    losses = events[-1][1]["losses"]
    assert [round(v, 4) for v in losses] == [f["loss"] for e, f in events if e == "sft"]
    assert context.trace[-1] == {
        "event": "train_loss",
        "label": "train corrector",
        "losses": losses,
    }
    assert context.compute.labels == ["train corrector"]  # type: ignore[attr-defined]
    assert context.disclosures == []  # nothing cut in a 192-token corrector

    assert isinstance(policy, CorrectorPolicy) and policy.method == "aligner"
    predictions = policy.predict(chosen, task=task, backend=bb)
    assert [p.extra["upstream_answer"] for p in predictions] == ["0", "0", "0"]
    assert [p.answer for p in predictions] == [ex.target for ex in chosen]


def test_several_answers_per_question_are_sampled_in_one_call() -> None:
    task = SumTask()
    train = task.examples("train")
    bb = ScriptedBlackBox(lambda prompt, k: f" #### {k}")
    tuner = Aligner(n_questions=4, answers_per_question=3, temperature=0.7, epochs=1, **FAST)
    plan = tuner.plan(task=task, train=train, dev=[])
    events: list[tuple[str, dict[str, Any]]] = []
    tuner.fit(train, task=task, backend=bb, context=_context(events, seed=2))
    assert (plan.calls, plan.samples) == (4, 12)
    assert len(bb.calls) == 1
    assert (bb.calls[0]["n"], bb.calls[0]["temperature"], bb.calls[0]["seed"]) == (3, 0.7, 2)
    assert events[0][1]["triples"] == 12


def test_identity_warmup_runs_one_epoch_before_the_correction() -> None:
    task = SumTask()
    events: list[tuple[str, dict[str, Any]]] = []
    tuner = Aligner(n_questions=4, epochs=2, identity_warmup=0.5, **FAST)
    tuner.fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: " #### 0"),
        context=_context(events),
    )
    assert [e for e, _ in events] == ["data", "identity warmup", "sft", "sft", "train_loss"]


def test_sequences_cut_to_the_correctors_window_are_disclosed_with_their_count() -> None:
    """Seven of the toy triples take 42 tokens with the compact template, one (7 + 3) takes
    44: a 43-token corrector cuts exactly that one."""
    task = SumTask()
    ctx = _context([])
    Aligner(n_questions=8, epochs=1, max_length=43, **FAST).fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: " #### 0"),
        context=ctx,
    )
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "truncated",
            "1 of 8 training sequences cut to the corrector's 43-token window (the answer's "
            "end first, then the question's start)",
        )
    ]


def test_presets_fit_the_budgets_and_paper_is_the_official_script() -> None:
    paper = Aligner.from_budget("paper").config
    assert (paper.epochs, paper.lr, paper.batch_size, paper.max_length) == (3, 2e-5, 32, 2048)
    assert (paper.schedule, paper.warmup_ratio, paper.template) == ("cosine", 0.03, "current")
    assert paper.n_questions is None and paper.answers_per_question == 1
    task = get_task("zoo-truth", n_train=500, n_dev=4, n_test=4)
    train = task.examples("train")
    for budget, cap in BUDGET_CALLS.items():
        plan = Aligner.from_budget(budget).plan(task=task, train=train, dev=[])
        assert plan.calls == min(500, Aligner.presets[budget]["n_questions"]) <= cap
        assert plan.eval_calls_per_example == 1.0 and plan.eval_prompt is not None
    assert get_method("aligner") is Aligner and Aligner.uses_white_box


def test_light_on_zoo_truth_respects_its_plan_is_deterministic_and_reloads(
    zoo_large: Any, tmp_path: Path
) -> None:
    task = get_task("zoo-truth", n_train=12, n_dev=4, n_test=4)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    runs = []
    for _ in range(2):
        tuner = get_method("aligner").from_budget("light")
        plan = tuner.plan(task=task, train=train, dev=dev)
        zoo_large.meter.phase = "tune"
        before = len(zoo_large.meter.calls)
        policy = tuner.fit(
            train, task=task, backend=zoo_large, dev=dev, context=_context([], seed=3)
        )
        tune_calls = [c for c in zoo_large.meter.calls[before:] if c.phase == "tune"]
        assert len(tune_calls) == plan.calls == 12
        zoo_large.meter.phase = "eval"
        before = len(zoo_large.meter.calls)
        predictions = policy.predict(test, task=task, backend=zoo_large)
        eval_calls = [c for c in zoo_large.meter.calls[before:] if c.phase == "eval"]
        assert len(eval_calls) == len(test) * plan.eval_calls_per_example
        assert len(predictions) == len(test) and all(p.output for p in predictions)
        runs.append((policy, [p.output for p in predictions]))
    assert runs[0][1] == runs[1][1]

    runs[0][0].save(tmp_path / "aligner")
    loaded = load_policy(tmp_path / "aligner")
    assert isinstance(loaded, CorrectorPolicy) and loaded.template == "compact"
    again = loaded.predict(test, task=task, backend=zoo_large)
    assert [p.output for p in again] == runs[0][1]


@pytest.mark.parametrize("template", ["current", "v1"])
def test_paper_templates_fit_zoo_small_by_cutting_the_answer(template: str) -> None:
    task = SumTask()
    tuner = Aligner(n_questions=2, epochs=1, **{**FAST, "template": template})
    long_answer = " " + " ".join(["1 + 1 = 2 ."] * 50)
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: long_answer),
        context=_context([]),
    )
    assert isinstance(policy, CorrectorPolicy)
    prompt = policy.corrector.encode_prompt("What is 1 plus 1 ?", long_answer, 192 - 24)
    assert len(prompt) == 192 - 24
