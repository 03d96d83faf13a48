from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.backends.zoo import resolve_model_dir
from benchmarks.tasks.base import get_task
from methods import BenchError, TuneContext, get_method, load_policy
from methods.contrastive_decoding import (
    ContrastiveDecoding,
    ContrastiveDecodingPolicy,
    li_scores,
    obrien_scores,
    plausibility_mask,
)
from methods.decoding import BLACK_BOX, LocalLM
from tests.methods.conftest import VocabBox

# Expert and amateur over four tokens. Token 2 has by far the largest contrast (0.04 vs
# 0.001) but is below the plausibility head (0.04 < 0.1 * 0.5).
EXPERT = torch.tensor([[0.5, 0.3, 0.04, 0.16]]).log()
AMATEUR = torch.tensor([[0.6, 0.1, 0.001, 0.299]]).log()


def test_plausibility_mask_keeps_the_alpha_head() -> None:
    assert plausibility_mask(EXPERT, 0.1).tolist() == [[True, True, False, True]]
    assert plausibility_mask(EXPERT, 0.5).tolist() == [[True, True, False, False]]
    # the cutoff is inclusive, and the argmax always stays
    edge = torch.tensor([[0.0, math.log(0.1), math.log(0.1) - 1e-4]])
    assert plausibility_mask(edge, 0.1).tolist() == [[True, True, False]]
    assert plausibility_mask(EXPERT, 1.0).tolist() == [[True, False, False, False]]


def test_li_scores_contrast_inside_the_head() -> None:
    scores = li_scores(EXPERT, AMATEUR, alpha=0.1, st_coef=1.0, tau=1.0)
    assert scores[0, 2] == -math.inf  # the highest contrast, excluded by the mask
    expected = [math.log(0.5 / 0.6), math.log(0.3 / 0.1), math.log(0.16 / 0.299)]
    assert scores[0, [0, 1, 3]].tolist() == pytest.approx(expected, abs=1e-5)
    assert int(scores.argmax()) == 1  # not the expert's argmax (0)
    # without the mask token 2 would win
    assert int(li_scores(EXPERT, AMATEUR, alpha=1e-9, st_coef=1.0, tau=1.0).argmax()) == 2
    # tau divides the amateur's log-probs (the official warper, not renormalised), lambda
    # weights them
    half = li_scores(EXPERT, AMATEUR, alpha=0.1, st_coef=0.5, tau=0.5)
    assert float(half[0, 0]) == pytest.approx(math.log(0.5) - 0.5 * math.log(0.6) / 0.5)
    # a token the amateur rules out (-inf) is never chosen
    ruled_out = AMATEUR.clone()
    ruled_out[0, 1] = -math.inf
    assert li_scores(EXPERT, ruled_out, alpha=0.1, st_coef=1.0, tau=1.0)[0, 1] == -math.inf


def test_obrien_scores_in_logit_space() -> None:
    z_e = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    z_a = torch.tensor([[3.0, -1.0, -9.0, 1.5]])
    scores = obrien_scores(z_e, z_a, alpha=0.1, beta=0.5)
    # (1+b) z_E - b z_A = [1.5, 2.0, 3.0, 0.0]; token 2 (z_E = -1 < 2 + log 0.1) masked
    assert scores.tolist() == [[1.5, 2.0, -math.inf, 0.0]]
    assert int(scores.argmax()) == 1
    # a constant per row (logits vs log-probs) changes neither mask nor choice
    shifted = obrien_scores(z_e.log_softmax(-1), z_a.log_softmax(-1) + 4, alpha=0.1, beta=0.5)
    assert torch.equal(torch.isfinite(shifted), torch.isfinite(scores))
    assert int(shifted.argmax()) == 1
    # beta = 0 is greedy decoding of the expert
    assert int(obrien_scores(z_e, z_a, alpha=0.1, beta=0.0).argmax()) == 0


