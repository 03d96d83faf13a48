from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from benchmarks.cache import ResponseCache
from benchmarks.cli import main


def test_ls(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls", "methods"]) == 0
    out = capsys.readouterr().out
    assert "zero-shot" in out and "few-shot" in out and "needs: generate" in out
    assert re.search(r"^majority +needs: nothing ", out, re.M)  # no black-box call
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


def test_prompt_format_and_system_prompt_reach_the_backend_options(tmp_path: Path) -> None:
    from benchmarks.cli import build_parser, run_config_from_args

    argv = ["run", "--prompt-format", "chat", "--system-prompt", "Be brief.", "--model", "m"]
    config, _ = run_config_from_args(build_parser().parse_args(argv))
    assert config.backend.options["prompt_format"] == "chat"
    assert config.backend.options["system_prompt"] == "Be brief."
    cfg = tmp_path / "run.yaml"
    cfg.write_text("prompt_format: raw\nsystem_prompt: Be brief.\n", encoding="utf-8")
    config, _ = run_config_from_args(build_parser().parse_args(["run", "--config", str(cfg)]))
    assert config.backend.options["prompt_format"] == "raw"
    assert config.backend.options["system_prompt"] == "Be brief."
    # Not given: left to the backend (which records what it resolved).
    config, _ = run_config_from_args(build_parser().parse_args(["run"]))
    assert "prompt_format" not in config.backend.options


def test_the_proposer_keeps_its_own_prompt_format() -> None:
    """How the task model is prompted is not the proposer's: an API proposer beside a local
    raw black box keeps its chat default (inheriting raw would send it to completions)."""
    from benchmarks.cli import build_parser, run_config_from_args

    argv = ["run", "--backend", "hf", "--model", "m", "--prompt-format", "raw", "--system-prompt"]
    argv += ["Be brief.", "--proposer", "openai:gpt-4o-mini", "--request-timeout", "9"]
    config, _ = run_config_from_args(build_parser().parse_args(argv))
    assert config.proposer is not None and config.proposer.name == "openai"
    assert "prompt_format" not in config.proposer.options
    assert "system_prompt" not in config.proposer.options
    assert config.proposer.options["timeout_s"] == 9.0  # operational options still shared


def test_contradicting_api_and_prompt_format_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "--api", "completions", "--prompt-format", "chat", "--dry-run"]
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--api completions contradicts --prompt-format chat" in err and "\n" not in err


def test_unknown_task_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--methods", "zero-shot", "--tasks", "sst2", "--task-option", "sst2.bogus=1"]
    assert main([*argv, "--dry-run", "--results-dir", str(tmp_path)]) == 2
    assert "task sst2: unknown option 'bogus'; valid: fewshot_seed" in capsys.readouterr().err
    assert main(["ls", "tasks"]) == 0
    assert "option fewshot_seed" in capsys.readouterr().out


def test_run_help_names_every_companion_key() -> None:
    """`bench run --help` names the --set key of every white-box model a method declares, so
    a user learns how to override what the harness fills for the black box."""
    from benchmarks.cli import build_parser
    from methods.base import get_method, methods

    parser = build_parser()
    run = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[
        "run"
    ]
    text = " ".join(run.format_help().split())
    keys = [f"{m}.{f}" for m in methods.names() for f in get_method(m).companions]
    assert keys and [k for k in keys if k not in text] == []
