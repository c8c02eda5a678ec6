"""Plotly figures of a finished ablation (its ``summary.json``): loss against learning rate per cell with a band
over seeds, and the stability scores per cell and learning rate."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .ablation import shade
from .charts import _layout


def loss_vs_lr(summary: dict, colors: Mapping[str, str]) -> go.Figure:
    """Per cell: the final validation loss of every seed (dots), their mean (line) and 95 % interval (band) at each
    learning rate, the best learning rate starred; a learning rate where runs diverged or are missing is marked with
    a cross at the initial loss (the runs are counted there, not dropped)."""
    fig = go.Figure()
    init = summary.get("initial_loss")
    seen = []  # every loss drawn as a point: the y axis spans these (a wide band is cut at the edge)
    for cell in summary["cells"]:
        name, c = cell["name"], colors.get(cell["name"], "#444")
        lrs = [g["lr"] for g in cell["grid"]]
        mean = [g["interval"]["mean"] for g in cell["grid"]]
        low = [g["interval"]["low"] for g in cell["grid"]]
        high = [g["interval"]["high"] for g in cell["grid"]]
        band = [i for i, (lo, hi) in enumerate(zip(low, high)) if lo is not None and hi is not None]
        if band:
            xs = [lrs[i] for i in band]
            fig.add_scatter(
                x=xs + xs[::-1],
                y=[high[i] for i in band] + [low[i] for i in band][::-1],
                fill="toself",
                fillcolor=shade(c, 0.75),
                line=dict(width=0),
                opacity=0.6,
                hoverinfo="skip",
                legendgroup=name,
                showlegend=False,
            )
        y = [m if m is not None and np.isfinite(m) else None for m in mean]
        fig.add_scatter(
            x=lrs,
            y=y,
            mode="lines+markers",
            line=dict(color=c, width=2.4),
            marker=dict(size=8),
            name=name + (" (reference)" if cell["reference"] else ""),
            legendgroup=name,
            customdata=[[g["interval"]["n"], g["diverged"], g["missing"]] for g in cell["grid"]],
            hovertemplate=f"{name}<br>lr %{{x:g}}: mean %{{y:.4f}} over %{{customdata[0]}} seed(s)"
            "<br>diverged %{customdata[1]}, missing %{customdata[2]}<extra></extra>",
        )
        dots = [(g["lr"], x) for g in cell["grid"] for x in g["losses"] if x is not None]
        seen += [d[1] for d in dots] + [m for m in y if m is not None]
        if dots:
            fig.add_scatter(
                x=[d[0] for d in dots],
                y=[d[1] for d in dots],
                mode="markers",
                legendgroup=name,
                marker=dict(color=c, size=5, opacity=0.55, line=dict(width=0)),
                showlegend=False,
                hovertemplate=f"{name}<br>lr %{{x:g}}: one seed %{{y:.4f}}<extra></extra>",
            )
        bad = [g for g in cell["grid"] if g["diverged"] or g["missing"]]
        if bad and init is not None:
            seen.append(init)
            fig.add_scatter(
                x=[g["lr"] for g in bad],
                y=[init] * len(bad),
                mode="markers+text",
                legendgroup=name,
                marker=dict(symbol="x", color=c, size=11, line=dict(width=1)),
                showlegend=False,
                text=[f"{g['diverged']} diverged" + (f", {g['missing']} missing" if g["missing"] else "") for g in bad],
                textposition="top center",
                textfont=dict(size=10, color=c),
                hovertemplate=f"{name}<br>lr %{{x:g}}: %{{text}} (drawn at the initial loss)<extra></extra>",
            )
        if cell["best_lr"] is not None and cell["best"]:
            fig.add_scatter(
                x=[cell["best_lr"]],
                y=[cell["best"]["mean"]],
                mode="markers",
                legendgroup=name,
                marker=dict(symbol="star", color=c, size=16, line=dict(color="white", width=1)),
                showlegend=False,
                hovertemplate=f"{name}<br>best lr %{{x:g}}: %{{y:.4f}}<extra></extra>",
            )
    if init is not None:
        fig.add_hline(
            y=init,
            line_dash="dot",
            line_color="#999",
            annotation_text="loss at initialisation",
            annotation_position="bottom right",
            annotation_font_size=11,
        )
    n = len(summary.get("seeds", []))
    yaxis = dict(title="validation loss (nats per token); band: 95 % interval over seeds")
    if seen:
        lo, hi = min(seen), max(seen)
        pad = max(0.15 * (hi - lo), 0.02 * abs(hi), 1e-3)
        yaxis["range"] = [lo - pad, hi + pad]
    lrs = list(summary.get("lrs", []))
    fig.data = tuple(sorted(fig.data, key=lambda t: t.fill != "toself"))  # every band under every line and point
    return _layout(
        fig,
        f"Final validation loss against the learning rate ({n} seed{'s' if n != 1 else ''} each)",
        height=460,
        yaxis=yaxis,
        xaxis=dict(title="peak learning rate", type="log", tickvals=lrs, ticktext=[f"{x:g}" for x in lrs]),
    )


#: the per-cell, per-learning-rate stability scores of a summary: (grid field, panel title)
SCORES = (
    ("loss_spike_score", "loss spike score"),
    ("grad_spike_score", "gradient-norm spike score"),
    ("max_attn_logit", "largest attention logit"),
)


def score_heatmaps(summary: dict) -> go.Figure:
    """Loss and gradient spike scores (OLMo 2's: share of steps 7 σ off the rolling mean) and the largest attention
    logit, each a cells × learning rates grid (means over seeds; blank where not measured)."""
    cells = [c["name"] for c in summary["cells"]]
    lrs = list(summary["lrs"])
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in SCORES], horizontal_spacing=0.12)
    for col, (field, title) in enumerate(SCORES, start=1):
        z = [[next((g.get(field) for g in c["grid"] if g["lr"] == lr), None) for lr in lrs] for c in summary["cells"]]
        z = np.array([[np.nan if v is None else float(v) for v in row] for row in z])
        text = [["—" if np.isnan(v) else f"{v:.3g}" for v in row] for row in z]
        top = float(np.nanmax(z)) if np.isfinite(z).any() else 0.0
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[f"{lr:g}" for lr in lrs],
                y=cells,
                text=text,
                texttemplate="%{text}",
                colorscale="Reds",
                showscale=False,
                hoverongaps=False,
                zmin=0,
                zmax=top if top > 0 else 1.0,
                hovertemplate=f"%{{y}}, lr %{{x}}: {title} %{{z:.3g}}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="learning rate", type="category", row=1, col=col)
        fig.update_yaxes(showticklabels=col == 1, autorange="reversed", row=1, col=col)
    fig.update_annotations(font_size=11)
    return _layout(
        fig,
        "Stability per cell and learning rate (means over seeds)",
        height=160 + 40 * len(cells),
        margin=dict(l=10, r=10, t=90, b=10),
    )
