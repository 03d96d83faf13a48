from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.tasks.base import Task, get_task
from methods import (
    BUDGET_CALLS,
    Completion,
    Example,
    PromptPolicy,
    ScoredText,
    TuneContext,
    get_method,
    load_policy,
)
from methods.grips import (
    EditSearch,
    GripsConfig,
    GripsTuner,
    LabelLikelihoodPolicy,
    Paraphraser,
    _Candidate,
    balanced_accuracy,
    grips_score,
    label_entropy,
    match_ending,
    split_phrases,
)
from methods.prompting import paraphrase_prompt

ORIGINAL = "Say neg always . Classify the text ."


class _Labels(Task):
    name = "labels"
    kind = "classification"
    labels = ("neg", "pos")
    instructions = (ORIGINAL, "Classify the text .")
    max_tokens = 3

    def __init__(self, n: int = 10, n_labels: int = 2) -> None:
        super().__init__()
        self.n = n
        if n_labels != 2:
            self.labels = tuple(f"l{i}" for i in range(n_labels))  # type: ignore[misc]

    def load_split(self, split):  # type: ignore[no-untyped-def]
        labels = self.labels or ("neg", "pos")
        return [
            Example(f"{split}{i}", f"text {split} {i}", labels[i % len(labels)])
            for i in range(self.n)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip().split()[0] if text.strip() else None


class _Gen(_Labels):
    name = "gen"
    kind = "generation"
    labels = None


class ScriptedBox:
    """A black box that answers by rule: an instruction mentioning "neg" makes it answer
    "neg" to everything, otherwise it answers the gold label; label scores are -0.1 for its
    answer and -3 for the others. Paraphrase requests get the scripted proposals."""

    model = "scripted"

    def __init__(
        self,
        gold: dict[str, str],
        *,
        capabilities: Sequence[str] = ("generate", "score"),
        proposals: dict[str, list[str]] | None = None,
        context_length: int | None = None,
    ) -> None:
        self.gold = gold
        self.capabilities = frozenset(capabilities)
        self.proposals = proposals or {}
        self.context_length = context_length
        self.scored: list[tuple[str, str]] = []
        self.generated: list[tuple[str, int, float]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def answer(self, prompt: str) -> str:
        instruction = prompt.split("\n\n")[0] if "\n\n" in prompt else ""
        text = prompt.rsplit("Q: ", 1)[1].split("\nA:")[0]
        return "neg" if "neg" in instruction.lower() else self.gold[text]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        out = []
        for prompt, cont in zip(prompts, continuations, strict=True):
            self.scored.append((prompt, cont))
            lp = -0.1 if cont.strip() == self.answer(prompt) else -3.0
            out.append(ScoredText((cont,), (lp,)))
        return out

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        **kwargs: Any,
    ) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            self.generated.append((prompt, n, temperature))
            if prompt.startswith("Generate a variation"):
                phrase = prompt.split("Input: ", 1)[1].rsplit("\nOutput:", 1)[0]
                texts = self.proposals.get(phrase, ["garbage"])
                out.append([Completion(texts[i % len(texts)]) for i in range(n)])
            else:
                out.append([Completion(" " + self.answer(prompt))] * n)
        return out


def _box(task: Task, **kwargs: Any) -> ScriptedBox:
    gold = {ex.input: ex.target for s in ("train", "dev", "test") for ex in task.examples(s)}
    return ScriptedBox(gold, **kwargs)


# -- the score ------------------------------------------------------------------------------


def test_score_is_balanced_accuracy_plus_entropy_on_a_hand_case() -> None:
    predicted, gold = [0, 0, 0, 1], [0, 1, 1, 1]
    # recall of class 0: 1/1, of class 1: 1/3 -> 2/3; frequencies (3/4, 1/4)
    assert balanced_accuracy(predicted, gold) == pytest.approx(2 / 3)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert label_entropy(predicted, 2) == pytest.approx(h)
    assert grips_score(predicted, gold, 2) == pytest.approx(66.67 + 10 * h)
    # all one label: no entropy bonus; a third label never predicted does not count
    assert label_entropy([1, 1, 1], 3) == 0.0
    assert grips_score([1, 1, 1, 1], [0, 0, 1, 1], 3) == pytest.approx(50.0)
    # -1 (no label parsed) is wrong and outside the frequencies
    assert balanced_accuracy([0, -1, 1, 1], [0, 1, 1, 0]) == pytest.approx(0.5)
    assert label_entropy([0, -1, 1, 1], 2) == pytest.approx(
        -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    )
    assert label_entropy([-1, -1], 2) == 0.0


def test_score_matches_sklearn_and_scipy() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        gold = rng.integers(0, 3, size=30).tolist()
        predicted = rng.integers(0, 3, size=30).tolist()
        ours = grips_score(predicted, gold, 3)
        freqs = [predicted.count(lab) / len(predicted) for lab in range(3)]
        ref = np.round(100 * metrics.balanced_accuracy_score(gold, predicted), 2)
        assert ours == pytest.approx(ref + 10 * stats.entropy(freqs))


# -- phrases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instruction", "phrases"),
    [
        ("Think step by step .", ["Think step by step ."]),
        (
            "Read the review and give your verdict .",
            ["Read the review", "and give your verdict ."],
        ),
        (
            "Recall each fact you need , then answer .",
            ["Recall each fact you need ,", "then answer ."],
        ),
        (
            "First state the facts , then say yes or no .",
            ["First state the facts ,", "then say yes or no ."],
        ),
        ("Answer positive or negative .", ["Answer positive or negative ."]),
        (
            "Classify the review . Label the sentiment as positive or negative .",
            ["Classify the review .", "Label the sentiment as positive or negative ."],
        ),
        (
            "In this task, you are given a tweet.\nClassify it as positive or negative; "
            "reply with one word because the grader reads only the first one!",
            [
                "In this task,",
                "you are given a tweet.",
                "Classify it as positive or negative;",
                "reply with one word",
                "because the grader reads only the first one!",
            ],
        ),
        ("Solve it then check it twice", ["Solve it", "then check it twice"]),
        ("", []),
    ],
)
def test_split_phrases(instruction: str, phrases: list[str]) -> None:
    assert split_phrases(instruction) == phrases
    assert " ".join(phrases) == " ".join(instruction.split())


