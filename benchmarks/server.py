"""An OpenAI-compatible HTTP server over a local model (`benchmarks.engine.HFEngine`).

Serves ``/v1/models``, ``/v1/completions`` (with ``echo`` + ``logprobs`` scoring, as the
legacy OpenAI API) and ``/v1/chat/completions``, so the ``openai`` backend and the official
``openai`` client can be tested end to end on a real socket against a model whose weights are
known. With ``grey_box=True`` it also serves a small extension for full next-token
distributions and soft prompts (``/v1/bench/...``; arrays travel as base64 little-endian
float32, never pickle).

Chat prompts use the tokenizer's chat template when it has one. Plain LMs (such as
`benchmarks.tiny`) have none: their chat prompt is the message contents joined by a blank
line, so a single user message is exactly the raw completion prompt.

Concurrent requests that share sampling parameters are decoded as one batch: a single worker
runs the engine off the event loop and takes every job queued meanwhile. Before it starts a
batch it also waits (up to `BATCH_WINDOW_S`) for the requests the server has already begun
to read but not yet queued, so a burst of concurrent requests becomes one batch instead of a
batch of the first arrival and another of the rest; a lone request waits for nothing.

With ``faults=`` (``--faults RATE``) it fails a seeded share of inference requests the way
real APIs do (429, 500, 503, timeouts, truncated bodies, malformed JSON; see
`benchmarks.faults`), to test that clients survive them.

Run it with ``python -m benchmarks.server --model-dir DIR`` (the API key, if any, comes from
``$BENCH_SERVER_API_KEY``, never argv), or from Python with `start_server`. It binds
127.0.0.1 unless told otherwise, and refuses any other host without a key.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import binascii
import contextlib
import contextvars
import hmac
import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt
from starlette.exceptions import HTTPException as StarletteHTTPException

from benchmarks.cli import port_number
from benchmarks.faults import FaultInjector, FaultSpec, add_fault_arguments, fault_spec
from methods.base import GENERATE, LOGPROBS, NEXT_TOKEN_LOGITS, PROMPT_EMBEDS, SCORE
from methods.registry import BenchError

if TYPE_CHECKING:  # torch loads only once a model does: a failing child exits quickly
    from benchmarks.engine import Generation, HFEngine, Prompt, Sample, ScoredTokens

API_KEY_ENV = "BENCH_SERVER_API_KEY"
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 1024
MAX_BODY_BYTES = 16 * 2**20  # a request body larger than this is refused unread (413)
#: the most token positions one generation request may hold: the sum over its prompts of
#: (prompt tokens + max_tokens) x the rows decoded (n when sampling; 1 when greedy, whose
#: samples are copies). 1,024 full 256-token windows: a generous batch for the zoo, and a
#: bound on how long one request keeps the single engine worker from the others.
MAX_REQUEST_TOKENS = 2**18
#: a prompt of more characters than this many times the longest token (in bytes, over the
#: vocabulary) cannot fit the window: refused before it is tokenized (tokenizing megabytes
#: blocks the event loop for seconds). The factor 2 is slack for tokenizers that are not
#: byte-level.
PROMPT_CHARS_SLACK = 2
#: the longest a batch waits for requests still being read: bounds the latency a slow
#: client's request can add to the others' (a decode step of a small model takes ~5 ms).
BATCH_WINDOW_S = 0.05
REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's body: ``{"error": {message, type, param, code}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status,
            message,
            type,
            param,
            code,
        )

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.type, self.param, self.code)


def error_response(
    status: int,
    message: str,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    body = {"error": {"message": _printable(message), "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped, so an error quoting a bad input still encodes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_text(text: str, param: str) -> None:
    """Refuse text that is not Unicode (a lone surrogate: valid JSON, ``"\\ud800"``, that no
    tokenizer takes) with a 400 naming ``param``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise APIError(
            400,
            f"{param} holds a lone surrogate ({_printable(text[exc.start : exc.end])} at "
            f"character {exc.start}); text must be valid Unicode (\\ud800-\\udfff escapes "
            "only in pairs)",
            param=param,
        ) from None


# --------------------------------------------------------------------------------------------
# Request bodies (unknown OpenAI fields are accepted and ignored)
# --------------------------------------------------------------------------------------------


class CompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    #: text, token ids, or a list of either (the completions API allows all four).
    prompt: str | list[StrictInt] | list[str | list[StrictInt]]
    n: int = 1
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    max_tokens: int | None = 16  # OpenAI's legacy default
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: int | None = None
    echo: bool = False
    stream: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage]
    n: int = 1
    temperature: float | None = 1.0
    top_p: float | None = 1.0
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    stream: bool = False


