from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest

from benchmarks.tasks.base import Task, get_task
from methods import BenchError, Completion, Example, PromptPolicy, TuneContext, get_method
from methods.evoprompt import paraphrase_budget, roulette
from methods.prompting import (
    evoprompt_crossover_prompt,
    evoprompt_de_prompt,
    paraphrase_prompt,
)
from tests.methods.conftest import as_an_api_answers

# --------------------------------------------------------------------------------------------
# Fakes: a task, a task model whose accuracy per instruction is scripted, a scripted proposer.
# --------------------------------------------------------------------------------------------


class _Task(Task):
    name = "fake"
    kind = "classification"
    labels = ("neg", "pos")
    max_tokens = 2

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [
            Example(f"{split}{i}", f"{split} {i}", "pos" if i % 2 else "neg") for i in range(10)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip() or None


def make_task(*instructions: str) -> _Task:
    return type("FakeTask", (_Task,), {"instructions": tuple(instructions)})()  # type: ignore[no-any-return]


class _TaskModel:
    """Answers example i of a 10-example split correctly iff i < 10 * accuracy, where the
    accuracy of (split, instruction) is scripted (default 0)."""

    model = "fake-task"
    capabilities = frozenset({"generate"})
    context_length: int | None = None

    def __init__(self, dev: Mapping[str, float], test: Mapping[str, float] | None = None):
        self.acc = {"dev": dict(dev), "test": dict(test or {})}
        self.seen: Counter[tuple[str | None, str]] = Counter()
        self.calls = 0

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            self.calls += 1
            instruction, _, rest = prompt.rpartition("\n\nQ: ")
            text = rest.split("\nA:")[0]
            self.seen[(instruction or None, text)] += 1
            split, index = text.split()
            i = int(index)
            right = i < round(10 * self.acc[split].get(instruction, 0.0))
            gold = "pos" if i % 2 else "neg"
            out.append([Completion(" " + (gold if right else {"pos": "neg", "neg": "pos"}[gold]))])
        return out


class _Proposer:
    """Answers each request with ``respond(request)``; records (request, temperature, seed)."""

    model = "fake-proposer"
    capabilities = frozenset({"generate"})

    def __init__(self, respond: Callable[[str], str], context_length: int | None = None):
        self.respond = respond
        self.context_length = context_length
        self.requests: list[tuple[str, float, int | None]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self,
        prompts: Sequence[str],
        *,
        temperature: float = 0.0,
        seed: int | None = None,
        **kw: Any,
    ) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            self.requests.append((prompt, temperature, seed))
            out.append([Completion(self.respond(prompt))])
        return out

    def of_kind(self, marker: str) -> list[str]:
        return [r for r, _, _ in self.requests if marker in r]


def paraphrased(request: str) -> str:
    return request.split("Input: ")[1].split("\nOutput:")[0]


def basic_of(request: str) -> str:
    return request.split("Basic Prompt: ")[1].strip()


def de_field(request: str, name: str) -> str:
    found = re.search(rf"^{name}: (.*)$", request, re.M)
    assert found is not None
    return found.group(1)


Events = list[tuple[str, dict[str, Any]]]


def recorder() -> tuple[Events, Callable[[str, Mapping[str, Any]], None]]:
    """A list of (event, fields) and the callback that fills it."""
    events: Events = []

    def on_event(event: str, fields: Mapping[str, Any]) -> None:
        events.append((event, dict(fields)))

    return events, on_event


def run(
    method: str,
    task: _Task,
    model: _TaskModel,
    proposer: _Proposer,
    seed: int = 0,
    **overrides: Any,
) -> tuple[PromptPolicy, Events]:
    events, on_event = recorder()
    tuner = get_method(method)(**{"dev_size": 10, **overrides})
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=model,  # type: ignore[arg-type]
        dev=task.examples("dev"),
        proposer=proposer,  # type: ignore[arg-type]
        context=TuneContext(seed=seed, on_event=on_event),
    )
    assert isinstance(policy, PromptPolicy)
    return policy, events


