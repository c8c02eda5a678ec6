"""Plotly charts of the tables in :mod:`backend.tables` (pages only place them)."""

from __future__ import annotations

import math
from typing import Mapping

import pandas as pd
import plotly.graph_objects as go

from .colors import COMPONENT_COLORS

_BASE = dict(
    template="plotly_white",
    margin=dict(l=10, r=10, t=95, b=10),
    hovermode="closest",
    legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0),
)
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
        fig.add_bar(
            x=part["model"],
            y=part["params"] / 1e9,
            name=part["component_label"].iloc[0],
            marker_color=COMPONENT_COLORS.get(comp, "#bab0ac"),
            customdata=part["params"],
            hovertemplate="%{x}<br>" + part["component_label"].iloc[0] + ": %{customdata:,} params<extra></extra>",
        )
    return _layout(
        fig,
        "Parameters by component",
        barmode="stack",
        barnorm="percent" if share else None,
        height=440,
        yaxis=dict(title="share of parameters (%)" if share else "parameters (billions)"),
        xaxis=dict(title="model"),
    )


def active_bar(params: pd.DataFrame, colors: Mapping[str, str]) -> go.Figure:
    """Total vs active parameters per model (billions)."""
    fig = go.Figure()
    models = list(params.index)
    for col, pattern in (("Total", ""), ("Active per token", "/")):
        fig.add_bar(
            x=models,
            y=params[col] / 1e9,
            name=col,
            marker_pattern_shape=pattern,
            marker_color=[colors.get(m, "#888") for m in models],
            marker_line_color="#333",
            customdata=params[col],
            hovertemplate="%{x}<br>" + col + ": %{customdata:,}<extra></extra>",
        )
    return _layout(
        fig,
        "Total vs active parameters",
        barmode="group",
        height=380,
        yaxis=dict(title="parameters (billions, log)", **LOG_DECADES),
        xaxis=dict(title="model"),
    )


def weights_bar(weights: pd.DataFrame, colors: Mapping[str, str]) -> go.Figure:
    """Grouped bars: weight memory (GiB) per dtype, one colour per model."""
    fig = go.Figure()
    dtypes = [c.replace(" (GiB)", "") for c in weights.columns]
    for model, row in weights.iterrows():
        fig.add_bar(
            x=dtypes,
            y=row.values,
            name=str(model),
            marker_color=colors.get(model, "#888"),
            hovertemplate=f"{model}<br>%{{x}}: %{{y:,.2f}} GiB<extra></extra>",
        )
    return _layout(
        fig,
        "Weight memory by data type",
        barmode="group",
        height=400,
        yaxis=dict(title="weights (GiB, log)", **LOG_DECADES),
        xaxis=dict(title="data type of the weights"),
    )


def kv_curve_chart(
    curve: pd.DataFrame,
    colors: Mapping[str, str],
    log_x: bool = True,
    log_y: bool = True,
    marker_context: int | None = None,
) -> go.Figure:
    """KV-cache GiB against context length, one line per model."""
    fig = go.Figure()
    for model, part in curve.groupby("model", sort=False):
        fig.add_scatter(
            x=part["context"],
            y=part["kv_gib"],
            name=str(model),
            mode="lines+markers",
            line=dict(color=colors.get(model, "#888"), width=2.5),
            marker=dict(size=5),
            hovertemplate=f"{model}<br>%{{x:,}} tokens: %{{y:,.3f}} GiB<extra></extra>",
        )
    if marker_context:  # vline annotations misplace on log axes: annotate by hand
        fig.add_vline(x=marker_context, line_dash="dot", line_color="#777")
        fig.add_annotation(
            x=math.log10(marker_context) if log_x else marker_context,
            y=0,
            yref="paper",
            text=f"chosen: {marker_context:,} tokens",
            showarrow=False,
            xanchor="left",
            yanchor="bottom",
            font=dict(color="#555", size=11),
        )
    xaxis = dict(title="context length (tokens)")
    if log_x:
        xaxis.update(type="log", tickvals=_POW2, ticktext=[_tokens(v) for v in _POW2])
    return _layout(
        fig,
        "KV cache vs context length",
        height=450,
        xaxis=xaxis,
        yaxis=dict(title="KV cache (GiB)", **(LOG_DECADES if log_y else {})),
    )