class SoftPrompt(BaseModel):
    shape: list[int]
    data: str


class NextTokenBody(BaseModel):
    model: str
    #: one row per prompt: raw ``prompts``, or ``messages`` (one conversation a row, rendered
    #: as /v1/chat/completions renders it, so a distribution follows the prompt generation saw).
    prompts: list[str] | None = None
    messages: list[list[ChatMessage]] | None = None
    soft_prompt: SoftPrompt | None = None


# --------------------------------------------------------------------------------------------
# Micro-batching
# --------------------------------------------------------------------------------------------


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    run: Callable[[list[Any]], list[Any]]
    future: asyncio.Future[list[Any]]
    #: set once the client that asked for this job has gone (`_Arrivals`); None: never known.
    gone: asyncio.Event | None = None

    def abandoned(self) -> bool:
        """Whether nobody waits for the answer (read from the engine's thread too)."""
        return self.gone is not None and self.gone.is_set()


@dataclass
class _Arrival:
    """An inference request the server has begun to read and not yet queued."""

    counted: bool = True


#: the arrival of the request being handled (set by `_Gate`, read by `MicroBatcher.submit`).
_ARRIVAL: contextvars.ContextVar[_Arrival | None] = contextvars.ContextVar(
    "bench_arrival", default=None
)
#: set when the client of the request being handled disconnects (by `_Arrivals`).
_CLIENT_GONE: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar(
    "bench_client_gone", default=None
)
#: in the engine's thread: whether every request of the running batch has been abandoned
#: (the engine then stops between decoding steps).
_BATCH_ABANDONED: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar(
    "bench_batch_abandoned", default=None
)


class ClientGone(Exception):
    """The job was dropped (or stopped) because its client disconnected."""


