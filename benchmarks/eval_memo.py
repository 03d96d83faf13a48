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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
        for call in entry["calls"]:
            meter.record(CallRecord(**{**call, "cached": True, "latency_s": 0.0, "retries": 0}))
        for block in entry["compute"]:
            meter.credit(block["label"], block["seconds"], block["wall_s"], block["peak_mem_mb"])
        return [Prediction(**p) for p in entry["predictions"]]

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
