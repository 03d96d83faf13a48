"""A persistent, content-addressed response cache, safe under concurrent processes.

Key: sha256 of the canonical JSON of the request (kind, backend identity, parameters) plus a
sample index, so `n` samples are cached as n entries and never collapse into one. Backend
identities carry no keys or URLs, so the same model behind another endpoint hits the cache.
Each entry is its own file, written to a temporary name and renamed into place: readers see
a whole entry or none, and concurrent writers need no lock (no "database is locked").
Entries are plain JSON (never pickle), and keys are built from requests that carry no
secrets (backend identities exclude keys and URLs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_CACHE_DIR = Path(os.environ.get("BENCH_CACHE_DIR", ".bench-cache"))
#: bump when the entry format changes; old entries are then simply not found.
CACHE_FORMAT = 1
#: the sub-folder of the cache root holding white-box training outcomes
#: (`methods.artifacts.TrainingCache`), cleared and counted with the answers.
TRAINING_DIR = "training"
#: the sub-folder holding evaluated batches (`benchmarks.runner`'s eval memo): a policy's
#: predictions with the calls and compute they took, keyed by the policy's files.
EVAL_DIR = "eval"


def canonical_json(obj: Any) -> str:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def cache_key(request: dict[str, Any]) -> str:
    """The sha256 of the canonical request (which must hold no secrets)."""
    return hashlib.sha256(canonical_json({"v": CACHE_FORMAT, **request}).encode()).hexdigest()


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    root: Path


class ResponseCache:
    """Files under ``root/ab/<sha256>.json``; `get` and `put` by key."""

    def __init__(self, root: Path | str = DEFAULT_CACHE_DIR, *, enabled: bool = True):
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        try:
            with self._path(key).open(encoding="utf-8") as fh:
                entry = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            # A damaged entry is a miss; the next put replaces it.
            self.misses += 1
            return None
        self.hits += 1
        return entry.get("value") if isinstance(entry, dict) else None

    def put(
        self,
        key: str,
        value: dict[str, Any],
        request: dict[str, Any] | None = None,
        *,
        strict: bool = False,
    ) -> None:
        """Store ``value`` under ``key`` atomically. ``strict``: refuse NaN and infinities
        with ValueError (as a non-JSON value raises TypeError), leaving no entry behind."""
        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The temporary name does not end in .json: a writer killed mid-way leaves no entry.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                # The request is kept beside the value so a miss can be debugged by diffing.
                json.dump(
                    {"request": request, "value": value},
                    fh,
                    ensure_ascii=False,
                    allow_nan=not strict,
                )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def stats(self) -> CacheStats:
        """Answers, training outcomes and evaluated batches: entries and bytes on disk."""
        entries = size = 0
        if self.root.is_dir():
            for path in self.root.glob("*/*.json"):
                entries += 1
                size += path.stat().st_size
            for entry in (self.root / TRAINING_DIR).glob("*/*/entry.json"):
                entries += 1
                size += sum(p.stat().st_size for p in entry.parent.iterdir())
            for path in (self.root / EVAL_DIR).glob("*/*.json"):
                entries += 1
                size += path.stat().st_size
        return CacheStats(entries, size, self.root)

    def clear(self) -> int:
        """Remove every entry (answers, training outcomes, evaluated batches); returns how
        many there were."""
        n = self.stats().entries
        if self.root.is_dir():
            for sub in self.root.iterdir():
                if sub.is_dir() and (len(sub.name) == 2 or sub.name in (TRAINING_DIR, EVAL_DIR)):
                    shutil.rmtree(sub, ignore_errors=True)
        return n
