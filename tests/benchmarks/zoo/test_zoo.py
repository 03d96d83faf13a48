"""The committed zoo: weights load and match their manifest, the server serves them, and
(slow) the testbed properties a-d of `bench zoo check` hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.zoo import available, model_dir, verify_manifest
from methods.registry import BenchError


def test_committed_models_pass_their_manifest() -> None:
    assert {"zoo-large", "zoo-small"} <= set(available())
    for name in ("zoo-large", "zoo-small"):
        path = model_dir(name)
        stats = json.loads((path / "training.json").read_text())
        assert stats["params"] < (1.5e6 if name == "zoo-small" else 1e7)
    total = sum(f.stat().st_size for f in model_dir("zoo-large").parent.rglob("*") if f.is_file())
    assert total < 30 * 2**20  # all zoo files together at most 30 MB


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "zoo-large"
    shutil.copytree(model_dir("zoo-large"), copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BenchError, match="checksum mismatch"):
        verify_manifest(copy)


def test_unknown_zoo_model_names_the_available_ones() -> None:
    with pytest.raises(BenchError, match="available: zoo-large, zoo-small"):
        model_dir("zoo-huge")


@pytest.mark.slow
def test_testbed_properties_hold() -> None:
    from benchmarks.zoo.check import check_zoo

    results = check_zoo(model_dir("zoo-large"), model_dir("zoo-small"), n=100, log=lambda s: None)
    failures = [f"{r.task}: {f}" for r in results for f in r.failures]
    assert not failures, "; ".join(failures)
