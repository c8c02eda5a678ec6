"""ArchSpec -> Plotly block diagram; several specs drawn at one scale with their differences marked.

A diagram is a column of *elements* (embedding, norms, attention, MLP/MoE, pattern strip, head).
Each element has an id and keyed text lines; :func:`diff` compares those lines across specs, so
what is highlighted is exactly what is drawn differently. :func:`marks` decides what each diagram
marks: what differs from a baseline model (the default on the page), or what differs between any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import plotly.graph_objects as go

from ..arch.errors import ArchLabError
from ..arch.spec import ArchSpec
from .colors import COMPONENT_COLORS, HIGHLIGHT, LAYER_COLORS

ORDER = (
    "embedding",
    "pos_embedding",
    "block",
    "norm_attn_pre",
    "attention",
    "norm_attn_post",
    "add_attn",
    "norm_mlp_pre",
    "mlp",
    "norm_mlp_post",
    "add_mlp",
    "pattern",
    "final_norm",
    "lm_head",
)
BLOCK = ORDER[3:11]
KIND_FILL = {
    "embedding": "#ececec",
    "norm": "#fbeeb8",
    "attention": "#dbe7f3",
    "mlp": "#dcefd9",
    "moe": "#eadcf0",
    "head": "#d9efed",
    "add": "#ffffff",
    "pattern": "#ffffff",
    "block": "#ffffff",
}
KIND_EDGE = {
    "embedding": COMPONENT_COLORS["embeddings"],
    "norm": "#c9a227",
    "attention": COMPONENT_COLORS["attention"],
    "mlp": COMPONENT_COLORS["dense_mlp"],
    "moe": COMPONENT_COLORS["routed_experts"],
    "head": COMPONENT_COLORS["lm_head"],
    "add": "#555555",
    "pattern": "#999999",
    "block": "#999999",
}
ATTN_NAMES = {
    "MHA": "Multi-head attention (MHA)",
    "GQA": "Grouped-query attention (GQA)",
    "MQA": "Multi-query attention (MQA)",
    "MLA": "Multi-head latent attention (MLA)",
}

# Geometry, in diagram units (1 unit = PX pixels, the same for every diagram).
PX = 7.0
LINE = 2.5  # one text line
PAD = 1.4  # vertical padding inside a box
GAP = 2.6  # arrow between boxes
ADD = 3.0  # residual-add node
CELL_ROWS = 3  # pattern strip: attention type, positions, MLP kind
CELL_H = 1.8
X0, X1, XMID, XRES = 6.0, 88.0, 47.0, 93.0


@dataclass(frozen=True)
class Element:
    id: str
    kind: str  # colour family: embedding/norm/attention/mlp/moe/head/add/pattern/block
    title: str
    lines: tuple[tuple[str, str], ...] = ()  # (key, text) drawn in the box; keys are what diff compares
    detail: tuple[tuple[str, str], ...] = ()  # compared like lines but not written (drawn as cells)

    def height(self) -> float:
        if self.kind == "add":
            return ADD
        if self.kind == "block":
            return 0.0
        extra = CELL_ROWS * CELL_H + 0.6 if self.kind == "pattern" else 0.0
        return PAD + LINE * (1 + len(self.lines)) + extra


def _of(n: int, total: int) -> str:
    return f"{n}/{total} layers"


def _attention(s: ArchSpec) -> Element:
    n = s.num_layers
    lines = [("kind", ATTN_NAMES.get(s.attention_kind, s.attention_kind))]
    dims = f"dim {s.head_dim}" if s.head_dim == s.v_head_dim else f"dim {s.head_dim} (v {s.v_head_dim})"
    lines.append(("heads", f"{s.num_heads} query / {s.num_kv_heads} KV heads, {dims}"))
    if s.mla:
        q = f"q {s.mla.q_lora_rank} · " if s.mla.q_lora_rank else ""
        lines.append(("mla", f"latent {q}kv {s.mla.kv_lora_rank} (+{s.mla.qk_rope_head_dim} RoPE key)"))
    if s.local_layers:
        kind = "sliding window" if s.count("sliding") else "chunked"
        lines.append(("window", f"{kind} {s.window:,} tok, {_of(s.local_layers, n)}"))
    if s.linear:
        la = s.linear
        lines.append(("linear", f"linear (DeltaNet): {_of(s.count('linear'), n)}"))
        lines.append(("linear_heads", f"  {la.num_key_heads} K / {la.num_value_heads} V heads, dim {la.key_head_dim}"))
    if s.qk_norm != "none":
        lines.append(("qk_norm", f"QK-Norm ({s.qk_norm})"))
    if s.position == "RoPE":
        rope = "RoPE" + (f" on {s.rope_fraction:.0%} of each head" if s.rope_fraction < 1 else " on full head")
        lines.append(("rope", rope + (f", {s.rope_scaling}" if s.rope_scaling else "")))
        if s.nope_layers:
            lines.append(("nope", f"NoPE (no rotation): {_of(s.nope_layers, n)}"))
    else:
        lines.append(("rope", "no rotary (absolute positions)"))
    extras = [
        x for x, on in (("QKV bias", s.qkv_bias), ("sinks", s.attention_sinks), ("output gate", s.output_gate)) if on
    ]
    if extras:
        lines.append(("extras", " · ".join(extras)))
    return Element("attention", "attention", "Attention", tuple(lines))


def _mlp(s: ArchSpec) -> Element:
    dense = [l for l in s.layers if l.mlp == "dense"]
    widths = sorted({l.dense_width for l in dense})
    m = s.moe
    if m is None:
        return Element(
            "mlp",
            "mlp",
            "MLP",
            (("kind", f"{s.mlp_kind} ({s.activation})"), ("width", f"width {', '.join(f'{w:,}' for w in widths)}")),
        )
    lines = [
        ("experts", f"{m.num_experts} routed experts, top-{m.top_k}"),
        ("expert_width", f"{s.mlp_kind} experts, width {m.expert_width:,}"),
    ]
    if m.num_shared:
        lines.append(
            (
                "shared",
                f"{m.num_shared} shared expert{'s' if m.num_shared > 1 else ''} (always on)"
                + (", gated" if m.shared_gate else ""),
            )
        )
    router = f"{m.scoring} router" + (", bias-corrected" if m.bias_corrected else "")
    if m.n_group > 1:
        router += f", {m.topk_group}/{m.n_group} groups"
    lines.append(("router", router))
    if dense:
        lines.append(("dense", f"dense MLP: {_of(len(dense), s.num_layers)}"))
    return Element("mlp", "moe", "Mixture of experts", tuple(lines))


def _norm(s: ArchSpec, where: str) -> Element:
    return Element(f"norm_{where}", "norm", s.norm_type)


def elements(s: ArchSpec) -> list[Element]:
    """The elements of one spec's diagram, top to bottom."""
    out = [
        Element(
            "embedding",
            "embedding",
            "Token embedding",
            (("shape", f"vocab {s.vocab_size:,} × hidden {s.hidden_size:,}"),),
        )
    ]
    if s.position == "absolute":
        out.append(
            Element(
                "pos_embedding",
                "embedding",
                "Position embedding (learned)",
                (("shape", f"{s.max_context:,} positions × {s.hidden_size:,}"),),
            )
        )
    out.append(Element("block", "block", "Decoder block", (("layers", f"× {s.num_layers} layers"),)))
    pre, post = s.norm_placement in ("pre", "pre+post"), s.norm_placement in ("post", "pre+post")
    for part, el in (("attn", _attention(s)), ("mlp", _mlp(s))):
        if pre:
            out.append(_norm(s, f"{part}_pre"))
        out.append(el)
        if post:
            out.append(_norm(s, f"{part}_post"))
        out.append(Element(f"add_{part}", "add", "+"))
    layers = s.layers
    pattern = (
        ("attn", " ".join(l.attention for l in layers)),
        ("pos", " ".join("rope" if l.rope else "nope" for l in layers) if s.position == "RoPE" else "absolute"),
        ("mlp", " ".join(l.mlp for l in layers)),
    )
    out.append(
        Element(
            "pattern", "pattern", f"Per-layer pattern ({s.num_layers} layers)", (("summary", s.layer_pattern),), pattern
        )
    )
    out.append(Element("final_norm", "norm", f"Final {s.norm_type}"))
    out.append(
        Element(
            "lm_head",
            "head",
            "LM head",
            (
                ("tied", "tied to the token embedding" if s.tied_embeddings else "own weight matrix"),
                ("out", f"→ {s.vocab_size:,} logits"),
            ),
        )
    )
    return out


