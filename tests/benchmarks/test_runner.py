"""End to end: `bench run` through the real `openai` client against the project's server on
127.0.0.1, hosting a tiny randomly initialised model; records, cache replay, refusal of
incompatible pairs, resume, and bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.results import RunStore
from benchmarks.server import start_server
from benchmarks.tiny import tiny_model_dir
from methods import PROMPT_EMBEDS, BlackBoxTuner, PromptPolicy, register_method
from tests.benchmarks.conftest import tiny_run_argv


@dataclass(frozen=True)
class _NeedsEmbedsConfig:
    #: nothing to tune; the method exists to be refused.
    unused: int = 0


@register_method("test-needs-embeds")
class NeedsEmbeds(BlackBoxTuner):
    """A method that needs soft-prompt input (test fixture for refusal)."""

    requires = frozenset({"generate", PROMPT_EMBEDS})
    Config = _NeedsEmbedsConfig

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        raise AssertionError("a refused method must never be fitted")


@dataclass(frozen=True)
class _DisclosingConfig:
    #: raise after disclosing and tracing (a failed cell keeps both).
    fail: bool = False


@register_method("test-discloser")
class Discloser(BlackBoxTuner):
    """A tuner that discloses a cut, sends two events and returns the task's default
    instruction (test fixture for the runner's records and traces)."""

    Config = _DisclosingConfig

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        context.disclose("truncated", "2 of 5 demonstrations cut")
        context.on_event("step", {"step": 0, "scores": [0.5, float("-inf")]})
        context.on_event("step", {"step": 1, "scores": [0.75]})
        if self.config.fail:
            raise RuntimeError("boom")
        return PromptPolicy(instruction=task.instructions[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[str]:
    with start_server(model_dir, model_name="tiny") as handle:
        yield handle.base_url


def _run(tmp: Path, url: str, *extra: str) -> int:
    return main(
        tiny_run_argv(
            url,
            *("--budget", "light", "--results-dir", str(tmp / "results")),
            *("--cache-dir", str(tmp / "cache"), *extra),
        )
    )


def _tokens(usage: dict, flavour: str, phase: str) -> int:
    return sum(r["tokens"] for r in usage[flavour].get(phase, {}).values())


def _billed(usage: dict) -> int:
    return sum(r["tokens"] for p in usage["billed"].values() for r in p.values())


def test_run_writes_records_and_replays_from_cache(tmp_path: Path, server: str) -> None:
    assert _run(tmp_path, server, "--run-id", "first") == 0
    first = RunStore(tmp_path / "results" / "first")
    spec = first.read_spec()
    assert spec["config"]["backend"]["backend"] == "openai"
    assert spec["provenance"]["versions"]["openai"]
    cells = first.cells()
    assert sorted((c.method, c.seed) for c in cells) == [
        ("few-shot", 0),
        ("few-shot", 1),
        ("zero-shot", 0),
        ("zero-shot", 1),
    ]
    for c in cells:
        assert c.status == "ok" and c.n_eval == 6 and c.accuracy is not None
        # zero-shot seed 1 sends the same prompts as seed 0: idealized, not billed, calls.
        assert c.usage["idealized"]["eval"]["task"]["calls"] == 6
        assert c.usage["idealized"]["eval"]["task"]["prompt_tokens"] > 0
        assert c.task_hash and c.provenance["versions"]["torch"]
        assert len(first.predictions(c.cell_id)) == 6
        assert (first.artifact_dir(c.cell_id) / "policy.json").exists()
    zero1 = next(c for c in cells if c.method == "zero-shot" and c.seed == 1)
    assert "task" not in zero1.usage["billed"]["eval"] and zero1.usage["cache_hits"] == 6
    few = next(c for c in cells if c.method == "few-shot" and c.seed == 0)
    zero = next(c for c in cells if c.method == "zero-shot" and c.seed == 0)
    # Demonstrations cost inference tokens: the leaderboard's point.
    assert (
        few.usage["billed"]["eval"]["task"]["prompt_tokens"]
        > zero.usage["billed"]["eval"]["task"]["prompt_tokens"]
    )

    assert _run(tmp_path, server, "--run-id", "second") == 0
    second = RunStore(tmp_path / "results" / "second")
    for a, b in zip(first.cells(), second.cells(), strict=True):
        assert a.cell_id == b.cell_id
        assert b.accuracy == a.accuracy
        assert _billed(b.usage) == 0
        assert b.usage["cache_hits"] == b.usage["calls"] > 0
        # idealized totals still count what the method costs from a cold start
        assert (
            b.usage["idealized"]["eval"]["task"]["tokens"]
            == a.usage["idealized"]["eval"]["task"]["tokens"]
        )
        assert first.predictions(a.cell_id) == second.predictions(b.cell_id)


def test_incompatible_pair_is_refused_before_spending(tmp_path: Path, server: str) -> None:
    code = main(
        [
            "run",
            "--methods",
            "test-needs-embeds",
            "--tasks",
            "zoo-sentiment",
            "--backend",
            "openai",
            "--base-url",
            server,
            "--api",
            "chat",
            "--model",
            "tiny",
            "--limit",
            "3",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--run-id",
            "x",
        ]
    )
    assert code == 0
    (cell,) = RunStore(tmp_path / "r" / "x").cells()
    assert cell.status == "refused"
    assert cell.reason == "needs prompt_embeds"
    assert cell.usage == {}
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.json"))
    assert main(["report", str(tmp_path / "r" / "x"), "--out", str(tmp_path / "rep")]) == 0
    assert "n/a (needs prompt_embeds)" in (tmp_path / "rep" / "leaderboard.md").read_text()


def test_task_a_method_cannot_use_is_refused_before_spending(tmp_path: Path, server: str) -> None:
    """BBT scores label words: on a generation task it is refused while planning (n/a), with
    the reason, before anything is spent."""
    code = main(
        tiny_run_argv(
            server,
            *("--results-dir", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "c")),
            *("--run-id", "x", "--capabilities", "generate,next_token_logits,prompt_embeds"),
            methods="bbt",
            tasks="zoo-arith",
            seeds=None,
            limit=2,
        )
    )
    assert code == 0
    (cell,) = RunStore(tmp_path / "r" / "x").cells()
    assert (cell.status, cell.reason) == ("refused", "needs a classification task with label words")
    assert cell.usage == {}
    assert main(["report", str(tmp_path / "r" / "x"), "--out", str(tmp_path / "rep")]) == 0
    board = (tmp_path / "rep" / "leaderboard.md").read_text()
    assert "n/a (needs a classification task with label words)" in board


def test_resume_skips_finished_cells(tmp_path: Path, server: str) -> None:
    assert _run(tmp_path, server, "--run-id", "r1") == 0
    store = RunStore(tmp_path / "results" / "r1")
    before = {c.cell_id: c for c in store.cells()}
    victim = sorted(before)[0]
    store.cell_path(victim).unlink()
    assert _run(tmp_path, server, "--run-id", "r1", "--resume") == 0
    after = {c.cell_id: c for c in store.cells()}
    assert set(after) == set(before)
    for cid, rec in after.items():
        if cid != victim:
            assert rec.created_at == before[cid].created_at  # untouched
    assert after[victim].accuracy == before[victim].accuracy
    # Starting a run under an existing id without --resume is refused, nothing overwritten.
    assert _run(tmp_path, server, "--run-id", "r1") == 2
    assert {c.cell_id: c.created_at for c in store.cells()} == {
        k: v.created_at for k, v in after.items()
    }


def test_dry_run_projects_and_writes_nothing(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, server, "--dry-run", "--run-id", "dry") == 0
    err = capsys.readouterr().err
    assert "projected:" in err and "n/a" in err  # the local model has no price
    assert not (tmp_path / "results" / "dry").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--methods", "zero-shoot"], "did you mean 'zero-shot'"),
        (["--tasks", "zoo-sentimnt"], "did you mean 'zoo-sentiment'"),
        (["--backend", "opnai", "--model", "m"], "did you mean 'openai'"),
        (["--seeds", "a,b"], "seeds must be integers"),
        (["--limit", "0"], "expected a positive integer"),
        (["--budget", "huge"], "invalid choice"),
        (["--set", "few-shot.kk=3"], "valid: k, balanced, with_instruction"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, server: str, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    base = {
        "--methods": "zero-shot,few-shot",
        "--tasks": "zoo-sentiment",
        "--backend": "openai",
        "--model": "tiny",
    }
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    argv = [
        "run",
        *[x for kv in base.items() for x in kv],
        "--base-url",
        server,
        "--api",
        "completions",
        "--results-dir",
        str(tmp_path / "r"),
        "--cache-dir",
        str(tmp_path / "c"),
        "--limit",
        base.get("--limit", "2"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert expected in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert not any((tmp_path / "r").rglob("*.json"))


def test_missing_api_key_is_reported_before_spending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code = main(
        [
            "run",
            "--methods",
            "zero-shot",
            "--tasks",
            "zoo-sentiment",
            "--backend",
            "openai",
            "--model",
            "gpt-4o-mini",
            "--results-dir",
            str(tmp_path / "r"),
            "--limit",
            "2",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no API key" in err and "OPENAI_API_KEY" in err
    assert not (tmp_path / "r").exists()


def test_report_reads_results_only(tmp_path: Path, server: str) -> None:
    assert _run(tmp_path, server, "--run-id", "rep") == 0
    assert (
        main(["report", str(tmp_path / "results" / "rep"), "--out", str(tmp_path / "reports")]) == 0
    )
    text = (tmp_path / "reports" / "leaderboard.md").read_text()
    assert "## zoo-sentiment" in text
    assert "| few-shot |" in text and "| zero-shot |" in text
    assert "+0.000" in text  # zero-shot's gain over itself


def test_hf_backend_runs_in_process(tmp_path: Path, model_dir: Path) -> None:
    code = main(
        [
            "run",
            "--methods",
            "zero-shot",
            "--tasks",
            "zoo-sentiment",
            "--backend",
            "hf",
            "--model",
            str(model_dir),
            "--limit",
            "3",
            "--results-dir",
            str(tmp_path / "r"),
            "--cache-dir",
            str(tmp_path / "c"),
            "--run-id",
            "hf",
        ]
    )
    assert code == 0
    (cell,) = RunStore(tmp_path / "r" / "hf").cells()
    assert cell.status == "ok" and cell.n_eval == 3
    preds = [
        json.loads(line)
        for line in (tmp_path / "r" / "hf" / "predictions" / f"{cell.cell_id}.jsonl")
        .read_text()
        .splitlines()
    ]
    assert len(preds) == 3


def test_a_replay_loads_white_box_training_instead_of_running_it(tmp_path: Path) -> None:
    """The zoo's real white-box methods, cold then from the warm cache under another run id:
    the same records, predictions and trained weights, with the training loaded (its cost
    credited as cached compute) rather than run again."""
    methods = "aligner,bbox,cobb,proxy-tuning"

    def run(run_id: str) -> RunStore:
        argv = ["run", "--methods", methods, "--tasks", "zoo-sentiment", "--seeds", "0"]
        argv += ["--budget", "light", "--limit", "4", "--run-id", run_id]
        argv += ["--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "c")]
        assert main(argv) == 0
        return RunStore(tmp_path / "results" / run_id)

    first, again = run("first"), run("again")
    trained = {"train corrector", "fine-tune expert", "subset search", "train adapter"}
    cells = {c.cell_id: c for c in first.cells()}
    assert len(cells) == 4
    for replayed in again.cells():
        cold = cells[replayed.cell_id]
        assert replayed.status == cold.status == "ok"
        assert replayed.accuracy == cold.accuracy
        assert again.predictions(replayed.cell_id) == first.predictions(cold.cell_id)
        for name in ("policy.json", "model.safetensors"):
            paths = [s.artifact_dir(replayed.cell_id).rglob(name) for s in (first, again)]
            cold_files, warm_files = (sorted(p.read_bytes() for p in ps) for ps in paths)
            assert cold_files == warm_files
        tune, cold_tune = replayed.usage["compute"]["tune"], cold.usage["compute"]["tune"]
        ran = {b["label"] for b in tune["blocks"] if not b.get("cached")}
        loaded = {b["label"] for b in tune["blocks"] if b.get("cached")}
        assert loaded and loaded <= trained and not ran & trained
        # a replay reports what the training cost cold, and how much came from the cache
        cold_blocks = {b["label"]: b for b in cold_tune["blocks"]}
        for block in tune["blocks"]:
            if block.get("cached"):
                assert block["seconds"] == pytest.approx(cold_blocks[block["label"]]["seconds"])
                assert block["count"] == cold_blocks[block["label"]]["count"]
        assert tune["cached_seconds"] > 0 and cold_tune["cached_seconds"] == 0
        assert tune["wall_s"] < cold_tune["wall_s"]
        # evaluation came from the eval memo: the same calls (as cache hits) and compute
        for flavour in ("idealized", "billed"):
            assert _tokens(replayed.usage, flavour, "eval") == (
                _tokens(cold.usage, "idealized", "eval") if flavour == "idealized" else 0
            )
        warm_eval = replayed.usage["compute"].get("eval")
        cold_eval = cold.usage["compute"].get("eval")
        if cold_eval:  # white-box inference at eval: credited, not run
            assert warm_eval["seconds"] == pytest.approx(cold_eval["seconds"])
            assert warm_eval["wall_s"] == 0 and warm_eval["cached_seconds"] > 0


def test_a_replay_from_a_warm_cache_never_starts_the_zoo_server(
    tmp_path: Path, model_dir: Path
) -> None:
    from benchmarks.perf import suite_config
    from benchmarks.runner import Runner

    started = []
    for run_id in ("cold", "warm"):
        config = suite_config(
            tmp_path, run_id, model=str(model_dir), methods=["zero-shot"], limit=3
        )
        with Runner(config) as runner:
            records = runner.run(runner.plan())
            assert [r.status for r in records] == ["ok"]
            started.append(runner.backend._handle is not None)  # type: ignore[union-attr]
    assert started == [True, False]


def test_a_cell_records_the_bytes_of_its_artifacts(tmp_path: Path, model_dir: Path) -> None:
    from benchmarks.perf import suite_config
    from benchmarks.results import directory_bytes
    from benchmarks.runner import Runner

    config = suite_config(tmp_path, "bytes", model=str(model_dir), methods=["zero-shot"], limit=3)
    with Runner(config) as runner:
        (record,) = runner.run(runner.plan())
    (artifacts,) = list(tmp_path.rglob(f"artifacts/{record.cell_id}"))
    assert record.artifact_bytes == directory_bytes(artifacts) > 0


def test_no_training_cache_trains_every_time_and_keeps_the_rest_cached(tmp_path: Path) -> None:
    from benchmarks.cli import build_parser, run_config_from_args

    config, _ = run_config_from_args(build_parser().parse_args(["run", "--no-training-cache"]))
    assert config.use_cache and not config.cache_training
    argv = ["run", "--methods", "aligner", "--tasks", "zoo-sentiment", "--seeds", "0"]
    argv += ["--limit", "4", "--no-training-cache", "--cache-dir", str(tmp_path / "c")]
    argv += ["--results-dir", str(tmp_path / "results")]
    for run_id in ("first", "again"):
        assert main([*argv, "--run-id", run_id]) == 0
    (record,) = RunStore(tmp_path / "results" / "again").cells()
    tune = record.usage["compute"]["tune"]
    assert tune["cached_seconds"] == 0 and tune["wall_s"] > 0  # trained again
    assert _tokens(record.usage, "billed", "eval") == 0  # answers and batches still cached
    assert not (tmp_path / "c" / "training").exists()


def test_prompt_format_reaches_tasks_records_and_run_json(
    tmp_path: Path, model_dir: Path, shared_data: Path
) -> None:
    chat_model = tmp_path / "tiny-chat"
    shutil.copytree(model_dir, chat_model)
    config = json.loads((chat_model / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    (chat_model / "tokenizer_config.json").write_text(json.dumps(config))
    base = ["run", "--methods", "zero-shot", "--tasks", "zoo-sentiment", "--backend", "hf"]
    base += ["--limit", "2", "--results-dir", str(tmp_path / "r")]
    base += ["--cache-dir", str(tmp_path / "c")]
    chat = [*base, "--model", str(chat_model), "--run-id", "chat", "--prompt-format", "chat"]
    assert main([*chat, "--system-prompt", "Be brief."]) == 0
    assert main([*base, "--model", str(chat_model), "--run-id", "raw"]) == 0
    for run, fmt, system in (("chat", "chat", "Be brief."), ("raw", "raw", None)):
        store = RunStore(tmp_path / "r" / run)
        (cell,) = store.cells()
        assert (cell.prompt_format, cell.system_prompt) == (fmt, system)
        # a format other than the model's default (raw here) is disclosed, and the system turn
        assert [(d.kind, d.detail) for d in cell.disclosures] == (
            [
                (
                    "prompt-format",
                    f"prompts sent as chat (one user turn of its chat template); {chat_model}'s "
                    "default is raw",
                ),
                ("prompt-format", "a system turn of 9 characters before each prompt"),
            ]
            if run == "chat"
            else []
        )
        options = store.read_spec()["config"]["backend"]["options"]
        assert options["prompt_format"] == fmt  # the resolved default is recorded too
    # A run recorded before the option resumes: its format was the backend's default.
    spec_path = tmp_path / "r" / "raw" / "run.json"
    spec = json.loads(spec_path.read_text())
    del spec["config"]["backend"]["options"]["prompt_format"]
    spec_path.write_text(json.dumps(spec))
    assert main([*base, "--model", str(chat_model), "--run-id", "raw", "--resume"]) == 0
    # The task's answer limits follow the backend's format.
    from benchmarks.cli import build_parser, run_config_from_args
    from benchmarks.runner import Runner

    argv = [*chat, "--tasks", "sst2,zoo-sentiment", "--run-id", "plan-only"]
    argv += ["--data-dir", str(shared_data)]
    run_config, _ = run_config_from_args(build_parser().parse_args(argv))
    with Runner(run_config) as runner:
        runner.plan()
        assert runner.tasks["sst2"].prompt_format == "chat"
        assert runner.tasks["sst2"].max_tokens == type(runner.tasks["sst2"]).chat_max_tokens


def test_a_cell_that_answers_nothing_parseable_is_flagged(
    tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny random model parses to no zoo-sentiment answer on any of 24 examples: its
    record and the console say so (the test split has both labels)."""
    argv = ["run", "--methods", "zero-shot", "--tasks", "zoo-sentiment", "--backend", "hf"]
    argv += ["--model", str(model_dir), "--limit", "24", "--run-id", "flat"]
    assert main([*argv, "--results-dir", str(tmp_path / "r"), "--no-cache"]) == 0
    (cell,) = RunStore(tmp_path / "r" / "flat").cells()
    preds = RunStore(tmp_path / "r" / "flat").predictions(cell.cell_id)
    assert {p["answer"] for p in preds} == {None}  # the precondition the warning is about
    assert len({p["target"] for p in preds}) > 1
    (warning,) = cell.warnings
    assert warning.startswith("one answer throughout: no parseable answer for 24 of 24")
    assert "WARNING" in capsys.readouterr().err  # the console writes to stderr


def test_records_carry_disclosures_traces_and_the_prompts_sent(
    tmp_path: Path, model_dir: Path
) -> None:
    """A cell's record holds what its tuner disclosed; its trace (every event, as strict
    JSON: -inf as null) is written beside the records, for a failed cell too; each
    prediction keeps the prompt that was sent. A method that traces nothing gets no file."""
    from benchmarks.perf import suite_config
    from benchmarks.runner import Runner
    from benchmarks.tasks.base import get_task

    config = suite_config(
        tmp_path, "told", model=str(model_dir), methods=["test-discloser", "zero-shot"], limit=3
    )
    with Runner(config) as runner:
        done, plain = runner.run(runner.plan())
    store = RunStore(tmp_path / "results" / "told")
    assert done.status == "ok" and [(d.kind, d.detail) for d in done.disclosures] == [
        ("truncated", "2 of 5 demonstrations cut")
    ]
    assert store.read_cell(done.cell_id).disclosures == done.disclosures  # type: ignore[union-attr]
    trace = json.loads(store.trace_path(done.cell_id).read_text())
    assert trace == {
        "cell_id": done.cell_id,
        "method": "test-discloser",
        "events": [
            {"event": "step", "step": 0, "scores": [0.5, None]},
            {"event": "step", "step": 1, "scores": [0.75]},
        ],
    }
    task = get_task("zoo-sentiment")
    tests = {ex.id: ex for ex in task.examples("test")}
    rows = store.predictions(done.cell_id)
    assert len(rows) == 3
    assert all(r["prompt"] == task.render(tests[r["id"]], instruction=task.instructions[0])
               for r in rows)  # fmt: skip
    assert plain.disclosures == [] and not store.trace_path(plain.cell_id).exists()

    config.method_options = {"test-discloser": {"fail": True}}
    config.run_id = "failed"
    with Runner(config) as runner:
        failed, _ = runner.run(runner.plan())
    store = RunStore(tmp_path / "results" / "failed")
    assert failed.status == "failed" and failed.reason == "RuntimeError: boom"
    assert [d.kind for d in failed.disclosures] == ["truncated"]
    assert len(json.loads(store.trace_path(failed.cell_id).read_text())["events"]) == 2
