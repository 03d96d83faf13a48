"""`bench perf server` runs end to end (on the tiny model); figures are printed, not asserted."""

from __future__ import annotations

from pathlib import Path

from benchmarks.perf import server_throughput
from benchmarks.tiny import tiny_model_dir


def test_server_throughput_measures_both_sides(tmp_path: Path) -> None:
    result = server_throughput(tiny_model_dir(tmp_path), concurrency=4, max_tokens=8, repeats=1)
    assert result.direct_tps > 0 and result.server_tps > 0
    assert "ratio" in result.describe()
