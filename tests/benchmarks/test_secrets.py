"""Secrets and exposure: an API key given through the environment (or a file) never appears
in results, caches, reports, logs, console output or error messages, even when an endpoint
quotes it back; the server binds loopback unless told otherwise and then needs a key; and
nothing in the tree loads pickle, evaluates code or loads YAML unsafely."""

from __future__ import annotations

import ast
import json
import logging
import re
import secrets
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from benchmarks.backends.openai_backend import OpenAIBackend
from benchmarks.cli import main
from benchmarks.results import RunStore
from benchmarks.server import ServerHandle, start_server
from benchmarks.tiny import torch_threads
from tests.benchmarks.conftest import tiny_run_argv

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-bench-" + secrets.token_hex(16)
WRONG_KEY = "sk-wrong-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def keyed_server(tiny_model: Path) -> Iterator[ServerHandle]:
    with torch_threads(1), start_server(tiny_model, model_name="tiny", api_key=KEY) as handle:
        yield handle


@pytest.fixture
def leaky_endpoint() -> Iterator[str]:
    """An endpoint that quotes the bearer header back in its errors (as some APIs quote part
    of a rejected key): the client must mask it wherever the message goes."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, status: int, payload: dict) -> None:  # type: ignore[type-arg]
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200, {"object": "list", "data": [{"id": "tiny", "object": "model"}]})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            auth = self.headers.get("authorization", "")
            self._send(400, {"error": {"message": f"bad request from {auth}", "type": "x"}})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _run(url: str, tmp: Path, run_id: str, *extra: str) -> int:
    return main(
        tiny_run_argv(
            url,
            *("--run-id", run_id, "--results-dir", str(tmp / "results")),
            *("--cache-dir", str(tmp / "cache"), "--max-retries", "1", *extra),
            limit=4,
        )
    )


def test_the_key_appears_in_no_artifact_log_or_message(
    tmp_path: Path,
    keyed_server: ServerHandle,
    leaky_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # openai and httpx log requests at debug level
    monkeypatch.setenv("OPENAI_LOG", "debug")
    monkeypatch.setenv("BENCH_TEST_KEY", KEY)
    key_file = tmp_path / "keyfile"
    key_file.write_text(WRONG_KEY + "\n")
    url = keyed_server.base_url
    # 1. A run that succeeds, with the key from the environment.
    assert _run(url, tmp_path, "good", "--api-key-env", "BENCH_TEST_KEY") == 0
    cells = RunStore(tmp_path / "results" / "good").cells()
    assert len(cells) == 4 and all(c.status == "ok" for c in cells)
    # 2. A run whose calls fail with the key quoted back: every cell fails, messages masked
    # (capabilities declared, so no probe refuses the endpoint first).
    leaky = ("--api-key-env", "BENCH_TEST_KEY", "--no-cache")
    code = _run(leaky_endpoint, tmp_path, "leaky", *leaky, "--capabilities", "generate")
    assert code == 1
    failed = RunStore(tmp_path / "results" / "leaky").cells()
    assert failed and all(c.status == "failed" for c in failed)
    assert all("bad request from Bearer ***" in (c.reason or "") for c in failed)
    # The same endpoint probed: refused while planning, the quoted key masked.
    assert _run(leaky_endpoint, tmp_path, "leaky-probed", *leaky) == 2
    # 3. A wrong key from a file: refused while planning, with a message that names no key.
    assert _run(url, tmp_path, "wrong", "--api-key-file", str(key_file)) == 2
    # 4. The key pasted where the variable's name belongs: refused without echoing it.
    assert _run(url, tmp_path, "pasted", "--api-key-env", KEY) == 2
    assert main(["report", str(tmp_path / "results" / "good"), "--out", str(tmp_path / "rep")]) == 0
    captured = capsys.readouterr()
    assert "authentication failed" in captured.err or "401" in captured.err
    assert "must be the NAME of an environment variable" in captured.err
    assert (
        "cannot generate with model tiny (openai backend: 400 from tiny: bad request from "
        "Bearer ***)" in captured.err
    )

    texts = {"stdout": captured.out, "stderr": captured.err, "logs": caplog.text}
    texts["server log"] = keyed_server.log_tail(10_000)
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p != key_file]
    assert any(p.suffix == ".jsonl" for p in files) and any("cache" in p.parts for p in files)
    for path in files:
        texts[str(path)] = path.read_bytes().decode("utf-8", errors="replace")
    for secret in (KEY, WRONG_KEY, KEY[9:], WRONG_KEY[9:]):  # the whole key, or its random part
        leaks = [where for where, text in texts.items() if secret in text]
        assert not leaks, f"the key leaked into {leaks}"
    print(f"\nsecrets: {len(files)} files, logs and console output checked; no key found")


def test_keys_never_enter_identities_or_cache_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks.cache import cache_key

    monkeypatch.setenv("KEY_A", KEY)
    monkeypatch.setenv("KEY_B", WRONG_KEY)
    a = OpenAIBackend("m", base_url="http://127.0.0.1:1/v1", api_key_env="KEY_A")
    b = OpenAIBackend("m", base_url="http://user:pw@10.0.0.1:2/v1", api_key_env="KEY_B")
    assert a.identity() == b.identity()  # neither the key nor the URL decides the answers
    assert KEY not in json.dumps(a.identity())
    request = {"kind": "generate", "backend": a.identity(), "prompt": "p"}
    assert cache_key(request) == cache_key({**request, "backend": b.identity()})


def test_the_server_binds_loopback_unless_told_and_then_needs_a_key(
    capsys: pytest.CaptureFixture[str], tiny_model: Path
) -> None:
    from benchmarks.cli import build_parser
    from benchmarks.server import main as server_main

    serve = build_parser().parse_args(["serve", "--model", "zoo-large"])
    assert serve.host == "127.0.0.1"
    assert (start_server.__kwdefaults__ or {})["host"] == "127.0.0.1"
    code = main(["serve", "--model", str(tiny_model), "--host", "0.0.0.0", "--port", "0"])
    assert code == 2 and "non-loopback host '0.0.0.0' without an api key" in capsys.readouterr().err
    assert server_main(["--model-dir", str(tiny_model), "--host", "::", "--port", "0"]) == 2


# -- the source tree ---------------------------------------------------------------------------

SOURCES = sorted([*(REPO / "benchmarks").rglob("*.py"), *(REPO / "methods").rglob("*.py")])
FORBIDDEN = {
    r"^\s*(import|from)\s+(pickle|cPickle|dill|shelve|marshal|cloudpickle)\b": "pickle-like import",
    r"\bpickle\.": "pickle use",
    r"\bjoblib\.load\(": "joblib (pickle) load",
    r"allow_pickle\s*=\s*True": "numpy pickle load",
    r"\byaml\.(load|unsafe_load|full_load|load_all)\(": "unsafe YAML loader",
    r"\byaml\.(Unsafe|Full)?Loader\b": "unsafe YAML loader",
    r"trust_remote_code\s*=\s*True": "remote code",
    r"(?<![\w.])(eval|exec)\(": "code evaluation",
    r"\b__import__\(": "dynamic import",
    r"\bsubprocess\.[A-Za-z_]+\([^)]*shell\s*=\s*True": "shell",
}


def test_no_pickle_no_code_execution_and_only_safe_yaml() -> None:
    assert len(SOURCES) > 20
    found = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for pattern, what in FORBIDDEN.items():
            for match in re.finditer(pattern, text, flags=re.MULTILINE):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(REPO)}:{line}: {what}")
        for node in ast.walk(ast.parse(text)):
            # torch.load only with weights_only=True (no arbitrary objects).
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = any(
                    k.arg == "weights_only"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is True
                    for k in node.keywords
                )
                if not safe:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: torch.load")
    assert not found, "\n".join(found)
    # YAML is read in these places, all with the safe loader.
    yaml_users = [p for p in SOURCES if "yaml." in p.read_text(encoding="utf-8")]
    for path in yaml_users:
        assert "yaml.safe_load" in path.read_text(encoding="utf-8"), path


def test_model_weights_load_from_safetensors_only() -> None:
    """Every `from_pretrained` of a model (not a tokenizer or config) passes
    ``use_safetensors=True``, so a directory holding only pickled weights is refused; the one
    exception reads a GGUF file (``gguf_file=``, a format with no code in it) in the pull's
    own scratch folder."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained"
                and isinstance(node.func.value, ast.Name)
            ):
                continue
            owner = node.func.value.id
            if "Tokenizer" in owner or "Config" in owner or not owner.startswith("Auto"):
                continue
            if not any(k.arg in ("use_safetensors", "gguf_file") for k in node.keywords):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {owner}.from_pretrained")
    assert not found, "model loads without use_safetensors=True:\n" + "\n".join(found)


