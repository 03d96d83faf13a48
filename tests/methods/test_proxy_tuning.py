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
from methods.corrector import IGNORE_INDEX, sft_batch
from methods.decoding import BLACK_BOX, LocalLM
from methods.proxy_tuning import (
    EXPERT_DIR,
    ProxyTuning,
    ProxyTuningPolicy,
    finetune,
    proxy_scores,
    sequence_cut,
    training_sequence,
)
from tests.methods.conftest import VocabBox


def test_proxy_formula_is_the_product_of_experts() -> None:
    base = torch.tensor([[0.5, 0.3, 0.2]]).log()
    expert = torch.tensor([[0.1, 0.2, 0.7]]).log()
    anti = torch.tensor([[0.3, 0.3, 0.4]]).log()
    scores = proxy_scores(base, expert, anti, alpha=1.0)
    # p_M * p+ / p-: 0.5*0.1/0.3, 0.3*0.2/0.3, 0.2*0.7/0.4 -> token 2, where the base says 0
    poe = torch.tensor([0.5 * 0.1 / 0.3, 0.3 * 0.2 / 0.3, 0.2 * 0.7 / 0.4])
    assert torch.allclose(scores.softmax(-1)[0], poe / poe.sum())
    assert int(scores.argmax()) == 2
    assert int(proxy_scores(base, expert, anti, alpha=0.0).argmax()) == 0
    # raw logits give the same distribution as log-probs (a row constant per model)
    shifted = proxy_scores(base + 3.0, expert - 1.5, anti + 7.0, alpha=1.0)
    assert torch.allclose(shifted.softmax(-1), scores.softmax(-1))
    # alpha scales the difference: (p+/p-)^2 at alpha 2
    two = proxy_scores(base, expert, anti, alpha=2.0)
    assert two[0, 2] - two[0, 0] == pytest.approx(
        math.log(0.2 / 0.5) + 2 * (math.log(0.7 / 0.4) - math.log(0.1 / 0.3)), abs=1e-5
    )


def test_training_sequences_mask_the_prompt(small_dir: Path) -> None:
    lm = LocalLM.load(small_dir)
    task = get_task("zoo-arith", n_train=2, n_dev=1, n_test=1)
    ex = task.examples("train")[0]
    prompt = task.render(ex, instruction=task.instructions[0])
    ids, n_prompt = training_sequence(lm, prompt, task, ex)
    assert ids[:n_prompt] == lm.encode(prompt)
    assert ids[-1] == lm.eos_id
    assert lm.decode(ids[n_prompt:]) == " " + task.render_target(ex)
    _, _, labels = sft_batch([(ids, n_prompt), (ids[:5], 3)], lm.eos_id, "cpu")
    assert (labels[0, :n_prompt] == IGNORE_INDEX).all()
    assert labels[0, n_prompt:].tolist() == ids[n_prompt:]
    assert labels[1].tolist() == [IGNORE_INDEX] * 3 + ids[3:5] + [IGNORE_INDEX] * (len(ids) - 5)
    assert not sequence_cut(lm, prompt, task, ex)
    # a long prompt loses its start, never the completion
    lm.context_length = 40
    cut, n_cut = training_sequence(lm, prompt, task, ex)
    assert len(cut) == 40 and cut[n_cut:] == ids[n_prompt:][: 40 - n_cut]
    assert cut[:n_cut] == ids[:n_prompt][-n_cut:]
    assert sequence_cut(lm, prompt, task, ex)  # what the expert's "truncated" count adds up
    lm.context_length = len(ids)
    assert not sequence_cut(lm, prompt, task, ex)  # exactly full: nothing cut


def _mean_loss(lm: LocalLM, seqs: list[tuple[list[int], int]]) -> float:
    ids, mask, labels = sft_batch(seqs, lm.eos_id, "cpu")
    with torch.no_grad():
        logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return float(
        torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
    )


def test_finetune_lowers_the_loss_and_is_seeded(small_dir: Path) -> None:
    task = get_task("zoo-sentiment", n_train=6, n_dev=1, n_test=1)

    def run(seed: int, epochs: int) -> tuple[LocalLM, list[tuple[list[int], int]]]:
        lm = LocalLM.load(small_dir)
        seqs = [
            training_sequence(lm, task.render(ex, instruction=task.instructions[0]), task, ex)
            for ex in task.examples("train")
        ]
        finetune(
            lm, seqs, learning_rate=1e-3, epochs=epochs, batch_size=2, warmup_ratio=0.0, seed=seed
        )
        return lm, seqs

    untuned = LocalLM.load(small_dir)
    tuned, seqs = run(0, 4)
    assert _mean_loss(tuned, seqs) < _mean_loss(untuned, seqs) - 0.05
    first, again, other = run(0, 1)[0], run(0, 1)[0], run(1, 1)[0]
    weights = first.model.state_dict()
    assert all(torch.equal(v, weights[k]) for k, v in again.model.state_dict().items())
    assert not all(torch.equal(v, weights[k]) for k, v in other.model.state_dict().items())