def device_bar(devices: pd.DataFrame, gpu_gib: float, colors: Mapping[str, str]) -> go.Figure:
    """Weights placed on each device (GiB) per model, with the GPU capacity as a line."""
    fig = go.Figure()
    for model, part in devices.groupby("model", sort=False):
        fig.add_bar(
            x=part["device"],
            y=part["weights_gib"],
            name=str(model),
            marker_color=colors.get(model, "#888"),
            customdata=part["layers"],
            hovertemplate=f"{model}<br>%{{x}}: %{{y:,.2f}} GiB, %{{customdata}} layers<extra></extra>",
        )
    fig.add_hline(
        y=gpu_gib,
        line_dash="dash",
        line_color="#c0392b",
        annotation_text=f"GPU capacity {gpu_gib:g} GiB",
        annotation_position="top left",
    )
    order = sorted(devices["device"].unique(), key=lambda d: (not d.startswith("GPU"), len(d), d))
    return _layout(
        fig,
        "Weights per device",
        barmode="group",
        height=400,
        yaxis=dict(title="weights placed (GiB)"),
        xaxis=dict(title="device", categoryorder="array", categoryarray=order),
    )


# ----------------------------------------------------------------- routing (Routing page)


def expert_colors(n: int) -> list[str]:
    """One colour per expert: qualitative up to 26 experts, a cyclic scale beyond."""
    from plotly.colors import qualitative, sample_colorscale

    if n <= len(qualitative.D3):
        return list(qualitative.D3[:n])
    if n <= len(qualitative.Alphabet):
        return list(qualitative.Alphabet[:n])
    return sample_colorscale("Phase", [i / n for i in range(n)])


def _expert_scale(n: int) -> list:
    """A stepped colorscale for z = expert index in [-0.5, n - 0.5]."""
    scale = []
    for i, c in enumerate(expert_colors(n)):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def _expert_colorbar(n: int, title: str = "top-1 expert") -> dict:
    bar = dict(title=dict(text=title, side="right"), thickness=14)
    if n <= 32:
        bar.update(tickvals=list(range(n)), ticktext=[str(i) for i in range(n)])
    return bar


def _token_ticks(labels: list[str], first: int, most: int = 64) -> dict:
    every = max(1, -(-len(labels) // most))
    vals = list(range(0, len(labels), every))
    return dict(
        tickmode="array",
        tickvals=[first + v for v in vals],
        ticktext=[labels[v] for v in vals],
        tickangle=-60,
        tickfont=dict(size=10),
    )


def _cells(experts: pd.DataFrame, layers: list[int], positions: int, first: int = 0):
    """z [layer, position - first] = top-1 expert; hover text listing every chosen expert with its weight."""
    import numpy as np

    z = np.full((len(layers), positions), np.nan)
    hover = [[""] * positions for _ in layers]
    row = {layer: r for r, layer in enumerate(layers)}
    for (layer, pos), part in experts.sort_values("rank").groupby(["layer", "position"], sort=False):
        pos -= first
        if layer not in row or not 0 <= pos < positions:
            continue
        z[row[layer], pos] = part["expert"].iloc[0]
        hover[row[layer]][pos] = "<br>".join(
            f"expert {e}: weight {w:.3f}" for e, w in zip(part["expert"], part["weight"])
        )
    return z, hover


def routing_heatmap(
    experts: pd.DataFrame,
    tokens: list[str],
    layers: list[int],
    num_experts: int,
    prompt_tokens: int,
    title: str,
    first: int = 0,
) -> go.Figure:
    """Tokens (x, with their text; ``tokens[0]`` is position ``first``) × MoE layers (y), coloured by the
    top-1 expert; hover lists all k chosen experts and their weights."""
    n = len(tokens)
    z, hover = _cells(experts, layers, n, first)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(first, first + n)),
            y=[f"layer {layer}" for layer in layers],
            customdata=hover,
            text=[tokens for _ in layers],
            zmin=-0.5,
            zmax=num_experts - 0.5,
            colorscale=_expert_scale(num_experts),
            xgap=1,
            ygap=1,
            colorbar=_expert_colorbar(num_experts),
            hovertemplate="position %{x}: %{text}<br>%{y}<br>%{customdata}<extra></extra>",
        )
    )
    if first < prompt_tokens < first + n:
        fig.add_vline(x=prompt_tokens - 0.5, line_color="#333", line_width=2, line_dash="dot")
        fig.add_annotation(
            x=prompt_tokens - 0.5,
            y=1,
            yref="paper",
            yanchor="bottom",
            xanchor="left",
            text=" generated →",
            showarrow=False,
            font=dict(size=11, color="#333"),
        )
    height = max(300, 170 + 34 * len(layers))
    return _layout(
        fig,
        title,
        height=height,
        margin=dict(l=10, r=10, t=60, b=10),
        showlegend=False,
        xaxis=dict(title="token (position in prompt + generated text)", **_token_ticks(tokens, first)),
        yaxis=dict(title="MoE layer", autorange="reversed"),
    )


