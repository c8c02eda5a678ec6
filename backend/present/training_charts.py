"""Plotly figures of training runs: loss curves side by side, speed, routers over training, probe accuracy."""

from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import _layout


def _name(labels: Mapping[str, str], key: str) -> str:
    return labels.get(key, key)


def _look(
    key: str,
    colors: Mapping[str, str],
    labels: Mapping[str, str],
    dashes: Optional[Mapping[str, str]],
    groups: Optional[Mapping[str, str]],
) -> tuple[str, str, str, str]:
    """(colour, name, dash, legend group) of one run's traces."""
    return colors.get(key, "#444"), _name(labels, key), (dashes or {}).get(key, "solid"), (groups or {}).get(key, key)


def _runs(metrics: pd.DataFrame, labels: Mapping[str, str]):
    """(model key, its rows) in the order of ``labels`` (the run's order), models without a label last."""
    order = {k: i for i, k in enumerate(labels)}
    return sorted(metrics.groupby("model", sort=False), key=lambda kv: order.get(kv[0], len(order)))


def loss_curves(
    metrics: pd.DataFrame,
    colors: Mapping[str, str],
    labels: Mapping[str, str],
    log_y: bool = False,
    dashes: Optional[Mapping[str, str]] = None,
    groups: Optional[Mapping[str, str]] = None,
) -> go.Figure:
    """Training loss (moving average, raw faint) and validation loss against tokens seen, every model on the
    same axes; the two panels share their y axis. ``dashes``: a line dash per model (default solid); ``groups``: a
    legend entry per group of models (e.g. an ablation's cells) instead of one per model."""
    fig = make_subplots(
        rows=1,
        cols=2,
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=("training loss (moving average of 20 steps)", "validation loss (held-out)"),
    )
    shown: set = set()
    for key, g in _runs(metrics, labels):
        c, name, dash, group = _look(key, colors, labels, dashes, groups)
        legend = dict(name=group if groups else name, legendgroup=group)
        g = g.sort_values("step")
        t = g[g["train_loss"].notna()]
        if len(t):
            fig.add_scatter(
                x=t["tokens"],
                y=t["train_loss"],
                mode="lines",
                line=dict(color=c, width=1),
                opacity=0.25,
                showlegend=False,
                hoverinfo="skip",
                row=1,
                col=1,
                **legend,
            )
            fig.add_scatter(
                x=t["tokens"],
                y=t["train_smooth"],
                mode="lines",
                line=dict(color=c, width=2.2, dash=dash),
                showlegend=group not in shown,
                **legend,
                hovertemplate=f"{name}<br>%{{x:,}} tokens: %{{y:.3f}}<extra></extra>",
                row=1,
                col=1,
            )
            shown.add(group)
        v = g[g["val_loss"].notna()]
        if len(v):
            fig.add_scatter(
                x=v["tokens"],
                y=v["val_loss"],
                mode="lines+markers",
                line=dict(color=c, width=2, dash=dash),
                marker=dict(size=6),
                showlegend=group not in shown,
                **legend,
                hovertemplate=f"{name}<br>%{{x:,}} tokens: validation %{{y:.3f}}<extra></extra>",
                row=1,
                col=2,
            )
            shown.add(group)
    for col in (1, 2):
        fig.update_xaxes(title_text="tokens seen", row=1, col=col)
    fig.update_yaxes(title_text="cross-entropy (nats per token)", type="log" if log_y else "linear", row=1, col=1)
    fig.update_annotations(font_size=12)
    return _layout(
        fig,
        "Learning curves on equal footing",
        height=430,
        margin=dict(l=10, r=10, t=100, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.1, xanchor="right", x=1),
    )


#: the stability metrics of metrics.csv drawn live: (column, panel title, log scale)
STABILITY = (
    ("grad_norm", "gradient norm before clipping (every step)", True),
    ("max_attn_logit", "largest attention logit (sampled, max over layers)", False),
    ("log_z", "output log Z (sampled, mean over tokens)", False),
)


def has_stability(metrics: pd.DataFrame) -> bool:
    """Whether a run's metrics hold any stability metric (runs trained as stacks record them)."""
    return any(c in metrics and metrics[c].notna().any() for c, _, _ in STABILITY)


