"""Fault injection: the server's fault mode fails a seeded share of requests the way real APIs
do (429, 500, 503, timeouts, truncated bodies, malformed JSON); the openai backend survives
every kind, counts one retry per fault, and a whole `bench run` under 20% faults gives the
same predictions as a run without faults."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from benchmarks.backends.base import GenerateRequest
from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.cli import main
from benchmarks.engine import HFEngine
from benchmarks.faults import FAULT_KINDS, STATS_PATH, FaultInjector, FaultSpec
from benchmarks.results import RunStore
from benchmarks.server import ServerHandle, create_app, start_server
from benchmarks.tiny import tiny_model_dir, torch_threads
from methods.registry import BenchError
from tests.benchmarks.conftest import tiny_run_argv

FAULT_RATE = 0.2
FAULT_SEED = 7


# -- the injector on its own ------------------------------------------------------------------


def test_decisions_are_seeded_per_request_and_attempt() -> None:
    def draws(seed: int, order: list[int]) -> dict[tuple[int, int], str | None]:
        injector = FaultInjector(lambda s, r, w: None, FaultSpec(0.3, seed=seed))  # type: ignore[arg-type,return-value]
        out = {}
        for i in order:
            for attempt in range(3):
                out[(i, attempt)] = injector.decide("POST", "/v1/completions", b"body %d" % i)
        return out

    forward = draws(1, list(range(300)))
    # Arrival order does not matter: the n-th attempt of a request meets the same fate.
    assert draws(1, list(reversed(range(300)))) == forward
    assert draws(2, list(range(300))) != forward
    kinds = [k for k in forward.values() if k is not None]
    assert 0.25 < len(kinds) / len(forward) < 0.35  # the rate, within sampling noise
    assert set(kinds) == set(FAULT_KINDS)  # every kind is drawn


def test_fault_spec_is_validated() -> None:
    with pytest.raises(BenchError, match=r"fault rate must be in \[0, 1\]"):
        FaultSpec(1.5)
    with pytest.raises(BenchError, match="unknown fault kind 'teapot'; valid: 429"):
        FaultSpec(0.1, kinds=("teapot",))
    with pytest.raises(BenchError, match="delay"):
        FaultSpec(0.1, delay_s=0)


@pytest.fixture(scope="module")
def engine() -> HFEngine:
    return HFEngine.load(tiny_model_dir(), device="cpu")


@pytest.mark.parametrize("kind", ["429", "500", "503", "malformed"])
def test_each_kind_answers_as_a_real_api_would(engine: HFEngine, kind: str) -> None:
    app = create_app(engine, model_name="tiny", faults=FaultSpec(1.0, kinds=(kind,)))
    body = {"model": "tiny", "prompt": "Q: 1\nA:", "max_tokens": 2}
    with TestClient(app) as http:
        reply = http.post("/v1/completions", json=body)
        stats = http.get(STATS_PATH).json()
        models = http.get("/v1/models")  # GETs are never faulted: readiness checks work
    assert models.status_code == 200
    assert stats["injected"] == {kind: 1} and stats["requests"] == 1
    if kind == "malformed":
        assert reply.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(reply.content)
    else:
        assert reply.status_code == int(kind)
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


def test_a_wrong_key_is_refused_not_faulted(engine: HFEngine) -> None:
    app = create_app(engine, model_name="tiny", api_key="sk-right", faults=FaultSpec(1.0))
    with TestClient(app) as http:
        reply = http.post(
            "/v1/completions",
            json={"model": "tiny", "prompt": "x"},
            headers={"Authorization": "Bearer sk-wrong"},
        )
    assert reply.status_code == 401 and reply.json()["error"]["code"] == "invalid_api_key"


# -- the openai backend against every kind, over a real socket ------------------------------


async def _stub_completions(scope: Any, receive: Any, send: Any) -> None:
    """A model-free OpenAI completions endpoint: echoes the prompt."""
    if scope["type"] != "http":
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    prompt = json.loads(raw)["prompt"]
    payload = json.dumps(
        {
            "id": "cmpl-1",
            "object": "text_completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "text": f"echo:{prompt}", "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
def faulty_stub() -> Iterator[tuple[str, FaultInjector]]:
    injector = FaultInjector(_stub_completions, FaultSpec(0.5, seed=3, delay_s=1.5))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(injector, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1", injector
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_backend_survives_every_kind_and_counts_each_retry(
    faulty_stub: tuple[str, FaultInjector],
) -> None:
    url, injector = faulty_stub
    backend = OpenAIBackend(
        "m", base_url=url, api="completions", timeout_s=0.5, backoff_s=0.01, max_retries=12
    )
    with backend:
        results = backend.generate_batch([GenerateRequest(f"p{i}") for i in range(60)])
    assert [r.value[0].text for r in results] == [f"echo:p{i}" for i in range(60)]
    stats = injector.stats()
    assert set(stats["injected"]) == set(FAULT_KINDS), stats
    # Each injected fault cost exactly one retry, and every retry is reported.
    assert sum(r.retries for r in results) == stats["total"] > 0
    print(f"\nbackend vs stub: {stats['total']} faults injected {stats['injected']}, all survived")


# -- a whole run under faults -------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tiny_server: ServerHandle) -> Iterator[tuple[str, str]]:
    """The tiny model served twice: cleanly, and with 20% faults (timeouts stall 4 s, past
    the 2 s client timeout the run below uses)."""
    faults = FaultSpec(FAULT_RATE, seed=FAULT_SEED, delay_s=4.0)
    with torch_threads(1), start_server(tiny_model, model_name="tiny", faults=faults) as faulty:
        yield tiny_server.base_url, faulty.base_url


def _run(url: str, results: Path, cache: Path, *extra: str) -> int:
    return main(
        tiny_run_argv(
            url,
            *("--run-id", "r", "--results-dir", str(results), "--cache-dir", str(cache)),
            *("--request-timeout", "2", "--max-retries", "10", *extra),
            # one prompt per HTTP request (chat), so that dozens of requests meet the 20% rate
            # whatever their content (prompt lists made three, which may all pass)
            "--api",
            "chat",
            limit=16,
        )
    )


def test_run_under_20_percent_faults_matches_a_fault_free_run(
    tmp_path: Path, servers: tuple[str, str]
) -> None:
    clean_url, faulty_url = servers
    assert _run(clean_url, tmp_path / "clean", tmp_path / "clean-cache") == 0
    assert _run(faulty_url, tmp_path / "faulty", tmp_path / "faulty-cache") == 0
    clean, faulty = RunStore(tmp_path / "clean" / "r"), RunStore(tmp_path / "faulty" / "r")
    clean_cells = {c.cell_id: c for c in clean.cells()}
    faulty_cells = {c.cell_id: c for c in faulty.cells()}
    assert set(clean_cells) == set(faulty_cells) and len(clean_cells) == 4
    for cid, record in faulty_cells.items():
        assert record.status == "ok", record.reason
        assert record.accuracy == clean_cells[cid].accuracy
        assert faulty.predictions(cid) == clean.predictions(cid)
        assert clean_cells[cid].usage["retries"] == 0
    stats = httpx.get(faulty_url.removesuffix("/v1") + STATS_PATH).json()
    retries = sum(c.usage["retries"] for c in faulty_cells.values())
    # Every fault was survived by one retry, and the retries are in the results.
    assert stats["total"] > 0 and retries == stats["total"], stats
    calls = sum(c.usage["calls"] - c.usage["cache_hits"] for c in faulty_cells.values())
    print(
        f"\nrun under faults: {stats['requests']} requests, {stats['total']} faults injected "
        f"({stats['injected']}), {retries} retries recorded, {calls} calls, "
        f"{len(faulty_cells)} cells identical to the fault-free run"
    )
