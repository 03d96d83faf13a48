"""The zoo backend: starts the project's server on a free loopback port, reads its
capabilities, and reports a dead server at once instead of retrying into it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from benchmarks.backends.base import GenerateRequest, PartialBatchError
from benchmarks.backends.zoo import PLACEHOLDER_URL, ZooBackend
from benchmarks.errors import BackendUnavailable
from benchmarks.tiny import tiny_model_dir


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
    (broken / "config.json").write_text('{"n_positions": 64}')
    (broken / "model.safetensors").write_bytes(b"not weights")
    backend = ZooBackend(str(broken), timeout_s=1.0)
    backend.check_ready()
    with pytest.raises(BackendUnavailable, match="zoo backend: "):
        backend.start()


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
