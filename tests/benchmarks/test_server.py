"""The OpenAI-compatible server: one real subprocess on 127.0.0.1, driven by the official
``openai`` client and by plain HTTP, checked against the same model loaded in process."""

from __future__ import annotations

import base64
import copy
import json
import os
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from benchmarks.engine import HFEngine
from benchmarks.faults import FaultSpec
from benchmarks.server import API_KEY_ENV, ServerHandle, create_app, main, start_server
from benchmarks.tiny import tiny_model_dir, torch_threads
from methods.registry import BenchError

KEY = "sk-test-0123456789"
MODEL = "tiny"
PROMPT = "Q: Tom has 3 apples and buys 4 more. How many apples? A:"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.load(tiny_model_dir(), device="cpu")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with start_server(tiny_model_dir(), model_name=MODEL, api_key=KEY, grey_box=True) as handle:
        yield handle
    assert not handle.is_alive()


@pytest.fixture(scope="module")
def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(server: ServerHandle) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as session:
        yield session


def assert_error(reply: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


def test_models(client: openai.OpenAI, server: ServerHandle) -> None:
    assert server.is_alive() and server.pid > 0
    assert server.base_url.startswith("http://127.0.0.1:") and server.base_url.endswith("/v1")
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and models[0].owned_by == "blackbox-bench"
    capabilities = models[0].model_extra["capabilities"]  # type: ignore[index]
    assert capabilities == ["generate", "logprobs", "score", "next_token_logits", "prompt_embeds"]


def test_completions_match_the_engine(client: openai.OpenAI, engine: HFEngine) -> None:
    prompts = [PROMPT, "yes"]
    reply = client.completions.create(
        model=MODEL, prompt=prompts, n=3, temperature=0.8, max_tokens=8, seed=5
    )
    assert reply.object == "text_completion" and reply.model == MODEL
    local = engine.generate(prompts, n=3, temperature=0.8, max_tokens=8, seed=5)
    # OpenAI's order: choice index = prompt index * n + sample index.
    assert [c.index for c in reply.choices] == list(range(6))
    assert [c.text for c in reply.choices] == [s.text for g in local for s in g.samples]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == sum(engine.count_tokens(p) for p in prompts)
    assert reply.usage.completion_tokens == sum(g.completion_tokens for g in local)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    single = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0)
    assert single.choices[0].text == local_greedy(engine, PROMPT, 5)
    assert single.choices[0].finish_reason == "length" and single.usage is not None
    assert single.usage.completion_tokens == 5


def local_greedy(engine: HFEngine, prompt: str, max_tokens: int, **options: Any) -> str:
    return engine.generate([prompt], max_tokens=max_tokens, **options)[0].samples[0].text


def test_completion_stop_and_logprobs(client: openai.OpenAI, engine: HFEngine) -> None:
    full = local_greedy(engine, PROMPT, 20)
    stop = full[5:8]
    reply = client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop], logprobs=3
    )
    choice = reply.choices[0]
    assert choice.text == full[: full.index(stop)] and choice.finish_reason == "stop"
    sample = engine.generate([PROMPT], max_tokens=20, stop=[stop], logprobs=3)[0].samples[0]
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.tokens == list(sample.tokens)
    np.testing.assert_allclose(logprobs.token_logprobs or [], sample.token_logprobs, atol=1e-4)
    assert all(len(top) == 3 for top in logprobs.top_logprobs or [])
    for token, offset in zip(logprobs.tokens, logprobs.text_offset or [], strict=True):
        assert choice.text[offset : offset + len(token)] == token[: len(choice.text) - offset]


