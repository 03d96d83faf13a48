from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.results import CellRecord, RunStore, cell_id, open_run, provenance, write_atomic
from benchmarks.server import ServerHandle
from methods.registry import BenchError
from tests.benchmarks.conftest import tiny_run_argv


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
    # Unparseable is flagged even where the targets are one answer throughout.
    (uniform,) = answer_warnings(rows([None] * 40, ["neg"] * 40))
    assert "no parseable answer for 40 of 40" in uniform
    # Not flagged: varied answers; a test split that is itself one answer; too few examples.
    assert answer_warnings(rows(["neg"] * 37 + ["pos"] * 3, mixed)) == []
    assert answer_warnings(rows(["neg"] * 40, ["neg"] * 39 + ["pos"])) == []
    assert answer_warnings(rows(["neg"] * 10, mixed[:10])) == []


def _damage(store: RunStore) -> dict[str, str]:
    """Three cells damaged three ways: a truncated record, a status no schema allows, and
    a predictions line that is not JSON. Returns cell id -> how."""
    cells = sorted(store.root.glob("cells/*.json"))
    truncated, bogus, bad_line = (p.stem for p in cells[:3])
    text = store.cell_path(truncated).read_text(encoding="utf-8")
    store.cell_path(truncated).write_text(text[: len(text) // 2], encoding="utf-8")
    record = json.loads(store.cell_path(bogus).read_text(encoding="utf-8"))
    store.cell_path(bogus).write_text(json.dumps({**record, "status": "bogus"}), encoding="utf-8")
    predictions = store.root / "predictions" / f"{bad_line}.jsonl"
    predictions.write_text(predictions.read_text(encoding="utf-8") + '{"id": "x", "sco\n')
    return {truncated: "truncated", bogus: "bogus", bad_line: "bad line"}


def test_damaged_records_are_skipped_by_report_and_rerun_by_resume(
    tmp_path: Path, tiny_server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    argv = tiny_run_argv(
        tiny_server.base_url,
        *("--run-id", "r", "--results-dir", str(results), "--cache-dir", str(tmp_path / "c")),
        limit=2,
    )
    assert main(argv) == 0
    store = RunStore(results / "r")
    intact = {r.cell_id: r for r in store.cells()}
    assert len(intact) == 4
    damaged = _damage(store)
    capsys.readouterr()
    # report: the damaged cells are left out, each named once in a warning; exit 0.
    assert main(["report", str(store.root), "--out", str(tmp_path / "rep")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for cid in damaged:
        assert sum(cid in line and "skipped" in line for line in err.splitlines()) == 1, err
    assert {r.cell_id for r in store.cells()} == set(intact) - set(damaged)
    # resume: the damaged cells run again and their files are whole again.
    assert main([*argv, "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    again = {r.cell_id: r for r in store.cells()}
    assert set(again) == set(intact)
    for cid in damaged:
        assert again[cid].status == "ok" and again[cid].accuracy == intact[cid].accuracy
        assert all(isinstance(p, dict) for p in store.predictions(cid))


def test_a_run_directory_that_cannot_be_locked_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from filelock import FileLock

    def refuse(self: object, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")  # a read-only results folder

    monkeypatch.setattr(FileLock, "acquire", refuse)
    with pytest.raises(BenchError, match="cannot lock the run directory"):
        with RunStore(tmp_path / "ro").lock():
            pass


def test_a_record_keeps_the_bytes_its_cell_saved_and_old_records_load(tmp_path: Path) -> None:
    from benchmarks.results import directory_bytes

    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / "policy.json").write_bytes(b"x" * 10)
    (tmp_path / "a" / "sub" / "w.safetensors").write_bytes(b"y" * 32)
    assert directory_bytes(tmp_path / "a") == 42
    assert directory_bytes(tmp_path / "missing") is None
    store = RunStore(tmp_path / "run")
    store.write_spec({"run_id": "run"})
    rec = _record("c1").model_copy(update={"artifact_bytes": 42})
    store.write_cell(rec)
    assert store.read_cell("c1").artifact_bytes == 42  # type: ignore[union-attr]
    old = json.loads(store.root.joinpath("cells", "c1.json").read_text())
    del old["artifact_bytes"]
    assert CellRecord.model_validate(old).artifact_bytes is None


def test_disclosures_round_trip_and_old_records_read_as_none(tmp_path: Path) -> None:
    from methods.base import Disclosure

    store = RunStore(tmp_path / "run")
    store.write_spec({"run_id": "run"})
    told = [Disclosure("no-change", "returned z = 0"), Disclosure("not-sent", "3 of 8")]
    rec = _record("c1").model_copy(update={"disclosures": told})
    rec = CellRecord.model_validate(rec.model_dump())  # as the runner builds it
    store.write_cell(rec)
    loaded = store.read_cell("c1")
    assert loaded is not None
    assert [(d.kind, d.detail) for d in loaded.disclosures] == [
        ("no-change", "returned z = 0"),
        ("not-sent", "3 of 8"),
    ]
    old = json.loads(store.cell_path("c1").read_text())
    del old["disclosures"]  # a record written before the field
    assert CellRecord.model_validate(old).disclosures == []
    later = {**old, "disclosures": [{"kind": "a-later-kind", "detail": "x"}]}
    assert CellRecord.model_validate(later).disclosures[0].kind == "a-later-kind"


def test_a_trace_is_strict_json_and_a_run_clears_it_and_its_leftovers(tmp_path: Path) -> None:
    import numpy as np

    store = RunStore(tmp_path / "run")
    events = [{"event": "dev", "acc": np.float32(0.5), "z": np.zeros(2), "s": (float("inf"),)}]
    store.write_trace("c1", "bbt", events)
    text = store.trace_path("c1").read_text()
    assert json.loads(text) == {
        "cell_id": "c1",
        "method": "bbt",
        "events": [{"event": "dev", "acc": 0.5, "z": [0.0, 0.0], "s": [None]}],
    }
    store.clear_trace("c1")
    assert not store.trace_path("c1").exists()
    store.write_trace("c1", "zero-shot", [])  # nothing traced: no file
    assert not store.trace_path("c1").exists()
    leftover = store.root / "traces" / ".c1.json.x.tmp"
    leftover.write_text("{")
    assert leftover in store.remove_temporary_files() and not leftover.exists()