def diff(specs: Sequence[ArchSpec]) -> dict[str, set[str]]:
    """Element id -> keys that differ across ``specs`` ("*" = element missing in some, "title" = title differs)."""
    if len(specs) < 2:
        return {}
    per = [{e.id: e for e in elements(s)} for s in specs]
    out: dict[str, set[str]] = {}
    for eid in ORDER:
        present = [p.get(eid) for p in per]
        keys: set[str] = set()
        if any(e is None for e in present) and any(e is not None for e in present):
            keys.add("*")
        found = [e for e in present if e is not None]
        if len({e.title for e in found}) > 1:
            keys.add("title")
        for k in {k for e in found for k, _ in e.lines + e.detail}:
            values = [dict(e.lines + e.detail).get(k) for e in found]
            if len(set(values)) > 1:
                keys.add(k)
        if keys:
            out[eid] = keys
    return out


def marks(specs: Mapping[str, ArchSpec], baseline: Optional[str] = None) -> dict[str, dict[str, set[str]]]:
    """Label -> the :func:`diff` marks its diagram shows.

    With a ``baseline`` (one of the labels), each diagram marks what differs from the baseline's diagram
    and the baseline marks nothing. Without (``None``, "differs from any"), every diagram marks what
    differs anywhere among ``specs``. ArchLabError for a baseline that is not among them.
    """
    if baseline is None:
        common = diff(list(specs.values()))
        return {label: common for label in specs}
    if baseline not in specs:
        raise ArchLabError(f"the baseline {baseline!r} is not among the models compared")
    base = specs[baseline]
    return {label: {} if label == baseline else diff([base, s]) for label, s in specs.items()}


