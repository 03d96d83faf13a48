"""Fault injection for the project's server: the failures a real API has, at a set rate.

`FaultInjector` is ASGI middleware that answers a share of the inference requests (POSTs
under ``/v1/``) with one of:

- ``429``, ``500``, ``503``: an OpenAI-style error body with that status;
- ``timeout``: nothing for ``delay_s`` seconds (set it past the client's timeout), then a 504;
- ``truncated``: a 200 whose body stops halfway and whose connection is dropped;
- ``malformed``: a complete 200 whose body is not valid JSON.

A faulted request never reaches the model. Which attempt fails is decided by a hash of the
seed, the request (method, path, body) and how many times this server has seen that same
request, so a rerun with the same seed and the same requests meets the same faults whatever
the order in which concurrent requests arrive. ``GET /v1/bench/faults`` reports the counts.

Use it with ``bench serve --faults 0.2 --fault-seed 1``, ``start_server(faults=...)`` or
``create_app(faults=...)``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from methods.registry import BenchError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

FAULT_KINDS: tuple[str, ...] = ("429", "500", "503", "timeout", "truncated", "malformed")
STATS_PATH = "/v1/bench/faults"

_ERRORS = {
    "429": ("Rate limit reached (injected fault).", "rate_limit_error", "rate_limit_exceeded"),
    "500": ("The server had an error (injected fault).", "server_error", None),
    "503": ("The server is overloaded (injected fault).", "server_error", "overloaded"),
    "timeout": ("The request timed out (injected fault).", "server_error", "timeout"),
}
#: what a cut-off completion looks like: a JSON prefix (the Content-Length promises more).
_TRUNCATED = b'{"id": "cmpl-fault", "object": "text_completion", "choices": [{"index": 0, "te'
#: a complete answer that is not JSON.
_MALFORMED = b'{"id": "cmpl-fault", "choices": [{"index": 0, "text": "x"}, <html>oops</html>'


@dataclass(frozen=True)
class FaultSpec:
    """How often and how to fail.

    Attributes:
        rate: the share of inference requests (attempts) that fail, in [0, 1].
        seed: decides which attempts fail and how.
        kinds: the failures to draw from, with equal weight (see `FAULT_KINDS`).
        delay_s: how long a ``timeout`` fault keeps the client waiting.
    """

    rate: float
    seed: int = 0
    kinds: tuple[str, ...] = FAULT_KINDS
    delay_s: float = 65.0  # past the openai backend's default 60 s timeout

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise BenchError(f"fault rate must be in [0, 1], got {self.rate}")
        if not self.kinds:
            raise BenchError(f"no fault kinds given; valid: {', '.join(FAULT_KINDS)}")
        for kind in self.kinds:
            if kind not in FAULT_KINDS:
                raise BenchError(f"unknown fault kind {kind!r}; valid: {', '.join(FAULT_KINDS)}")
        if not self.delay_s > 0:
            raise BenchError(f"fault delay must be > 0 seconds, got {self.delay_s}")

    def argv(self) -> list[str]:
        """The server's command-line flags for this spec."""
        return [
            "--faults",
            str(self.rate),
            "--fault-seed",
            str(self.seed),
            "--fault-kinds",
            ",".join(self.kinds),
            "--fault-delay",
            str(self.delay_s),
        ]


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"429,timeout"`` -> ("429", "timeout"), checking each name."""
    kinds = tuple(t.strip() for t in text.split(",") if t.strip())
    FaultSpec(rate=0.0, kinds=kinds)  # validates
    return kinds


class FaultInjector:
    """ASGI middleware failing a seeded share of inference requests (see the module doc)."""

    def __init__(self, app: ASGIApp, spec: FaultSpec):
        self.app = app
        self.spec = spec
        self.requests = 0
        self.injected: Counter[str] = Counter()
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def decide(self, method: str, path: str, body: bytes) -> str | None:
        """The fault for this attempt of this request, or None to serve it."""
        digest = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()
        with self._lock:
            attempt = self._seen[digest]
            self._seen[digest] += 1
            self.requests += 1
            draw = hashlib.sha256(f"{self.spec.seed}:{digest}:{attempt}".encode()).digest()
            u = int.from_bytes(draw[:8], "big") / 2**64
            if u >= self.spec.rate:
                return None
            kind = self.spec.kinds[int.from_bytes(draw[8:16], "big") % len(self.spec.kinds)]
            self.injected[kind] += 1
            return kind

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "rate": self.spec.rate,
                "seed": self.spec.seed,
                "requests": self.requests,
                "injected": dict(self.injected),
                "total": sum(self.injected.values()),
            }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == STATS_PATH:
            await _respond(send, 200, json.dumps(self.stats()).encode())
            return
        if method != "POST" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
        kind = self.decide(method, path, bytes(body))
        if kind is None:
            await self.app(scope, _replay(bytes(body), receive), send)
        else:
            await self._fail(kind, send)

    async def _fail(self, kind: str, send: Send) -> None:
        if kind == "timeout":
            await asyncio.sleep(self.spec.delay_s)
        if kind in _ERRORS:
            message, type_, code = _ERRORS[kind]
            body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
            status = 504 if kind == "timeout" else int(kind)
            await _respond(send, status, json.dumps(body).encode())
        elif kind == "malformed":
            await _respond(send, 200, _MALFORMED)
        else:  # truncated: promise a longer body, send part of it, and return unfinished;
            # the server then drops the connection, as a proxy cut off mid-answer would.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(2 * len(_TRUNCATED)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _TRUNCATED, "more_body": True})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the already-read body once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """The fault-injection flags, shared by ``python -m benchmarks.server`` and `bench serve`."""
    parser.add_argument(
        "--faults",
        type=float,
        default=None,
        metavar="RATE",
        help="fail this share of inference requests (0-1) with 429, 500, 503, timeouts, "
        "truncated bodies or malformed JSON, for testing clients",
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="which requests fail")
    parser.add_argument(
        "--fault-kinds",
        default=None,
        help="comma-separated subset of 429,500,503,timeout,truncated,malformed (default all)",
    )
    parser.add_argument(
        "--fault-delay",
        type=float,
        default=65.0,
        metavar="SECONDS",
        help="how long a timeout fault stalls (set it past the client's timeout; default 65)",
    )


def fault_spec(args: argparse.Namespace) -> FaultSpec | None:
    """The `FaultSpec` of parsed `add_fault_arguments` flags (None without --faults)."""
    if args.faults is None:
        return None
    kinds = parse_kinds(args.fault_kinds) if args.fault_kinds else None
    return FaultSpec(
        rate=args.faults,
        seed=args.fault_seed,
        delay_s=args.fault_delay,
        **({"kinds": kinds} if kinds else {}),
    )
