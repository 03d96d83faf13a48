"""The openai backend against small HTTP servers on 127.0.0.1 that misbehave on purpose:
retries on 429, 5xx and timeouts are made and counted; concurrency stays bounded; keys are
required for remote endpoints and never needed on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest

from benchmarks.backends.base import GenerateRequest, PartialBatchError
from benchmarks.backends.openai_backend import OpenAIBackend, _LoopThread, is_loopback
from methods.registry import BenchError

T = TypeVar("T")


def _completion(text: str) -> dict:
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


class _Script:
    """Per-request behaviour: a list of status codes (or 'sleep') consumed in order."""

    def __init__(self, steps: list[object], delay: float = 0.0):
        self.steps = list(steps)
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = delay

    def next(self) -> object:
        with self.lock:
            self.requests += 1
            return self.steps.pop(0) if self.steps else 200


@pytest.fixture
def serve() -> Iterator[Callable[[_Script], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: _Script) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                step = script.next()
                with script.lock:
                    script.in_flight += 1
                    script.max_in_flight = max(script.max_in_flight, script.in_flight)
                try:
                    if step == "sleep":
                        time.sleep(1.0)
                        step = 200
                    time.sleep(script.delay)
                    if step == 200:
                        payload = json.dumps(_completion(f"echo:{body.get('prompt')}")).encode()
                    else:
                        payload = json.dumps({"error": {"message": f"status {step}"}}).encode()
                    self.send_response(int(step))  # type: ignore[call-overload]
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with script.lock:
                        script.in_flight -= 1

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _backend(url: str, **kw: object) -> OpenAIBackend:
    return OpenAIBackend("m", base_url=url, api="completions", backoff_s=0.01, **kw)  # type: ignore[arg-type]


def test_retries_on_429_and_5xx_are_counted(serve: Callable[[_Script], str]) -> None:
    script = _Script([429, 500, 503])
    with _backend(serve(script)) as backend:
        (result,) = backend.generate_batch([GenerateRequest("hi")])
    assert result.value[0].text == "echo:hi"
    assert result.retries == 3
    assert (result.prompt_tokens, result.completion_tokens) == (3, 2)
    assert script.requests == 4


def test_timeouts_are_retried(serve: Callable[[_Script], str]) -> None:
    script = _Script(["sleep"])
    with _backend(serve(script), timeout_s=0.3) as backend:
        (result,) = backend.generate_batch([GenerateRequest("x")])
    assert result.retries == 1 and result.value[0].text == "echo:x"


def test_giving_up_says_why_and_keeps_what_arrived(serve: Callable[[_Script], str]) -> None:
    script = _Script([500] * 50)
    with _backend(serve(script), max_retries=2, concurrency=1) as backend:
        with pytest.raises(PartialBatchError) as info:
            backend.generate_batch([GenerateRequest("a"), GenerateRequest("b")])
    assert "500" in str(info.value)
    assert script.requests == 6  # two requests, three attempts each


def test_client_errors_are_not_retried(serve: Callable[[_Script], str]) -> None:
    script = _Script([400])
    with _backend(serve(script)) as backend, pytest.raises(PartialBatchError, match="400"):
        backend.generate_batch([GenerateRequest("a")])
    assert script.requests == 1


def test_concurrency_is_bounded(serve: Callable[[_Script], str]) -> None:
    script = _Script([], delay=0.1)
    with _backend(serve(script), concurrency=3) as backend:
        results = backend.generate_batch([GenerateRequest(f"p{i}") for i in range(12)])
    assert [r.value[0].text for r in results] == [f"echo:p{i}" for i in range(12)]
    assert 1 < script.max_in_flight <= 3


class _CtrlCWhileWaiting(_LoopThread):
    """Ctrl-C lands in the thread that waits on a batch: its wait raises KeyboardInterrupt
    while the batch still runs on the loop. (Raised here rather than by a real SIGINT, whose
    delivery to the test's thread proved unreliable inside the full suite.)"""

    @staticmethod
    def _wait(future: Future[T]) -> T:
        time.sleep(0.2)
        raise KeyboardInterrupt


def test_ctrl_c_while_waiting_cancels_the_batch_on_the_loop() -> None:
    """The batch must be cancelled and unwound on the loop, or the interpreter exits with
    "Task was destroyed but it is pending!"."""
    io = _CtrlCWhileWaiting()
    unwound = threading.Event()

    async def batch() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            unwound.set()

    try:
        with pytest.raises(KeyboardInterrupt):
            io.run(batch())
        assert unwound.is_set()
        assert not asyncio.run_coroutine_threadsafe(_pending_tasks(), io.loop).result(5)
    finally:
        io.close()
    assert io.loop.is_closed()


def test_a_batch_error_does_not_cancel_other_threads_batches() -> None:
    io = _LoopThread()

    async def slow() -> str:
        await asyncio.sleep(0.3)
        return "done"

    async def broken() -> None:
        raise ValueError("boom")

    try:
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(io.run, slow())
            time.sleep(0.05)
            with pytest.raises(ValueError, match="boom"):
                io.run(broken())
            assert other.result(timeout=5) == "done"
    finally:
        io.close()


async def _pending_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


def test_keys(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert is_loopback("http://127.0.0.1:8000/v1") and is_loopback("http://localhost/v1")
    assert not is_loopback("https://api.example.com/v1") and not is_loopback(None)
    with pytest.raises(BenchError, match="no API key"):
        OpenAIBackend("gpt-4o-mini").check_ready()
    key_file = tmp_path / "key"
    key_file.write_text("sk-test-123\n")
    backend = OpenAIBackend("gpt-4o-mini", api_key_file=key_file)
    assert backend._api_key() == "sk-test-123"
    assert "sk-test" not in json.dumps(backend.identity())
    with pytest.raises(BenchError, match="unknown api"):
        OpenAIBackend("m", api="legacy")


def test_prompt_format_defaults_to_chat_and_follows_api() -> None:
    default = OpenAIBackend("m")
    assert (default.prompt_format, default.api) == ("chat", "chat")
    assert OpenAIBackend("m", api="completions").prompt_format == "raw"
    assert OpenAIBackend("m", prompt_format="raw").api == "completions"
    with pytest.raises(BenchError, match="openai backend: --api chat contradicts --prompt-format"):
        OpenAIBackend("m", api="chat", prompt_format="raw")
    with pytest.raises(BenchError, match="--system-prompt needs --prompt-format chat"):
        OpenAIBackend("m", api="completions", system_prompt="Be brief.")
    system = OpenAIBackend("m", system_prompt="Be brief.")
    assert system.identity() != default.identity()
    assert system.chat_messages("Hi") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]


def test_a_named_model_keeps_its_measured_prompt_format() -> None:
    """A registered real model served under its name (`bench serve --model NAME`) defaults to
    the format measured for it (`benchmarks.models`), not the hosted-API default."""
    from benchmarks.models import MODELS

    base = next(name for name, spec in MODELS.items() if spec.prompt_format == "raw")
    assert OpenAIBackend(base, base_url="http://127.0.0.1:9/v1").prompt_format == "raw"
    assert OpenAIBackend(base, prompt_format="chat").prompt_format == "chat"  # given wins
    assert OpenAIBackend("gpt-4o-mini").prompt_format == "chat"
