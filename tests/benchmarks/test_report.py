"""`bench report`: the gain interval (a paired bootstrap), the overall table's arithmetic, cost
ratios against a reference method, the files it writes (Markdown, HTML, cell pages, plots),
byte-for-byte reproducibility, and a report from a real run on the tiny backend."""

from __future__ import annotations

import json
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.cli import main
from benchmarks.plots import Point, pareto_front
from benchmarks.report import (
    ReportCell,
    bootstrap_gain,
    build_report,
    collect_cells,
    cost_ratios,
    interval,
    leaderboard_rows,
    overall_rows,
    task_seed,
    write_report,
)
from benchmarks.results import CellRecord, RunStore, cell_id
from benchmarks.server import ServerHandle

# -- helpers ------------------------------------------------------------------------------------


def _usage(
    tune: int = 0,
    eval_: int = 0,
    *,
    tune_usd: float | None = None,
    eval_usd: float | None = None,
    compute: float = 0.0,
    device: str = "cpu",
) -> dict[str, Any]:
    """A `metering.summarize`-shaped usage block."""

    def phase(tokens: int, usd: float | None) -> dict[str, Any]:
        if not tokens:
            return {}
        return {
            "task": {
                "calls": 1,
                "prompt_tokens": tokens,
                "completion_tokens": 0,
                "tokens": tokens,
                "retries": 0,
                "usd": usd,
            }
        }

    flavour = {"tune": phase(tune, tune_usd), "eval": phase(eval_, eval_usd)}
    block = {"seconds": compute, "wall_s": compute, "device": device, "peak_mem_mb": 1.0}
    return {
        "billed": flavour,
        "idealized": flavour,
        "unpriced_models": {},  # the dollars above say what is priced
        "compute": {"tune": {**block, "blocks": []}} if compute else {},
    }


def _cell(
    method: str,
    task: str,
    seed: int,
    scores: list[float] | None,
    *,
    status: str = "ok",
    reason: str | None = None,
    **usage: Any,
) -> tuple[CellRecord, list[dict[str, Any]]]:
    """A record and its predictions (example ids e0, e1, ... with the given scores)."""
    preds = [
        {"id": f"e{i}", "output": f"out {i}", "answer": "a", "target": "a", "score": s}
        for i, s in enumerate(scores or [])
    ]
    record = CellRecord(
        cell_id=cell_id(method, task, "b", "m", seed),
        method=method,
        task=task,
        backend="b",
        model="m",
        seed=seed,
        budget="light",
        status=status,  # type: ignore[arg-type]
        reason=reason,
        requires=["generate"],
        accuracy=statistics.fmean(scores) if scores and status == "ok" else None,
        n_eval=len(scores or []),
        usage=_usage(**usage) if status != "refused" else {},
    )
    return record, preds


def _store(root: Path, cells: list[tuple[CellRecord, list[dict[str, Any]]]]) -> RunStore:
    store = RunStore(root)
    store.write_spec({"run_id": root.name})
    for record, preds in cells:
        store.write_cell(record, preds)
    return store


def _grid() -> list[tuple[CellRecord, list[dict[str, Any]]]]:
    """Two tasks, two seeds; bbox and aligner costs in the paper's proportions on t1."""
    ten = [1.0] * 5 + [0.0] * 5
    better = [1.0] * 8 + [0.0] * 2
    seven = [1.0] * 7 + [0.0] * 3
    cells = []
    for seed in (0, 1):
        cells += [
            _cell("zero-shot", "t1", seed, ten, eval_=1000),
            _cell("few-shot", "t1", seed, better if seed == 0 else seven, eval_=4000),
            _cell("bbox", "t1", seed, better, tune=1000, eval_=2000, compute=2.0),
            _cell("aligner", "t1", seed, ten, tune=31_300, eval_=3680, compute=8.0),
            _cell("zero-shot", "t2", seed, [0.0] * 10, eval_=500),
            _cell("few-shot", "t2", seed, [1.0] * 2 + [0.0] * 8, eval_=3000),
            _cell("bbox", "t2", seed, None, status="refused", reason="needs generate_n"),
            _cell("aligner", "t2", seed, None, status="failed", reason="boom"),
        ]
    return cells


# -- the gain interval ----------------------------------------------------------------------------


def _scores(values: list[float]) -> dict[str, float]:
    return {f"e{i}": v for i, v in enumerate(values)}


def test_bootstrap_of_a_sure_gain_is_a_point() -> None:
    reps = bootstrap_gain([_scores([1.0] * 12)], [_scores([0.0] * 12)], replicates=500)
    assert interval(reps) == pytest.approx((1.0, 1.0))
    same = bootstrap_gain([_scores([1, 0, 1, 0])], [_scores([1, 0, 1, 0])], replicates=500)
    assert interval(same) == pytest.approx((0.0, 0.0))  # paired: the same examples on both sides


def test_bootstrap_interval_covers_the_gain_and_excludes_zero_when_clear() -> None:
    ref = [0.0] * 20
    method = [1.0] * 12 + [0.0] * 8
    low, high = interval(bootstrap_gain([_scores(method)], [_scores(ref)]))
    assert 0 < low < 0.6 < high < 1
    # Fewer examples, the same proportion: a wider interval.
    low5, high5 = interval(bootstrap_gain([_scores([1.0] * 3 + [0.0] * 2)], [_scores([0.0] * 5)]))
    assert high5 - low5 > high - low


def test_bootstrap_is_paired_over_examples() -> None:
    rng = np.random.default_rng(3)
    ref = [float(v) for v in rng.integers(0, 2, size=40)]
    method = list(ref)
    for i in (0, 1, 2):  # the method fixes three examples the reference got wrong
        if method[i] == 0:
            method[i] = 1.0
    low, high = interval(bootstrap_gain([_scores(method)], [_scores(ref)]))
    shuffled = {f"e{i}": v for i, v in zip(rng.permutation(40), ref, strict=True)}
    low_u, high_u = interval(bootstrap_gain([_scores(method)], [shuffled]))
    # Pairing takes the examples' own difficulty out of the spread.
    assert low >= 0 and high - low < (high_u - low_u) / 2


