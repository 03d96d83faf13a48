"""The openai backend probes what an endpoint offers (hardening 27) and scores through echo
only as far as the endpoint's answer can be trusted (hardening 25): against servers that
read ``max_tokens=0`` as "no limit", that echo without token offsets, that refuse echo or
log-probabilities, and against the project's own server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from benchmarks.backends.base import GenerateRequest, ScoreRequest
from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.cli import main
from benchmarks.results import RunStore
from benchmarks.server import ServerHandle
from methods.base import GENERATE, LOGPROBS, NEXT_TOKEN_LOGITS, SCORE
from methods.registry import BenchError
from tests.benchmarks.conftest import tiny_run_argv

#: every token of the fake's echo scores this; every token it generates, GENERATED_LP.
ECHO_LP, GENERATED_LP = -1.0, -7.0
#: tokens the fake generates after an echo when asked for max_tokens=0 ("no limit").
RUNAWAY = 10


def _tokens(text: str) -> list[str]:
    """The fake's tokenizer: words with their leading whitespace."""
    return re.findall(r"\s*\S+", text)


class _Fake(BaseHTTPRequestHandler):
    """An OpenAI-compatible completions server with one of several quirks.

    ``quirk``: "runaway" (max_tokens=0 means no limit), "no-offsets" (echo without
    ``text_offset``), "no-echo" (400 to echo), "no-logprobs" (answers without logprobs),
    "no-model" (404 to everything). Every request body is kept in ``seen``.
    """

    quirk = "runaway"
    seen: list[dict[str, Any]]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        self.seen.append(body)
        if self.quirk == "no-model":
            self._send(404, {"error": {"message": "The model `m` does not exist"}})
            return
        if body.get("echo") and self.quirk == "no-echo":
            self._send(400, {"error": {"message": "echo is not supported"}})
            return
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        asked = int(body.get("max_tokens", 16))
        new = RUNAWAY if asked == 0 and self.quirk == "runaway" else asked
        choices, completion_tokens = [], 0
        for i, prompt in enumerate(prompts):
            generated = [" yes"] * new
            tokens = [*(_tokens(prompt) if body.get("echo") else []), *generated]
            lps = [ECHO_LP] * (len(tokens) - new) + [GENERATED_LP] * new
            offsets, at = [], 0
            for tok in tokens:
                offsets.append(at)
                at += len(tok)
            wants = body.get("logprobs") is not None and self.quirk != "no-logprobs"
            logprobs = {
                "tokens": tokens,
                "token_logprobs": [None, *lps[1:]] if body.get("echo") else lps,
                "top_logprobs": [{t: lp} for t, lp in zip(tokens, lps, strict=True)],
                "text_offset": None if self.quirk == "no-offsets" else offsets,
            }
            text = (prompt if body.get("echo") else "") + "".join(generated)
            choices.append(
                {
                    "index": i,
                    "text": text,
                    "finish_reason": "length",
                    "logprobs": logprobs if wants else None,
                }
            )
            completion_tokens += new
        prompt_tokens = sum(len(_tokens(p)) for p in prompts)
        self._send(
            200,
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 0,
                "model": body["model"],
                "choices": choices,
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


@pytest.fixture
def fake() -> Iterator[Callable[[str], tuple[str, list[dict[str, Any]]]]]:
    """Start a fake with a quirk: (base URL, the request bodies it receives)."""
    servers: list[ThreadingHTTPServer] = []

    def start(quirk: str) -> tuple[str, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Fake,), {"quirk": quirk, "seen": seen})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen

    yield start
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def _backend(url: str, **kw: Any) -> OpenAIBackend:
    return OpenAIBackend("m", base_url=url, api="completions", backoff_s=0.001, **kw)


def test_scoring_counts_the_continuation_only_on_a_server_that_generates_after_echo(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]],
) -> None:
    url, seen = fake("runaway")
    with _backend(url) as backend:
        backend.check_ready()
        assert SCORE in backend.capabilities
        seen.clear()
        (result,) = backend.score_batch([ScoreRequest("Q: is it? A:", " yes")])
    # The answer's one token: not the 10 a max_tokens=0 request would have run on for.
    assert result.value.tokens == (" yes",)
    assert sum(result.value.token_logprobs) == ECHO_LP
    (body,) = seen
    assert body["echo"] is True and body["max_tokens"] == 1  # at most one new token, dropped
    assert result.completion_tokens == 1  # which is still billed