def row_heights(specs: Sequence[ArchSpec]) -> dict[str, float]:
    """Height of every row, the max over specs, so that rows line up across diagrams."""
    h = dict.fromkeys(ORDER, 0.0)
    for s in specs:
        for e in elements(s):
            h[e.id] = max(h[e.id], e.height())
    return h


def _positions(heights: Mapping[str, float]) -> tuple[dict[str, float], float]:
    y, top = 2.0, {}
    for eid in ORDER:
        if eid == "block":
            y += 1.5  # room for the block label
            top[eid] = y
            continue
        if heights.get(eid, 0) <= 0:
            continue
        top[eid] = y
        y += heights[eid] + GAP
        if eid == "add_mlp":
            y += 1.5  # bottom edge of the block frame
    return top, y


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _text(e: Element, marked: set[str]) -> str:
    def mark(key: str, text: str) -> str:
        text = _esc(text)
        return f"<span style='color:{HIGHLIGHT}'><b>{text}</b></span>" if key in marked or "*" in marked else text

    title = mark("title", e.title) if "title" in marked else f"<b>{_esc(e.title)}</b>"
    return "<br>".join([title] + [mark(k, t) for k, t in e.lines])


def block_figure(
    spec: ArchSpec,
    title: str = "",
    color: str = "#444444",
    marked: Optional[Mapping[str, set[str]]] = None,
    heights: Optional[Mapping[str, float]] = None,
    badge: str = "≠ differs",
    note: str = "",
) -> go.Figure:
    """The block diagram of one spec. ``marked`` = :func:`diff` output (its boxes outlined and tagged with
    ``badge``); ``heights`` = shared rows; ``note`` = a grey word after the title (e.g. "baseline")."""
    marked = marked or {}
    els = {e.id: e for e in elements(spec)}
    top, extent = _positions(heights or row_heights([spec]))
    shapes, notes = [], []
    hx, hy, htext = [], [], []

    def box(e: Element, y0: float, h: float) -> None:
        hit = e.id in marked
        shapes.append(
            dict(
                type="rect",
                x0=X0,
                x1=X1,
                y0=y0,
                y1=y0 + h,
                fillcolor=KIND_FILL[e.kind],
                line=dict(color=HIGHLIGHT if hit else KIND_EDGE[e.kind], width=3 if hit else 1.2),
            )
        )
        text_top = y0 + PAD / 2 + 0.1
        notes.append(
            dict(
                x=(X0 + X1) / 2,
                y=text_top,
                text=_text(e, marked.get(e.id, set()) if hit else set()),
                yanchor="top",
                showarrow=False,
                align="center",
                font=dict(size=11),
            )
        )
        if hit:
            notes.append(
                dict(
                    x=X1,
                    y=y0,
                    text=f"<b> {_esc(badge)} </b>",
                    showarrow=False,
                    xanchor="right",
                    yanchor="middle",
                    bgcolor=HIGHLIGHT,
                    font=dict(color="white", size=9),
                    borderpad=1,
                )
            )

    # main stream, drawn below everything
    shapes.append(
        dict(type="line", x0=XMID, x1=XMID, y0=1, y1=extent - GAP, layer="below", line=dict(color="#888888", width=1.5))
    )
    for eid, e in els.items():
        if eid not in top:
            continue
        y0 = top[eid]
        h = (heights or {}).get(eid) or e.height()
        if e.kind == "block":
            y_end = top.get("add_mlp", y0) + ADD + 1.5
            hit = eid in marked
            shapes.append(
                dict(
                    type="rect",
                    x0=X0 - 4,
                    x1=XRES + 4,
                    y0=y0 - 1.2,
                    y1=y_end,
                    layer="below",
                    line=dict(color=HIGHLIGHT if hit else "#999999", width=2.5 if hit else 1.2, dash="dash"),
                )
            )
            label = e.lines[0][1]
            notes.append(
                dict(
                    x=X0 - 3,
                    y=y0 - 1.2,
                    text=(f"<span style='color:{HIGHLIGHT}'><b>{label}</b></span>" if hit else f"<b>{label}</b>"),
                    showarrow=False,
                    xanchor="left",
                    yanchor="bottom",
                    font=dict(size=12),
                )
            )
            continue
        if e.kind == "add":
            cy = y0 + ADD / 2
            shapes.append(
                dict(
                    type="circle",
                    x0=XMID - 1.6,
                    x1=XMID + 1.6,
                    y0=cy - 1.4,
                    y1=cy + 1.4,
                    fillcolor="white",
                    line=dict(color="#555555", width=1.2),
                )
            )
            notes.append(dict(x=XMID, y=cy, text="<b>+</b>", showarrow=False, font=dict(size=12)))
            # residual skip: from just above the branch start to this add node
            part = eid.split("_")[1]
            first = next(
                top[i]
                for i in BLOCK
                if i in top and i in els and i.endswith(part) or i == ("attention" if part == "attn" else "mlp")
            )
            ys = first - GAP / 2
            shapes.append(
                dict(
                    type="path",
                    path=f"M {XMID} {ys} L {XRES} {ys} L {XRES} {cy} L {XMID + 1.6} {cy}",
                    line=dict(color="#555555", width=1.2),
                )
            )
            continue
        box(e, y0, h)
        if e.kind == "pattern":
            _cells(spec, y0 + PAD / 2 + LINE * (1 + len(e.lines)) + 0.3, shapes, notes, hx, hy, htext)
        hx.append((X0 + X1) / 2)
        hy.append(y0 + h / 2)
        htext.append(_esc(e.title) + "<br>" + "<br>".join(_esc(t) for _, t in e.lines))

    shapes.append(
        dict(type="rect", xref="paper", yref="paper", x0=0, x1=1, y0=1.0, y1=1.012, fillcolor=color, line=dict(width=0))
    )  # the model's colour along the top
    layout = dict(
        shapes=shapes,
        annotations=notes,
        height=int(extent * PX) + 60,
        margin=dict(l=4, r=4, t=46, b=4),
        title=dict(
            text=f"<b>{_esc(title)}</b>"
            + (f"  <span style='color:#777777;font-size:12px'>{_esc(note)}</span>" if note else ""),
            font=dict(color=color, size=15),
            x=0.5,
            xanchor="center",
        ),
        xaxis=dict(range=[0, 100], visible=False, fixedrange=True),
        yaxis=dict(range=[extent, 0], visible=False, fixedrange=True),
        plot_bgcolor="white",
        paper_bgcolor="white",
        hovermode="closest",
    )
    data = [
        dict(
            type="scatter",
            x=hx,
            y=hy,
            mode="markers",
            marker=dict(size=1, opacity=0),
            hovertext=htext,
            hoverinfo="text",
            showlegend=False,
        )
    ]
    # Not validated while built: plotly checks each of a diagram's ~200 shapes (0.1-0.2 s a diagram, on the
    # first page's path); tests/test_baseline.py validates these figures and holds them equal.
    return go.Figure(dict(data=data, layout=layout), _validate=False)


