"""OPRO: the meta-prompt, the candidate filters, the window cut, the positions and the final
choice on scripted transcripts (fake proposer and scorer); then short runs on zoo-large."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.tasks.base import Task, get_task
from methods import (
    BUDGET_CALLS,
    BenchError,
    Completion,
    Example,
    PromptPolicy,
    TuneContext,
    get_method,
    load_policy,
)
from methods.opro import (
    Opro,
    PositionedPromptPolicy,
    exemplar_indices,
    fit_meta_prompt,
    meta_prompt,
    positioned_prompt,
    shown_instructions,
)
from methods.prompting import opro_meta_prompt
from tests.methods.conftest import as_an_api_answers

HEADER = (
    "I have some texts along with their corresponding scores. The texts are arranged in "
    "ascending order based on their scores, where higher scores indicate better quality."
)
LEAD = (
    "The following exemplars show how to apply your text: you replace <INS> in each input "
    "with your text, then read the input and give an output."
)
FOOTER = (
    "Write your new text that is different from the old ones and has a score as high as "
    "possible. Write the text in square brackets."
)


class _Toy(Task):
    """Train inputs q0..q9 (target = the number), dev inputs d0..d9."""

    name = "toy"
    instructions = ("Solve it .", "Think .", "Be brief .")
    max_tokens = 4
    stop = ("\n",)

    def load_split(self, split):  # type: ignore[no-untyped-def]
        prefix = "d" if split == "dev" else "q"
        return [Example(f"{split}{i}", f"{prefix}{i}", str(i)) for i in range(10)]

    def extract(self, text: str, example: Example) -> str | None:
        return text.strip() or None


class _ToyArith(_Toy):
    name = "toy-arith"


class _Scorer:
    """A scripted task model: under instruction I (the longest known instruction in the
    prompt) it answers input ``q{k}`` correctly iff k < 10 * train[I], and ``d{k}`` iff
    k < 10 * dev[I], so accuracies are exactly the scripted ones. Records every prompt."""

    model = "fake-scorer"
    capabilities = frozenset({"generate"})

    def __init__(
        self,
        train: dict[str, float],
        dev: dict[str, float] | None = None,
        context_length: int | None = None,
    ):
        self.train, self.dev = train, dev or {}
        self.context_length = context_length
        self.prompts: list[str] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def instruction(self, prompt: str) -> str | None:
        known = [ins for ins in {**self.train, **self.dev} if ins in prompt]
        return max(known, key=len) if known else None

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        assert kwargs.get("temperature", 0.0) == 0.0
        out = []
        for prompt in prompts:
            self.prompts.append(prompt)
            split, k = re.search(r"Q: ([qd])(\d+)", prompt).groups()  # type: ignore[union-attr]
            table = self.dev if split == "d" else self.train
            acc = table.get(self.instruction(prompt) or "", 0.0)
            out.append([Completion(k if int(k) < round(10 * acc) else "wrong")])
        return out

    def scored(self, split: str = "q") -> list[str | None]:
        """Instructions in the order first scored on ``split``."""
        seen: list[str | None] = []
        for p in self.prompts:
            ins = self.instruction(p)
            if f"Q: {split}" in p and ins not in seen:
                seen.append(ins)
        return seen


class _Proposer:
    """A scripted optimizer: step t returns the completions ``script[t]``."""

    model = "fake-proposer"
    capabilities = frozenset({"generate"})

    def __init__(self, script: list[list[str]], context_length: int | None = None):
        self.script = script
        self.context_length = context_length
        self.requests: list[dict[str, Any]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        assert len(prompts) == 1
        step = len(self.requests)
        self.requests.append({"prompt": prompts[0], **kwargs})
        texts = self.script[step]
        assert kwargs["n"] == len(texts)
        return [[Completion(t) for t in texts]]


def _tuner(**overrides: Any) -> Opro:
    base = {"num_score_examples": 10, "dev_top_k": 0, "num_exemplars": 3}
    return Opro(**{**base, **overrides})


# -- the meta-prompt ---------------------------------------------------------------------


def test_shown_instructions_ascending_capped_thresholded_and_rounded() -> None:
    history = [
        ("Alpha .", 0.5, -1),
        ("Beta .", 2 / 3, 0),
        ("Gamma .", 0.125, 0),
        ("Delta .", 0.9, 1),
        ("Eps .", 0.5, 1),
        ("Zeta .", 0.285, 2),
        ("Eta .", 0.005, 2),
    ]
    shown = shown_instructions(history, max_num=20, threshold=0.0, buckets=100)
    # ascending, ties in history order; round(acc * 100) as the code's _bucketize_float
    # (Python rounds half to even: 12.5 -> 12, 0.5 -> 0; 0.285 * 100 = 28.4999... -> 28)
    assert shown == [
        ("Eta .", 0.0),
        ("Gamma .", 12.0),
        ("Zeta .", 28.0),
        ("Alpha .", 50.0),
        ("Eps .", 50.0),
        ("Beta .", 67.0),
        ("Delta .", 90.0),
    ]
    # the top 3 only, worst of them first
    assert shown_instructions(history, max_num=3, threshold=0.0, buckets=100) == [
        ("Eps .", 50.0),
        ("Beta .", 67.0),
        ("Delta .", 90.0),
    ]
    # the threshold: of the top 3, those with accuracy >= 0.6
    assert shown_instructions(history, max_num=3, threshold=0.6, buckets=100) == [
        ("Beta .", 67.0),
        ("Delta .", 90.0),
    ]
    assert shown_instructions(history, max_num=20, threshold=0.5, buckets=20)[0] == (
        "Alpha .",
        10.0,
    )


def test_top_20_of_25() -> None:
    history = [(f"Ins {chr(97 + i)} .", i / 25, i) for i in range(25)]
    shown = shown_instructions(history, max_num=20, threshold=0.0, buckets=100)
    assert [t for t, _ in shown] == [f"Ins {chr(97 + i)} ." for i in range(5, 25)]
    assert [s for _, s in shown] == [round(i * 4) for i in range(5, 25)]


def test_meta_prompt_text_is_exact_for_every_position() -> None:
    shown = [("Eps .", 50.0), ("Delta .", 90.0)]
    exemplars = [("q1", "1"), ("q7", "7")]
    trajectory = f"{HEADER}\n\ntext:\nEps .\nscore:\n50\n\ntext:\nDelta .\nscore:\n90\n\n"
    inputs = {
        "Q_begin": ("Q: <INS>\nq1\nA:", "Q: <INS>\nq7\nA:"),
        "before_Q": ("<INS>\nQ: q1\nA:", "<INS>\nQ: q7\nA:"),
        "Q_end": ("Q: q1\n<INS>\nA:", "Q: q7\n<INS>\nA:"),
        "A_begin": ("Q: q1\nA: <INS>", "Q: q7\nA: <INS>"),
    }
    for position, (first, second) in inputs.items():
        expected = (
            f"{trajectory}{LEAD}\n\ninput:\n{first}\noutput:\n1\n\n"
            f"input:\n{second}\noutput:\n7\n\n{FOOTER}"
        )
        assert meta_prompt(shown, exemplars, position) == expected, position
    assert meta_prompt(shown, exemplars, "Q_begin") == opro_meta_prompt(shown, exemplars)
    assert meta_prompt(shown, [], "Q_end") == f"{trajectory}{FOOTER}"


def test_exemplars_are_drawn_per_step_as_the_code_draws_them() -> None:
    assert exemplar_indices(10, 3, 0) == [2, 4, 8]
    assert exemplar_indices(10, 3, 1) == [2, 6, 9]
    for step in range(5):  # the code: np.random.seed(i_step); np.random.choice(train_index, 3)
        np.random.seed(step)
        legacy = np.sort(np.random.choice(np.arange(10), 3, replace=False)).tolist()
        assert exemplar_indices(10, 3, step) == legacy
    assert exemplar_indices(2, 3, 0) == [0, 1]
    assert exemplar_indices(10, 0, 0) == []


# -- the search on a scripted transcript ---------------------------------------------------

STEP0 = [
    "\n[Think step by step .]",  # new: scored
    "no brackets here",  # malformed
    "\n[solve it .]",  # the initial instruction, other case: duplicate
    "\n[Think step by step.]",  # duplicate within the step (normalised)
    "\n[" + "Go on " * 84 + "]",  # 503 characters: too long
    "\n[Add 2 and 3 .]",  # a digit on an arithmetic task
    "\n[Replace <INS> with care .]",  # contains INS
    "\n[**be** careful .]",  # polished to "Be careful ."
]
STEP1 = [
    "\n[Think step by step .]",  # proposed in step 0
    "\n[Work it out .]",  # new
    "\n[]",  # empty
    "\n[Be careful .]",
    "\n[Work it out.]",
    "[Work  it   out .]",
    "\n[Add 2 and 3 .]",
    "\n[BE CAREFUL .]",
]
TRAIN_ACC = {
    "Solve it .": 0.3,
    "Think step by step .": 0.8,
    "Be careful .": 0.5,
    "Work it out .": 1.0,
    "Add 2 and 3 .": 0.9,
}


def test_transcript_filters_scores_and_meta_prompts() -> None:
    task = _ToyArith()
    train = task.examples("train")
    scorer, proposer = _Scorer(TRAIN_ACC), _Proposer([STEP0, STEP1])
    events: list[tuple[str, dict[str, Any]]] = []
    tuner = _tuner(num_search_steps=2)
    policy = tuner.fit(
        train,
        task=task,
        backend=scorer,  # type: ignore[arg-type]
        proposer=proposer,  # type: ignore[arg-type]
        context=TuneContext(seed=0, on_event=lambda e, f: events.append((e, dict(f)))),
    )
    assert tuner.history == [
        ("Solve it .", 0.3, -1),
        ("Think step by step .", 0.8, 0),
        ("Be careful .", 0.5, 0),
        ("Work it out .", 1.0, 1),
    ]
    # only accepted instructions reach the scorer, each on the 10 score examples, once
    assert scorer.scored() == [
        "Solve it .",
        "Think step by step .",
        "Be careful .",
        "Work it out .",
    ]
    assert len(scorer.prompts) == 40
    assert isinstance(policy, PromptPolicy) and policy.instruction == "Work it out ."

    step0 = (
        f"{HEADER}\n\ntext:\nSolve it .\nscore:\n30\n\n{LEAD}\n\n"
        "input:\nQ: <INS>\nq2\nA:\noutput:\n2\n\ninput:\nQ: <INS>\nq4\nA:\noutput:\n4\n\n"
        f"input:\nQ: <INS>\nq8\nA:\noutput:\n8\n\n{FOOTER}"
    )
    step1 = (
        f"{HEADER}\n\ntext:\nSolve it .\nscore:\n30\n\ntext:\nBe careful .\nscore:\n50\n\n"
        f"text:\nThink step by step .\nscore:\n80\n\n{LEAD}\n\n"
        "input:\nQ: <INS>\nq2\nA:\noutput:\n2\n\ninput:\nQ: <INS>\nq6\nA:\noutput:\n6\n\n"
        f"input:\nQ: <INS>\nq9\nA:\noutput:\n9\n\n{FOOTER}"
    )
    assert [r["prompt"] for r in proposer.requests] == [step0, step1]
    assert all(r["n"] == 8 and r["temperature"] == 1.0 for r in proposer.requests)
    assert all(r["max_tokens"] == 1024 for r in proposer.requests)  # no window: the default
    assert proposer.requests[0]["seed"] != proposer.requests[1]["seed"]
    assert [f["scored"] for e, f in events if e == "opro_step"] == [2, 1]
    assert [f["parsed"] for e, f in events if e == "opro_step"] == [7, 7]


def test_digits_are_allowed_off_arithmetic_or_when_configured() -> None:
    for task, overrides in ((_Toy(), {}), (_ToyArith(), {"no_digits": False})):
        scorer = _Scorer(TRAIN_ACC)
        tuner = _tuner(num_search_steps=1, **overrides)
        policy = tuner.fit(
            task.examples("train"),
            task=task,
            backend=scorer,  # type: ignore[arg-type]
            proposer=_Proposer([STEP0]),  # type: ignore[arg-type]
        )
        assert "Add 2 and 3 ." in scorer.scored()
        assert policy.instruction == "Add 2 and 3 ."  # type: ignore[attr-defined]
    scorer = _Scorer(TRAIN_ACC)
    _tuner(num_search_steps=1, no_digits=True).fit(
        _Toy().examples("train"),
        task=_Toy(),
        backend=scorer,  # type: ignore[arg-type]
        proposer=_Proposer([STEP0]),  # type: ignore[arg-type]
    )
    assert "Add 2 and 3 ." not in scorer.scored()


def test_plan_counts_match_a_run_where_every_proposal_is_new() -> None:
    task = _Toy()
    train, dev = task.examples("train"), task.examples("dev")
    script = [[f"\n[Way {chr(97 + s)}{chr(97 + i)} .]" for i in range(4)] for s in range(3)]
    acc = {f"Way {chr(97 + s)}{chr(97 + i)} .": (s + i) / 10 for s in range(3) for i in range(4)}
    tuner = _tuner(num_search_steps=3, num_generated_per_step=4, dev_top_k=3, num_dev_examples=5)
    plan = tuner.plan(task=task, train=train, dev=dev)
    assert plan.calls == 10 * (1 + 3 * 4) + 3 * 5 and plan.samples == plan.calls
    assert plan.proposer_calls == 3
    scorer, proposer = _Scorer({"Solve it .": 0.0, **acc}, dev=acc), _Proposer(script)
    tuner.fit(train, task=task, backend=scorer, dev=dev, proposer=proposer)  # type: ignore[arg-type]
    assert len(scorer.prompts) == plan.calls
    assert len(proposer.requests) == plan.proposer_calls
    # all manual instructions as I0: three to score first
    assert _tuner(initial_instructions="all").plan(task=task, train=train, dev=[]).calls == (
        10 * (3 + 200 * 8)
    )


def test_presets_fit_their_caps_whatever_the_split_sizes() -> None:
    task = _Toy()
    big = [Example(f"x{i}", f"q{i}", str(i)) for i in range(5000)]
    for budget, cap in BUDGET_CALLS.items():
        plan = get_method("opro").from_budget(budget).plan(task=task, train=big, dev=big)
        assert plan.calls + plan.proposer_calls <= cap, budget
    paper = get_method("opro").from_budget("paper").plan(task=task, train=big, dev=[])
    assert paper.calls == 261 * (1 + 200 * 8) and paper.proposer_calls == 200


# -- the context window ------------------------------------------------------------------


def _words(text: str) -> int:
    return len(text.split())


def test_window_cut_drops_worst_instructions_then_exemplars_then_more() -> None:
    shown = [(f"Instruction number {w} .", float(10 * i)) for i, w in enumerate("abcdef")]
    exemplars = [("q1 is a long question", "1"), ("q2 is another one", "2"), ("q3 more", "3")]

    def cut(window: int) -> tuple[str, list[Any], list[Any]]:
        return fit_meta_prompt(
            shown,
            exemplars,
            "Q_begin",
            count_tokens=_words,
            window=window,
            answer_tokens=5,
            min_shown=3,
        )

    full = _words(meta_prompt(shown, exemplars, "Q_begin")) + 5
    meta, kept, kept_ex = cut(full)
    assert (kept, kept_ex) == (shown, exemplars)
    # one token short: the worst instruction goes first
    meta, kept, kept_ex = cut(full - 1)
    assert (kept, kept_ex) == (shown[1:], exemplars)
    # three instructions and one exemplar fit exactly; two exemplars do not
    window = _words(meta_prompt(shown[-3:], exemplars[:1], "Q_begin")) + 5
    meta, kept, kept_ex = cut(window)
    assert (kept, kept_ex) == (shown[-3:], exemplars[:1])
    assert _words(meta) + 5 <= window
    # then instructions below the floor, the worst first
    window = _words(meta_prompt(shown[-2:], [], "Q_begin")) + 5
    meta, kept, kept_ex = cut(window)
    assert (kept, kept_ex) == (shown[-2:], [])
    assert meta == meta_prompt(shown[-2:], [], "Q_begin")
    # no window: nothing is cut
    assert fit_meta_prompt(
        shown,
        exemplars,
        "Q_begin",
        count_tokens=_words,
        window=None,
        answer_tokens=5,
        min_shown=3,
    )[1:] == (shown, exemplars)
    with pytest.raises(BenchError, match="does not fit"):
        cut(20)


def test_fit_keeps_meta_prompt_and_answer_within_the_proposers_window() -> None:
    task = _Toy()
    train = task.examples("train")
    acc = {"Solve it .": 0.1, "Think .": 0.2, "Be brief .": 0.3, "Be careful .": 0.5}
    window = 128  # answer reserve: min(1024, 128 // 4) = 32 tokens, so 96 for the meta-prompt
    proposer = _Proposer([["\n[Be careful .]"] * 8], context_length=window)
    tuner = _tuner(num_search_steps=1, initial_instructions="all", min_shown_instructions=2)
    tuner.fit(train, task=task, backend=_Scorer(acc), proposer=proposer)  # type: ignore[arg-type]
    request = proposer.requests[0]
    # 3 instructions + 3 exemplars: 115 words; the worst instruction goes (floor 2): 109; then
    # the exemplars from the last: 102, 95 <= 96
    shown = [("Think .", 20.0), ("Be brief .", 30.0)]
    assert request["prompt"] == meta_prompt(shown, [("q2", "2")], "Q_begin")
    assert request["max_tokens"] == window - 95
    assert tuner.variant == "meta-prompt cut to the 128-token window in 1/1 steps"


# -- instruction positions -----------------------------------------------------------------


def test_the_four_positions_build_these_prompts() -> None:
    task = _Toy()
    ex = task.examples("train")[1]
    demo = task.examples("train")[2]
    assert positioned_prompt(task, ex, "Be brief .", "before_Q") == "Be brief .\n\nQ: q1\nA:"
    assert positioned_prompt(task, ex, "Be brief .", "Q_begin") == "Be brief .\n\nQ: q1\nA:"
    assert positioned_prompt(task, ex, "Be brief .", "Q_end") == "Q: q1\nBe brief .\nA:"
    assert positioned_prompt(task, ex, "Be brief .", "A_begin") == "Q: q1\nA: Be brief ."
    for position in ("before_Q", "Q_begin", "Q_end", "A_begin"):
        assert positioned_prompt(task, ex, None, position) == "Q: q1\nA:"
    assert (
        positioned_prompt(task, ex, "Be brief .", "Q_end", demos=[demo])
        == "Q: q2\nA: 2\n\nQ: q1\nBe brief .\nA:"
    )
    with pytest.raises(BenchError, match="unknown instruction position"):
        positioned_prompt(task, ex, "Be brief .", "Q_middle")
    with pytest.raises(BenchError, match="instruction_pos"):
        Opro(instruction_pos="Q_middle")


@pytest.mark.parametrize("position", ["Q_end", "A_begin"])
def test_search_scores_and_returns_positioned_prompts(position: str) -> None:
    task = _Toy()
    train = task.examples("train")
    scorer = _Scorer({"Solve it .": 0.2, "Be careful .": 0.6})
    policy = _tuner(num_search_steps=1, instruction_pos=position).fit(
        train,
        task=task,
        backend=scorer,  # type: ignore[arg-type]
        proposer=_Proposer([["\n[Be careful .]"] * 8]),  # type: ignore[arg-type]
    )
    expected = {"Q_end": "Q: q0\nSolve it .\nA:", "A_begin": "Q: q0\nA: Solve it ."}
    assert scorer.prompts[0] == expected[position]
    assert isinstance(policy, PositionedPromptPolicy)
    assert (policy.instruction, policy.position) == ("Be careful .", position)
    assert policy.prompt(train[3], task) == positioned_prompt(
        task, train[3], "Be careful .", position
    )
    preds = policy.predict(train, task=task, backend=scorer)  # type: ignore[arg-type]
    assert sum(task.score(p.answer, ex) for p, ex in zip(preds, train, strict=True)) == 6


def test_positioned_policy_round_trips(tmp_path: Path) -> None:
    policy = PositionedPromptPolicy(instruction="Be brief .", position="A_begin")
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, PositionedPromptPolicy) and loaded == policy
    (tmp_path / "p" / "policy.json").write_text(
        '{"kind": "positioned-prompt", "instruction": "x", "position": "middle"}', encoding="utf-8"
    )
    with pytest.raises(BenchError, match="unknown position"):
        load_policy(tmp_path / "p")


# -- the final choice on dev ---------------------------------------------------------------

TRAIN_RANK = {"Solve it .": 0.3, "Alpha .": 0.9, "Beta .": 0.8, "Gamma .": 0.7}
DEV_RANK = {"Solve it .": 1.0, "Alpha .": 0.2, "Beta .": 0.6, "Gamma .": 0.9}


def _choose(dev: list[Example] | None, **overrides: Any) -> tuple[Opro, Any, _Scorer]:
    task = _Toy()
    scorer = _Scorer(TRAIN_RANK, dev=DEV_RANK)
    tuner = _tuner(num_search_steps=1, num_generated_per_step=3, **overrides)
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=scorer,  # type: ignore[arg-type]
        dev=dev,
        proposer=_Proposer([["\n[Alpha .]", "\n[Beta .]", "\n[Gamma .]"]]),  # type: ignore[arg-type]
    )
    return tuner, policy, scorer


def test_best_on_dev_among_the_top_k_by_training_score() -> None:
    dev = _Toy().examples("dev")
    tuner, policy, scorer = _choose(dev, dev_top_k=2)
    assert policy.instruction == "Beta ."  # Gamma is better on dev but not in the top 2
    assert scorer.scored("d") == ["Alpha .", "Beta ."]
    assert tuner.dev_scores == {"Alpha .": 0.2, "Beta .": 0.6}
    tuner, policy, scorer = _choose(dev, dev_top_k=3)
    assert policy.instruction == "Gamma ."
    # on the first 4 dev examples Beta and Gamma tie (4/4): the higher training score wins
    tuner, policy, scorer = _choose(dev, dev_top_k=3, num_dev_examples=4)
    assert tuner.dev_scores == {"Alpha .": 0.5, "Beta .": 1.0, "Gamma .": 1.0}
    assert policy.instruction == "Beta ."
    dev_prompts = [p for p in scorer.prompts if "Q: d" in p]
    assert len(dev_prompts) == 12 and {re.search(r"d\d", p).group() for p in dev_prompts} == {  # type: ignore[union-attr]
        "d0",
        "d1",
        "d2",
        "d3",
    }
    # no dev, or a top-1: the best training score, and nothing is scored on dev
    for dev_set, k in ((None, 3), (dev, 1)):
        _, policy, scorer = _choose(dev_set, dev_top_k=k)
        assert policy.instruction == "Alpha ." and scorer.scored("d") == []


# -- zoo-large -----------------------------------------------------------------------------


def _roles(meter: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"task": [], "proposer": []}
    for call in meter.calls:
        out[call.role].append(call)
    return out


def test_light_on_zoo_hops_generates_scores_and_respects_its_plan(
    zoo_large: Any, zoo_backend: Any
) -> None:
    from benchmarks.client import MeteredBlackBox

    task = get_task("zoo-hops", n_train=40, n_dev=16, n_test=16)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    proposer = MeteredBlackBox(zoo_backend, meter=zoo_large.meter, role="proposer")
    tuner = get_method("opro").from_budget("light")
    assert isinstance(tuner, Opro)
    plan = tuner.plan(task=task, train=train, dev=dev)
    events: list[dict[str, Any]] = []
    policy = tuner.fit(
        train,
        task=task,
        backend=zoo_large,
        dev=dev,
        proposer=proposer,
        context=TuneContext(
            seed=0, on_event=lambda e, f: events.append(dict(f)) if e == "opro_step" else None
        ),
    )
    calls = _roles(zoo_large.meter)
    assert len(calls["proposer"]) == plan.proposer_calls == 6
    assert all(c.samples == 4 for c in calls["proposer"])
    assert 0 < len(calls["task"]) <= plan.calls
    assert len(events) == 6 and sum(e["parsed"] for e in events) > 0
    generated = [h for h in tuner.history if h[1] >= 0 and h[2] >= 0]
    assert generated, "no proposal was scored"
    assert isinstance(policy, PromptPolicy) and policy.instruction in {h[0] for h in tuner.history}
    assert len(tuner.dev_scores) == 2
    preds = policy.predict(test, task=task, backend=zoo_large)
    assert len(preds) == 16 and sum(p.answer is not None for p in preds) >= 8


def test_short_run_on_zoo_sentiment_is_deterministic(zoo_large: Any) -> None:
    task = get_task("zoo-sentiment", n_train=24, n_dev=8, n_test=8)
    train, dev = task.examples("train"), task.examples("dev")
    runs = []
    for _ in range(2):
        tuner = get_method("opro").from_budget("light", num_search_steps=2)
        assert isinstance(tuner, Opro)
        policy = tuner.fit(train, task=task, backend=zoo_large, dev=dev, context=TuneContext(1))
        runs.append((tuner.history, policy))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 1  # proposals were parsed and scored
    preds = runs[0][1].predict(task.examples("test"), task=task, backend=zoo_large)
    assert sum(p.answer in task.labels for p in preds) >= 6  # type: ignore[operator]


class _RamblingProposer(_Proposer):
    """Writes its instruction in brackets, then 800 words of noise, cut as an API cuts it."""

    def generate(self, prompts: Sequence[str], **kwargs: Any) -> list[list[Completion]]:
        self.requests.append({"prompt": prompts[0], **kwargs})
        text = "\n[Think step by step .] " + "and so on " * 800
        cut = as_an_api_answers(text, max_tokens=kwargs["max_tokens"], stop=kwargs.get("stop"))
        return [[cut] * kwargs["n"]]


@pytest.mark.parametrize("budget", ["light", "medium", "heavy"])
def test_presets_cut_a_rambling_proposer_after_its_instruction(budget: str) -> None:
    task = _Toy()
    proposer = _RamblingProposer([])
    tuner = Opro.from_budget(
        budget, num_search_steps=1, num_score_examples=10, dev_top_k=0, num_generated_per_step=2
    )
    tuner.fit(
        task.examples("train"),
        task=task,
        backend=_Scorer(TRAIN_ACC),  # type: ignore[arg-type]
        proposer=proposer,  # type: ignore[arg-type]
        context=TuneContext(seed=0),
    )
    (request,) = proposer.requests
    assert request["stop"] == ["]"] and request["max_tokens"] <= 128
    # The instruction before the cut "]" is still read.
    assert [text for text, _, step in tuner.history if step == 0] == ["Think step by step ."]


def test_paper_preset_keeps_the_official_decode_length_and_no_stop() -> None:
    task, proposer = _Toy(), _RamblingProposer([])
    _tuner(num_search_steps=1).fit(
        task.examples("train"),
        task=task,
        backend=_Scorer(TRAIN_ACC),  # type: ignore[arg-type]
        proposer=proposer,  # type: ignore[arg-type]
        context=TuneContext(seed=0),
    )
    assert proposer.requests[0]["max_tokens"] == 1024 and proposer.requests[0]["stop"] is None


# -- disclosures and the trace ---------------------------------------------------------------


def test_cut_meta_prompt_unfit_proposals_and_a_kept_start_are_disclosed_and_traced() -> None:
    """The window cut says how much of the official meta-prompt was left, a proposal whose
    scorer prompt does not fit is counted as never scored, a search that returns its starting
    instruction is marked "no change" (computed: the instruction returned is I0), and the
    step's proposals and scores are in the trace."""
    task = _Toy()
    train = task.examples("train")
    long = "Work it out . " * 20
    scorer = _Scorer({"Solve it .": 0.9, "Be careful .": 0.5}, context_length=40)
    proposer = _Proposer([["\n[Be careful .]"] * 4 + [f"\n[{long}]"] * 4], context_length=120)
    ctx = TuneContext(seed=0)
    policy = _tuner(num_search_steps=1, num_generated_per_step=8).fit(
        train,
        task=task,
        backend=scorer,  # type: ignore[arg-type]
        proposer=proposer,  # type: ignore[arg-type]
        context=ctx,
    )
    assert isinstance(policy, PromptPolicy) and policy.instruction == "Solve it ."
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "truncated",
            "meta-prompt cut to the proposer's 120-token window in 1 of 1 steps: 1 of 1 scored "
            "instructions shown (official: up to 20) and 1 of 3 exemplars (official: 3)",
        ),
        (
            "not-sent",
            "1 of 2 new proposals never scored: their prompts did not fit the task model's "
            "40-token window",
        ),
        (
            "no-change",
            "returned its starting instruction, the task's hand-written instruction 0 "
            '("Solve it ."): none of the 1 scored proposals beat it',
        ),
    ]
    (step,) = [e for e in ctx.trace if e["event"] == "opro_step"]
    assert step["candidates"] == [{"instruction": "Be careful .", "score": 0.5}]
    assert step["unfit"] == [long.strip()] and step["meta_prompt"] == [
        {"instruction": "Solve it .", "score": 90.0}
    ]
    (done,) = [e for e in ctx.trace if e["event"] == "opro_done"]
    assert done["initial"] == [{"instruction": "Solve it .", "score": 0.9}]
    assert done["chosen"] == "Solve it ."


def test_a_search_that_moves_discloses_no_change_nowhere() -> None:
    task = _Toy()
    scorer = _Scorer({"Solve it .": 0.3, "Be careful .": 0.5})
    ctx = TuneContext(seed=0)
    _tuner(num_search_steps=1).fit(
        task.examples("train"),
        task=task,
        backend=scorer,  # type: ignore[arg-type]
        proposer=_Proposer([["\n[Be careful .]"] * 8]),  # type: ignore[arg-type]
        context=ctx,
    )
    assert ctx.disclosures == []  # no window, no cut, and the proposal won