def test_echo_scores_a_continuation(client: openai.OpenAI, engine: HFEngine) -> None:
    prompt, continuation = "Q: Is the sky blue? A:", " yes it is"
    reply = client.completions.create(
        model=MODEL, prompt=prompt + continuation, max_tokens=0, echo=True, logprobs=1
    )
    choice = reply.choices[0]
    assert choice.text == prompt + continuation
    logprobs = choice.logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None
    assert logprobs.token_logprobs[0] is None and (logprobs.top_logprobs or [1])[0] is None
    offsets = logprobs.text_offset or []
    tail = [
        lp for lp, at in zip(logprobs.token_logprobs, offsets, strict=True) if at >= len(prompt)
    ]
    expected = engine.score([prompt], [continuation])[0]
    assert len(tail) == len(expected.tokens)
    np.testing.assert_allclose(tail, expected.token_logprobs, atol=1e-4)
    assert reply.usage is not None and reply.usage.completion_tokens == 0
    assert reply.usage.prompt_tokens == engine.count_tokens(prompt + continuation)


def test_chat(client: openai.OpenAI, engine: HFEngine) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=6,
        temperature=0,
        n=2,
        logprobs=True,
        top_logprobs=2,
    )
    assert reply.object == "chat.completion" and len(reply.choices) == 2
    sample = engine.generate([PROMPT], max_tokens=6, logprobs=2)[0].samples[0]
    for choice in reply.choices:
        assert choice.message.role == "assistant" and choice.message.content == sample.text
        content = choice.logprobs.content if choice.logprobs else None
        assert content is not None and [t.token for t in content] == list(sample.tokens)
        np.testing.assert_allclose([t.logprob for t in content], sample.token_logprobs, atol=1e-4)
        assert all(
            len(t.top_logprobs) == 2 and bytes(t.bytes or []) == t.token.encode() for t in content
        )
    assert reply.usage is not None and reply.usage.prompt_tokens == engine.count_tokens(PROMPT)
    assert reply.usage.completion_tokens == 12
    # Several messages: contents joined by a blank line (no chat template on a plain LM).
    multi = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_completion_tokens=4,
        temperature=0,
    )
    assert multi.choices[0].message.content == local_greedy(engine, "Be brief.\n\nHi", 4)
    assert multi.choices[0].logprobs is None


def test_plain_http_and_concurrency(http: httpx.Client, engine: HFEngine) -> None:
    body = {"model": MODEL, "prompt": "yes", "max_tokens": 4, "temperature": 0}
    reply = http.post("/completions", json=body)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    data = reply.json()
    assert data["choices"][0]["text"] == local_greedy(engine, "yes", 4)
    assert set(data["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    # Concurrent requests (micro-batched by the server) answer as if sent alone.
    prompts = [f"Q: {i} + {i} = ? A:" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda p: http.post("/completions", json={**body, "prompt": p}), prompts)
        )
    texts = [r.json()["choices"][0]["text"] for r in replies]
    assert texts == [local_greedy(engine, p, 4) for p in prompts]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"n": 0}, 400, None),
        ({"temperature": -0.5}, 400, None),
        ({"max_tokens": -1}, 400, None),
        ({"max_tokens": 100_000}, 400, None),
        ({"logprobs": 99}, 400, None),
        ({"model": "gpt-9"}, 404, "model_not_found"),
        ({"prompt": []}, 400, None),
        ({"prompt": "word " * 400}, 400, "context_length_exceeded"),
        ({"n": "many"}, 400, None),
        ({"stream": True}, 400, None),
    ],
)
def test_bad_requests(
    http: httpx.Client, change: dict[str, Any], status: int, code: str | None
) -> None:
    body = {"model": MODEL, "prompt": "yes", "max_tokens": 4, **change}
    assert_error(http.post("/completions", json=body), status, code)


