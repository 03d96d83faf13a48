from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.tasks.base import Task, get_task
from methods import BenchError, Example, TuneContext, get_method, load_policy
from methods.bbt import (
    BBT,
    SoftPromptPolicy,
    accuracy,
    ce_loss,
    hinge_loss,
    random_projection,
    search,
    true_few_shot,
)

VOCAB = ["<eos>", " negative", " positive", " good", " bad", "."]


class _Reviews(Task):
    name = "reviews"
    kind = "classification"
    labels = ("negative", "positive")
    instructions = ("Classify the review .",)
    max_tokens = 2

    def load_split(self, split):  # type: ignore[no-untyped-def]
        return [
            Example(
                f"{split}{i}",
                f"{'good' if i % 2 else 'bad'} thing {i} .",
                "positive" if i % 2 else "negative",
            )
            for i in range(40)
        ]

    def extract(self, text: str, example: Example) -> str | None:
        word = text.strip().split()[0] if text.strip() else None
        return word if word in self.labels else None


class _Poems(_Reviews):
    name = "poems"
    kind = "generation"
    labels = None


class _LinearBox:
    """A black box whose verbalizer logits are linear in the soft prompt's mean: for a review
    of sign s (+1 "good", -1 "bad") the positive-minus-negative logit is ``gain*s*mean(P) -
    bias``. z = 0 (a zero prompt) therefore answers "negative" to everything; a prompt with a
    large positive mean answers every example right, and the CE loss falls as the mean grows.
    """

    model = "linear-box"
    capabilities = frozenset({"next_token_logits", "prompt_embeds"})
    context_length = 192

    def __init__(self, hidden: int = 4, emb_std: float = 1.0, gain: float = 5.0, bias: float = 0.3):
        self.hidden, self.emb_std, self.gain, self.bias = hidden, emb_std, gain, bias
        self.prompts_sent = 0
        self.soft_prompts: list[np.ndarray | None] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def vocabulary(self) -> list[str]:
        return list(VOCAB)

    def embedding_stats(self) -> tuple[int, float, float]:
        return self.hidden, 0.0, self.emb_std

    def next_token_logprobs(
        self, prompts: Sequence[str], *, soft_prompt: np.ndarray | None = None
    ) -> np.ndarray:
        self.prompts_sent += len(prompts)
        self.soft_prompts.append(None if soft_prompt is None else np.array(soft_prompt))
        mean = 0.0 if soft_prompt is None else float(np.mean(soft_prompt))
        rows = []
        for p in prompts:
            sign = 1.0 if "Q: good" in p else -1.0
            diff = self.gain * sign * mean - self.bias
            logits = np.array([-2.0, -diff / 2, diff / 2, -2.0, -2.0, -3.0])
            rows.append(logits - np.log(np.exp(logits).sum()))
        return np.array(rows, dtype=np.float32)


def _fit(box: _LinearBox, seed: int = 0, **overrides: object) -> SoftPromptPolicy:
    task = _Reviews()
    settings: dict[str, object] = {
        "intrinsic_dim": 50,
        "n_prompt_tokens": 2,
        "k_shot": 4,
        "budget": 60,
        "popsize": 6,
        "eval_every": 12,
    }
    settings.update(overrides)
    tuner = BBT(**settings)
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=box,
        dev=task.examples("dev"),
        context=TuneContext(seed=seed),
    )
    assert isinstance(policy, SoftPromptPolicy)
    return policy


def _loss_of(policy: SoftPromptPolicy, box: _LinearBox) -> float:
    task = _Reviews()
    train = task.examples("train")
    prompts = [task.render(ex, instruction=task.instructions[0]) for ex in train]
    scores = box.next_token_logprobs(prompts, soft_prompt=policy.soft_prompt)[:, [1, 2]]
    return ce_loss(scores, np.array([task.labels.index(ex.target) for ex in train]))


# -- losses, projection, data ----------------------------------------------------------------


