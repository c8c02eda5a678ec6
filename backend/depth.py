"""Full width, fewer layers: speed of a model too large for the hardware, extrapolated to full depth.

A variant keeps every tensor shape of the real model but only its first ``k`` decoder layers
(:func:`backend.configs.with_layers`). At batch 1 a decode step reads every active weight once, so
its time scales with the bytes it reads: one run at ``k`` layers extrapolates by the ratio of
weight bytes read per token (:func:`full_depth_scale`). Two runs at different depths measure the
per-layer cost directly (:func:`two_depth_tok_s`); ``bench/gpu.py`` reports both so the one-run
estimate the Playground shows is checked against the two-run one.
"""
from __future__ import annotations

from dataclasses import dataclass

from .configs import ModelSource, with_layers
from .counting import count_params
from .errors import ArchLabError
from .spec import arch_spec


@dataclass(frozen=True)
class DepthVariant:
    """A "full width, k of n layers" variant of a model and how its speed scales to full depth."""
    source: dict            # the variant's config
    layers: int
    full_layers: int
    scale: float            # weight bytes read per token, variant / full model (tok/s at full ≈ tok/s × scale)


def decode_read_params(source: ModelSource) -> int:
    """Parameters a batch-1 decode step reads: the active ones, less the input embedding (one row is
    gathered), plus the embedding again when the LM head is tied to it."""
    c = count_params(source)
    emb = c.components.get("embeddings", 0)
    tied = arch_spec(source).tied_embeddings
    return c.active - emb + (emb if tied else 0)


def variant(source: ModelSource, layers: int) -> DepthVariant:
    """The first ``layers`` decoder layers of ``source`` at full width, with its full-depth scale."""
    full = arch_spec(source).num_layers
    if not isinstance(layers, int) or isinstance(layers, bool) or layers < 1:
        raise ArchLabError(f"layers must be a whole number from 1 to {full}, got {layers!r}")
    d = with_layers(source, min(layers, full))
    return DepthVariant(d, min(layers, full), full, decode_read_params(d) / decode_read_params(source))


def two_depth_tok_s(a_layers: int, a_tok_s: float, b_layers: int, b_tok_s: float, full_layers: int) -> float:
    """tok/s at ``full_layers`` from step times measured at two depths (per-layer cost = their slope).

    Assumes the layers past ``a_layers`` cost what the measured extra layers cost (true when they
    are of one kind, e.g. DeepSeek-V3's MoE layers after its 3 dense ones).
    """
    if a_layers == b_layers or min(a_tok_s, b_tok_s) <= 0:
        raise ArchLabError("need two different depths with positive speeds")
    step_a, step_b = 1 / a_tok_s, 1 / b_tok_s
    per_layer = (step_b - step_a) / (b_layers - a_layers)
    return 1 / (step_a + per_layer * (full_layers - a_layers))
