"""The embedded default: a model of the project's zoo (or any local model directory), served
by the project's own OpenAI-compatible server on a free loopback port and reached through the
same `openai` client a commercial API would be.

The server runs in a child process started when the run is planned and stopped when it ends;
if it dies, the client's retries run out and the run stops with the server's last words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.backends.base import register_backend
from benchmarks.backends.hf import weights_digest
from benchmarks.backends.openai_backend import OpenAIBackend


def resolve_model_dir(model: str) -> Path:
    """A zoo model name (``zoo-large``) or a directory holding a transformers model."""
    path = Path(model)
    if path.is_dir():
        return path
    from benchmarks.zoo import model_dir

    return model_dir(model)


#: seconds before one attempt of a call to the loopback server times out (unless given).
ZOO_TIMEOUT_S = 300.0


@register_backend("zoo")
class ZooBackend(OpenAIBackend):
    """A zoo model behind the project's server on 127.0.0.1 (all capabilities, over HTTP).

    Args:
        model: a zoo model name or a local model directory.
        grey_box: serve next-token distributions and soft-prompt input (BBT, proxy-tuning,
            contrastive decoding need them); off makes it a pure text API.
        api: "completions" (default: echo scoring available) or "chat".
    """

    remote = False

    def __init__(
        self,
        model: str = "zoo-large",
        grey_box: bool = True,
        api: str = "completions",
        **options: Any,
    ):
        self.model_dir = resolve_model_dir(model)
        self.grey_box = grey_box
        self._handle: Any = None
        self._digest = weights_digest(self.model_dir)
        name = Path(model).name if Path(model).is_dir() else model
        options.pop("base_url", None)
        # The server shares the machine with the run: on a loaded CPU a batch can take minutes,
        # and a retry after a short timeout only adds load.
        options["timeout_s"] = options.get("timeout_s") or ZOO_TIMEOUT_S
        super().__init__(model=name, base_url="http://127.0.0.1:0/v1", api=api, **options)

    def check_ready(self) -> None:
        if self._handle is None:
            from benchmarks.server import start_server

            self._handle = start_server(
                self.model_dir, model_name=self.model, grey_box=self.grey_box
            )
            self.base_url = self._handle.base_url
        super().check_ready()

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