def stability_curves(
    metrics: pd.DataFrame,
    colors: Mapping[str, str],
    labels: Mapping[str, str],
    dashes: Optional[Mapping[str, str]] = None,
    groups: Optional[Mapping[str, str]] = None,
) -> go.Figure:
    """Gradient norm, largest attention logit and output log-partition against tokens seen, every run on the same
    axes (one panel each), styled as in :func:`loss_curves`."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t, _ in STABILITY], horizontal_spacing=0.06)
    shown = set()
    for key, g in _runs(metrics, labels):
        c, name, dash, group = _look(key, colors, labels, dashes, groups)
        g = g.sort_values("step")
        for col, (metric, _, _) in enumerate(STABILITY, start=1):
            if metric not in g:
                continue
            v = g[g[metric].notna()]
            if not len(v):
                continue
            fig.add_scatter(
                x=v["tokens"],
                y=v[metric],
                mode="lines" if metric == "grad_norm" else "lines+markers",
                line=dict(color=c, width=1.6, dash=dash),
                marker=dict(size=5),
                name=group if groups else name,
                legendgroup=group,
                showlegend=group not in shown,
                hovertemplate=f"{name}<br>%{{x:,}} tokens: %{{y:.3g}}<extra></extra>",
                row=1,
                col=col,
            )
            shown.add(group)
    for col, (_, _, log) in enumerate(STABILITY, start=1):
        fig.update_xaxes(title_text="tokens seen", row=1, col=col)
        if log:
            fig.update_yaxes(type="log", row=1, col=col)
    fig.update_annotations(font_size=11)
    return _layout(
        fig,
        "Stability while training",
        height=400,
        margin=dict(l=10, r=10, t=110, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.14, xanchor="right", x=1),
    )


def speed_bars(progress: pd.DataFrame, colors_by_label: Mapping[str, str]) -> go.Figure:
    """Tokens per second of each model's own training steps."""
    p = progress.dropna(subset=["tokens/s"])
    fig = go.Figure(
        go.Bar(
            x=p["model"],
            y=p["tokens/s"],
            marker_color=[colors_by_label.get(m, "#888") for m in p["model"]],
            hovertemplate="%{x}: %{y:,.0f} tokens/s<extra></extra>",
        )
    )
    return _layout(
        fig, "Training speed", height=340, showlegend=False, yaxis=dict(title="tokens / s"), xaxis=dict(title="")
    )


ROUTER_METRICS = (
    ("max_over_mean", "max / mean load (1 = balanced)"),
    ("entropy", "normalized entropy (1 = uniform)"),
    ("never_chosen", "experts never chosen (per layer)"),
    ("aux_loss", "balancing loss (aux-loss routers)"),
)


def router_curves(routing: pd.DataFrame, colors: Mapping[str, str], labels: Mapping[str, str]) -> go.Figure:
    """Expert load over training: each MoE model's worst layer (max over layers) of max/mean load and of
    never-chosen experts, its mean entropy over layers, and its balancing loss; a collapse shows as max/mean
    climbing and entropy falling."""
    fig = make_subplots(rows=1, cols=4, subplot_titles=[t for _, t in ROUTER_METRICS], horizontal_spacing=0.06)
    for key, g in routing.groupby("model", sort=False):
        c, name = colors.get(key, "#444"), _name(labels, key)
        agg = g.groupby("tokens").agg(
            max_over_mean=("max_over_mean", "max"),
            entropy=("entropy", "mean"),
            never_chosen=("never_chosen", "max"),
            aux_loss=("aux_loss", lambda s: pd.to_numeric(s, errors="coerce").mean()),
        )
        agg = agg.reset_index()
        for col, (metric, _title) in enumerate(ROUTER_METRICS, start=1):
            y = agg[metric]
            if metric == "aux_loss" and y.isna().all():
                continue
            fig.add_scatter(
                x=agg["tokens"],
                y=y,
                mode="lines",
                line=dict(color=c, width=2),
                name=name,
                legendgroup=key,
                showlegend=col == 1,
                hovertemplate=f"{name}<br>%{{x:,}} tokens: %{{y:.3f}}<extra></extra>",
                row=1,
                col=col,
            )
    for col in range(1, 5):
        fig.update_xaxes(title_text="tokens seen", row=1, col=col)
        fig.update_yaxes(rangemode="tozero", row=1, col=col)
    fig.update_annotations(font_size=11)
    return _layout(
        fig,
        "Routers while training (worst layer; entropy averaged over layers)",
        height=380,
        margin=dict(l=10, r=10, t=110, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.14, xanchor="right", x=1),
    )


