"""The eval memo: a policy's predictions on a batch of test examples, kept with the calls and
white-box compute they took, so a replay reads a batch instead of re-running the policy.

Evaluating a policy is a function of the policy's saved files (prompt, weights), the
examples, the black box's identity (whose answers the response cache pins) and the code of
the harness, the methods and the task. `EvalMemo` keys a batch by all of these. On a hit the
batch's calls are metered again as cache hits and its compute is credited as cached compute,
so the record of a replay reports what evaluating costs from a cold start, exactly as a
replay through the response cache alone would, without running small models again
(white-box inference is most of a replay once training is cached: `docs/performance.md`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.cache import EVAL_DIR, ResponseCache, cache_key
from benchmarks.metering import CallRecord, ComputeRecord, UsageMeter
from methods.artifacts import METHODS_DIR, code_digest
from methods.base import AdaptedPolicy, Example, Prediction

BENCHMARKS_DIR = Path(__file__).resolve().parent


class EvalMemo:
    """Evaluated batches under ``cache_root/eval/``, one JSON file each (`ResponseCache`)."""

    def __init__(self, cache_root: Path, *, enabled: bool = True):
        self.store = ResponseCache(Path(cache_root) / EVAL_DIR, enabled=enabled, marker=False)

    @property
    def enabled(self) -> bool:
        return self.store.enabled

    def key(
        self,
        *,
        policy: AdaptedPolicy,
        policy_digest: str,
        examples: Sequence[Example],
        task: Any,
        task_hash: str,
        backend_identity: dict[str, Any],
    ) -> str:
        """The key of evaluating ``policy`` (its saved files hashed by `tree_digest` into
        ``policy_digest``) on ``examples``."""
        return cache_key(
            {
                "kind": "eval",
                "policy": policy_digest,
                "examples": [ex.to_json() for ex in examples],
                "task": task_hash,
                "backend": backend_identity,
                # The harness renders, sends and parses; methods and task may be plugins.
                "code": code_digest(
                    type(policy), type(task), packages=(BENCHMARKS_DIR, METHODS_DIR)
                ),
            }
        )

    def get(self, key: str, meter: UsageMeter) -> list[Prediction] | None:
        """The batch's predictions, its calls metered as cache hits and its compute credited;
        None on a miss."""
        entry = self.store.get(key)
        if entry is None:
            return None
        # Everything is rebuilt before anything is metered: an entry of the wrong shape
        # (damaged, or written by other code) is a miss that leaves the meter as it was.
        try:
            calls = [
                _typed(CallRecord, {**c, "cached": True, "latency_s": 0.0, "retries": 0})
                for c in entry["calls"]
            ]
            blocks = [
                _typed(ComputeRecord, {"phase": "", "device": "", **b}) for b in entry["compute"]
            ]
            predictions = [_typed(Prediction, p) for p in entry["predictions"]]
        except (KeyError, TypeError, ValueError) as exc:
            self.store.reject(key, f"{type(exc).__name__}: {exc}")
            return None
        for call in calls:
            meter.record(call)
        for block in blocks:
            meter.credit(block.label, block.seconds, block.wall_s, block.peak_mem_mb)
        return predictions

    def put(
        self,
        key: str,
        predictions: Sequence[Prediction],
        calls: Sequence[CallRecord],
        compute: Sequence[ComputeRecord],
        examples: Sequence[Example],
    ) -> None:
        value = {
            "predictions": [dataclasses.asdict(p) for p in predictions],
            "calls": [dataclasses.asdict(c) for c in calls],
            "compute": [dataclasses.asdict(c) for c in compute if not c.cached],
        }
        request = {"kind": "eval", "examples": [ex.id for ex in examples]}
        try:
            self.store.put(key, value, request=request, strict=True)
        except (TypeError, ValueError):
            return  # a prediction with a non-JSON extra: evaluated again next time


T = TypeVar("T")


def _typed(cls: type[T], data: Any) -> T:
    """``cls(**data)`` for a dataclass, its plain fields (str, int, float, bool, optional
    str) type-checked: TypeError when ``data`` is not of that shape."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    value = cls(**data)
    for name, hint in typing.get_type_hints(cls).items():
        field_value = getattr(value, name, None)
        kinds = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}.get(hint)
        if hint == (str | None):
            kinds = (str, type(None))
        if kinds and not isinstance(field_value, kinds):
            raise TypeError(f"{cls.__name__}.{name}: expected {hint}, got {field_value!r}")
    return value