def test_paraphrase_takes_the_phrase_ending() -> None:
    assert match_ending("Remember every fact you need .", "Recall each fact you need ,") == (
        "Remember every fact you need ,"
    )
    assert match_ending("Just reply", "Answer at once .") == "Just reply ."
    assert match_ending("Read the text.", "Read the review") == "Read the text"
    assert match_ending("Done!", "then answer.") == "Done."


# -- the search on a scripted black box -----------------------------------------------------


def test_greedy_takes_the_improving_delete_then_patience_stops() -> None:
    task = _Labels()
    box = _box(task)
    tuner = GripsTuner(edits=("del", "add"), num_train=10, num_dev_report=0)
    train = task.examples("train")
    events: list[tuple[str, dict[str, Any]]] = []
    context = TuneContext(seed=0, on_event=lambda e, f: events.append((e, dict(f))))
    policy = tuner.fit(train, task=task, backend=box, context=context)  # type: ignore[arg-type]

    # "Say neg always ." makes the box answer neg to all: balanced accuracy 50, entropy 0.
    # Deleting it gives all-correct on a 5/5 set: 100 + 10 ln 2.
    log = tuner.diagnostics
    assert log["original_score"] == pytest.approx(50.0)
    assert log["instruction"] == "Classify the text ."
    assert log["score"] == pytest.approx(100 + 10 * math.log(2))
    assert log["accepted_edits"] == [["del"]]
    assert log["stop"] == "patience"
    assert log["iterations"] == 3  # accept at 0, no gain at 1 and 2: patience 3 > 2
    assert isinstance(policy, LabelLikelihoodPolicy)
    assert policy.instruction == "Classify the text ."
    assert tuner.variant is None

    steps = [f for e, f in events if e == "grips_step"]
    assert [s["accepted"] for s in steps] == ["greedy", None, None]
    assert [s["patience"] for s in steps] == [1, 2, 3]
    done = [f for e, f in events if e == "grips_done"]
    assert len(done) == 1 and done[0]["instruction"] == "Classify the text ."

    # every scored prompt costs one call per label; each instruction is scored once
    scored = {p.split("\n\n")[0] for p, _ in box.scored}
    assert len(box.scored) == len(scored) * 10 * 2
    plan = tuner.plan(task=task, train=train, dev=[])
    assert len(box.scored) <= plan.calls
    assert plan.calls == (1 + 10 * 5) * 10 * 2


