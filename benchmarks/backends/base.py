"""Backends: model endpoints that declare their capabilities and answer batches of requests.

A backend does the raw work and reports usage; it knows nothing of roles, phases, caching or
budgets. `benchmarks.client.MeteredBlackBox` wraps a backend into the `methods.BlackBox` a
tuner sees, adding the cache, the meter and the capability checks. Backends register with
``@register_backend("name")`` (plugins: entry-point group ``blackbox_bench.backends``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from methods.base import GENERATE, CapabilityError, Completion, ScoredText
from methods.registry import BenchError, Registry

V = TypeVar("V")
#: how prompts reach a model: as raw text, or as one user turn of its chat template.
PROMPT_FORMATS: tuple[str, ...] = ("raw", "chat")


def chat_turns(user: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-question conversation: a system turn when ``system`` is given, then ``user``."""
    turns = [{"role": "system", "content": system}] if system is not None else []
    return [*turns, {"role": "user", "content": user}]


@dataclass(frozen=True)
class GenerateRequest:
    """One prompt sent for ``n`` samples (one model call)."""

    prompt: str
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: int | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """Logprobs of ``continuation`` after ``prompt`` (one model call)."""

    prompt: str
    continuation: str


@dataclass(frozen=True)
class NextTokenRequest:
    """The full next-token log-distribution after ``prompt``, optionally after soft-prompt
    vectors (a [k, d] float32 array) placed before the prompt's token embeddings."""

    prompt: str
    soft_prompt: np.ndarray | None = field(default=None, compare=False)


@dataclass
class CallResult(Generic[V]):
    """A backend's answer to one request, with what it cost.

    Attributes:
        value: the completions, the scored text or the log-distribution.
        prompt_tokens: input tokens billed (counted once per call, whatever ``n``).
        completion_tokens: output tokens billed, all samples together.
        latency_s: wall seconds from send to answer.
        retries: attempts beyond the first.
    """

    value: V
    prompt_tokens: int
    completion_tokens: int
    latency_s: float = 0.0
    retries: int = 0


class PartialBatchError(BenchError):
    """Some requests of a batch failed. ``results`` holds the answers that did arrive (None
    where a request failed), so what was paid for is still metered and cached."""

    def __init__(self, error: BaseException, results: Sequence[CallResult[Any] | None]):
        super().__init__(str(error))
        self.error = error
        self.results = list(results)


class Backend(ABC):
    """A model endpoint. Subclasses set `name` and `capabilities`, and implement the batch
    methods of the capabilities they declare."""

    #: registry name, set by `register_backend`.
    name: ClassVar[str] = ""
    #: whether tuning on this backend spends money (decides if a missing key is fatal etc.).
    remote: ClassVar[bool] = False

    model: str
    capabilities: frozenset[str] = frozenset({GENERATE})
    #: the context window in tokens, where known.
    context_length: int | None = None
    #: how a prompt reaches the model, resolved by `resolve_prompt_format`: "raw" (the text
    #: as given) or "chat" (one user turn of the model's chat template).
    prompt_format: str = "raw"
    #: a system turn before each user turn (chat only).
    system_prompt: str | None = None
    #: asked before each retry with the calls (prompts) it resends; raises
    #: `BudgetExhausted` when a call cap would pass (set by `MeteredBlackBox` under a cap).
    retry_gate: Callable[[str, int], None] | None = None

    def default_prompt_format(self) -> str:
        """The prompt format when none is given (the one place that decides it): a named
        real model's measured default (`benchmarks.models`), else raw."""
        from benchmarks.models import default_prompt_format

        return default_prompt_format(self.model) or "raw"

    def resolve_prompt_format(self, prompt_format: str | None, system_prompt: str | None) -> None:
        """Set `prompt_format` (``None``: `default_prompt_format`) and `system_prompt`.

        Raises:
            BenchError: an unknown format, or a system prompt without chat.
        """
        resolved = prompt_format or self.default_prompt_format()
        if resolved not in PROMPT_FORMATS:
            raise BenchError(
                f"{self.name} backend: unknown prompt format {resolved!r}; "
                f"valid: {', '.join(PROMPT_FORMATS)}"
            )
        if system_prompt is not None and resolved != "chat":
            raise BenchError(
                f"{self.name} backend: --system-prompt needs --prompt-format chat "
                "(a raw prompt has no system turn)"
            )
        self.prompt_format, self.system_prompt = resolved, system_prompt

    def chat_messages(self, prompt: str) -> list[dict[str, str]]:
        """``prompt`` as a conversation: the system turn (if any), then one user turn."""
        return chat_turns(prompt, self.system_prompt)

    def identity(self) -> dict[str, Any]:
        """What decides this backend's outputs, for cache keys: never keys or URLs."""
        return {
            "backend": self.name,
            "model": self.model,
            "prompt_format": self.prompt_format,
            "system": self.system_prompt,
        }

    @abstractmethod
    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        """Answer each request; the order of results is the order of requests."""

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[CallResult[ScoredText]]:
        raise CapabilityError(f"backend {self.name} ({self.model}) does not offer 'score'")

    def next_token_batch(
        self, requests: Sequence[NextTokenRequest]
    ) -> list[CallResult[np.ndarray]]:
        raise CapabilityError(
            f"backend {self.name} ({self.model}) does not offer 'next_token_logits'"
        )

    def vocabulary(self) -> list[str]:
        raise CapabilityError(f"backend {self.name} ({self.model}) has no known vocabulary")

    def embedding_stats(self) -> tuple[int, float, float]:
        raise CapabilityError(f"backend {self.name} ({self.model}) does not offer 'prompt_embeds'")

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` for projections: exact where the tokenizer is known, else
        about four characters a token."""
        return max(1, len(text) // 4)

    def check_ready(self) -> None:
        """Raise `BenchError` if the backend cannot serve (no key, no server), before spending."""

    def endpoint_record(self) -> dict[str, Any]:
        """What run.json says of the endpoint: what it offers and how that was learned."""
        return {"model": self.model, "capabilities": sorted(self.capabilities), "source": "backend"}

    def why_not(self, capability: str) -> str | None:
        """Why the endpoint lacks ``capability`` when a probe found out, else None."""
        return None

    def close(self) -> None:
        """Release connections, processes and memory."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


backends: Registry[Callable[..., Backend]] = Registry(
    "backend",
    package="benchmarks.backends",
    entry_point_group="blackbox_bench.backends",
    name_attr="name",
)
#: class decorator: ``@register_backend("name")`` registers a `Backend` subclass.
register_backend = backends.register


def make_backend(name: str, **options: Any) -> Backend:
    """A backend instance by registry name, with constructor ``options``."""
    factory = backends.get(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise BenchError(f"backend {name}: bad option ({exc})") from exc


def parse_capabilities(text: str | Sequence[str] | None) -> frozenset[str] | None:
    """``"generate,logprobs"`` -> frozenset, checking each name."""
    from methods.base import CAPABILITIES

    if text is None:
        return None
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    for item in items:
        if item not in CAPABILITIES:
            raise BenchError(f"unknown capability {item!r}; valid: {', '.join(CAPABILITIES)}")
    return frozenset(items)
