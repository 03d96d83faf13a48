"""Fixtures shared by the harness tests: one tiny model served once per session, and the
`bench run` argv that drives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.server import ServerHandle, start_server
from benchmarks.tiny import tiny_model_dir, torch_threads


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`benchmarks.tiny`'s randomly initialised model, built once."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_server(tiny_model: Path) -> Iterator[ServerHandle]:
    """The tiny model behind the project's server on 127.0.0.1 (no key, no faults), for the
    tests that drive `bench run` through the `openai` backend."""
    with torch_threads(1), start_server(tiny_model, model_name="tiny") as handle:
        yield handle


def tiny_run_argv(
    url: str,
    *extra: str,
    methods: str = "zero-shot,few-shot",
    tasks: str = "zoo-sentiment",
    seeds: str | None = "0,1",
    limit: int | None = 6,
) -> list[str]:
    """The `bench run` argv for the tiny model served at `url` (the `tiny_server` fixture's,
    or a test's own) through the `openai` backend's completions API.

    Args:
        url: The server's base URL (ending in ``/v1``).
        *extra: Further flags, appended last (run id, results and cache dirs, caps...).
        methods: The ``--methods`` value.
        tasks: The ``--tasks`` value.
        seeds: The ``--seeds`` value; None leaves the flag out (the CLI's default, or `extra`'s).
        limit: The ``--limit`` value; None leaves the flag out.

    Returns:
        The argv, without the program name, for `benchmarks.cli.main` or a subprocess.
    """
    argv = ["run", "--methods", methods, "--tasks", tasks, "--backend", "openai"]
    argv += ["--base-url", url, "--api", "completions", "--model", "tiny"]
    if seeds is not None:
        argv += ["--seeds", seeds]
    if limit is not None:
        argv += ["--limit", str(limit)]
    return [*argv, *extra]
