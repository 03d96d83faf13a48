"""Crashes: `bench run` killed with SIGKILL at random points and continued with ``--resume``
ends with the records of an uninterrupted run (nothing duplicated, missing or half written,
no finished cell redone); a model server that dies mid-run stops the run at once with a
clear message, and ``--resume`` against a new server finishes it."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.results import LOCK_NAME, RunStore
from benchmarks.server import ServerHandle, start_server
from benchmarks.tiny import torch_threads
from tests.benchmarks.conftest import tiny_run_argv

REPO = Path(__file__).resolve().parents[2]
KILL_SEED = 8


@pytest.fixture
def model(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture
def server(tiny_server: ServerHandle) -> ServerHandle:
    return tiny_server


def _argv(url: str, results: Path, cache: Path, *, seeds: str, limit: int) -> list[str]:
    return tiny_run_argv(
        url,
        *("--run-id", "k", "--results-dir", str(results), "--cache-dir", str(cache)),
        seeds=seeds,
        limit=limit,
    )


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TQDM_DISABLE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.cli", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _wait_until_running(proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Return once ``proc`` has planned and starts running cells (it prints the projection
    then), or has exited; its stderr keeps being drained so it never blocks on a full pipe."""
    started = threading.Event()

    def drain() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.startswith("projected:"):
                started.set()
        started.set()

    threading.Thread(target=drain, daemon=True).start()
    assert started.wait(timeout), "the run never started"


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _finished(store: RunStore) -> dict[str, str]:
    """cell id -> created_at of the records on disk."""
    return {c.cell_id: c.created_at for c in store.cells()}


def assert_intact(root: Path) -> None:
    """No temporary files; every JSON file parses; every JSONL line parses, ids unique."""
    leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    for path in root.rglob("*.json"):
        json.loads(path.read_text(encoding="utf-8"))
    for path in root.rglob("*.jsonl"):
        ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(ids) == len(set(ids)), f"duplicated rows in {path}"


def assert_same_records(store: RunStore, reference: RunStore) -> None:
    got = {c.cell_id: c for c in store.cells()}
    want = {c.cell_id: c for c in reference.cells()}
    assert set(got) == set(want), "cells lost or added"
    for cid, record in want.items():
        assert got[cid].status == record.status == "ok", got[cid].reason
        assert (got[cid].accuracy, got[cid].n_eval) == (record.accuracy, record.n_eval)
        assert store.predictions(cid) == reference.predictions(cid)


def _kill_and_resume(
    tmp_path: Path, server: ServerHandle, *, kills: int, seeds: str, limit: int
) -> tuple[int, int, list[int]]:
    """Run once uninterrupted and once killed ``kills`` times at random points then resumed;
    returns (kills that hit a running process, records lost, records on disk at each kill).

    Kill points are drawn (seeded) as a number of finished cells to wait for, in increasing
    order, plus a random delay of up to a second: so kills land inside cells at every stage
    of the grid, in the middle of evaluations and of record writes."""
    assert main(_argv(server.base_url, tmp_path / "ref", tmp_path / "ref-cache", seeds=seeds,
                      limit=limit)) == 0  # fmt: skip
    reference = RunStore(tmp_path / "ref" / "k")
    argv = _argv(server.base_url, tmp_path / "res", tmp_path / "cache", seeds=seeds, limit=limit)
    store = RunStore(tmp_path / "res" / "k")
    rng = random.Random(KILL_SEED)
    n_cells = len(reference.cells())
    targets = sorted(rng.randrange(n_cells) for _ in range(kills))
    survived, at_kill = 0, []
    kept: dict[str, str] = {}
    for i, target in enumerate(targets):
        proc = _spawn(argv + (["--resume"] if i else []))
        _wait_until_running(proc)
        while len(_finished(store)) < target and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 1.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            survived += 1
            at_kill.append(len(_finished(store)))
        else:
            assert proc.returncode == 0
        # Finished work is never lost nor redone: every record seen so far stays as it was.
        on_disk = _finished(store)
        assert all(on_disk.get(cid) == created for cid, created in kept.items())
        kept = on_disk
    final = _spawn([*argv, "--resume"])
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    assert all(_finished(store).get(cid) == created for cid, created in kept.items())
    assert_intact(store.root)
    assert_same_records(store, reference)
    lost = len(reference.cells()) - len(store.cells())
    return survived, lost, at_kill


