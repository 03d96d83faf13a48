"""Run directories and the versioned result record.

``results/<run-id>/`` holds everything a report needs, so reports never re-run anything:

- ``run.json``: the run spec (no secrets) and provenance (git hash, package versions);
- ``cells/<cell-id>.json``: one `CellRecord` per (method, task, backend, model, seed);
- ``predictions/<cell-id>.jsonl``: per-example output, extracted answer, gold, score and the
  prompt sent (records written before it was kept have none);
- ``traces/<cell-id>.json``: the tuner's trace, every event it sent while tuning, in order
  (OPRO's proposals and scores per step, GrIPS's edits, EvoPrompt's populations, BBT's losses
  and dev checkpoints, adapters' training losses); small, so kept beside the records rather
  than with the artifacts, which are large and not committed;
- ``artifacts/<cell-id>/``: the adapted policy (``policy.json`` and any safetensors).

Every file is written to a temporary name, flushed to disk and renamed into place, so a
crash leaves either the old file or the new one, never half of one; a later failure never
touches a finished cell. A process that runs cells holds the run's lock (``run.lock``, an
OS file lock the kernel releases if the process dies), and clears the temporary files a
killed predecessor left.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from methods.registry import BenchError

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOCK_NAME = "run.lock"
CellStatus = Literal["ok", "refused", "failed", "budget_exhausted"]


class DisclosureRecord(BaseModel):
    """A `methods.base.Disclosure` as a record keeps it: where the cell departs from its
    method as published."""

    model_config = ConfigDict(from_attributes=True)

    kind: str
    """One of `methods.base.DISCLOSURE_KINDS` (no-change, truncated, not-sent, k-reduced,
    substitute, companion, prompt-format); a record with a later kind still loads."""
    detail: str
    """One line, with the counts."""


class CellRecord(BaseModel):
    """The result of one grid cell."""

    schema_version: int = SCHEMA_VERSION
    """Bumped when a field changes meaning."""
    cell_id: str
    """``method__task__backend__model__s<seed>``, file-name safe."""
    method: str
    task: str
    backend: str
    model: str
    seed: int
    prompt_format: str | None = None
    """How prompts reached the black box: "raw" text or "chat" (one user turn of its chat
    template); None in records written before the field."""
    system_prompt: str | None = None
    """The system turn before each prompt (chat only), if any."""
    warnings: list[str] = Field(default_factory=list)
    """What a reader must know before trusting the accuracy: e.g. the predictions are one
    answer throughout on a test split whose targets are not (`answer_warnings`)."""
    budget: str
    """The budget preset the tuner ran with (light, medium, heavy, paper)."""
    status: CellStatus
    """ok; refused (the backend lacks a capability, nothing was spent); failed; or
    budget_exhausted (stopped by a spending limit, finished work kept)."""
    reason: str | None = None
    """Why a cell was refused or failed, one line."""
    requires: list[str] = Field(default_factory=list)
    """Capabilities the method needs."""
    accuracy: float | None = None
    """Mean task score over the evaluated examples."""
    n_eval: int = 0
    """Examples evaluated."""
    usage: dict[str, Any] = Field(default_factory=dict)
    """`benchmarks.metering.summarize` output: billed and idealized tokens and dollars by
    phase and role, cache hits, retries, latency, and white-box compute by phase."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """The tuner's config after the budget preset and overrides."""
    variant: str | None = None
    """A method's self-reported variant (e.g. label parsed from text vs by likelihood)."""
    disclosures: list[DisclosureRecord] = Field(default_factory=list)
    """Where the cell departs from its method as published, as the method said while tuning
    (a search that returned its start, a meta-prompt cut, requests not sent, fewer
    demonstrations) and the harness adds (companion models, a prompt format other than the
    model's default); the leaderboard marks the accuracy with them. Empty in records written
    before the field."""
    wall_s: dict[str, float] = Field(default_factory=dict)
    """Wall seconds of the tune and eval phases."""
    artifact_bytes: int | None = None
    """Bytes the cell saved under ``artifacts/<cell>/`` (its adapted policy: an instruction,
    LoRA adapters, or a whole fine-tuned model); None in records written before it was kept
    and for cells that saved nothing."""
    task_hash: str | None = None
    """Fingerprint of the task's examples and template."""
    provenance: dict[str, Any] = Field(default_factory=dict)
    """git hash, package versions, python, platform."""
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