def test_ce_and_hinge_match_hand_computed_values() -> None:
    scores = np.array([[1.0, 3.0, 0.0], [2.0, 2.5, -1.0]])
    targets = np.array([1, 0])
    row0 = math.log(math.e + math.e**3 + 1.0) - 3.0  # 0.16985
    row1 = math.log(math.e**2 + math.e**2.5 + math.e**-1) - 2.0  # 0.99270
    assert ce_loss(scores, targets) == pytest.approx((row0 + row1) / 2, abs=1e-9)
    # hinge, margin 2: row 0 has every gap >= 2 -> 0; row 1: (2.5 - 2 + 2) = 2.5, (-1 - 2 + 2) < 0
    assert hinge_loss(scores, targets, margin=2.0) == pytest.approx(1.25)
    assert hinge_loss(scores, targets, margin=1.0) == pytest.approx((0.0 + 1.5) / 2)
    # both are blind to a per-row shift, so log-probs and logits give the same loss
    shifted = scores + np.array([[4.0], [-7.0]])
    assert ce_loss(shifted, targets) == pytest.approx(ce_loss(scores, targets))
    assert hinge_loss(shifted, targets) == pytest.approx(hinge_loss(scores, targets))
    assert accuracy(scores, targets) == 0.5  # row 1 puts 2.5 on the wrong label
    assert accuracy(scores, np.array([1, 1])) == 1.0


def test_random_projections_have_the_documented_scale() -> None:
    rng = np.random.default_rng(0)
    d, rows, emb_std = 500, 2000, 0.13
    normal = random_projection("normal", rows=rows, dim=d, emb_std=emb_std, rng=rng)
    assert normal.shape == (rows, d)
    assert abs(normal.mean()) < 1e-4
    assert normal.std() == pytest.approx(emb_std / math.sqrt(d), rel=0.01)
    scaled = random_projection(
        "normal", rows=rows, dim=d, emb_std=emb_std, alpha=2.0, sigma=0.5, rng=rng
    )
    assert scaled.std() == pytest.approx(4 * emb_std / math.sqrt(d), rel=0.01)
    # with z ~ N(0, sigma^2) the prompt has the embeddings' scale (times alpha)
    z = rng.normal(0.0, 1.0, size=d)
    assert (normal @ z).std() == pytest.approx(emb_std, rel=0.1)
    he = random_projection("he", rows=rows, dim=d, emb_std=emb_std, rng=rng)
    assert np.abs(he).max() <= 1 / math.sqrt(d)
    assert np.abs(he).max() > 0.99 / math.sqrt(d)
    assert he.std() == pytest.approx(1 / math.sqrt(3 * d), rel=0.01)  # U(-b, b): b / sqrt(3)
    with pytest.raises(BenchError, match="valid: normal, he"):
        random_projection("xavier", rows=2, dim=2, emb_std=1.0, rng=rng)


def test_true_few_shot_draws_k_per_class_and_a_disjoint_dev() -> None:
    import random

    task = _Reviews()
    train, dev = task.examples("train"), task.examples("dev")
    tr, dv = true_few_shot(train, dev, task.labels, 4, 4, random.Random(0))
    assert sorted(ex.target for ex in tr) == ["negative"] * 4 + ["positive"] * 4
    assert sorted(ex.target for ex in dv) == ["negative"] * 4 + ["positive"] * 4
    assert all(ex.id.startswith("dev") for ex in dv)
    # without dev: the next k per class of the shuffled train (construct_true_few_shot_data)
    tr2, dv2 = true_few_shot(train, None, task.labels, 4, 4, random.Random(0))
    assert len(tr2) == len(dv2) == 8 and not {e.id for e in tr2} & {e.id for e in dv2}
    # dev_k apart from k (the presets' 16 per class on dev)
    tr3, dv3 = true_few_shot(train, dev, task.labels, 4, 16, random.Random(0))
    assert (
        len(tr3) == 8 and sorted(ex.target for ex in dv3) == ["negative"] * 16 + ["positive"] * 16
    )
    again, _ = true_few_shot(train, dev, task.labels, 4, 4, random.Random(0))
    other, _ = true_few_shot(train, dev, task.labels, 4, 4, random.Random(1))
    assert [e.id for e in again] == [e.id for e in tr]
    assert [e.id for e in other] != [e.id for e in tr]


# -- the search ------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["cma", "nevergrad"])
def test_cma_improves_the_loss_from_the_zero_prompt(optimizer: str) -> None:
    box = _LinearBox()
    events: list[tuple[str, dict]] = []
    task = _Reviews()
    tuner = BBT(
        intrinsic_dim=50,
        n_prompt_tokens=2,
        k_shot=4,
        budget=60,
        popsize=6,
        eval_every=12,
        optimizer=optimizer,
    )
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=box,
        dev=task.examples("dev"),
        context=TuneContext(seed=0, on_event=lambda e, f: events.append((e, dict(f)))),
    )
    assert isinstance(policy, SoftPromptPolicy)
    zero_loss = _loss_of(SoftPromptPolicy(np.zeros((2, 4), np.float32), task.labels), box)
    # half the batch is off by the bias one way, half the other
    expected = (math.log(1 + math.exp(0.3)) + math.log(1 + math.exp(-0.3))) / 2
    assert zero_loss == pytest.approx(expected, abs=1e-4)
    assert _loss_of(policy, box) < 0.5 * zero_loss
    assert policy.soft_prompt.shape == (2, 4) and policy.soft_prompt.dtype == np.float32
    assert float(np.mean(policy.soft_prompt)) > 0  # the direction that helps
    # z = 0 (which answers "negative" to everything: dev accuracy 0.5) is never sent to dev;
    # the first checkpoint, the 12th candidate, already answers every dev example right
    dev = [f for e, f in events if e == "dev"]
    assert dev[0] == {"calls": 12, "dev_accuracy": 1.0, "best_dev_accuracy": 1.0}
    assert policy.meta["dev_accuracy"] == 1.0 and not policy.meta["from_zero"]
    gens = [f for e, f in events if e == "generation"]
    assert [g["calls"] for g in gens] == [6 * i for i in range(1, 11)]
    assert gens[-1]["loss_best"] < gens[0]["loss_best"]