def first(events: Events, name: str) -> dict[str, Any]:
    return next(f for e, f in events if e == name)


def children(events: Events, op: str) -> list[dict[str, Any]]:
    return [f for e, f in events if e == "child" and f["op"] == op]


# --------------------------------------------------------------------------------------------
# Selection, initialisation.
# --------------------------------------------------------------------------------------------


def test_roulette_frequencies_follow_fitness() -> None:
    rng = random.Random(0)
    drawn = Counter(roulette(["a", "b", "c"], [0.1, 0.3, 0.6], 30_000, rng))
    for name, share in {"a": 0.1, "b": 0.3, "c": 0.6}.items():
        assert abs(drawn[name] / 30_000 - share) < 0.01
    assert roulette(["a", "b", "c"], [0.1, 0.3, 0.6], 5, random.Random(7)) == roulette(
        ["a", "b", "c"], [0.1, 0.3, 0.6], 5, random.Random(7)
    )
    never = Counter(roulette(["z", "b"], [0.0, 0.5], 1_000, random.Random(1)))
    assert never["z"] == 0 and never["b"] == 1_000
    uniform = Counter(roulette(["a", "b", "c"], [0.0, 0.0, 0.0], 3_000, random.Random(2)))
    assert all(900 < uniform[x] < 1_100 for x in "abc")


def test_init_scores_all_manual_takes_top_half_and_paraphrases_them() -> None:
    dev = {"I0 .": 0.1, "I1 .": 0.5, "I2 .": 0.9, "I3 .": 0.3, "I4 .": 0.7, "I5 .": 0.2}
    task = make_task(*dev)
    model = _TaskModel({**dev, "I2 . again": 0.6, "I4 . again": 0.4})
    proposer = _Proposer(lambda r: f" <prompt>{paraphrased(r)} again</prompt>")
    policy, events = run("evoprompt-ga", task, model, proposer, population=4, iterations=0)
    assert [r for r, _, _ in proposer.requests] == [
        paraphrase_prompt("I2 ."),
        paraphrase_prompt("I4 ."),
    ]
    assert {t for _, t, _ in proposer.requests} == {1.0}
    init = first(events, "init")
    assert init["population"] == ["I2 .", "I4 .", "I2 . again", "I4 . again"]
    assert init["scores"] == [0.9, 0.7, 0.6, 0.4]
    assert model.calls == (6 + 2) * 10
    assert policy.instruction == "I2 ."


def test_init_pads_with_more_paraphrases_when_there_are_few_manual_prompts() -> None:
    task = make_task("Only one .")
    model = _TaskModel({"Only one .": 0.5})
    count = iter(range(100))
    proposer = _Proposer(lambda r: f"<prompt>variant {next(count)}</prompt>")
    _, events = run("evoprompt-de", task, model, proposer, population=4, iterations=0)
    assert first(events, "init")["population"] == [
        "Only one .",
        "variant 0",
        "variant 1",
        "variant 2",
    ]
    # the same request three times, each with a fresh seed (a fresh sample)
    assert [(r, s) for r, _, s in proposer.requests] == [
        (paraphrase_prompt("Only one ."), 0),
        (paraphrase_prompt("Only one ."), 1),
        (paraphrase_prompt("Only one ."), 2),
    ]
    assert len(proposer.requests) <= paraphrase_budget(4, 1)


def test_init_pads_with_the_rest_of_the_manual_prompts_when_paraphrases_fail() -> None:
    task = make_task("A .", "B .", "C .")
    model = _TaskModel({"A .": 0.9, "B .": 0.8, "C .": 0.1})
    answers = iter(["<prompt></prompt>", "<prompt>", " <prompt>A . anew</prompt>"])
    proposer = _Proposer(lambda r: next(answers))
    _, events = run("evoprompt-ga", task, model, proposer, population=4, iterations=0)
    assert first(events, "init")["population"] == ["A .", "B .", "C .", "A . anew"]
    assert [f["reason"] for f in children(events, "paraphrase")] == ["unparsed", "unparsed", None]