def test_config_defaults_presets_and_plan() -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    train = task.examples("train")
    paper = ContrastiveDecoding.from_budget("paper")
    cfg = paper.config
    assert (cfg.variant, cfg.alpha, cfg.st_coef, cfg.amateur_temperature) == ("li", 0.1, 1.0, 0.5)
    assert paper.plan(task=task, train=train, dev=[]).eval_calls_per_example == 5 * 128
    light = ContrastiveDecoding.from_budget("light", max_new_tokens=30)
    plan = light.plan(task=task, train=train, dev=[])
    assert (plan.calls, plan.proposer_calls, plan.eval_calls_per_example) == (0, 0, 30)
    obrien = ContrastiveDecoding.from_budget("paper", variant="obrien")
    assert obrien.beams == 1 and obrien.config.beta == 0.5
    with pytest.raises(BenchError, match="unknown variant 'dola'; valid: li, obrien"):
        ContrastiveDecoding(variant="dola")
    with pytest.raises(BenchError, match="alpha must be in"):
        ContrastiveDecoding(alpha=0.0)
    with pytest.raises(BenchError, match="amateur_context"):
        ContrastiveDecoding(amateur_context="none")


def test_policy_saves_loads_and_refuses_other_vocabularies(small_dir: Path, tmp_path: Path) -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(small_dir).vocabulary()
    ctx = TuneContext(resolve_model=resolve_model_dir)
    with pytest.raises(BenchError, match="vocabulary differs"):
        ContrastiveDecoding().fit(
            [], task=task, backend=VocabBox([*vocab[:9], "??", *vocab[10:]]), context=ctx
        )
    tuner = ContrastiveDecoding.from_budget("paper")
    policy = tuner.fit([], task=task, backend=VocabBox(vocab), context=ctx)
    assert tuner.variant is None and ctx.disclosures == []
    assert isinstance(policy, ContrastiveDecodingPolicy)
    assert policy.beams() == (5, 1.0)
    assert policy.contexts() == {"amateur": "last_token"}
    assert Path(policy.amateur_dir) == small_dir.resolve()
    policy.save(tmp_path / "p")
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, ContrastiveDecodingPolicy)
    assert loaded.to_json() == policy.to_json()
    rows = {BLACK_BOX: EXPERT, "amateur": AMATEUR}
    assert torch.equal(
        loaded.formula()(rows), li_scores(EXPERT, AMATEUR, alpha=0.1, st_coef=1.0, tau=0.5)
    )
    data = json.loads((tmp_path / "p" / "policy.json").read_text())
    data["amateur_dir"] = str(tmp_path / "gone")
    (tmp_path / "p" / "policy.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match="is not a local model directory"):
        load_policy(tmp_path / "p")

    # O'Brien & Lewis: greedy, whole prompt; top-k logprobs only: labelled approximation
    tuner = ContrastiveDecoding(variant="obrien", top_logprobs=3)
    policy = tuner.fit(
        [], task=task, backend=VocabBox(vocab, ("generate", "logprobs")), context=ctx
    )
    assert tuner.variant == "top-k logprobs approximation (k=3)"
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "substitute",
            "decoded from the black box's top-3 logprobs, not its full next-token distribution "
            "(vocab-box serves no full distribution)",
        )
    ]
    assert isinstance(policy, ContrastiveDecodingPolicy)
    assert policy.beams() == (1, 1.0) and policy.contexts() == {"amateur": "full"}
    assert torch.equal(policy.formula()(rows), obrien_scores(EXPERT, AMATEUR, alpha=0.1, beta=0.5))


# --------------------------------------------------------------------------------------------
# Integration: zoo-large as the expert.
# --------------------------------------------------------------------------------------------