def test_bootstrap_over_seeds_widens_only_when_seeds_differ() -> None:
    ref = [_scores([0.0] * 10)]
    one = bootstrap_gain([_scores([1.0] * 5 + [0.0] * 5)], ref, seed=7)
    twins = bootstrap_gain([_scores([1.0] * 5 + [0.0] * 5)] * 2, ref, seed=7)
    assert np.allclose(one, twins, rtol=0, atol=1e-12)
    apart = bootstrap_gain([_scores([1.0] * 9 + [0.0]), _scores([1.0] + [0.0] * 9)], ref, seed=7)
    assert np.ptp(interval(apart)) > np.ptp(interval(one))


def test_bootstrap_is_reproducible_and_refuses_disjoint_examples() -> None:
    a, b = [_scores([1, 0, 1])], [_scores([0, 0, 1])]
    assert np.array_equal(bootstrap_gain(a, b, seed=1), bootstrap_gain(a, b, seed=1))
    with pytest.raises(ValueError, match="no test example"):
        bootstrap_gain(a, [{"other": 1.0}])
    with pytest.raises(ValueError, match="no seeds"):
        bootstrap_gain([], b)


# -- tables ---------------------------------------------------------------------------------------


def _cells(tmp_path: Path) -> list[ReportCell]:
    return collect_cells([_store(tmp_path / "run", _grid())])


def test_task_rows(tmp_path: Path) -> None:
    rows = {r.method: r for r in leaderboard_rows(_cells(tmp_path))["t1"]}
    few = rows["few-shot"]
    assert few.accuracy == pytest.approx(0.75) and few.std == pytest.approx(0.0707, abs=1e-4)
    assert few.gain == pytest.approx(0.25)
    assert few.gain_ci is not None and few.gain_ci[0] < 0.25 < few.gain_ci[1]
    assert rows["zero-shot"].gain == 0 and rows["zero-shot"].gain_ci == (0.0, 0.0)
    assert few.eval_tokens_per_1k == pytest.approx(400_000)  # 4000 tokens / 10 examples
    assert rows["bbox"].compute_s == 2.0 and rows["bbox"].compute_device == "CPU"
    t2 = {r.method: r for r in leaderboard_rows(_cells(tmp_path))["t2"]}
    assert t2["bbox"].status == "n/a (needs generate_n)"
    assert t2["aligner"].status == "failed (2 of 2 seeds)"


def test_records_without_predictions_have_no_interval(tmp_path: Path) -> None:
    records = [c.record for c in _cells(tmp_path)]
    few = next(r for r in leaderboard_rows(records)["t1"] if r.method == "few-shot")
    assert few.gain == pytest.approx(0.25) and few.gain_ci is None
    assert few.ci_note == "no stored predictions"


def test_overall_arithmetic(tmp_path: Path) -> None:
    by_task = leaderboard_rows(_cells(tmp_path))
    two = {
        t: [r for r in rows if r.method in ("zero-shot", "few-shot")] for t, rows in by_task.items()
    }
    overall = overall_rows(two)
    assert overall.tasks == ["t1", "t2"] and overall.apart == []
    rows = {r.method: r for r in overall.ranked}
    few = rows["few-shot"]
    assert few.tasks == "2/2"
    assert few.accuracy == pytest.approx((0.75 + 0.2) / 2)  # mean over tasks
    assert few.gain == pytest.approx((0.25 + 0.2) / 2)
    # std over seeds of the per-seed mean over tasks: seed 0 (0.8+0.2)/2, seed 1 (0.7+0.2)/2
    assert few.std == pytest.approx(statistics.stdev([0.5, 0.45]))
    assert few.eval_tokens_per_1k == pytest.approx((400_000 + 300_000) / 2)  # mean
    assert few.gain_ci is not None and few.gain_ci[0] <= few.gain <= few.gain_ci[1]
    # With bbox and aligner, which finished t1 only: t1 ranks four methods, t1 and t2 two
    # (four results each); the tie goes to more methods, so all four are ranked on t1 alone.
    overall = overall_rows(by_task)
    assert overall.tasks == ["t1"] and overall.apart == []
    rows = {r.method: r for r in overall.ranked}
    bbox = rows["bbox"]
    assert bbox.tasks == "1/2" and bbox.accuracy == pytest.approx(0.8)
    assert bbox.tune_tokens == 1000 and bbox.compute_s == 2.0  # summed over counted tasks
    assert rows["few-shot"].accuracy == pytest.approx(0.75)  # t2 is not counted
    assert [r.method for r in overall.ranked] == ["bbox", "few-shot", "aligner", "zero-shot"]


def test_cost_ratios_in_the_bbox_paper_form(tmp_path: Path) -> None:
    t1 = leaderboard_rows(_cells(tmp_path))["t1"]
    ratios = {r.method: r for r in cost_ratios(t1, "bbox")}
    assert ratios["aligner"].tune == pytest.approx(31.30)
    assert ratios["aligner"].tune_text == "31.30x (tokens)"
    assert ratios["aligner"].eval_text == "1.84x (tokens)"
    assert ratios["bbox"].tune_text == "1.00x (tokens)"
    assert ratios["zero-shot"].tune == 0.0
    # The reference spent nothing: no ratio, and why.
    assert cost_ratios(t1, "zero-shot")[0].tune_text == "n/a (zero-shot spent 0 tuning tokens)"
    t2 = leaderboard_rows(_cells(tmp_path))["t2"]
    assert {r.tune_text for r in cost_ratios(t2, "bbox")} == {"n/a (bbox: needs generate_n)"}
    assert cost_ratios(t1, "opro")[0].eval_text == "n/a (opro not in this table)"


