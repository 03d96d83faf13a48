from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.cache import ResponseCache
from benchmarks.cli import main


def test_ls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "few-shot" in out and "needs: generate" in out
    assert main(["ls", "tasks"]) == 0
    out = capsys.readouterr().out
    for task in ("gsm8k", "strategyqa", "truthfulqa", "sst2", "agnews", "scienceqa", "zoo-arith"):
        assert task in out
    assert main(["ls", "backends"]) == 0
    out = capsys.readouterr().out
    assert "openai" in out and "hf" in out and "zoo" in out


def test_cache_stats_and_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = ResponseCache(tmp_path)
    cache.put("aa" * 32, {"v": 1})
    assert main(["cache", "stats", "--cache-dir", str(tmp_path)]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--cache-dir", str(tmp_path)]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert cache.stats().entries == 0


def test_config_file_keys_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("methods: zero-shot\nbudgett: light\n", encoding="utf-8")
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'budgett'" in err and "budget" in err
    cfg.write_text("- a\n- b\n", encoding="utf-8")
    assert main(["run", "--config", str(cfg)]) == 2
    assert "expected a mapping" in capsys.readouterr().err


def test_unknown_subcommand_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_report_without_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--results-dir", str(tmp_path)]) == 2
    assert "no runs" in capsys.readouterr().err
