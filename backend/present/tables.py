"""DataFrames the pages lay out: every number here comes from counting.py or memory.py.

Models are given as ``{label: source}`` (label = column/row name shown to the user).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd

from ..arch import catalog
from ..arch.architecture import Architecture, Source, resolve
from ..arch.counting import COMPONENT_LABELS, COMPONENTS
from ..arch.errors import ArchLabError
from ..arch.memory import DTYPE_BYTES, GiB, device_plan, kv_cache
from ..arch.memory import weights_table as _weights
from ..arch.spec import ArchSpec

Models = Mapping[str, Source]
NONE = "—"
LAYER_TYPE_LABELS = {
    "full": "Full attention",
    "sliding": "Sliding window",
    "chunked": "Chunked",
    "linear": "Linear attention",
}


def entry(source: Source) -> catalog.CatalogEntry | None:
    """The catalog row of a source, or None for a custom config."""
    return (source if isinstance(source, Architecture) else resolve(source)).entry


def _of(n: int, total: int) -> str:
    return f"{n} of {total}" if n else NONE


def _features(s: ArchSpec) -> dict[str, str]:
    """One column of the feature matrix."""
    n = s.num_layers
    m = s.moe
    local = s.local_layers
    kind = "sliding" if s.count("sliding") else "chunked"
    if s.position == "absolute":
        position = "Learned absolute"
    else:
        theta = f" θ={s.rope_theta:,.0f}" if s.rope_theta else ""
        position = f"RoPE{theta}" + (f" ({s.rope_scaling})" if s.rope_scaling else "")
    mla = s.mla
    return {
        "Decoder layers": str(n),
        "Hidden size": f"{s.hidden_size:,}",
        "Attention": s.attention_kind + (" + linear (Gated DeltaNet)" if s.linear else ""),
        "Query heads / KV heads": f"{s.num_heads} / {s.num_kv_heads}",
        "Head dim (q·k / v)": str(s.head_dim) if s.head_dim == s.v_head_dim else f"{s.head_dim} / {s.v_head_dim}",
        "MLA ranks (q / kv / rope)": NONE
        if mla is None
        else f"{mla.q_lora_rank or NONE} / {mla.kv_lora_rank} / {mla.qk_rope_head_dim}",
        "Local-attention layers (window)": NONE if not local else f"{_of(local, n)} {kind} ({s.window:,} tokens)",
        "Linear-attention layers": _of(s.count("linear"), n),
        "Layer pattern": s.layer_pattern,
        "Attention extras": ", ".join(
            x
            for x, on in (
                ("QKV bias", s.qkv_bias),
                ("output bias", s.out_bias),
                ("sinks", s.attention_sinks),
                ("output gate", s.output_gate),
            )
            if on
        )
        or NONE,
        "Norm type": s.norm_type + (" (with bias)" if s.norm_bias else ""),
        "Norm placement": s.norm_placement,
        "QK-Norm": s.qk_norm,
        "Positional encoding": position,
        "NoPE layers": _of(s.nope_layers, n),
        "Partial RoPE (share of head rotated)": NONE
        if s.position != "RoPE" or s.rope_fraction >= 1
        else f"{s.rope_fraction:.0%}",
        "MLP / activation": f"{s.mlp_kind} ({s.activation})",
        "Experts routed / active / shared": NONE if m is None else f"{m.num_experts} / {m.top_k} / {m.num_shared}",
        "Expert width": NONE if m is None else f"{m.expert_width:,}",
        "Router": NONE
        if m is None
        else m.scoring
        + (", bias-corrected" if m.bias_corrected else "")
        + (f", {m.topk_group} of {m.n_group} groups" if m.n_group > 1 else ""),
        "MoE layers": NONE if m is None else _of(len(m.layers), n),
        "Dense MLP width": ", ".join(f"{w:,}" for w in sorted({l.dense_width for l in s.layers if l.mlp == "dense"}))
        or NONE,
        "Vocabulary": f"{s.vocab_size:,}",
        "Tied embeddings": "yes" if s.tied_embeddings else "no",
        "Max context (tokens)": f"{s.max_context:,}",
    }


def feature_matrix(models: Models) -> pd.DataFrame:
    """Rows = features, columns = models, plus a boolean ``differs`` column (the models do not all agree)."""
    cols = {
        label: _features((src if isinstance(src, Architecture) else resolve(src)).spec) for label, src in models.items()
    }
    df = pd.DataFrame(cols)
    df.index.name = "Feature"
    df["differs"] = df.nunique(axis=1) > 1 if len(cols) > 1 else False
    return df


def feature_marks(matrix: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """Which cells of a :func:`feature_matrix` to mark (booleans, same rows, one column per model).

    With a ``baseline`` (one of the model columns): the cells that differ from the baseline's cell in their
    row; the baseline's own cells never. Without (``None``, "differs from any"): every cell of a row where
    the models do not all agree. ArchLabError for a baseline that is not a column.
    """
    models = [c for c in matrix.columns if c != "differs"]
    if baseline is None:
        return pd.DataFrame({c: matrix["differs"].astype(bool) for c in models}, index=matrix.index)
    if baseline not in models:
        raise ArchLabError(f"the baseline {baseline!r} is not among the models compared")
    return pd.DataFrame({c: matrix[c] != matrix[baseline] for c in models}, index=matrix.index)


def params_table(models: Models) -> pd.DataFrame:
    """Exact total/active parameters, the authors' stated figures and every component (integers)."""
    rows = []
    for label, src in models.items():
        arch = src if isinstance(src, Architecture) else resolve(src)
        c, e = arch.counts, arch.entry
        row = {
            "Model": label,
            "Total": c.total,
            "Active per token": c.active,
            "Active share": c.active_share,
            "Stated total": e.stated_total if e else NONE,
            "Stated active": e.stated_active if e else NONE,
        }
        row.update({COMPONENT_LABELS.get(k, k): c.components.get(k, 0) for k in COMPONENTS})
        row["Note on stated figure"] = e.count_note if e and e.count_note else ""
        rows.append(row)
    return pd.DataFrame(rows).set_index("Model")