def test_the_projects_server_is_asked_for_no_new_token(tiny_server: ServerHandle) -> None:
    with OpenAIBackend("tiny", base_url=tiny_server.base_url, api="completions") as backend:
        backend.check_ready()
        (result,) = backend.score_batch([ScoreRequest("Q: 1 + 1\nA:", " 2")])
        record = backend.endpoint_record()
    assert backend.echo_max_tokens == 0  # its card says it generates nothing then
    assert result.completion_tokens == 0 and result.value.tokens
    assert record["source"] == "probed" and record["echo_max_tokens"] == 0
    assert set(record["probe"].values()) == {"ok"}
    assert {GENERATE, LOGPROBS, SCORE} <= set(record["capabilities"])


def test_the_chat_api_offers_no_score_and_says_why(tiny_server: ServerHandle) -> None:
    with OpenAIBackend("tiny", base_url=tiny_server.base_url, api="chat") as backend:
        backend.check_ready()
    assert LOGPROBS in backend.capabilities and SCORE not in backend.capabilities
    assert "chat API" in (backend.why_not(SCORE) or "")


@pytest.mark.parametrize(
    ("quirk", "lacks", "why"),
    [
        ("no-offsets", SCORE, "no token offsets"),
        ("no-echo", SCORE, "echo is not supported"),
        ("no-logprobs", LOGPROBS, "no log-probabilities"),
    ],
)
def test_a_capability_the_endpoint_does_not_honour_is_not_offered(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]], quirk: str, lacks: str, why: str
) -> None:
    url, _ = fake(quirk)
    with _backend(url) as backend:
        backend.check_ready()
    assert GENERATE in backend.capabilities
    assert lacks not in backend.capabilities  # a loopback address used to promise score
    assert why in (backend.why_not(lacks) or "")


def test_an_echo_without_offsets_fails_without_retries(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]],
) -> None:
    url, seen = fake("no-offsets")
    # Declared by hand, so no probe stands in the way: the answer itself is refused.
    with _backend(url, capabilities="generate,score") as backend:
        backend.check_ready()
        assert not seen  # nothing probed
        with pytest.raises(BenchError, match="without token offsets"):
            backend.score_batch([ScoreRequest("Q: is it? A:", " yes")])
    assert len(seen) == 1


def test_each_endpoint_is_probed_once(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]],
) -> None:
    url, seen = fake("runaway")
    with _backend(url) as first:
        first.check_ready()
    probes = len(seen)
    assert probes == 3  # generate, logprobs, score
    with _backend(url) as again:
        again.check_ready()
        again.generate_batch([GenerateRequest("Q: 1\nA:", max_tokens=1)])
    assert len(seen) == probes + 1
    assert again.capabilities == first.capabilities


def test_an_endpoint_that_cannot_generate_is_one_line(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]],
) -> None:
    url, _ = fake("no-model")
    with _backend(url) as backend, pytest.raises(BenchError) as caught:
        backend.check_ready()
    message = str(caught.value)
    assert "cannot generate with model m" in message and "does not exist" in message
    assert "\n" not in message


def test_the_plan_follows_the_probe_and_run_json_records_it(
    fake: Callable[[str], tuple[str, list[dict[str, Any]]]], tmp_path: Path
) -> None:
    url, _ = fake("no-offsets")
    secret_url = url.replace("http://", "http://user:SECRETPW@") + "?api_key=SECRETKEY"
    argv = tiny_run_argv(
        secret_url,
        "--run-id",
        "probe",
        "--results-dir",
        str(tmp_path / "results"),
        "--cache-dir",
        str(tmp_path / "cache"),
        methods="zero-shot-likelihood,zero-shot",
        seeds="0",
        limit=2,
    )
    argv[argv.index("--model") + 1] = "m"
    assert main(argv) == 0
    store = RunStore(tmp_path / "results" / "probe")
    cells = {r.method: r for r in store.cells()}
    refused = cells["zero-shot-likelihood"]
    assert refused.status == "refused"
    assert "score" in (refused.reason or "") and "no token offsets" in (refused.reason or "")
    assert cells["zero-shot"].status == "ok"
    spec_text = (store.root / "run.json").read_text(encoding="utf-8")
    assert "SECRET" not in spec_text
    endpoint = json.loads(spec_text)["endpoints"]["black_box"]
    assert endpoint["source"] == "probed"
    assert endpoint["capabilities"] == sorted([GENERATE, LOGPROBS])
    assert "no token offsets" in endpoint["probe"][SCORE]
    assert endpoint["probe_tokens"]["prompt"] > 0
    assert NEXT_TOKEN_LOGITS not in endpoint["probe"]  # an extension no card advertised
