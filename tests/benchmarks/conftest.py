"""Fixtures shared by the harness tests: one tiny model served once per session, and the
`bench run` argv that drives it."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --------------------------------------------------------------------------------------------
# Named models (benchmarks/models.py) pulled offline from a local wheel.
# --------------------------------------------------------------------------------------------

#: the test model's names, package and member path in its wheel.
TINY_LLAMA = "tiny-llama"
TINY_LLAMA_SLICE = "tiny-llama-slice1"
TINY_LLAMA_PACKAGE = ("tiny-llama-gguf", "0.1.0")
TINY_LLAMA_MEMBER = "tiny_llama_gguf/model.gguf"


@dataclass(frozen=True)
class TinyLlamaWheel:
    """The tiny Llama (`benchmarks.tiny.build_tiny_llama`), its GGUF file and its wheel."""

    model_dir: Path
    gguf: Path
    wheels: Path
    sha256: str
    size: int


@pytest.fixture(scope="session")
def tiny_llama_wheel(tmp_path_factory: pytest.TempPathFactory) -> TinyLlamaWheel:
    """The tiny Llama written as a float32 GGUF (llama.cpp's layout) inside a local wheel."""
    from benchmarks.tiny import build_tiny_llama
    from tests.benchmarks.tiny_gguf import pack_wheel, write_llama_gguf

    root = tmp_path_factory.mktemp("tiny-llama")
    model_dir = build_tiny_llama(root / "tiny-llama-hf", seed=0)
    gguf = write_llama_gguf(model_dir, root / "model.gguf")
    data = gguf.read_bytes()
    wheels = root / "wheels"
    pack_wheel(wheels, *TINY_LLAMA_PACKAGE, {TINY_LLAMA_MEMBER: data})
    return TinyLlamaWheel(model_dir, gguf, wheels, hashlib.sha256(data).hexdigest(), len(data))


def tiny_llama_specs(wheel: TinyLlamaWheel, *, sha256: str | None = None) -> dict[str, Any]:
    """The test's named models: the tiny Llama pulled from its wheel and a 1-block slice."""
    from benchmarks.models import ModelSpec

    return {
        TINY_LLAMA: ModelSpec(
            name=TINY_LLAMA,
            kind="gguf",
            description="a tiny random Llama with a chat template (tests)",
            packages=(TINY_LLAMA_PACKAGE,),
            members=(TINY_LLAMA_MEMBER,),
            sha256=sha256 or wheel.sha256,
            size=wheel.size,
            license="Apache-2.0",
            prompt_format="chat",
            companions={"token": TINY_LLAMA_SLICE},
        ),
        TINY_LLAMA_SLICE: ModelSpec(
            name=TINY_LLAMA_SLICE,
            kind="slice",
            description="the first block of tiny-llama (tests)",
            prompt_format="chat",
            parent=TINY_LLAMA,
            layers=1,
        ),
    }


def use_tiny_llama(
    monkeypatch: pytest.MonkeyPatch,
    wheel: TinyLlamaWheel,
    home: Path,
    *,
    find_links: Path | None = None,
    sha256: str | None = None,
) -> Path:
    """Register the tiny Llama's specs beside the real ones, with $BENCH_HOME at ``home`` and
    pip pointed at ``find_links`` (default: the wheel's folder) only; returns ``home``."""
    from benchmarks import models

    monkeypatch.setattr(
        models, "MODELS", {**models.MODELS, **tiny_llama_specs(wheel, sha256=sha256)}
    )
    monkeypatch.setenv(models.HOME_ENV, str(home))
    links = find_links or wheel.wheels
    monkeypatch.setenv(models.PIP_OPTIONS_ENV, f"--no-index --find-links {links}")
    monkeypatch.setenv(models.NO_PULL_ENV, "")  # restored after the test (`--no-pull` sets it)
    # pip sees only the options above: no machine-wide find-links, index or config file.
    for name in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return home


@pytest.fixture
def llama_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_llama_wheel: TinyLlamaWheel
) -> Path:
    """An empty $BENCH_HOME where `tiny-llama` can be pulled from its local wheel."""
    return use_tiny_llama(monkeypatch, tiny_llama_wheel, tmp_path / "home")
