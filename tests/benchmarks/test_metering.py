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


def test_request_time_is_wall_time_and_sum_under_names_that_say_which() -> None:
    """Two requests of 2 s each, in flight together for 1.5 s: 2.5 s of wall time with a
    request in flight, 4 s of summed latency; no ambiguous ``latency_s``."""
    meter = UsageMeter()
    meter.record(CallRecord("task", "eval", "m", "generate", 1, 1, False, 2.0, answered_at=10.0))
    meter.record(CallRecord("task", "eval", "m", "generate", 1, 1, False, 2.0, answered_at=10.5))
    meter.record(CallRecord("task", "eval", "m", "generate", 1, 1, False, 1.0, answered_at=20.0))
    meter.record(CallRecord("task", "eval", "m", "generate", 1, 1, True, 0.0, answered_at=0.0))
    s = meter.summary()
    assert s["request_wall_s"] == pytest.approx(3.5)
    assert s["request_latency_sum_s"] == pytest.approx(5.0)
    assert "latency_s" not in s


def test_metered_calls_carry_their_answer_time(tmp_path: Path) -> None:
    from benchmarks.backends.hf import HFBackend
    from benchmarks.client import MeteredBlackBox
    from benchmarks.tiny import tiny_model_dir, torch_threads

    meter = UsageMeter()
    bb = MeteredBlackBox(HFBackend(str(tiny_model_dir(tmp_path / "tiny"))), meter=meter)
    with torch_threads(1):
        bb.generate(["Q: 1 + 1\nA:"], n=1, temperature=0.0, max_tokens=3)
    (call,) = meter.calls
    assert call.answered_at > 0 and call.latency_s > 0
    s = meter.summary()
    assert 0 < s["request_wall_s"] <= s["request_latency_sum_s"] + 1e-9


def test_old_records_request_time_reads_as_a_sum_with_unknown_wall_time() -> None:
    from benchmarks.metering import request_seconds

    assert request_seconds({"latency_s": 223.0}) == (None, 223.0)
    assert request_seconds({"request_wall_s": 9.0, "request_latency_sum_s": 223.0}) == (9.0, 223.0)
    assert request_seconds({}) == (None, None)