def test_deleted_phrases_feed_add() -> None:
    task = _Labels()
    box = _box(task)
    config = GripsConfig(edits=("del", "add"), num_candidates=5)
    scorer = _StubScorer(lambda text: 100.0 if text == "Classify the text ." else 50.0)
    search = EditSearch(
        scorer,  # type: ignore[arg-type]
        Paraphraser(box, n=10, temperature=1.5, max_tokens=60, seed=0),  # type: ignore[arg-type]
        config,
        edits=config.edits,
        rng=random.Random(0),
    )
    search.run(ORIGINAL)
    first, second = search.history[1], search.history[2]
    assert first["ops"] == [["del"]] * 5  # add is not offered while nothing was deleted
    assert first["accepted"] == "greedy"
    assert search.deleted_pool == ["Say neg always ."]
    adds = [c for c, ops in zip(second["candidates"], second["ops"], strict=True) if ops == ["add"]]
    assert adds and all("Say neg always ." in c for c in adds)
    # accepting an add takes the phrase out of the pool again
    cand = _Candidate(["Classify the text ."], ["add"])
    search.apply("add", ["Classify the text ."], cand)
    assert cand.added == ["Say neg always ."]
    search._accept(cand)
    assert search.deleted_pool == []


class _StubScorer:
    def __init__(self, rule: Any) -> None:
        self.rule = rule
        self.asked: list[str] = []

    def score(self, instructions: Sequence[str]) -> list[float]:
        self.asked += list(instructions)
        return [self.rule(ins) for ins in instructions]


class _ScriptedRandom(random.Random):
    """random() (used only by the annealing draw) returns the scripted values."""

    def __init__(self, draws: list[float]) -> None:
        super().__init__(0)
        self.draws = draws

    def random(self) -> float:
        return self.draws.pop(0)

    def getrandbits(self, k: int) -> int:  # keeps choice/sample off `random`
        return super().getrandbits(k)


@pytest.mark.parametrize(("draw", "accepted"), [(0.49, "anneal"), (0.51, None)])
def test_simulated_annealing_accepts_a_worse_candidate(draw: float, accepted: str | None) -> None:
    # Every edit of the base scores exactly T ln 2 below it at iteration 0 (T = 10): the
    # acceptance probability exp(-ln 2) = 0.5 is compared with the scripted draw.
    drop = 10 * math.log(2)
    scorer = _StubScorer(lambda text: 80.0 if text == ORIGINAL else 80.0 - drop)
    config = GripsConfig(edits=("del",), num_candidates=2, num_iter=1, simulated_anneal=True)
    search = EditSearch(scorer, None, config, edits=("del",), rng=_ScriptedRandom([draw]))  # type: ignore[arg-type]
    best, best_score = search.run(ORIGINAL)
    step = search.history[1]
    assert step["accepted"] == accepted
    assert step["base_score"] == pytest.approx(80.0 - drop if accepted else 80.0)
    assert step["base"] != ORIGINAL if accepted else step["base"] == ORIGINAL
    # the best instruction seen is kept, not the annealed base
    assert (best, best_score) == (ORIGINAL, 80.0)