def test_cost_ratios_use_dollars_when_priced(tmp_path: Path) -> None:
    cells = [
        _cell("bbox", "t", 0, [1.0], tune=1000, eval_=100, tune_usd=2.0, eval_usd=0.5),
        _cell("aligner", "t", 0, [1.0], tune=1000, eval_=100, tune_usd=6.0, eval_usd=None),
    ]
    rows = leaderboard_rows(collect_cells([_store(tmp_path / "r", cells)]))["t"]
    aligner = next(r for r in cost_ratios(rows, "bbox") if r.method == "aligner")
    assert aligner.tune_text == "3.00x ($)"  # both priced: dollars
    assert aligner.eval_text == "1.00x (tokens)"  # aligner's inference is unpriced: tokens


def test_pareto_front() -> None:
    points = [
        Point("free", 0, 0.3),
        Point("cheap", 10, 0.5),
        Point("worse", 20, 0.4),  # dominated by cheap
        Point("best", 100, 0.9),
        Point("tie", 100, 0.9),
        Point("costly", 200, 0.9),  # dominated by best
    ]
    assert [points[i].label for i in pareto_front(points)] == ["free", "cheap", "best", "tie"]


# -- files ----------------------------------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src"):
            if values.get(name):
                self.refs.append(str(values[name]))
        if values.get("id"):
            self.ids.add(str(values["id"]))


def _check_links(page: Path) -> _Links:
    """Every href/src of ``page`` is a file inside the report or an anchor on the page."""
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    for ref in parser.refs:
        assert not re.match(r"[a-z]+://", ref) or ref.startswith("data:"), ref
        if ref.startswith("data:"):
            continue
        path, _, anchor = ref.partition("#")
        if path:
            assert (page.parent / path).is_file(), f"{page.name}: broken link {ref}"
        elif anchor:
            assert anchor in parser.ids, f"{page.name}: no #{anchor}"
    return parser


def test_write_report_files(tmp_path: Path) -> None:
    cells = _grid()
    cells.append(
        _cell("few-shot", "t3", 0, [1.0], eval_=10)  # an output that must be escaped
    )
    cells[-1][1][0]["output"] = "<script>alert(1)</script>"
    cells.append(_cell("zero-shot", "t3", 0, [0.0], eval_=10))
    store = _store(tmp_path / "run", cells)
    out = tmp_path / "reports"
    (out / "cells").mkdir(parents=True)
    (out / "cells" / "stale.html").write_text("old")
    files = write_report([store], out, cost_reference="bbox")
    assert not (out / "cells" / "stale.html").exists()
    md = files.markdown.read_text()
    assert md.startswith("# Leaderboard: run")
    for heading in ("## Overall", "## t1", "## t2", "## t3"):
        assert heading in md
    assert "| bbox | generate | n/a (needs generate_n) |" in md
    assert "31.30x (tokens)" in md and "1.84x (tokens)" in md
    assert re.search(r"\| few-shot \| generate \| 0\.750 ± 0\.071 \| \+0\.250 \[[-+]", md)
    assert "![t1: accuracy vs tuning cost" in md
    # One page per cell, named by cell id, listing its stored predictions.
    assert len(files.cell_pages) == len(cells)
    page = out / "cells" / f"{cell_id('few-shot', 't1', 'b', 'm', 0)}.html"
    text = page.read_text()
    assert text.count('<tr><td class="num" data-sort=') == 10
    assert "out 7" in text
    escaped = (out / "cells" / f"{cell_id('few-shot', 't3', 'b', 'm', 0)}.html").read_text()
    assert "<script>alert(1)</script>" not in escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in escaped
    # Plots: PNG and SVG of four kinds per section (t3 has one method besides zero-shot).
    names = {p.name for p in files.plots}
    for kind in ("tuning", "inference", "compute", "gain"):
        assert f"task-t1-{kind}.svg" in names and f"all-tasks-{kind}.png" in names
    assert all(p.stat().st_size > 1000 for p in files.plots)
    # Self-contained: every link and image resolves inside reports/.
    index = _check_links(files.html)
    assert {"overall", "task-t1", "task-t2", "task-t3"} <= index.ids
    assert sum(r.startswith("cells/") for r in index.refs) == len(cells)
    _check_links(page)


def _small_grid() -> list[tuple[CellRecord, list[dict[str, Any]]]]:
    return [
        _cell("zero-shot", "t", 0, [1.0, 0.0, 0.0], eval_=30),
        _cell("bbox", "t", 0, [1.0, 1.0, 0.0], tune=300, eval_=60, compute=0.5),
    ]


def test_report_is_reproducible(tmp_path: Path) -> None:
    store = _store(tmp_path / "run", _small_grid())
    outputs = []
    for name in ("a", "b"):
        write_report([store], tmp_path / name)
        root = tmp_path / name
        outputs.append(
            {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        )
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) == 2 + 2 + 4 * 2
    for rel in outputs[0]:
        assert outputs[0][rel] == outputs[1][rel], f"{rel} differs between two reports"


def test_same_cell_in_two_runs_gets_two_pages(tmp_path: Path) -> None:
    a = _store(tmp_path / "a", [_cell("zero-shot", "t", 0, [1.0, 0.0])])
    b = _store(tmp_path / "b", [_cell("zero-shot", "t", 0, [0.0, 0.0])])
    cells = collect_cells([a, b])
    assert sorted(c.key for c in cells) == [
        "a--zero-shot__t__b__m__s0",
        "b--zero-shot__t__b__m__s0",
    ]
    report = build_report(cells, "x")
    (row,) = report.sections[1].rows
    assert row.accuracy == 0.25 and row.seeds == 2


