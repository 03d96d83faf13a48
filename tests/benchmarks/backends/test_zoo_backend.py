"""The zoo backend: starts the project's server on a free loopback port, reads its
capabilities, and reports a dead server at once instead of retrying into it."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from benchmarks.backends.base import GenerateRequest, NextTokenRequest, PartialBatchError
from benchmarks.backends.zoo import PLACEHOLDER_URL, ZooBackend
from benchmarks.engine import HFEngine
from benchmarks.errors import BackendUnavailable
from benchmarks.tiny import tiny_model_dir
from methods.registry import BenchError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


def test_serves_over_http_with_all_capabilities(model: Path) -> None:
    with ZooBackend(str(model)) as backend:
        backend.check_ready()
        # ready without a server: the first request that reaches the model starts it
        assert backend._handle is None and backend.base_url == PLACEHOLDER_URL
        assert backend.capabilities == {
            "generate",
            "logprobs",
            "score",
            "next_token_logits",
            "prompt_embeds",
        }
        assert backend.context_length == 256 and backend.prompt_lists
        (result,) = backend.generate_batch([GenerateRequest("Q: 1\nA:", max_tokens=3)])
        assert result.prompt_tokens == backend.count_tokens("Q: 1\nA:")
        assert backend._handle is not None and backend.base_url != PLACEHOLDER_URL
    with ZooBackend(str(model), grey_box=False) as text_only:
        text_only.check_ready()
        assert "next_token_logits" not in text_only.capabilities


@pytest.mark.parametrize("grey_box", [True, False])
def test_the_card_known_without_a_server_is_the_servers(model: Path, grey_box: bool) -> None:
    local = ZooBackend(str(model), grey_box=grey_box)
    local.check_ready()
    with ZooBackend(str(model), grey_box=grey_box) as asked:
        asked.start()
        asked.check_ready()  # started: reads the card over HTTP
        assert asked._handle is not None
        for field in ("capabilities", "context_length", "prompt_lists"):
            assert getattr(local, field) == getattr(asked, field)


def test_a_server_that_cannot_start_stops_the_run_with_its_reason(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    # Weights that read as safetensors (an empty header), a config no loader knows.
    (broken / "config.json").write_text('{"n_positions": 64, "model_type": "no-such-model"}')
    (broken / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")
    backend = ZooBackend(str(broken), timeout_s=1.0)
    backend.check_ready()
    with pytest.raises(BackendUnavailable, match="zoo backend: "):
        backend.start()


def test_weights_that_are_not_safetensors_are_bad_input_before_any_server(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"n_positions": 64}')
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(BenchError, match=r"model\.safetensors: not a valid safetensors") as caught:
        ZooBackend(str(broken), timeout_s=1.0)
    assert not isinstance(caught.value, BackendUnavailable)


def test_dead_server_is_reported_not_retried(model: Path) -> None:
    backend = ZooBackend(str(model), backoff_s=5.0, max_retries=6)  # retrying would take long
    try:
        backend.check_ready()
        backend.start()
        os.kill(backend._handle.pid, signal.SIGKILL)
        backend._handle.process.wait(10)
        with pytest.raises(PartialBatchError, match=r"exited with code -9.*--resume"):
            backend.generate_batch([GenerateRequest("Q: 1\nA:", max_tokens=3)])
    finally:
        backend.close()


@pytest.mark.parametrize("name", ["tiny", "zoo-large"])
def test_token_counts_match_the_servers_tokenizer(model: Path, name: str) -> None:
    """Counted with the Rust tokenizer alone, as the server's transformers tokenizer does."""
    from transformers import AutoTokenizer

    backend = ZooBackend(str(model) if name == "tiny" else name)
    wrapper = AutoTokenizer.from_pretrained(backend.model_dir, local_files_only=True)
    texts = ["Q: 12 + 7\nA:", "  two  spaces, ünïcode and 1234567 ####", "", "x" * 900]
    for text in texts:
        assert backend.count_tokens(text) == len(wrapper(text, verbose=False)["input_ids"])


def test_the_loopback_server_gets_a_long_timeout_unless_one_is_given(model: Path) -> None:
    assert ZooBackend(str(model)).timeout_s == 300.0
    assert ZooBackend(str(model), timeout_s=5.0).timeout_s == 5.0


# -- prompt formats -----------------------------------------------------------------------

#: a chat template that marks every turn with a special token.
TEMPLATE = (
    "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def test_prompt_format_picks_the_api_and_the_identity(model: Path) -> None:
    raw = ZooBackend(str(model))
    assert (raw.prompt_format, raw.api) == ("raw", "completions")  # the zoo's default
    chat = ZooBackend(str(model), prompt_format="chat", system_prompt="Be brief.")
    assert (chat.prompt_format, chat.api) == ("chat", "chat")
    assert ZooBackend(str(model), api="chat").prompt_format == "chat"  # --api still works
    assert len({str(b.identity()) for b in (raw, chat, ZooBackend(str(model), api="chat"))}) == 3
    with pytest.raises(BenchError, match="zoo backend: --api completions contradicts"):
        ZooBackend(str(model), api="completions", prompt_format="chat")


def test_grey_box_calls_under_chat_see_the_prompt_generation_sees(
    tmp_path: Path, model: Path
) -> None:
    chat_model = tmp_path / "tiny-chat"
    shutil.copytree(model, chat_model)
    config = json.loads((chat_model / "tokenizer_config.json").read_text())
    config["chat_template"] = TEMPLATE
    (chat_model / "tokenizer_config.json").write_text(json.dumps(config))
    engine = HFEngine.load(chat_model, device="cpu")
    ids = engine.chat_ids(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q: 1\nA:"}]
    )
    with ZooBackend(str(chat_model), prompt_format="chat", system_prompt="Be brief.") as chat:
        chat.check_ready()
        (generated,) = chat.generate_batch([GenerateRequest("Q: 1\nA:", max_tokens=3)])
        (row,) = chat.next_token_batch([NextTokenRequest("Q: 1\nA:")])
    assert generated.prompt_tokens == len(ids)  # the chat API, templated by the server
    assert row.prompt_tokens == len(ids)  # and so is the distribution's prompt
    np.testing.assert_allclose(row.value, engine.next_token_logprobs([ids])[0], atol=1e-5)
    assert np.abs(row.value - engine.next_token_logprobs(["Q: 1\nA:"])[0]).max() > 1e-3