def test_annealing_temperature_decays_and_is_off_by_default() -> None:
    # At iteration 1, T = 10 e^(-1/5): a drop of T ln 4 is accepted with probability 1/4.
    t1 = 10 * math.exp(-1 / 5)
    for draw, accepted in [(0.24, "anneal"), (0.26, None)]:
        scores = iter([80.0, 70.0, 70.0, 80.0 - t1 * math.log(4), 80.0 - t1 * math.log(4)])
        config = GripsConfig(edits=("swap",), num_candidates=2, num_iter=2, simulated_anneal=True)
        search = EditSearch(
            _StubScorer(lambda _, it=scores: next(it)),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            config,
            edits=("swap",),
            rng=_ScriptedRandom([0.99, draw]),  # iteration 0: exp(-1) < 0.99, rejected
        )
        search.run(ORIGINAL)
        assert [s["accepted"] for s in search.history[1:]] == [None, accepted]
    # default: never anneal, stop on patience
    scorer = _StubScorer(lambda text: 80.0 if text == ORIGINAL else 79.99)
    search = EditSearch(scorer, None, GripsConfig(edits=("swap",)), edits=("swap",),  # type: ignore[arg-type]
                        rng=_ScriptedRandom([]))  # fmt: skip
    search.run(ORIGINAL)
    assert [s["accepted"] for s in search.history[1:]] == [None, None]
    assert search.stop_reason == "patience"


def test_sub_asks_the_proposer_once_per_phrase_and_survives_garbage() -> None:
    task = _Labels()
    proposals = {
        "Classify the text .": [" <prompt>Label the text .</prompt>", " <prompt>Sort it</prompt>"],
        "Say neg always .": ["no tags here", " [", ""],
    }
    box = _box(task, proposals=proposals)
    paraphraser = Paraphraser(box, n=10, temperature=1.5, max_tokens=60, seed=0)  # type: ignore[arg-type]
    assert paraphraser("Classify the text .") == ["Label the text .", "Sort it ."]
    assert paraphraser("Classify the text .") == ["Label the text .", "Sort it ."]
    assert paraphraser("Say neg always .") == []
    assert box.generated == [
        (paraphrase_prompt("Classify the text ."), 10, 1.5),
        (paraphrase_prompt("Say neg always ."), 10, 1.5),
    ]
    config = GripsConfig(edits=("sub",))
    search = EditSearch(_StubScorer(lambda _: 0.0), paraphraser, config, edits=("sub",),  # type: ignore[arg-type]
                        rng=random.Random(1))  # fmt: skip
    texts = {search.candidate(ORIGINAL, ["sub"]).text for _ in range(30)}
    assert texts == {
        ORIGINAL,  # a garbage paraphrase of the first phrase leaves the base as it was
        "Say neg always . Label the text .",
        "Say neg always . Sort it .",
    }
    assert len(box.generated) == 2  # no new request


def test_fit_with_sub_counts_proposer_calls_within_plan() -> None:
    task = _Labels()
    proposals = {"Say neg always .": [" <prompt>Be fair .</prompt>"]}
    box, proposer = _box(task), _box(task, proposals=proposals)
    tuner = GripsTuner(edits=("sub",), num_train=10, num_dev_report=0)
    train = task.examples("train")
    tuner.fit(train, task=task, backend=box, proposer=proposer, context=TuneContext(seed=3))  # type: ignore[arg-type]
    plan = tuner.plan(task=task, train=train, dev=[])
    assert 1 <= len(proposer.generated) <= plan.proposer_calls
    assert all(p.startswith("Generate a variation") for p, _, _ in proposer.generated)
    assert box.generated == []  # the task box only scores
    assert tuner.diagnostics["instruction"] == "Be fair . Classify the text ."


def test_text_only_backend_parses_labels_and_says_so() -> None:
    task = _Labels()
    box = _box(task, capabilities=("generate",))
    tuner = GripsTuner(edits=("del",), num_train=10, num_dev_report=0)
    policy = tuner.fit(task.examples("train"), task=task, backend=box)  # type: ignore[arg-type]
    assert tuner.variant == "labels parsed from text"
    assert type(policy) is PromptPolicy
    assert policy.instruction == "Classify the text ."
    assert box.scored == []


