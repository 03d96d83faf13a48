"""The reproduction table: each method's paper's headline claim beside what the report measured.

A `Claim` is data: the claim in one line with its source (the paper, and the section of
``shared/research/methods_*.md`` that quotes it), the method of this suite that plays the
paper's baseline (the comparator), the tasks the claim is about (None: the claim is about the
method in general, so every task of the report may test it), the claimed size where the paper
gives one, and its direction. `judge` turns a claim and the report's per-task rows into a
`Verdict`, a pure function of the rows:

- The tasks tested are the claim's tasks that the report has (all its tasks for a general
  claim) on which both the method's and the comparator's rows finished; the others are named
  in the verdict's line.
- "not measurable here" when no task is left (the task is missing, the comparator is, or the
  method's row is not ok), when a counted cell of the method or of the comparator carries a
  warning (unparseable or one answer: the gain would measure that failure, and leaving the
  task out would pick the tasks where the method works), when a gain has no interval (no
  stored predictions), or when the claim needs a baseline this suite does not run.
- Otherwise the gain is the method's accuracy minus the comparator's, the mean over the tested
  tasks, with the report's paired bootstrap (the same replicates, seeded by task, averaged over
  tasks as the overall table does) and its 95% interval. "reproduced" when the interval lies
  entirely on the claimed side of zero; where a size is claimed, the line says whether the
  measured gain reaches it, but a smaller gain still reproduces the direction. "not
  reproduced" when the interval includes zero ("no significant gain") or lies on the other
  side ("significantly worse").

Every row states the paper's setting (model, tasks) beside this report's (the models of the
method's counted cells, and the tasks), since a leaderboard on other models and tasks tests
the claim's direction, not its number.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Literal

import numpy as np

from benchmarks.report import (
    NO_PREDICTIONS,
    REFERENCE,
    Report,
    Row,
    gain_replicates,
    interval,
    is_finished,
)

VerdictText = Literal["reproduced", "not reproduced", "not measurable here"]
REPRODUCED: VerdictText = "reproduced"
NOT_REPRODUCED: VerdictText = "not reproduced"
NOT_MEASURABLE: VerdictText = "not measurable here"


@dataclass(frozen=True)
class Claim:
    """A paper's headline claim about a method, as this suite can test it."""

    method: str
    """Registry name of the method the claim is about."""
    claim: str
    """The claim in one line, in the paper's terms."""
    source: str
    """The paper, and the section of the research notes that quotes the claim."""
    paper_setting: str
    """The paper's model(s) and tasks."""
    comparator: str | None
    """The method of this suite that plays the paper's baseline; None: none does."""
    paper_baseline: str = ""
    """The paper's baseline in its own terms (what ``comparator`` stands for)."""
    tasks: tuple[str, ...] | None = None
    """The tasks of this suite the claim is about; None: any task (a general claim)."""
    size: float | None = None
    """The claimed size of the difference, in accuracy (0-1 scale, as the report's; a magnitude,
    its sign is ``direction``), where the paper gives one."""
    size_text: str = ""
    """The claimed size in the paper's words."""
    direction: int = 1
    """+1: the method is claimed higher than the comparator; -1: lower."""
    unmeasurable: str = ""
    """Why no run of this suite can test the claim (``comparator`` None)."""


