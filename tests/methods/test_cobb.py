"""CoBB: tuple collection from scripted samples (correctness split, de-duplication, the gold
fallback), the subset search (exact Wasserstein divergence, better than random subsets), the
call pattern of `fit` with the ORPO stage, and a short light run on zoo-large."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.tasks.base import get_task
from methods import BUDGET_CALLS, BenchError, Example, TuneContext, get_method
from methods.cobb import (
    CoBB,
    SubsetDivergence,
    _mutate,
    collect_tuples,
    select_subset,
)
from methods.corrector import CorrectorPolicy, PreferenceTuple
from tests.methods.test_corrector import RecordingCompute, ScriptedBlackBox, SumTask

FAST = {
    "template": "compact",
    "lr": 1e-3,
    "batch_size": 4,
    "schedule": "constant",
    "warmup_steps": 0,
    "ga_population": 6,
    "ga_generations": 3,
}


def _context(events: list[tuple[str, dict[str, Any]]], seed: int = 0) -> TuneContext:
    return TuneContext(
        seed=seed,
        resolve_model=resolve_model_dir,
        on_event=lambda e, f: events.append((e, dict(f))),
        compute=RecordingCompute(),
    )


# -- collecting tuples ------------------------------------------------------------------------

Q = Example("q", "What is 1 plus 1 ?", "2", rationale="1 + 1 = 2 . #### 2")


def test_tuples_pair_every_input_with_each_correct_and_incorrect_chain() -> None:
    samples = ["#### 1", " #### 2", "#### 2", "1 + 1 = 3 . #### 3"]
    tuples = collect_tuples([Q], [samples], task=SumTask(), count=len)
    # inputs: 3 distinct chains; correct: "#### 2"; incorrect: "#### 1", "1 + 1 = 3 . #### 3"
    assert len(tuples) == 3 * 1 * 2
    assert {t.pair.answer for t in tuples} == {"#### 1", "#### 2", "1 + 1 = 3 . #### 3"}
    assert {t.pair.chosen for t in tuples} == {"#### 2"}
    assert {t.pair.rejected for t in tuples} == {"#### 1", "1 + 1 = 3 . #### 3"}
    first = tuples[0]
    assert first.pair == PreferenceTuple("What is 1 plus 1 ?", "#### 1", "#### 2", "#### 1")
    assert first.features() == [0.0, 6.0, 6.0, 6.0, 0.5]  # input wrong, lengths, 2/4 correct
    assert [t.input_correct for t in tuples] == [False, False, True, True, False, False]


def test_gold_completion_is_the_correct_chain_per_the_setting() -> None:
    wrong = ["#### 1", "#### 3"]
    fallback = collect_tuples([Q], [wrong], task=SumTask())
    assert {t.pair.chosen for t in fallback} == {"1 + 1 = 2 . #### 2"} and len(fallback) == 4
    assert collect_tuples([Q], [wrong], task=SumTask(), gold_positive="never") == []
    mixed = ["#### 2", "#### 3"]
    always = collect_tuples([Q], [mixed], task=SumTask(), gold_positive="always")
    assert {t.pair.chosen for t in always} == {"#### 2", "1 + 1 = 2 . #### 2"}
    assert {t.pair.chosen for t in collect_tuples([Q], [mixed], task=SumTask())} == {"#### 2"}
    # all correct: nothing to contrast, no tuple
    assert collect_tuples([Q], [["#### 2", "1 + 1 = 2 . #### 2"]], task=SumTask()) == []


# -- the subset search ------------------------------------------------------------------------


def _synthetic(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            rng.random(n) < 0.3,  # input correct
            rng.poisson(40, n),  # input length
            rng.exponential(20, n).round(),  # chosen length (skewed)
            rng.integers(5, 60, n),  # rejected length
            rng.integers(0, 9, n) / 8,  # question's correct rate
        ],
        axis=1,
    ).astype(float)


def test_divergence_is_the_standardised_wasserstein_distance() -> None:
    features = _synthetic(500, 0)
    subset = np.random.default_rng(1).choice(500, 60, replace=False)
    expected = sum(wasserstein_distance(col[subset], col) / col.std() for col in features.T)
    assert SubsetDivergence(features)(subset) == pytest.approx(expected, rel=1e-9)
    assert SubsetDivergence(features)(np.arange(500)) == pytest.approx(0.0, abs=1e-12)
    # a constant feature is ignored, not divided by zero
    constant = np.concatenate([features, np.ones((500, 1))], axis=1)
    assert SubsetDivergence(constant)(subset) == pytest.approx(expected, rel=1e-9)


def test_genetic_search_matches_statistics_better_than_random_subsets() -> None:
    features = _synthetic(3000, 2)
    divergence = SubsetDivergence(features)
    rng = np.random.default_rng(3)
    random_scores = [divergence(rng.choice(3000, 150, replace=False)) for _ in range(40)]
    chosen, score = select_subset(
        features, 150, population=30, generations=40, rng=np.random.default_rng(4)
    )
    assert len(chosen) == 150 == len(set(chosen.tolist()))
    assert list(chosen) == sorted(chosen) and chosen.min() >= 0 and chosen.max() < 3000
    assert score == pytest.approx(divergence(chosen))
    assert score < min(random_scores)
    assert score < 0.6 * float(np.mean(random_scores))
    # deterministic for a seed
    again, _ = select_subset(
        features, 150, population=30, generations=40, rng=np.random.default_rng(4)
    )
    assert np.array_equal(chosen, again)


def test_subset_search_edges() -> None:
    features = _synthetic(20, 5)
    everything, _ = select_subset(features, 25, rng=np.random.default_rng(0))
    assert list(everything) == list(range(20))
    with pytest.raises(BenchError, match="at least one"):
        select_subset(features, 0, rng=np.random.default_rng(0))
    child = np.arange(10)
    mutated = _mutate(child, 12, 1.0, np.random.default_rng(0))
    assert len(set(mutated.tolist())) == 10 and set(mutated.tolist()) - set(range(10))
    assert np.array_equal(_mutate(child, 10, 1.0, np.random.default_rng(0)), child)


# -- fit --------------------------------------------------------------------------------------


def _alternating(prompt: str, k: int) -> str:
    """Sample k: even -> the right sum, odd -> off by one (so every question has both)."""
    a, b = (int(x) for x in prompt.rsplit("What is ", 1)[1].split(" ?")[0].split(" plus "))
    return f" #### {a + b + (k % 2)}"


def test_fit_samples_k_chains_per_question_selects_a_subset_and_trains_with_orpo() -> None:
    task = SumTask()
    train = task.examples("train")
    bb = ScriptedBlackBox(_alternating)
    tuner = CoBB(n_questions=5, samples=4, pairs_per_question=2.0, epochs=2, **FAST)
    plan = tuner.plan(task=task, train=train, dev=[])
    events: list[tuple[str, dict[str, Any]]] = []
    context = _context(events, seed=7)
    policy = tuner.fit(train, task=task, backend=bb, context=context)

    chosen = random.Random(7).sample(list(train), 5)
    assert (plan.calls, plan.samples) == (5, 20)
    assert len(bb.calls) == 1 and len(bb.calls[0]["prompts"]) == 5
    call = bb.calls[0]
    assert call["prompts"] == [task.render(ex, instruction=task.instructions[0]) for ex in chosen]
    assert (call["n"], call["temperature"], call["seed"]) == (4, 1.0, 7)
    name, data = events[0]
    assert name == "data"
    # per question: 2 distinct inputs x 1 correct x 1 incorrect = 2 tuples; 10 in all, keep 10
    assert {k: data[k] for k in ("questions", "samples", "collection", "subset")} == {
        "questions": 5,
        "samples": 20,
        "collection": 10,
        "subset": 10,
    }
    assert data["sample_accuracy"] == 0.5 and data["no_correct"] == data["all_correct"] == 0
    assert [e for e, _ in events[1:]] == ["orpo", "orpo", "train_loss"]
    assert [round(v, 4) for v in events[-1][1]["losses"]] == [
        f["loss"] for e, f in events if e == "orpo"
    ]
    assert context.compute.labels == ["subset search", "train corrector"]  # type: ignore[attr-defined]
    assert isinstance(policy, CorrectorPolicy) and policy.method == "cobb"
    assert tuner.variant is None and context.disclosures == []


def test_subset_size_is_pairs_per_question_times_questions_with_tuples() -> None:
    task = SumTask()
    events: list[tuple[str, dict[str, Any]]] = []
    # 6 samples: 3 distinct right, ... -> many tuples per question
    bb = ScriptedBlackBox(lambda p, k: _alternating(p, k) + " ." * (k // 2))
    CoBB(n_questions=4, samples=6, pairs_per_question=1.5, epochs=1, **FAST).fit(
        task.examples("train"), task=task, backend=bb, context=_context(events)
    )
    data = events[0][1]
    assert data["collection"] == 4 * 6 * 3 * 3 and data["subset"] == 6


def test_all_correct_samples_fall_back_to_sft_and_say_so() -> None:
    task = SumTask()
    events: list[tuple[str, dict[str, Any]]] = []
    tuner = CoBB(n_questions=3, samples=2, epochs=1, **FAST)
    context = _context(events)
    tuner.fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(lambda p, k: _alternating(p, 0)),
        context=context,
    )
    assert events[0][1]["collection"] == 0 and events[0][1]["all_correct"] == 3
    assert [e for e, _ in events[1:]] == ["sft", "train_loss"]
    assert tuner.variant == "no incorrect chains: SFT on correct chains"
    assert [(d.kind, d.detail) for d in context.disclosures] == [
        (
            "substitute",
            "SFT on correct chains instead of ORPO: none of the 3 questions' sampled chains was "
            "incorrect",
        )
    ]


def test_preference_sequences_cut_to_the_window_are_disclosed_with_their_count() -> None:
    """Every toy tuple holds two sequences (chosen and rejected); in a 32-token corrector
    all of them are cut (the shortest takes 33 tokens with the compact template)."""
    task = SumTask()
    context = _context([])
    CoBB(n_questions=5, samples=4, pairs_per_question=2.0, epochs=1, max_length=32, **FAST).fit(
        task.examples("train"),
        task=task,
        backend=ScriptedBlackBox(_alternating),
        context=context,
    )
    assert [(d.kind, d.detail) for d in context.disclosures] == [
        (
            "truncated",
            "20 of 20 training sequences cut to the corrector's 32-token window (the answer's "
            "end first, then the question's start)",
        )
    ]


def test_bad_gold_setting_is_refused() -> None:
    with pytest.raises(BenchError, match="valid: never, fallback, always"):
        CoBB(gold_positive="sometimes").fit(
            SumTask().examples("train"),
            task=SumTask(),
            backend=ScriptedBlackBox(lambda p, k: ""),
        )


def test_presets_fit_the_budgets() -> None:
    paper = CoBB.from_budget("paper").config
    assert (paper.lam, paper.lr, paper.epochs, paper.schedule) == (0.1, 5e-6, 5, "inverse_sqrt")
    task = get_task("zoo-truth", n_train=500, n_dev=4, n_test=4)
    train = task.examples("train")
    for budget, cap in BUDGET_CALLS.items():
        tuner = CoBB.from_budget(budget)
        plan = tuner.plan(task=task, train=train, dev=[])
        assert plan.calls == min(500, CoBB.presets[budget]["n_questions"]) <= cap
        assert plan.samples == plan.calls * tuner.config.samples
    assert get_method("cobb") is CoBB and CoBB.uses_white_box


# -- zoo-large --------------------------------------------------------------------------------


def test_light_on_zoo_truth_respects_its_plan_and_is_deterministic(zoo_large: Any) -> None:
    task = get_task("zoo-truth", n_train=12, n_dev=4, n_test=4)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    runs = []
    for _ in range(2):
        tuner = get_method("cobb").from_budget("light")
        plan = tuner.plan(task=task, train=train, dev=dev)
        zoo_large.meter.phase = "tune"
        before = len(zoo_large.meter.calls)
        events: list[tuple[str, dict[str, Any]]] = []
        policy = tuner.fit(
            train, task=task, backend=zoo_large, dev=dev, context=_context(events, seed=1)
        )
        tune_calls = [c for c in zoo_large.meter.calls[before:] if c.phase == "tune"]
        assert len(tune_calls) == plan.calls == 12
        assert sum(c.samples for c in tune_calls) == plan.samples == 48
        data = events[0][1]
        assert data["collection"] > 0 and data["subset"] <= data["collection"]
        zoo_large.meter.phase = "eval"
        before = len(zoo_large.meter.calls)
        predictions = policy.predict(test, task=task, backend=zoo_large)
        assert len([c for c in zoo_large.meter.calls[before:] if c.phase == "eval"]) == len(test)
        assert len(predictions) == len(test) and all(p.output for p in predictions)
        runs.append((events, [p.output for p in predictions]))
    assert runs[0] == runs[1]
