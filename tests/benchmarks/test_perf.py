"""`bench perf server`, `suite` and `replay` run end to end (on the tiny model); figures are
printed, never asserted. The arithmetic of the suite table is checked on hand-made records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.cli import main
from benchmarks.perf import (
    MethodTime,
    Replay,
    SuiteTime,
    method_times,
    server_throughput,
    suite_config,
    time_suite,
)
from benchmarks.tiny import tiny_model_dir


def test_server_throughput_measures_both_sides(tmp_path: Path) -> None:
    result = server_throughput(tiny_model_dir(tmp_path), concurrency=4, max_tokens=8, repeats=1)
    assert result.direct_tps > 0 and result.server_tps > 0
    assert result.tokens_per_answer is not None and result.tokens_per_answer > 0
    assert "ratio" in result.describe()
    print(f"\n{result.describe()}")


def _record(
    method: str,
    wall: dict[str, float],
    wait: dict[str, float] | None,
    call: dict[str, float] | None = None,
    **kw: Any,
) -> Any:
    usage: dict[str, Any] = {"compute": kw.get("compute", {})}
    if wait is not None:
        usage["wait_s"] = wait
    if call is not None:
        usage["call_s"] = call
    return {"method": method, "status": kw.get("status", "ok"), "wall_s": wall, "usage": usage}


def test_method_times_split_wall_into_wait_harness_compute_and_the_rest() -> None:
    records = [
        _record("a", {"tune": 6.0, "eval": 4.0}, {"tune": 5.0, "eval": 2.0}, {"tune": 7.5}),
        _record(
            "b",
            {"tune": 8.0},
            {"tune": 2.0},
            {"tune": 2.0},
            compute={"tune": {"seconds": 9.0, "wall_s": 5.0}},  # CPU seconds > wall: threads
        ),
        _record("b", {"tune": 2.0}, {"tune": 1.0}, {"tune": 1.5}),
        _record("c", {}, {}, {}, status="refused"),  # nothing ran: not counted
        _record("d", {"eval": 3.0}, None),  # written before waits were metered
    ]
    times = {m.method: m for m in method_times(records)}
    assert set(times) == {"a", "b", "d"}
    a, b, d = times["a"], times["b"], times["d"]
    assert a == MethodTime("a", 1, 10.0, 7.0, 7.5, 0.0)
    assert (a.harness_s, a.other_s) == (0.5, 2.5)
    assert b == MethodTime("b", 2, 10.0, 3.0, 3.5, 5.0)  # compute by wall, not CPU seconds
    assert b.harness_s == pytest.approx(0.5) and b.other_s == pytest.approx(1.5)
    assert d.wait_s is None and d.harness_s is None and d.other_s is None
    table = SuiteTime(25.0, 2.0, [a, b]).table()
    assert "70.0%" in table and "5.0%" in table and "25.0%" in table  # a: box, harness, rest
    assert "all cells" in table and "planning and server start 2.0 s" in table
    assert "n/a" in SuiteTime(5.0, 1.0, [d]).table()


def test_replay_ratio_and_what_bounds_it() -> None:
    first = SuiteTime(100.0, 10.0, [MethodTime("a", 1, 90.0, 60.0, 65.0, 20.0)])
    again = SuiteTime(30.0, 8.0, [MethodTime("a", 1, 21.0, 0.0, 0.5, 20.0)])
    replay = Replay(first, again)
    assert replay.ratio == pytest.approx(0.3)
    text = replay.describe()
    assert "ratio 0.300" in text and "20.0 s in white-box compute" in text
    assert "without the compute the ratio would be 0.100" in text


def test_suite_and_replay_run_on_the_tiny_model(tmp_path: Path) -> None:
    options = {
        "model": str(tiny_model_dir(tmp_path / "m")),
        "methods": ["zero-shot", "few-shot"],
        "limit": 6,
    }
    first = time_suite(suite_config(tmp_path, "first", **options))
    again = time_suite(suite_config(tmp_path, "again", **options))
    assert [m.method for m in first.methods] == ["few-shot", "zero-shot"]
    for m in first.methods:
        assert m.cells == 1 and m.wait_s is not None and m.call_s is not None
        assert 0 < m.wait_s <= m.call_s <= m.wall_s + 1e-3  # records round wall_s to ms
    # the replay sends nothing: it never waits on the black box, only reads the caches
    assert all(m.wait_s == 0 for m in again.methods)
    print(f"\n{first.table()}\n{again.table()}\n{Replay(first, again).describe()}")


def test_perf_suite_reads_an_existing_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    time_suite(
        suite_config(
            tmp_path,
            "done",
            model=str(tiny_model_dir(tmp_path / "m")),
            methods=["zero-shot"],
            limit=3,
        )
    )
    assert main(["perf", "suite", "--run", str(tmp_path / "results" / "done")]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "black box" in out
    assert main(["perf", "replay", "--run", str(tmp_path / "results" / "done")]) == 2
    assert "--run reads an existing run" in capsys.readouterr().err
