"""The reproduction table: the claims are well-formed, every verdict path on a small synthetic
results folder, the gain is the report's own bootstrap, and the Markdown and HTML sections."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import Row, collect_cells, leaderboard_rows, overall_rows, write_report
from benchmarks.reproduction import (
    CLAIMS,
    NOT_MEASURABLE,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
    Verdict,
    judge,
)
from benchmarks.results import CellRecord
from tests.benchmarks.test_report import _cell, _store

Cells = list[tuple[CellRecord, list[dict[str, Any]]]]


def _hits(right: int, n: int = 100) -> list[float]:
    """``right`` correct examples first, then wrong ones (so a larger count is a superset)."""
    return [1.0] * right + [0.0] * (n - right)


def _rows(tmp_path: Path, cells: Cells) -> dict[str, list[Row]]:
    return leaderboard_rows(collect_cells([_store(tmp_path / "run", cells)]))


def _claim(method: str, comparator: str | None = "any") -> Claim:
    found = [c for c in CLAIMS if c.method == method and comparator in ("any", c.comparator)]
    assert len(found) == 1, (method, comparator)
    return found[0]


def _judge(
    tmp_path: Path, claim: Claim, cells: Cells
) -> tuple[Verdict, Mapping[str, Sequence[Row]]]:
    by_task = _rows(tmp_path, cells)
    return judge(claim, by_task), by_task


# -- the claims ---------------------------------------------------------------------------------


def test_claims_name_registered_methods_tasks_and_comparators() -> None:
    """A typo in a claim would leave its row silently unmeasurable forever."""
    from benchmarks.tasks.base import tasks
    from methods.base import methods

    assert {c.method for c in CLAIMS} >= {
        "bbox",
        "bbt",
        "grips",
        "opro",
        "evoprompt-ga",
        "evoprompt-de",
        "proxy-tuning",
        "contrastive-decoding",
        "aligner",
        "cobb",
    }
    for claim in CLAIMS:
        assert claim.method in methods.names(), claim.method
        assert claim.source and claim.paper_setting and claim.claim, claim
        assert "methods_" in claim.source  # where in the research notes it is quoted
        if claim.comparator is None:
            assert claim.unmeasurable, claim  # says why no run can test it
        else:
            assert claim.comparator in methods.names() and claim.comparator != claim.method
        for task in claim.tasks or ():
            assert task in tasks.names(), task
        assert claim.size is None or 0 < claim.size < 1  # accuracy scale, not points
        assert claim.direction in (1, -1)
    # The sizes are the papers' figures.
    assert _claim("bbox", "zero-shot").size == pytest.approx(0.0677)
    assert _claim("grips", "zero-shot-likelihood").size == pytest.approx(0.043)
    assert _claim("evoprompt-de").size == pytest.approx((77.05 - 71.07) / 100)
    assert _claim("bbox", "zero-shot").tasks == ("gsm8k",)
    assert _claim("contrastive-decoding").tasks == ("gsm8k", "strategyqa")


# -- verdicts -----------------------------------------------------------------------------------


def test_reproduced_and_whether_the_claimed_size_is_reached(tmp_path: Path) -> None:
    """BBox-Adapter on gsm8k: +0.20 reaches the claimed +6.77 points; +0.06 (6 more right
    of 100, none lost) is significant but below it, and still reproduces the direction."""
    claim = _claim("bbox", "zero-shot")
    big, by_task = _judge(
        tmp_path / "a",
        claim,
        [_cell("zero-shot", "gsm8k", 0, _hits(50)), _cell("bbox", "gsm8k", 0, _hits(70))],
    )
    assert big.verdict == REPRODUCED
    assert big.gain == pytest.approx(0.20) and big.tasks == ("gsm8k",)
    assert big.ci is not None and 0 < big.ci[0] < 0.20 < big.ci[1]
    assert "reaches the claimed +6.77 points (+0.068)" in big.why
    assert big.here == "m (b) on gsm8k"  # this report's model and task, not the paper's
    # The interval is the table's: the same bootstrap, the same seed.
    row = next(r for r in by_task["gsm8k"] if r.method == "bbox")
    assert (big.gain, big.ci) == (pytest.approx(row.gain), row.gain_ci)
    small, _ = _judge(
        tmp_path / "b",
        claim,
        [_cell("zero-shot", "gsm8k", 0, _hits(50)), _cell("bbox", "gsm8k", 0, _hits(56))],
    )
    assert small.verdict == REPRODUCED and small.ci is not None and small.ci[0] > 0
    assert "+0.060 is below the claimed +6.77 points (+0.068)" in small.why


def test_not_reproduced_no_significant_gain_or_significantly_worse(tmp_path: Path) -> None:
    claim = _claim("opro")
    assert claim.comparator == "manual-best" and claim.tasks is None
    # Two more right of 100: the interval reaches zero.
    flat, _ = _judge(
        tmp_path / "a",
        claim,
        [_cell("manual-best", "t1", 0, _hits(50)), _cell("opro", "t1", 0, _hits(52))],
    )
    assert flat.verdict == NOT_REPRODUCED and flat.ci is not None
    assert flat.ci[0] <= 0 <= flat.ci[1]
    assert flat.why == "no significant gain: the 95% interval includes zero"
    worse, _ = _judge(
        tmp_path / "b",
        claim,
        [_cell("manual-best", "t1", 0, _hits(60)), _cell("opro", "t1", 0, _hits(30))],
    )
    assert worse.verdict == NOT_REPRODUCED and worse.ci is not None and worse.ci[1] < 0
    assert worse.why.startswith("significantly worse")


def test_a_claim_of_a_lower_figure_is_judged_on_its_own_side(tmp_path: Path) -> None:
    """direction -1: the same data that are 'significantly worse' for a claimed gain
    reproduce a claimed drop."""
    cells = [_cell("manual-best", "t1", 0, _hits(60)), _cell("opro", "t1", 0, _hits(30))]
    drop = replace(_claim("opro"), direction=-1, size=0.1, size_text="-10 points")
    verdict, _ = _judge(tmp_path, drop, cells)
    assert verdict.verdict == REPRODUCED
    assert "-0.300 reaches the claimed -10 points (-0.100)" in verdict.why


def test_a_general_claim_is_the_mean_over_tasks_and_names_what_it_left_out(
    tmp_path: Path,
) -> None:
    """GrIPS vs manual-best over t1 and t2 is the overall table's gain over manual-best; t3,
    with no manual-best row, and t4, where grips failed, are named, not counted."""
    cells = []
    for seed in (0, 1):
        cells += [_cell("zero-shot", task, seed, _hits(40)) for task in ("t1", "t2", "t3", "t4")]
        cells += [
            _cell("manual-best", "t1", seed, _hits(60)),
            _cell("manual-best", "t2", seed, _hits(50)),
            _cell("manual-best", "t4", seed, _hits(50)),
            _cell("grips", "t1", seed, _hits(80 + seed)),
            _cell("grips", "t2", seed, _hits(40)),
            _cell("grips", "t3", seed, _hits(90)),
            _cell("grips", "t4", seed, None, status="failed", reason="boom"),
        ]
    verdict, by_task = _judge(tmp_path, _claim("grips", "manual-best"), cells)
    assert verdict.tasks == ("t1", "t2")
    assert verdict.gain == pytest.approx(((0.805 - 0.60) + (0.40 - 0.50)) / 2)
    assert "t3: no finished manual-best row" in verdict.why
    assert "t4: grips: failed (2 of 2 seeds)" in verdict.why
    assert verdict.here == "m (b) on t1, t2"
    # The same two tasks in the overall table give the same figure and interval.
    two = {t: by_task[t] for t in ("t1", "t2")}
    grips = next(r for r in overall_rows(two).ranked if r.method == "grips")
    assert grips.manual_gain.value == pytest.approx(verdict.gain)
    assert grips.manual_gain.ci == pytest.approx(verdict.ci)


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("no task", "the claim is about gsm8k; this report has none"),
        ("no comparator", "gsm8k: no finished zero-shot row"),
        ("method not ok", "gsm8k: bbox: budget exhausted (1 of 1 seeds)"),
        ("method refused", "gsm8k: bbox: n/a (needs generate_n)"),
        ("flagged cell", "a cell is flagged: bbox on gsm8k, seed 0: one answer throughout"),
        ("flagged reference", "the reference is flagged: zero-shot on gsm8k, seed 0: unparsed"),
    ],
)
def test_not_measurable_here(tmp_path: Path, case: str, why: str) -> None:
    """Each reason a clear gain (+0.40) still gets no verdict, and the line says which."""
    zero = _cell("zero-shot", "gsm8k", 0, _hits(40))
    bbox = _cell("bbox", "gsm8k", 0, _hits(80))
    if case == "no task":
        zero, bbox = _cell("zero-shot", "t1", 0, _hits(40)), _cell("bbox", "t1", 0, _hits(80))
    elif case == "no comparator":
        zero = _cell("few-shot", "gsm8k", 0, _hits(40))
    elif case == "method not ok":
        bbox = _cell("bbox", "gsm8k", 0, None, status="budget_exhausted", reason="cap")
    elif case == "method refused":
        bbox = _cell("bbox", "gsm8k", 0, None, status="refused", reason="needs generate_n")
    elif case == "flagged cell":
        bbox[0].warnings = ["one answer throughout: the answer 'a' for 100 of 100"]
    else:
        zero[0].warnings = ["unparsed: no parseable answer for 96 of 100"]
    verdict, _ = _judge(tmp_path, _claim("bbox", "zero-shot"), [zero, bbox])
    assert verdict.verdict == NOT_MEASURABLE
    assert verdict.why.startswith(why), verdict.why
    assert verdict.ci is None


def test_not_measurable_without_predictions_or_a_baseline_the_suite_runs(tmp_path: Path) -> None:
    records = [
        _cell("zero-shot", "gsm8k", 0, _hits(40))[0],
        _cell("bbox", "gsm8k", 0, _hits(80))[0],
    ]
    verdict = judge(_claim("bbox", "zero-shot"), leaderboard_rows(records))  # no predictions
    assert verdict.verdict == NOT_MEASURABLE
    assert verdict.why == "no interval: no stored predictions on gsm8k"
    proxy, _ = _judge(
        tmp_path,
        _claim("proxy-tuning"),
        [_cell("zero-shot", "t1", 0, _hits(10)), _cell("proxy-tuning", "t1", 0, _hits(90))],
    )
    assert proxy.verdict == NOT_MEASURABLE and proxy.gain is None
    assert "directly tuned large model" in proxy.why


# -- rendering ----------------------------------------------------------------------------------


def _report_cells() -> Cells:
    cells = []
    for seed in (0, 1):
        cells += [
            _cell("zero-shot", "gsm8k", seed, _hits(20, 40)),
            _cell("bbox", "gsm8k", seed, _hits(35, 40)),
            _cell("manual-best", "gsm8k", seed, _hits(30, 40)),
            _cell("opro", "gsm8k", seed, _hits(30, 40)),
            _cell("cobb", "gsm8k", seed, None, status="failed", reason="boom"),
        ]
    return cells


def test_markdown_and_html_reproduction_sections(tmp_path: Path) -> None:
    files = write_report([_store(tmp_path / "run", _report_cells())], tmp_path / "reports")
    md = files.markdown.read_text(encoding="utf-8")
    # After the overall section, before the first task's.
    assert md.index("## Overall") < md.index("## Reproduction") < md.index("## gsm8k")
    section = md.split("## Reproduction\n", 1)[1].split("\n## ", 1)[0]
    table = [line for line in section.splitlines() if line.startswith("| ")]
    head, *rows = table
    assert head.startswith("| method | claim (source) | comparator | setting |")
    assert all(row.count(" | ") == head.count(" | ") for row in rows)
    by_method: dict[str, list[str]] = {}
    for row in rows:
        by_method.setdefault(row.split(" | ")[0][2:], []).append(row)
    # One row per claim of a method in the report; zero-shot and manual-best have none.
    assert sorted(by_method) == ["bbox", "cobb", "opro"]
    bbox_gain, bbox_cost = by_method["bbox"]
    assert "| higher: +0.375 [" in bbox_gain and "| reproduced |" in bbox_gain
    assert "here: m (b) on gsm8k" in bbox_gain and "paper: gpt-3.5-turbo on GSM8K" in bbox_gain
    assert "| n/a | not measurable here | the ratios are against supervised" in bbox_cost
    (opro,) = by_method["opro"]
    assert "| equal: +0.000 [+0.000, +0.000] over 1 task | not reproduced |" in opro
    (cobb,) = by_method["cobb"]
    assert "not measurable here | gsm8k: cobb: failed (2 of 2 seeds)" in cobb

    html = files.html.read_text(encoding="utf-8")
    assert '<section id="reproduction">' in html
    assert (
        html.index('id="overall"') < html.index('id="reproduction"') < html.index('id="task-gsm8k"')
    )
    table_html = re.search(
        r'<table class="sortable" id="reproduction-claims">.*?</table>', html, re.S
    )
    assert table_html is not None
    heads = table_html.group(0).count("<th ")
    trs = re.findall(r"<tr data-method=.*?</tr>", table_html.group(0))
    assert len(trs) == 4 and all(tr.count("<td") == heads == 7 for tr in trs)
    verdicts = [re.search(r'data-verdict="([^"]+)"', tr) for tr in trs]
    assert [m.group(1) for m in verdicts if m] == [
        "reproduced",
        "not measurable here",
        "not reproduced",
        "not measurable here",
    ]
    assert "Let&#x27;s think step by step." in html  # escaped, as every value


def test_no_reproduction_section_without_a_claimed_method(tmp_path: Path) -> None:
    cells = [_cell("zero-shot", "t1", 0, _hits(5, 10)), _cell("few-shot", "t1", 0, _hits(6, 10))]
    files = write_report([_store(tmp_path / "run", cells)], tmp_path / "reports")
    assert "Reproduction" not in files.markdown.read_text(encoding="utf-8")
    assert 'id="reproduction"' not in files.html.read_text(encoding="utf-8")
