from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.results import CellRecord, RunStore, cell_id, open_run, provenance, write_atomic
from methods.registry import BenchError


def _record(cid: str, acc: float = 0.5) -> CellRecord:
    return CellRecord(
        cell_id=cid,
        method="zero-shot",
        task="t",
        backend="b",
        model="m",
        seed=0,
        budget="light",
        status="ok",
        accuracy=acc,
        n_eval=2,
    )


def test_cell_id_is_file_safe() -> None:
    cid = cell_id("few-shot", "gsm8k", "openai", "/models/my model:v1", 3)
    assert cid == "few-shot__gsm8k__openai__my-model-v1__s3"


def test_write_cell_round_trips_with_predictions(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_spec({"run_id": "run"})
    rec = _record("c1")
    store.write_cell(rec, [{"id": "e1", "score": 1.0}, {"id": "e2", "score": 0.0}])
    assert store.read_cell("c1") == rec
    assert [p["id"] for p in store.predictions("c1")] == ["e1", "e2"]
    assert open_run(tmp_path / "run").cells() == [rec]


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    write_atomic(path, "old")

    with pytest.raises(TypeError):
        write_atomic(path, 123)  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_open_run_rejects_non_runs(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="not a run directory"):
        open_run(tmp_path)


def test_provenance_has_versions() -> None:
    prov = provenance()
    assert prov["versions"]["torch"]
    assert "python" in prov


def test_answer_warnings_flag_one_answer_on_a_split_that_is_not_uniform() -> None:
    from benchmarks.results import answer_warnings

    def rows(answers: list[str | None], targets: list[str]) -> list[dict[str, object]]:
        return [{"answer": a, "target": t} for a, t in zip(answers, targets, strict=True)]

    mixed = ["pos", "neg"] * 20
    (warning,) = answer_warnings(rows(["neg"] * 39 + ["pos"], mixed))
    assert "the answer 'neg' for 39 of 40" in warning and "most common target is 50%" in warning
    (empty,) = answer_warnings(rows([None] * 40, mixed))
    assert "no parseable answer for 40 of 40" in empty
    # Not flagged: varied answers; a test split that is itself one answer; too few examples.
    assert answer_warnings(rows(["neg"] * 37 + ["pos"] * 3, mixed)) == []
    assert answer_warnings(rows(["neg"] * 40, ["neg"] * 39 + ["pos"])) == []
    assert answer_warnings(rows(["neg"] * 10, mixed[:10])) == []
