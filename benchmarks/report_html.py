"""The report as static HTML: ``index.html`` and one page per cell, self-contained.

Tables sort when a header is clicked (a few lines of inline JavaScript: numbers by value,
text alphabetically, n/a always last, ties in the original order); the plots are the SVG
files beside the page; every seed of a row links to its cell's page, which lists the cell's
disclosures, links its tuner's trace (copied beside the page) and lists the predictions the
run stored, each with the prompt sent. Nothing is loaded from the network when a page is
viewed, and every value from the results is HTML-escaped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from html import escape
from typing import Any

from benchmarks.metering import request_seconds, total_tokens
from benchmarks.report import (
    APART_NOTE,
    DISCLOSURE_MARKS,
    FLAGGED_REFERENCE_NOTE,
    FLAVOUR,
    NOTES,
    OTHER_MARK,
    WARNING_MARK,
    Report,
    ReportCell,
    Row,
    Section,
    answer_shares,
    cell_warnings,
    compute_seconds,
    disclosure_legend,
    format_accuracy,
    format_answers,
    format_compute,
    format_gain,
    format_manual_gain,
    format_unparsed,
    legend_cells,
    ranking_note,
    slug,
)
from benchmarks.reproduction import reproduction_html
from methods.base import DISCLOSURE_KINDS

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.55em; text-align: left;
         vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.sortable th { cursor: pointer; background: #f2f2f2; user-select: none; }
th[aria-sort=ascending]::after { content: " \\25B2"; }
th[aria-sort=descending]::after { content: " \\25BC"; }
td.na { color: #777; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; }
figure img { max-width: 640px; width: 100%; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; }
pre.output { white-space: pre-wrap; margin: 0; font-size: 12px; max-width: 60em; }
p.note { color: #444; max-width: 70em; }
ul.disclosures { max-width: 90em; font-size: 13px; }
pre.prompt { white-space: pre-wrap; margin: 0; font-size: 11px; max-width: 50em; color: #444; }
"""

#: click a header to sort its table; values come from data-sort when present.
_SORT_JS = """
(() => {
  const key = (cell) =>
    cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  for (const table of document.querySelectorAll("table.sortable")) {
    const heads = Array.from(table.tHead.rows[0].cells);
    Array.from(table.tBodies[0].rows).forEach((row, i) => { row.dataset.order = i; });
    heads.forEach((th, col) => {
      const sort = () => {
        const dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
        heads.forEach((h) => h.removeAttribute("aria-sort"));
        th.setAttribute("aria-sort", dir);
        const sign = dir === "ascending" ? 1 : -1;
        const numeric = th.dataset.type === "number";
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((a, b) => {
          const x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === "" || y === "") return (x === "") - (y === "");  // n/a last either way
          const c = numeric ? Number(x) - Number(y) : x.localeCompare(y);
          return sign * c || a.dataset.order - b.dataset.order;
        });
        body.append(...rows);
      };
      th.tabIndex = 0;
      th.addEventListener("click", sort);
      th.addEventListener("keydown", (e) => { if (e.key === "Enter") sort(); });
    });
  }
})();
"""


def _page(title: str, body: list[str]) -> str:
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<link rel="icon" href="data:,">',  # no favicon request
            f"<title>{escape(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            *body,
            f"<script>{_SORT_JS}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )


def _td(
    text: str, sort: float | str | None = None, *, num: bool = False, html: bool = False
) -> str:
    """A cell; ``sort`` is its sort key ("" sorts last: n/a)."""
    attrs = []
    if num:
        attrs.append('class="num"')
    if sort is not None:
        attrs.append(f'data-sort="{escape(str(sort))}"')
    inner = text if html else escape(text)
    return f"<td{' ' if attrs else ''}{' '.join(attrs)}>{inner}</td>"


def _th(label: str, kind: str = "number") -> str:
    return f'<th data-type="{kind}" scope="col">{escape(label)}</th>'


def _num(value: float | None, fmt: str) -> str:
    return _td(
        "n/a" if value is None else format(value, fmt), "" if value is None else value, num=True
    )


def _money(value: float | None) -> str:
    return _td(
        "n/a" if value is None else f"${value:.4f}", "" if value is None else value, num=True
    )


def _seed_links(row: Row) -> str:
    links = []
    for cell in row.cells:
        label = f"s{cell.record.seed}"
        if cell.run_id and len({c.run_id for c in row.cells}) > 1:
            label += f" ({cell.run_id})"
        if cell.record.status != "ok":
            label += f" ({cell.record.status})"
        links.append(f'<a href="cells/{escape(cell.key)}.html">{escape(label)}</a>')
    return " ".join(links)


