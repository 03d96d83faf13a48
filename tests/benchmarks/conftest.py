"""Fixtures shared by the harness tests: one tiny model served once per session."""

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
