"""Colours shared by every page: one per model, one per parameter component, one per layer type."""

from __future__ import annotations

import zlib
from typing import Iterable

from ..arch import catalog

#: 24 distinguishable colours (Plotly's Dark24); the catalog has fewer rows, so each catalog
#: model keeps one fixed colour whatever else is selected.
PALETTE = (
    "#2E91E5",
    "#E15F99",
    "#1CA71C",
    "#FB0D0D",
    "#DA16FF",
    "#222A2A",
    "#B68100",
    "#750D86",
    "#EB663B",
    "#511CFB",
    "#00A08B",
    "#FB00D1",
    "#FC0080",
    "#B2828D",
    "#6C7C32",
    "#778AAE",
    "#862A16",
    "#A777F1",
    "#620042",
    "#1616A7",
    "#DA60CA",
    "#6C4516",
    "#0D2A63",
    "#AF0038",
)

COMPONENT_COLORS = {
    "embeddings": "#9d9d9d",
    "attention": "#4c78a8",
    "dense_mlp": "#54a24b",
    "routed_experts": "#b279a2",
    "shared_experts": "#e45756",
    "router": "#9d755d",
    "norms": "#f2cf5b",
    "lm_head": "#72b7b2",
    "other": "#bab0ac",
}
LAYER_COLORS = {
    "full": "#4c78a8",
    "sliding": "#9ecae9",
    "chunked": "#72b7b2",
    "linear": "#f58518",
    "rope": "#d8d8d8",
    "nope": "#333333",
    "absolute": "#eeeeee",
    "dense": "#54a24b",
    "moe": "#b279a2",
}
HIGHLIGHT = "#e4572e"


def model_colors(keys: Iterable[str]) -> dict[str, str]:
    """A distinct, stable colour per model key: catalog models by catalog position, others by hash."""
    keys = list(dict.fromkeys(keys))
    order = {k: i for i, k in enumerate(catalog.keys())}
    out: dict[str, str] = {}
    used: set[str] = set()
    # Catalog keys first so a custom model never takes a catalog model's fixed colour.
    for key in sorted(keys, key=lambda k: (k not in order, order.get(k, 0))):
        start = order[key] if key in order else zlib.crc32(key.encode()) % len(PALETTE)
        for step in range(len(PALETTE)):
            colour = PALETTE[(start + step) % len(PALETTE)]
            if colour not in used or len(used) >= len(PALETTE):
                break
        used.add(colour)
        out[key] = colour
    return {k: out[k] for k in keys}