def test_untagged_paraphrase_is_read_from_the_raw_text() -> None:
    task = make_task("A .", "B .")
    model = _TaskModel({"A .": 0.9, "B .": 0.8})
    proposer = _Proposer(lambda r: ' "Tell me A ."\nsomething else')
    _, events = run("evoprompt-ga", task, model, proposer, population=2, iterations=0)
    assert first(events, "init")["population"] == ["A .", "Tell me A ."]


# --------------------------------------------------------------------------------------------
# GA.
# --------------------------------------------------------------------------------------------


def test_ga_keeps_the_top_n_of_population_and_children() -> None:
    dev = {"P1 .": 0.9, "P2 .": 0.8, "P3 .": 0.4, "P4 .": 0.3, "P5 .": 0.1, "P6 .": 0.0}
    task = make_task(*dev)
    model = _TaskModel({**dev, "P1 . p": 0.5, "P2 . p": 0.2, "C1 .": 1.0, "C2 .": 0.5})
    script = iter(
        ["<prompt>C1 .</prompt>", "<prompt>C2 .</prompt>", "no tag", "<prompt>p2 .</prompt>"]
    )

    def respond(request: str) -> str:
        if request.startswith("Generate a variation"):
            return f"<prompt>{paraphrased(request)} p</prompt>"
        return next(script)

    proposer = _Proposer(respond)
    _, events = run("evoprompt-ga", task, model, proposer, population=4, iterations=1)
    assert first(events, "init")["population"] == ["P1 .", "P2 .", "P1 . p", "P2 . p"]
    # C1 enters; C2 ties P1 . p at 0.5 and the incumbent stays; P2 . p (0.2) is out
    assert first(events, "step")["population"] == ["C1 .", "P1 .", "P2 .", "P1 . p"]
    ga = children(events, "crossover")
    assert sorted((f["reason"] or "valid") for f in ga) == [
        "duplicate",
        "unparsed",
        "valid",
        "valid",
    ]
    requests = proposer.of_kind("Cross over")
    assert len(requests) == 4
    members = ["P1 .", "P2 .", "P1 . p", "P2 . p"]
    pairs = {evoprompt_crossover_prompt(a, b) for a in members for b in members}
    assert all(r in pairs for r in requests)
    assert {t for r, t, _ in proposer.requests if "Cross over" in r} == {0.5}


def test_ga_wheel_and_tournament_never_pick_the_zero_fitness_member() -> None:
    dev = {"A .": 0.9, "B .": 0.6}
    task = make_task(*dev)
    model = _TaskModel({**dev, "A . again": 0.7})  # "B . again" scores 0
    count = iter(range(1000))

    def respond(request: str) -> str:
        if request.startswith("Generate a variation"):
            return f"<prompt>{paraphrased(request)} again</prompt>"
        return f"<prompt>child {next(count)}</prompt>"  # scores 0: B . again stays (tie)

    def parents(selection: str) -> Counter[str]:
        proposer = _Proposer(respond)
        run("evoprompt-ga", task, model, proposer, population=4, iterations=3, selection=selection)
        found: Counter[str] = Counter()
        for request in proposer.of_kind("Cross over"):
            found[de_field(request, "Prompt 1")] += 1
            found[de_field(request, "Prompt 2")] += 1
        return found

    wheel = parents("wheel")
    assert sum(wheel.values()) == 24 and wheel["B . again"] == 0
    assert parents("tour")["B . again"] == 0  # the strictly worst loses every tournament
    assert parents("random")["B . again"] > 0


# --------------------------------------------------------------------------------------------
# DE.
# --------------------------------------------------------------------------------------------


