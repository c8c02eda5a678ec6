"""Plotly charts of what trained routers learned (tables from :mod:`backend.present.specialisation`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .charts import BALANCE_METRICS, _layout
from .specialisation import TRAINED, UNTRAINED

WEIGHT_STYLE = {TRAINED: dict(color="#4c78a8", pattern=""), UNTRAINED: dict(color="#bab0ac", pattern="/")}
WEIGHT_NAMES = {TRAINED: "trained", UNTRAINED: "untrained (its initial weights)"}


def _hover(part: pd.DataFrame) -> list[str]:
    return [
        f"MI {r['MI (bits)']:.3f} bits, chance {r['chance MI (bits)']:.3f}, above chance "
        f"{r['MI above chance (bits)']:.3f}<br>expert entropy {r['expert entropy (bits)']:.3f} bits"
        for _, r in part.iterrows()
    ]


def specialisation_by_layer(table: pd.DataFrame, title: str) -> go.Figure:
    """One model: per MoE layer, the specialisation (MI above chance ÷ log2 E), trained beside untrained."""
    fig = go.Figure()
    for which in (TRAINED, UNTRAINED):
        part = table[table["weights"] == which]
        style = WEIGHT_STYLE[which]
        fig.add_bar(
            x=[f"layer {n}" for n in part["layer"]],
            y=part["specialisation"],
            name=WEIGHT_NAMES[which],
            marker_color=style["color"],
            marker_pattern_shape=style["pattern"],
            marker_line_color="#333",
            customdata=_hover(part),
            hovertemplate="%{x}: %{y:.3f}<br>%{customdata}<extra></extra>",
        )
    return _layout(
        fig,
        title,
        barmode="group",
        height=380,
        margin=dict(l=10, r=10, t=90, b=10),
        xaxis=dict(title="MoE layer"),
        yaxis=dict(title="I(token; expert) above chance ÷ log2 E", rangemode="tozero"),
    )


def specialisation_overview(summary: pd.DataFrame, title: str) -> go.Figure:
    """Every zoo MoE model: mean specialisation over its MoE layers, trained beside untrained."""
    fig = go.Figure()
    for which, col in ((TRAINED, "specialisation, trained"), (UNTRAINED, "specialisation, untrained")):
        style = WEIGHT_STYLE[which]
        fig.add_bar(
            y=summary["model"],
            x=summary[col],
            name=WEIGHT_NAMES[which],
            orientation="h",
            marker_color=style["color"],
            marker_pattern_shape=style["pattern"],
            marker_line_color="#333",
            hovertemplate="%{y}<br>" + WEIGHT_NAMES[which] + ": %{x:.3f}<extra></extra>",
        )
    return _layout(
        fig,
        title,
        barmode="group",
        height=max(260, 150 + 56 * len(summary)),
        margin=dict(l=10, r=10, t=90, b=10),
        yaxis=dict(title="", autorange="reversed"),
        xaxis=dict(title="mean over MoE layers of I(token; expert) above chance ÷ log2 E", rangemode="tozero"),
    )


def expert_given_token(shares: dict[str, tuple[np.ndarray, list[str]]], layer: int, title: str) -> go.Figure:
    """Side by side, trained and untrained: for the most frequent tokens (rows), the share of each one's
    occurrences whose first choice was each expert (columns). A specialised router has one dark cell a row."""
    from plotly.subplots import make_subplots

    names = [WEIGHT_NAMES[w] for w in (TRAINED, UNTRAINED)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=names, horizontal_spacing=0.08, shared_yaxes=True)
    for col, which in enumerate((TRAINED, UNTRAINED), start=1):
        p, tokens = shares[which]
        rows = [f"{i + 1}. {t}" for i, t in enumerate(tokens)]
        fig.add_heatmap(
            z=p,
            x=list(range(p.shape[1])),
            y=rows,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            showscale=col == 2,
            colorbar=dict(title=dict(text="share", side="right"), thickness=14),
            hovertemplate="%{y} → expert %{x}: %{z:.0%} of its occurrences<extra></extra>",
            xgap=1,
            ygap=1,
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=f"first-choice expert (layer {layer})", row=1, col=col)
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10), row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_annotations(font_size=12)
    n = len(shares[TRAINED][1])
    return _layout(fig, title, height=max(360, 140 + 18 * n), margin=dict(l=10, r=10, t=90, b=10), showlegend=False)


def balance_by_router(table: pd.DataFrame, title: str) -> go.Figure:
    """CV, max/mean and normalised entropy of expert load, one point per model and MoE layer, grouped by how
    the routers were balanced in training; trained beside untrained."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in BALANCE_METRICS], horizontal_spacing=0.07)
    for which in (TRAINED, UNTRAINED):
        part = table[table["weights"] == which]
        style = WEIGHT_STYLE[which]
        hover = [f"{r['model']}, layer {r['layer']}" for _, r in part.iterrows()]
        for col, (metric, label) in enumerate(BALANCE_METRICS, start=1):
            fig.add_box(
                x=part["router"],
                y=part[metric],
                name=WEIGHT_NAMES[which],
                legendgroup=which,
                showlegend=col == 1,
                boxpoints="all",
                jitter=0.4,
                pointpos=0,
                marker_color=style["color"],
                line_color=style["color"],
                customdata=hover,
                hovertemplate="%{customdata}<br>" + label + ": %{y:.3f}<extra></extra>",
                row=1,
                col=col,
            )
    for col, (_, label) in enumerate(BALANCE_METRICS, start=1):
        fig.update_yaxes(title_text=label, rangemode="tozero", row=1, col=col)
    fig.update_annotations(font_size=12)
    return _layout(
        fig,
        title,
        boxmode="group",
        height=440,
        margin=dict(l=10, r=10, t=110, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.12, xanchor="right", x=1),
    )