def test_urls_are_recorded_and_printed_without_user_info_or_query_values(
    tmp_path: Path, tiny_server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    port = tiny_server.base_url.split(":")[2].split("/")[0]
    secret = "pw-" + secrets.token_hex(8)
    with_user = f"http://user:{secret}@127.0.0.1:{port}/v1"
    assert _run(with_user, tmp_path, "userinfo", "--methods", "zero-shot", "--seeds", "0") == 0
    spec = (tmp_path / "results" / "userinfo" / "run.json").read_text(encoding="utf-8")
    assert secret not in spec and f"127.0.0.1:{port}/v1" in spec
    # A dead endpoint with the key in the query: the "not reachable" message masks it.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    with_query = f"http://127.0.0.1:{dead}/v1?api_key={secret}&x"
    assert _run(with_query, tmp_path, "query", "--max-retries", "0") == 2
    captured = capsys.readouterr()
    assert "not reachable" in captured.err and "api_key=***" in captured.err
    assert secret not in captured.out + captured.err


def test_safe_url_never_raises_and_strips_secrets() -> None:
    from benchmarks.backends.openai_backend import safe_url

    assert safe_url("http://u:pw@127.0.0.1:99999999/v1?k=v&flag#frag") == (
        "http://127.0.0.1:99999999/v1?k=***&***"
    )
    assert safe_url("http://[::1/v1") == "<unparseable URL>"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:pw@127.0.0.1:99999999/v1", "PORT in 0-65535"),
        ("ftp://127.0.0.1:8000/v1", "http or https"),
        ("127.0.0.1:8000/v1", "http or https"),
        ("http:///v1", "host"),
        ("http://[::1/v1", "not a valid URL"),
    ],
)
def test_a_bad_base_url_is_one_line_exit_2(
    tmp_path: Path, url: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(url, tmp_path, "bad-url") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and expected in err, err
    assert "pw" not in err