def test_de_replaces_only_on_strict_improvement_and_uses_the_current_best() -> None:
    dev = {"A .": 0.9, "B .": 0.6, "C .": 0.3}
    task = make_task(*dev)
    scores = {"A . p": 0.5, "B . p": 0.4, "A x .": 0.9, "B x .": 1.0, "Ap x .": 0.2, "Bp x .": 0.5}
    model = _TaskModel({**dev, **scores})
    child = {"A .": "A x .", "B .": "B x .", "A . p": "Ap x .", "B . p": "Bp x .", "C .": "a ."}

    def respond(request: str) -> str:
        if request.startswith("Generate a variation"):
            return f"<prompt>{paraphrased(request)} p</prompt>"
        return f"\n<prompt>{child[basic_of(request)]}</prompt>"

    proposer = _Proposer(respond)
    policy, events = run("evoprompt-de", task, model, proposer, population=5, iterations=1)
    members = ["A .", "B .", "A . p", "B . p", "C ."]
    assert first(events, "init")["population"] == members
    # A x . ties A . (kept); B x . and Bp x . are better; Ap x . is worse; "a ." is A . again
    assert first(events, "step")["population"] == ["A .", "B x .", "A . p", "Bp x .", "C ."]
    assert [f["reason"] for f in children(events, "de")] == [None, None, None, None, "duplicate"]
    assert policy.instruction == "B x ."
    requests = proposer.of_kind("Basic Prompt")
    assert [basic_of(r) for r in requests] == members
    # Prompt 3 is the current best, which moves to B x . as soon as it is found
    assert [de_field(r, "Prompt 3") for r in requests] == ["A .", "A .", "B x .", "B x .", "B x ."]
    for request, basic in zip(requests, members, strict=True):
        a, b = de_field(request, "Prompt 1"), de_field(request, "Prompt 2")
        assert a != b and basic not in (a, b) and {a, b} <= set(members)
        assert request == evoprompt_de_prompt(basic, a, b, de_field(request, "Prompt 3"))


def test_de_request_that_does_not_fit_the_proposer_window_is_not_sent() -> None:
    dev = {"A .": 0.9, "B .": 0.6, "C .": 0.3, "D .": 0.2}
    task = make_task(*dev)
    model = _TaskModel(dev)
    window = len(evoprompt_de_prompt("x", "x", "x", "x").split())  # no room for 4 prompts
    proposer = _Proposer(lambda r: f"<prompt>{paraphrased(r)} p</prompt>", window)
    policy, events = run("evoprompt-de", task, model, proposer, population=4, iterations=2)
    assert proposer.of_kind("Basic Prompt") == []
    de = children(events, "de")
    assert len(de) == 8 and {f["reason"] for f in de} == {"request_too_long"}
    assert policy.instruction == "A ."


# --------------------------------------------------------------------------------------------
# Both: dev-only choice, caching, plan.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["evoprompt-ga", "evoprompt-de"])
def test_final_choice_is_by_dev_not_test(method: str) -> None:
    task = make_task("A .", "B .", "C .", "D .")
    dev = {"A .": 0.7, "B .": 0.9, "C .": 0.2, "D .": 0.1}
    test = {"A .": 1.0, "B .": 0.3, "C .": 0.0, "D .": 0.0, "E .": 1.0}
    model = _TaskModel({**dev, "E .": 0.8}, test)  # E .: best on test, second on dev
    proposer = _Proposer(lambda r: "<prompt>E .</prompt>")
    policy, _ = run(method, task, model, proposer, population=4, iterations=2)
    assert policy.instruction == "B ."

    def test_accuracy(instruction: str) -> float:
        examples = task.examples("test")
        predictions = PromptPolicy(instruction).predict(examples, task=task, backend=model)  # type: ignore[arg-type]
        return (
            sum(task.score(p.answer, ex) for p, ex in zip(predictions, examples, strict=True)) / 10
        )

    assert test_accuracy("B .") < test_accuracy("E .") == test_accuracy("A .") == 1.0


