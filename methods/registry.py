"""A typed registry with decorator registration, entry-point plugins and did-you-mean errors.

Used for methods here and, by `benchmarks`, for tasks and backends. Registration is one
decorator in the component's own file; out-of-tree components register through an
entry-point group (``[project.entry-points."blackbox_bench.methods"] name = "pkg.mod:Class"``)
and are loaded only when asked for, so listing or running does not import every plugin.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Generic, TypeVar

T = TypeVar("T")


class BenchError(Exception):
    """An error the CLI reports as one line (no traceback) with exit code 2."""


class UnknownNameError(BenchError, KeyError):
    """A name that is not registered; the message lists the valid names and the closest one."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names (and aliases) to registered objects of one kind.

    Args:
        kind: what is registered ("method", "task", ...), used in messages.
        package: a package whose modules are imported on first lookup, so that a new file
            with the decorator is found without editing any list.
        entry_point_group: the entry-point group scanned for out-of-tree plugins.
        name_attr: a class attribute that registration fills with the registered name, so
            registered classes (plugins loaded from entry points too) know their name.
    """

    def __init__(
        self,
        kind: str,
        *,
        package: str | None = None,
        entry_point_group: str | None = None,
        name_attr: str | None = None,
    ):
        self.kind = kind
        self._name_attr = name_attr
        self._package = package
        self._group = entry_point_group
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._entry_points: dict[str, metadata.EntryPoint] = {}
        self._discovered = False
        self._lock = threading.RLock()

    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name`` and ``aliases``."""

        def decorator(obj: T) -> T:
            self.add(name, obj, *aliases)
            return obj

        return decorator

    def add(self, name: str, obj: T, *aliases: str) -> None:
        with self._lock:
            for key in (name, *aliases):
                if (key in self._items and self._items[key] is not obj) or (
                    key in self._aliases and self._aliases[key] != name
                ):
                    raise BenchError(f"{self.kind} name {key!r} is registered twice")
            self._name(name, obj)
            self._items[name] = obj
            for alias in aliases:
                self._aliases[alias] = name

    def _name(self, name: str, obj: T) -> None:
        # Own attribute only: a subclass of a registered class must not keep its parent's name.
        if self._name_attr and isinstance(obj, type) and not vars(obj).get(self._name_attr):
            setattr(obj, self._name_attr, name)

    def _discover(self) -> None:
        with self._lock:
            if self._discovered:
                return
            self._discovered = True
            if self._package:
                pkg = importlib.import_module(self._package)
                for info in pkgutil.iter_modules(pkg.__path__, prefix=f"{self._package}."):
                    if not info.name.rsplit(".", 1)[-1].startswith("_"):
                        importlib.import_module(info.name)
            if self._group:
                for ep in metadata.entry_points(group=self._group):
                    if ep.name not in self._items:
                        self._entry_points[ep.name] = ep

    def names(self) -> list[str]:
        """All registered names (aliases excluded), sorted."""
        self._discover()
        return sorted({*self._items, *self._entry_points})

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items or name in self._aliases or name in self._entry_points

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> T:
        """The object registered as ``name``; raises `UnknownNameError` with suggestions."""
        self._discover()
        with self._lock:
            key = self._aliases.get(name, name)
            if key in self._items:
                return self._items[key]
            if key in self._entry_points:
                ep = self._entry_points.pop(key)
                try:
                    obj = ep.load()
                except Exception as exc:  # a broken plugin must not crash listing
                    raise BenchError(
                        f"{self.kind} plugin {key!r} ({ep.value}) failed to load: {exc}"
                    ) from exc
                if key not in self._items:  # the import may have registered it already
                    self._name(key, obj)
                    self._items[key] = obj
                return self._items[key]
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        valid = self.names()
        close = difflib.get_close_matches(name, [*valid, *self._aliases], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; valid: {', '.join(valid)}"