#: The claims, in the order of the table. Sizes are the papers' points / 100.
CLAIMS: tuple[Claim, ...] = (
    Claim(
        method="bbox",
        claim="BBox-Adapter (Combined) lifts GSM8K accuracy over the base model by +6.77 "
        "(67.51 -> 74.28)",
        source="Sun et al., ICML 2024, Table 2; methods_a.md §1.4",
        paper_setting="gpt-3.5-turbo on GSM8K",
        comparator=REFERENCE,
        paper_baseline="the untuned gpt-3.5-turbo",
        tasks=("gsm8k",),
        size=0.0677,
        size_text="+6.77 points",
    ),
    Claim(
        method="bbox",
        claim="BBox-Adapter's training and inference cost 31.30x and 1.84x less in dollars "
        "than Azure SFT's",
        source="Sun et al., ICML 2024, Table 4; methods_a.md §1.4",
        paper_setting="gpt-3.5-turbo on StrategyQA and GSM8K",
        comparator=None,
        paper_baseline="Azure supervised fine-tuning, SFT",
        unmeasurable="the ratios are against supervised fine-tuning of the black box, which "
        "this suite does not run (the cost-ratio tables compare methods it does run)",
    ),
    Claim(
        method="bbt",
        claim="BBT outperforms the manual prompt",
        source="Sun et al., ICML 2022, abstract; setting: methods_a.md §2.3",
        paper_setting="RoBERTa-large on SST-2, Yelp, AG News, DBPedia, MRPC, SNLI, RTE, "
        "16 shots per class",
        comparator="zero-shot-likelihood",
        paper_baseline="the hand-written prompt read by its verbalizer, untuned",
    ),
    Claim(
        method="bbt",
        claim="BBT outperforms GPT-3-style in-context learning",
        source="Sun et al., ICML 2022, abstract; setting: methods_a.md §2.3",
        paper_setting="RoBERTa-large on SST-2, Yelp, AG News, DBPedia, MRPC, SNLI, RTE, "
        "16 shots per class",
        comparator="few-shot",
        paper_baseline="in-context learning with the 16-shot training examples; few-shot "
        "here uses its configured k",
    ),
    Claim(
        method="grips",
        claim="GrIPS improves average accuracy over the original instructions by up to +4.30",
        source="Prasad et al., EACL 2023, abstract; methods_a.md §3.4",
        paper_setting="InstructGPT (also OPT, BLOOM, FLAN-T5) on 8 Natural-Instructions "
        "classification tasks",
        comparator="zero-shot-likelihood",
        paper_baseline="the task's original instruction, labels read by likelihood as GrIPS "
        "reads them",
        size=0.043,
        size_text="up to +4.30 points",
    ),
    Claim(
        method="grips",
        claim="GrIPS beats manual rewriting of the instructions",
        source="Prasad et al., EACL 2023, abstract; methods_a.md §3.4",
        paper_setting="InstructGPT on 8 Natural-Instructions classification tasks",
        comparator="manual-best",
        paper_baseline="instructions rewritten by hand",
    ),
    Claim(
        method="opro",
        claim="OPRO's instructions beat human-written prompts, by up to 8 points on GSM8K",
        source="Yang et al., ICLR 2024, abstract; methods_b.md §1.5",
        paper_setting="PaLM 2-L scorer on GSM8K and BBH",
        comparator="manual-best",
        paper_baseline='human-written prompts such as "Let\'s think step by step."',
        size=0.08,
        size_text="up to +8 points (GSM8K)",
    ),
    Claim(
        method="evoprompt-ga",
        claim="EvoPrompt (GA) beats the manual instructions: average 71.07 -> 76.25",
        source="Guo et al., ICLR 2024, Alpaca-7B classification table; methods_a.md §4.4",
        paper_setting="Alpaca-7B on SST-2, CR, MR, SST-5, AG News, TREC, Subj",
        comparator="manual-best",
        paper_baseline="the manual instructions",
        size=0.0518,
        size_text="+5.18 points (average)",
    ),
    Claim(
        method="evoprompt-de",
        claim="EvoPrompt (DE) beats the manual instructions: average 71.07 -> 77.05",
        source="Guo et al., ICLR 2024, Alpaca-7B classification table; methods_a.md §4.4",
        paper_setting="Alpaca-7B on SST-2, CR, MR, SST-5, AG News, TREC, Subj",
        comparator="manual-best",
        paper_baseline="the manual instructions",
        size=0.0598,
        size_text="+5.98 points (average)",
    ),
    Claim(
        method="proxy-tuning",
        claim="Proxy-tuning closes 91% (13B) / 88% (70B) of the gap between the base model "
        "and its directly tuned (chat) version",
        source="Liu et al., COLM 2024; methods_b.md §2.4",
        paper_setting="Llama2-13B/70B base, Llama-2-7b-chat expert, on AlpacaFarm, GSM, "
        "ToxiGen, TruthfulQA",
        comparator=None,
        paper_baseline="the base model and the directly tuned large model",
        unmeasurable="the share of the gap closed needs the directly tuned large model's "
        "score, which this suite does not run (the gain over zero-shot, the base, is in the "
        "tables above)",
    ),
    Claim(
        method="contrastive-decoding",
        claim="Contrastive decoding improves reasoning over greedy decoding of the same model",
        source="O'Brien & Lewis 2023, arXiv 2309.09117; methods_b.md §3b",
        paper_setting="LLaMA-1 7B-65B experts with a 1.5B amateur, on GSM8K, HellaSwag and "
        "other reasoning sets",
        comparator=REFERENCE,
        paper_baseline="greedy decoding of the expert alone",
        tasks=("gsm8k", "strategyqa"),
    ),
    Claim(
        method="aligner",
        claim="Aligner's corrections improve the raw model's answers (+68.9% helpfulness, "
        "+22.8% harmlessness on average)",
        source="Ji et al., NeurIPS 2024; methods_b.md §4.3",
        paper_setting="11 upstream LLMs, GPT-4-judged win rates on 3H dialogue sets",
        comparator=REFERENCE,
        paper_baseline="the upstream model's answer, uncorrected; its gains are win rates, "
        "not accuracy, so no size is compared",
    ),
    Claim(
        method="cobb",
        claim="CoBB's corrections improve raw gpt-3.5-turbo by +6.2 points on average",
        source="Kim, Kim & Yang, EMNLP 2024, abstract; methods_b.md §5.3",
        paper_setting="gpt-3.5-turbo on QA reasoning (GSM8K, StrategyQA, TruthfulQA, ScienceQA)",
        comparator=REFERENCE,
        paper_baseline="the raw gpt-3.5-turbo answer",
        tasks=("gsm8k", "strategyqa", "truthfulqa", "scienceqa"),
        size=0.062,
        size_text="+6.2 points (average)",
    ),
)


