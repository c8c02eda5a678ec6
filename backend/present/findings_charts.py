"""Plotly figures of the Findings page: an ablation's loss against the learning rate with a re-run drawn beside the
shipped evidence, its stability scores, and a claim's static figures as bars."""

from __future__ import annotations

from typing import Sequence

import plotly.graph_objects as go

from . import ablation_charts as abc
from .charts import _layout
from .colors import PALETTE
from .findings import RERUN, Static, Trained

#: what a re-run's cells are called in a chart beside the shipped ones
RERUN_SUFFIX = " · re-run"


def _cell_name(origin: str, cell: str) -> str:
    return cell + (RERUN_SUFFIX if origin == RERUN else "")


def loss_vs_lr(runs: Sequence[Trained], ablation: str, title: str) -> go.Figure:
    """``ablation_charts.loss_vs_lr`` of every piece of evidence of one ablation in one figure: a cell keeps its colour
    in each, a re-run's lines are dashed and its cells named '· re-run'."""
    merged = {"cells": [], "lrs": [], "seeds": [], "initial_loss": None}
    colors, seeds = {}, []
    for t in runs:
        ev = t.evidence.get(ablation)
        if ev is None:
            continue
        s = ev.summary
        for i, cell in enumerate(s["cells"]):
            name = _cell_name(t.origin, cell["name"])
            merged["cells"].append({**cell, "name": name})
            colors[name] = PALETTE[i % len(PALETTE)]
        merged["lrs"] = sorted(set(merged["lrs"]) | set(s["lrs"]))
        merged["initial_loss"] = merged["initial_loss"] if merged["initial_loss"] is not None else s.get("initial_loss")
        seeds.append(f"{t.origin}: {len(s['seeds'])} seeds")
    fig = abc.loss_vs_lr(merged, colors)
    for tr in fig.data:
        if str(tr.legendgroup or "").endswith(RERUN_SUFFIX) and tr.mode and "lines" in tr.mode:
            tr.line.dash = "dash"
    fig.update_layout(title_text=f"{title} ({', '.join(seeds)})")
    return fig


def stability(t: Trained, ablation: str, title: str) -> go.Figure:
    """The spike scores and the largest attention logit per cell and learning rate of one piece of evidence."""
    fig = abc.score_heatmaps(t.evidence[ablation].summary)
    fig.update_layout(title_text=f"{title} per cell and learning rate, {t.label} (means over seeds)")
    return fig


def _scale(column: str, top: float) -> tuple[float, str]:
    """(divisor, unit) a column is drawn in: bytes in GiB or KiB, parameters in billions."""
    if "bytes" in column:
        return (2**30, "GiB") if top >= 2**30 else (2**10, "KiB")
    if "parameters" in column:
        return 1e9, "billions"
    return 1.0, ""


def static_bars(s: Static) -> go.Figure:
    """The claim's exact figures as bars, one per value of the axis (the exact number on hover and in the table)."""
    axis = s.table.columns[0]
    div, unit = _scale(s.chart[0], max(float(s.table[c].max()) for c in s.chart))
    fig = go.Figure()
    for i, col in enumerate(s.chart):
        y = s.table[col]
        fig.add_bar(
            x=s.table[axis].astype(str),
            y=y / div,
            name=col,
            marker_color=PALETTE[i % len(PALETTE)],
            customdata=y,
            text=[f"{v / div:,.3g} {'B' if unit == 'billions' else unit}" for v in y],
            textposition="outside",
            hovertemplate=f"%{{x}}<br>{col}: %{{customdata:,}}<extra></extra>",
        )
    label = s.chart[0] if len(s.chart) == 1 else "parameters"
    return _layout(
        fig,
        s.title,
        height=380,
        barmode="group",
        showlegend=len(s.chart) > 1,
        yaxis=dict(title=f"{label.split(' (')[0]} ({unit})"),
        xaxis=dict(title=axis, type="category"),
    )
