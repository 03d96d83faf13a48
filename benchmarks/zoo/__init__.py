"""The model zoo: small language models the project trains on its generated tasks.

Weights live in ``benchmarks/zoo/weights/<name>/`` (safetensors + tokenizer + config) with a
checksum manifest verified at load time.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.models import MANIFEST, verify_manifest, write_manifest
from methods.registry import BenchError

WEIGHTS = Path(__file__).resolve().parent / "weights"


def available() -> list[str]:
    return sorted(p.parent.name for p in WEIGHTS.glob(f"*/{MANIFEST}"))


def model_dir(name: str, *, verify: bool = True) -> Path:
    """The directory of zoo model ``name``, its files checked against the manifest."""
    path = WEIGHTS / name
    if not (path / MANIFEST).exists():
        have = ", ".join(available()) or "none built yet"
        raise BenchError(
            f"zoo model {name!r} not found (available: {have}); build it with `bench zoo train`"
        )
    if verify:
        verify_manifest(path)
    return path


__all__ = ["MANIFEST", "WEIGHTS", "available", "model_dir", "verify_manifest", "write_manifest"]