@dataclass(frozen=True)
class Verdict:
    """A claim judged against the report's rows."""

    claim: Claim
    verdict: VerdictText
    why: str
    """One line: why this verdict (and which tasks were left out)."""
    here: str
    """This report's setting for the claim: models and tasks counted."""
    gain: float | None = None
    """Mean over ``tasks`` of the method's accuracy minus the comparator's."""
    ci: tuple[float, float] | None = None
    tasks: tuple[str, ...] = ()
    """The tasks the gain is over."""


def judge(claim: Claim, by_task: Mapping[str, Sequence[Row]]) -> Verdict:
    """The verdict on ``claim`` from the report's rows per task (`leaderboard_rows`)."""
    if claim.comparator is None:
        return Verdict(claim, NOT_MEASURABLE, claim.unmeasurable, "none measured")
    ref_name = claim.comparator
    scope = sorted(by_task) if claim.tasks is None else [t for t in claim.tasks if t in by_task]
    if not scope:
        wanted = ", ".join(claim.tasks or ())
        return Verdict(
            claim,
            NOT_MEASURABLE,
            f"the claim is about {wanted}; this report has none",
            "none measured",
        )
    pairs: list[tuple[str, Row, Row]] = []
    skipped: dict[str, list[str]] = {}  # why -> tasks, so a reason shared by tasks reads once
    for task in scope:
        rows = {r.method: r for r in by_task[task]}
        mine, ref = rows.get(claim.method), rows.get(ref_name)
        if mine is None:
            skipped.setdefault(f"{claim.method} did not run it", []).append(task)
        elif not mine.ok:
            skipped.setdefault(f"{claim.method}: {mine.status}", []).append(task)
        elif ref is None or not ref.ok:
            skipped.setdefault(f"no finished {ref_name} row", []).append(task)
        else:
            pairs.append((task, mine, ref))
    reasons = "; ".join(f"{', '.join(where)}: {why}" for why, where in skipped.items())
    left_out = f" (not counted: {reasons})" if skipped else ""
    if not pairs:
        return Verdict(claim, NOT_MEASURABLE, reasons, "none measured")
    tasks = tuple(t for t, _, _ in pairs)
    here = _setting(pairs)
    for task, mine, ref in pairs:
        for who, row in (("a cell is flagged", mine), ("the reference is flagged", ref)):
            if row.warnings:
                why = f"{who}: {row.method} on {task}, {row.warnings[0]}"
                return Verdict(claim, NOT_MEASURABLE, why, here, tasks=tasks)
    value = statistics.fmean(
        float(m.accuracy or 0.0) - float(r.accuracy or 0.0) for _, m, r in pairs
    )
    replicates = []
    for task, mine, ref in pairs:
        drawn, note = gain_replicates(mine.cells, ref.cells, task)
        if drawn is None:
            why = (
                f"no interval: {note} on {task}"
                if note == NO_PREDICTIONS
                else f"no interval on {task}: {note}"
            )
            return Verdict(claim, NOT_MEASURABLE, why, here, value, tasks=tasks)
        replicates.append(drawn)
    low, high = interval(np.mean(replicates, axis=0))
    side = claim.direction
    if side * low > 0 and side * high > 0:
        why = "the 95% interval is entirely on the claimed side of zero" + _size_note(claim, value)
        return Verdict(claim, REPRODUCED, why + left_out, here, value, (low, high), tasks)
    if side * low < 0 and side * high < 0:
        why = "significantly worse: the 95% interval is entirely on the other side of zero"
    else:
        why = "no significant gain: the 95% interval includes zero"
    return Verdict(claim, NOT_REPRODUCED, why + left_out, here, value, (low, high), tasks)


def _size_note(claim: Claim, value: float) -> str:
    """Whether the measured gain reaches the claimed size (not required to reproduce)."""
    if claim.size is None:
        return ""
    reach = "reaches" if claim.direction * value >= claim.size else "is below"
    claimed = claim.direction * claim.size
    return f"; {value:+.3f} {reach} the claimed {claim.size_text} ({claimed:+.3f})"