def test_bad_requests_other_shapes(http: httpx.Client, client: openai.OpenAI) -> None:
    error = assert_error(http.post("/completions", json={"model": MODEL}), 400)
    assert error["param"] == "prompt"
    error = assert_error(
        http.post(
            "/completions", content=b"{not json", headers={"content-type": "application/json"}
        ),
        400,
    )
    assert "JSON" in error["message"]
    assert_error(http.post("/chat/completions", json={"model": MODEL, "messages": []}), 400)
    bad_role = {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}
    assert_error(http.post("/chat/completions", json=bad_role), 400)
    assert_error(http.get("/nowhere"), 404)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="yes", n=0)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_api_key(server: ServerHandle) -> None:
    url = f"{server.base_url}/models"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        reply = httpx.get(url, headers=headers)
        assert_error(reply, 401, "invalid_api_key")
        assert KEY not in reply.text and "wrong" not in reply.text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()


def decode_array(payload: dict[str, Any]) -> np.ndarray:
    raw = base64.b64decode(payload["data"])
    return np.frombuffer(raw, dtype="<f4").reshape(payload["shape"])


def test_grey_box_endpoints(http: httpx.Client, engine: HFEngine) -> None:
    prompts = [PROMPT, "yes"]
    reply = http.post("/bench/next_token_logprobs", json={"model": MODEL, "prompts": prompts})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["object"] == "next_token_logprobs" and data["shape"] == [2, engine.vocab_size]
    np.testing.assert_allclose(decode_array(data), engine.next_token_logprobs(prompts), atol=1e-5)
    assert data["usage"]["prompt_tokens"] == sum(engine.count_tokens(p) for p in prompts)

    dim, mean, std = engine.embedding_stats()
    soft = np.random.default_rng(1).normal(mean, std, (3, dim)).astype("<f4")
    encoded = {"shape": [3, dim], "data": base64.b64encode(soft.tobytes()).decode()}
    reply = http.post(
        "/bench/next_token_logprobs",
        json={"model": MODEL, "prompts": prompts, "soft_prompt": encoded},
    )
    expected = engine.next_token_logprobs(prompts, soft_prompt=soft)
    np.testing.assert_allclose(decode_array(reply.json()), expected, atol=1e-5)

    vocab = http.get("/bench/vocabulary").json()
    assert vocab["model"] == MODEL and vocab["tokens"] == engine.vocabulary()
    stats = http.get("/bench/embedding_stats").json()
    assert (stats["dim"], stats["mean"], stats["std"]) == pytest.approx((dim, mean, std))

    for bad in (
        {"shape": [3, dim], "data": "!!not base64!!"},
        {"shape": [2, dim], "data": encoded["data"]},
        {
            "shape": [3, dim + 1],
            "data": base64.b64encode(np.zeros((3, dim + 1), "<f4").tobytes()).decode(),
        },
    ):
        body = {"model": MODEL, "prompts": prompts, "soft_prompt": bad}
        assert_error(http.post("/bench/next_token_logprobs", json=body), 400)
    assert_error(http.post("/bench/next_token_logprobs", json={"model": MODEL, "prompts": []}), 400)


def test_grey_box_disabled(engine: HFEngine) -> None:
    app = create_app(engine, model_name=MODEL, grey_box=False)
    with TestClient(app) as local:
        models = local.get("/v1/models").json()["data"]
        assert models[0]["capabilities"] == ["generate", "logprobs", "score"]
        body = {"model": MODEL, "prompts": ["yes"]}
        assert_error(local.post("/v1/bench/next_token_logprobs", json=body), 404)
        assert_error(local.get("/v1/bench/vocabulary"), 404)
        assert_error(local.get("/v1/bench/embedding_stats"), 404)
        # No key configured: no header needed.
        ok = local.post("/v1/completions", json={"model": MODEL, "prompt": "yes", "max_tokens": 2})
        assert ok.status_code == 200


def test_chat_template_is_used_when_present(engine: HFEngine) -> None:
    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    templated = HFEngine(engine.model, tokenizer, device="cpu")
    rendered = "<|endoftext|>system: Be brief.\n<|endoftext|>user: Hi\nassistant:"
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.eos_token_id) == 2  # special tokens in the template stay special
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    with TestClient(create_app(templated, model_name=MODEL)) as local:
        body = {"model": MODEL, "messages": messages, "max_tokens": 3, "temperature": 0}
        reply = local.post("/v1/chat/completions", json=body).json()
    assert reply["usage"]["prompt_tokens"] == len(ids)
    expected = engine.generate([ids], max_tokens=3)[0].samples[0].text
    assert reply["choices"][0]["message"]["content"] == expected