def _cells(s: ArchSpec, y: float, shapes: list, notes: list, hx: list, hy: list, htext: list) -> None:
    """Per-layer strip: attention type / positions / MLP kind, one cell per layer."""
    n = s.num_layers
    left = X0 + 9
    w = (X1 - left - 2) / n
    gap = min(w * 0.15, 0.3)
    for r, name in enumerate(("attn", "pos", "MLP")):
        notes.append(
            dict(
                x=X0 + 1,
                y=y + (r + 0.45) * CELL_H,
                text=name,
                showarrow=False,
                xanchor="left",
                font=dict(size=9, color="#555555"),
            )
        )
    for i, layer in enumerate(s.layers):
        x0 = left + i * w
        pos = "absolute" if s.position != "RoPE" else ("rope" if layer.rope else "nope")
        for r, key in enumerate((layer.attention, pos, layer.mlp)):
            shapes.append(
                dict(
                    type="rect",
                    x0=x0,
                    x1=x0 + w - gap,
                    y0=y + r * CELL_H,
                    y1=y + (r + 1) * CELL_H - 0.25,
                    fillcolor=LAYER_COLORS.get(key, "#cccccc"),
                    line=dict(width=0),
                )
            )
        hx.append(x0 + w / 2)
        hy.append(y + CELL_H * 1.5)
        htext.append(f"layer {i}: {layer.attention} attention, {pos if pos != 'rope' else 'RoPE'}, {layer.mlp} MLP")