class MicroBatcher:
    """Runs engine work one batch at a time in a worker thread. Jobs queued while the engine
    is busy and sharing a key (same kind, same sampling parameters) run as one batch, their
    items concatenated. Before a batch starts, the worker also waits (at most ``window_s``)
    while inference requests are still being read (`arriving`), so that a burst is one batch;
    when nothing else is arriving it starts at once (no added latency when idle)."""

    def __init__(self, window_s: float = BATCH_WINDOW_S) -> None:
        self.window_s = window_s
        #: inference requests begun (headers read) but not yet queued.
        self.arriving = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def arrival(self) -> Any:
        """Count one inference request from its first byte until it queues a job or ends."""
        mark = _Arrival()
        self.arriving += 1
        token = _ARRIVAL.set(mark)
        try:
            yield
        finally:
            _ARRIVAL.reset(token)
            self._arrived(mark)

    def _arrived(self, mark: _Arrival | None) -> None:
        if mark is not None and mark.counted:
            mark.counted = False
            self.arriving -= 1

    async def submit(
        self, key: Hashable, items: list[Any], run: Callable[[list[Any]], list[Any]]
    ) -> list[Any]:
        """``run(items)``, possibly batched with other jobs of the same ``key``."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():
            # A new event loop (e.g. a new test client) needs its own queue and worker.
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work())
        assert self._queue is not None
        job = _Job(key, items, run, loop.create_future(), _CLIENT_GONE.get())
        self._arrived(_ARRIVAL.get())
        self._queue.put_nowait(job)
        try:
            return await job.future
        except ClientGone:
            # Nobody reads the answer; 499 (nginx's "client closed request") for the record.
            raise APIError(499, "the client closed the request", code="client_closed") from None

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            # Let the loop read what is on the sockets, then wait for requests mid-read.
            await asyncio.sleep(0)
            while self.arriving > 0 and loop.time() < deadline:
                await asyncio.sleep(0.001)
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                live = []
                for job in group:
                    if job.future.done():
                        continue
                    if job.abandoned():  # its client left while it waited: never run
                        job.future.set_exception(ClientGone())
                    else:
                        live.append(job)
                if live:
                    await self._run_group(live)

    @staticmethod
    async def _run_group(jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        token = _BATCH_ABANDONED.set(lambda: all(job.abandoned() for job in jobs))
        try:
            # to_thread copies the context: the engine's thread sees `_BATCH_ABANDONED`.
            results = await asyncio.to_thread(jobs[0].run, items)
        except Exception as exc:
            from benchmarks.engine import GenerationCancelled  # loaded: the engine just ran

            if isinstance(exc, GenerationCancelled):
                exc = ClientGone()
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            _BATCH_ABANDONED.reset(token)
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(results[start : start + len(job.items)])
            start += len(job.items)


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def create_app(
    engine: HFEngine,
    *,
    model_name: str,
    api_key: str | None = None,
    grey_box: bool = False,
    faults: FaultSpec | None = None,
) -> FastAPI:
    """The OpenAI-compatible app over ``engine``.

    Args:
        engine: the model.
        model_name: the only model id the server answers to.
        api_key: when set, every request needs ``Authorization: Bearer <api_key>``.
        grey_box: also serve ``/v1/bench/*`` (full distributions, vocabulary, soft prompts).
        faults: fail a seeded share of inference requests (`benchmarks.faults`).
    """
    app = FastAPI(title="blackbox-bench model server", docs_url=None, redoc_url=None)
    batcher = MicroBatcher()
    # Innermost: counts requests on their way to the batcher (a faulted one never is).
    app.add_middleware(_Arrivals, batcher=batcher)  # type: ignore[arg-type]
    if faults is not None:
        # Inside the key check (added before it): a request with a wrong key gets its 401.
        app.add_middleware(FaultInjector, spec=faults)  # type: ignore[arg-type]
    expected_auth = f"Bearer {api_key}".encode() if api_key else None

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        return error_response(400, f"{param}: {message}" if param else message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 413: "request_too_large"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), code=code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after answering, so uvicorn still logs the traceback.
        return error_response(500, f"internal server error: {type(exc).__name__}", "server_error")

    # Outermost (added last): the key and the body size are checked before anything else.
    app.add_middleware(_Gate, expected_auth=expected_auth)  # type: ignore[arg-type]

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404,
                f"The model `{name}` does not exist; this server serves `{model_name}`.",
                param="model",
                code="model_not_found",
            )

    def model_card() -> dict[str, Any]:
        return {
            "id": model_name,
            "object": "model",
            "created": 0,
            "owned_by": "blackbox-bench",
            "context_length": engine.context_length,
            **card_extensions(grey_box),
        }

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    longest_token: list[int] = []  # bytes of the longest token, measured on first use

    def fits_window(prompt: str, max_tokens: int) -> None:
        """Refuse, untokenized, a prompt too long to fit the window whatever its tokens."""
        if not longest_token:
            longest_token.append(max(len(t.encode("utf-8")) for t in engine.vocabulary()))
        if len(prompt) > engine.context_length * longest_token[0] * PROMPT_CHARS_SLACK:
            raise APIError(
                400,
                f"This model's maximum context length is {engine.context_length} tokens; a "
                f"prompt of {len(prompt):,} characters cannot fit it (requested "
                f"{max_tokens} tokens for the completion).",
                param="prompt",
                code="context_length_exceeded",
            )

    async def generate(
        prompts: list[Prompt], params: dict[str, Any], max_tokens: int
    ) -> list[Generation]:
        key = ("generate", max_tokens, *sorted((k, _hashable(v)) for k, v in params.items()))

        def run(batch: list[Prompt]) -> list[Generation]:
            abandoned = _BATCH_ABANDONED.get()
            return engine.generate(batch, max_tokens=max_tokens, should_stop=abandoned, **params)

        try:
            return await batcher.submit(key, prompts, run)
        except ValueError as exc:
            raise APIError(400, str(exc)) from exc

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> JSONResponse:
        check_model(body.model)
        if body.stream:
            raise APIError(400, "streaming is not supported by this server", param="stream")
        raw = body.prompt
        if isinstance(raw, str) or (raw and all(isinstance(x, int) for x in raw)):
            given: list[str | list[int]] = [raw]  # type: ignore[list-item]
        else:
            given = list(raw)  # type: ignore[arg-type]
        if not given:
            raise APIError(400, "prompt must not be an empty list", param="prompt")
        if len(given) > MAX_PROMPTS:
            raise APIError(400, f"at most {MAX_PROMPTS} prompts per request", param="prompt")
        max_tokens = 16 if body.max_tokens is None else body.max_tokens
        top_k = body.logprobs
        params = _sampling(engine, body.n, body.temperature, body.top_p, max_tokens, top_k)
        params.update(stop=_stops(body.stop), seed=body.seed)
        encoded: list[list[int]] = []
        for prompt in given:
            if isinstance(prompt, str):
                _check_text(prompt, "prompt")
                fits_window(prompt, max_tokens)
                encoded.append(engine.encode(prompt))
            else:
                encoded.append(_check_token_ids(prompt, engine.vocab_size))
        # The text of each prompt, for echo: token ids answer as the text they decode to.
        prompts = [p if isinstance(p, str) else engine.decode(p) for p in given]
        _check_lengths(engine, encoded, max_tokens)
        _check_work(encoded, body.n, params["temperature"], max_tokens)
        # Token ids from here on: the engine would otherwise tokenize each prompt again.
        gens = await generate(list(encoded), {**params, "logprobs": top_k}, max_tokens)
        echoed: list[ScoredTokens | None] = [None] * len(prompts)
        if body.echo and top_k is not None:
            echoed = await batcher.submit(
                ("echo", top_k), list(encoded), lambda b: engine.prompt_logprobs(b, top_k=top_k)
            )
        choices = []
        for i, (prompt, gen) in enumerate(zip(prompts, gens, strict=True)):
            for j, sample in enumerate(gen.samples):
                prefix = prompt if body.echo else ""
                logprobs = None
                if top_k is not None:
                    logprobs = _legacy_logprobs(engine, echoed[i], sample, prefix)
                choices.append(
                    {
                        "index": i * body.n + j,
                        "text": prefix + sample.text,
                        "logprobs": logprobs,
                        "finish_reason": sample.finish_reason,
                    }
                )
        return _json(
            {
                "id": f"cmpl-{uuid.uuid4().hex[:24]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": choices,
                "usage": _usage(gens),
                # An extension: OpenAI gives one usage for a list of prompts; clients that
                # meter per prompt (the openai backend) read each prompt's share here.
                "usage_per_prompt": [
                    {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}
                    for g in gens
                ],
            }
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest) -> JSONResponse:
        check_model(body.model)
        if body.stream:
            raise APIError(400, "streaming is not supported by this server", param="stream")
        if not body.messages:
            raise APIError(400, "messages must not be empty", param="messages")
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs requires logprobs=true", param="top_logprobs")
        for message in body.messages:
            _check_text(_content_text(message.content), "messages")
        prompt = chat_prompt(engine, body.messages)
        if isinstance(prompt, str):
            fits_window(prompt, 0)
        ids = engine.encode(prompt)
        max_tokens = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        )
        if max_tokens is None:
            # OpenAI's chat default: as much as the context window leaves.
            max_tokens = max(engine.context_length - len(ids), 0)
        top_k = (body.top_logprobs or 0) if body.logprobs else None
        params = _sampling(engine, body.n, body.temperature, body.top_p, max_tokens, top_k)
        params.update(stop=_stops(body.stop), seed=body.seed)
        _check_lengths(engine, [ids], max_tokens)
        _check_work([ids], body.n, params["temperature"], max_tokens)
        gens = await generate([ids], {**params, "logprobs": top_k}, max_tokens)
        choices = [
            {
                "index": j,
                "message": {"role": "assistant", "content": sample.text},
                "logprobs": _chat_logprobs(sample) if body.logprobs else None,
                "finish_reason": sample.finish_reason,
            }
            for j, sample in enumerate(gens[0].samples)
        ]
        return _json(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model_name,
                "choices": choices,
                "usage": _usage(gens),
            }
        )

    def require_grey_box() -> None:
        if not grey_box:
            raise APIError(
                404,
                "grey-box endpoints are disabled on this server (start it with --grey-box)",
                code="not_found",
            )

    @app.post("/v1/bench/next_token_logprobs")
    async def next_token_logprobs(body: NextTokenBody) -> JSONResponse:
        require_grey_box()
        check_model(body.model)
        if (body.prompts is None) == (body.messages is None):
            raise APIError(400, "give prompts or messages, not both or neither", param="prompts")
        if body.messages is not None:
            if not body.messages or not all(body.messages):
                raise APIError(400, "messages must not be empty", param="messages")
            prompts: list[Prompt] = [chat_prompt(engine, m) for m in body.messages]
        elif not body.prompts:
            raise APIError(400, "prompts must not be empty", param="prompts")
        else:
            prompts = list(body.prompts)
        soft = _decode_soft_prompt(body.soft_prompt) if body.soft_prompt else None
        if soft is not None:
            try:
                engine.check_soft_prompt(soft)  # here, so a bad one cannot fail a shared batch
            except ValueError as exc:
                raise APIError(400, str(exc), param="soft_prompt") from exc
        # One key for all: requests with different soft prompts (a BBT population) share a
        # forward pass, each row with its own soft prompt.
        try:
            rows = await batcher.submit(
                ("next",),
                [(p, soft) for p in prompts],
                lambda b: list(
                    engine.next_token_logprobs([p for p, _ in b], soft_prompts=[s for _, s in b])
                ),
            )
        except ValueError as exc:
            raise APIError(400, str(exc), param="soft_prompt") from exc
        array = np.ascontiguousarray(np.stack(rows), dtype="<f4")
        k = 0 if soft is None else soft.shape[0]
        tokens = sum(len(engine.encode(p)) + k for p in prompts)
        return _json(
            {
                "object": "next_token_logprobs",
                "model": model_name,
                "shape": list(array.shape),
                "data": base64.b64encode(array.tobytes()).decode("ascii"),
                "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
            }
        )

    @app.get("/v1/bench/vocabulary")
    async def vocabulary() -> dict[str, Any]:
        require_grey_box()
        return {"object": "vocabulary", "model": model_name, "tokens": engine.vocabulary()}

    @app.get("/v1/bench/embedding_stats")
    async def embedding_stats() -> dict[str, Any]:
        require_grey_box()
        dim, mean, std = engine.embedding_stats()
        return {
            "object": "embedding_stats",
            "model": model_name,
            "dim": dim,
            "mean": mean,
            "std": std,
        }

    return app


class _Gate:
    """ASGI middleware: the bearer key (when the server has one) and the body size limit.

    Plain ASGI rather than ``@app.middleware("http")``, so a response is passed through as it
    is sent (a deliberately truncated one included) instead of being re-streamed.
    """

    def __init__(self, app: Callable[..., Any], expected_auth: bytes | None):
        self.app = app
        self.expected_auth = expected_auth

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(dict(scope["headers"]))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        # Content-Length may be absent (chunked) or lie: the limit is also kept while reading.
        read = 0
        started = False

        async def bounded_receive() -> Any:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > MAX_BODY_BYTES:
                    raise _BodyTooLarge()
            return message

        async def tracked_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _BodyTooLarge:
            # Raised where FastAPI does not answer it (a middleware reading the body, such as
            # the fault injector); inside a route it is answered by the HTTP error handler.
            if not started:
                await _too_large()(scope, receive, send)

    def refusal(self, headers: dict[bytes, bytes]) -> JSONResponse | None:
        if self.expected_auth is not None:
            given = headers.get(b"authorization", b"")
            if not given:
                return error_response(
                    401,
                    "Missing bearer authentication in header (Authorization: Bearer <key>).",
                    code="invalid_api_key",
                )
            # Constant-time comparison; the message never repeats the key it was given.
            if not hmac.compare_digest(given, self.expected_auth):
                return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _too_large()
        return None


def _too_large() -> JSONResponse:
    return error_response(
        413, f"the request body is over {MAX_BODY_BYTES} bytes", code="request_too_large"
    )


class _BodyTooLarge(StarletteHTTPException):
    """Raised by `_Gate`'s receive once a body passes `MAX_BODY_BYTES`: an HTTP exception, so
    FastAPI's body reading passes it on to the handler instead of calling it a parse error."""

    def __init__(self) -> None:
        super().__init__(413, f"the request body is over {MAX_BODY_BYTES} bytes")


class _Arrivals:
    """ASGI middleware counting each POST as arriving (`MicroBatcher.arrival`) until it
    queues its work or ends, so the batcher can wait for a burst's stragglers."""

    def __init__(self, app: Callable[..., Any], batcher: MicroBatcher):
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            gone = asyncio.Event()
            token = _CLIENT_GONE.set(gone)
            watcher: list[asyncio.Task[None]] = []

            async def watch() -> None:
                # After the body nothing else reads `receive`: its next message is the
                # disconnect (or, once the answer is sent, the end of the exchange).
                if (await receive())["type"] == "http.disconnect":
                    gone.set()

            async def receive_then_watch() -> Any:
                message = await receive()
                if message["type"] == "http.disconnect":
                    gone.set()
                elif not message.get("more_body", False) and not watcher:
                    watcher.append(asyncio.get_running_loop().create_task(watch()))
                return message

            try:
                with self.batcher.arrival():
                    await self.app(scope, receive_then_watch, send)
            finally:
                _CLIENT_GONE.reset(token)
                for task in watcher:
                    task.cancel()
        else:
            await self.app(scope, receive, send)


def chat_prompt(engine: HFEngine, messages: Sequence[ChatMessage]) -> Prompt:
    """The prompt for a conversation: the tokenizer's chat template rendered and tokenized
    (ids, so special tokens are not added twice), or for plain LMs the message contents joined
    by a blank line (one user message gives exactly its text)."""
    turns = [{"role": m.role, "content": _content_text(m.content)} for m in messages]
    if engine.has_chat_template:
        return engine.chat_ids(turns)
    return "\n\n".join(t["content"] for t in turns)


def _content_text(content: str | list[dict[str, Any]] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise APIError(400, "only text content parts are supported", param="messages")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _sampling(
    engine: HFEngine,
    n: int,
    temperature: float | None,
    top_p: float | None,
    max_tokens: int,
    top_k: int | None,
) -> dict[str, Any]:
    temperature = 1.0 if temperature is None else temperature
    top_p = 1.0 if top_p is None else top_p
    if not 1 <= n <= MAX_N:
        raise APIError(400, f"n must be between 1 and {MAX_N}, got {n}", param="n")
    if not 0 <= temperature <= 2:
        raise APIError(
            400, f"temperature must be in [0, 2], got {temperature}", param="temperature"
        )
    if not 0 < top_p <= 1:
        raise APIError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    if not 0 <= max_tokens <= engine.context_length:
        raise APIError(
            400,
            f"max_tokens must be in [0, {engine.context_length}], got {max_tokens}",
            param="max_tokens",
        )
    if top_k is not None and not 0 <= top_k <= MAX_TOP_LOGPROBS:
        raise APIError(
            400, f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {top_k}", param="logprobs"
        )
    return {"n": n, "temperature": temperature, "top_p": top_p}


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise APIError(400, "at most 4 stop sequences", param="stop")
    for text in stops:
        _check_text(text, "stop")
    return tuple(stops)


def _check_work(
    encoded: Sequence[Sequence[int]], n: int, temperature: float, max_tokens: int
) -> None:
    """Refuse a request holding more than `MAX_REQUEST_TOKENS` token positions."""
    rows = 1 if temperature == 0 else n
    work = sum(len(ids) + max_tokens for ids in encoded) * rows
    if work > MAX_REQUEST_TOKENS:
        raise APIError(
            400,
            f"this request holds {work:,} token positions ((prompt tokens + max_tokens) x n "
            f"over {len(encoded)} prompts); the bound per request is {MAX_REQUEST_TOKENS:,}: "
            "send fewer prompts, a smaller n or a smaller max_tokens per request",
            param="n",
            code="request_too_large",
        )


def _check_lengths(engine: HFEngine, encoded: list[list[int]], max_tokens: int) -> None:
    for ids in encoded:
        if len(ids) + max_tokens > engine.context_length:
            raise APIError(
                400,
                f"This model's maximum context length is {engine.context_length} tokens, "
                f"however you requested {len(ids) + max_tokens} tokens ({len(ids)} in your "
                f"prompt; {max_tokens} for the completion).",
                param="prompt",
                code="context_length_exceeded",
            )


def _json(body: dict[str, Any]) -> JSONResponse:
    """``body`` as JSON, bypassing FastAPI's response validation and encoding: the bodies
    are plain JSON types already, and walking them per request cost more than the model on
    short answers."""
    return JSONResponse(body)


def _hashable(value: Any) -> Hashable:
    return tuple(value) if isinstance(value, list) else value


def _usage(gens: Sequence[Generation]) -> dict[str, int]:
    prompt = sum(g.prompt_tokens for g in gens)
    completion = sum(g.completion_tokens for g in gens)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _offsets(engine: HFEngine, ids: Sequence[int], tokens: Sequence[str], start: int) -> list[int]:
    """Character offset of each token in the returned text, from ``start``."""
    if sum(len(t) for t in tokens) == len(engine.decode(ids)):
        offsets, at = [], start
        for token in tokens:
            offsets.append(at)
            at += len(token)
        return offsets
    # Tokens that do not decode one by one (special tokens, split characters): decode prefixes.
    return [start + len(engine.decode(ids[:i])) for i in range(len(ids))]


def _check_token_ids(ids: list[int], vocab_size: int) -> list[int]:
    """A prompt given as token ids: non-empty, each an id of the vocabulary (else a 400)."""
    if not ids:
        raise APIError(400, "a prompt of token ids must not be empty", param="prompt")
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise APIError(
            400, f"token id {bad} is outside the vocabulary (0-{vocab_size - 1})", param="prompt"
        )
    return list(ids)


def _legacy_logprobs(
    engine: HFEngine, echoed: ScoredTokens | None, sample: Sample, prefix: str
) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; offsets index the returned text."""
    tokens: list[str] = []
    lps: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    if echoed is not None:
        tokens += echoed.tokens
        lps += echoed.token_logprobs
        tops += echoed.top_logprobs or [None] * len(echoed.tokens)
        offsets += _offsets(engine, echoed.token_ids, echoed.tokens, 0)
    tokens += sample.tokens
    lps += sample.token_logprobs
    tops += sample.top_logprobs or [{} for _ in sample.tokens]
    offsets += _offsets(engine, sample.token_ids, sample.tokens, len(prefix))
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _chat_logprobs(sample: Sample) -> dict[str, Any]:
    tops = sample.top_logprobs or tuple({} for _ in sample.tokens)
    return {
        "content": [
            {
                "token": token,
                "logprob": lp,
                "bytes": list(token.encode("utf-8")),
                "top_logprobs": [
                    {"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                    for t, v in top.items()
                ],
            }
            for token, lp, top in zip(sample.tokens, sample.token_logprobs, tops, strict=True)
        ]
    }


def _decode_soft_prompt(soft: SoftPrompt) -> np.ndarray:
    if len(soft.shape) != 2 or min(soft.shape) < 0:
        raise APIError(
            400, f"soft_prompt.shape must be [k, d], got {soft.shape}", param="soft_prompt"
        )
    try:
        raw = base64.b64decode(soft.data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(400, "soft_prompt.data is not valid base64", param="soft_prompt") from exc
    k, d = soft.shape
    if len(raw) != 4 * k * d:
        raise APIError(
            400,
            f"soft_prompt.data holds {len(raw)} bytes; shape {soft.shape} needs {4 * k * d}",
            param="soft_prompt",
        )
    return np.frombuffer(raw, dtype="<f4").reshape(k, d).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Running it: in a subprocess from Python, or as `python -m benchmarks.server`
# --------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class ServerHandle:
    """A server running in a child process. Stop it with `stop` or by leaving the context.

    Attributes:
        base_url: the OpenAI base URL, ``http://HOST:PORT/v1``.
        process: the child process.
        log_path: the child's combined stdout and stderr.
    """

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _workdir: Path = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the child wrote."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the child, then kill it if it has not exited within ``timeout_s``."""
        atexit.unregister(self.stop)
        if self.is_alive():
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def served_capabilities(grey_box: bool) -> list[str]:
    """What the server advertises in its model card (``/v1/models``)."""
    return [GENERATE, LOGPROBS, SCORE] + ([NEXT_TOKEN_LOGITS, PROMPT_EMBEDS] if grey_box else [])


def card_extensions(grey_box: bool) -> dict[str, Any]:
    """What the model card (``/v1/models``) says beyond OpenAI's fields."""
    return {
        "capabilities": served_capabilities(grey_box),
        # /v1/completions answers a list of prompts in one request.
        "prompt_lists": True,
        # echo with max_tokens=0 generates nothing (some servers read 0 as "no limit").
        "echo_without_generation": True,
    }


def ready_lines(*, host: str, port: int, model_name: str, grey_box: bool, api_key: bool) -> str:
    """What the server prints once it is ready: where, what, and whether a key is needed."""
    url_host = f"[{host.strip('[]')}]" if ":" in host else host
    capabilities = ", ".join(served_capabilities(grey_box))
    key = (
        f"an api key is required (Authorization: Bearer, the value of ${API_KEY_ENV})"
        if api_key
        else f"no api key (set ${API_KEY_ENV} to require one; loopback only without one)"
    )
    return (
        f"serving {model_name} at http://{url_host}:{port}/v1 (capabilities: {capabilities})\n"
        f"  {key}; Ctrl-C stops"
    )


def start_server(
    model_dir: Path | str,
    *,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str | None = None,
    grey_box: bool = False,
    timeout_s: float = 60.0,
    threads: int | None = None,
    faults: FaultSpec | None = None,
) -> ServerHandle:
    """Start ``python -m benchmarks.server`` in a child process and wait until it answers.

    Args:
        model_dir: the local model directory.
        model_name: the model id the server answers to.
        host: the interface to bind; anything but loopback needs ``api_key``.
        port: the port; 0 lets the child pick a free one (bound by the child itself, so no
            other process can take it in between).
        api_key: required bearer key, passed through the environment, never argv.
        grey_box: serve the ``/v1/bench`` extension.
        timeout_s: how long to wait for the server to answer ``/v1/models``.
        threads: CPU threads for torch in the child (default: see ``--threads``).
        faults: fail a seeded share of inference requests (`benchmarks.faults`).

    Raises:
        BenchError: the child exited or did not answer in time (with its last output).
    """
    import httpx

    from benchmarks.backends.hf import check_model_dir

    if not is_loopback(host) and not api_key:
        raise BenchError(f"refusing to serve on non-loopback host {host!r} without an api key")
    model_dir = check_model_dir(model_dir)  # fail here, not after the child's slow imports
    _remove_leftovers()
    # The owner's pid in the name lets a later start tell a dead run's folder from a live one.
    workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
    port_file = workdir / "port"
    log_path = workdir / "server.log"
    command = [
        sys.executable, "-m", "benchmarks.server",
        "--model-dir", str(model_dir), "--model-name", model_name,
        "--host", host, "--port", str(port), "--port-file", str(port_file),
        "--exit-with-parent",
    ]  # fmt: skip
    if grey_box:
        command.append("--grey-box")
    if threads:
        command += ["--threads", str(threads)]
    if faults is not None:
        command += faults.argv()
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    if api_key:
        env[API_KEY_ENV] = api_key
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TQDM_DISABLE"):
        env.setdefault(name, "1")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url_host = f"[{host}]" if ":" in host else host
    handle = ServerHandle("", process, log_path, workdir)
    atexit.register(handle.stop)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not handle.is_alive():
            tail = handle.log_tail()
            handle.stop()
            raise BenchError(
                f"model server exited with code {process.returncode} before it was ready:\n{tail}"
            )
        if not handle.base_url and port_file.is_file():
            handle.base_url = f"http://{url_host}:{int(port_file.read_text())}/v1"
        if handle.base_url:
            with contextlib.suppress(httpx.TransportError):
                reply = httpx.get(f"{handle.base_url}/models", headers=headers, timeout=2.0)
                if reply.status_code == 200:
                    return handle
                tail = handle.log_tail()
                handle.stop()
                raise BenchError(f"model server answered {reply.status_code}:\n{tail}")
        time.sleep(0.1)
    tail = handle.log_tail()
    handle.stop()
    raise BenchError(f"model server did not become ready within {timeout_s:.0f} s:\n{tail}")


WORKDIR_PREFIX = "bench-server-"
_WORKDIR_NAME = re.compile(re.escape(WORKDIR_PREFIX) + r"(\d+)-[A-Za-z0-9_]+")


def _remove_leftovers() -> list[Path]:
    """Delete the work folders (``bench-server-<pid>-*`` in the temp directory) of runs that
    were killed before they could: only this user's, and only when process ``<pid>`` is
    gone (a folder whose name carries no pid, made by an older version, is left alone)."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        match = _WORKDIR_NAME.fullmatch(folder.name)
        try:
            if not match or folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _process_exists(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or not a pid we can judge): keep the folder
    return True


def _watch_parent() -> None:
    """Exit when the parent dies, so a crashed test run leaves no server behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def _set_threads(engine: HFEngine, threads: int | None) -> None:
    import torch

    if threads is None and engine.device == "cpu":
        size = sum(p.numel() for p in engine.model.parameters())
        threads = 1 if size < 20_000_000 else None
    if threads:
        torch.set_num_threads(threads)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (exit 2) instead of the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.server``: serve a local model directory."""
    parser = _Parser(
        prog="python -m benchmarks.server",
        description=f"OpenAI-compatible server over a local model. API key: ${API_KEY_ENV}.",
    )
    parser.add_argument("--model-dir", required=True, type=Path, help="local model directory")
    parser.add_argument("--model-name", help="model id to answer to (default: directory name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=port_number, default=8000, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once bound")
    parser.add_argument("--grey-box", action="store_true", help="serve /v1/bench endpoints")
    parser.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: torch's; 1 for models under 20M parameters on "
        "CPU, where more threads only add synchronisation)",
    )
    add_fault_arguments(parser)
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    api_key = os.environ.get(API_KEY_ENV) or None
    try:
        faults = fault_spec(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not is_loopback(args.host) and not api_key:
        print(
            f"error: refusing to serve on non-loopback host {args.host!r} without an api key "
            f"(set ${API_KEY_ENV})",
            file=sys.stderr,
        )
        return 2
    from benchmarks.backends.hf import check_model_dir

    try:
        model_dir = check_model_dir(args.model_dir)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Bind before loading the model: a taken port fails in a second, not after the imports.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host.strip("[]"), args.port))
    except OSError as exc:
        sock.close()
        print(f"error: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    with sock:
        if args.exit_with_parent:
            _watch_parent()
        from benchmarks.engine import HFEngine

        try:
            engine = HFEngine.load(model_dir, device=args.device)
        except Exception as exc:  # any loader failure is a bad model directory to the user
            print(f"error: cannot load a model from {model_dir}: {exc}", file=sys.stderr)
            return 2
        _set_threads(engine, args.threads)
        if args.port_file:
            tmp = args.port_file.with_suffix(".tmp")
            tmp.write_text(str(sock.getsockname()[1]))
            tmp.replace(args.port_file)
        import uvicorn

        app = create_app(
            engine,
            model_name=args.model_name or model_dir.name,
            api_key=api_key,
            grey_box=args.grey_box,
            faults=faults,
        )
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        print(
            ready_lines(
                host=args.host,
                port=sock.getsockname()[1],
                model_name=args.model_name or model_dir.name,
                grey_box=args.grey_box,
                api_key=bool(api_key),
            ),
            flush=True,
        )
        uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