def _leaderboard(
    section: Section, report: Report, rows: Sequence[Row] | None = None, table_id: str = ""
) -> list[str]:
    heads = [_th("method", "text"), _th("needs", "text")]
    if section.overall:
        heads.append(_th("tasks"))
    heads += [
        _th("accuracy (mean ± std)"),
        _th("gain vs zero-shot [95% CI]"),
        _th("gain vs manual-best [95% CI]"),
    ]
    if not section.overall:
        heads.append(_th("seeds"))
    sums = " (sum)" if section.overall else ""
    heads += [
        _th("tune tokens" + sums),
        _th("tune $" + sums),
        _th("eval tokens / 1k ex"),
        _th("eval $ / 1k ex"),
        _th("compute s" + sums),
        _th("unparsed" + (" (mean)" if section.overall else "")),
    ]
    if not section.overall:
        heads.append(_th("top answers"))  # sorts by the top answer's share
    out = [
        f'<table class="sortable" id="{escape(table_id or "leaderboard-" + section.anchor)}">',
        f"<thead><tr>{''.join(heads)}</tr></thead>",
        "<tbody>",
    ]
    anchors = {s.name: s.anchor for s in report.sections if not s.overall}
    for row in section.rows if rows is None else rows:
        cells = [_td(row.method), _td(row.needs)]
        if section.overall:
            tasks = sorted({c.record.task for c in row.cells})
            links = " ".join(f'<a href="#{escape(anchors[t])}">{escape(t)}</a>' for t in tasks)
            count = row.tasks.partition(":")[0]  # the names are the links
            cells.append(
                _td(f"{escape(count)} <small>{links}</small>", len(row.covered), html=True)
            )
        if not row.ok:
            cells.append(f'<td class="na" data-sort="">{escape(row.status)}</td>')
            cells += [_td("", "")] * 2  # the two gains
            if not section.overall:
                cells.append(_td(_seed_links(row), "", html=True))
            cells += [_td("", "")] * (6 if section.overall else 7)
        else:
            cells.append(_td(format_accuracy(row), row.accuracy, num=True))
            cells.append(_td(format_gain(row), "" if row.gain is None else row.gain, num=True))
            manual = row.manual_gain.value
            cells.append(_td(format_manual_gain(row), "" if manual is None else manual, num=True))
            if not section.overall:
                seeds = f"{row.seeds}" + (f" (+{row.stopped})" if row.stopped else "")
                cells.append(_td(f"{escape(seeds)}: {_seed_links(row)}", row.seeds, html=True))
            cells += [
                _num(row.tune_tokens, ",.0f"),
                _money(row.tune_usd),
                _num(row.eval_tokens_per_1k, ",.0f"),
                _money(row.eval_usd_per_1k),
                _td(format_compute(row), row.compute_s, num=True),
                _td(format_unparsed(row), "" if row.unparsed is None else row.unparsed, num=True),
            ]
            if not section.overall:
                top = row.answers[0][1] if row.answers else (None if row.unparsed is None else 0)
                cells.append(_td(format_answers(row), "" if top is None else top))
        out.append(f'<tr data-method="{escape(row.method)}">{"".join(cells)}</tr>')
    out += ["</tbody>", "</table>"]
    return out


def _mark(kind: str) -> str:
    """A kind's mark, its meaning as the tooltip (escaped HTML)."""
    meaning = DISCLOSURE_KINDS.get(kind, "a later kind")
    return (
        f'<abbr title="{escape(meaning)}">{escape(DISCLOSURE_MARKS.get(kind, OTHER_MARK))}</abbr>'
    )


def _disclosure_legend(section: Section) -> list[str]:
    """The marks of the table above, each entry linking its cells' pages."""
    legend = disclosure_legend(section)
    if not legend:
        return []

    def link(page: str, text: str) -> str:
        return f'<a href="cells/{escape(page)}.html">{escape(text)}</a>'

    out = ["<p>Disclosures (marks beside the accuracy):</p>", '<ul class="disclosures">']
    for line in legend:
        where = legend_cells(line, overall=section.overall, link=link)
        out.append(
            f"<li>{_mark(line.kind)} {escape(line.kind)}, <code>{escape(line.method)}</code> "
            f"{where}: {escape(line.detail)}</li>"
        )
    out.append("</ul>")
    return out