def test_cli_report_prints_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _store(tmp_path / "results" / "r1", _small_grid())
    out = tmp_path / "rep"
    assert main(["report", str(tmp_path / "results" / "r1"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'leaderboard.md'}" in printed
    assert f"wrote {out / 'index.html'}" in printed
    assert "plots to" in printed and "wrote 2 cell pages" in printed
    code = main(["report", str(tmp_path / "results" / "r1"), "--out", str(out),
                 "--cost-reference", "bboxx"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method 'bboxx'" in err and "did you mean" in err
    assert main(["report", str(tmp_path / "results" / "r1"), "--out", str(out),
                 "--cost-reference", "few-shot"]) == 0  # fmt: skip
    # A real method that did not run: no table of n/a ratios against it.
    assert "Cost relative to" not in (out / "leaderboard.md").read_text()
    assert main(["report", str(tmp_path / "results" / "r1"), "--out", str(out),
                 "--cost-reference", "bbox"]) == 0  # fmt: skip
    assert "Cost relative to `bbox`" in (out / "leaderboard.md").read_text()


def test_report_of_a_real_run(
    tmp_path: Path, tiny_server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run on the tiny backend, reported: a page per cell with each stored prediction."""
    code = main(
        [
            *("run", "--methods", "zero-shot,few-shot", "--tasks", "zoo-sentiment"),
            *("--backend", "openai", "--base-url", tiny_server.base_url, "--api", "completions"),
            *("--model", "tiny", "--seeds", "0,1", "--limit", "6"),
            *("--results-dir", str(tmp_path / "results"), "--cache-dir", str(tmp_path / "cache")),
            *("--run-id", "real"),
        ]
    )
    assert code == 0
    store = RunStore(tmp_path / "results" / "real")
    files = write_report([store], tmp_path / "reports")
    assert len(files.cell_pages) == 4
    for record in store.cells():
        page = (tmp_path / "reports" / "cells" / f"{record.cell_id}.html").read_text()
        for pred in store.predictions(record.cell_id):
            assert f">{pred['id']}<" in page
        assert record.artifact_bytes  # policy.json at least
        assert f"<td>{record.artifact_bytes:,} bytes</td>" in page
    md = files.markdown.read_text()
    assert "| zero-shot | generate |" in md and "+0.000 [+0.000, +0.000]" in md
    _check_links(files.html)


# -- warnings ----------------------------------------------------------------------------------


def test_a_constant_cell_is_flagged_in_the_tables_and_listed(tmp_path: Path) -> None:
    """A cell whose record carries a warning (one answer throughout) is marked beside its
    accuracy in the task and overall tables, and the warning is listed under each table."""
    cells = []
    for seed in (0, 1):
        cells.append(_cell("zero-shot", "t1", seed, [1.0] * 5 + [0.0] * 5, eval_=100))
        record, preds = _cell("majority", "t1", seed, [1.0] * 5 + [0.0] * 5, eval_=100)
        if seed == 1:
            record.warnings = ["one answer throughout: the answer 'a' for 10 of 10"]
        cells.append((record, preds))
    out = tmp_path / "reports"
    write_report([_store(tmp_path / "run", cells)], out)
    text = (out / "leaderboard.md").read_text(encoding="utf-8")
    flagged = [line for line in text.splitlines() if line.startswith("| majority | generate")]
    assert len(flagged) == 2 and all("0.500 ± 0.000 ⚠" in line for line in flagged)
    clean = [line for line in text.splitlines() if line.startswith("| zero-shot | generate")]
    assert clean and not any("⚠" in line for line in clean)
    assert "- ⚠ `majority` seed 1: one answer throughout" in text
    assert "- ⚠ `majority` t1, seed 1: one answer throughout" in text
    assert "⚠" in (out / "index.html").read_text(encoding="utf-8")


# -- the gain over manual-best -------------------------------------------------------------------


def _manual_grid() -> list[tuple[CellRecord, list[dict[str, Any]]]]:
    """t1 has manual-best (two seeds), t2 has none."""
    cells = _grid()
    for seed in (0, 1):
        cells.append(_cell("manual-best", "t1", seed, [1.0] * 7 + [0.0] * 3, tune=600, eval_=1200))
    return cells


def _on_both_tasks() -> list[tuple[CellRecord, list[dict[str, Any]]]]:
    """Two more methods on t1 and t2, so that the overall ranking is over both tasks."""
    return [
        _cell(method, task, s, [1.0] * 5 + [0.0] * 5)
        for method in ("opro", "grips")
        for task in ("t1", "t2")
        for s in (0, 1)
    ]


def test_gain_over_manual_best_per_task(tmp_path: Path) -> None:
    by_task = leaderboard_rows(collect_cells([_store(tmp_path / "run", _manual_grid())]))
    t1 = {r.method: r for r in by_task["t1"]}
    few = t1["few-shot"].manual_gain
    assert few.value == pytest.approx(0.75 - 0.7)
    assert few.ci is not None and few.ci[0] < few.value < few.ci[1]
    zero = t1["zero-shot"].manual_gain
    assert zero.value == pytest.approx(-0.2) and zero.ci is not None
    assert zero.ci[0] < zero.value and zero.ci[1] <= 0  # paired: the two differ on e5, e6 only
    assert t1["manual-best"].manual_gain.ci == (0.0, 0.0)
    assert t1["manual-best"].gain == pytest.approx(0.2)  # and over zero-shot, as any row
    # No manual-best on t2: no gain, and why.
    t2 = {r.method: r for r in by_task["t2"]}
    assert t2["few-shot"].manual_gain.value is None
    assert t2["few-shot"].manual_gain.note == "no finished manual-best row"
    assert t2["few-shot"].gain == pytest.approx(0.2)  # the zero-shot gain is unaffected


def test_gain_over_manual_best_is_the_zero_shot_bootstrap_with_manual_best_as_reference(
    tmp_path: Path,
) -> None:
    """Same draws, same pairing: with manual-best scoring what zero-shot scores, the two
    gains' replicates are identical; and they are `bootstrap_gain` with the task's seed."""
    cells = [
        _cell("zero-shot", "t", 0, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        _cell("manual-best", "t", 0, [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]),
        _cell("opro", "t", 0, [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]),
    ]
    rows = {
        r.method: r for r in leaderboard_rows(collect_cells([_store(tmp_path / "r", cells)]))["t"]
    }
    opro = rows["opro"]
    assert opro.gain_replicates is not None and opro.manual_gain.replicates is not None
    assert np.array_equal(opro.manual_gain.replicates, opro.gain_replicates)
    expected = bootstrap_gain(
        [opro.cells[0].scores()], [rows["manual-best"].cells[0].scores()], seed=task_seed("t")
    )
    assert np.array_equal(opro.manual_gain.replicates, expected)
    assert opro.manual_gain.ci == opro.gain_ci


def test_overall_gain_over_manual_best_says_when_it_covers_fewer_tasks(tmp_path: Path) -> None:
    cells = _manual_grid()
    cells += [_cell("manual-best", "t2", s, [1.0] * 4 + [0.0] * 6, eval_=500) for s in (0, 1)]
    by_task = leaderboard_rows(collect_cells([_store(tmp_path / "run", cells)]))
    overall = overall_rows(by_task)
    rows = {r.method: r for r in [*overall.ranked, *overall.apart]}
    few = rows["few-shot"].manual_gain
    assert few.value == pytest.approx(((0.75 - 0.7) + (0.2 - 0.4)) / 2)  # mean over tasks
    per_task = [r.manual_gain.replicates for t in by_task.values() for r in t]
    assert few.ci is not None and few.tasks == "" and per_task
    assert "bbox" in {r.method for r in overall.apart}
    bbox = rows["bbox"].manual_gain  # finished t1 only, like its accuracy (listed apart)
    assert bbox.value == pytest.approx(0.8 - 0.7) and bbox.tasks == ""
    # Without manual-best on t2, the mean covers t1 alone and says so.
    by_task = leaderboard_rows(
        collect_cells([_store(tmp_path / "r2", _manual_grid() + _on_both_tasks())])
    )
    overall = overall_rows(by_task)
    few_partial = next(
        r for r in [*overall.ranked, *overall.apart] if r.method == "few-shot"
    ).manual_gain
    assert few_partial.value == pytest.approx(0.75 - 0.7) and few_partial.tasks == "1/2"


def test_markdown_and_html_show_the_manual_best_gain_alike(tmp_path: Path) -> None:
    cells = _manual_grid() + _on_both_tasks()
    files = write_report([_store(tmp_path / "run", cells)], tmp_path / "reports")
    md = files.markdown.read_text(encoding="utf-8")
    html = files.html.read_text(encoding="utf-8")
    by_task = leaderboard_rows(collect_cells([RunStore(tmp_path / "run")]))
    few = next(r for r in by_task["t1"] if r.method == "few-shot").manual_gain
    assert few.ci is not None
    shown = f"{few.value:+.3f} [{few.ci[0]:+.3f}, {few.ci[1]:+.3f}]"
    row = r"\| few-shot \| generate \| {accuracy} ± [0-9.]+ \| \+[0-9.]+ \[.*?\] \| {gain} \| 2 \|"
    assert re.search(row.format(accuracy=r"0\.750", gain=re.escape(shown)), md)
    assert re.search(
        row.format(accuracy=r"0\.200", gain=r"n/a \(no finished manual-best row\)"), md
    )
    assert "(over 1/2 tasks)" in md  # few-shot overall: manual-best ran on t1 only
    # overall (ranked, and apart), t1, t2
    assert md.count("gain vs manual-best [95% CI]") == 4
    # Every leaderboard row has as many cells as its header, refused and failed rows included.
    for table in re.findall(r"^\| method \| needs \|.*?(?=\n\n)", md, re.S | re.M):
        head, *rows = table.splitlines()
        assert len(rows) >= 3 and all(row.count("|") == head.count("|") for row in rows), table
    assert html.count(">gain vs manual-best [95% CI]</th>") == 4
    assert f">{shown}</td>" in html
    assert ">n/a (no finished manual-best row)</td>" in html
    for table in re.findall(r'<table class="sortable" id="leaderboard-.*?</table>', html, re.S):
        heads = table.count("<th ")
        assert all(
            row.count("<td") == heads for row in re.findall(r"<tr data-method.*?</tr>", table)
        )


# -- dollars of unpriced models -------------------------------------------------------------------


def test_unpriced_model_is_na_in_every_dollar_column_even_with_no_calls_in_a_phase() -> None:
    """zero-shot makes no tuning call; on an unpriced model its tuning dollars are n/a like
    every other unpriced figure, not $0.0000 (a new record, summarized by the meter)."""
    from benchmarks.metering import CallRecord, PriceTable, summarize

    call = CallRecord("task", "eval", "no-price-model", "generate", 90, 10, False, 0.1)
    record, _ = _cell("zero-shot", "t1", 0, [1.0, 0.0])
    record.model = "no-price-model"
    record.usage = summarize([call], [], PriceTable())
    (row,) = leaderboard_rows([record])["t1"]
    assert row.tune_usd is None and row.eval_usd_per_1k is None


def test_unpriced_model_is_na_in_an_old_record_without_its_model_list() -> None:
    """Records written before the meter listed unpriced models read the same way."""
    record, _ = _cell("zero-shot", "t1", 0, [1.0, 0.0], eval_=100)
    del record.usage["unpriced_models"]
    assert record.model == "m"  # not in the price table
    (row,) = leaderboard_rows([record])["t1"]
    assert row.tune_usd is None and row.eval_usd_per_1k is None
    priced, _ = _cell("zero-shot", "t1", 0, [1.0, 0.0], eval_=100, eval_usd=0.5)
    del priced.usage["unpriced_models"]
    priced.model = "gpt-4o-mini"
    (row,) = leaderboard_rows([priced])["t1"]
    assert row.tune_usd == 0.0 and row.eval_usd_per_1k == 250.0


# -- fair aggregation -----------------------------------------------------------------------------


def _answered(
    method: str, task: str, seed: int, answers: list[str | None], targets: list[str]
) -> tuple[CellRecord, list[dict[str, Any]]]:
    """A cell whose predictions have these answers (None: unparsed), scored against targets."""
    scores = [float(a == t) for a, t in zip(answers, targets, strict=True)]
    record, preds = _cell(method, task, seed, scores, eval_=100)
    for pred, answer, target in zip(preds, answers, targets, strict=True):
        pred["answer"], pred["target"] = answer, target
    return record, preds


def _section_lines(text: str, heading: str) -> list[str]:
    """The lines of one ``## heading`` section of a Markdown leaderboard."""
    part = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in part.splitlines() if line]


def test_overall_ranks_over_the_common_tasks_and_lists_partial_rows_apart(tmp_path: Path) -> None:
    """A method that finished one task of three (bbt, perfect there) is not ranked among the
    three-task rows but listed apart with its coverage; a method that also finished a task
    zero-shot did not is ranked over the common tasks only."""
    good, half, poor = [1.0] * 4, [1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]
    cells = []
    for task in ("t1", "t2", "t3"):
        cells += [
            _cell("zero-shot", task, 0, poor, eval_=40),
            _cell("opro", task, 0, half, tune=100, eval_=40),
            _cell("grips", task, 0, good if task != "t3" else poor, tune=10, eval_=40),
            _cell("bbt", task, 0, good if task == "t2" else None, tune=50, eval_=40,
                  **({} if task == "t2" else {"status": "refused", "reason": "needs labels"})),
            _cell("aligner", task, 0, None, status="failed", reason="boom"),
        ]  # fmt: skip
    cells.append(_cell("opro", "t4", 0, good, tune=1000, eval_=40))  # zero-shot has no t4
    cells.append(_cell("bbox", "t4", 0, good, tune=1000, eval_=40))
    by_task = leaderboard_rows(collect_cells([_store(tmp_path / "run", cells)]))
    overall = overall_rows(by_task)
    assert overall.tasks == ["t1", "t2", "t3"]
    # Ranked by accuracy, each over t1-t3 only: opro's perfect t4 is not averaged in.
    assert [r.method for r in overall.ranked] == ["grips", "opro", "zero-shot"]
    ranked = {r.method: r for r in overall.ranked}
    assert ranked["opro"].accuracy == pytest.approx(0.5) and ranked["opro"].tasks == "3/4"
    assert ranked["opro"].gain == pytest.approx(0.25) and ranked["opro"].tune_tokens == 300
    assert ranked["grips"].accuracy == pytest.approx(0.75)
    assert all(r.covered == ["t1", "t2", "t3"] for r in overall.ranked)
    apart = {r.method: r for r in overall.apart}
    assert list(apart) == ["aligner", "bbox", "bbt"]
    assert apart["bbt"].tasks == "1 of 4 tasks: t2" and apart["bbt"].accuracy == 1.0
    assert apart["bbox"].tasks == "1 of 4 tasks: t4"
    assert apart["aligner"].tasks == "0 of 4 tasks" and apart["aligner"].status.startswith("failed")

    out = tmp_path / "reports"
    write_report([RunStore(tmp_path / "run")], out)
    lines = _section_lines((out / "leaderboard.md").read_text(encoding="utf-8"), "Overall")
    split = next(i for i, line in enumerate(lines) if line.startswith("Not ranked"))
    ranked_lines = [line for line in lines[:split] if line.startswith("| ") and "---" not in line]
    assert [line.split(" | ")[0][2:] for line in ranked_lines[1:]] == ["grips", "opro", "zero-shot"]
    assert "over the 3 of 4 tasks that every ranked method finished (t1, t2, t3)" in lines[0]
    assert any(line.startswith("| bbt | ") and "| 1 of 4 tasks: t2 |" in line for line in lines)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert (
        'id="apart-overall"' in html and 'data-method="bbt"' in html.split('id="apart-overall"')[1]
    )


def test_common_tasks_need_zero_shot_and_prefer_the_most_results() -> None:
    """zero-shot bounds the set (gains are over it); among the sets it allows, the one that
    ranks the most method x task results wins, then the one ranking more methods."""
    from benchmarks.report import Row, common_tasks

    def board(done: dict[str, set[str]]) -> dict[str, list[Row]]:
        tasks = sorted(set().union(*done.values()))
        return {
            t: [Row(m, "", "ok" if t in d else "failed") for m, d in sorted(done.items())]
            for t in tasks
        }

    abc = {"a", "b", "c"}
    # Everyone did a, b, c and d, except zero-shot, which skipped d: d is out.
    assert common_tasks(board({"zero-shot": abc, "m1": abc | {"d"}, "m2": abc | {"d"}})) == [
        "a",
        "b",
        "c",
    ]
    # Three methods over three tasks (9) beat four over one (4).
    done = {"zero-shot": abc, "m1": abc, "m2": abc, "m3": {"b"}}
    assert common_tasks(board(done)) == ["a", "b", "c"]
    # Two methods over two tasks (4) tie four over one (4): more methods win.
    done = {"zero-shot": {"a", "b"}, "m1": {"a", "b"}, "m2": {"a"}, "m3": {"a"}}
    assert common_tasks(board(done)) == ["a"]
    # No zero-shot: any task (no gains then), by the same rule.
    assert common_tasks(board({"m1": {"a", "b"}, "m2": {"a", "b"}, "m3": {"b"}})) == ["a", "b"]
    assert common_tasks(board({"m1": set(), "zero-shot": set()})) == []


def test_parse_failure_rate_and_answer_distribution_in_the_tables(tmp_path: Path) -> None:
    targets = ["pos", "neg"] * 4
    cells = [
        _answered("zero-shot", "t", 0, ["pos"] * 4 + ["neg"] * 2 + [None] * 2, targets),
        _answered("zero-shot", "t", 1, ["pos"] * 4 + ["neg"] * 4, targets),
        _answered("opro", "t", 0, targets, targets),
        _answered("opro", "t", 1, targets, targets),
    ]
    cells += [_answered(m, "u", s, targets, targets) for m in ("zero-shot", "opro") for s in (0, 1)]
    store = _store(tmp_path / "run", cells)
    rows = {r.method: r for r in leaderboard_rows(collect_cells([store]))["t"]}
    zero = rows["zero-shot"]
    # Pooled over both seeds: 2 of 16 unparsed, "pos" 8 of 16, "neg" 6 of 16.
    assert zero.unparsed == pytest.approx(2 / 16)
    assert zero.answers == [("pos", 0.5), ("neg", pytest.approx(6 / 16))]
    assert rows["opro"].unparsed == 0.0 and rows["opro"].answers == [("neg", 0.5), ("pos", 0.5)]
    out = tmp_path / "reports"
    write_report([store], out)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    task = _section_lines(md, "t")
    assert task[0].endswith("| compute s | unparsed | top answers |")
    assert any(
        line.startswith("| zero-shot |") and line.endswith("| 12% | pos 50%, neg 38% |")
        for line in task
    )
    overall = _section_lines(md, "Overall")
    # Overall: the mean over tasks, (12.5% + 0%) / 2.
    assert any(line.startswith("| zero-shot |") and line.endswith("| 6% |") for line in overall)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert '<td class="num" data-sort="0.125">12%</td>' in html
    assert '<td data-sort="0.5">pos 50%, neg 38%</td>' in html
    page = (out / "cells" / f"{cell_id('zero-shot', 't', 'b', 'm', 0)}.html").read_text()
    assert '<th scope="row">unparsed answers</th><td>25%</td>' in page
    # Many answers: the top three, and how many more.
    from benchmarks.report import Row, format_answers

    many = Row("m", "", "ok", unparsed=0.0, answers=[(str(i), 0.2) for i in range(5)])
    assert format_answers(many) == "0 20%, 1 20%, 2 20% (+2 more)"
    assert format_answers(Row("m", "", "ok", unparsed=1.0)) == "none parsed"
    assert format_answers(Row("m", "", "ok")) == "n/a"  # no stored predictions


def test_unparseable_and_constant_cells_are_flagged_and_gains_over_them_marked(
    tmp_path: Path,
) -> None:
    """The new user's report: zero-shot answers nothing parseable (30 of 30), two constant
    predictors gain +0.5 over it. Their records carry no warning (written before the check):
    the predictions alone flag all three, and the gains say they are over a flagged zero-shot."""
    targets = ["pos", "neg"] * 15
    cells = [
        _answered("zero-shot", "t", 0, [None] * 30, targets),
        _answered("bbt", "t", 0, ["pos"] * 30, targets),
        _answered("zero-shot-likelihood", "t", 0, ["neg"] * 30, targets),
        _answered("opro", "t", 0, targets, targets),
    ]
    assert all(record.warnings == [] for record, _ in cells)
    out = tmp_path / "reports"
    write_report([_store(tmp_path / "run", cells)], out)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    for heading in ("t", "Overall"):
        lines = _section_lines(md, heading)
        row = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}
        assert "0.000 ± n/a ⚠" in row["zero-shot"]
        assert "0.500 ± n/a ⚠" in row["bbt"] and "0.500 ± n/a ⚠" in row["zero-shot-likelihood"]
        assert "1.000 ± n/a |" in row["opro"]  # not flagged itself...
        # ...but every gain over the broken zero-shot says so.
        for method in ("bbt", "zero-shot-likelihood", "opro"):
            assert "⚠ over a flagged zero-shot" in row[method], (heading, method)
        assert "over a flagged" not in row["zero-shot"]
        assert "- ⚠ `zero-shot` " + ("" if heading == "t" else "t, ") + (
            "seed 0: one answer throughout: no parseable answer for 30 of 30"
        ) in "\n".join(lines)
        assert any("not a significant gain of the method" in line for line in lines)
    assert "on 1 of 1 tasks" in "\n".join(_section_lines(md, "Overall"))
    html = (out / "index.html").read_text(encoding="utf-8")
    assert html.count("⚠ over a flagged zero-shot") >= 6
    page = (out / "cells" / f"{cell_id('bbt', 't', 'b', 'm', 0)}.html").read_text()
    assert "one answer throughout: the answer &#x27;pos&#x27; for 30 of 30" in page


def test_one_seed_has_no_spread(tmp_path: Path) -> None:
    """One seed: ± n/a, never ± 0.000 (which would claim seeds agreed)."""
    cells = [
        _cell("zero-shot", "t1", 0, [1.0, 0.0], eval_=10),
        _cell("opro", "t1", 0, [1.0, 1.0], tune=5, eval_=10),
        _cell("zero-shot", "t2", 0, [0.0, 0.0], eval_=10),
        _cell("opro", "t2", 0, [1.0, 0.0], tune=5, eval_=10),
    ]
    store = _store(tmp_path / "run", cells)
    by_task = leaderboard_rows(collect_cells([store]))
    assert all(r.std is None for rows in by_task.values() for r in rows)
    assert all(r.std is None for r in overall_rows(by_task).ranked)
    out = tmp_path / "reports"
    write_report([store], out)
    for name in ("leaderboard.md", "index.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert "± 0.000" not in text and "0.500 ± n/a" in text and "1.000 ± n/a" in text


def test_no_cost_ratio_table_against_a_method_that_did_not_finish(tmp_path: Path) -> None:
    """bbox is the default reference: absent from the runs, no ratio table at all; refused
    on one task, that task says why in one line instead of a table of n/a."""
    cells = [
        _cell("zero-shot", "t1", 0, [1.0, 0.0], eval_=10),
        _cell("opro", "t1", 0, [1.0, 1.0], tune=5, eval_=10),
    ]
    out = tmp_path / "reports"
    write_report([_store(tmp_path / "a", cells)], out)
    for name in ("leaderboard.md", "index.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert (
            "Cost relative to" not in text and "cost ÷" not in text and "No cost ratios" not in text
        )
    cells += [
        _cell("bbox", "t1", 0, None, status="refused", reason="needs generate_n"),
        _cell("zero-shot", "t2", 0, [1.0, 0.0], eval_=10),
        _cell("bbox", "t2", 0, [1.0, 1.0], tune=20, eval_=10),
    ]
    write_report([_store(tmp_path / "b", cells)], out)
    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    t1, t2 = _section_lines(md, "t1"), _section_lines(md, "t2")
    assert "No cost ratios here: `bbox`: needs generate_n." in t1
    assert not any("n/a (bbox" in line for line in md.splitlines())
    assert any(line.startswith("Cost relative to `bbox`") for line in t2)
    assert "| zero-shot | 0.00x (tokens) | 1.00x (tokens) |" in t2
    # Overall: bbox finished t2 only, so it is listed apart and the overall has no ratios.
    overall = _section_lines(md, "Overall")
    assert "No cost ratios here: `bbox` is not ranked." in overall


# -- disclosures --------------------------------------------------------------------------------


def _disclosing_grid(tmp_path: Path) -> RunStore:
    """zero-shot and opro on t1 and t2, two seeds: opro's meta-prompt is cut in every cell
    (the same detail on t1's two seeds), and on t1 seed 1 it returned its start."""
    from methods.base import Disclosure

    cells = []
    for task in ("t1", "t2"):
        for seed in (0, 1):
            cells.append(_cell("zero-shot", task, seed, [1.0] * 5 + [0.0] * 5, eval_=100))
            record, preds = _cell("opro", task, seed, [1.0] * 7 + [0.0] * 3, tune=50, eval_=100)
            told = [Disclosure("truncated", f"meta-prompt cut in 9 of 9 steps ({task})")]
            if (task, seed) == ("t1", 1):
                told.insert(0, Disclosure("no-change", "returned its starting instruction"))
            record = CellRecord.model_validate({**record.model_dump(), "disclosures": told})
            preds = [{**p, "prompt": f"Solve .\n\nQ: {p['id']}\nA:"} for p in preds]
            cells.append((record, preds))
    store = _store(tmp_path / "run", cells)
    store.write_trace(cell_id("opro", "t1", "b", "m", 0), "opro", [{"event": "opro_step"}])
    return store


def test_disclosures_are_marked_beside_the_accuracy_and_listed_under_each_table(
    tmp_path: Path,
) -> None:
    out = tmp_path / "reports"
    write_report([_disclosing_grid(tmp_path)], out)
    text = (out / "leaderboard.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| opro | generate")]
    # overall, t1 (one seed of two unchanged), t2 (nothing unchanged)
    assert len(rows) == 3
    assert "0.700 ± 0.000 ∅✂ no change (1/4) |" in rows[0]
    assert "0.700 ± 0.000 ∅✂ no change (1/2) |" in rows[1]
    assert "0.700 ± 0.000 ✂ |" in rows[2] and "no change" not in rows[2]
    clean = [line for line in text.splitlines() if line.startswith("| zero-shot | generate")]
    assert clean and not any(mark in line for line in clean for mark in "∅✂⊘↓≈◇¶")
    page = "cells/opro__t1__b__m__s{}.html"
    t1 = text.split("## t1")[1].split("## t2")[0]
    assert (
        f"- ∅ no-change, `opro` seed [1]({page.format(1)}): returned its starting instruction" in t1
    )
    # the same detail on both seeds is one entry, said of every cell when all said it
    assert "- ✂ truncated, `opro` every cell: meta-prompt cut in 9 of 9 steps (t1)" in t1
    assert "Disclosures (marks beside the accuracy): ∅ no-change: returned its starting" in t1
    overall = text.split("## Overall")[1].split("## t1")[0]
    assert "- ✂ truncated, `opro` t2 seeds [0](cells/opro__t2__b__m__s0.html), [1](" in overall
    assert "- ∅ no-change, `opro` t1 seed [1](" in overall

    index = (out / "index.html").read_text(encoding="utf-8")
    assert index.count('<ul class="disclosures">') == 3  # overall, t1, t2
    assert "0.700 ± 0.000 ∅✂ no change (1/2)" in index
    assert '<a href="cells/opro__t1__b__m__s1.html">1</a>: returned its starting' in index
    _check_links(out / "index.html")


def test_a_cell_page_lists_its_disclosures_links_its_trace_and_shows_the_prompts(
    tmp_path: Path,
) -> None:
    out = tmp_path / "reports"
    write_report([_disclosing_grid(tmp_path)], out)
    page = out / "cells" / "opro__t1__b__m__s0.html"
    html = page.read_text(encoding="utf-8")
    assert "<h2>Disclosures</h2>" in html
    assert "✂</abbr> truncated: meta-prompt cut in 9 of 9 steps (t1)</li>" in html
    assert 'href="opro__t1__b__m__s0.trace.json"' in html
    copied = out / "cells" / "opro__t1__b__m__s0.trace.json"
    assert json.loads(copied.read_text())["events"] == [{"event": "opro_step"}]
    assert html.count("<summary>prompt sent</summary>") == 10
    assert "Solve .\n\nQ: e0\nA:</pre>" in html
    _check_links(page)
    # no trace, no link; a later report without the trace removes the stale copy
    other = (out / "cells" / "opro__t1__b__m__s1.html").read_text(encoding="utf-8")
    assert ".trace.json" not in other
    (tmp_path / "run" / "traces" / "opro__t1__b__m__s0.json").unlink()
    write_report([RunStore(tmp_path / "run")], out)
    assert not copied.exists()