def test_the_loop_spends_what_it_plans_and_is_seeded() -> None:
    task = _Reviews()
    tuner = BBT(intrinsic_dim=50, n_prompt_tokens=2, k_shot=4, budget=60, popsize=6, eval_every=12)
    plan = tuner.plan(task=task, train=task.examples("train"), dev=task.examples("dev"))
    # 60 calls x 8 prompts + dev checks (the candidates of calls 12, 24, 36, 48, 60) x 8
    assert plan.calls == 60 * 8 + 5 * 8 and plan.samples == 0
    box = _LinearBox()
    a = _fit(box, seed=0)
    assert box.prompts_sent <= plan.calls
    assert box.prompts_sent >= 60 * 8 + 8  # all train calls, and a dev check
    assert a.meta["calls"] == 60
    b = _fit(_LinearBox(), seed=0)
    c = _fit(_LinearBox(), seed=1)
    np.testing.assert_array_equal(a.soft_prompt, b.soft_prompt)
    assert not np.array_equal(a.soft_prompt, c.soft_prompt)


def test_best_on_dev_is_kept_and_ties_keep_the_earlier_prompt() -> None:
    target = np.linspace(-1, 1, 10)
    losses: list[tuple[float, np.ndarray]] = []

    def train_loss(z: np.ndarray) -> float:
        loss = float(np.sum((z - target) ** 2))
        losses.append((loss, z.copy()))
        return loss

    # dev accuracy is scripted per check: z = 0 first, then one per checkpoint.
    script = iter([0.5, 0.75, 0.6, 0.75, 0.7])
    checked: list[tuple[int, np.ndarray]] = []

    def dev_accuracy(z: np.ndarray) -> float:
        checked.append((len(losses), z.copy()))
        return next(script)

    cfg = BBT.Config(
        intrinsic_dim=10,
        popsize=5,
        budget=40,
        eval_every=10,
        checkpoint="best_train",
        zero_incumbent=True,
    )
    result = search(train_loss, dev_accuracy, config=cfg, calls=40, seed=3)
    assert result.calls == 40 and result.dev_checks == 5
    assert [n for n, _ in checked] == [0, 10, 20, 30, 40]
    np.testing.assert_array_equal(checked[0][1], np.zeros(10))
    # each checkpoint sends the lowest-training-loss z seen so far
    for n, z in checked[1:]:
        best = min(losses[:n], key=lambda pair: pair[0])[1]
        np.testing.assert_array_equal(z, best)
    # 0.75 at the first checkpoint; the later 0.75 ties and does not replace it
    np.testing.assert_array_equal(result.z, checked[1][1])
    assert result.dev_accuracy == 0.75
    assert result.train_loss == min(loss for loss, _ in losses[:10])


def test_zero_prompt_is_kept_when_nothing_beats_it_on_dev() -> None:
    cfg = BBT.Config(
        intrinsic_dim=5,
        popsize=4,
        budget=8,
        eval_every=3,
        checkpoint="best_train",
        zero_incumbent=True,
    )
    result = search(lambda z: float(np.sum(z**2)), lambda z: 0.5, config=cfg, calls=8, seed=1)
    assert not np.any(result.z) and result.train_loss is None
    # checks: z = 0, calls 3 and 6, and a last one at 8 (unless the best z did not change)
    assert 2 <= result.dev_checks <= 4


