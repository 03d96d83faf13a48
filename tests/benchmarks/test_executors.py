"""Executors: ``bench run --executor ray`` runs each cell as a Ray task on a local cluster that
the tests start (``ray.init(num_cpus=2)``, plus one declared GPU), and ends with the records a
local run of the same grid writes; a worker killed mid-cell is replaced and its cell retried
(all cells ok, none duplicated); a method that raises fails its cell only; run caps hold
across cells running at once; white-box cells get the GPU, others see none; workers call the
driver's zoo server. The Ray tests skip cleanly where ray is not installed."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks.backends.base import GenerateRequest
from benchmarks.backends.zoo import ZooBackend
from benchmarks.cli import build_parser, main, run_config_from_args
from benchmarks.errors import BackendUnavailable
from benchmarks.executors import gpus_for, open_worker_backend
from benchmarks.results import RunStore
from benchmarks.runner import BackendSpec
from benchmarks.server import ServerHandle
from methods import GENERATE, BlackBoxTuner, PromptPolicy, get_method, register_method
from methods.base import AdaptedPolicy, BlackBox, Example, TaskLike, TuneContext
from tests.benchmarks.conftest import tiny_run_argv
from tests.benchmarks.test_kill_resume import assert_intact


@dataclass(frozen=True)
class _DiesOnceConfig:
    #: where the first attempt of each seed leaves a marker before it kills its process.
    marker_dir: str = ""
    #: the test process: never killed, whatever happens (a safety net for local runs).
    driver_pid: int = 0


@register_method("test-dies-once")
class DiesOnce(BlackBoxTuner):
    """Zero-shot whose first attempt per seed SIGKILLs its worker mid-tuning (test fixture)."""

    Config = _DiesOnceConfig
    config: _DiesOnceConfig

    def fit(
        self,
        train: Sequence[Example],
        *,
        task: TaskLike,
        backend: BlackBox,
        dev: Sequence[Example] | None = None,
        proposer: BlackBox | None = None,
        context: TuneContext | None = None,
    ) -> AdaptedPolicy:
        seed = context.seed if context else 0
        backend.generate([f"Q: probe {seed}\nA:"], max_tokens=2)  # some work done, then death
        marker = Path(self.config.marker_dir) / f"s{seed}"
        if self.config.marker_dir and not marker.exists() and os.getpid() != self.config.driver_pid:
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return PromptPolicy(instruction=task.instructions[0] if task.instructions else None)


@dataclass(frozen=True)
class _RaisesConfig:
    unused: int = 0


@register_method("test-raises")
class Raises(BlackBoxTuner):
    """A method with a bug (test fixture): its cells fail, the run goes on."""

    Config = _RaisesConfig

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug in the method")


@dataclass(frozen=True)
class _SpenderConfig:
    calls: int = 8


@register_method("test-spender")
class Spender(BlackBoxTuner):
    """Makes ``calls`` tuning calls while planning one (test fixture for run caps)."""

    Config = _SpenderConfig
    config: _SpenderConfig

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        seed = context.seed if context else 0
        for i in range(self.config.calls):
            backend.generate([f"Q: seed {seed} probe {i}\nA:"], max_tokens=2)
        return PromptPolicy(instruction=None)


@dataclass(frozen=True)
class _ProbeConfig:
    #: where each cell writes the GPUs Ray gave it.
    probe_dir: str = ""


@register_method("test-gpu-probe")
class GpuProbe(BlackBoxTuner):
    """Reports the GPUs its worker was given (test fixture for resource declarations)."""

    Config = _ProbeConfig
    config: _ProbeConfig
    uses_white_box = True

    def fit(self, train, *, task, backend, dev=None, proposer=None, context=None):  # type: ignore[no-untyped-def]
        import ray

        seed = context.seed if context else 0
        seen = {"gpus": ray.get_gpu_ids(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES")}
        (Path(self.config.probe_dir) / f"{self.name}-s{seed}.json").write_text(json.dumps(seen))
        return PromptPolicy(instruction=None)


@register_method("test-cpu-probe")
class CpuProbe(GpuProbe):
    """The same, for a method with no white-box models."""

    uses_white_box = False


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray cluster of two CPUs and one (declared, not real) GPU for this module; skips
    where ray is missing."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    try:
        yield ray
    finally:
        ray.shutdown()


def _argv(
    url: str, root: Path, name: str, *extra: str, methods: str = "zero-shot,few-shot"
) -> list[str]:
    return tiny_run_argv(
        url,
        *("--run-id", name, "--results-dir", str(root / "results")),
        *("--cache-dir", str(root / f"cache-{name}"), *extra),
        methods=methods,
    )


def _billed_calls(usage: dict[str, Any]) -> int:
    return sum(r["calls"] for p in usage["billed"].values() for r in p.values())


# -- without Ray --------------------------------------------------------------------------------


def test_executor_flags_reach_the_run_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(["run", "--executor", "ray", "--ray-address", "auto"])
    config, _ = run_config_from_args(args)
    assert (config.executor, config.ray_address) == ("ray", "auto")
    assert "executor" not in config.describe()  # a run may be resumed under either executor
    path = tmp_path / "run.yaml"
    path.write_text("executor: ray\nray_address: ray://head:10001\n")
    config, _ = run_config_from_args(build_parser().parse_args(["run", "--config", str(path)]))
    assert (config.executor, config.ray_address) == ("ray", "ray://head:10001")
    default, _ = run_config_from_args(build_parser().parse_args(["run"]))
    assert (default.executor, default.ray_address) == ("local", None)


def test_bad_executor_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--executor", "dask"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'dask'" in capsys.readouterr().err
    assert main(["run", "--ray-address", "auto", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--ray-address is for --executor ray" in err
    path = tmp_path / "run.yaml"
    path.write_text("executor: spark\n")
    assert main(["run", "--config", str(path)]) == 2
    assert "executor must be one of local, ray" in capsys.readouterr().err


def test_ray_missing_is_refused_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails, as if not installed
    nowhere = "http://127.0.0.1:9/v1"  # never called: the refusal comes first
    assert main(_argv(nowhere, tmp_path, "r", "--executor", "ray")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'blackbox-bench[ray]'" in err
    assert not (tmp_path / "results").exists()


def test_a_worker_uses_the_drivers_zoo_server(tiny_model: Path) -> None:
    with ZooBackend(str(tiny_model)) as driver:
        driver.check_ready()
        driver.start()  # as the driver does before handing its server's URL to workers
        spec = BackendSpec("zoo", str(tiny_model), {})
        with open_worker_backend(spec, driver.base_url) as worker:
            assert isinstance(worker, ZooBackend)
            assert worker.base_url == driver.base_url and worker._handle is None  # no 2nd server
            assert worker.identity() == driver.identity()  # so the cache is shared
            assert worker.capabilities == driver.capabilities and GENERATE in worker.capabilities
            (result,) = worker.generate_batch([GenerateRequest("Q: hi\nA:", max_tokens=3)])
            assert result.completion_tokens > 0
    with pytest.raises(BackendUnavailable, match="the driver's server"):
        open_worker_backend(spec, driver.base_url)  # that server is gone now


def test_only_white_box_methods_ask_for_a_gpu_and_only_where_there_is_one() -> None:
    white = ("bbox", "proxy-tuning", "contrastive-decoding", "aligner", "cobb")
    assert all(gpus_for(get_method(m), 1) == 1 for m in white)
    assert all(gpus_for(get_method(m), 0) == 0 for m in white)  # a CPU-only cluster
    assert all(gpus_for(get_method(m), 4) == 0 for m in ("zero-shot", "opro", "bbt", "grips"))


# -- on a local Ray cluster -------------------------------------------------------------------


@pytest.mark.slow  # the GPU cell's worker exits after it, so its replacement starts cold
def test_a_white_box_cell_gets_the_gpu_and_others_none(
    tmp_path: Path, tiny_server: ServerHandle, ray_cluster: Any
) -> None:
    argv = _argv(
        tiny_server.base_url, tmp_path, "p", "--executor", "ray", "--seeds", "0",
        "--set", f"test-gpu-probe.probe_dir={tmp_path}",
        "--set", f"test-cpu-probe.probe_dir={tmp_path}",
        methods="test-gpu-probe,test-cpu-probe",
    )  # fmt: skip
    assert main(argv) == 0
    seen = {p.stem: json.loads(p.read_text()) for p in tmp_path.glob("test-*-probe-s0.json")}
    assert seen["test-gpu-probe-s0"] == {"gpus": [0], "cuda": "0"}
    assert seen["test-cpu-probe-s0"] == {"gpus": [], "cuda": ""}  # hidden, not just unassigned
    print(f"\nworkers saw: {seen}")


def test_a_ray_run_writes_the_records_of_a_local_run(
    tmp_path: Path, tiny_server: ServerHandle, ray_cluster: Any
) -> None:
    url = tiny_server.base_url
    assert main(_argv(url, tmp_path, "local")) == 0
    assert main(_argv(url, tmp_path, "ray", "--executor", "ray")) == 0
    local, distributed = (RunStore(tmp_path / "results" / n) for n in ("local", "ray"))
    want = {c.cell_id: c for c in local.cells()}
    got = {c.cell_id: c for c in distributed.cells()}
    assert set(got) == set(want) and len(got) == 4
    for cid, record in want.items():
        other = got[cid]
        assert other.status == record.status == "ok"
        same = ("accuracy", "n_eval", "hyperparameters", "variant", "task_hash", "requires")
        assert {k: getattr(other, k) for k in same} == {k: getattr(record, k) for k in same}
        assert distributed.predictions(cid) == local.predictions(cid)
        policy = "policy.json"
        assert (distributed.artifact_dir(cid) / policy).read_text() == (
            local.artifact_dir(cid) / policy
        ).read_text()
    assert_intact(distributed.root)
    # Resumed under the other executor: nothing to do, every record kept as it was.
    before = {c.cell_id: c.created_at for c in distributed.cells()}
    assert main([*_argv(url, tmp_path, "ray"), "--resume"]) == 0
    assert {c.cell_id: c.created_at for c in distributed.cells()} == before


@pytest.mark.slow  # a killed worker's replacement starts cold (imports torch): ~10 s more
def test_a_killed_worker_is_retried_and_a_failing_method_fails_only_its_cells(
    tmp_path: Path, tiny_server: ServerHandle, ray_cluster: Any
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    argv = _argv(
        tiny_server.base_url, tmp_path, "k", "--executor", "ray",
        "--set", f"test-dies-once.marker_dir={markers}",
        "--set", f"test-dies-once.driver_pid={os.getpid()}",
        methods="test-dies-once,test-raises,zero-shot",
    )  # fmt: skip
    assert main(argv) == 1  # the failing method's cells
    assert sorted(p.name for p in markers.iterdir()) == ["s0", "s1"]  # both first attempts died
    store = RunStore(tmp_path / "results" / "k")
    cells = {(c.method, c.seed): c for c in store.cells()}
    assert len(cells) == len(store.cells()) == 6
    for seed in (0, 1):
        died, zero = cells["test-dies-once", seed], cells["zero-shot", seed]
        assert died.status == "ok" and zero.status == "ok"
        # The retry ran the cell afresh: the default instruction, as zero-shot.
        assert died.accuracy == zero.accuracy
        assert [r["output"] for r in store.predictions(died.cell_id)] == [
            r["output"] for r in store.predictions(zero.cell_id)
        ]
        failed = cells["test-raises", seed]
        assert failed.status == "failed" and failed.reason == "RuntimeError: a bug in the method"
    assert_intact(store.root)


@pytest.mark.slow
def test_a_cell_whose_worker_keeps_dying_fails_and_resume_reruns_it(
    tmp_path: Path, tiny_server: ServerHandle, ray_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import benchmarks.executors

    markers = tmp_path / "markers"
    markers.mkdir()
    argv = _argv(
        tiny_server.base_url, tmp_path, "d", "--executor", "ray", "--seeds", "0",
        "--set", f"test-dies-once.marker_dir={markers}",
        "--set", f"test-dies-once.driver_pid={os.getpid()}",
        methods="test-dies-once",
    )  # fmt: skip
    monkeypatch.setattr(benchmarks.executors, "RAY_MAX_RETRIES", 0)
    assert main(argv) == 1
    store = RunStore(tmp_path / "results" / "d")
    (cell,) = store.cells()
    assert cell.status == "failed" and (cell.reason or "").startswith("the worker died (1 attempt)")
    print(f"\n{cell.reason}")
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0  # the marker is there now: this attempt lives
    (cell,) = store.cells()
    assert cell.status == "ok" and cell.n_eval == 6
    assert_intact(store.root)


def test_a_run_cap_holds_across_cells_running_at_once(
    tmp_path: Path, tiny_server: ServerHandle, ray_cluster: Any
) -> None:
    argv = _argv(
        tiny_server.base_url, tmp_path, "c", "--executor", "ray", "--limit", "2",
        "--max-calls", "12", methods="test-spender",
    )  # fmt: skip
    assert main(argv) == 1
    cells = RunStore(tmp_path / "results" / "c").cells()
    assert len(cells) == 2
    # 2 cells x (8 tuning + 2 eval calls) wanted 20; the shared ledger admitted exactly 12.
    assert sum(_billed_calls(c.usage) for c in cells) == 12
    stopped = [c for c in cells if c.status == "budget_exhausted"]
    assert stopped and all("--max-calls 12 reached" in (c.reason or "") for c in stopped)
    print(f"\nrun cap under ray: {[(c.seed, c.status, _billed_calls(c.usage)) for c in cells]}")


@pytest.mark.slow
def test_perf_ray_measures_both_executors(tiny_model: Path, ray_cluster: Any) -> None:
    from benchmarks.perf import ray_overhead

    result = ray_overhead(str(tiny_model), seeds=(0,), limit=4)
    assert result.cells == 2 and result.workers == 2 and result.cluster_start_s is None
    assert min(result.local_s, result.ray_cold_s, result.ray_warm_s) > 0
    assert "ratio" in result.describe()
    print(f"\n{result.describe()}")


@pytest.mark.slow
def test_a_server_gone_mid_run_stops_a_ray_run_and_resume_finishes_it(
    tmp_path: Path,
    tiny_model: Path,
    tiny_server: ServerHandle,
    ray_cluster: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import threading
    import time

    from benchmarks.server import start_server
    from benchmarks.tiny import torch_threads

    with torch_threads(1):
        doomed = start_server(tiny_model, model_name="tiny")
    store = RunStore(tmp_path / "results" / "g")
    options = ["--executor", "ray", "--seeds", "0,1,2", "--limit", "40"]
    options += ["--max-retries", "2", "--request-timeout", "5"]

    def kill_after_first_record() -> None:
        deadline = time.monotonic() + 120
        while not store.cells() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(doomed.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_after_first_record, daemon=True)
    killer.start()
    try:
        code = main(_argv(doomed.base_url, tmp_path, "g", *options))
    finally:
        killer.join(30)
        doomed.stop()
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 3, last
    assert last.startswith("bench: error: openai backend: tiny at http://127.0.0.1:")
    assert "--resume --run-id g" in last
    finished = {c.cell_id: c.created_at for c in store.cells()}
    assert 1 <= len(finished) < 6
    assert_intact(store.root)
    again = _argv(tiny_server.base_url, tmp_path, "g", *options, "--resume")
    assert main(again) == 0
    assert len(store.cells()) == 6 and all(c.status == "ok" for c in store.cells())
    kept = {c.cell_id: c.created_at for c in store.cells()}
    assert all(kept[cid] == created for cid, created in finished.items())