def test_plan_makes_no_tuning_calls() -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    train = task.examples("train")
    plan = ProxyTuning.from_budget("light").plan(task=task, train=train, dev=[])
    assert plan.calls == 0 and plan.proposer_calls == 0
    assert plan.eval_calls_per_example == task.max_tokens
    capped = ProxyTuning.from_budget("light", max_new_tokens=20).plan(
        task=task, train=train, dev=[]
    )
    assert capped.eval_calls_per_example == 20
    assert ProxyTuning.from_budget("paper").config.learning_rate == 2e-5
    assert ProxyTuning.from_budget("paper").config.alpha == 1.0


def test_fit_refuses_other_vocabularies_before_training(small_dir: Path) -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(small_dir).vocabulary()
    events: list[str] = []
    ctx = TuneContext(resolve_model=resolve_model_dir, on_event=lambda e, f: events.append(e))
    other = [*vocab[:5], "zz", *vocab[6:]]
    with pytest.raises(BenchError, match="vocabulary differs"):
        ProxyTuning.from_budget("light").fit(
            task.examples("train"), task=task, backend=VocabBox(other), context=ctx
        )
    assert events == []  # refused before fine-tuning
    with pytest.raises(BenchError, match="neither next-token distributions nor top-k"):
        ProxyTuning.from_budget("light").fit(
            task.examples("train"),
            task=task,
            backend=VocabBox(vocab, ("generate",)),
            context=ctx,
        )