def test_the_official_selection_scores_the_current_candidate_and_has_no_zero_incumbent() -> None:
    """``checkpoint="current"`` without an incumbent (the Config default, the paper preset):
    z = 0 is never sent to dev, each check scores the eval_every-th candidate itself, and the
    first check above accuracy 0 is taken even when it is worse than z = 0 would be."""
    seen: list[np.ndarray] = []

    def train_loss(z: np.ndarray) -> float:
        seen.append(z.copy())
        return float(np.sum(z**2))

    checked: list[np.ndarray] = []
    script = iter([0.25, 0.25, 0.5])

    def dev_accuracy(z: np.ndarray) -> float:
        checked.append(z.copy())
        return next(script)

    cfg = BBT.Config(intrinsic_dim=6, popsize=4, budget=12, eval_every=4)
    assert cfg.checkpoint == "current" and not cfg.zero_incumbent
    assert get_method("bbt").from_budget("paper").config == cfg.__class__()
    result = search(train_loss, dev_accuracy, config=cfg, calls=12, seed=2)
    assert result.dev_checks == 3 and len(checked) == 3
    for i, z in enumerate(checked):  # the 4th, 8th and 12th candidates, not the best so far
        np.testing.assert_array_equal(z, seen[4 * i + 3])
    assert not any(not np.any(z) for z in checked)  # z = 0 was never scored
    np.testing.assert_array_equal(result.z, checked[2])  # 0.5 beat 0.25; the tie did not
    assert result.dev_accuracy == 0.5


def test_without_an_incumbent_nothing_above_zero_returns_z_zero_unscored() -> None:
    cfg = BBT.Config(intrinsic_dim=4, popsize=2, budget=4, eval_every=2)
    result = search(lambda z: float(np.sum(z**2)), lambda z: 0.0, config=cfg, calls=4, seed=1)
    assert not np.any(result.z) and result.dev_accuracy is None and result.dev_checks == 2


def test_call_cap_shrinks_the_budget_for_tasks_with_more_classes() -> None:
    class _Topics(_Reviews):
        labels = ("world", "sports", "business", "tech", "science", "arts")

        def load_split(self, split):  # type: ignore[no-untyped-def]
            return [Example(f"{split}{i}", f"t {i}", self.labels[i % 6]) for i in range(60)]

    task = _Topics()
    for budget, cap in {"light": 400, "medium": 2_000, "heavy": 10_000}.items():
        tuner = get_method("bbt").from_budget(budget)
        plan = tuner.plan(task=task, train=task.examples("train"), dev=task.examples("dev"))
        assert 0 < plan.calls <= cap
    # the light preset on a two-class task: 40 calls x 8 + 2 checks x 16 (8 dev per class)
    two = _Reviews()
    light = get_method("bbt").from_budget("light")
    assert light.plan(task=two, train=two.examples("train"), dev=two.examples("dev")).calls == 352
    medium = get_method("bbt").from_budget("medium")
    plan = medium.plan(task=two, train=two.examples("train"), dev=two.examples("dev"))
    assert plan.calls == 220 * 8 + 5 * 32  # the paper's 16 per class on dev


# -- refusals and the policy -----------------------------------------------------------------


def test_refuses_tasks_without_label_words_and_bad_options() -> None:
    task = _Poems()
    with pytest.raises(BenchError, match="poems is a generation task"):
        BBT().fit(task.examples("train"), task=task, backend=_LinearBox())  # type: ignore[arg-type]
    assert BBT().plan(task=task, train=task.examples("train"), dev=[]).calls == 0
    with pytest.raises(BenchError, match="valid: cma, nevergrad"):
        BBT(optimizer="adam")
    with pytest.raises(BenchError, match="valid: ce, hinge"):
        get_method("bbt").from_budget("light", loss="mse")
    assert BBT.requires == frozenset({"next_token_logits", "prompt_embeds"})