def _replay(
    box: Any, amateur: LocalLM, prompt: str, output: str, score: Any, steps: int, last: bool
) -> None:
    """Every chosen token of ``output`` is the argmax of ``score(expert, amateur)`` on the
    full prefix, recomputed without caches."""
    ids = amateur.encode(prompt)
    chosen = amateur.encode(prompt + output)[len(ids) :]
    assert amateur.decode(chosen) == output
    for k, token in enumerate(chosen[:steps]):
        expert = torch.from_numpy(
            np.asarray(box.next_token_logprobs([prompt + amateur.decode(chosen[:k])]))
        )
        context = (ids[-1:] if last else ids) + chosen[:k]
        scores = score(expert[:, : amateur.vocab_size], amateur.start([context]).logprobs)
        assert int(scores.argmax()) == token, f"step {k}"


def test_contrastive_decoding_light_on_zoo_arith(zoo_large: Any, tmp_path: Path) -> None:
    task = get_task("zoo-arith", n_train=8, n_dev=4, n_test=4)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    tuner = get_method("contrastive-decoding").from_budget("light", max_new_tokens=20)
    plan = tuner.plan(task=task, train=train, dev=dev)
    policy = tuner.fit(
        train,
        task=task,
        backend=zoo_large,
        dev=dev,
        context=TuneContext(resolve_model=resolve_model_dir),
    )
    assert isinstance(policy, ContrastiveDecodingPolicy)
    assert zoo_large.meter.calls == [] and plan.calls == 0  # nothing tuned, no calls
    zoo_large.meter.phase = "eval"
    preds = policy.predict(test, task=task, backend=zoo_large)
    calls = zoo_large.meter.calls
    steps = [p.extra["steps"] for p in preds]
    assert len(calls) == sum(steps) <= plan.eval_calls_per_example * len(test)
    assert {c.kind for c in calls} == {"next_token"}
    for p, s in zip(preds, steps, strict=True):
        assert p.extra["forward_passes"] == {BLACK_BOX: s, "amateur": s}
    prompt = task.render(test[0], instruction=task.instructions[0])
    _replay(
        zoo_large,
        policy.models["amateur"],
        prompt,
        preds[0].output,
        lambda e, a: li_scores(e, a, alpha=0.1, st_coef=1.0, tau=0.5),
        steps=6,
        last=True,
    )
    policy.save(tmp_path / "p")
    again = load_policy(tmp_path / "p").predict(test[:1], task=task, backend=zoo_large)
    assert again[0].output == preds[0].output


def test_obrien_and_beam_search_on_zoo_arith(zoo_large: Any) -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=2, n_test=2)
    test = task.examples("test")
    ctx = TuneContext(resolve_model=resolve_model_dir)
    obrien = ContrastiveDecoding(variant="obrien", max_new_tokens=12)
    policy = obrien.fit([], task=task, backend=zoo_large, context=ctx)
    assert isinstance(policy, ContrastiveDecodingPolicy)
    preds = policy.predict(test[:1], task=task, backend=zoo_large)
    _replay(
        zoo_large,
        policy.models["amateur"],
        task.render(test[0], instruction=task.instructions[0]),
        preds[0].output,
        lambda e, a: obrien_scores(e, a, alpha=0.1, beta=0.5),
        steps=4,
        last=False,
    )

    beam = ContrastiveDecoding(num_beams=2, max_new_tokens=8)
    plan = beam.plan(task=task, train=[], dev=test)
    policy = beam.fit([], task=task, backend=zoo_large, context=ctx)
    zoo_large.meter.calls.clear()
    preds = policy.predict(test, task=task, backend=zoo_large)
    calls = zoo_large.meter.calls
    passes = [p.extra["forward_passes"][BLACK_BOX] for p in preds]
    # each live beam of each step is one call; at most 2 beams x 8 steps per example
    assert len(calls) == sum(passes) <= plan.eval_calls_per_example * len(test) == 32
    assert all(
        p.extra["steps"] <= n < 2 * p.extra["steps"] for p, n in zip(preds, passes, strict=True)
    )
    assert all(p.extra["tokens"] <= 8 for p in preds)
