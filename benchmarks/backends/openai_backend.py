"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, the project's own server) through
the official `openai` client.

Requests run concurrently on a private asyncio loop (one daemon thread per backend, so sync
callers on any thread share it) through the official `openai.AsyncOpenAI` client. Requests in
flight are bounded by an `AdaptiveLimiter` shared by every batch of the backend: AIMD, as TCP
does, halving the bound on a 429 and growing it back by one after a window of successes,
never above ``concurrency``; each attempt holds a slot, so retries back off without one.
Rate limits (429), server errors (5xx), timeouts, dropped connections, truncated bodies and
malformed or incomplete JSON are retried with exponential backoff and full jitter
(tenacity); the number of retries of each call is reported to the meter. An endpoint that
stays unreachable (or a local server that died) raises `BackendUnavailable`, which stops the
run with its finished cells kept. Token counts come from the response's `usage`.

The key comes from the environment (``api_key_env``) or a file (``api_key_file``), never from
arguments; it is not part of `identity` (so never of a cache key) and is masked in every
message this backend raises.

On the completions API, to a server whose ``/v1/models`` entry says ``prompt_lists`` (the
project's server does; not every compatible server takes a list), up to
`PROMPTS_PER_REQUEST` prompts that share their parameters travel in one request (a lone
prompt still goes as a string), sparing client and server the per-request work. Tokens per
prompt come from the server's ``usage_per_prompt``, else the request's ``usage`` is split
evenly (totals exact). A retry of such a request is counted once, on its first prompt.

Capabilities are probed, not assumed (`check_ready`): one tiny request each for `generate`,
`logprobs` and, on the completions API, `score` (echo), and for the grey-box extensions of
the project's server (`next_token_logits`, `prompt_embeds`) where its ``/v1/models`` entry lists
them. What was found (and why a capability is missing) is kept once per endpoint for the
process (`EndpointProbe`) and recorded in run.json; ``capabilities=`` skips the probe.

Scoring reads the log-probabilities ``echo`` returns for the prompt + continuation. Servers
differ on ``max_tokens=0`` (some read it as "no limit" and generate after the echo), so only
the tokens whose offsets fall inside the continuation are counted, and a server asks for at
most one new token, which is dropped: 0 only where the server's model card says it generates
nothing then (the project's server).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse, urlsplit, urlunsplit

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
from benchmarks.errors import BackendUnavailable
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
R = TypeVar("R")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: the prompt format each API gives.
_API_FORMAT = {"chat": "chat", "completions": "raw"}
#: prompts per HTTP request on the completions API (its ``prompt`` may be a list).
PROMPTS_PER_REQUEST = 16
#: default requests in flight: polite to a remote API; wide for a local server, whose
#: throughput comes from batching the requests that arrive together.
REMOTE_CONCURRENCY = 8
LOOPBACK_CONCURRENCY = 64


class MalformedResponse(Exception):
    """A 200 answer whose body is not the expected JSON (truncated, wrong shape): retried."""


class FewerChoices(Exception):
    """An answer with fewer choices per prompt than ``n`` asked (a server that ignores
    ``n``): not retried, since asking again gets the same; its choices and usage are kept
    (the request was answered and is billed) and the rest are asked one by one."""

    def __init__(self, samples: list[list[Completion]], usages: list[tuple[int, int]]):
        super().__init__(f"{len(samples[0])} choice(s) per prompt")
        self.samples, self.usages = samples, usages


class WrongChoiceCount(BenchError):
    """Choices that cannot be shared out among the prompts: not retried (it cannot change)."""


class EchoUnusable(BenchError):
    """An echo answer without token offsets: not retried (asking again gets the same)."""


#: the probe's request: a prompt any model continues, and the continuation scored after it.
PROBE_PROMPT = "The capital of France is"
PROBE_CONTINUATION = " Paris"
PROBE_OK = "ok"
_READ_ERRORS = (AttributeError, KeyError, IndexError, TypeError, ValueError)


@dataclass(frozen=True)
class EndpointProbe:
    """What one endpoint answered to the capability probe.

    Attributes:
        found: capability -> "ok", or why it is not offered.
        prompt_tokens, completion_tokens: what the probe's requests billed.
    """

    found: dict[str, str]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def offered(self) -> frozenset[str]:
        return frozenset(cap for cap, verdict in self.found.items() if verdict == PROBE_OK)


#: probes by endpoint (URL, model, API, ...) for this process: a grid probes each once.
_PROBES: dict[tuple[Any, ...], EndpointProbe] = {}
_PROBES_LOCK = threading.Lock()


def _logprobs_verdict(resp: Any) -> str:
    """PROBE_OK if a generation came back with token log-probabilities and alternatives."""
    try:
        choice = resp.choices[0]
        lp = choice.logprobs
        if lp is None:
            return "the answer carried no log-probabilities"
        if getattr(lp, "content", None) is not None:  # chat
            first = lp.content[0]
            ok = isinstance(first.logprob, float | int) and bool(first.top_logprobs)
        else:
            ok = isinstance(lp.token_logprobs[0], float | int) and bool(lp.top_logprobs)
    except _READ_ERRORS:
        return "the answer's log-probabilities could not be read"
    return PROBE_OK if ok else "the answer carried no alternatives (top_logprobs)"


def _echo_verdict(resp: Any, start: int, text: str) -> str:
    """PROBE_OK if ``echo`` gave back ``text`` token by token with offsets and a
    log-probability for each token after ``start`` (what scoring reads); else why not."""
    try:
        lp = resp.choices[0].logprobs
        if lp is None or not lp.tokens:
            return "echo returned no token log-probabilities"
        offsets = list(lp.text_offset or [])
        if len(offsets) != len(lp.tokens):
            return "echo returned no token offsets"
        inside = [i for i, off in enumerate(offsets) if off < len(text)]
        if "".join(lp.tokens[i] for i in inside) != text:
            return "echo did not return the prompt's own tokens"
        scored = [lp.token_logprobs[i] for i in inside if offsets[i] >= start]
    except _READ_ERRORS:
        return "echo's log-probabilities could not be read"
    if not scored or not all(isinstance(x, float | int) for x in scored):
        return "echo gave no log-probabilities for the continuation"
    return PROBE_OK


def safe_url(url: str | None) -> str:
    """``url`` for records and messages: no user:password part, every query value masked
    (keys are often passed as ``?api_key=...``), no fragment. Never raises: a URL that does
    not parse is shown as ``<unparseable URL>``."""
    if not url:
        return "api.openai.com"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc.rpartition("@")[2]
    # A piece without "=" may itself be a secret (``?sk-...``): masked whole.
    query = "&".join(
        f"{name}=***" if sep else "***"
        for name, sep, _ in (piece.partition("=") for piece in parts.query.split("&") if piece)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))


def check_base_url(url: str | None) -> None:
    """Refuse a base URL that cannot be an HTTP endpoint, naming what is wrong (with the URL
    shown through `safe_url`, so no password or query value reaches the message).

    Raises:
        BenchError: not http(s), no host, a port that is not a number in 0-65535, or a URL
            that does not parse.
    """
    if url is None:
        return
    shown = safe_url(url)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError unless a number in 0-65535 (0: the zoo's placeholder)
    except ValueError as exc:
        raise BenchError(
            f"base URL {shown}: not a valid URL ({exc}); expected http(s)://HOST[:PORT]/PATH, "
            "with PORT in 0-65535"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise BenchError(
            f"base URL {shown}: the scheme must be http or https "
            "(expected http(s)://HOST[:PORT]/PATH)"
        )
    if not parts.hostname:
        raise BenchError(f"base URL {shown}: no host (expected http(s)://HOST[:PORT]/PATH)")


def is_loopback(base_url: str | None) -> bool:
    if not base_url:
        return False
    try:
        host = urlparse(base_url).hostname or ""
    except ValueError:  # not a URL: `check_base_url` says why
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class _Slot:
    """One admitted attempt: the limiter's epoch when it was sent, and whether it met a 429."""

    epoch: int
    throttled: bool = False


class AdaptiveLimiter:
    """An AIMD bound on requests in flight.

    The bound starts at ``ceiling``. A 429 halves it (never below 1), once per epoch: answers
    to requests sent before the last cut do not cut again, so one burst of 429s from a full
    window counts as one signal, as in TCP. After ``limit`` successes in a row (a window's
    worth) it grows by one, never above ``ceiling``. Other failures leave it as it is.

    `on_success` and `on_throttle` are the arithmetic (plain methods, testable without a
    loop); `slot` is the asyncio gate around one attempt.

    Args:
        ceiling: the most requests in flight (``--concurrency``).
    """

    def __init__(self, ceiling: int):
        if ceiling < 1:
            raise BenchError(f"limiter ceiling must be >= 1, got {ceiling}")
        self.ceiling = ceiling
        self.limit = ceiling
        self.in_flight = 0
        self.epoch = 0
        self.throttles = 0
        self.lowest = ceiling
        #: the bound after each change, oldest first (the last 1,000 changes).
        self.history: collections.deque[int] = collections.deque([ceiling], maxlen=1000)
        self._successes = 0
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def on_success(self) -> None:
        """One answer that was not a 429: after ``limit`` in a row the bound grows by one."""
        self._successes += 1
        if self.limit < self.ceiling and self._successes >= self.limit:
            self.limit += 1
            self._successes = 0
            self.history.append(self.limit)

    def on_throttle(self, epoch: int) -> None:
        """A 429 to an attempt sent in ``epoch``: halve the bound unless it was already cut
        since that attempt was sent."""
        self.throttles += 1
        self._successes = 0
        if epoch != self.epoch:
            return
        self.epoch += 1
        if self.limit > 1:
            self.limit //= 2
            self.lowest = min(self.lowest, self.limit)
            self.history.append(self.limit)

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:
            # A condition belongs to one loop; a backend re-opened after close gets a new one.
            self._cond, self._loop, self.in_flight = asyncio.Condition(), loop, 0
        return self._cond

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[_Slot]:
        """Wait for room under the bound, hold it for one attempt, then report the outcome
        (set ``throttled`` on the yielded slot for a 429; an exception counts as neither)."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
        slot = _Slot(self.epoch)
        failed = True
        try:
            yield slot
            failed = False
        finally:
            async with cond:
                self.in_flight -= 1
                if slot.throttled:
                    self.on_throttle(slot.epoch)
                elif not failed:
                    self.on_success()
                cond.notify_all()


class _LoopThread:
    """A private asyncio loop on a daemon thread, so sync callers can run async batches."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="bench-io")
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return self._wait(future)
        except KeyboardInterrupt:
            # Ctrl-C lands here, in the waiting thread, while the batch is still on the loop:
            # cancel it (and the run's other batches: the run stops) and let them unwind, or
            # the interpreter exits with tasks pending ("Task was destroyed but it is
            # pending!"). A batch's own error is not caught: other threads' batches go on.
            self.cancel_pending()
            raise

    @staticmethod
    def _wait(future: concurrent.futures.Future[T]) -> T:
        return future.result()

    def cancel_pending(self, timeout_s: float = 5.0) -> None:
        """Cancel every task on the loop and wait (at most ``timeout_s``) until they end."""

        async def cancel_all() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self.loop.is_running():
            with contextlib.suppress(BaseException):  # a second Ctrl-C must not mask the first
                asyncio.run_coroutine_threadsafe(cancel_all(), self.loop).result(timeout_s)

    def close(self) -> None:
        self.cancel_pending()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


@register_backend("openai")
class OpenAIBackend(Backend):
    """An OpenAI-compatible HTTP endpoint.

    Args:
        model: the model name the endpoint serves.
        base_url: the API root (``http://127.0.0.1:8000/v1``); None means OpenAI's own.
        api: "chat" (chat completions) or "completions" (legacy completions, needed for echo);
            the API of ``prompt_format`` when not given (a contradicting pair is refused).
        api_key_env: the environment variable holding the key.
        api_key_file: a file holding the key (first line), instead of the environment.
        concurrency: the most requests in flight at once (the AIMD limiter's ceiling; it
            drops below on 429s and grows back). Default: 8, or 64 for a loopback server,
            which batches what arrives together (the project's server does).
        max_retries: retries of a failed call before giving up.
        timeout_s: seconds before one attempt times out.
        backoff_s: the base of the exponential backoff (full jitter, capped at 30 s).
        capabilities: override the declared capabilities ("generate,logprobs,score").
        system_prompt: a system message for the chat API.
        prompt_format: "chat" (the chat-completions API; grey-box calls send messages too) or
            "raw" (the completions API); default `default_prompt_format`, or that of ``api``.
    """

    remote = True

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key_file: str | Path | None = None,
        concurrency: int | None = None,
        max_retries: int = 6,
        timeout_s: float = 60.0,
        backoff_s: float = 0.5,
        capabilities: str | Sequence[str] | None = None,
        system_prompt: str | None = None,
        prompt_format: str | None = None,
        **_: Any,
    ):
        check_base_url(base_url)
        if api is not None and api not in _API_FORMAT:
            raise BenchError(f"openai backend: unknown api {api!r}; valid: chat, completions")
        if api is not None and prompt_format is not None and _API_FORMAT[api] != prompt_format:
            raise BenchError(
                f"{self.name or 'openai'} backend: --api {api} contradicts --prompt-format "
                f"{prompt_format} (chat is the chat API, raw the completions API); give one"
            )
        self.model = model  # the default format may depend on the model
        self.resolve_prompt_format(
            prompt_format or (_API_FORMAT[api] if api else None), system_prompt
        )
        api = "chat" if self.prompt_format == "chat" else "completions"
        if concurrency is None:
            concurrency = LOOPBACK_CONCURRENCY if is_loopback(base_url) else REMOTE_CONCURRENCY
        if concurrency < 1:
            raise BenchError(f"openai backend: concurrency must be >= 1, got {concurrency}")
        if not isinstance(api_key_env, str) or not _ENV_NAME.fullmatch(api_key_env):
            # Never echo the value: a key pasted here by mistake must not reach a message.
            raise BenchError(
                "openai backend: --api-key-env must be the NAME of an environment variable "
                "(letters, digits, _) that holds the key, not the key itself"
            )
        if max_retries < 0:
            raise BenchError(f"openai backend: max_retries must be >= 0, got {max_retries}")
        if not timeout_s > 0:
            raise BenchError(f"openai backend: timeout_s must be > 0, got {timeout_s}")
        self.model = model
        self.base_url = base_url
        self.api = api
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self._key_env = api_key_env
        self._key_file = Path(api_key_file) if api_key_file else None
        self._override = parse_capabilities(capabilities)
        # Until `check_ready` probes the endpoint, what any compatible server offers.
        self.capabilities = self._override or frozenset({GENERATE, LOGPROBS})
        #: what `check_ready` found (None before it, or with ``capabilities=``).
        self.probe: EndpointProbe | None = None
        #: the card's grey-box extensions, verified by the probe.
        self._advertised: frozenset[str] = frozenset()
        #: new tokens a scoring request asks for (see the module notes).
        self.echo_max_tokens = 1
        #: where the capabilities came from when no probe ran.
        self.declared_by = "not probed"
        self.limiter = AdaptiveLimiter(concurrency)
        #: send several prompts per completions request: only to a server that says it
        #: answers a list of prompts (the project's does; not every compatible server does).
        self.prompt_lists = False
        #: the server answered fewer choices than ``n``: ask for samples one request each.
        self.ignores_n = False
        self._io: _LoopThread | None = None
        self._io_lock = threading.Lock()
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

    def secret_values(self) -> list[str]:
        """The key this backend sends (for masking in messages); [] without one."""
        try:
            key = self._api_key()
        except BenchError:
            return []
        return [key] if key else []

    def _redact(self, text: str) -> str:
        for secret in self.secret_values():
            text = text.replace(secret, "***")
        return text

    def check_ready(self) -> None:
        """Fail before spending: no key for a remote endpoint, or an endpoint that is down.
        Also reads the capabilities a project server advertises."""
        if self._api_key() is None and not is_loopback(self.base_url):
            where = f"file {self._key_file}" if self._key_file else f"${self._key_env}"
            raise BenchError(
                f"openai backend: no API key for {safe_url(self.base_url)}; "
                f"set {where} (or --api-key-env/--api-key-file)"
            )
        if is_loopback(self.base_url):
            self._read_server_capabilities()
        if self._override is None:
            self._probe_capabilities()

    def _read_server_capabilities(self) -> None:
        async def fetch() -> Any:
            return await self._async_client().models.list()

        try:
            page = self._run(fetch())
        except Exception as exc:
            raise BenchError(
                self._redact(
                    f"openai backend: endpoint {safe_url(self.base_url)} not reachable "
                    f"({_first_line(exc)})"
                )
            ) from None
        for entry in getattr(page, "data", []):
            if entry.id == self.model:
                self._apply_model_card(getattr(entry, "model_extra", None) or {})

    def _apply_model_card(self, card: Mapping[str, Any]) -> None:
        """Take what a project server advertises for the model: capabilities (unless given
        with --capabilities), context length, and whether completions take prompt lists."""
        advertised = card.get("capabilities")
        if card.get("context_length"):
            self.context_length = int(card["context_length"])
        if card.get("prompt_lists"):
            self.prompt_lists = True
        if card.get("echo_without_generation"):
            self.echo_max_tokens = 0
        if advertised and self._override is None:
            caps = set(advertised)
            if self.api == "chat":
                caps.discard(SCORE)  # echo exists only on the completions API
            self.capabilities = frozenset(caps)
            self._advertised = frozenset(caps & {NEXT_TOKEN_LOGITS, PROMPT_EMBEDS})

    # -- capability probe -----------------------------------------------------------------

    def _probe_capabilities(self) -> None:
        """Find what the endpoint offers with a tiny request per capability (once per endpoint
        in this process) and plan from that.

        Raises:
            BenchError: the endpoint cannot even generate (a wrong model name, a refused
                key): nothing else could run.
        """
        key = (self.base_url, self.model, self.api, self.echo_max_tokens, self._advertised)
        with _PROBES_LOCK:
            probe = _PROBES.get(key)
        if probe is None:
            probe = self._run_probe()
            with _PROBES_LOCK:
                _PROBES[key] = probe
        self.probe = probe
        self.capabilities = probe.offered()

    def _run_probe(self) -> EndpointProbe:
        found: dict[str, str] = {}
        spent = [0, 0]

        def ask(**params: Any) -> Any:
            """One probe request; a 4xx answer is returned as the exception (not retried)."""

            async def call() -> Any:
                client = self._async_client()
                if self.api == "completions":
                    return await client.completions.create(model=self.model, **params)
                return await client.chat.completions.create(
                    model=self.model, messages=self.chat_messages(PROBE_PROMPT), **params
                )

            def parse(resp: Any) -> Any:
                prompt_tokens, completion_tokens = _usage(resp)
                spent[0] += prompt_tokens
                spent[1] += completion_tokens
                return resp

            value, _, _ = self._run(self._with_retries(call, parse))
            return value

        prompt = {"prompt": PROBE_PROMPT} if self.api == "completions" else {}
        try:
            ask(**prompt, max_tokens=1, temperature=0.0)
        except BackendUnavailable:
            raise
        except BenchError as exc:
            raise BenchError(
                f"openai backend: {safe_url(self.base_url)} cannot generate with model "
                f"{self.model} ({exc})"
            ) from None
        found[GENERATE] = PROBE_OK
        lp_params = (
            {"logprobs": 1} if self.api == "completions" else {"logprobs": True, "top_logprobs": 1}
        )
        found[LOGPROBS] = self._probe_step(
            lambda: _logprobs_verdict(ask(**prompt, max_tokens=1, temperature=0.0, **lp_params))
        )
        if self.api == "completions":
            found[SCORE] = self._probe_step(
                lambda: _echo_verdict(
                    ask(
                        prompt=PROBE_PROMPT + PROBE_CONTINUATION,
                        echo=True,
                        logprobs=0,
                        max_tokens=self.echo_max_tokens,
                        temperature=0.0,
                    ),
                    len(PROBE_PROMPT),
                    PROBE_PROMPT + PROBE_CONTINUATION,
                )
            )
        else:
            found[SCORE] = "not on the chat API (echo is a completions-API feature)"
        if NEXT_TOKEN_LOGITS in self._advertised:

            def next_token() -> str:
                (row,) = self._run(self._next_token_group([NextTokenRequest(PROBE_PROMPT)]))
                spent[0] += row.prompt_tokens
                ok = row.value.ndim == 1 and row.value.size > 1 and np.isfinite(row.value).any()
                return PROBE_OK if ok else "the next-token distribution came back empty"

            found[NEXT_TOKEN_LOGITS] = self._probe_step(next_token)
        if PROMPT_EMBEDS in self._advertised:

            def embeds() -> str:
                dim = int(self._get_json("/bench/embedding_stats")["dim"])
                return PROBE_OK if dim > 0 else "no embedding size"

            found[PROMPT_EMBEDS] = self._probe_step(embeds)
        return EndpointProbe(found, prompt_tokens=spent[0], completion_tokens=spent[1])

    def _probe_step(self, step: Callable[[], str]) -> str:
        """The verdict of one probe: PROBE_OK or why not (a refused request included)."""
        try:
            return step()
        except BackendUnavailable:
            raise
        except (BenchError, *_READ_ERRORS) as exc:
            return f"refused: {_first_line(exc)}"

    def endpoint_record(self) -> dict[str, Any]:
        """What run.json says of this endpoint: where (no secrets), what it offers and how
        that was learned."""
        record: dict[str, Any] = {
            "url": safe_url(self.base_url),
            "model": self.model,
            "api": self.api,
            "capabilities": sorted(self.capabilities),
        }
        if self.probe is None:
            record["source"] = (
                "declared with --capabilities" if self._override else self.declared_by
            )
        else:
            record["source"] = "probed"
            record["probe"] = dict(self.probe.found)
            record["probe_tokens"] = {
                "prompt": self.probe.prompt_tokens,
                "completion": self.probe.completion_tokens,
            }
        if SCORE in self.capabilities:
            record["echo_max_tokens"] = self.echo_max_tokens
        return record

    def why_not(self, capability: str) -> str | None:
        """What the probe found against ``capability`` (None if it was not probed)."""
        if self.probe is None:
            return None
        verdict = self.probe.found.get(capability)
        return None if verdict in (None, PROBE_OK) else verdict

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
        with self._io_lock:  # callers on several threads share one loop
            if self._io is None:
                self._io = _LoopThread()
            io = self._io
        return io.run(coro)

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

    def default_prompt_format(self) -> str:
        from benchmarks.models import default_prompt_format

        # A named model served by `bench serve` keeps its measured default; any other hosted
        # model is an instruct model served for chat.
        return default_prompt_format(self.model) or "chat"

    def identity(self) -> dict[str, Any]:
        # The API flavour changes the prompt the model sees (chat template), so it is part of
        # the identity; the URL and key are not.
        return {**super().identity(), "backend": "openai", "api": self.api}

    # -- calls ----------------------------------------------------------------------------

    async def _with_retries(
        self, call: Callable[[], Awaitable[Any]], parse: Callable[[Any], R], calls: int = 1
    ) -> tuple[R, int, float]:
        """``parse(await call())``, retried on transient failures; returns the parsed value,
        the retries made and the wall seconds. A body ``parse`` cannot read is retried too.
        Each retry resends ``calls`` prompts, admitted first by `retry_gate` (call caps
        count requests sent)."""
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
            json.JSONDecodeError,  # a 200 whose JSON body is cut short or garbled
            MalformedResponse,
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
                    if attempts and self.retry_gate is not None:
                        self.retry_gate(self.model, calls)  # BudgetExhausted: not retried
                    attempts += 1
                    async with self.limiter.slot() as slot:
                        try:
                            response = await call()
                        except openai.RateLimitError:
                            slot.throttled = True
                            raise
                    try:
                        value = parse(response)
                    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
                        raise MalformedResponse(f"{type(exc).__name__}: {exc}") from exc
        except openai.AuthenticationError:
            raise BenchError(
                f"openai backend: authentication failed for model {self.model} at "
                f"{safe_url(self.base_url)}; check the key in {self._key_source()}"
            ) from None
        except openai.APIStatusError as exc:
            raise BenchError(
                self._redact(
                    f"openai backend: {exc.status_code} from {self.model}: {_error_message(exc)}"
                )
            ) from None
        except retryable as exc:
            if (why := self.gone()) is not None:
                raise BackendUnavailable(why) from None
            what = f"{type(exc).__name__}: {_first_line(exc)}"
            if isinstance(exc, openai.APIConnectionError):  # timeouts included
                hint = (
                    "; raise --request-timeout if the model is just slow"
                    if isinstance(exc, openai.APITimeoutError)
                    else ""
                )
                raise BackendUnavailable(
                    self._redact(
                        f"openai backend: {self.model} at {safe_url(self.base_url)} did not "
                        f"answer after {attempts} attempts ({what}){hint}"
                    )
                ) from None
            raise BenchError(
                self._redact(
                    f"openai backend: {self.model} failed after {attempts} attempts ({what})"
                )
            ) from None
        return value, attempts - 1, time.perf_counter() - start

    def _key_source(self) -> str:
        return f"file {self._key_file}" if self._key_file else f"${self._key_env}"

    def _gather(self, coros: list[Coroutine[Any, Any, T]]) -> list[T]:
        async def everything() -> list[T | BaseException]:
            # The limiter bounds what is in flight; let every request finish before raising,
            # so no task outlives the batch.
            return list(await asyncio.gather(*coros, return_exceptions=True))

        results = self._run(everything())
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            partial = [None if isinstance(r, BaseException) else r for r in results]
            raise PartialBatchError(errors[0], partial) from errors[0]  # type: ignore[arg-type]
        return results  # type: ignore[return-value]

    def generate_batch(
        self, requests: Sequence[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        chunks = self._chunks(
            requests,
            lambda r: (r.n, r.temperature, r.top_p, r.max_tokens, r.stop, r.seed, r.logprobs),
        )
        return self._gather_chunks(chunks, requests, self._generate_many)

    def _chunks(self, requests: Sequence[R], key: Callable[[R], Any]) -> list[list[int]]:
        """Indices of ``requests`` grouped into HTTP requests: on the completions API, whose
        ``prompt`` may be a list, up to `PROMPTS_PER_REQUEST` requests that share their
        parameters (``key``) go in one, sparing client and server the per-request work;
        on the chat API one each."""
        if self.api != "completions" or not self.prompt_lists:
            return [[i] for i in range(len(requests))]
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(key(r), []).append(i)
        return [
            idx[lo : lo + PROMPTS_PER_REQUEST]
            for idx in groups.values()
            for lo in range(0, len(idx), PROMPTS_PER_REQUEST)
        ]

    def _gather_chunks(
        self,
        chunks: list[list[int]],
        requests: Sequence[R],
        send: Callable[[list[R]], Coroutine[Any, Any, list[CallResult[T]]]],
    ) -> list[CallResult[T]]:
        """``send`` each chunk concurrently; results back in request order. A failed chunk
        fails its requests only (`PartialBatchError` keeps the others' answers)."""
        try:
            answers: list[list[CallResult[T]] | None] = list(
                self._gather([send([requests[i] for i in idx]) for idx in chunks])
            )
            error = None
        except PartialBatchError as exc:
            answers, error = list(exc.results), exc.error  # type: ignore[arg-type]
        out: list[CallResult[T] | None] = [None] * len(requests)
        for idx, answer in zip(chunks, answers, strict=True):
            if answer is not None:
                for i, result in zip(idx, answer, strict=True):
                    out[i] = result
        if error is not None:
            raise PartialBatchError(error, out) from error
        return out  # type: ignore[return-value]

    async def _generate_many(self, rs: list[GenerateRequest]) -> list[CallResult[list[Completion]]]:
        """One HTTP request for ``rs`` (several only on the completions API, where they
        share every parameter but the prompt). A server that ignores ``n`` gets the missing
        samples as separate requests (`ignores_n`), each billed."""
        r = rs[0]
        if r.n > 1 and self.ignores_n:
            return await self._generate_apart(rs, r.n, 0, admitted=1)
        try:
            return await self._generate_one_request(rs)
        except FewerChoices as short:
            self.ignores_n = True
            got = len(short.samples[0])
            rest = await self._generate_apart(rs, r.n - got, got, admitted=0)
            return [
                CallResult(
                    [*first, *more.value],
                    prompt_tokens=usage[0] + more.prompt_tokens,
                    completion_tokens=usage[1] + more.completion_tokens,
                    latency_s=more.latency_s,
                    retries=more.retries,
                )
                for first, usage, more in zip(short.samples, short.usages, rest, strict=True)
            ]

    async def _generate_apart(
        self, rs: list[GenerateRequest], count: int, offset: int, *, admitted: int
    ) -> list[CallResult[list[Completion]]]:
        """``count`` samples of each of ``rs`` as ``count`` requests of one sample each (seeds
        ``seed + offset + j``, so seeded samples differ), merged per prompt. The call was
        admitted for ``admitted`` of these requests; each other one passes `retry_gate` first
        (a cap on calls caps the requests sent)."""
        if self.retry_gate is not None:
            for _ in range(count - admitted):
                self.retry_gate(self.model, len(rs))  # BudgetExhausted: none of them is sent
        waves = await asyncio.gather(
            *(
                self._generate_one_request(
                    [
                        dataclasses.replace(
                            x, n=1, seed=None if x.seed is None else x.seed + offset + j
                        )
                        for x in rs
                    ]
                )
                for j in range(count)
            )
        )
        return [
            CallResult(
                [c for wave in waves for c in wave[i].value],
                prompt_tokens=sum(wave[i].prompt_tokens for wave in waves),
                completion_tokens=sum(wave[i].completion_tokens for wave in waves),
                latency_s=max(wave[i].latency_s for wave in waves),
                retries=sum(wave[i].retries for wave in waves),
            )
            for i in range(len(rs))
        ]

    async def _generate_one_request(
        self, rs: list[GenerateRequest]
    ) -> list[CallResult[list[Completion]]]:
        client = self._async_client()
        r = rs[0]
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
            # A lone prompt goes as a string: the request any OpenAI client would send.
            prompt: str | list[str] = r.prompt if len(rs) == 1 else [x.prompt for x in rs]

            async def call() -> Any:
                return await client.completions.create(prompt=prompt, **common)

            convert: Callable[[Any], Completion] = _from_completion_choice
        else:
            if r.logprobs is not None:
                common["logprobs"] = True
                common["top_logprobs"] = r.logprobs
            messages = self.chat_messages(r.prompt)

            async def call() -> Any:
                return await client.chat.completions.create(messages=messages, **common)

            convert = _from_chat_choice

        def parse(resp: Any) -> tuple[list[list[Completion]], list[tuple[int, int]]]:
            choices = sorted(resp.choices, key=lambda c: c.index)
            if len(choices) != r.n * len(rs):
                per, odd = divmod(len(choices), len(rs))
                if 0 < per < r.n and not odd:
                    raise FewerChoices(
                        [
                            [convert(ch) for ch in choices[i * per : (i + 1) * per]]
                            for i in range(len(rs))
                        ],
                        _usage_per_prompt(resp, len(rs)),
                    )
                raise WrongChoiceCount(
                    f"openai backend: asked {self.model} for {r.n * len(rs)} choices "
                    f"({len(rs)} prompt(s), n={r.n}), got {len(choices)}"
                )
            samples = [
                [convert(ch) for ch in choices[i * r.n : (i + 1) * r.n]] for i in range(len(rs))
            ]
            return samples, _usage_per_prompt(resp, len(rs))

        (samples, usages), retries, latency = await self._with_retries(call, parse, len(rs))
        return [
            CallResult(
                completions,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_s=latency,
                retries=retries if i == 0 else 0,  # the request's retries, counted once
            )
            for i, (completions, (prompt_tokens, completion_tokens)) in enumerate(
                zip(samples, usages, strict=True)
            )
        ]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[CallResult[ScoredText]]:
        if self.api != "completions":
            raise CapabilityError("openai backend: 'score' needs --api completions (echo)")
        chunks = self._chunks(requests, lambda r: None)
        return self._gather_chunks(chunks, requests, self._score_many)

    async def _score_many(self, rs: list[ScoreRequest]) -> list[CallResult[ScoredText]]:
        client = self._async_client()
        texts = [r.prompt + r.continuation for r in rs]

        def parse(resp: Any) -> tuple[list[ScoredText], list[tuple[int, int]]]:
            choices = sorted(resp.choices, key=lambda c: c.index)
            if len(choices) != len(rs):
                raise ValueError(f"asked for {len(rs)} choices, got {len(choices)}")
            scored = []
            for r, text, choice in zip(rs, texts, choices, strict=True):
                lp = choice.logprobs
                offsets = list(lp.text_offset or [])
                if len(offsets) != len(lp.tokens or ()):
                    raise EchoUnusable(
                        f"openai backend: {self.model} answered echo without token offsets; "
                        "scoring cannot tell the continuation's tokens (pass --capabilities "
                        "without score)"
                    )
                # Only the continuation's tokens: not the prompt's, and not what a server
                # generated after the echo.
                start, end = len(r.prompt), len(text)
                chosen = [i for i, off in enumerate(offsets) if start <= off < end]
                tokens = tuple(lp.tokens[i] for i in chosen)
                logprobs = tuple(float(lp.token_logprobs[i] or 0.0) for i in chosen)
                scored.append(ScoredText(tokens, logprobs))
            return scored, _usage_per_prompt(resp, len(rs))

        (scored, usages), retries, latency = await self._with_retries(
            lambda: client.completions.create(
                model=self.model,
                prompt=texts[0] if len(rs) == 1 else texts,
                echo=True,
                max_tokens=self.echo_max_tokens,
                logprobs=0,
                temperature=0.0,
            ),
            parse,
            len(rs),
        )
        return [
            CallResult(
                value,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,  # the dropped new token is still billed
                latency_s=latency,
                retries=retries if i == 0 else 0,
            )
            for i, (value, (prompt_tokens, completion_tokens)) in enumerate(
                zip(scored, usages, strict=True)
            )
        ]

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
        body: dict[str, Any] = {"model": self.model, "soft_prompt": None}
        # Under chat the server renders each row as its chat API does: a distribution follows
        # the prompt generation sees.
        if self.prompt_format == "chat":
            body["messages"] = [self.chat_messages(r.prompt) for r in group]
        else:
            body["prompts"] = [r.prompt for r in group]
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

        def parse(resp: Any) -> tuple[np.ndarray, int]:
            data = resp.json()
            raw = base64.b64decode(data["data"], validate=True)
            rows = np.frombuffer(raw, dtype="<f4").reshape(data["shape"])
            if rows.ndim != 2 or rows.shape[0] != len(group):
                raise ValueError(f"expected {len(group)} rows, got shape {rows.shape}")
            return rows, int((data.get("usage") or {}).get("prompt_tokens", 0))

        (rows, total), retries, latency = await self._with_retries(
            lambda: client.post("/bench/next_token_logprobs", cast_to=httpx.Response, body=body),
            parse,
            len(group),
        )
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
            data, _, _ = await self._with_retries(
                lambda: self._async_client().get(path, cast_to=httpx.Response),
                lambda resp: dict(resp.json()),
            )
            return data

        return dict(self._run(fetch()))


def _usage_per_prompt(resp: Any, prompts: int) -> list[tuple[int, int]]:
    """(prompt, completion) tokens of each prompt of a request: the project server's
    ``usage_per_prompt`` where it is given, else the ``usage`` split evenly (exact totals;
    OpenAI reports one usage for a list of prompts)."""
    if prompts == 1:
        return [_usage(resp)]
    given = (getattr(resp, "model_extra", None) or {}).get("usage_per_prompt")
    if isinstance(given, list) and len(given) == prompts:
        return [(int(u["prompt_tokens"]), int(u["completion_tokens"])) for u in given]
    prompt_total, completion_total = _usage(resp)
    return list(zip(_split(prompt_total, prompts), _split(completion_total, prompts), strict=True))


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _usage(resp: Any) -> tuple[int, int]:
    """(prompt, completion) tokens of a response's ``usage`` (0 where absent)."""
    usage = getattr(resp, "usage", None)
    return (
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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
