"""The eval memo: evaluated batches come back with their calls (as cache hits) and compute
(as cached compute), under a key that changes with anything evaluation depends on."""

from __future__ import annotations

from pathlib import Path

from benchmarks.eval_memo import EvalMemo
from benchmarks.metering import CallRecord, ComputeRecord, UsageMeter
from methods.artifacts import tree_digest
from methods.base import Example, Prediction, PromptPolicy

EXAMPLES = [Example("a", "1 + 1", "2"), Example("b", "2 + 2", "4")]
CALL = CallRecord("task", "eval", "m", "generate", 10, 2, False, 0.3, retries=1)
BLOCK = ComputeRecord("eval", "adapter inference", "cpu", 1.25, 1.5, 100.0)


def _key(memo: EvalMemo, **change: object) -> str:
    args: dict = {
        "policy": PromptPolicy(instruction="Add ."),
        "policy_digest": "p1",
        "examples": EXAMPLES,
        "task": object(),
        "task_hash": "t1",
        "backend_identity": {"backend": "zoo", "model": "zoo-large"},
    }
    return memo.key(**{**args, **change})


def test_a_batch_comes_back_with_its_calls_as_hits_and_its_compute_credited(
    tmp_path: Path,
) -> None:
    memo = EvalMemo(tmp_path)
    key = _key(memo)
    assert memo.get(key, UsageMeter()) is None
    preds = [
        Prediction("a", " 2", "2", prompt="Q: 1 + 1\nA:"),  # the prompt sent comes back too
        Prediction("b", " 5", "5", {"tries": [1, 2]}),
    ]
    memo.put(key, preds, [CALL], [BLOCK], EXAMPLES)
    meter = UsageMeter()
    meter.phase = "eval"
    assert memo.get(key, meter) == preds
    (call,) = meter.calls
    assert call.cached and call.prompt_tokens == 10 and call.retries == 0
    summary = meter.summary()
    assert summary["idealized"]["eval"]["task"]["tokens"] == 12
    assert summary["billed"]["eval"] == {}
    block = summary["compute"]["eval"]
    assert block["seconds"] == block["cached_seconds"] == 1.25 and block["wall_s"] == 0


def test_a_batch_with_a_non_json_extra_is_not_kept(tmp_path: Path) -> None:
    memo = EvalMemo(tmp_path)
    for extra in ({"score": float("nan")}, {"tensor": object()}):
        key = _key(memo, policy_digest=str(extra))
        memo.put(key, [Prediction("a", " 2", "2", extra)], [CALL], [BLOCK], EXAMPLES[:1])
        assert memo.get(key, UsageMeter()) is None  # evaluated again next time
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_key_follows_what_evaluation_depends_on(tmp_path: Path) -> None:
    memo = EvalMemo(tmp_path)
    base = _key(memo)
    assert _key(memo) == base
    changed = [
        _key(memo, policy_digest="p2"),
        _key(memo, examples=EXAMPLES[:1]),
        _key(memo, examples=[Example("a", "1 + 1", "3"), EXAMPLES[1]]),
        _key(memo, task_hash="t2"),
        _key(memo, backend_identity={"backend": "zoo", "model": "zoo-small"}),
    ]
    assert base not in changed and len(set(changed)) == len(changed)


def test_a_policys_files_are_its_digest(tmp_path: Path) -> None:
    PromptPolicy(instruction="Add .").save(tmp_path / "a")
    PromptPolicy(instruction="Add .").save(tmp_path / "b")
    PromptPolicy(instruction="Sum .").save(tmp_path / "c")
    digests = [tree_digest(tmp_path / n) for n in "abc"]
    assert digests[0] == digests[1] != digests[2]


def test_predictions_that_are_not_json_are_not_kept_and_no_cache_means_no_memo(
    tmp_path: Path,
) -> None:
    memo = EvalMemo(tmp_path)
    key = _key(memo)
    memo.put(key, [Prediction("a", "x", "x", {"obj": object()})], [], [], EXAMPLES[:1])
    assert memo.get(key, UsageMeter()) is None
    off = EvalMemo(tmp_path / "off", enabled=False)
    off.put(key, [Prediction("a", "x", "x")], [], [], EXAMPLES[:1])
    assert not off.enabled and off.get(key, UsageMeter()) is None


def test_a_batch_of_the_wrong_shape_is_a_miss_that_meters_nothing(tmp_path: Path) -> None:
    import json

    memo = EvalMemo(tmp_path)
    key = _key(memo)
    memo.put(key, [Prediction("a", " 2", "2")], [CALL], [BLOCK], EXAMPLES)
    (path,) = tmp_path.glob("eval/*/*.json")
    entry = json.loads(path.read_text(encoding="utf-8"))
    for bad in ({"predictions": "garbage"}, {"compute": [{"label": 1}]}, {"calls": [3]}):
        path.write_text(json.dumps({**entry, "value": {**entry["value"], **bad}}))
        meter = UsageMeter()
        assert memo.get(key, meter) is None
        assert meter.calls == [] and meter.summary()["compute"] == {}