@pytest.mark.parametrize("method", ["evoprompt-ga", "evoprompt-de"])
def test_calls_match_the_plan_and_nothing_is_scored_twice(method: str) -> None:
    task = make_task("I0 .", "I1 .", "I2 .", "I3 .", "I4 .", "I5 .")
    model = _TaskModel({f"I{i} .": i / 10 for i in range(6)})
    count = iter(range(1000))
    proposer = _Proposer(lambda r: f"<prompt>new {next(count)}</prompt>")
    tuner = get_method(method)(population=4, iterations=2, dev_size=10)
    plan = tuner.plan(task=task, train=task.examples("train"), dev=task.examples("dev"))
    run(method, task, model, proposer, population=4, iterations=2)
    assert plan.calls == (6 + 2 + 8) * 10 and plan.proposer_calls == 2 + 8
    assert model.calls == plan.calls  # every child new and valid: the bound is reached
    assert len(proposer.requests) == plan.proposer_calls
    assert set(model.seen.values()) == {1}


def test_presets_fit_the_call_caps_for_six_manual_prompts() -> None:
    task = get_task("zoo-sentiment", n_dev=200)
    caps = {"light": 400, "medium": 2_000, "heavy": 10_000}
    for method in ("evoprompt-ga", "evoprompt-de"):
        for budget, cap in caps.items():
            plan = (
                get_method(method)
                .from_budget(budget)
                .plan(task=task, train=[], dev=task.examples("dev"))
            )
            assert plan.proposer_calls > 0 and plan.calls + plan.proposer_calls <= cap


def test_bad_selection_mode_is_refused() -> None:
    with pytest.raises(BenchError, match="valid: wheel, random, tour"):
        get_method("evoprompt-ga")(selection="best")


# --------------------------------------------------------------------------------------------
# Integration on zoo-large.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["evoprompt-ga", "evoprompt-de"])
def test_light_preset_on_zoo_sentiment(method: str, zoo_large: Any, zoo_backend: Any) -> None:
    from benchmarks.client import MeteredBlackBox

    task = get_task("zoo-sentiment", n_train=40, n_dev=16, n_test=16)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    proposer = MeteredBlackBox(zoo_backend, meter=zoo_large.meter, role="proposer")
    tuner = get_method(method).from_budget("light")
    plan = tuner.plan(task=task, train=train, dev=dev)
    results = []
    for _ in range(2):
        events, on_event = recorder()
        start = len(zoo_large.meter.calls)
        policy = tuner.fit(
            train,
            task=task,
            backend=zoo_large,
            dev=dev,
            proposer=proposer,
            context=TuneContext(seed=0, on_event=on_event),
        )
        calls = zoo_large.meter.calls[start:]
        assert sum(c.role == "task" for c in calls) <= plan.calls
        assert sum(c.role == "proposer" for c in calls) <= plan.proposer_calls
        assert isinstance(policy, PromptPolicy) and policy.instruction
        init = first(events, "init")
        assert len(init["population"]) == 4
        # the final choice is the best dev score seen, never below the best manual prompt
        done = first(events, "done")
        assert done["dev_score"] >= max(init["manual_scores"].values())
        op = "crossover" if method == "evoprompt-ga" else "de"
        assert len(children(events, op)) == 12  # one per request: valid, or why not
        if op == "crossover":
            assert any(f["valid"] for f in children(events, op))  # zoo-large is trained on it
        results.append((policy.instruction, done["dev_score"]))
    assert results[0] == results[1]
    predictions = policy.predict(test, task=task, backend=zoo_large)
    assert len(predictions) == 16 and any(p.answer is not None for p in predictions)


class _RamblingProposer(_Proposer):
    """Tags its answer, then writes 800 words of noise, cut as an API cuts it; records the
    limits it was sent."""

    def __init__(self, respond: Callable[[str], str]):
        super().__init__(respond)
        self.limits: list[tuple[int, list[str] | None]] = []

    def generate(  # type: ignore[override]
        self, prompts: Sequence[str], *, max_tokens: int, stop: list[str] | None = None, **kw: Any
    ) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            self.limits.append((max_tokens, stop))
            self.requests.append((prompt, kw.get("temperature", 0.0), kw.get("seed")))
            text = self.respond(prompt) + " and so on" * 800
            out.append([as_an_api_answers(text, max_tokens=max_tokens, stop=stop)])
        return out