def test_sigkill_at_random_points_then_resume_gives_the_uninterrupted_records(
    tmp_path: Path, server: ServerHandle
) -> None:
    survived, lost, at = _kill_and_resume(tmp_path, server, kills=3, seeds="0,1,2", limit=40)
    print(f"\nSIGKILL: {survived} kills survived (cells done at each: {at}), {lost} lost")
    assert survived >= 1 and lost == 0


@pytest.mark.slow
def test_many_sigkills(tmp_path: Path, server: ServerHandle) -> None:
    survived, lost, at = _kill_and_resume(tmp_path, server, kills=10, seeds="0,1,2,3", limit=64)
    print(f"\nSIGKILL (slow): {survived} kills survived (cells done at each: {at}), {lost} lost")
    assert survived >= 5 and lost == 0


def test_stale_temporary_files_are_cleared_on_resume(tmp_path: Path, server: ServerHandle) -> None:
    argv = _argv(server.base_url, tmp_path / "r", tmp_path / "c", seeds="0", limit=4)
    assert main(argv) == 0
    store = RunStore(tmp_path / "r" / "k")
    before = _finished(store)
    cid = sorted(before)[0]
    # What a writer killed between write and rename leaves behind, and a half-written record.
    (store.root / "cells" / f".{cid}.json.x1.tmp").write_text('{"half": ')
    (store.root / "predictions" / f".{cid}.jsonl.x2.tmp").write_text('{"id": "t')
    (store.artifact_dir(cid) / "policy.json.tmp").write_text('{"kind": "pr')
    store.cell_path(cid).unlink()  # the cell was not finished: resume runs it
    assert main([*argv, "--resume"]) == 0
    assert_intact(store.root)
    after = _finished(store)
    assert set(after) == set(before) and after[cid] != before[cid]


def test_a_second_process_cannot_run_the_same_run(tmp_path: Path, server: ServerHandle) -> None:
    from filelock import FileLock

    argv = _argv(server.base_url, tmp_path / "r", tmp_path / "c", seeds="0", limit=2)
    assert main(argv) == 0
    store = RunStore(tmp_path / "r" / "k")
    victim = sorted(_finished(store))[0]
    store.cell_path(victim).unlink()
    with FileLock(str(store.root / LOCK_NAME)):  # another process holds the run
        assert main([*argv, "--resume"]) == 2
    assert victim not in _finished(store)
    assert main([*argv, "--resume"]) == 0 and victim in _finished(store)


def test_server_killed_mid_run_stops_the_run_and_resume_finishes_it(
    tmp_path: Path, model: Path, server: ServerHandle
) -> None:
    with torch_threads(1):
        handle = start_server(model, model_name="tiny")
    options = ["--max-retries", "2", "--request-timeout", "5"]
    argv = _argv(handle.base_url, tmp_path / "r", tmp_path / "c", seeds="0,1,2", limit=40)
    argv += options
    store = RunStore(tmp_path / "r" / "k")
    try:
        proc = _spawn(argv)
        _wait_for(store.root / "cells", proc)  # the first cell is finished
        os.kill(handle.pid, signal.SIGKILL)
        handle.process.wait(10)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=120)
        stopped_after = time.monotonic() - t0
    finally:
        handle.stop()
    assert proc.returncode == 3, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("bench: error: openai backend: tiny at http://127.0.0.1:")
    assert "did not answer after 3 attempts" in last and "--resume --run-id k" in last
    assert stopped_after < 60  # it stops, it does not hang
    finished = _finished(store)
    assert 1 <= len(finished) < 6
    assert_intact(store.root)
    # Resumed against another server of the same model (the endpoint may move).
    again = _argv(server.base_url, tmp_path / "r", tmp_path / "c", seeds="0,1,2", limit=40)
    assert main([*again, *options, "--resume"]) == 0
    assert len(store.cells()) == 6 and all(c.status == "ok" for c in store.cells())
    assert all(_finished(store)[cid] == created for cid, created in finished.items())
    print(f"\nserver killed: run stopped {stopped_after:.1f} s later; resumed to 6/6 cells")
