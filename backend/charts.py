"""Plotly charts of the tables in :mod:`backend.tables` (pages only place them)."""
from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from .colors import COMPONENT_COLORS

_BASE = dict(template="plotly_white", margin=dict(l=10, r=10, t=95, b=10), hovermode="closest",
             legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0))
_POW2 = [1 << k for k in range(8, 27, 2)]
LOG_DECADES = dict(type="log", dtick=1)


def _tokens(n: int) -> str:
    return f"{n >> 20}M" if n >= 1 << 20 else (f"{n >> 10}k" if n >= 1024 else str(n))


def _layout(fig: go.Figure, title: str, **kw) -> go.Figure:
    fig.update_layout(title=dict(text=title, y=0.98, yanchor="top", x=0.01), **{**_BASE, **kw})
    return fig


def components_bar(long: pd.DataFrame, share: bool = False) -> go.Figure:
    """Stacked bars: parameters (billions, or % of each model's total) split by component."""
    fig = go.Figure()
    order = {c: i for i, c in enumerate(COMPONENT_COLORS)}
    for comp, part in sorted(long.groupby("component", sort=False), key=lambda kv: order.get(kv[0], 99)):
        fig.add_bar(x=part["model"], y=part["params"] / 1e9, name=part["component_label"].iloc[0],
                    marker_color=COMPONENT_COLORS.get(comp, "#bab0ac"),
                    customdata=part["params"], hovertemplate="%{x}<br>" + part["component_label"].iloc[0]
                    + ": %{customdata:,} params<extra></extra>")
    return _layout(fig, "Parameters by component", barmode="stack", barnorm="percent" if share else None,
                   height=440, yaxis=dict(title="share of parameters (%)" if share else "parameters (billions)"),
                   xaxis=dict(title="model"))


def active_bar(params: pd.DataFrame, colors: Mapping[str, str]) -> go.Figure:
    """Total vs active parameters per model (billions)."""
    fig = go.Figure()
    models = list(params.index)
    for col, pattern in (("Total", ""), ("Active per token", "/")):
        fig.add_bar(x=models, y=params[col] / 1e9, name=col, marker_pattern_shape=pattern,
                    marker_color=[colors.get(m, "#888") for m in models], marker_line_color="#333",
                    customdata=params[col], hovertemplate="%{x}<br>" + col + ": %{customdata:,}<extra></extra>")
    return _layout(fig, "Total vs active parameters", barmode="group", height=380,
                   yaxis=dict(title="parameters (billions, log)", **LOG_DECADES), xaxis=dict(title="model"))


def weights_bar(weights: pd.DataFrame, colors: Mapping[str, str]) -> go.Figure:
    """Grouped bars: weight memory (GiB) per dtype, one colour per model."""
    fig = go.Figure()
    dtypes = [c.replace(" (GiB)", "") for c in weights.columns]
    for model, row in weights.iterrows():
        fig.add_bar(x=dtypes, y=row.values, name=str(model), marker_color=colors.get(model, "#888"),
                    hovertemplate=f"{model}<br>%{{x}}: %{{y:,.2f}} GiB<extra></extra>")
    return _layout(fig, "Weight memory by data type", barmode="group", height=400,
                   yaxis=dict(title="weights (GiB, log)", **LOG_DECADES), xaxis=dict(title="data type of the weights"))


def kv_curve_chart(curve: pd.DataFrame, colors: Mapping[str, str], log_x: bool = True,
                   log_y: bool = True, marker_context: int | None = None) -> go.Figure:
    """KV-cache GiB against context length, one line per model."""
    fig = go.Figure()
    for model, part in curve.groupby("model", sort=False):
        fig.add_scatter(x=part["context"], y=part["kv_gib"], name=str(model), mode="lines+markers",
                        line=dict(color=colors.get(model, "#888"), width=2.5), marker=dict(size=5),
                        hovertemplate=f"{model}<br>%{{x:,}} tokens: %{{y:,.3f}} GiB<extra></extra>")
    if marker_context:  # vline annotations misplace on log axes: annotate by hand
        fig.add_vline(x=marker_context, line_dash="dot", line_color="#777")
        fig.add_annotation(x=math.log10(marker_context) if log_x else marker_context, y=0, yref="paper",
                           text=f"chosen: {marker_context:,} tokens", showarrow=False, xanchor="left",
                           yanchor="bottom", font=dict(color="#555", size=11))
    xaxis = dict(title="context length (tokens)")
    if log_x:
        xaxis.update(type="log", tickvals=_POW2, ticktext=[_tokens(v) for v in _POW2])
    return _layout(fig, "KV cache vs context length", height=450, xaxis=xaxis,
                   yaxis=dict(title="KV cache (GiB)", **(LOG_DECADES if log_y else {})))


def device_bar(devices: pd.DataFrame, gpu_gib: float, colors: Mapping[str, str]) -> go.Figure:
    """Weights placed on each device (GiB) per model, with the GPU capacity as a line."""
    fig = go.Figure()
    for model, part in devices.groupby("model", sort=False):
        fig.add_bar(x=part["device"], y=part["weights_gib"], name=str(model), marker_color=colors.get(model, "#888"),
                    customdata=part["layers"],
                    hovertemplate=f"{model}<br>%{{x}}: %{{y:,.2f}} GiB, %{{customdata}} layers<extra></extra>")
    fig.add_hline(y=gpu_gib, line_dash="dash", line_color="#c0392b",
                  annotation_text=f"GPU capacity {gpu_gib:g} GiB", annotation_position="top left")
    order = sorted(devices["device"].unique(), key=lambda d: (not d.startswith("GPU"), len(d), d))
    return _layout(fig, "Weights per device", barmode="group", height=400,
                   yaxis=dict(title="weights placed (GiB)"),
                   xaxis=dict(title="device", categoryorder="array", categoryarray=order))
