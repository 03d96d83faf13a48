"""Out-of-tree plugins: a real installable package (tests/plugin_pkg) registers a method and
a task through entry points only; `bench` finds them without any change to the tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(PLUGIN),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(f"plugin install failed: {result.stderr[-2000:]}")
    return target


def _bench(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(Path.cwd())])}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_plugin_method_and_task_are_listed(plugin_site: Path, tmp_path: Path) -> None:
    methods = _bench(plugin_site, "ls", "methods", cwd=tmp_path)
    assert methods.returncode == 0, methods.stderr
    assert "echo-instruction" in methods.stdout
    tasks = _bench(plugin_site, "ls", "tasks", cwd=tmp_path)
    assert "plugin-parity" in tasks.stdout


def test_plugin_runs_end_to_end(plugin_site: Path, tmp_path: Path) -> None:
    from benchmarks.tiny import tiny_model_dir

    model = tiny_model_dir(tmp_path / "tiny")
    run = _bench(
        plugin_site,
        "run",
        "--methods",
        "echo-instruction,zero-shot",
        "--tasks",
        "plugin-parity",
        "--backend",
        "hf",
        "--model",
        str(model),
        "--limit",
        "4",
        "--run-id",
        "p",
        "--results-dir",
        str(tmp_path / "r"),
        "--cache-dir",
        str(tmp_path / "c"),
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    cells = sorted(p.name.split("__")[:2] for p in (tmp_path / "r" / "p" / "cells").glob("*.json"))
    assert cells == [["echo-instruction", "plugin-parity"], ["zero-shot", "plugin-parity"]]
    policy = (tmp_path / "r" / "p" / "artifacts").glob("echo-instruction*/policy.json")
    assert "Even or odd?" in next(policy).read_text()


def test_plugin_absent_means_unknown(tmp_path: Path) -> None:
    from benchmarks.cli import main

    assert main(["ls", "methods"]) == 0
    from methods import methods

    assert "echo-instruction" not in methods.names()
