"""HFEngine on the tiny model: decoding, sampling, stops, logprobs, scoring, distributions."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from benchmarks.engine import HFEngine
from benchmarks.tiny import tiny_model_dir, torch_threads

PROMPTS = [
    "Q: Tom has 3 apples and buys 4 more. How many apples? A:",
    "yes",
    "Review: the movie was great!\nSentiment:",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.load(tiny_model_dir(), device="cpu")


def greedy(engine: HFEngine, prompt: str, **options: object) -> str:
    return engine.generate([prompt], max_tokens=24, **options)[0].samples[0].text  # type: ignore[arg-type]


def test_greedy_is_deterministic_and_n_copies(engine: HFEngine) -> None:
    first = engine.generate(PROMPTS, max_tokens=12)
    again = engine.generate(PROMPTS, n=3, max_tokens=12)
    for prompt, one, three in zip(PROMPTS, first, again, strict=True):
        assert [s.text for s in three.samples] == [one.samples[0].text] * 3
        assert three.completion_tokens == 3 * one.completion_tokens
        assert three.prompt_tokens == one.prompt_tokens == engine.count_tokens(prompt)
        assert one.prompt_tokens == len(engine.tokenizer(prompt)["input_ids"])


def test_batch_equals_single_with_left_padding(engine: HFEngine) -> None:
    batch = engine.generate(PROMPTS, max_tokens=16, logprobs=1)
    for prompt, gen in zip(PROMPTS, batch, strict=True):
        alone = engine.generate([prompt], max_tokens=16, logprobs=1)[0].samples[0]
        assert gen.samples[0].token_ids == alone.token_ids
        np.testing.assert_allclose(gen.samples[0].token_logprobs, alone.token_logprobs, atol=1e-4)


def test_sampling_n_and_seed(engine: HFEngine) -> None:
    options = {"temperature": 1.0, "max_tokens": 10}
    four = engine.generate(PROMPTS[:1], n=4, seed=7, **options)[0].samples
    assert len(four) == 4 and len({s.text for s in four}) > 1
    assert [s.text for s in engine.generate(PROMPTS[:1], n=4, seed=7, **options)[0].samples] == [
        s.text for s in four
    ]
    # Sample j depends on (seed, j) only: not on n, nor on the batch it ran in.
    two = engine.generate(PROMPTS, n=2, seed=7, **options)[0].samples
    assert [s.text for s in two] == [s.text for s in four[:2]]
    other = engine.generate(PROMPTS[:1], n=4, seed=8, **options)[0].samples
    assert [s.text for s in other] != [s.text for s in four]
    unseeded = engine.generate([PROMPTS[0]] * 2, n=2, **options)
    assert unseeded[0].samples[0].text != unseeded[1].samples[0].text


def test_top_p_keeps_the_top_token(engine: HFEngine) -> None:
    tiny_p = engine.generate(PROMPTS, n=3, temperature=1.0, top_p=1e-6, max_tokens=8, seed=1)
    plain = engine.generate(PROMPTS, max_tokens=8)
    for sampled, greedy_gen in zip(tiny_p, plain, strict=True):
        assert {s.text for s in sampled.samples} == {greedy_gen.samples[0].text}


def test_stop_sequences_cut_the_text(engine: HFEngine) -> None:
    full = engine.generate([PROMPTS[0]], max_tokens=24)[0].samples[0]
    assert len(full.text) >= 12 and full.finish_reason == "length"
    stop = full.text[6:9]
    cut = engine.generate([PROMPTS[0]], max_tokens=24, stop=[stop], logprobs=0)[0]
    sample = cut.samples[0]
    assert sample.text == full.text[: full.text.index(stop)]
    assert sample.finish_reason == "stop"
    assert engine.decode(sample.token_ids).startswith(sample.text)
    assert len(sample.tokens) == len(sample.token_logprobs) == len(sample.top_logprobs or ())
    assert cut.completion_tokens >= len(sample.token_ids)  # the stop's tokens are billed
    # Of several stops the earliest wins; a stop at the very start gives empty text.
    later = full.text[10:12]
    both = engine.generate([PROMPTS[0]], max_tokens=24, stop=[later, stop])[0].samples[0]
    assert both.text == full.text[: min(full.text.index(stop), full.text.index(later))]
    first = engine.generate([PROMPTS[0]], max_tokens=24, stop=full.text[:1])[0].samples[0]
    assert first.text == "" and first.finish_reason == "stop"


def test_max_tokens_ends_with_length(engine: HFEngine) -> None:
    gen = engine.generate(PROMPTS[:1], max_tokens=5, n=2)[0]
    for sample in gen.samples:
        assert sample.finish_reason == "length"
        assert len(sample.token_ids) == 5 and sample.billed_tokens == 5
    assert gen.completion_tokens == 10
    empty = engine.generate(PROMPTS[:1], max_tokens=0, logprobs=2)[0]
    assert empty.samples[0].text == "" and empty.samples[0].finish_reason == "length"
    assert empty.completion_tokens == 0 and empty.prompt_tokens > 0


def test_logprobs_agree_with_score(engine: HFEngine) -> None:
    gen = engine.generate(PROMPTS[:2], max_tokens=10, logprobs=3)
    scored = engine.score(PROMPTS[:2], [g.samples[0].token_ids for g in gen])
    for g, s in zip(gen, scored, strict=True):
        sample = g.samples[0]
        assert s.tokens == sample.tokens
        np.testing.assert_allclose(s.token_logprobs, sample.token_logprobs, atol=1e-4)
        assert sample.top_logprobs is not None
        for token, lp, top in zip(
            sample.tokens, sample.token_logprobs, sample.top_logprobs, strict=True
        ):
            assert len(top) == 3 and max(top.values()) == pytest.approx(lp, abs=1e-5)
            assert top.get(token) == pytest.approx(lp, abs=1e-5)  # greedy picks the top token
    # Text continuations are tokenized on their own, so the boundary is exact.
    text = engine.score(["Q: Is the sky blue? A:"], [" yes"])[0]
    assert text.tokens == (" yes",) and text.prompt_tokens == engine.count_tokens(
        "Q: Is the sky blue? A: yes"
    )
    assert all(lp < 0 for lp in text.token_logprobs)
    assert engine.score(["abc"], [""])[0].tokens == ()


def test_sampled_logprobs_are_untempered(engine: HFEngine) -> None:
    gen = engine.generate(PROMPTS[:1], n=2, temperature=0.5, max_tokens=6, seed=3, logprobs=0)[0]
    for sample in gen.samples:
        scored = engine.score(PROMPTS[:1], [sample.token_ids])[0]
        np.testing.assert_allclose(scored.token_logprobs, sample.token_logprobs, atol=1e-4)


def test_prompt_logprobs_echo(engine: HFEngine) -> None:
    echoed = engine.prompt_logprobs(["Q: Is it? A: yes"], top_k=2)[0]
    assert echoed.token_logprobs[0] is None and echoed.top_logprobs is not None
    assert echoed.top_logprobs[0] is None and all(
        len(t or {}) == 2 for t in echoed.top_logprobs[1:]
    )
    ids = list(echoed.token_ids)
    rest = engine.score([ids[:1]], [ids[1:]])[0]
    np.testing.assert_allclose(echoed.token_logprobs[1:], rest.token_logprobs, atol=1e-4)


def test_next_token_logprobs(engine: HFEngine) -> None:
    dist = engine.next_token_logprobs(PROMPTS)
    assert dist.shape == (3, engine.vocab_size) and dist.dtype == np.float32
    np.testing.assert_allclose(np.exp(dist).sum(-1), 1.0, atol=1e-4)
    gens = engine.generate(PROMPTS, max_tokens=1, logprobs=1)
    for row, gen in zip(dist, gens, strict=True):
        sample = gen.samples[0]
        if sample.token_ids:  # not EOS
            assert int(row.argmax()) == sample.token_ids[0]
            assert row.max() == pytest.approx(sample.token_logprobs[0], abs=1e-4)
    assert len(engine.vocabulary()) == engine.vocab_size


def test_soft_prompt(engine: HFEngine) -> None:
    dim, _, std = engine.embedding_stats()
    plain = engine.next_token_logprobs(PROMPTS)
    empty = engine.next_token_logprobs(PROMPTS, soft_prompt=np.zeros((0, dim), np.float32))
    np.testing.assert_allclose(empty, plain, atol=1e-5)
    soft = np.random.default_rng(0).normal(0, std, (4, dim)).astype(np.float32)
    shifted = engine.next_token_logprobs(PROMPTS, soft_prompt=soft)
    assert np.abs(shifted - plain).max() > 1e-3
    np.testing.assert_allclose(np.exp(shifted).sum(-1), 1.0, atol=1e-4)
    # Batched and alone agree with a soft prompt too (left padding before the vectors).
    alone = engine.next_token_logprobs(PROMPTS[1:2], soft_prompt=soft)
    np.testing.assert_allclose(alone[0], shifted[1], atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        engine.next_token_logprobs(PROMPTS, soft_prompt=np.zeros((2, dim + 1), np.float32))


def test_long_prompts_are_truncated_from_the_left(engine: HFEngine) -> None:
    long = "one two three " * 200
    gen = engine.generate([long, ""], max_tokens=8)
    assert gen[0].prompt_tokens == engine.context_length - 8
    assert gen[1].prompt_tokens == 1  # an empty prompt is the start token
    assert engine.next_token_logprobs([long]).shape == (1, engine.vocab_size)
    assert len(engine.score([long], [" yes"])[0].tokens) == 1


def test_rejects_bad_values(engine: HFEngine) -> None:
    for options in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_tokens": -1}):
        with pytest.raises(ValueError):
            engine.generate(PROMPTS[:1], **options)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        engine.score(["a", "b"], ["c"])
