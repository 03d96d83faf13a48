"""A server that ignores ``n`` (answers one choice per prompt): the openai backend falls back
to separate requests, never retries an answer that cannot change, and bills each answered
request."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.client import MeteredBlackBox
from benchmarks.metering import UsageMeter

PROMPT_TOKENS, COMPLETION_TOKENS = 3, 1


class _IgnoresN(BaseHTTPRequestHandler):
    """One choice per prompt whatever ``n`` asks; counts the requests and their ``n``."""

    seen: ClassVar[list[int]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(int(body.get("n", 1)))
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        reply: dict[str, Any] = {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": i,
                    "text": f" s{len(self.seen)}",
                    "finish_reason": "length",
                    "logprobs": None,
                }
                for i in range(len(prompts))
            ],
            "usage": {
                "prompt_tokens": PROMPT_TOKENS * len(prompts),
                "completion_tokens": COMPLETION_TOKENS * len(prompts),
                "total_tokens": (PROMPT_TOKENS + COMPLETION_TOKENS) * len(prompts),
            },
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _IgnoresN.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _IgnoresN)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_server_that_ignores_n_gets_separate_requests_all_billed(server: str) -> None:
    backend = OpenAIBackend("m", base_url=server, api="completions", backoff_s=0.001)
    meter = UsageMeter()
    box = MeteredBlackBox(backend, meter=meter)
    try:
        (four,) = box.generate(["Q: 1\nA:"], n=4, temperature=1.0, max_tokens=1)
        assert len(four) == 4
        # asked once with n=4 (one choice came back, not retried), then 3 requests of one
        assert _IgnoresN.seen == [4, 1, 1, 1], _IgnoresN.seen
        # every answered request billed
        summary = meter.summary()
        task = summary["billed"]["tune"]["task"]
        assert task["prompt_tokens"] == 4 * PROMPT_TOKENS
        assert task["completion_tokens"] == 4 * COMPLETION_TOKENS
        # known now: the next call with n > 1 goes out as separate requests at once
        _IgnoresN.seen.clear()
        (three,) = box.generate(["Q: 2\nA:"], n=3, temperature=1.0, max_tokens=1)
        assert len(three) == 3 and _IgnoresN.seen == [1, 1, 1]
    finally:
        backend.close()


def test_the_separate_requests_count_against_a_cap_on_calls(server: str) -> None:
    from benchmarks.errors import BudgetExhausted
    from benchmarks.metering import Limits, PriceTable, SpendingGuard

    backend = OpenAIBackend("m", base_url=server, api="completions", backoff_s=0.001)
    guard = SpendingGuard(PriceTable(), run=Limits(calls=3))
    box = MeteredBlackBox(backend, meter=UsageMeter(), guard=guard)
    try:
        with pytest.raises(BudgetExhausted, match="--max-calls 3"):
            # one call admitted; the 3 requests its missing samples need would make 4
            box.generate(["Q: 1\nA:"], n=4, temperature=1.0, max_tokens=1)
    finally:
        backend.close()
    assert _IgnoresN.seen == [4]  # none of the extra requests was sent