def _setting(pairs: Sequence[tuple[str, Row, Row]]) -> str:
    """The models of the method's counted cells, and the tasks: ``zoo-large (zoo) on t1, t2``."""
    models = sorted(
        {
            f"{c.record.model} ({c.record.backend})"
            for _, mine, _ in pairs
            for c in mine.cells
            if is_finished(c.record)
        }
    )
    return f"{', '.join(models)} on {', '.join(t for t, _, _ in pairs)}"


def verdicts(report: Report) -> list[Verdict]:
    """One verdict per claim whose method the report holds, in `CLAIMS` order."""
    by_task = {s.name: s.rows for s in report.sections if not s.overall}
    present = {r.method for rows in by_task.values() for r in rows}
    return [judge(claim, by_task) for claim in CLAIMS if claim.method in present]


def format_measured(verdict: Verdict) -> str:
    """``higher: +0.050 [+0.010, +0.090] over 2 tasks``; n/a when nothing was measured."""
    if verdict.gain is None:
        return "n/a"
    word = "higher" if verdict.gain > 0 else "lower" if verdict.gain < 0 else "equal"
    ci = "" if verdict.ci is None else f" [{verdict.ci[0]:+.3f}, {verdict.ci[1]:+.3f}]"
    n = len(verdict.tasks)
    return f"{word}: {verdict.gain:+.3f}{ci} over {n} task{'s' * (n != 1)}"


def format_claim(claim: Claim) -> str:
    """The claim with its source and claimed direction."""
    return f"{claim.claim} ({claim.source})"


def format_comparator(claim: Claim) -> str:
    """The comparator and the paper's baseline it stands for."""
    name = claim.comparator or "none in this suite"
    return f"{name} (paper: {claim.paper_baseline})" if claim.paper_baseline else name


def format_setting(verdict: Verdict) -> str:
    """The paper's setting, then this report's."""
    return f"paper: {verdict.claim.paper_setting}; here: {verdict.here}"


#: under the Reproduction heading, Markdown and HTML alike.
NOTE = (
    "Each method's paper's headline claim beside what this report measured, generated from the "
    "rows above: the gain over the comparator (the method of this suite that plays the paper's "
    "baseline), the mean over the tasks counted, with its paired bootstrap 95% interval. "
    "`reproduced`: the interval is entirely on the claimed side of zero (a claimed size is "
    "compared, not required); `not reproduced`: it includes zero or is on the other side; "
    "`not measurable here`: the claim's task, the comparator or a finished row is missing, a "
    "counted cell is flagged, or the claim needs a baseline this suite does not run. The "
    "setting column gives the paper's models and tasks and this report's: on other models and "
    "tasks a verdict tests the claim's direction, not the paper's number."
)

_HEAD = (
    "method",
    "claim (source)",
    "comparator",
    "setting",
    "measured (gain, 95% CI)",
    "verdict",
    "why",
)


def _cells(verdict: Verdict) -> list[str]:
    claim = verdict.claim
    return [
        claim.method,
        format_claim(claim),
        format_comparator(claim),
        format_setting(verdict),
        format_measured(verdict),
        verdict.verdict,
        verdict.why,
    ]


def reproduction_markdown(report: Report) -> list[str]:
    """The Reproduction section's Markdown lines (empty when no method has a claim)."""
    rows = verdicts(report)
    if not rows:
        return []
    lines = ["", "## Reproduction", "", NOTE, ""]
    lines += ["| " + " | ".join(_HEAD) + " |", "|---" * len(_HEAD) + "|"]
    for verdict in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(verdict)) + " |")
    return lines


def reproduction_html(report: Report) -> list[str]:
    """The Reproduction section of ``index.html`` (empty when no method has a claim): a
    sortable table, ``#reproduction-claims``, one ``tr[data-method]`` per claim."""
    rows = verdicts(report)
    if not rows:
        return []
    heads = "".join(
        f'<th data-type="{"number" if head.startswith("measured") else "text"}" scope="col">'
        f"{escape(head)}</th>"
        for head in _HEAD
    )
    out = [
        '<section id="reproduction">',
        "<h2>Reproduction</h2>",
        f'<p class="note">{_code(escape(NOTE))}</p>',
        '<table class="sortable" id="reproduction-claims">',
        f"<thead><tr>{heads}</tr></thead>",
        "<tbody>",
    ]
    for verdict in rows:
        cells = []
        for i, text in enumerate(_cells(verdict)):
            sort = ""
            if _HEAD[i].startswith("measured"):
                sort = f' data-sort="{"" if verdict.gain is None else verdict.gain}"'
            cells.append(f"<td{sort}>{escape(text)}</td>")
        out.append(
            f'<tr data-method="{escape(verdict.claim.method)}" '
            f'data-verdict="{escape(verdict.verdict)}">{"".join(cells)}</tr>'
        )
    out += ["</tbody>", "</table>", "</section>"]
    return out


def _code(text: str) -> str:
    """Markdown's `code` spans as <code> (in already escaped text)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
