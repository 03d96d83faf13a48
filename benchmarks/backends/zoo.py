"""The embedded default: a model of the project's zoo (or any local model directory), served
by the project's own OpenAI-compatible server on a free loopback port and reached through the
same `openai` client a commercial API would be.

The server runs in a child process started by the first request the response cache cannot
answer (a replay from a warm cache never starts it) and stopped when the run ends; if it
dies, the client's retries run out and the run stops with the server's last words.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from benchmarks.backends.base import register_backend
from benchmarks.backends.hf import weights_digest
from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.errors import BackendUnavailable
from methods.registry import BenchError


def resolve_model_dir(model: str) -> Path:
    """A model directory, a zoo model name (``zoo-large``) or a named real model (pulled on
    first use), checked against its manifest (`benchmarks.models.resolve_model`)."""
    from benchmarks.models import resolve_model

    return resolve_model(model)


#: the base URL until the server is started (or the backend is pointed at one).
PLACEHOLDER_URL = "http://127.0.0.1:0/v1"
#: seconds before one attempt of a call to the loopback server times out (unless given).
ZOO_TIMEOUT_S = 300.0


@register_backend("zoo")
class ZooBackend(OpenAIBackend):
    """A zoo model behind the project's server on 127.0.0.1 (all capabilities, over HTTP).

    Args:
        model: a zoo model name or a local model directory.
        grey_box: serve next-token distributions and soft-prompt input (BBT, proxy-tuning,
            contrastive decoding need them); off makes it a pure text API.
        api: "completions" (echo scoring available) or "chat"; see ``prompt_format``.
        prompt_format: "raw" (default: the completions API, the text as the zoo was trained
            on it) or "chat" (the chat API; the server applies the model's chat template).
    """

    remote = False

    def __init__(
        self,
        model: str = "zoo-large",
        grey_box: bool = True,
        api: str | None = None,
        **options: Any,
    ):
        self.model_dir = resolve_model_dir(model)
        self.grey_box = grey_box
        self._handle: Any = None
        self._start_lock = threading.Lock()
        self._digest = weights_digest(self.model_dir)
        name = Path(model).name if Path(model).is_dir() else model
        options.pop("base_url", None)
        # The server shares the machine with the run: on a loaded CPU a batch can take minutes,
        # and a retry after a short timeout only adds load.
        options["timeout_s"] = options.get("timeout_s") or ZOO_TIMEOUT_S
        super().__init__(model=name, base_url=PLACEHOLDER_URL, api=api, **options)

    def default_prompt_format(self) -> str:
        from benchmarks.models import default_prompt_format

        # the zoo is trained on plain text; a named real model keeps its measured default
        return default_prompt_format(self.model) or "raw"

    def check_ready(self) -> None:
        """Ready from the model directory alone when it can be: the server's model card
        (capabilities, context length, prompt lists) is known without starting it, and the
        first request starts it (`start`). A model without a context window in its config is
        asked over HTTP, so its server starts now."""
        card = self._local_card()
        if card is None or self.base_url != PLACEHOLDER_URL:
            self.start()
            super().check_ready()
        else:
            # The project's own server, from its code: nothing to probe.
            self._apply_model_card(card)
            self.declared_by = "the project's server card (read from the model directory)"

    def _local_card(self) -> dict[str, Any] | None:
        from benchmarks.server import card_extensions

        config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        window = config.get("max_position_embeddings") or config.get("n_positions")
        if not window:
            return None
        return {"context_length": int(window), **card_extensions(self.grey_box)}

    def start(self) -> None:
        """Start the server if it is not running (the first request does it otherwise); a
        backend pointed at another server (a Ray worker at the driver's) starts none.

        Raises:
            BackendUnavailable: the server did not come up (with its last words).
        """
        with self._start_lock:
            if self._handle is not None or self.base_url != PLACEHOLDER_URL:
                return
            from benchmarks.server import start_server

            try:
                self._handle = start_server(
                    self.model_dir, model_name=self.model, grey_box=self.grey_box
                )
            except BenchError as exc:
                raise BackendUnavailable(f"zoo backend: {exc}") from None
            self.base_url = self._handle.base_url

    def _async_client(self) -> Any:
        self.start()
        return super()._async_client()

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "backend": "zoo", "weights": self._digest}

    def count_tokens(self, text: str) -> int:
        if not hasattr(self, "_tokenizer"):
            # The Rust tokenizer alone: the same ids as the transformers wrapper the server
            # uses, without importing transformers while planning (seconds on a small CPU).
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        return len(self._tokenizer.encode(text).ids)

    def close(self) -> None:
        super().close()
        if self._handle is not None:
            self._handle.stop()
            self._handle = None

    def gone(self) -> str | None:
        if self._handle is None or self._handle.is_alive():
            return None
        code = self._handle.process.returncode
        last = (self._handle.log_tail(3) or "no output").splitlines()[-1]
        return (
            f"zoo backend: the model server (pid {self._handle.pid}) exited with code {code} "
            f"({last}); finished cells are kept, continue with --resume"
        )
