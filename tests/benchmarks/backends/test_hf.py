"""The ``hf`` backend on the tiny model."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.backends import GenerateRequest, NextTokenRequest, ScoreRequest, make_backend
from benchmarks.backends.hf import HFBackend
from benchmarks.tiny import build_tiny_model, tiny_model_dir, torch_threads
from methods.base import CAPABILITIES, Completion, ScoredText
from methods.registry import BenchError


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    made = make_backend("hf", model=str(tiny_model_dir()), device="cpu")
    assert isinstance(made, HFBackend)
    return made


def test_capabilities_and_identity(backend: HFBackend) -> None:
    assert backend.capabilities == frozenset(CAPABILITIES)
    identity = backend.identity()
    assert identity["backend"] == "hf" and identity["model"] == tiny_model_dir().name
    assert len(identity["weights"]) == 16
    assert backend.count_tokens("Q: 12 + 7") == len(
        backend.engine.tokenizer("Q: 12 + 7")["input_ids"]
    )
    dim, _, std = backend.embedding_stats()
    assert dim == 64 and std > 0
    assert len(backend.vocabulary()) == backend.engine.vocab_size


def test_generate_batch_groups_and_counts(backend: HFBackend) -> None:
    requests = [
        GenerateRequest("Q: 1 + 1? A:", n=2, max_tokens=6, logprobs=2),
        GenerateRequest("yes", max_tokens=4),
        GenerateRequest("no", n=2, max_tokens=6, logprobs=2),
        GenerateRequest("no", n=3, temperature=1.0, max_tokens=3, seed=1),
    ]
    results = backend.generate_batch(requests)
    assert [len(r.value) for r in results] == [2, 1, 2, 3]
    for request, result in zip(requests, results, strict=True):
        assert all(isinstance(c, Completion) for c in result.value)
        assert result.prompt_tokens == backend.count_tokens(request.prompt)
        assert result.completion_tokens <= request.n * request.max_tokens
        assert result.completion_tokens >= sum(len(c.tokens or ()) for c in result.value)
        assert result.latency_s > 0
        has_logprobs = request.logprobs is not None
        assert all((c.token_logprobs is not None) == has_logprobs for c in result.value)
    # Grouping does not change answers: "no" alone gives the same greedy text.
    alone = backend.generate_batch([requests[2]])[0]
    assert [c.text for c in alone.value] == [c.text for c in results[2].value]


def test_score_and_next_token(backend: HFBackend) -> None:
    scored = backend.score_batch([ScoreRequest("Q: Is it? A:", " yes"), ScoreRequest("x", " no")])
    assert isinstance(scored[0].value, ScoredText) and scored[0].value.tokens == (" yes",)
    assert scored[0].prompt_tokens == backend.count_tokens("Q: Is it? A: yes")
    assert scored[0].completion_tokens == 0 and scored[0].value.total < 0
    dim = backend.embedding_stats()[0]
    soft = np.full((2, dim), 0.1, np.float32)
    results = backend.next_token_batch(
        [NextTokenRequest("a"), NextTokenRequest("b", soft), NextTokenRequest("a", soft.copy())]
    )
    rows = [r.value for r in results]
    assert all(r.shape == (backend.engine.vocab_size,) for r in rows)
    np.testing.assert_allclose(rows[0], backend.engine.next_token_logprobs(["a"])[0], atol=1e-5)
    assert np.abs(rows[2] - rows[0]).max() > 1e-3
    assert results[1].prompt_tokens == backend.count_tokens("b") + 2
    with pytest.raises(BenchError, match="shape"):
        backend.next_token_batch([NextTokenRequest("a", np.zeros((1, dim + 1), np.float32))])


def test_identity_follows_the_weights(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "m", seed=0)
    before = HFBackend(str(first)).identity()
    assert HFBackend(str(first)).identity() == before
    copy = tmp_path / "copy" / "m"
    shutil.copytree(first, copy)
    assert HFBackend(str(copy)).identity() == before  # same name, same weights
    build_tiny_model(copy, seed=1)
    after = HFBackend(str(copy)).identity()
    assert after["model"] == before["model"] and after["weights"] != before["weights"]


def test_bad_paths_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match=r"not a directory.*save_pretrained"):
        HFBackend(str(tmp_path / "missing"))
    with pytest.raises(BenchError, match=r"config\.json"):
        HFBackend(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BenchError, match="safetensors"):
        make_backend("hf", model=str(tmp_path))


# -- prompt formats -----------------------------------------------------------------------

#: a chat template that marks every turn with a special token.
TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with `TEMPLATE` in its tokenizer config."""
    path = tmp_path_factory.mktemp("chat") / "tiny-chat"
    shutil.copytree(tiny_model_dir(), path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return path


def test_chat_format_templates_every_capability(chat_model: Path) -> None:
    chat = make_backend(
        "hf", model=str(chat_model), device="cpu", prompt_format="chat", system_prompt="Be brief."
    )
    assert isinstance(chat, HFBackend)
    chat.check_ready()
    engine = chat.engine
    rendered = "<|endoftext|>system: Be brief.\n<|endoftext|>user: Q: 2 + 3\nassistant:"
    ids = engine.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(engine.tokenizer.eos_token_id) == 2  # the template's tokens, once each
    assert chat.count_tokens("Q: 2 + 3") == len(ids)

    [gen] = chat.generate_batch([GenerateRequest("Q: 2 + 3", max_tokens=4)])
    assert gen.value[0].text == engine.generate([ids], max_tokens=4)[0].samples[0].text
    assert gen.prompt_tokens == len(ids)

    [scored] = chat.score_batch([ScoreRequest("Q: 2 + 3", " 5")])
    [expected] = engine.score([ids], [" 5"])  # the continuation follows the assistant cue
    assert scored.value.token_logprobs == pytest.approx(list(expected.token_logprobs))
    assert scored.prompt_tokens == len(ids) + len(expected.tokens)  # billed: the whole text

    [row] = chat.next_token_batch([NextTokenRequest("Q: 2 + 3")])
    np.testing.assert_allclose(row.value, engine.next_token_logprobs([ids])[0], atol=1e-6)
    assert row.prompt_tokens == len(ids)

    raw = HFBackend(str(chat_model), device="cpu")
    assert raw.prompt_format == "raw"  # the default, for hf
    assert raw.count_tokens("Q: 2 + 3") < len(ids)
    identities = {json.dumps(b.identity(), sort_keys=True) for b in (raw, chat)}
    identities.add(json.dumps(HFBackend(str(chat_model), prompt_format="chat").identity()))
    assert len(identities) == 3  # format and system prompt are part of the cache key


def test_chat_without_a_template_is_refused(backend: HFBackend) -> None:
    chat = HFBackend(str(tiny_model_dir()), device="cpu", prompt_format="chat")
    message = f"hf backend: model {chat.model} has no chat template; use --prompt-format raw"
    with pytest.raises(BenchError, match=re.escape(message)):
        chat.check_ready()
    with pytest.raises(BenchError, match="no chat template"):
        chat.generate_batch([GenerateRequest("Q: 1 + 1", max_tokens=2)])


def test_bad_prompt_format_and_raw_system_prompt_are_refused() -> None:
    with pytest.raises(BenchError, match="unknown prompt format 'chatml'; valid: raw, chat"):
        HFBackend(str(tiny_model_dir()), prompt_format="chatml")
    with pytest.raises(BenchError, match="--system-prompt needs --prompt-format chat"):
        HFBackend(str(tiny_model_dir()), system_prompt="Be brief.")