def load_heatmap(layers: list[int], share: np.ndarray, title: str) -> go.Figure:
    """Share of each layer's selections each expert took in one snapshot (one row per MoE layer)."""
    n = share.shape[1]
    fig = go.Figure(
        go.Heatmap(
            z=share,
            x=list(range(n)),
            y=[f"layer {l}" for l in layers],
            colorscale="Viridis",
            colorbar=dict(title=dict(text="share", side="right"), thickness=14),
            hovertemplate="%{y}, expert %{x}: %{z:.1%} of selections<extra></extra>",
        )
    )
    fig.add_annotation(
        text=f"balanced: {1 / n:.1%} each",
        xref="paper",
        yref="paper",
        x=1,
        y=1.02,
        showarrow=False,
        xanchor="right",
        yanchor="bottom",
        font=dict(size=11, color="#555"),
    )
    return _layout(
        fig,
        title,
        height=max(240, 110 + 34 * len(layers)),
        margin=dict(l=10, r=10, t=70, b=10),
        xaxis=dict(title="expert", dtick=1 if n <= 32 else None),
        yaxis=dict(autorange="reversed"),
    )


def probe_heatmaps(grids: Mapping[str, pd.DataFrame], title: str) -> go.Figure:
    """Probe accuracy per (KV pairs, sequence length), one panel per model, one colour scale (0–1)."""
    names = list(grids)
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, horizontal_spacing=0.05, vertical_spacing=0.18)
    for n, name in enumerate(names):
        g = grids[name]
        fig.add_trace(
            go.Heatmap(
                z=g.values,
                x=[str(c) for c in g.columns],
                y=[str(int(i)) for i in g.index],
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=n == 0,
                text=np.round(g.values, 2),
                texttemplate="%{text}",
                colorbar=dict(title="accuracy", thickness=12),
                hovertemplate=f"{name}<br>%{{y}} KV pairs, length %{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=n // cols + 1,
            col=n % cols + 1,
        )
    fig.update_xaxes(title_text="sequence length", type="category")
    fig.update_yaxes(title_text="KV pairs", type="category")
    fig.update_annotations(font_size=11)
    return _layout(fig, title, height=160 + 230 * rows, margin=dict(l=10, r=10, t=90, b=10))


def distance_lines(
    probes: pd.DataFrame,
    colors: Mapping[str, str],
    labels: Mapping[str, str],
    windows: Optional[Mapping[str, int]] = None,
) -> go.Figure:
    """Recall accuracy against the distance from key to query; each model's window (if any) dotted."""
    fig = go.Figure()
    d = probes[probes["distance"].notna()]
    for key, g in d.groupby("model", sort=False):
        g = g.sort_values("distance")
        c, name = colors.get(key, "#444"), _name(labels, key)
        fig.add_scatter(
            x=g["distance"],
            y=g["accuracy"],
            mode="lines+markers",
            line=dict(color=c, width=2),
            name=name,
            hovertemplate=f"{name}<br>up to %{{x}} tokens back: %{{y:.3f}}<extra></extra>",
        )
        w = (windows or {}).get(key)
        if w:
            fig.add_vline(
                x=w,
                line_dash="dot",
                line_color=c,
                annotation_text=f"window {w}",
                annotation_font_color=c,
                annotation_position="top",
            )
    return _layout(
        fig,
        "Recall at a distance",
        height=380,
        yaxis=dict(title="accuracy", range=[0, 1.02]),
        xaxis=dict(title="tokens between the key and its query (bucket upper edge)", type="log"),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
    )


def leaderboard_chart(board: pd.DataFrame) -> go.Figure:
    """Validation loss of each architecture at equal budget: mean over seeds, with the seed range as error bars."""
    b = board.sort_values("validation loss (mean)", ascending=False)
    fig = go.Figure(
        go.Scatter(
            x=b["validation loss (mean)"],
            y=b["architecture"],
            mode="markers",
            marker=dict(size=10, color=["#b279a2" if e == e and e else "#4c78a8" for e in b["experts"]]),
            error_x=dict(
                type="data",
                symmetric=False,
                array=b["worst seed"] - b["validation loss (mean)"],
                arrayminus=b["validation loss (mean)"] - b["best seed"],
                thickness=1.5,
                width=4,
            ),
            customdata=b[["seeds", "perplexity"]].values,
            hovertemplate="%{y}: %{x:.3f} nats (perplexity %{customdata[1]:.1f}) over %{customdata[0]} seed(s)<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Held-out validation loss at equal budget (lower is better)",
        height=140 + 26 * len(b),
        margin=dict(l=10, r=10, t=70, b=10),
        showlegend=False,
        xaxis=dict(title="cross-entropy on the held-out split (nats per token); bars: best to worst seed"),
        yaxis=dict(title=""),
    )
