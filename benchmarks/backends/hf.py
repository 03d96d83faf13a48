"""The ``hf`` backend: a local Hugging Face causal LM run in process, with full access.

Offers every capability (generation, logprobs, scoring, full next-token distributions, soft
prompts) through `benchmarks.engine.HFEngine`. The model is a local directory written by
``save_pretrained``; nothing is downloaded. Requests with the same sampling parameters are
decoded as one batch.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.backends.base import (
    Backend,
    CallResult,
    GenerateRequest,
    NextTokenRequest,
    ScoreRequest,
    register_backend,
)
from methods.base import (
    GENERATE,
    LOGPROBS,
    NEXT_TOKEN_LOGITS,
    PROMPT_EMBEDS,
    SCORE,
    Completion,
    ScoredText,
)
from methods.registry import BenchError

# (path, size, mtime_ns) of each weight file -> digest, so re-creating a backend for the same
# files does not re-read gigabytes.
_DIGESTS: dict[tuple[tuple[str, int, int], ...], str] = {}


def check_model_dir(model: str | Path) -> Path:
    """The resolved model directory of a path or a model name (a zoo model, or a named real
    model, pulled on first use), checked against its manifest when the project wrote it; or a
    `BenchError` saying what a model directory is."""
    from benchmarks.models import resolve_model

    expected = (
        "expected a model name (`bench models ls`) or a local directory written by "
        "save_pretrained (config.json, tokenizer files and *.safetensors weights)"
    )
    try:
        path = resolve_model(model)  # a name is pulled on first use; a manifest is checked
    except BenchError as exc:
        raise BenchError(f"hf backend: {exc}") from None
    if not (path / "config.json").is_file():
        raise BenchError(f"hf backend: {path} has no config.json; {expected}")
    if not any(path.glob("*.safetensors")):
        raise BenchError(f"hf backend: {path} has no *.safetensors weights; {expected}")
    return path.resolve()


def weights_digest(directory: Path) -> str:
    """A short sha256 of the directory's safetensors files (names and contents)."""
    files = sorted(directory.glob("*.safetensors"))
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
        _DIGESTS[key] = digest.hexdigest()[:16]
    return _DIGESTS[key]


@register_backend("hf")
class HFBackend(Backend):
    """A local transformers causal LM.

    Args:
        model: a local model directory (config, tokenizer, safetensors weights).
        device: "cuda", "cpu", ...; default "cuda" when available.
        prompt_format: "raw" (default: the text as given) or "chat": every prompt, of every
            capability, is one user turn of the tokenizer's chat template.
        system_prompt: a system turn before the user turn (chat only).
    """

    capabilities = frozenset({GENERATE, LOGPROBS, SCORE, NEXT_TOKEN_LOGITS, PROMPT_EMBEDS})

    def __init__(
        self,
        model: str,
        device: str | None = None,
        prompt_format: str | None = None,
        system_prompt: str | None = None,
        **_: Any,
    ):
        self.path = check_model_dir(model)
        self.model = self.path.name
        self.device = device
        self.resolve_prompt_format(prompt_format, system_prompt)
        self._engine: Any = None
        self._load_lock = threading.Lock()

    @property
    def engine(self) -> Any:
        """The loaded `HFEngine` (loaded on first use, so listing backends stays cheap)."""
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    from benchmarks.engine import HFEngine

                    try:
                        self._engine = HFEngine.load(self.path, device=self.device)
                    except Exception as exc:  # loaders raise many types for a bad directory
                        raise BenchError(f"hf backend: cannot load {self.path}: {exc}") from exc
        return self._engine

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "weights": weights_digest(self.path)}

    def check_ready(self) -> None:
        self.context_length = int(self.engine.context_length)  # loading is the check
        self._check_chat_template()

    def _check_chat_template(self) -> None:
        if self.prompt_format == "chat" and not self.engine.has_chat_template:
            raise BenchError(
                f"hf backend: model {self.model} has no chat template; use --prompt-format raw"
            )

    def _prompt(self, text: str) -> Any:
        """What the engine is fed for ``text``: the text itself (raw), or the token ids of the
        chat template around it (so special tokens are not added twice)."""
        if self.prompt_format == "raw":
            return text
        self._check_chat_template()
        return self.engine.chat_ids(self.chat_messages(text))

    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        results: list[CallResult[list[Completion]] | None] = [None] * len(requests)
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.n, r.temperature, r.top_p, r.max_tokens, r.stop, r.seed, r.logprobs)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            first = requests[indices[0]]
            start = time.perf_counter()
            try:
                generations = self.engine.generate(
                    [self._prompt(requests[i].prompt) for i in indices],
                    n=first.n,
                    temperature=first.temperature,
                    top_p=first.top_p,
                    max_tokens=first.max_tokens,
                    stop=first.stop,
                    seed=first.seed,
                    logprobs=first.logprobs,
                )
            except ValueError as exc:
                raise BenchError(f"hf backend: {exc}") from exc
            # Each request waited for the whole batch: that is its latency.
            latency = time.perf_counter() - start
            for i, gen in zip(indices, generations, strict=True):
                completions = [
                    s.to_completion(logprobs=first.logprobs is not None) for s in gen.samples
                ]
                results[i] = CallResult(
                    completions, gen.prompt_tokens, gen.completion_tokens, latency_s=latency
                )
        return [r for r in results if r is not None]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[CallResult[ScoredText]]:
        if not requests:
            return []
        start = time.perf_counter()
        try:
            # The continuation's tokens follow the templated prompt (the assistant's turn).
            scored = self.engine.score(
                [self._prompt(r.prompt) for r in requests], [r.continuation for r in requests]
            )
        except ValueError as exc:
            raise BenchError(f"hf backend: {exc}") from exc
        latency = time.perf_counter() - start
        return [
            CallResult(
                ScoredText(s.tokens, tuple(float(lp) for lp in s.token_logprobs)),
                prompt_tokens=s.prompt_tokens,
                completion_tokens=0,
                latency_s=latency,
            )
            for s in scored
        ]

    def next_token_batch(
        self, requests: Sequence[NextTokenRequest]
    ) -> list[CallResult[np.ndarray]]:
        results: list[CallResult[np.ndarray] | None] = [None] * len(requests)
        groups: dict[bytes | None, list[int]] = {}
        for i, r in enumerate(requests):
            key = None
            if r.soft_prompt is not None:
                array = np.ascontiguousarray(r.soft_prompt, dtype=np.float32)
                key = hashlib.sha256(repr(array.shape).encode() + array.tobytes()).digest()
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            soft = requests[indices[0]].soft_prompt
            prompts = [self._prompt(requests[i].prompt) for i in indices]
            start = time.perf_counter()
            try:
                rows = self.engine.next_token_logprobs(prompts, soft_prompt=soft)
            except ValueError as exc:
                raise BenchError(f"hf backend: {exc}") from exc
            latency = time.perf_counter() - start
            extra = 0 if soft is None else int(np.shape(soft)[0])
            for row, i in enumerate(indices):
                tokens = len(self.engine.encode(prompts[row])) + extra
                results[i] = CallResult(rows[row], tokens, 0, latency_s=latency)
        return [r for r in results if r is not None]

    def vocabulary(self) -> list[str]:
        return list(self.engine.vocabulary())

    def embedding_stats(self) -> tuple[int, float, float]:
        return self.engine.embedding_stats()

    def count_tokens(self, text: str) -> int:
        return len(self.engine.encode(self._prompt(text)))

    def close(self) -> None:
        self._engine = None