#: predictions this concentrated on one answer are flagged, unless the test split's own targets
#: are as concentrated; this share unparseable is flagged whatever the targets.
ONE_ANSWER_SHARE = 0.95
#: fewer evaluated examples than this are too few to call a cell constant.
ONE_ANSWER_MIN_EXAMPLES = 20


def answer_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Warnings about a cell's prediction rows (``answer`` and ``target`` per example): no
    parseable answer for 95% or more of them, or one answer for 95% or more of a test split
    that is not so uniform."""
    if len(rows) < ONE_ANSWER_MIN_EXAMPLES:
        return []
    answer, count = Counter(r.get("answer") for r in rows).most_common(1)[0]
    share = count / len(rows)
    target_share = Counter(r.get("target") for r in rows).most_common(1)[0][1] / len(rows)
    if share < ONE_ANSWER_SHARE or (answer is not None and target_share >= ONE_ANSWER_SHARE):
        return []  # (an unparseable cell is broken even on a split of one target)
    what = "no parseable answer" if answer is None else f"the answer {answer!r}"
    return [
        f"one answer throughout: {what} for {count} of {len(rows)} test examples "
        f"({share:.0%}; the most common target is {target_share:.0%})"
    ]


def directory_bytes(directory: Path) -> int | None:
    """The bytes of the files under ``directory``; None when it does not exist."""
    if not directory.is_dir():
        return None
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def cell_id(method: str, task: str, backend: str, model: str, seed: int) -> str:
    raw = f"{method}__{task}__{backend}__{Path(model).name or model}__s{seed}"
    return re.sub(r"[^A-Za-z0-9._=-]+", "-", raw)


#: a run id is one file name: letters, digits, ``.``, ``_``, ``-``, not starting with a dot
#: (so never ``.`` or ``..``), short enough that ``cells/<id>...`` stays a valid path.
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_RUN_ID_CHARS = 128


def check_run_id(run_id: str) -> None:
    """Refuse a run id that is not one safe path component under ``results/``.

    Raises:
        BenchError: a separator, ``.``/``..``, another character, or over 128 characters.
    """
    if len(run_id) > MAX_RUN_ID_CHARS:
        raise BenchError(
            f"--run-id {run_id[:40]!r}...: at most {MAX_RUN_ID_CHARS} characters, got {len(run_id)}"
        )
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise BenchError(
            f"--run-id {run_id!r}: must be one name of letters, digits, '.', '_' and '-', "
            "not starting with '.' (it names a folder directly under --results-dir)"
        )


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class RunStore:
    """One run directory."""

    def __init__(self, root: Path):
        self.root = root
        self._warned: set[Path] = set()  # damaged records already reported

    @property
    def run_id(self) -> str:
        return self.root.name

    def exists(self) -> bool:
        return (self.root / "run.json").exists()

    def write_spec(self, spec: dict[str, Any]) -> None:
        write_atomic(self.root / "run.json", json.dumps(spec, indent=2, ensure_ascii=False))

    def read_spec(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "run.json").read_text(encoding="utf-8")))

    def cell_path(self, cid: str) -> Path:
        return self.root / "cells" / f"{cid}.json"

    def read_cell(self, cid: str) -> CellRecord | None:
        """The cell's record, or None when it is missing or damaged (see `cells`)."""
        path = self.cell_path(cid)
        if not path.exists():
            return None
        return self._intact_record(path)

    def write_cell(self, record: CellRecord, predictions: Iterable[dict[str, Any]] = ()) -> None:
        """Predictions first, then the record: a record on disk means its cell is complete."""
        lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)
        if lines:
            write_atomic(self.root / "predictions" / f"{record.cell_id}.jsonl", lines)
        write_atomic(self.cell_path(record.cell_id), record.model_dump_json(indent=2))

    def cells(self) -> list[CellRecord]:
        """The intact records. A damaged cell (a record that does not parse or validate, or
        predictions that are not JSON objects line by line: a hand edit, a disk error) is
        left out with a warning naming its file, once per store: reports skip it and a
        resumed run runs it again, which rewrites both files."""
        folder = self.root / "cells"
        if not folder.is_dir():
            return []
        records = (self._intact_record(p) for p in sorted(folder.glob("*.json")))
        return [r for r in records if r is not None]

    def _intact_record(self, path: Path) -> CellRecord | None:
        try:
            record = CellRecord.model_validate_json(path.read_text(encoding="utf-8"))
            if record.cell_id != path.stem:
                raise ValueError(f"cell_id {record.cell_id!r} is not the file's name")
            self.predictions(record.cell_id)
        except (OSError, UnicodeDecodeError, ValueError) as exc:  # ValidationError included
            if path not in self._warned:
                self._warned.add(path)
                what = str(exc).splitlines()[0]
                logger.warning("%s: damaged cell record, skipped (%s)", path, what)
            return None
        return record

    def predictions(self, cid: str) -> list[dict[str, Any]]:
        """The cell's stored predictions (ValueError naming the line if one is damaged)."""
        path = self.root / "predictions" / f"{cid}.jsonl"
        if not path.exists():
            return []
        out = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line:
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                value = None
            if not isinstance(value, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            out.append(value)
        return out

    def artifact_dir(self, cid: str) -> Path:
        return self.root / "artifacts" / cid

    def trace_path(self, cid: str) -> Path:
        return self.root / "traces" / f"{cid}.json"

    def write_trace(self, cid: str, method: str, events: Sequence[Mapping[str, Any]]) -> None:
        """The tuner's events while tuning (`methods.base.TuneContext.trace`), as JSON; a
        tuner that sent none gets no file."""
        if not events:
            return
        payload = {"cell_id": cid, "method": method, "events": plain_json(list(events))}
        write_atomic(
            self.trace_path(cid), json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False)
        )

    def clear_trace(self, cid: str) -> None:
        """Remove what an earlier attempt of the cell traced."""
        self.trace_path(cid).unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process; another process gets a one-line error."""
        from filelock import FileLock, Timeout

        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BenchError(
                f"cannot create the run directory {self.root} ({exc.strerror or exc}); "
                "choose a writable --results-dir"
            ) from None
        lock = FileLock(str(self.root / LOCK_NAME))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise BenchError(
                f"run {self.run_id!r} is being run by another bench process; wait for it or "
                "choose another --run-id"
            ) from None
        except OSError as exc:  # a read-only results folder
            raise BenchError(
                f"cannot lock the run directory {self.root} ({exc.strerror or exc}); "
                "choose a writable --results-dir"
            ) from None
        try:
            yield
        finally:
            lock.release()

    def remove_temporary_files(self) -> list[Path]:
        """Delete what a killed writer left (``.NAME.*.tmp``); call with the lock held."""
        removed = []
        folders = ("cells", "predictions", "traces")
        for folder in (self.root, *(self.root / f for f in folders)):
            if folder.is_dir():
                for path in folder.glob(".*.tmp"):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed


def plain_json(value: Any) -> Any:
    """``value`` as strict JSON: numpy numbers and arrays as numbers and lists, tuples as
    lists, non-finite floats as None (a score of -inf: not scored), anything else as text."""
    if isinstance(value, Mapping):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return plain_json(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def open_run(path: Path | str) -> RunStore:
    """A run directory that exists (for reports), with a clear error otherwise."""
    store = RunStore(Path(path))
    if not store.exists():
        raise BenchError(f"{path}: not a run directory (no run.json)")
    return store


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]


def provenance() -> dict[str, Any]:
    """git hash, package versions and platform, for every record."""
    versions: dict[str, str | None] = {}
    for pkg in (
        "blackbox-bench",
        "torch",
        "transformers",
        "tokenizers",
        "openai",
        "datasets",
        "numpy",
        "cma",
        "nevergrad",
    ):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "git": _git_hash(),
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _git_hash() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None