def _ratios(section: Section, report: Report) -> list[str]:
    if not section.ratios:
        return [f"<p>{_code(escape(section.ratios_note))}</p>"] if section.ratios_note else []
    ref = escape(report.cost_reference)
    out = [
        f"<p>Cost relative to <code>{ref}</code> (method ÷ {ref}; dollars when both are "
        "priced, tokens otherwise):</p>",
        f'<table class="sortable" id="ratios-{escape(section.anchor)}">',
        "<thead><tr>"
        + _th("method", "text")
        + _th(f"tuning cost ÷ {report.cost_reference}")
        + _th(f"inference cost ÷ {report.cost_reference}")
        + "</tr></thead>",
        "<tbody>",
    ]
    for r in section.ratios:
        out.append(
            f'<tr data-method="{escape(r.method)}">'
            + _td(r.method)
            + _td(r.tune_text, "" if r.tune is None else r.tune, num=True)
            + _td(r.eval_text, "" if r.eval is None else r.eval, num=True)
            + "</tr>"
        )
    out += ["</tbody>", "</table>"]
    return out


def _plots(section: Section, report: Report) -> list[str]:
    if not section.plots:
        if section.overall and len(report.sections) == 2:
            return ["<p>One task: its plots are below.</p>"]
        return ["<p>No finished cells to plot.</p>"]
    out = ['<div class="plots">']
    for plot in section.plots:
        stem = escape(plot.stem)
        out.append(
            f'<figure><img src="{stem}.svg" alt="{escape(plot.title)}" loading="eager">'
            f'<figcaption>{escape(plot.title)} (<a href="{stem}.png">PNG</a>)</figcaption>'
            "</figure>"
        )
    out.append("</div>")
    return out


def render_index(report: Report) -> str:
    """``index.html``: every section's leaderboard, cost ratios and plots."""
    body = [f"<h1>{escape(report.title)}</h1>"]
    body += [f'<p class="note">{_code(escape(note))}</p>' for note in NOTES]
    nav = " · ".join(
        f'<a href="#{escape(s.anchor)}">{escape("Overall" if s.overall else s.name)}</a>'
        for s in report.sections
    )
    body.append(f"<nav>{nav}</nav>")
    for section in report.sections:
        heading = "Overall" if section.overall else section.name
        body += [f'<section id="{escape(section.anchor)}">', f"<h2>{escape(heading)}</h2>"]
        if section.overall:
            n_tasks = len(report.sections) - 1
            body.append(f'<p class="note">{_code(escape(ranking_note(section, n_tasks)))}</p>')
        body += _leaderboard(section, report)
        if section.apart:
            body.append(f'<p class="note">{_code(escape(APART_NOTE))}</p>')
            body += _leaderboard(section, report, section.apart, "apart-" + section.anchor)
        body += _warnings(section)
        body += _disclosure_legend(section)
        body += _ratios(section, report)
        body += _plots(section, report)
        body.append("</section>")
        if section.overall:
            body += reproduction_html(report)
    return _page(report.title, body)


def _warnings(section: Section) -> list[str]:
    """The warnings the table's marks stand for."""
    rows = [*section.rows, *section.apart]
    items = [
        f"<li>{WARNING_MARK} <code>{escape(row.method)}</code> {escape(w)}</li>"
        for row in rows
        for w in row.warnings
    ]
    if any(row.flagged_reference for row in rows):
        items.append(f"<li>{_code(escape(FLAGGED_REFERENCE_NOTE))}</li>")
    if not items:
        return []
    return [f'<p class="note">{WARNING_MARK} Warnings:</p>', "<ul>", *items, "</ul>"]


