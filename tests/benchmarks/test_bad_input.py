"""Bad input at every entry point, table by table: command-line flags, config files, task
files, plugin entry points and server requests. Each bad input gets one clear line naming
what is wrong (and what is valid where there is a list), a non-zero exit code (or a 4xx with
an OpenAI-style error body from the server), and leaves ``results/`` byte for byte as it was.
Cases already covered in test_runner.py and test_cli.py are not repeated here."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from benchmarks.cli import main
from benchmarks.engine import HFEngine
from benchmarks.results import CellRecord, RunStore
from benchmarks.server import MAX_BODY_BYTES, ServerHandle, create_app
from methods import BlackBoxTuner, register_method

REPO = Path(__file__).resolve().parents[2]
GOOD_GSM8K = '{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7 #### 7"}\n'
MARKER = Path("/tmp/bench-bad-input-pwned")


@dataclass(frozen=True)
class _RangedConfig:
    #: a rate in (0, 1], checked as a method's Config should check its ranges.
    rate: float = 0.5
    #: a positive count.
    steps: int = 3

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {self.rate}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


@register_method("test-ranged")
class Ranged(BlackBoxTuner):
    """A method whose Config checks its ranges (test fixture for hyperparameter errors)."""

    Config = _RangedConfig

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        raise AssertionError("never fitted: every use here is bad input")


# -- shared set-up --------------------------------------------------------------------------------


def tree_digest(root: Path) -> str:
    """Every path under ``root`` with its bytes: equal digests mean nothing changed."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """A results directory holding one finished run, ``existing`` (zero-shot on zoo-sentiment
    through the openai backend, model tiny, seed 0, limit 2), as `bench run` writes it."""
    root = tmp_path / "results"
    store = RunStore(root / "existing")
    config = {
        "methods": ["zero-shot"],
        "tasks": ["zoo-sentiment"],
        "backend": {"backend": "openai", "model": "tiny", "options": {}},
        "proposer": None,
        "seeds": [0],
        "budget": "light",
        "limit": 2,
        "task_options": {},
        "method_options": {},
    }
    store.write_spec({"run_id": "existing", "config": config, "provenance": {}})
    store.write_cell(
        CellRecord(
            cell_id="zero-shot__zoo-sentiment__openai__tiny__s0",
            method="zero-shot",
            task="zoo-sentiment",
            backend="openai",
            model="tiny",
            seed=0,
            budget="light",
            status="ok",
            accuracy=0.5,
            n_eval=2,
        ),
        [{"id": "a", "output": "x", "answer": None, "target": "y", "score": 0.0}],
    )
    return root


def _bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse errors
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    return code, capsys.readouterr().err.strip().splitlines()


def assert_refused(code: int, err: list[str], expected: str, before: str, results: Path) -> None:
    assert code == 2, err
    assert len(err) == 1, err  # one line, no traceback, no plan table
    line = err[0]
    assert line.startswith("bench: error: ") and expected in line, line
    assert "Traceback" not in line and len(line) < 3000
    assert tree_digest(results) == before, "results/ changed"


# -- command-line flags ----------------------------------------------------------------------------

#: (what, flags replacing or adding to the base command, expected in the one line)
CLI_CASES: list[tuple[str, dict[str, str | None], str]] = [
    ("unknown method", {"--methods": "telepathy"}, "unknown method 'telepathy'; valid: "),
    ("unknown task", {"--tasks": "zoo-nope"}, "unknown task 'zoo-nope'"),
    ("unknown backend", {"--backend": "carrier-pigeon"}, "unknown backend 'carrier-pigeon'"),
    ("empty methods", {"--methods": ""}, "--methods is empty"),
    ("empty tasks", {"--tasks": " , "}, "--tasks is empty"),
    ("empty seeds", {"--seeds": ""}, "no seeds given"),
    ("seeds wrong type", {"--seeds": "0,1.5"}, "seeds must be integers"),
    ("limit negative", {"--limit": "-3"}, "expected a positive integer, got '-3'"),
    ("limit wrong type", {"--limit": "ten"}, "expected a positive integer, got 'ten'"),
    ("huge method name", {"--methods": "x" * 200_000}, "unknown method 'xxxx"),
    ("non-UTF-8 name", {"--methods": "zero\udcffshot"}, "unknown method"),
    ("budget unknown", {"--budget": "extreme"}, "invalid choice: 'extreme'"),
    ("--set malformed", {"--set": "zero-shot"}, "expected NAME.KEY=VALUE"),
    ("--set unknown method", {"--set": "zero-shoot.k=3"}, "unknown method 'zero-shoot'"),
    (
        "--set wrong type",
        {"--methods": "few-shot", "--set": "few-shot.k=abc"},
        "few-shot.k='abc': str is not an integer; expected int",
    ),
    (
        "--set bool wanted",
        {"--methods": "few-shot", "--set": "few-shot.balanced=3"},
        "int is not a boolean; expected bool",
    ),
    (
        "--set list for a number",
        {"--methods": "few-shot", "--set": "few-shot.k=[1, 2]"},
        "list is not an integer",
    ),
    (
        "--set negative demonstrations",
        {"--methods": "few-shot", "--set": "few-shot.k=-1"},
        "k must be >= 0 demonstrations, got -1",
    ),
    (
        "--set out of range",
        {"--methods": "test-ranged", "--set": "test-ranged.rate=2"},
        "bad hyperparameter (rate must be in (0, 1], got 2.0)",
    ),
    (
        "--set not finite",
        {"--methods": "test-ranged", "--set": "test-ranged.rate=nan"},
        "not a finite number; expected float",
    ),
    (
        "--set huge",
        {"--methods": "test-ranged", "--set": "test-ranged.steps=-99999999999999999999"},
        "steps must be >= 1",
    ),
    (
        "--task-option wrong type",
        {"--task-option": "zoo-sentiment.n_dev=abc"},
        "task zoo-sentiment: invalid literal for int()",
    ),
    ("--task-option unknown", {"--task-option": "zoo-sentiment.colour=red"}, "unknown option"),
    ("--task-option out of range", {"--task-option": "zoo-sentiment.n_test=-1"}, ">= 0"),
    (
        "--task-option empty test",
        {"--task-option": "zoo-sentiment.n_test=0"},
        "test split is empty",
    ),
    ("--task-option unknown task", {"--task-option": "zoo-snt.n_dev=3"}, "unknown task 'zoo-snt'"),
    ("prices missing", {"--prices": "/nonexistent/prices.yaml"}, "cannot read"),
    ("max-usd negative", {"--max-usd": "-1"}, "expected a non-negative number, got '-1'"),
    ("max-usd not finite", {"--max-usd": "inf"}, "expected a non-negative number"),
    ("max-calls wrong type", {"--max-calls": "many"}, "expected a non-negative integer"),
    ("max-cell-tokens fraction", {"--max-cell-tokens": "1.5"}, "expected a non-negative integer"),
    ("request-timeout zero", {"--request-timeout": "0"}, "expected a positive number"),
    ("max-retries negative", {"--max-retries": "-1"}, "expected a non-negative integer"),
    ("concurrency zero", {"--concurrency": "0"}, "expected a positive integer, got '0'"),
    ("api unknown", {"--api": "legacy"}, "invalid choice: 'legacy'"),
    ("capability unknown", {"--capabilities": "telepathy"}, "unknown capability 'telepathy'"),
    ("api-key-env not a name", {"--api-key-env": "sk-abc 123"}, "NAME of an environment variable"),
    ("key file missing", {"--api-key-file": "/nonexistent/key"}, "cannot read key file"),
    ("resume unknown run", {"--resume": None, "--run-id": "nope"}, "--resume: no run 'nope'"),
    ("run id taken", {"--run-id": "existing"}, "run 'existing' already exists"),
    (
        "resume other settings",
        {"--resume": None, "--run-id": "existing", "--seeds": "0,1"},
        "was started with other settings",
    ),
    ("unknown flag", {"--frobnicate": "1"}, "unrecognized arguments: --frobnicate"),
    ("run id climbs out", {"--run-id": "../../x"}, "--run-id '../../x': must be one name"),
    ("run id absolute", {"--run-id": "/tmp/x"}, "--run-id '/tmp/x': must be one name"),
    ("run id is the results dir", {"--run-id": "."}, "--run-id '.': must be one name"),
    ("run id empty", {"--run-id": ""}, "--run-id '': must be one name"),
    ("run id too long", {"--run-id": "x" * 300}, "at most 128 characters, got 300"),
    (
        "resume run id climbs out",
        {"--resume": None, "--run-id": "../results/existing"},
        "must be one name",
    ),
    ("results dir not writable", {"--results-dir": "/proc/forbidden"}, "/proc/forbidden"),
]


@pytest.mark.parametrize(
    ("flags", "expected"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES]
)
def test_bad_flag(
    flags: dict[str, str | None],
    expected: str,
    results: Path,
    tmp_path: Path,
    tiny_server: ServerHandle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base: dict[str, str | None] = {
        "--methods": "zero-shot",
        "--tasks": "zoo-sentiment",
        "--backend": "openai",
        "--base-url": tiny_server.base_url,
        "--api": "completions",
        "--model": "tiny",
        "--limit": "2",
        "--results-dir": str(results),
        "--cache-dir": str(tmp_path / "cache"),
        **flags,
    }
    argv = ["run"] + [x for k, v in base.items() for x in ([k] if v is None else [k, v])]
    before = tree_digest(results)
    code, err = _bench(argv, capsys)
    assert_refused(code, err, expected, before, results)


# -- config files ----------------------------------------------------------------------------------

CONFIG_CASES: list[tuple[str, str | bytes, str]] = [
    ("not UTF-8", b"methods: zero-shot\ntasks: \xff\xfe\n", "cannot read"),
    ("not YAML", "methods: [zero-shot\n", "not valid YAML"),
    ("not a mapping", "just a string", "expected a mapping of flag names"),
    ("a key is never a setting", "api_key: sk-123\n", "unknown key 'api_key'"),
    ("limit wrong type", "limit: ten\n", "limit must be an integer >= 1, got str"),
    ("limit zero", "limit: 0\n", "limit must be an integer >= 1, got int"),
    ("methods wrong type", "methods: 5\n", "methods must be a comma-separated string or a list"),
    ("seeds wrong type", "seeds: [0, a]\n", "seeds must be an integer, a list of integers"),
    ("resume not a bool", "resume: maybe\n", "resume must be true or false, got str"),
    ("options wrong shape", "method_options: {few-shot: 3}\n", "method_options must be a mapping"),
    ("max_usd negative", "max_usd: -1\n", "max_usd must be a number >= 0"),
    ("budget unknown", "budget: 3\n", "budget must be one of light, medium, heavy, paper"),
    ("empty methods", "methods: []\n", "--methods is empty"),
    ("huge list", "methods: [" + ", ".join(f"m{i}" for i in range(20_000)) + "]\n", "'m0'"),
    (
        "code in YAML",
        f"methods: !!python/object/apply:os.system ['touch {MARKER}']\n",
        "not valid YAML",
    ),
]


@pytest.mark.parametrize(
    ("content", "expected"), [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
def test_bad_config_file(
    content: str | bytes,
    expected: str,
    results: Path,
    tmp_path: Path,
    tiny_server: ServerHandle,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [
        "run", "--config", str(cfg), "--tasks", "zoo-sentiment", "--backend", "openai",
        "--base-url", tiny_server.base_url, "--api", "completions", "--model", "tiny",
        "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    before = tree_digest(results)
    code, err = _bench(argv, capsys)
    assert_refused(code, err, expected, before, results)
    assert not MARKER.exists()  # YAML never runs code


# -- task files ------------------------------------------------------------------------------------

#: (what, files under data_dir/<task>/, task, expected)
TASK_FILE_CASES: list[tuple[str, dict[str, str | bytes], str, str]] = [
    ("missing file", {"train.jsonl": GOOD_GSM8K * 4}, "gsm8k", "test.jsonl not found"),
    (
        "empty file",
        {"train.jsonl": GOOD_GSM8K * 4, "test.jsonl": ""},
        "gsm8k",
        "test.jsonl: file is empty",
    ),
    (
        "not UTF-8",
        {
            "train.jsonl": GOOD_GSM8K * 4,
            "test.jsonl": b'{"question": "\xff", "answer": "#### 1"}\n',
        },
        "gsm8k",
        "test.jsonl:1: not UTF-8",
    ),
    (
        "malformed row",
        {"train.jsonl": GOOD_GSM8K * 4, "test.jsonl": GOOD_GSM8K + '{"question": "q", \n'},
        "gsm8k",
        "test.jsonl:2: malformed JSON",
    ),
    (
        "row not an object",
        {"train.jsonl": GOOD_GSM8K * 4, "test.jsonl": GOOD_GSM8K + "[1, 2]\n"},
        "gsm8k",
        "test.jsonl:2: expected a JSON object",
    ),
    (
        "missing field",
        {"train.jsonl": GOOD_GSM8K * 4, "test.jsonl": '{"question": "q"}\n'},
        "gsm8k",
        "missing field(s) answer",
    ),
    (
        "wrong types",
        {"train.jsonl": GOOD_GSM8K * 4, "test.jsonl": '{"question": 5, "answer": [1, 2]}\n'},
        "gsm8k",
        "test.jsonl:1: answer does not end in '#### <number>'",
    ),
    (
        "bad label",
        {
            "alps/test.tsv": "sentence\tlabel\ngood film\t7\n",
            "rlprompt/16-42/train.tsv": "sentence\tlabel\na\t1\nb\t0\n",
            "rlprompt/16-42/dev.tsv": "sentence\tlabel\na\t1\nb\t0\n",
        },
        "sst2",
        "bad label",
    ),
    (
        "ragged TSV",
        {
            "alps/test.tsv": "sentence\tlabel\ngood\t1\tx\textra\n",
            "rlprompt/16-42/train.tsv": "sentence\tlabel\na\t1\n",
            "rlprompt/16-42/dev.tsv": "sentence\tlabel\na\t1\n",
        },
        "sst2",
        "test.tsv",
    ),
]


@pytest.mark.parametrize(
    ("files", "task", "expected"),
    [c[1:] for c in TASK_FILE_CASES],
    ids=[c[0] for c in TASK_FILE_CASES],
)
def test_bad_task_file(
    files: dict[str, str | bytes],
    task: str,
    expected: str,
    results: Path,
    tmp_path: Path,
    tiny_server: ServerHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # no hub fallback: the local file decides
    data = tmp_path / "data"
    for name, content in files.items():
        path = data / task / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    argv = [
        "run", "--methods", "zero-shot", "--tasks", task, "--data-dir", str(data),
        "--backend", "openai", "--base-url", tiny_server.base_url, "--api", "completions",
        "--model", "tiny", "--limit", "1", "--results-dir", str(results),
        "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    before = tree_digest(results)
    code, err = _bench(argv, capsys)
    assert_refused(code, err, expected, before, results)


# -- plugin entry points ---------------------------------------------------------------------------

PLUGIN_CASES: list[tuple[str, str, str, str]] = [
    ("missing module", "methods", "no_such_module_xyz:Tuner", "failed to load: No module named"),
    ("missing attribute", "methods", "json:NoSuchTuner", "failed to load"),
    ("not a tuner", "methods", "json:dumps", "does not name a BlackBoxTuner subclass"),
    ("import raises", "methods", "tests.benchmarks.test_bad_input:_raise_on_import", "boom"),
    ("broken task", "tasks", "no_such_module_xyz:Task", "task plugin 'broken' (no_such_module"),
]


def __getattr__(name: str) -> Any:  # the target of the "import raises" entry point
    if name == "_raise_on_import":
        raise RuntimeError("boom: the plugin's import failed")
    raise AttributeError(name)


@pytest.mark.parametrize(
    ("group", "target", "expected"),
    [c[1:] for c in PLUGIN_CASES],
    ids=[c[0] for c in PLUGIN_CASES],
)
def test_broken_plugin(
    group: str,
    target: str,
    expected: str,
    results: Path,
    tmp_path: Path,
    tiny_server: ServerHandle,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks.tasks.base import tasks
    from methods.base import methods

    registry: Any = methods if group == "methods" else tasks
    registry.names()  # discover first, then add the entry point as if installed
    monkeypatch.setattr(registry, "_items", dict(registry._items))  # undone after the test
    point = metadata.EntryPoint("broken", target, f"blackbox_bench.{group}")
    monkeypatch.setitem(registry._entry_points, "broken", point)
    which = ("broken", "zoo-sentiment") if group == "methods" else ("zero-shot", "broken")
    argv = [
        "run", "--methods", which[0], "--tasks", which[1], "--backend", "openai",
        "--base-url", tiny_server.base_url, "--api", "completions", "--model", "tiny",
        "--limit", "1", "--results-dir", str(results), "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    before = tree_digest(results)
    code, err = _bench(argv, capsys)
    assert_refused(code, err, expected, before, results)
    # A broken plugin is listed as unavailable; it does not break the listing.
    monkeypatch.setitem(registry._entry_points, "broken", point)
    assert main(["ls", group]) == 0
    out = capsys.readouterr().out
    assert ("broken" in out and "unavailable:" in out and "zero-shot" in out) or group == "tasks"


def test_broken_installed_plugin_through_real_discovery(results: Path, tmp_path: Path) -> None:
    """An installed distribution (a dist-info on the path) whose entry point cannot load."""
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[blackbox_bench.methods]\nbroken = broken_plugin_mod:Tuner\n"
    )
    (site / "broken_plugin_mod.py").write_text("raise ImportError('needs libfoo')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    before = tree_digest(results)
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", "run", "--methods", "broken",
         "--tasks", "zoo-sentiment", "--results-dir", str(results), "--dry-run"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    err = done.stderr.strip().splitlines()
    assert_refused(done.returncode, err, "method plugin 'broken'", before, results)
    assert "needs libfoo" in err[0]


# -- server requests -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tiny_model: Path) -> Iterator[TestClient]:
    engine = HFEngine.load(tiny_model, device="cpu")
    with TestClient(create_app(engine, model_name="tiny", grey_box=False)) as client:
        yield client


_C = "/v1/completions"
_CHAT = "/v1/chat/completions"
_OK = {"model": "tiny", "prompt": "Q: 1\nA:", "max_tokens": 2}
_MSG = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

#: (what, method, path, JSON body or raw bytes, status, expected param)
SERVER_CASES: list[tuple[str, str, str, Any, int, str | None]] = [
    ("unknown model", "POST", _C, {**_OK, "model": "gpt-9"}, 404, "model"),
    ("missing model", "POST", _C, {"prompt": "x"}, 400, "model"),
    ("empty body", "POST", _C, {}, 400, "model"),
    ("n wrong type", "POST", _C, {**_OK, "n": "two"}, 400, "n"),
    ("n zero", "POST", _C, {**_OK, "n": 0}, 400, "n"),
    ("n huge", "POST", _C, {**_OK, "n": 10**6}, 400, "n"),
    ("max_tokens huge", "POST", _C, {**_OK, "max_tokens": 10**9}, 400, "max_tokens"),
    ("max_tokens negative", "POST", _C, {**_OK, "max_tokens": -1}, 400, "max_tokens"),
    ("temperature out of range", "POST", _C, {**_OK, "temperature": 7}, 400, "temperature"),
    ("top_p zero", "POST", _C, {**_OK, "top_p": 0}, 400, "top_p"),
    ("logprobs too many", "POST", _C, {**_OK, "logprobs": 99}, 400, "logprobs"),
    ("too many stops", "POST", _C, {**_OK, "stop": list("abcde")}, 400, "stop"),
    ("empty prompt list", "POST", _C, {**_OK, "prompt": []}, 400, "prompt"),
    ("prompt wrong type", "POST", _C, {**_OK, "prompt": {"a": 1}}, 400, "prompt"),
    ("prompt too long", "POST", _C, {**_OK, "prompt": "word " * 2000}, 400, "prompt"),
    ("too many prompts", "POST", _C, {**_OK, "prompt": ["a"] * 2000}, 400, "prompt"),
    ("streaming", "POST", _C, {**_OK, "stream": True}, 400, "stream"),
    ("not JSON", "POST", _C, b"{model: tiny", 400, None),
    ("not UTF-8", "POST", _C, b'{"model": "\xff\xfe"}', 400, None),
    ("body too large", "POST", _C, b" " * (MAX_BODY_BYTES + 1), 413, None),
    ("empty messages", "POST", _CHAT, {**_MSG, "messages": []}, 400, "messages"),
    ("unknown role", "POST", _CHAT, {**_MSG, "messages": [{"role": "god"}]}, 400, None),
    (
        "image content",
        "POST",
        _CHAT,
        {
            **_MSG,
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],
        },
        400,
        "messages",
    ),
    ("top_logprobs alone", "POST", _CHAT, {**_MSG, "top_logprobs": 2}, 400, "top_logprobs"),
    (
        "grey box disabled",
        "POST",
        "/v1/bench/next_token_logprobs",
        {"model": "tiny", "prompts": ["x"]},
        404,
        None,
    ),
    ("unknown path", "POST", "/v1/engines/tiny/completions", _OK, 404, None),
    ("wrong method", "GET", _C, None, 405, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [c[1:] for c in SERVER_CASES],
    ids=[c[0] for c in SERVER_CASES],
)
def test_bad_server_request(
    http: TestClient, method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    if isinstance(body, bytes):
        reply = http.request(
            method, path, content=body, headers={"content-type": "application/json"}
        )
    else:
        reply = http.request(method, path, json=body)
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"] and "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param or str(error["param"]).startswith(param), error
    # The server still answers a good request afterwards.
    assert http.post(_C, json=_OK).status_code == 200


def test_bad_inputs_tried() -> None:
    n = len(CLI_CASES) + len(CONFIG_CASES) + len(TASK_FILE_CASES) + len(PLUGIN_CASES) + 1
    n += len(SERVER_CASES)
    print(
        f"\nbad inputs tried: {n} ({len(CLI_CASES)} flags, {len(CONFIG_CASES)} config files, "
        f"{len(TASK_FILE_CASES)} task files, {len(PLUGIN_CASES) + 1} plugins, "
        f"{len(SERVER_CASES)} server requests)"
    )
    assert n >= 90


def test_report_out_that_is_a_file_is_one_line(
    results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "a-file"
    out.write_text("keep me")
    before = tree_digest(results)
    code, err = _bench(["report", str(results / "existing"), "--out", str(out)], capsys)
    assert_refused(code, err, f"--out {out}: exists and is not a directory", before, results)
    assert out.read_text() == "keep me"
    code, err = _bench(["report", str(results / "existing"), "--out", "/proc/forbidden"], capsys)
    assert_refused(code, err, "--out /proc/forbidden: cannot create", before, results)


@pytest.mark.parametrize("backend", ["zoo", "hf"])
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda b: b[:8] + b"{garbage" + b[16:], id="header-json"),
        pytest.param(lambda b: (2**40).to_bytes(8, "little") + b[8:], id="header-length"),
        pytest.param(lambda b: b[:20], id="truncated"),
    ],
)
def test_corrupted_weights_are_bad_input_exit_2(
    backend: str,
    damage: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model directory whose weights header is damaged is refused while planning (exit 2,
    one line naming the file), not taken for an endpoint that went away (exit 3)."""
    import shutil

    from benchmarks.tiny import tiny_model_dir

    model = tmp_path / "bad"
    shutil.copytree(tiny_model_dir(tmp_path / "tiny"), model)
    weights = model / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    results = tmp_path / "results"
    argv = ["run", "--methods", "zero-shot", "--tasks", "zoo-sentiment", "--backend", backend]
    argv += ["--model", str(model), "--limit", "2", "--results-dir", str(results)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--run-id", "r"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "model.safetensors" in err and "safetensors" in err
    assert not (results / "r" / "cells").exists() or not any((results / "r" / "cells").iterdir())