def test_the_optimizer_library_is_imported_when_the_tuner_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built by the runner before the tuning clock starts, so its import is not tuning time;
    a missing library is refused then, by name."""
    monkeypatch.delitem(sys.modules, "cma", raising=False)
    BBT(optimizer="cma")
    assert "cma" in sys.modules
    monkeypatch.setitem(sys.modules, "nevergrad", None)  # what a missing package looks like
    with pytest.raises(BenchError, match="optimizer 'nevergrad' needs the nevergrad package"):
        BBT(optimizer="nevergrad")


def test_hinge_loss_and_he_projection_also_tune() -> None:
    box = _LinearBox()
    policy = _fit(box, loss="hinge", random_proj="he")
    assert _loss_of(policy, box) < 0.7
    assert policy.meta["dev_accuracy"] == 1.0


def test_policy_round_trips_and_predicts_identically(tmp_path: Path) -> None:
    box = _LinearBox()
    policy = _fit(box, seed=2)
    task = _Reviews()
    test = task.examples("test")
    before = policy.predict(test, task=task, backend=box)  # type: ignore[arg-type]
    assert {p.output for p in before} <= {"negative", "positive"}
    assert sum(p.answer == ex.target for p, ex in zip(before, test, strict=True)) == len(test)
    policy.save(tmp_path / "p")
    assert (tmp_path / "p" / "soft_prompt.safetensors").exists()
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, SoftPromptPolicy)
    np.testing.assert_array_equal(loaded.soft_prompt, policy.soft_prompt)
    assert loaded.labels == policy.labels and loaded.instruction == "Classify the review ."
    after = loaded.predict(test, task=task, backend=box)  # type: ignore[arg-type]
    assert after == before
    # the prompt sent is exactly the stored soft prompt
    np.testing.assert_array_equal(box.soft_prompts[-1], policy.soft_prompt)


# -- the zoo ---------------------------------------------------------------------------------


def test_light_preset_on_zoo_sentiment(zoo_large) -> None:  # type: ignore[no-untyped-def]
    task = get_task("zoo-sentiment", n_train=40, n_dev=16, n_test=16)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    tuner = get_method("bbt").from_budget("light")
    plan = tuner.plan(task=task, train=train, dev=dev)
    dev_size = sum(min(8, sum(ex.target == lab for ex in dev)) for lab in task.labels)
    assert plan.calls == 40 * 8 + 2 * dev_size  # 8 dev examples per class, two checks
    events: list[tuple[str, dict]] = []
    policy = tuner.fit(
        train,
        task=task,
        backend=zoo_large,
        dev=dev,
        context=TuneContext(seed=0, on_event=lambda e, f: events.append((e, dict(f)))),
    )
    calls = list(zoo_large.meter.calls)
    assert 320 + dev_size <= len(calls) <= plan.calls
    assert {c.kind for c in calls} == {"next_token"} and {c.role for c in calls} == {"task"}
    assert isinstance(policy, SoftPromptPolicy)
    assert policy.soft_prompt.shape == (5, zoo_large.embedding_stats()[0])
    assert len([e for e, _ in events if e == "generation"]) == 5
    preds = policy.predict(test, task=task, backend=zoo_large)
    assert len(preds) == len(test) and all(p.answer in task.labels for p in preds)
    acc = sum(task.score(p.answer, ex) for p, ex in zip(preds, test, strict=True)) / len(test)
    assert acc >= 0.6  # label-restricted argmax on this model is far above chance
    again = tuner.fit(train, task=task, backend=zoo_large, dev=dev, context=TuneContext(seed=0))
    assert isinstance(again, SoftPromptPolicy)
    np.testing.assert_array_equal(again.soft_prompt, policy.soft_prompt)


# -- disclosures and the trace -----------------------------------------------------------------


def _fit_traced(box: _LinearBox, **options: Any) -> tuple[SoftPromptPolicy, TuneContext]:
    task = _Reviews()
    ctx = TuneContext(seed=0)
    tuner = BBT(
        intrinsic_dim=50, n_prompt_tokens=2, k_shot=4, budget=60, popsize=6, eval_every=12,
        **options,
    )  # fmt: skip
    policy = tuner.fit(
        task.examples("train"), task=task, backend=box, dev=task.examples("dev"), context=ctx
    )
    assert isinstance(policy, SoftPromptPolicy)
    return policy, ctx


def test_a_kept_zero_prompt_is_disclosed_as_no_change_and_the_losses_are_traced() -> None:
    """With no gain from the soft prompt and z = 0 as the incumbent, every candidate ties it
    on dev and z = 0 is returned: "no change", computed from the z returned. A box where the
    prompt helps returns a moved z and discloses nothing."""
    policy, ctx = _fit_traced(_LinearBox(gain=0.0), zero_incumbent=True)
    assert not np.any(policy.soft_prompt)
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "no-change",
            "returned its starting point z = 0 (zero soft prompt): no CMA-ES candidate of "
            f"{policy.meta['calls']} calls was picked on dev ({policy.meta['dev_checks']} dev "
            "checks)",
        )
    ]

    policy, ctx = _fit_traced(_LinearBox())
    assert np.any(policy.soft_prompt) and ctx.disclosures == []
    generations = [e for e in ctx.trace if e["event"] == "generation"]
    assert [g["calls"] for g in generations] == [6 * i for i in range(1, 11)]
    assert generations[-1]["loss_best"] < generations[0]["loss_best"]
    # the official checkpoints: no z = 0 check, one per 12 calls
    assert [e["calls"] for e in ctx.trace if e["event"] == "dev"] == [12, 24, 36, 48, 60]