def components_long(models: Models) -> pd.DataFrame:
    """Long form (model, component, params) for stacked bars; zero components dropped."""
    rows = [
        {"model": label, "component": k, "component_label": COMPONENT_LABELS.get(k, k), "params": n}
        for label, src in models.items()
        for k, n in (src if isinstance(src, Architecture) else resolve(src)).counts.components.items()
        if n
    ]
    return pd.DataFrame(rows, columns=["model", "component", "component_label", "params"])


def weights_by_dtype(models: Models) -> pd.DataFrame:
    """Weight memory in GiB for each dtype (rows = models)."""
    df = pd.DataFrame({label: {d: b / GiB for d, b in _weights(src).items()} for label, src in models.items()}).T
    df.index.name = "Model"
    df.columns = [f"{d} (GiB)" for d in df.columns]
    return df


def kv_table(
    models: Models, context: int, batch: int = 1, dtype: str = "bf16", mla_layout: str = "latent"
) -> pd.DataFrame:
    """KV cache of each model at ``context`` tokens × ``batch`` sequences."""
    rows = []
    for label, src in models.items():
        arch = src if isinstance(src, Architecture) else resolve(src)
        s, kv = arch.spec, kv_cache(arch, context, batch, dtype, mla_layout)
        row = {
            "Model": label,
            "Cache layout": (f"MLA {mla_layout}" if s.mla else "K and V per KV head")
            + (" + fixed linear state" if s.linear else ""),
            "Per token, no window (KiB)": kv.per_token_bytes / 1024,
            "Per token at this context (KiB)": kv.per_token_at_context / 1024,
            "Total (GiB)": kv.total_bytes / GiB,
            "Within max context": context <= s.max_context,
        }
        for t, name in LAYER_TYPE_LABELS.items():
            row[f"{name} layers (GiB)"] = kv.by_layer_type.get(t, 0) / GiB
        rows.append(row)
    df = pd.DataFrame(rows).set_index("Model")
    # Keep only layer types some model has.
    return df[[c for c in df.columns if not c.endswith("layers (GiB)") or (df[c] > 0).any()]]


def context_grid(lo: int = 256, hi: int = 1 << 20, per_octave: int = 2) -> list[int]:
    """Context lengths spaced evenly on a log axis."""
    steps = int(round(math.log2(hi / lo) * per_octave))
    return sorted({int(round(lo * 2 ** (i / per_octave))) for i in range(steps + 1)})


def kv_curve(
    models: Models,
    contexts: Sequence[int] | None = None,
    batch: int = 1,
    dtype: str = "bf16",
    mla_layout: str = "latent",
) -> pd.DataFrame:
    """Long form (model, context, GiB): each model up to its own maximum context."""
    contexts = list(contexts or context_grid())
    rows = []
    for label, src in models.items():
        arch = src if isinstance(src, Architecture) else resolve(src)
        limit = arch.spec.max_context or max(contexts)
        points = sorted({c for c in contexts if c <= limit} | ({limit} if limit <= max(contexts) else set()))
        rows += [
            {"model": label, "context": c, "kv_gib": kv_cache(arch, c, batch, dtype, mla_layout).total_bytes / GiB}
            for c in points
        ]
    return pd.DataFrame(rows, columns=["model", "context", "kv_gib"])


def device_table(models: Models, gpu_gib: Sequence[float], dtype: str = "bf16") -> pd.DataFrame:
    """Weight GiB and decoder layers per device as accelerate would place them (long form)."""
    rows = []
    for label, src in models.items():
        plan = device_plan(src, list(gpu_gib), dtype)
        for dev, b in plan.bytes_per_device.items():
            rows.append(
                {
                    "model": label,
                    "device": OFFLOAD.get(dev, dev),
                    "weights_gib": b / GiB,
                    "layers": plan.layers_per_device.get(dev, 0),
                    "fits_on_gpus": plan.fits,
                }
            )
    return pd.DataFrame(rows, columns=["model", "device", "weights_gib", "layers", "fits_on_gpus"])


DTYPES = tuple(DTYPE_BYTES)
#: accelerate's names for what did not fit on the GPUs (the plan gives no CPU memory).
OFFLOAD = {"disk": "does not fit (disk)", "cpu": "does not fit (CPU)"}


def default_gpus() -> tuple[int, float]:
    """(count, GiB each) of the CUDA GPUs on this machine, or (2, 80.0) when there are none."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count():
            n = torch.cuda.device_count()
            return n, round(min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) / GiB, 1)
    except Exception:  # a broken CUDA setup is the same as none for a default
        pass
    return 2, 80.0