def _code(text: str) -> str:
    """Markdown's `code` spans as <code> (in already escaped text)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_cell_page(cell: ReportCell, report: Report) -> str:
    """``cells/<key>.html``: the cell's record and its stored predictions."""
    r = cell.record
    seconds, device = compute_seconds(r)
    facts: list[tuple[str, str]] = [
        ("run", cell.run_id),
        ("method", r.method),
        ("task", r.task),
        ("backend", r.backend),
        ("model", r.model),
        ("seed", str(r.seed)),
        ("budget", r.budget),
        ("status", r.status),
        ("reason", r.reason or ""),
        ("accuracy", "n/a" if r.accuracy is None else f"{r.accuracy:.4f}"),
        ("examples evaluated", str(r.n_eval)),
        *_answer_facts(cell),
        ("variant", r.variant or ""),
        ("tuning tokens (cold start)", f"{total_tokens(r.usage, FLAVOUR, 'tune'):,}"),
        ("inference tokens (cold start)", f"{total_tokens(r.usage, FLAVOUR, 'eval'):,}"),
        ("compute s", f"{seconds:.2f} ({device})"),
        *_request_facts(r.usage),
        ("artifacts saved", "" if r.artifact_bytes is None else f"{r.artifact_bytes:,} bytes"),
    ]
    back = f"../index.html#task-{slug(r.task)}"
    body = [
        f"<h1>{escape(r.cell_id)}</h1>",
        f'<p><a href="{escape(back)}">Back to the leaderboard</a></p>',
        '<table class="facts"><tbody>',
        *(f'<tr><th scope="row">{escape(k)}</th><td>{escape(v)}</td></tr>' for k, v in facts if v),
        "</tbody></table>",
        "<details><summary>hyperparameters</summary><pre>"
        + escape(json.dumps(r.hyperparameters, indent=2, sort_keys=True, ensure_ascii=False))
        + "</pre></details>",
    ]
    body += _cell_disclosures(cell)
    body += _predictions(cell.predictions, r.status)
    return _page(f"{r.cell_id} ({report.title})", body)


def _cell_disclosures(cell: ReportCell) -> list[str]:
    """The cell's disclosures (kind, mark, detail) and a link to its tuner's trace."""
    out = []
    if cell.record.disclosures:
        out += ["<h2>Disclosures</h2>", '<ul class="disclosures">']
        out += [
            f"<li>{_mark(d.kind)} {escape(d.kind)}: {escape(d.detail)}</li>"
            for d in cell.record.disclosures
        ]
        out.append("</ul>")
    if cell.trace is not None:
        out.append(
            f'<p>Tuner trace (every event it sent while tuning): <a href="'
            f'{escape(cell.key)}.trace.json">{escape(cell.key)}.trace.json</a></p>'
        )
    return out


def _answer_facts(cell: ReportCell) -> list[tuple[str, str]]:
    """The cell's parse failures, answer distribution and warnings."""
    unparsed, answers = answer_shares(cell.predictions)
    if unparsed is None:
        return [("warnings", "; ".join(cell.record.warnings))]
    row = Row(cell.record.method, "", "ok", unparsed=unparsed, answers=answers)
    return [
        ("unparsed answers", format_unparsed(row)),
        ("top answers", format_answers(row)),
        ("warnings", "; ".join(f"{WARNING_MARK} {w}" for w in cell_warnings(cell))),
    ]


def _request_facts(usage: dict[str, Any]) -> list[tuple[str, str]]:
    """Time on the black box: wall seconds with a request in flight, and the requests'
    latencies summed (larger when requests ran concurrently)."""
    wall, summed = request_seconds(usage)
    if summed is None:
        return []
    return [
        ("requests in flight, wall s", "n/a (not recorded)" if wall is None else f"{wall:.2f}"),
        ("request latencies summed, s", f"{summed:.2f}"),
    ]


def _prompt(prediction: dict[str, Any]) -> str:
    """The prompt sent for a prediction, folded (predictions stored before it was kept have
    none)."""
    if not isinstance(prediction.get("prompt"), str):
        return ""
    return (
        "<details><summary>prompt sent</summary>"
        f'<pre class="prompt">{escape(prediction["prompt"])}</pre></details>'
    )


def _predictions(predictions: Sequence[dict[str, Any]], status: str) -> list[str]:
    if not predictions:
        return [f"<p>No predictions stored for this cell (status: {escape(status)}).</p>"]
    out = [
        f"<h2>Predictions ({len(predictions)})</h2>",
        '<table class="sortable" id="predictions">',
        "<thead><tr>"
        + _th("#")
        + _th("id", "text")
        + _th("score")
        + _th("answer", "text")
        + _th("target", "text")
        + _th("output", "text")
        + "</tr></thead>",
        "<tbody>",
    ]
    for i, p in enumerate(predictions, 1):
        score = p.get("score")
        numeric = isinstance(score, (int, float))
        out.append(
            "<tr>"
            + _td(str(i), i, num=True)
            + _td(_text(p.get("id")))
            + _td(_text(score), score if numeric else "", num=True)
            + _td(_text(p.get("answer")))
            + _td(_text(p.get("target")))
            + _td(
                f'<pre class="output">{escape(_text(p.get("output")))}</pre>' + _prompt(p),
                html=True,
            )
            + "</tr>"
        )
    out += ["</tbody>", "</table>"]
    return out
