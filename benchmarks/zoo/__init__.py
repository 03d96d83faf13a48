"""The model zoo: small language models the project trains on its generated tasks.

Weights live in ``benchmarks/zoo/weights/<name>/`` (safetensors + tokenizer + config) with a
checksum manifest verified at load time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from methods.registry import BenchError

WEIGHTS = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"


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


def verify_manifest(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    for rel, digest in manifest["files"].items():
        f = path / rel
        if not f.exists():
            raise BenchError(f"zoo model {path.name}: file {rel} is missing")
        if hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise BenchError(f"zoo model {path.name}: checksum mismatch for {rel}")


def write_manifest(path: Path) -> None:
    files = {
        str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name != MANIFEST
    }
    (path / MANIFEST).write_text(json.dumps({"files": files}, indent=2), encoding="utf-8")
