from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.cache import ResponseCache, cache_key


def test_key_is_canonical_and_sample_aware() -> None:
    a = cache_key({"prompt": "x", "temperature": 1.0, "sample": 0})
    b = cache_key({"temperature": 1.0, "sample": 0, "prompt": "x"})
    c = cache_key({"prompt": "x", "temperature": 1.0, "sample": 1})
    assert a == b
    assert a != c


def test_put_get_stats_clear(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c")
    assert cache.get("ab" * 32) is None
    cache.put("ab" * 32, {"v": 1}, request={"prompt": "p"})
    assert cache.get("ab" * 32) == {"v": 1}
    stats = cache.stats()
    assert stats.entries == 1 and stats.bytes > 0
    assert cache.clear() == 1
    assert cache.stats().entries == 0


def test_damaged_entry_is_a_miss(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = "cd" * 32
    cache.put(key, {"v": 1})
    (tmp_path / key[:2] / f"{key}.json").write_text('{"value": ', encoding="utf-8")
    assert cache.get(key) is None


def test_strict_put_refuses_non_json_and_leaves_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = "ee" * 32
    cache.put(key, {"v": float("-inf")})  # logprobs may be -inf: allowed by default
    assert cache.get(key) == {"v": float("-inf")}
    for bad, error in (({"v": float("nan")}, ValueError), ({"v": object()}, TypeError)):
        with pytest.raises(error):
            cache.put("ef" * 32, bad, strict=True)
    assert not list((tmp_path / "ef").iterdir())  # no entry, no temporary file
    assert cache.get("ef" * 32) is None


def test_disabled_cache_stores_nothing(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path, enabled=False)
    cache.put("ef" * 32, {"v": 1})
    assert cache.get("ef" * 32) is None
    assert cache.stats().entries == 0


def _writer(root: str, worker: int) -> None:
    cache = ResponseCache(root)
    for i in range(200):
        key = cache_key({"i": i % 50})  # all workers hammer the same 50 keys
        cache.put(key, {"i": i % 50, "worker": worker})
        value = cache.get(key)
        assert value is not None and value["i"] == i % 50


def test_concurrent_processes_never_see_partial_entries(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    cache = ResponseCache(tmp_path)
    assert cache.stats().entries == 50
    assert not list(tmp_path.glob("*/.tmp-*"))


def test_stats_and_clear_cover_training_outcomes(tmp_path: Path) -> None:
    import contextlib

    from benchmarks.cache import TRAINING_DIR
    from methods.artifacts import TrainingCache

    class Meter:
        @contextlib.contextmanager
        def compute(self, label: str) -> Iterator[dict[str, float]]:
            yield {}

    cache = ResponseCache(tmp_path)
    cache.put(cache_key({"a": 1}), {"text": "x"})
    TrainingCache(tmp_path / TRAINING_DIR).run("t", lambda: [1], inputs=1, state=[], meter=Meter())
    stats = cache.stats()
    assert stats.entries == 2 and stats.bytes > 0
    assert cache.clear() == 2
    assert cache.stats().entries == 0 and not (tmp_path / TRAINING_DIR).exists()


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_clear_refuses_a_folder_the_cache_did_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.cli import main

    project = tmp_path / "fakeproj"
    for name in ("go", "js", "ab"):
        (project / name).mkdir(parents=True)
        (project / name / "main.txt").write_text("source")
    before = _tree(project)
    assert main(["cache", "clear", "--cache-dir", str(project)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a bench cache" in err[0] and str(project) in err[0], err
    assert _tree(project) == before
    # stats only reads, and says nothing is there to count.
    assert ResponseCache(project).stats().entries == 0


def test_clear_deletes_only_what_the_cache_wrote(tmp_path: Path) -> None:
    from benchmarks.cache import MARKER

    cache = ResponseCache(tmp_path / "c")
    cache.put(cache_key({"a": 1}), {"v": 1})
    assert (tmp_path / "c" / MARKER).is_file()  # written when the cache is created
    (tmp_path / "c" / "go").mkdir()
    (tmp_path / "c" / "go" / "keep.txt").write_text("not ours")
    assert cache.clear() == 1
    assert _tree(tmp_path / "c") == sorted([MARKER, "go", "go/keep.txt"])


def test_clear_recognises_a_cache_made_before_the_marker(tmp_path: Path) -> None:
    from benchmarks.cache import MARKER
    from methods.registry import BenchError

    cache = ResponseCache(tmp_path / "old")
    for i in range(3):
        cache.put(cache_key({"i": i}), {"v": i})
    (tmp_path / "old" / MARKER).unlink()
    assert cache.clear() == 3  # the strict layout of entries only: recognised, cleared
    assert not any(p.suffix == ".json" for p in (tmp_path / "old").rglob("*"))
    # The same layout with one foreign file is not recognised: nothing is deleted.
    cache.put(cache_key({"i": 0}), {"v": 0})
    (tmp_path / "old" / MARKER).unlink()
    stray = next((tmp_path / "old").glob("*/*.json")).parent / "notes.txt"
    stray.write_text("mine")
    with pytest.raises(BenchError, match="not a bench cache"):
        cache.clear()
    assert stray.is_file() and len(list((tmp_path / "old").glob("*/*.json"))) == 1