def expert_load_bar(load, layer: int, num_experts: int, title: str) -> go.Figure:
    """How often each expert of one layer was chosen, with the perfectly balanced level as a line."""
    counts = [int(c) for c in load]
    fig = go.Figure(
        go.Bar(
            x=list(range(num_experts)),
            y=counts,
            marker_color=expert_colors(num_experts),
            hovertemplate="expert %{x}: chosen %{y:,} times<extra></extra>",
        )
    )
    if sum(counts):
        mean = sum(counts) / num_experts
        fig.add_hline(
            y=mean,
            line_dash="dash",
            line_color="#555",
            annotation_text=f"balanced: {mean:,.1f}",
            annotation_position="top right",
        )
    return _layout(
        fig,
        title,
        height=360,
        margin=dict(l=10, r=10, t=60, b=10),
        showlegend=False,
        xaxis=dict(title=f"expert (layer {layer})", dtick=1 if num_experts <= 32 else None),
        yaxis=dict(title="selections (token × top-k slots)"),
    )


BALANCE_METRICS = (
    ("cv", "CV (std / mean)"),
    ("max_over_mean", "max / mean"),
    ("entropy", "normalized entropy (1 = uniform)"),
)


def balance_lines(over_time: pd.DataFrame, title: str) -> go.Figure:
    """CV, max/mean and normalized entropy of the cumulative expert load after each step, per layer."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in BALANCE_METRICS], horizontal_spacing=0.07)
    layers = list(dict.fromkeys(over_time["layer"]))
    colours = expert_colors(max(len(layers), 1)) if len(layers) > 1 else ["#4c78a8"]
    for n, layer in enumerate(layers):
        part = over_time[over_time["layer"] == layer]
        for col, (metric, label) in enumerate(BALANCE_METRICS, start=1):
            fig.add_scatter(
                x=part["step"],
                y=part[metric],
                mode="lines",
                name=f"layer {layer}",
                legendgroup=str(layer),
                showlegend=col == 1,
                line=dict(color=colours[n], width=2),
                hovertemplate=f"layer {layer}<br>step %{{x}}: {label} %{{y:.3f}}<extra></extra>",
                row=1,
                col=col,
            )
    for col, (_, label) in enumerate(BALANCE_METRICS, start=1):
        fig.update_xaxes(title_text="step (0 = prompt)", row=1, col=col)
        fig.update_yaxes(title_text=label, row=1, col=col, rangemode="tozero")
    fig.update_annotations(font_size=12)
    return _layout(
        fig,
        title,
        height=400,
        margin=dict(l=10, r=10, t=110, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.12, xanchor="right", x=1),
    )


def token_expert_grid(
    experts: pd.DataFrame,
    tokens: list[str],
    layer: int,
    num_experts: int,
    prompt_tokens: int,
    title: str,
    per_row: int = 16,
    first: int = 0,
) -> go.Figure:
    """The text, token by token in rows of ``per_row``, each cell coloured by its top-1 expert in ``layer``
    (``tokens[0]`` is position ``first``)."""
    import numpy as np

    n = len(tokens)
    rows = max(1, -(-n // per_row))
    z = np.full((rows, per_row), np.nan)
    text = [[""] * per_row for _ in range(rows)]
    hover = [[""] * per_row for _ in range(rows)]
    cells, hov = _cells(experts[experts["layer"] == layer], [layer], n, first)
    for p in range(n):
        r, c = divmod(p, per_row)
        z[r, c], text[r][c] = cells[0, p], tokens[p]
        where = "prompt" if first + p < prompt_tokens else "generated"
        hover[r][c] = f"position {first + p} ({where}): {tokens[p]}<br>{hov[0][p]}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11, color="white"),
            customdata=hover,
            hovertemplate="%{customdata}<extra></extra>",
            zmin=-0.5,
            zmax=num_experts - 0.5,
            colorscale=_expert_scale(num_experts),
            xgap=2,
            ygap=2,
            colorbar=_expert_colorbar(num_experts),
        )
    )
    return _layout(
        fig,
        title,
        height=max(220, 120 + 32 * rows),
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis=dict(title=f"token in the row (rows of {per_row})", showticklabels=False),
        yaxis=dict(title="row of text", autorange="reversed", showticklabels=False),
    )


def coselection_heatmap(co, layer: int, title: str) -> go.Figure:
    """[E,E] how often two experts served the same token (diagonal: how often each was chosen)."""
    n = len(co)
    fig = go.Figure(
        go.Heatmap(
            z=co,
            x=list(range(n)),
            y=list(range(n)),
            colorscale="Blues",
            colorbar=dict(title=dict(text="tokens", side="right"), thickness=14),
            hovertemplate="experts %{y} and %{x}: %{z:,} tokens<extra></extra>",
        )
    )
    axis = dict(dtick=1 if n <= 32 else None, constrain="domain")
    return _layout(
        fig,
        title,
        height=360,
        margin=dict(l=10, r=10, t=60, b=10),
        xaxis=dict(title=f"expert (layer {layer})", **axis),
        yaxis=dict(title=f"expert (layer {layer})", autorange="reversed", scaleanchor="x", **axis),
    )


def shared_routed_bar(shares: pd.DataFrame, colors: Mapping[str, str], title: str) -> go.Figure:
    """Per model, % of per-token expert compute done by shared (always-on) vs routed experts."""
    fig = go.Figure()
    for col, pattern in (("shared experts (%)", ""), ("routed experts (%)", "/")):
        fig.add_bar(
            y=shares["model"],
            x=shares[col],
            name=col.replace(" (%)", ""),
            orientation="h",
            marker_pattern_shape=pattern,
            marker_line_color="#333",
            marker_color=[colors.get(m, "#888") for m in shares["model"]],
            hovertemplate="%{y}<br>" + col.replace(" (%)", "") + ": %{x:.1f} %<extra></extra>",
        )
    return _layout(
        fig,
        title,
        barmode="stack",
        height=max(220, 150 + 40 * len(shares)),
        margin=dict(l=10, r=10, t=90, b=10),
        xaxis=dict(title="share of the per-token expert FFN width (%)", range=[0, 100]),
        yaxis=dict(title="", autorange="reversed"),
    )


# ----------------------------------------------------------------- estimates (Parameters & Memory)

#: colours of the roofline components (attention's KV part a lighter shade of attention)
SPEED_COLORS = {
    "attention": COMPONENT_COLORS["attention"],
    "attention_kv": "#9ecae9",
    "dense_mlp": COMPONENT_COLORS["dense_mlp"],
    "experts": COMPONENT_COLORS["routed_experts"],
    "lm_head": COMPONENT_COLORS["lm_head"],
    "other": COMPONENT_COLORS["other"],
}
TRAIN_COLORS = {
    "weights": "#4c78a8",
    "gradients": "#f58518",
    "master_weights": "#9ecae9",
    "optimizer_states": "#e45756",
    "activations": "#54a24b",
    "loss": "#72b7b2",
    "gathered": "#b279a2",
}


def speed_components_bar(long: pd.DataFrame, phase: str = "decode step") -> go.Figure:
    """Horizontal stacked bars: time of one phase per model split by component; hatched = compute-bound."""
    part = long[long["phase"] == phase]
    fig = go.Figure()
    for comp, rows in part.groupby("component", sort=False):
        fig.add_bar(
            y=rows["model"],
            x=rows["time_ms"],
            orientation="h",
            name=rows["component_label"].iloc[0],
            marker_color=SPEED_COLORS.get(comp, "#bab0ac"),
            marker_pattern_shape=["/" if b == "compute" else "" for b in rows["bound"]],
            customdata=list(zip(rows["bound"], rows["bytes"] / 2**30, rows["flops"] / 1e9, rows["share"])),
            hovertemplate="%{y}<br>" + rows["component_label"].iloc[0] + ": %{x:,.3f} ms (%{customdata[0]}-bound)"
            "<br>%{customdata[1]:,.2f} GiB moved, %{customdata[2]:,.1f} GFLOP, %{customdata[3]:.0%} of the step"
            "<extra></extra>",
        )
    n = part["model"].nunique()
    return _layout(
        fig,
        f"{phase.capitalize()} time by component",
        barmode="stack",
        height=max(300, 140 + 48 * n),
        xaxis=dict(title=f"{phase} time (ms)"),
        yaxis=dict(title="", autorange="reversed"),
    )


def speed_gpu_bar(across: pd.DataFrame, colors: Mapping[str, str]) -> go.Figure:
    """Grouped bars: decode tok/s per sequence of each model on each GPU of the table (log scale)."""
    fig = go.Figure()
    for model, rows in across.groupby("model", sort=False):
        fig.add_bar(
            x=rows["gpu"],
            y=rows["tok_s"],
            name=str(model),
            marker_color=colors.get(model, "#888"),
            marker_pattern_shape=["" if f else "x" for f in rows["weights_fit"]],
            customdata=list(zip(rows["prefill_ms"], rows["weights_fit"])),
            hovertemplate=f"{model}<br>%{{x}}: %{{y:,.1f}} tok/s, prefill %{{customdata[0]:,.1f}} ms"
            "<br>weights fit in one GPU: %{customdata[1]}<extra></extra>",
        )
    return _layout(
        fig,
        "Decode speed on each GPU (roofline)",
        barmode="group",
        height=420,
        yaxis=dict(title="tokens/s per sequence (log)", **LOG_DECADES),
        xaxis=dict(title="GPU"),
    )


def estimate_vs_measured_bar(measured: pd.DataFrame) -> go.Figure:
    """Per measured run: the roofline estimate beside ArchLab's measurement (tok/s, log), ratio in the hover."""
    fig = go.Figure()
    names = [f"{m} · {s} · {r}" for m, s, r in zip(measured["Model"], measured["Shape"], measured["Run tag"])]
    fig.add_bar(
        y=names,
        x=measured["Estimate (tok/s)"],
        orientation="h",
        name="roofline estimate (datasheet bandwidth)",
        marker_color="#bbbbbb",
        hovertemplate="%{y}<br>estimate %{x:,.1f} tok/s<extra></extra>",
    )
    fig.add_bar(
        y=names,
        x=measured["Measured (tok/s)"],
        orientation="h",
        name="measured (ArchLab fast path)",
        marker_color="#e4572e",
        customdata=measured["Measured / estimate"],
        hovertemplate="%{y}<br>measured %{x:,.1f} tok/s = %{customdata:.0%} of the estimate<extra></extra>",
    )
    return _layout(
        fig,
        "Decode speed: roofline estimate vs measured (batch 1, bf16)",
        barmode="group",
        height=max(320, 140 + 40 * len(names)),
        xaxis=dict(title="tokens/s (log)", type="log", dtick="D2"),
        yaxis=dict(title="", autorange="reversed", tickfont=dict(size=11)),
    )


