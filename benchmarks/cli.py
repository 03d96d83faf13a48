"""`bench`: run grids of methods × tasks × seeds, list components, report, manage the cache.

Every flag of `bench run` can also come from a YAML file (``--config run.yaml``, keys as the
flags' long names with ``_`` for ``-``); flags given on the command line win. Errors in
input are one line on stderr and exit code 2; a run with failed cells exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from methods.registry import BenchError

#: what `bench run` does with no flags: every method on every zoo task, served by the
#: project's own model zoo over HTTP.
DEFAULT_BACKEND = "zoo"
DEFAULT_MODEL = "zoo-large"
DEFAULT_TASKS = ("zoo-arith", "zoo-hops", "zoo-truth", "zoo-sentiment")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) and no usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bench: error: {message} (see `{self.prog} --help`)\n")
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


def _assignment(text: str) -> tuple[str, str, Any]:
    """``name.key=value`` -> (name, key, typed value)."""
    head, sep, raw = text.partition("=")
    name, dot, key = head.rpartition(".")
    if not sep or not dot or not name or not key:
        raise argparse.ArgumentTypeError(f"expected NAME.KEY=VALUE, got {text!r}")
    try:
        value = yaml.safe_load(raw)  # typed scalars: 3 -> int, 0.5 -> float, true -> bool
    except yaml.YAMLError:
        value = raw
    return name, key, value


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
        help="API flavour of the openai backend (default chat)",
    )
    run.add_argument("--api-key-env", default=None, help="environment variable holding the key")
    run.add_argument("--api-key-file", type=Path, default=None, help="file holding the key")
    run.add_argument("--capabilities", default=None, help="override the backend's capabilities")
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
        help="override a hyperparameter",
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
    run.add_argument("--prices", type=Path, default=None, help="price table YAML")
    run.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="plan and print the projected spend, then stop",
    )

    ls = sub.add_parser("ls", help="list methods, tasks or backends")
    ls.add_argument("what", choices=("methods", "tasks", "backends"))

    report = sub.add_parser("report", help="write a Markdown leaderboard from results")
    report.add_argument("runs", nargs="*", type=Path, help="run directories (default: latest)")
    report.add_argument("--results-dir", type=Path, default=Path("results"))
    report.add_argument("--out", type=Path, default=Path("reports"))

    cache = sub.add_parser("cache", help="inspect or clear the response cache")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument("--cache-dir", type=Path, default=None)

    serve = sub.add_parser("serve", help="serve a local model over an OpenAI-compatible API")
    serve.add_argument("--model", required=True, help="zoo model name or a model directory")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--grey-box",
        action="store_true",
        help="also serve next-token distributions and soft-prompt input",
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
    perf.add_argument("what", choices=("server",))
    perf.add_argument("--model", default="zoo-large")
    perf.add_argument("--concurrency", type=_positive_int, default=32)
    perf.add_argument("--max-tokens", type=_positive_int, default=48)
    return parser


_RUN_KEYS = {
    "methods",
    "tasks",
    "backend",
    "model",
    "base_url",
    "api",
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
    "prices",
    "dry_run",
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
            values[norm] = value
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
    from benchmarks.runner import BackendSpec, RunConfig
    from methods.base import methods as method_registry

    v = _merge_config(args)
    backend_name = v.get("backend", DEFAULT_BACKEND)
    model = v.get("model", DEFAULT_MODEL if backend_name == DEFAULT_BACKEND else None)
    if model is None:
        raise BenchError(f"--model is required with --backend {backend_name}")
    options = {
        k: v[k]
        for k in ("base_url", "api", "api_key_env", "api_key_file", "capabilities", "concurrency")
        if v.get(k) is not None
    }
    if "api_key_file" in options:
        options["api_key_file"] = str(options["api_key_file"])
    backend = BackendSpec(backend_name, str(model), options)
    proposer = None
    if v.get("proposer"):
        p_backend, _, p_model = str(v["proposer"]).rpartition(":")
        p_options = dict(options)
        if v.get("proposer_base_url"):
            p_options["base_url"] = v["proposer_base_url"]
        proposer = BackendSpec(p_backend or backend_name, p_model, p_options)
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
        prices=Path(v["prices"]) if v.get("prices") else None,
    )
    if v.get("cache_dir"):
        config.cache_dir = Path(v["cache_dir"])
    return config, bool(v.get("dry_run", False))


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks.console import RunConsole
    from benchmarks.runner import Runner

    config, dry_run = run_config_from_args(args)
    console = RunConsole()
    with Runner(config, on_event=console.event) as runner:
        plan = runner.plan()
        console.print_plan(plan, runner)
        if dry_run:
            return 0
        records = runner.run(plan)
    console.print_results(records, plan.store)
    return 1 if any(r.status == "failed" for r in records) else 0


def cmd_ls(args: argparse.Namespace) -> int:
    from benchmarks.backends.base import backends
    from benchmarks.tasks.base import tasks
    from methods.base import get_method, methods

    if args.what == "methods":
        for name in methods.names():
            cls = get_method(name)
            needs = ", ".join(sorted(r.replace("|", " or ") for r in cls.requires))
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            print(f"{name:24} needs: {needs:40} {doc}")
    elif args.what == "tasks":
        for name in tasks.names():
            task_cls = tasks.get(name)
            print(f"{name:18} {task_cls.kind:16} {task_cls.description}")
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
    path = write_report(stores, args.out)
    print(f"wrote {path}")
    return 0


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
    from benchmarks.server import main as serve_main

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
    return int(serve_main(argv) or 0)


def _resolve_model_dir(name: str) -> Path:
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from benchmarks.zoo import model_dir
    except ImportError as exc:
        raise BenchError(f"model {name!r}: not a directory") from exc
    return model_dir(name)


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
    from benchmarks.perf import server_throughput

    result = server_throughput(
        _resolve_model_dir(args.model), concurrency=args.concurrency, max_tokens=args.max_tokens
    )
    print(result.describe())
    return 0


COMMANDS = {
    "run": cmd_run,
    "perf": cmd_perf,
    "zoo": cmd_zoo,
    "ls": cmd_ls,
    "report": cmd_report,
    "cache": cmd_cache,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BenchError as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted; finished cells are kept (continue with --resume)\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