def test_dev_report_uses_held_out_dev_only(tmp_path: Path) -> None:
    task = _Labels(n=20)
    box = _box(task)
    train, dev = task.examples("train"), task.examples("dev")
    tuner = GripsTuner(edits=("del",), num_train=8, num_dev_report=5)
    policy = tuner.fit(train, task=task, backend=box, dev=dev, context=TuneContext(seed=0))  # type: ignore[arg-type]
    log = tuner.diagnostics
    assert log["score_set"] == 8 and log["dev_examples"] == 5
    assert log["dev_accuracy"] == 1.0
    # the reported dev examples are not in the score set
    score_inputs = {p.rsplit("Q: ", 1)[1] for p, _ in box.scored[: 8 * 2]}
    dev_inputs = {p.rsplit("Q: ", 1)[1] for p, _ in box.scored[-5 * 2 :]}
    assert len(score_inputs) == 8 and len(dev_inputs) == 5 and not score_inputs & dev_inputs
    assert all(i.startswith("text dev") for i in (x.split("\n")[0] for x in dev_inputs))
    # the policy predicts by likelihood, saves and loads; without `score` it parses text
    test = task.examples("test")
    preds = policy.predict(test, task=task, backend=box)  # type: ignore[arg-type]
    assert [p.answer for p in preds] == [ex.target for ex in test]
    assert set(preds[0].extra["label_logprobs"]) == {"neg", "pos"}
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, LabelLikelihoodPolicy) and loaded == policy
    text_box = _box(task, capabilities=("generate",))
    parsed = loaded.predict(test, task=task, backend=text_box)  # type: ignore[arg-type]
    assert [p.answer for p in parsed] == [ex.target for ex in test]
    assert text_box.scored == [] and len(text_box.generated) == len(test)


def test_generation_task_scores_accuracy() -> None:
    task = _Gen()
    box = _box(task)
    tuner = GripsTuner(edits=("del",), num_train=10, num_dev_report=0)
    policy = tuner.fit(task.examples("train"), task=task, backend=box)  # type: ignore[arg-type]
    assert type(policy) is PromptPolicy
    assert tuner.diagnostics["original_score"] == pytest.approx(50.0)  # 100 x accuracy
    assert tuner.diagnostics["score"] == pytest.approx(100.0)
    assert tuner.variant == "score = accuracy (no label set)"
    assert box.scored == []


def test_candidates_over_the_context_window_are_not_scored() -> None:
    task = _Labels()
    long_phrase = "Label " + "very " * 20 + "well ."
    proposals = {"Classify the text .": [f"<prompt>{long_phrase}</prompt>"]}
    box, proposer = _box(task, context_length=20), _box(task, proposals=proposals)
    tuner = GripsTuner(edits=("sub",), num_train=10, num_dev_report=0, num_iter=2)
    tuner.fit(task.examples("train"), task=task, backend=box, proposer=proposer)  # type: ignore[arg-type]
    assert tuner.diagnostics["over_window"] >= 1
    assert box.scored and all(long_phrase not in p for p, _ in box.scored)


def test_presets_fit_the_call_caps_with_labels() -> None:
    for n_labels in (2, 4):
        task = _Labels(n=300, n_labels=n_labels)
        train, dev = task.examples("train"), task.examples("dev")
        for budget, cap in BUDGET_CALLS.items():
            tuner = get_method("grips").from_budget(budget)
            plan = tuner.plan(task=task, train=train, dev=dev)
            assert plan.calls + plan.proposer_calls <= cap
            assert plan.eval_calls_per_example == n_labels
            size, _ = tuner._sizes(task, 600, 300)  # type: ignore[attr-defined]
            if n_labels == 2:  # the presets are sized for two labels: no shrinking
                assert size == tuner.config.num_train
            elif budget == "light":
                assert size < tuner.config.num_train
    paper = get_method("grips").from_budget("paper")
    assert paper.config == GripsConfig()
    plan = paper.plan(task=_Labels(n=300), train=train, dev=dev)
    assert plan.calls == (51 * 100 + 100) * 2 and plan.proposer_calls == 50