def test_policy_saves_and_loads(small_dir: Path, tmp_path: Path) -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(small_dir).vocabulary()
    events: list[tuple[str, dict[str, Any]]] = []
    ctx = TuneContext(
        seed=3, resolve_model=resolve_model_dir, on_event=lambda e, f: events.append((e, dict(f)))
    )
    tuner = ProxyTuning.from_budget("light", epochs=1, alpha=0.7)
    # a backend with top-k logprobs only: the labelled approximation
    policy = tuner.fit(
        task.examples("train"),
        task=task,
        backend=VocabBox(vocab, ("generate", "logprobs")),
        context=ctx,
    )
    assert tuner.variant == "top-k logprobs approximation (k=5)"
    assert [(d.kind, d.detail) for d in ctx.disclosures] == [
        (
            "substitute",
            "decoded from the black box's top-5 logprobs, not its full next-token distribution "
            "(vocab-box serves no full distribution)",
        )
    ]
    assert [e for e, _ in events] == ["proxy_tuning_epoch", "proxy_tuning_expert"]
    # the trace keeps the epoch losses the training returned (a cache hit sends no epochs)
    assert [round(v, 4) for v in events[1][1]["losses"]] == [events[0][1]["loss"]]
    assert isinstance(policy, ProxyTuningPolicy)
    assert policy.anti_expert == "zoo-small"
    assert Path(policy.anti_expert_dir) == small_dir.resolve()
    policy.save(tmp_path / "p")
    assert (tmp_path / "p" / EXPERT_DIR / "model.safetensors").exists()
    data = json.loads((tmp_path / "p" / "policy.json").read_text())
    assert data["kind"] == "proxy-tuning" and data["alpha"] == 0.7
    assert data["instruction"] == task.instructions[0]
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, ProxyTuningPolicy)
    assert loaded.to_json() == policy.to_json()
    trained = policy.models["expert"].model.state_dict()
    for key, value in loaded.models["expert"].model.state_dict().items():
        assert torch.equal(value.cpu(), trained[key].cpu())
    untuned = LocalLM.load(small_dir).model.state_dict()
    assert not all(torch.equal(untuned[k], trained[k].cpu()) for k in untuned)
    for key, value in loaded.models["anti_expert"].model.state_dict().items():
        assert torch.equal(value.cpu(), untuned[key])
    # the formula is the method's, with the saved alpha
    rows = {
        BLACK_BOX: torch.zeros(1, 3),
        "expert": torch.tensor([[0.0, 1.0, 0.0]]),
        "anti_expert": torch.zeros(1, 3),
    }
    assert loaded.formula()(rows).tolist() == [[0.0, pytest.approx(0.7), 0.0]]
    # a changed anti-expert is refused, in one line
    data["anti_expert_digest"] = "0" * 16
    (tmp_path / "p" / "policy.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match="has changed since the policy was tuned"):
        load_policy(tmp_path / "p")


def test_an_off_the_shelf_expert_is_recorded_not_trained(small_dir: Path, tmp_path: Path) -> None:
    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(small_dir).vocabulary()
    events: list[str] = []
    ctx = TuneContext(resolve_model=resolve_model_dir, on_event=lambda e, f: events.append(e))
    policy = ProxyTuning(expert=str(small_dir)).fit(
        [], task=task, backend=VocabBox(vocab), context=ctx
    )
    assert events == []  # nothing fine-tuned
    assert isinstance(policy, ProxyTuningPolicy) and policy.expert_dir == str(small_dir.resolve())
    policy.save(tmp_path / "p")
    assert not (tmp_path / "p" / EXPERT_DIR).exists()
    loaded = load_policy(tmp_path / "p")
    assert isinstance(loaded, ProxyTuningPolicy) and loaded.to_json() == policy.to_json()


# --------------------------------------------------------------------------------------------
# Integration: zoo-large as the black box.
# --------------------------------------------------------------------------------------------


def test_proxy_tuning_light_on_zoo_arith(zoo_large: Any, small_dir: Path, tmp_path: Path) -> None:
    task = get_task("zoo-arith", n_train=16, n_dev=4, n_test=4)
    train, dev, test = task.examples("train"), task.examples("dev"), task.examples("test")
    tuner = get_method("proxy-tuning").from_budget(
        "light", max_new_tokens=20, max_train_examples=16, epochs=2
    )
    plan = tuner.plan(task=task, train=train, dev=dev)
    ctx = TuneContext(seed=0, resolve_model=resolve_model_dir)
    policy = tuner.fit(train, task=task, backend=zoo_large, dev=dev, context=ctx)
    assert isinstance(policy, ProxyTuningPolicy)
    assert tuner.variant is None  # the zoo serves full distributions
    assert zoo_large.meter.calls == [] and plan.calls == 0  # no tuning calls

    zoo_large.meter.phase = "eval"
    preds = policy.predict(test, task=task, backend=zoo_large)
    calls = zoo_large.meter.calls
    assert len(preds) == len(test)
    steps = [p.extra["steps"] for p in preds]
    # one black-box call per decoding step of each example, within the plan's bound
    assert len(calls) == sum(steps) <= plan.eval_calls_per_example * len(test)
    assert {c.kind for c in calls} == {"next_token"} and {c.phase for c in calls} == {"eval"}
    for p, s in zip(preds, steps, strict=True):
        assert p.extra["forward_passes"] == {BLACK_BOX: s, "expert": s, "anti_expert": s}
        assert 1 <= s <= 20 and p.extra["tokens"] <= s

    # Replay the first answer without KV caches: every chosen token is the argmax of
    # z_M + (z_expert - z_anti) on the full prefix.
    prompt = task.render(test[0], instruction=task.instructions[0])
    expert, anti = policy.models["expert"], policy.models["anti_expert"]
    ids = expert.encode(prompt)
    chosen = expert.encode(prompt + preds[0].output)[len(ids) :]
    assert expert.decode(chosen) == preds[0].output
    for k, token in enumerate(chosen[:6]):
        text = prompt + expert.decode(chosen[:k])
        bb = torch.from_numpy(np.asarray(zoo_large.next_token_logprobs([text])))
        context = ids + chosen[:k]
        z = proxy_scores(
            bb[:, : expert.vocab_size],
            expert.start([context]).logprobs,
            anti.start([context]).logprobs,
            alpha=1.0,
        )
        assert int(z.argmax()) == token, f"step {k}"

    # saved and loaded, the policy answers the same (greedy: deterministic)
    policy.save(tmp_path / "p")
    again = load_policy(tmp_path / "p").predict(test[:2], task=task, backend=zoo_large)
    assert [p.output for p in again] == [p.output for p in preds[:2]]


def test_expert_sequences_cut_to_the_window_are_disclosed(
    small_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """zoo-arith's training sequences fit zoo-small's 192 tokens; in a 40-token expert all
    four are cut, and the count is disclosed."""
    import methods.proxy_tuning as proxy

    task = get_task("zoo-arith", n_train=4, n_dev=1, n_test=1)
    vocab = LocalLM.load(small_dir).vocabulary()
    told = []
    load = LocalLM.load
    for window in (None, 40):

        def short(path: Path, *, window: int | None = window, **kw: Any) -> LocalLM:
            lm = load(path, **kw)
            lm.context_length = window or lm.context_length
            return lm

        monkeypatch.setattr(proxy.LocalLM, "load", short)
        ctx = TuneContext(seed=3, resolve_model=resolve_model_dir)
        ProxyTuning.from_budget("light", epochs=1).fit(
            task.examples("train"), task=task, backend=VocabBox(vocab), context=ctx
        )
        monkeypatch.undo()
        told.append([(d.kind, d.detail) for d in ctx.disclosures])
    assert told == [
        [],
        [
            (
                "truncated",
                "4 of 4 expert training sequences cut to the 40-token window (the prompt's "
                "start first)",
            )
        ],
    ]