@pytest.mark.parametrize("budget", ["light", "medium", "heavy"])
@pytest.mark.parametrize("method", ["evoprompt-ga", "evoprompt-de"])
def test_presets_cut_a_rambling_proposer_after_its_prompt(method: str, budget: str) -> None:
    task = make_task("Say pos .", "Say neg .")
    model = _TaskModel({"Say pos .": 0.5, "Say neg .": 0.4, "Be new .": 0.9})
    proposer = _RamblingProposer(lambda request: "\n<prompt>Be new .</prompt>")
    tuner = get_method(method).from_budget(budget, population=2, iterations=1, dev_size=10)
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=model,  # type: ignore[arg-type]
        dev=task.examples("dev"),
        proposer=proposer,  # type: ignore[arg-type]
        context=TuneContext(seed=0),
    )
    assert proposer.limits and all(
        max_tokens <= 128 and stop == ["</prompt>"] for max_tokens, stop in proposer.limits
    )
    assert isinstance(policy, PromptPolicy) and policy.instruction == "Be new ."


def test_paper_preset_keeps_the_official_length_and_no_stop() -> None:
    task = make_task("Say pos .", "Say neg .")
    proposer = _RamblingProposer(lambda request: "\n<prompt>Be new .</prompt>")
    run("evoprompt-ga", task, _TaskModel({}), proposer, population=2, iterations=1)
    assert proposer.limits and all(limit == (1000, None) for limit in proposer.limits)


# --------------------------------------------------------------------------------------------
# Disclosures and the trace.
# --------------------------------------------------------------------------------------------


def test_unsent_requests_and_a_hand_written_winner_are_disclosed() -> None:
    """Every DE request overflows the proposer's window: the count is disclosed, and the
    search returns the task's own instruction 0, disclosed as "no change" (computed)."""
    dev = {"A .": 0.9, "B .": 0.6, "C .": 0.3, "D .": 0.2}
    task = make_task(*dev)
    window = len(evoprompt_de_prompt("x", "x", "x", "x").split())
    proposer = _Proposer(lambda r: f"<prompt>{paraphrased(r)} p</prompt>", window)
    ctx = TuneContext(seed=0)
    policy = get_method("evoprompt-de")(dev_size=10, population=4, iterations=2).fit(
        task.examples("train"),
        task=task,
        backend=_TaskModel(dev),  # type: ignore[arg-type]
        dev=task.examples("dev"),
        proposer=proposer,  # type: ignore[arg-type]
        context=ctx,
    )
    assert policy.instruction == "A ."  # type: ignore[attr-defined]
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "not-sent",
            f"8 of 8 DE requests not sent: request and answer did not fit the proposer's "
            f"{window}-token window",
        ),
        (
            "no-change",
            'returned the task\'s hand-written instruction 0 ("A ."), one it started from: '
            "no evolved instruction beat it on dev",
        ),
    ]
    steps = [e for e in ctx.trace if e["event"] == "step"]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(len(s["population"]) == len(s["scores"]) == 4 for s in steps)
    assert steps[0]["scores"][0] == 0.9


def test_an_evolved_winner_discloses_nothing() -> None:
    dev = {"A .": 0.9, "B .": 0.6, "C .": 0.3}
    task = make_task(*dev)
    model = _TaskModel({**dev, "A x .": 1.0, "B x .": 0.2, "C x .": 0.2, "A . p": 0.1})

    def respond(request: str) -> str:
        if request.startswith("Generate a variation"):
            return f"<prompt>{paraphrased(request)} p</prompt>"
        return f"\n<prompt>{basic_of(request).replace(' .', ' x .')}</prompt>"

    ctx = TuneContext(seed=0)
    policy = get_method("evoprompt-de")(dev_size=10, population=3, iterations=1).fit(
        task.examples("train"),
        task=task,
        backend=model,  # type: ignore[arg-type]
        dev=task.examples("dev"),
        proposer=_Proposer(respond),  # type: ignore[arg-type]
        context=ctx,
    )
    assert policy.instruction == "A x ."  # type: ignore[attr-defined]
    assert ctx.disclosures == []