def test_start_failures_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BenchError, match="not a directory"):
        start_server(tmp_path / "missing", model_name=MODEL)
    with pytest.raises(BenchError, match="non-loopback"):
        start_server(tiny_model_dir(), model_name=MODEL, host="0.0.0.0")
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["--model-dir", str(tiny_model_dir()), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "non-loopback" in capsys.readouterr().err
    # A directory that looks like a model but is not.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (broken / "model.safetensors").write_bytes(b"junk")
    assert main(["--model-dir", str(broken), "--port", "0"]) == 2
    # refused from its weights header, naming the file, before anything is loaded
    assert "model.safetensors: not a valid safetensors file" in capsys.readouterr().err
    # The child dies (its port is taken): the error carries the child's last words.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BenchError, match=r"exited with code 2(.|\n)*cannot bind"):
            start_server(tiny_model_dir(), model_name=MODEL, port=port, timeout_s=30)


def test_next_token_takes_messages_rendered_as_chat(engine: HFEngine) -> None:
    tokenizer = copy.deepcopy(engine.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    templated = HFEngine(engine.model, tokenizer, device="cpu")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = tokenizer(
        "<|endoftext|>system: Be brief.\n<|endoftext|>user: Hi\nassistant:",
        add_special_tokens=False,
    )["input_ids"]
    url = "/v1/bench/next_token_logprobs"
    with TestClient(create_app(templated, model_name=MODEL, grey_box=True)) as local:
        reply = local.post(url, json={"model": MODEL, "messages": [messages, messages]}).json()
        both = local.post(url, json={"model": MODEL, "messages": [messages], "prompts": ["Hi"]})
        neither = local.post(url, json={"model": MODEL})
    rows = np.frombuffer(base64.b64decode(reply["data"]), dtype="<f4").reshape(reply["shape"])
    assert rows.shape[0] == 2
    np.testing.assert_allclose(rows[0], templated.next_token_logprobs([ids])[0], atol=1e-5)
    assert reply["usage"]["prompt_tokens"] == 2 * len(ids)
    assert both.status_code == neither.status_code == 400
    assert "prompts or messages" in both.json()["error"]["message"]


def test_leftovers_of_dead_runs_are_cleared_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(gone.stdout)
    dead = tmp_path / f"bench-server-{dead_pid}-abc123"
    live = tmp_path / f"bench-server-{os.getpid()}-def456"
    unknown = tmp_path / "bench-server-q1w2e3r4"  # no owner in its name: not ours to judge
    for folder in (dead, live, unknown):
        folder.mkdir()
        (folder / "server.log").write_text("old")
    with start_server(tiny_model_dir(), model_name=MODEL) as handle:
        assert handle._workdir.parent == tmp_path
        assert handle._workdir.name.startswith(f"bench-server-{os.getpid()}-")
    assert not dead.exists() and live.is_dir() and unknown.is_dir()


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_bad_port_is_one_line_exit_2(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.cli import main as bench_main

    for run in (
        lambda: bench_main(["serve", "--model", str(tiny_model_dir()), "--port", port]),
        lambda: main(["--model-dir", str(tiny_model_dir()), "--port", port]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            run()
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "0-65535" in err[0] and port in err[0], err


# -- hostile requests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(engine: HFEngine) -> Iterator[TestClient]:
    """The app in process (no key), for requests a real client would never send."""
    with TestClient(create_app(engine, model_name=MODEL)) as session:
        yield session


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ('{"model": "tiny", "prompt": "\\ud800 x"}', "prompt"),
        ('{"model": "tiny", "prompt": ["ok", "x \\udfff"]}', "prompt"),
        ('{"model": "tiny", "prompt": "ok", "stop": ["\\ud800"]}', "stop"),
        ('{"model": "tiny\\ud800", "prompt": "ok"}', "model"),
    ],
)
def test_a_lone_surrogate_is_a_400_naming_the_field(
    local: TestClient, body: str, param: str
) -> None:
    reply = local.post(
        "/v1/completions", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert reply.status_code in (400, 404), reply.text
    error = reply.json()["error"]
    assert error["param"] == param and param in error["message"], error
    chat = '{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}'
    reply = local.post(
        "/v1/chat/completions", content=chat.encode(), headers={"content-type": "application/json"}
    )
    assert assert_error(reply, 400)["param"] == "messages"


def _asgi_post(app: Any, path: str, chunks: Iterator[bytes]) -> tuple[int, bytes, int]:
    """POST a chunked body (no Content-Length) straight through ASGI; returns the status, the
    body of the answer and how many chunks the app read."""
    import asyncio

    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        chunk = next(chunks, None)
        if chunk is None:
            await asyncio.sleep(3600)  # never: the body has ended
        read += 1
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json"),
                                     (b"transfer-encoding", b"chunked")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip

    async def main() -> None:
        await asyncio.wait_for(app(scope, receive, send), 60)

    asyncio.run(main())
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, read


def test_a_chunked_body_over_the_limit_is_refused_while_reading(engine: HFEngine) -> None:
    from benchmarks.server import MAX_BODY_BYTES

    megabyte = b'{"model": "tiny", "prompt": "' + b"x" * (2**20 - 29)
    chunks = iter([megabyte, *([b"x" * 2**20] * 19)])  # 20 MB, never finished
    for faults in (None, FaultSpec(rate=0.0)):
        app = create_app(engine, model_name=MODEL, faults=faults)
        status, body, read = _asgi_post(app, "/v1/completions", iter(list(chunks)))
        assert status == 413, body
        assert read <= MAX_BODY_BYTES // 2**20 + 1  # stopped at the limit, not at the end
        assert b"request_too_large" in body
        chunks = iter([megabyte, *([b"x" * 2**20] * 19)])


def test_the_work_one_request_can_hold_is_bounded(
    local: TestClient, engine: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    longest = 0
    encode = engine.encode

    def measured(prompt: Any) -> list[int]:
        nonlocal longest
        longest = max(longest, len(prompt))
        return encode(prompt)

    monkeypatch.setattr(engine, "encode", measured)
    # 15 MB of text that cannot fit the window: refused before it is tokenized.
    huge = {"model": MODEL, "prompt": "word " * 3_000_000, "max_tokens": 1}
    error = assert_error(local.post("/v1/completions", json=huge), 400, "context_length_exceeded")
    assert longest < 100_000 and "prompt" in error["message"]
    from benchmarks.server import MAX_REQUEST_TOKENS

    many = {"model": MODEL, "prompt": ["word " * 20] * 1000, "n": 128, "max_tokens": 100}
    error = assert_error(local.post("/v1/completions", json=many), 400)
    assert f"{MAX_REQUEST_TOKENS:,}" in error["message"] and error["param"] == "n"
    # Within the bound it answers (greedy samples are decoded once, so n costs nothing).
    fine = {**many, "prompt": ["word"] * 16, "n": 4, "max_tokens": 2, "temperature": 0}
    assert local.post("/v1/completions", json=fine).status_code == 200


def _asgi_call(
    app: Any, body: dict[str, Any], gone: Any = None, path: str = "/v1/completions"
) -> Any:
    """One POST through ASGI whose client goes away when the event ``gone`` is set (never,
    when None); a coroutine giving the status it was answered (None: no answer)."""
    import asyncio
    import json as json_module

    payload = json_module.dumps(body).encode()
    delivered = False
    answer: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await (gone.wait() if gone is not None else asyncio.sleep(3600))
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.append(message["status"])

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip

    async def call() -> int | None:
        await asyncio.wait_for(app(scope, receive, send), 60)
        return answer[0] if answer else None

    return call()


def test_a_request_whose_client_left_is_dropped_before_it_runs(
    engine: HFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio
    import threading

    calls: list[list[Any]] = []
    release = threading.Event()
    generate = engine.generate

    def held(prompts: list[Any], **options: Any) -> Any:
        calls.append(list(prompts))
        if len(calls) == 1:
            release.wait(30)  # the first request keeps the engine busy
        return generate(prompts, **options)

    monkeypatch.setattr(engine, "generate", held)
    app = create_app(engine, model_name=MODEL)
    body = {"model": MODEL, "prompt": "yes", "max_tokens": 3, "temperature": 0}

    async def scenario() -> tuple[int | None, int | None]:
        first = asyncio.ensure_future(_asgi_call(app, body))
        for _ in range(500):
            if calls:
                break
            await asyncio.sleep(0.01)
        gone = asyncio.Event()
        second = asyncio.ensure_future(_asgi_call(app, {**body, "prompt": "no"}, gone))
        await asyncio.sleep(0.2)  # queued behind the first
        gone.set()  # its client goes away
        await asyncio.sleep(0.1)
        release.set()
        return await first, await second

    first, second = asyncio.run(scenario())
    assert first == 200 and second == 499
    assert len(calls) == 1, calls  # the second request never reached the engine


def test_a_long_generation_stops_when_told(engine: HFEngine) -> None:
    from benchmarks.engine import GenerationCancelled

    steps = 0

    def stop() -> bool:
        nonlocal steps
        steps += 1
        return steps > 3

    with pytest.raises(GenerationCancelled):
        engine.generate(["yes"] * 100, n=2, temperature=1.0, max_tokens=50, should_stop=stop)
    assert steps == 4  # noticed between decoding steps, not after the 200 rows


def test_ready_line_names_address_model_capabilities_and_key(server: ServerHandle) -> None:
    """`bench serve` says once it is ready where it listens, what it serves and whether a
    key is needed (never the key itself)."""
    log = server.log_tail(50)
    assert server.base_url in log, log
    ready = [line for line in log.splitlines() if server.base_url in line]
    assert len(ready) == 1 and MODEL in ready[0]
    assert "next_token_logits" in log and "generate" in log
    assert API_KEY_ENV in log and "required" in log
    assert KEY not in log


def test_prompts_given_as_token_ids_answer_as_their_text(
    http: httpx.Client, engine: HFEngine
) -> None:
    """The completions API takes a prompt as token ids (a list of ints) and a batch of such
    (a list of lists): each answers as the text those ids decode to would."""
    ids = engine.encode(PROMPT)
    body = {"model": MODEL, "max_tokens": 5, "temperature": 0}
    text = http.post("/completions", json={**body, "prompt": PROMPT}).json()
    one = http.post("/completions", json={**body, "prompt": ids})
    assert one.status_code == 200, one.text
    assert one.json()["choices"][0]["text"] == text["choices"][0]["text"]
    assert one.json()["usage"]["prompt_tokens"] == len(ids)
    two = http.post("/completions", json={**body, "prompt": [ids, ids[:5]]})
    assert two.status_code == 200, two.text
    assert len(two.json()["choices"]) == 2
    assert two.json()["choices"][0]["text"] == text["choices"][0]["text"]
    echo = http.post("/completions", json={**body, "prompt": ids, "echo": True})
    assert echo.json()["choices"][0]["text"].startswith(engine.decode(ids))
    # ids outside the vocabulary and empty id lists are a 400 naming the prompt
    for bad in ([engine.vocab_size], [-1], [[]], [ids, [True]]):
        assert_error(http.post("/completions", json={**body, "prompt": bad}), 400)