def test_cap_shrinks_the_score_set_and_says_so() -> None:
    task = _Labels(n=40, n_labels=4)
    box = _box(task)
    tuner = GripsTuner(edits=("del",), num_train=40, num_iter=2, num_candidates=2,
                       num_dev_report=0, max_calls=100)  # fmt: skip
    train = task.examples("train")
    tuner.fit(train, task=task, backend=box)  # type: ignore[arg-type]
    assert tuner.diagnostics["score_set"] == 100 // 4 // 5
    assert tuner.variant == "score set 5 (call cap 100)"
    assert len(box.scored) <= 100


# -- on the zoo -----------------------------------------------------------------------------


def _fit_on_zoo(zoo_large: Any, task: Any, tuner: GripsTuner, seed: int) -> tuple[Any, dict]:
    from benchmarks.client import MeteredBlackBox

    proposer = MeteredBlackBox(zoo_large.backend, meter=zoo_large.meter, role="proposer")
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=zoo_large,
        dev=task.examples("dev"),
        proposer=proposer,
        context=TuneContext(seed=seed),
    )
    return policy, dict(tuner.diagnostics)


def test_grips_on_zoo_sentiment(zoo_large: Any) -> None:
    task = get_task("zoo-sentiment", n_train=40, n_dev=16, n_test=16)
    tuner = GripsTuner.from_budget("light")
    assert isinstance(tuner, GripsTuner)
    plan = tuner.plan(task=task, train=task.examples("train"), dev=task.examples("dev"))
    policy, log = _fit_on_zoo(zoo_large, task, tuner, seed=0)
    calls = list(zoo_large.meter.calls)
    task_calls = [c for c in calls if c.role == "task"]
    proposer_calls = [c for c in calls if c.role == "proposer"]
    assert 0 < len(task_calls) <= plan.calls
    assert len(proposer_calls) <= plan.proposer_calls
    assert all(c.kind == "score" for c in task_calls)  # zoo-large offers `score`
    assert isinstance(policy, LabelLikelihoodPolicy)
    assert log["label_mode"] == "score" and log["score_set"] == 16
    assert log["score"] >= log["original_score"]
    assert log["dev_accuracy"] is not None and log["dev_examples"] > 0

    test = task.examples("test")
    preds = policy.predict(test, task=task, backend=zoo_large)
    assert len(preds) == len(test) and all(p.answer in task.labels for p in preds)
    assert np.mean([task.score(p.answer, ex) for p, ex in zip(preds, test, strict=True)]) > 0.5

    n_before = len(zoo_large.meter.calls)
    again, log_again = _fit_on_zoo(zoo_large, task, GripsTuner.from_budget("light"), seed=0)
    assert again == policy and log_again == log
    assert len(zoo_large.meter.calls) - n_before == len(calls)


def test_grips_on_zoo_hops_generation(zoo_large: Any) -> None:
    task = get_task("zoo-hops", n_train=8, n_dev=4, n_test=4)
    tuner = GripsTuner.from_budget(
        "light", num_train=4, num_iter=2, num_candidates=2, num_dev_report=2
    )
    assert isinstance(tuner, GripsTuner)
    plan = tuner.plan(task=task, train=task.examples("train"), dev=task.examples("dev"))
    policy, log = _fit_on_zoo(zoo_large, task, tuner, seed=0)
    task_calls = [c for c in zoo_large.meter.calls if c.role == "task"]
    assert 0 < len(task_calls) <= plan.calls == (1 + 2 * 2) * 4 + 2
    assert all(c.kind == "generate" for c in task_calls)
    assert type(policy) is PromptPolicy and policy.instruction
    assert log["label_mode"] == "accuracy" and log["score_set"] == 4
    assert tuner.variant == "score = accuracy (no label set)"
    assert 0.0 <= log["score"] <= 100.0 and log["dev_examples"] == 2
    preds = policy.predict(task.examples("test"), task=task, backend=zoo_large)
    assert len(preds) == 4


