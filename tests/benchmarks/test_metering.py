from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.metering import CallRecord, PriceTable, UsageMeter, total_tokens
from methods.registry import BenchError


def _call(
    phase: str, role: str, p: int, c: int, cached: bool, model: str = "gpt-4o-mini"
) -> CallRecord:
    return CallRecord(role, phase, model, "generate", p, c, cached, 0.1)


def test_billed_excludes_cache_hits_idealized_counts_them() -> None:
    meter = UsageMeter()
    meter.record(_call("tune", "task", 100, 10, cached=False))
    meter.record(_call("tune", "task", 100, 10, cached=True))
    meter.record(_call("tune", "proposer", 50, 50, cached=False))
    meter.record(_call("eval", "task", 200, 20, cached=False))
    s = meter.summary()
    assert s["billed"]["tune"]["task"]["tokens"] == 110
    assert s["idealized"]["tune"]["task"]["tokens"] == 220
    assert s["billed"]["tune"]["proposer"]["calls"] == 1
    assert total_tokens(s, "billed") == 110 + 100 + 220
    assert total_tokens(s, "idealized", "tune") == 320
    assert s["cache_hits"] == 1
    # gpt-4o-mini: $0.15 / $0.60 per million.
    assert s["billed"]["eval"]["task"]["usd"] == pytest.approx((200 * 0.15 + 20 * 0.6) / 1e6)


def test_unpriced_model_is_na_never_zero() -> None:
    meter = UsageMeter()
    meter.record(_call("eval", "task", 10, 10, cached=False, model="my-local-model"))
    assert meter.summary()["billed"]["eval"]["task"]["usd"] is None


def test_compute_is_timed_in_the_current_phase() -> None:
    meter = UsageMeter(device="cpu")
    meter.phase = "tune"
    with meter.compute("busy"):
        sum(i * i for i in range(200_000))
    s = meter.summary()["compute"]
    assert s["tune"]["seconds"] > 0 and s["tune"]["device"] == "cpu"
    assert s["tune"]["peak_mem_mb"] > 0
    assert "eval" not in s


def test_compute_blocks_of_one_label_are_merged() -> None:
    meter = UsageMeter(device="cpu")
    meter.phase = "eval"
    for _ in range(50):  # e.g. one block per decoding step
        with meter.compute("white-box decoding"):
            sum(i * i for i in range(2_000))
    with meter.compute("adapter"):
        pass
    s = meter.summary()["compute"]["eval"]
    assert [(b["label"], b["count"]) for b in s["blocks"]] == [
        ("white-box decoding", 50),
        ("adapter", 1),
    ]
    assert sum(b["seconds"] for b in s["blocks"]) == pytest.approx(s["seconds"], abs=1e-3)


def test_price_table_errors(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("models:\n  m: {input_per_mtok: 1}\n", encoding="utf-8")
    with pytest.raises(BenchError, match="needs input_per_mtok and output_per_mtok"):
        PriceTable(bad)
    bad.write_text("models: [1, 2", encoding="utf-8")
    with pytest.raises(BenchError, match="not valid YAML"):
        PriceTable(bad)
    assert PriceTable().version


def test_total_usd_sums_phases_and_is_na_when_any_call_is_unpriced() -> None:
    from benchmarks.metering import total_usd

    meter = UsageMeter()
    meter.record(_call("tune", "task", 1_000_000, 0, cached=False))
    meter.record(_call("eval", "task", 0, 1_000_000, cached=False))
    s = meter.summary()
    assert total_usd(s) == pytest.approx(0.15 + 0.60)
    assert total_usd(s, phase="eval") == pytest.approx(0.60)
    meter.record(_call("eval", "proposer", 1, 1, cached=False, model="unpriced"))
    assert total_usd(meter.summary()) is None
    assert total_usd(meter.summary(), phase="tune") == pytest.approx(0.15)
