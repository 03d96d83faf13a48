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

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods.registry import BenchError

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("BENCH_CACHE_DIR", ".bench-cache"))
#: bump when the entry format changes; old entries are then simply not found.
CACHE_FORMAT = 1
#: the sub-folder of the cache root holding white-box training outcomes
#: (`methods.artifacts.TrainingCache`), cleared and counted with the answers.
TRAINING_DIR = "training"
#: the sub-folder holding evaluated batches (`benchmarks.runner`'s eval memo): a policy's
#: predictions with the calls and compute they took, keyed by the policy's files.
EVAL_DIR = "eval"
#: the file at the cache root that says "a bench cache": `ResponseCache.clear` deletes
#: nothing in a folder without it (``--cache-dir`` pointed at a project by mistake).
MARKER = ".bench-cache"
#: an entry folder (two hex digits) and the names the cache writes in it: ``<sha256>.json``,
#: and ``.<8 hex>-*.tmp`` left by a killed writer.
_ENTRY_DIR = re.compile(r"[0-9a-f]{2}")
_ENTRY_FILE = re.compile(r"[0-9a-f]{64}\.json|\.[0-9a-f]{8}-[^/]*\.tmp")


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

    def __init__(
        self, root: Path | str = DEFAULT_CACHE_DIR, *, enabled: bool = True, marker: bool = True
    ):
        """``marker=False`` for a store inside a cache (``eval/``): the cache root is marked."""
        self.root = Path(root)
        self.enabled = enabled
        self.hits = 0
        self.misses = 0
        self._marked = not marker
        self._warned = False

    def mark(self) -> None:
        """Create the root with its marker (once per instance), so `clear` knows the folder."""
        if self._marked or not self.enabled:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_marker()
        self._marked = True

    def _write_marker(self) -> None:
        marker = self.root / MARKER
        if not marker.exists():
            marker.write_text("blackbox-bench response cache; `bench cache clear` empties it\n")

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
        value = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(value, dict):
            self.hits += 1  # `reject` moves it to the misses
            self.reject(key, 'not a {"value": {...}} object')
            return None
        self.hits += 1
        return value

    def reject(self, key: str, why: str) -> None:
        """Count the entry just read under ``key`` as a miss (its value has the wrong shape:
        the caller asks again and its put replaces it), warning once per cache."""
        self.hits -= 1
        self.misses += 1
        if not self._warned:
            self._warned = True
            logger.warning(
                "cache entry %s has the wrong shape (%s): treated as a miss and replaced; "
                "further bad entries under %s are treated the same, silently",
                self._path(key),
                why,
                self.root,
            )

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
        self.mark()
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
        many there were. Only what the cache writes is removed, and only under a root that
        has the marker, or (a cache made before the marker existed) whose every top-level
        item is an entry folder holding only entry files, ``training/`` or ``eval/``.

        Raises:
            BenchError: the root is not a bench cache; nothing is deleted.
        """
        if not self.root.is_dir():
            return 0
        if not (self.root / MARKER).is_file():
            if not self._is_unmarked_cache():
                raise BenchError(
                    f"--cache-dir {self.root}: not a bench cache (no {MARKER} marker, and it "
                    "holds files the cache does not write); refusing to delete anything"
                )
            self._write_marker()  # recognised by its layout: marked from now on
        n = self.stats().entries
        for sub in self.root.iterdir():
            if not sub.is_dir() or sub.is_symlink():
                continue
            if sub.name in (TRAINING_DIR, EVAL_DIR):
                shutil.rmtree(sub, ignore_errors=True)
            elif _ENTRY_DIR.fullmatch(sub.name):
                for path in sub.iterdir():
                    if path.is_file() and _ENTRY_FILE.fullmatch(path.name):
                        path.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    sub.rmdir()  # only when emptied: anything else found there stays
        return n

    def _is_unmarked_cache(self) -> bool:
        """Whether the root has exactly the layout of a cache: entry folders holding only
        entry files (at least one), and optionally ``training/`` and ``eval/``."""
        entry_dirs = 0
        for sub in self.root.iterdir():
            if sub.name in (TRAINING_DIR, EVAL_DIR) and sub.is_dir():
                continue
            if not (sub.is_dir() and _ENTRY_DIR.fullmatch(sub.name)):
                return False
            if not all(p.is_file() and _ENTRY_FILE.fullmatch(p.name) for p in sub.iterdir()):
                return False
            entry_dirs += 1
        return entry_dirs > 0