def legend_items(specs: Sequence[ArchSpec]) -> dict[str, str]:
    """Colour legend of the pattern strip for the layer kinds present in ``specs``."""
    seen: dict[str, str] = {}
    for s in specs:
        for l in s.layers:
            seen[l.attention] = LAYER_COLORS[l.attention]
            if s.position == "RoPE":
                seen["nope" if not l.rope else "rope"] = LAYER_COLORS["nope" if not l.rope else "rope"]
            seen[l.mlp] = LAYER_COLORS[l.mlp]
    names = {
        "full": "full attention",
        "sliding": "sliding window",
        "chunked": "chunked attention",
        "linear": "linear attention",
        "rope": "RoPE",
        "nope": "NoPE",
        "dense": "dense MLP",
        "moe": "MoE",
    }
    return {names[k]: v for k, v in seen.items()}


def comparison_figures(
    specs: Mapping[str, ArchSpec], colors: Mapping[str, str], baseline: Optional[str] = None
) -> dict[str, go.Figure]:
    """One figure per label, at one scale, rows aligned, with the elements that differ highlighted: from the
    ``baseline`` label's model (badge "≠ baseline", the baseline's own diagram titled as such), or with
    ``baseline=None`` between any of them (badge "≠ differs"). See :func:`marks`."""
    marked = marks(specs, baseline)
    heights = row_heights(list(specs.values()))
    badge = "≠ differs" if baseline is None else "≠ baseline"
    return {
        label: block_figure(
            s,
            label,
            colors.get(label, "#444444"),
            marked[label],
            heights,
            badge,
            "baseline" if label == baseline and len(specs) > 1 else "",
        )
        for label, s in specs.items()
    }