def training_bar(long: pd.DataFrame, gpu_gib: float | None = None) -> go.Figure:
    """Stacked bars: training memory per GPU by part (GiB), with one GPU's memory as a line."""
    fig = go.Figure()
    for part, rows in long.groupby("part", sort=False):
        fig.add_bar(
            x=rows["model"],
            y=rows["gib"],
            name=rows["part_label"].iloc[0],
            marker_color=TRAIN_COLORS.get(part, "#bab0ac"),
            hovertemplate="%{x}<br>" + rows["part_label"].iloc[0] + ": %{y:,.2f} GiB<extra></extra>",
        )
    if gpu_gib:
        fig.add_hline(
            y=gpu_gib,
            line_dash="dash",
            line_color="#c0392b",
            annotation_text=f"one GPU: {gpu_gib:g} GiB",
            annotation_position="top left",
        )
    return _layout(
        fig,
        "Training memory per GPU",
        barmode="stack",
        height=440,
        yaxis=dict(title="memory per GPU (GiB)"),
        xaxis=dict(title="model"),
    )


def checkpoint_bar(kinds: pd.DataFrame) -> go.Figure:
    """Bars: bytes of a checkpoint by storage format of its tensors (GiB, MiB or KiB, whichever reads best)."""
    top = float(kinds["Bytes"].max()) if len(kinds) else 0.0
    unit, div = next(((u, d) for u, d in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)) if top >= d), ("bytes", 1))
    fig = go.Figure()
    fig.add_bar(
        x=list(kinds.index),
        y=kinds["Bytes"] / div,
        marker_color="#4c78a8",
        customdata=list(zip(kinds["Bytes"], kinds["Parameters"])),
        hovertemplate="%{x}: %{customdata[0]:,} bytes, %{customdata[1]:,} parameters<extra></extra>",
    )
    return _layout(
        fig,
        "Checkpoint bytes by storage format",
        height=380,
        showlegend=False,
        yaxis=dict(title=unit),
        xaxis=dict(title="tensors stored as"),
    )
