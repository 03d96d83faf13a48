"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, the project's own server) through
the official `openai` client.

Requests of a batch run concurrently on the client's asyncio loop, bounded by a semaphore.
Rate limits (429), server errors (5xx), timeouts and dropped connections are retried with
exponential backoff and full jitter (tenacity); the number of retries of each call is
reported to the meter. Token counts come from the response's `usage`.

Capabilities: `generate` and `logprobs` on both APIs; `score` (echo) on the completions API
where the server supports echo; the grey-box extensions of the project's server
(`next_token_logits`, `prompt_embeds`) where its ``/v1/models`` entry lists them. A server's
advertised list wins; ``capabilities=`` overrides both.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import numpy as np

from benchmarks.backends.base import (
    Backend,
    CallResult,
    GenerateRequest,
    NextTokenRequest,
    PartialBatchError,
    ScoreRequest,
    parse_capabilities,
    register_backend,
)
from methods.base import (
    GENERATE,
    LOGPROBS,
    NEXT_TOKEN_LOGITS,
    PROMPT_EMBEDS,
    SCORE,
    CapabilityError,
    Completion,
    ScoredText,
)
from methods.registry import BenchError

T = TypeVar("T")


def is_loopback(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _LoopThread:
    """A private asyncio loop on a daemon thread, so sync callers can run async batches."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="bench-io")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


@register_backend("openai")
class OpenAIBackend(Backend):
    """An OpenAI-compatible HTTP endpoint.

    Args:
        model: the model name the endpoint serves.
        base_url: the API root (``http://127.0.0.1:8000/v1``); None means OpenAI's own.
        api: "chat" (chat completions) or "completions" (legacy completions, needed for echo).
        api_key_env: the environment variable holding the key.
        api_key_file: a file holding the key (first line), instead of the environment.
        concurrency: requests in flight at once.
        max_retries: retries of a failed call before giving up.
        timeout_s: seconds before one attempt times out.
        backoff_s: the base of the exponential backoff (full jitter, capped at 30 s).
        capabilities: override the declared capabilities ("generate,logprobs,score").
        system_prompt: a system message for the chat API.
    """

    remote = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api: str = "chat",
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        concurrency: int = 8,
        max_retries: int = 6,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        capabilities: str | Sequence[str] | None = None,
        system_prompt: str | None = None,
        **_: Any,
    ):
        if api not in ("chat", "completions"):
            raise BenchError(f"openai backend: unknown api {api!r}; valid: chat, completions")
        if concurrency < 1:
            raise BenchError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_url = base_url
        self.api = api
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.system_prompt = system_prompt
        self._key_env = api_key_env
        self._key_file = Path(api_key_file) if api_key_file else None
        self._override = parse_capabilities(capabilities)
        self.capabilities = self._override or frozenset(
            {GENERATE, LOGPROBS}
            | ({SCORE} if api == "completions" and is_loopback(base_url) else set())
        )
        self._io: _LoopThread | None = None
        self._client: Any = None
        self._vocab: list[str] | None = None

    # -- set-up ---------------------------------------------------------------------------

    def _api_key(self) -> str | None:
        if self._key_file is not None:
            try:
                return self._key_file.read_text(encoding="utf-8").splitlines()[0].strip() or None
            except (OSError, IndexError) as exc:
                raise BenchError(f"openai backend: cannot read key file {self._key_file}") from exc
        return os.environ.get(self._key_env) or None

    def check_ready(self) -> None:
        """Fail before spending: no key for a remote endpoint, or an endpoint that is down.
        Also reads the capabilities a project server advertises."""
        if self._api_key() is None and not is_loopback(self.base_url):
            where = f"file {self._key_file}" if self._key_file else f"${self._key_env}"
            raise BenchError(
                f"openai backend: no API key for {self.base_url or 'api.openai.com'}; "
                f"set {where} (or --api-key-env/--api-key-file)"
            )
        if is_loopback(self.base_url):
            self._read_server_capabilities()

    def _read_server_capabilities(self) -> None:
        async def fetch() -> Any:
            return await self._async_client().models.list()

        try:
            page = self._run(fetch())
        except Exception as exc:
            raise BenchError(
                f"openai backend: endpoint {self.base_url} not reachable ({exc})"
            ) from exc
        for entry in getattr(page, "data", []):
            advertised = (getattr(entry, "model_extra", None) or {}).get("capabilities")
            context = (getattr(entry, "model_extra", None) or {}).get("context_length")
            if entry.id == self.model and context:
                self.context_length = int(context)
            if entry.id == self.model and advertised and self._override is None:
                caps = set(advertised)
                if self.api == "chat":
                    caps.discard(SCORE)  # echo exists only on the completions API
                self.capabilities = frozenset(caps)

    def gone(self) -> str | None:
        """Why the endpoint is known to be gone for good (a dead local server), else None."""
        return None

    def _async_client(self) -> Any:
        if self._client is None:
            import openai

            self._client = openai.AsyncOpenAI(
                api_key=self._api_key() or "EMPTY",
                base_url=self.base_url,
                max_retries=0,  # retries are ours, so they are counted
                timeout=self.timeout_s,
            )
        return self._client

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._io is None:
            self._io = _LoopThread()
        return self._io.run(coro)

    def close(self) -> None:
        if self._io is not None:
            if self._client is not None:
                try:
                    self._io.run(self._client.close())
                except Exception:  # closing a dead connection must not mask the real error
                    pass
            self._io.close()
            self._io = None
            self._client = None

    def identity(self) -> dict[str, Any]:
        # The API flavour changes the prompt the model sees (chat template), so it is part of
        # the identity; the URL and key are not.
        return {
            "backend": "openai",
            "model": self.model,
            "api": self.api,
            "system": self.system_prompt,
        }

    # -- calls ----------------------------------------------------------------------------

    async def _with_retries(self, call: Callable[[], Awaitable[Any]]) -> tuple[Any, int, float]:
        import openai
        from tenacity import (
            AsyncRetrying,
            retry_if_exception,
            retry_if_exception_type,
            stop_after_attempt,
            wait_random_exponential,
        )

        retryable = (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APITimeoutError,
            openai.APIConnectionError,
            openai.APIResponseValidationError,
        )
        attempts = 0
        start = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                # No point retrying against a server we know is gone.
                retry=retry_if_exception_type(retryable)
                & retry_if_exception(lambda _: self.gone() is None),
                wait=wait_random_exponential(multiplier=self.backoff_s, max=30),
                stop=stop_after_attempt(self.max_retries + 1),
                reraise=True,
            ):
                with attempt:
                    attempts += 1
                    response = await call()
        except openai.AuthenticationError as exc:
            raise BenchError(
                f"openai backend: authentication failed for model {self.model}"
            ) from exc
        except openai.APIStatusError as exc:
            raise BenchError(
                f"openai backend: {exc.status_code} from {self.model}: {_error_message(exc)}"
            ) from exc
        except retryable as exc:
            if (why := self.gone()) is not None:
                raise BenchError(why) from exc
            raise BenchError(
                f"openai backend: {self.model} failed after {attempts} attempts "
                f"({type(exc).__name__}); the endpoint may be down"
            ) from exc
        return response, attempts - 1, time.perf_counter() - start

    def _gather(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        async def bounded() -> list[T | BaseException]:
            sem = asyncio.Semaphore(self.concurrency)

            async def one(c: Coroutine[Any, Any, T]) -> T:
                async with sem:
                    return await c

            # Let every request finish before raising, so no task outlives the batch.
            return list(await asyncio.gather(*(one(c) for c in coros), return_exceptions=True))

        results = self._run(bounded())
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            partial = [None if isinstance(r, BaseException) else r for r in results]
            raise PartialBatchError(errors[0], partial) from errors[0]  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        return self._gather([self._generate_one(r) for r in requests])

    async def _generate_one(self, r: GenerateRequest) -> CallResult[list[Completion]]:
        client = self._async_client()
        common: dict[str, Any] = {
            "model": self.model,
            "n": r.n,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_tokens,
        }
        if r.stop:
            common["stop"] = list(r.stop)
        if r.seed is not None:
            common["seed"] = r.seed
        if self.api == "completions":
            if r.logprobs is not None:
                common["logprobs"] = r.logprobs
            resp, retries, latency = await self._with_retries(
                lambda: client.completions.create(prompt=r.prompt, **common)
            )
            completions = [
                _from_completion_choice(ch) for ch in sorted(resp.choices, key=lambda c: c.index)
            ]
        else:
            if r.logprobs is not None:
                common["logprobs"] = True
                common["top_logprobs"] = r.logprobs
            messages = [{"role": "user", "content": r.prompt}]
            if self.system_prompt:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            resp, retries, latency = await self._with_retries(
                lambda: client.chat.completions.create(messages=messages, **common)
            )
            completions = [
                _from_chat_choice(ch) for ch in sorted(resp.choices, key=lambda c: c.index)
            ]
        usage = resp.usage
        return CallResult(
            completions,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            latency_s=latency,
            retries=retries,
        )

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[CallResult[ScoredText]]:
        if self.api != "completions":
            raise CapabilityError("openai backend: 'score' needs --api completions (echo)")
        return self._gather([self._score_one(r) for r in requests])

    async def _score_one(self, r: ScoreRequest) -> CallResult[ScoredText]:
        client = self._async_client()
        resp, retries, latency = await self._with_retries(
            lambda: client.completions.create(
                model=self.model,
                prompt=r.prompt + r.continuation,
                echo=True,
                max_tokens=0,
                logprobs=0,
                temperature=0.0,
            )
        )
        lp = resp.choices[0].logprobs
        offsets = list(lp.text_offset or [])
        start = len(r.prompt)
        chosen = [i for i, off in enumerate(offsets) if off >= start] if offsets else []
        tokens = tuple(lp.tokens[i] for i in chosen)
        logprobs = tuple(float(lp.token_logprobs[i] or 0.0) for i in chosen)
        usage = resp.usage
        return CallResult(
            ScoredText(tokens, logprobs),
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=0,
            latency_s=latency,
            retries=retries,
        )

    def next_token_batch(
        self, requests: Sequence[NextTokenRequest]
    ) -> list[CallResult[np.ndarray]]:
        if NEXT_TOKEN_LOGITS not in self.capabilities:
            raise CapabilityError(
                f"openai backend: {self.model} does not serve 'next_token_logits'"
            )
        # One HTTP request per distinct soft prompt, carrying all of its prompts.
        groups: dict[bytes, list[int]] = {}
        for i, r in enumerate(requests):
            tag = b"" if r.soft_prompt is None else np.asarray(r.soft_prompt, "<f4").tobytes()
            groups.setdefault(tag, []).append(i)
        try:
            answers = self._gather(
                [self._next_token_group([requests[i] for i in idx]) for idx in groups.values()]
            )
        except PartialBatchError as exc:
            raise exc.error from None
        out: list[CallResult[np.ndarray] | None] = [None] * len(requests)
        for idx, results in zip(groups.values(), answers, strict=True):
            for i, result in zip(idx, results, strict=True):
                out[i] = result
        return [r for r in out if r is not None]

    async def _next_token_group(
        self, group: list[NextTokenRequest]
    ) -> list[CallResult[np.ndarray]]:
        import httpx

        client = self._async_client()
        soft = group[0].soft_prompt
        body: dict[str, Any] = {
            "model": self.model,
            "prompts": [r.prompt for r in group],
            "soft_prompt": None,
        }
        if soft is not None:
            if PROMPT_EMBEDS not in self.capabilities:
                raise CapabilityError(
                    f"openai backend: {self.model} does not serve 'prompt_embeds'"
                )
            arr = np.ascontiguousarray(soft, dtype="<f4")
            body["soft_prompt"] = {
                "shape": list(arr.shape),
                "data": base64.b64encode(arr.tobytes()).decode("ascii"),
            }
        resp, retries, latency = await self._with_retries(
            lambda: client.post("/bench/next_token_logprobs", cast_to=httpx.Response, body=body)
        )
        data = resp.json()
        rows = np.frombuffer(base64.b64decode(data["data"]), dtype="<f4").reshape(data["shape"])
        total = int((data.get("usage") or {}).get("prompt_tokens", 0))
        shares = [
            total // len(group) + (1 if i < total % len(group) else 0) for i in range(len(group))
        ]
        return [
            CallResult(
                rows[i].copy(),
                prompt_tokens=shares[i],
                completion_tokens=0,
                latency_s=latency,
                retries=retries if i == 0 else 0,
            )
            for i in range(len(group))
        ]

    def vocabulary(self) -> list[str]:
        if NEXT_TOKEN_LOGITS not in self.capabilities:
            raise CapabilityError(f"openai backend: {self.model} exposes no vocabulary")
        if self._vocab is None:
            self._vocab = list(self._get_json("/bench/vocabulary")["tokens"])
        return self._vocab

    def embedding_stats(self) -> tuple[int, float, float]:
        if PROMPT_EMBEDS not in self.capabilities:
            raise CapabilityError(f"openai backend: {self.model} does not serve 'prompt_embeds'")
        data = self._get_json("/bench/embedding_stats")
        return int(data["dim"]), float(data["mean"]), float(data["std"])

    def _get_json(self, path: str) -> dict[str, Any]:
        import httpx

        async def fetch() -> Any:
            resp, _, _ = await self._with_retries(
                lambda: self._async_client().get(path, cast_to=httpx.Response)
            )
            return resp.json()

        return dict(self._run(fetch()))


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"]).splitlines()[0]
    return str(getattr(exc, "message", exc)).splitlines()[0]


def _from_completion_choice(ch: Any) -> Completion:
    lp = getattr(ch, "logprobs", None)
    if lp is None or lp.tokens is None:
        return Completion(text=ch.text, finish_reason=ch.finish_reason or "stop")
    return Completion(
        text=ch.text,
        finish_reason=ch.finish_reason or "stop",
        tokens=tuple(lp.tokens),
        token_logprobs=tuple(float(x) for x in lp.token_logprobs),
        top_logprobs=tuple(dict(t or {}) for t in (lp.top_logprobs or [])) or None,
    )


def _from_chat_choice(ch: Any) -> Completion:
    lp = getattr(ch, "logprobs", None)
    text = ch.message.content or ""
    if lp is None or not lp.content:
        return Completion(text=text, finish_reason=ch.finish_reason or "stop")
    return Completion(
        text=text,
        finish_reason=ch.finish_reason or "stop",
        tokens=tuple(t.token for t in lp.content),
        token_logprobs=tuple(float(t.logprob) for t in lp.content),
        top_logprobs=tuple(
            {a.token: float(a.logprob) for a in (t.top_logprobs or [])} for t in lp.content
        ),
    )
