"""The report's plots: accuracy against cost, and gain over zero-shot, as PNG and SVG.

Drawn with matplotlib's Agg canvas directly (no pyplot, so no global backend or figure state
is touched) and saved reproducibly: a fixed SVG hash salt and no date or software stamp, so
the same results give byte-identical files.

- `cost_figure`: accuracy against a cost (tuning or inference tokens or dollars, compute
  seconds), one point per method, the Pareto front (no other method is both cheaper and at
  least as accurate) drawn as a step line with its points ringed;
- `gain_figure`: gain over zero-shot per method, with its confidence interval as error bars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

#: no creation date or matplotlib version in the files.
_METADATA = {"svg": {"Date": None, "Creator": None}, "png": {"Software": None}}


@dataclass(frozen=True)
class Point:
    """One method on a cost plot."""

    label: str
    cost: float
    accuracy: float


@dataclass(frozen=True)
class Bar:
    """One method on a gain plot; ``low``/``high`` bound its interval (None: no interval)."""

    label: str
    gain: float
    low: float | None = None
    high: float | None = None


def pareto_front(points: Sequence[Point]) -> list[int]:
    """Indices of the points no other point dominates (cost as low, accuracy as high, one of
    them strictly better), ordered by cost."""
    front = []
    for i, p in enumerate(points):
        dominated = any(
            q.cost <= p.cost
            and q.accuracy >= p.accuracy
            and (q.cost, q.accuracy) != (p.cost, p.accuracy)
            for q in points
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i].cost, -points[i].accuracy, points[i].label))


def cost_figure(points: Sequence[Point], *, xlabel: str, title: str) -> Figure:
    """Accuracy against ``xlabel`` (symmetric-log axis: zero costs stay on the plot)."""
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    front = pareto_front(points)
    on_front = set(front)
    ax.scatter(
        [p.cost for p in points],
        [p.accuracy for p in points],
        s=28,
        color="#4477aa",
        zorder=3,
        label="method",
    )
    if front:
        xs, ys = [points[i].cost for i in front], [points[i].accuracy for i in front]
        ax.step(xs, ys, where="post", color="#cc6677", linewidth=1.2, zorder=2)
        ax.scatter(
            xs,
            ys,
            s=110,
            facecolors="none",
            edgecolors="#cc6677",
            linewidths=1.5,
            zorder=4,
            label="Pareto front",
        )
    for i, p in enumerate(points):
        ax.annotate(
            p.label,
            (p.cost, p.accuracy),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
            fontweight="bold" if i in on_front else "normal",
        )
    positive = [p.cost for p in points if p.cost > 0]
    if positive and len(positive) == len(points):
        ax.set_xscale("log")  # costs spread over orders of magnitude
        ax.margins(x=0.12)
    elif positive:
        # Linear up to the smallest positive cost, logarithmic beyond: methods that spend
        # nothing (zero-shot's tuning) sit at 0.
        # One decade below the smallest cost, so 0 and the first decade tick stay apart.
        linthresh = 10 ** math.floor(math.log10(min(positive))) / 10
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.margins(x=0.08)
        ax.set_xlim(left=-0.1 * linthresh)  # no negative decades: costs are never < 0
    else:  # nobody spent anything
        ax.set_xlim(-1, 1)
        ax.set_xticks([0])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return fig


def gain_figure(bars: Sequence[Bar], *, title: str) -> Figure:
    """Horizontal bars of gain over zero-shot, with the interval as error bars where known."""
    fig = Figure(figsize=(6.4, 0.9 + 0.32 * max(len(bars), 1)), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(bars)))
    ax.barh(
        ys,
        [b.gain for b in bars],
        color=["#228833" if b.gain >= 0 else "#ee6677" for b in bars],
        height=0.6,
    )
    with_ci = [(y, b) for y, b in zip(ys, bars, strict=True) if b.low is not None]
    if with_ci:
        ax.errorbar(
            [b.gain for _, b in with_ci],
            [y for y, _ in with_ci],
            xerr=[
                [b.gain - (b.low or 0.0) for _, b in with_ci],
                [(b.high or 0.0) - b.gain for _, b in with_ci],
            ],
            fmt="none",
            ecolor="black",
            elinewidth=1,
            capsize=3,
        )
    ax.set_yticks(ys, [b.label + ("" if b.low is not None else " (no CI)") for b in bars])
    ax.invert_yaxis()  # first method on top
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("accuracy gain over zero-shot (95% CI)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def save_figure(fig: Figure, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg`` (reproducibly) and return their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # Agg renders the PNG and sizes text for the SVG
    paths = []
    # A fixed salt and root id: SVG element ids come out the same on every run.
    with matplotlib.rc_context(
        {"svg.hashsalt": "blackbox-bench", "svg.id": "figure", "svg.fonttype": "path"}
    ):
        for fmt in ("png", "svg"):
            path = stem.parent / f"{stem.name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=110, metadata=_METADATA[fmt])
            paths.append(path)
    return paths