# -- disclosures and the trace ---------------------------------------------------------------


def _disclosed(ctx: TuneContext) -> list[tuple[str, str]]:
    return [(d.kind, d.detail) for d in ctx.disclosures]


def test_a_search_that_keeps_its_start_is_disclosed_as_no_change() -> None:
    """The default instruction already answers the gold label; deleting from its one phrase
    changes nothing, so the search returns it: "no change", computed from the instruction
    returned. The edits tried and their scores are in the trace."""
    task = _Labels()
    ctx = TuneContext(seed=0)
    tuner = GripsTuner(edits=("del", "swap"), instruction_index=1, num_train=10, num_dev_report=0)
    policy = tuner.fit(task.examples("train"), task=task, backend=_box(task), context=ctx)  # type: ignore[arg-type]
    assert policy.instruction == "Classify the text ."  # type: ignore[attr-defined]
    iterations = tuner.diagnostics["iterations"]
    assert _disclosed(ctx) == [
        (
            "no-change",
            "returned its starting instruction, the task's hand-written instruction 1 "
            f'("Classify the text ."): no edit beat it ({iterations} iterations)',
        )
    ]
    steps = [e for e in ctx.trace if e["event"] == "grips_step"]
    assert len(steps) == iterations and all(len(s["candidates"]) == 5 for s in steps)
    assert {c["text"] for s in steps for c in s["candidates"]} == {"Classify the text ."}


def test_a_search_that_edits_discloses_only_its_scoring() -> None:
    """From "Say neg always . Classify the text ." a delete wins: no "no change"; parsing
    labels from text (no score capability) is disclosed as a substitute."""
    task = _Labels()
    ctx = TuneContext(seed=0)
    box = _box(task, capabilities=("generate",))
    GripsTuner(edits=("del",), num_train=10, num_dev_report=0).fit(
        task.examples("train"),
        task=task,
        backend=box,  # type: ignore[arg-type]
        context=ctx,
    )
    assert _disclosed(ctx) == [
        ("substitute", "labels parsed from greedy text: the backend scores no label likelihoods")
    ]
    ctx = TuneContext(seed=0)
    GripsTuner(edits=("del",), num_train=10, num_dev_report=0).fit(
        _Gen().examples("train"),
        task=_Gen(),
        backend=_box(_Gen()),  # type: ignore[arg-type]
        context=ctx,
    )
    assert _disclosed(ctx) == [
        (
            "substitute",
            "score = 100 x accuracy: balanced accuracy and label entropy need a label set",
        )
    ]


def test_unscored_candidates_and_a_shrunk_score_set_are_disclosed_with_counts() -> None:
    task = _Labels()
    long_phrase = "Label " + "very " * 20 + "well ."
    proposals = {"Classify the text .": [f"<prompt>{long_phrase}</prompt>"]}
    box, proposer = _box(task, context_length=20), _box(task, proposals=proposals)
    ctx = TuneContext(seed=0)
    tuner = GripsTuner(edits=("sub",), num_train=10, num_dev_report=0, num_iter=2)
    tuner.fit(task.examples("train"), task=task, backend=box, proposer=proposer, context=ctx)  # type: ignore[arg-type]
    unfit = tuner.diagnostics["over_window"]
    (not_sent,) = [d for d in ctx.disclosures if d.kind == "not-sent"]
    assert re.fullmatch(
        rf"{unfit} of \d+ candidate instructions never scored: their prompts did not fit the "
        r"task model's 20-token window",
        not_sent.detail,
    )

    task = _Labels(n=40, n_labels=4)
    ctx = TuneContext(seed=0)
    capped = GripsTuner(edits=("del",), num_train=40, num_iter=2, num_candidates=2,
                        num_dev_report=0, max_calls=100)  # fmt: skip
    capped.fit(task.examples("train"), task=task, backend=_box(task), context=ctx)  # type: ignore[arg-type]
    shrunk = ("k-reduced", "score set of 5 examples instead of 40, to stay within max_calls=100")
    assert shrunk in _disclosed(ctx)
