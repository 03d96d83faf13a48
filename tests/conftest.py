"""Shared fixtures. Nothing here downloads anything: tests use generated data, the project's
own tiny models and server on 127.0.0.1, and ../shared/data where it exists."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.backends.base import Backend
from benchmarks.client import MeteredBlackBox

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data, or a clean skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def zoo_backend() -> Iterator[Backend]:
    """The committed `zoo-large` served by the project's server on 127.0.0.1 (grey box on),
    reached through the `openai` client: one server for the whole session."""
    from benchmarks.backends.zoo import ZooBackend
    from benchmarks.zoo import available

    if "zoo-large" not in available():
        pytest.skip("zoo-large weights are not present")
    backend = ZooBackend("zoo-large")
    try:
        backend.check_ready()
        yield backend
    finally:
        backend.close()


@pytest.fixture
def zoo_large(zoo_backend: Backend) -> MeteredBlackBox:
    """`zoo-large` as a tuner sees it (metered per test, no cache)."""
    from benchmarks.metering import UsageMeter

    return MeteredBlackBox(zoo_backend, meter=UsageMeter(), role="task")
