"""DataFrames and worked formulas for the estimate sections of Parameters & Memory: roofline speed,
estimate vs ArchLab's measurements, memory from a checkpoint's metadata, and training memory.

Every number comes from ``backend.arch`` (roofline, measurements, checkpoint_meta, train_memory, memory,
counting); the "how this is computed" text is the ``Working`` the same call produced. Models are given as
``{label: source}`` like in :mod:`backend.present.tables`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Union

import pandas as pd

from ..arch import gpus as gpu_table
from ..arch import measurements, train_memory
from ..arch.architecture import Architecture, Source, resolve
from ..arch.checkpoint_meta import checkpoint_kv, read_checkpoint
from ..arch.counting import COMPONENT_LABELS as PARAM_LABELS
from ..arch.counting import active_working
from ..arch.errors import ArchLabError
from ..arch.memory import GiB, kv_cache, weights_working
from ..arch.roofline import COMPONENT_LABELS, MLA_MODES, SPEED_DTYPES, SpeedEstimate, estimate
from .text import md

Models = Mapping[str, Source]
GPU_CHOICES = tuple(gpu_table.keys()) + (gpu_table.CUSTOM,)


def human_bytes(n: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1 (GiB, MiB, KiB)."""
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= div:
            return f"{n / div:,.2f} {unit}"
    return f"{int(n):,} bytes"


def _arch(src: Source) -> Architecture:
    return src if isinstance(src, Architecture) else resolve(src)


def gpu_of(key: str, custom: Optional[tuple] = None) -> gpu_table.GPU:
    """A table GPU by key, or the custom one from (bandwidth TB/s, bf16 TFLOP/s, fp8 TFLOP/s or None)."""
    if key == gpu_table.CUSTOM:
        if not custom:
            raise ArchLabError("a custom GPU needs its bandwidth and bf16 TFLOP/s")
        return gpu_table.custom(*custom)
    return gpu_table.get(key)


def gpus_frame() -> pd.DataFrame:
    """The published GPU table."""
    return pd.DataFrame(
        [
            {
                "GPU": g.name,
                "key": g.key,
                "Memory (GB)": g.memory_gb,
                "Bandwidth (TB/s)": g.bandwidth_Bps / 1e12,
                "bf16 TFLOP/s (dense)": g.bf16_flops / 1e12,
                "fp8 TFLOP/s (dense)": g.fp8_flops / 1e12 if g.fp8_flops else None,
                "Ridge point bf16 (FLOP/byte)": g.ridge_bf16,
                "Source": g.source,
            }
            for g in gpu_table.table()
        ]
    ).set_index("GPU")


# ----------------------------------------------------------------- speed

GPUArg = Union[str, gpu_table.GPU]


def _gpu(gpu: GPUArg, custom: Optional[tuple]) -> gpu_table.GPU:
    return gpu if isinstance(gpu, gpu_table.GPU) else gpu_of(gpu, custom)


def _estimates(
    models: Models,
    gpu: GPUArg,
    batch: int,
    context: int,
    prompt: int,
    dtype: str,
    kv_dtype: Optional[str],
    custom: Optional[tuple] = None,
) -> list[tuple[str, SpeedEstimate]]:
    """(row label, estimate) per model; MLA models twice (as an engine runs it and as transformers does)."""
    gpu = _gpu(gpu, custom)
    out = []
    for label, src in models.items():
        arch = _arch(src)
        modes = MLA_MODES if arch.spec.mla is not None else (MLA_MODES[0],)
        for mode in modes:
            e = estimate(arch, gpu, batch, context, prompt, dtype, kv_dtype, mode)
            out.append((label + (f" · MLA {mode}" if e.mla else ""), e))
    return out


def speed_table(
    models: Models,
    gpu: GPUArg = "h100",
    batch: int = 1,
    context: int = 2048,
    prompt: int = 512,
    dtype: str = "bf16",
    kv_dtype: Optional[str] = None,
    custom: Optional[tuple] = None,
) -> pd.DataFrame:
    """Prefill time and decode speed per model (MLA models: one row per way of running it)."""
    rows = []
    for label, e in _estimates(models, gpu, batch, context, prompt, dtype, kv_dtype, custom):
        rows.append(
            {
                "Model": label,
                "Prefill (ms)": e.prefill_s * 1e3,
                "Decode step (ms)": e.step_s * 1e3,
                "tok/s per sequence": e.tok_s,
                "tok/s whole batch": e.total_tok_s,
                "Decode bound by": e.decode.bound,
                "Prefill bound by": e.prefill.bound,
                "Experts touched per MoE layer": e.experts_touched,
                "Bytes per step (GiB)": e.decode.bytes / GiB,
                "Within max context": e.within_context,
            }
        )
    return pd.DataFrame(rows).set_index("Model")


def speed_components(
    models: Models,
    gpu: GPUArg = "h100",
    batch: int = 1,
    context: int = 2048,
    prompt: int = 512,
    dtype: str = "bf16",
    kv_dtype: Optional[str] = None,
    custom: Optional[tuple] = None,
) -> pd.DataFrame:
    """Long form: decode-step and prefill time per model and component, with bytes, FLOPs and the bound."""
    rows = []
    for label, e in _estimates(models, gpu, batch, context, prompt, dtype, kv_dtype, custom):
        for phase, p in (("decode step", e.decode), ("prefill", e.prefill)):
            for c in p.components():
                rows.append(
                    {
                        "model": label,
                        "phase": phase,
                        "component": c.component,
                        "component_label": COMPONENT_LABELS[c.component],
                        "time_ms": c.time_s * 1e3,
                        "bytes": c.bytes,
                        "flops": c.flops,
                        "bound": c.bound,
                        "share": c.time_s / p.time_s if p.time_s else 0.0,
                    }
                )
    return pd.DataFrame(
        rows, columns=["model", "phase", "component", "component_label", "time_ms", "bytes", "flops", "bound", "share"]
    )


def speed_workings(
    models: Models,
    gpu: GPUArg = "h100",
    batch: int = 1,
    context: int = 2048,
    prompt: int = 512,
    dtype: str = "bf16",
    kv_dtype: Optional[str] = None,
    custom: Optional[tuple] = None,
) -> dict[str, tuple[str, str]]:
    """Row label -> (decode working, prefill working) as Markdown."""
    return {
        label: (e.decode.working.markdown(md), e.prefill.working.markdown(md))
        for label, e in _estimates(models, gpu, batch, context, prompt, dtype, kv_dtype, custom)
    }


def speed_across_gpus(
    models: Models,
    batch: int = 1,
    context: int = 2048,
    prompt: int = 512,
    dtype: str = "bf16",
    kv_dtype: Optional[str] = None,
    mla: str = "engine",
    custom: Optional[tuple] = None,
) -> pd.DataFrame:
    """Long form: decode tok/s and prefill time of every model on every GPU of the table (and the custom one)."""
    rows = []
    for g in gpu_table.table() + ([gpu_of(gpu_table.CUSTOM, custom)] if custom else []):
        for label, src in models.items():
            try:
                e = estimate(_arch(src), g, batch, context, prompt, dtype, kv_dtype, mla)
            except ArchLabError:
                continue
            weights = _arch(src).counts.total * SPEED_DTYPES[dtype][0]
            rows.append(
                {
                    "model": label,
                    "gpu": g.name,
                    "tok_s": e.tok_s,
                    "batch_tok_s": e.total_tok_s,
                    "prefill_ms": e.prefill_s * 1e3,
                    "bound": e.decode.bound,
                    "weights_fit": weights <= g.memory_gb * 1e9,
                }
            )
    return pd.DataFrame(rows, columns=["model", "gpu", "tok_s", "batch_tok_s", "prefill_ms", "bound", "weights_fit"])


# ----------------------------------------------------------------- estimate vs measurement


def _keys(models: Models) -> dict[str, str]:
    """catalog key -> label for the models that are catalog models."""
    out = {}
    for label, src in models.items():
        key = src if isinstance(src, str) else (src.key if isinstance(src, Architecture) else None)
        if key:
            out.setdefault(key, label)
    return out


def measured_table(models: Models) -> pd.DataFrame:
    """ArchLab's decode measurements of the selected catalog models beside the estimate for the same shape."""
    keys = _keys(models)
    rows = []
    for m in measurements.decode_measurements():
        if m.key not in keys or m.gpu is None:
            continue
        e = m.estimate()
        rows.append(
            {
                "Model": keys[m.key],
                "Shape": "full depth"
                if m.layers == m.full_layers
                else f"first {m.layers} of {m.full_layers} layers, full width",
                "GPU": m.device,
                "Run": m.file,
                "Run tag": m.tag,
                "Context (mean)": m.context,
                "Estimate (tok/s)": e.tok_s,
                "Measured (tok/s)": m.tok_s,
                "Measured / estimate": m.tok_s / e.tok_s,
                "Measured + torch.compile (tok/s)": m.compiled_tok_s,
                "Copy bandwidth measured (TB/s)": m.copy_bandwidth_Bps / 1e12 if m.copy_bandwidth_Bps else None,
                "Estimate at measured copy bandwidth (tok/s)": (
                    e.tok_s * m.copy_bandwidth_Bps / m.gpu.bandwidth_Bps
                    if m.copy_bandwidth_Bps
                    and e.decode.bound == "memory"
                    and all(op.bound == "memory" for op in e.decode.ops)
                    else None
                ),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "Model",
            "Shape",
            "GPU",
            "Run",
            "Run tag",
            "Context (mean)",
            "Estimate (tok/s)",
            "Measured (tok/s)",
            "Measured / estimate",
            "Measured + torch.compile (tok/s)",
            "Copy bandwidth measured (TB/s)",
            "Estimate at measured copy bandwidth (tok/s)",
        ],
    )


def measured_models() -> list[str]:
    """Names of the catalog models ArchLab has decode measurements of (in catalog order)."""
    from ..arch import catalog

    keys = {m.key for m in measurements.decode_measurements()}
    return [e.name for e in catalog.entries() if e.key in keys]


def measured_workings(models: Models) -> dict[str, str]:
    """ "model · shape · run" -> the estimate's working for each measured row of the selected models."""
    keys = _keys(models)
    out = {}
    for m in measurements.decode_measurements():
        if m.key in keys and m.gpu is not None:
            out[f"{keys[m.key]} · {m.label} · {m.tag}"] = m.estimate().decode.working.markdown(md)
    return out


# ----------------------------------------------------------------- checkpoint metadata


def checkpoint_summary(path: str, context: int = 32768) -> dict:
    """Tables and workings of a checkpoint's metadata (safetensors headers or GGUF), for one page section."""
    ck = read_checkpoint(path)
    kinds = pd.DataFrame(
        [
            {
                "Stored as": k,
                "Tensors": n,
                "Bytes": b,
                "GiB": b / GiB,
                "Parameters": p,
                "Bits per parameter": 8 * b / p if p else None,
            }
            for k, (n, b, p) in ck.by("kind").items()
        ]
    ).set_index("Stored as")
    comps = pd.DataFrame(
        [
            {"Component": PARAM_LABELS.get(k, k), "Tensors": n, "Bytes": b, "GiB": b / GiB, "Parameters": p}
            for k, (n, b, p) in ck.by("component").items()
        ]
    ).set_index("Component")
    out = {
        "path": ck.path,
        "format": ck.format,
        "files": len(ck.files),
        "file_bytes": ck.file_bytes,
        "tensor_bytes": ck.tensor_bytes,
        "params": ck.params,
        "bits_per_param": ck.bits_per_param,
        "quant_method": ck.quant_method,
        "kv_dtype": ck.kv_dtype,
        "kv_dtype_source": ck.kv_dtype_source,
        "kinds": kinds,
        "components": comps,
        "working": ck.working().markdown(md),
        "kv_per_token": None,
        "kv_total": None,
        "kv_working": None,
        "config_bf16_bytes": None,
        "config_params": None,
        "kv_problem": None,
        "context": context,
    }
    if ck.config is not None:
        try:
            kv = checkpoint_kv(ck, context)
            arch = resolve(ck.config)
            out.update(
                kv_per_token=kv.per_token_bytes,
                kv_total=kv.total_bytes,
                kv_working=kv.working.markdown(md),
                config_params=arch.counts.total,
                config_bf16_bytes=arch.counts.total * 2,
            )
        except ArchLabError as e:
            out["kv_problem"] = str(e)
    return out


# ----------------------------------------------------------------- training memory


def training_table(
    models: Models,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    master_fp32: bool = True,
    checkpointing: bool = False,
    optimizer: str = "adamw",
    parallel: str = "none",
    gpus: int = 1,
) -> pd.DataFrame:
    """Per model: GiB per GPU of each part and the total, activations per token with and without checkpointing."""
    rows = []
    for label, src in models.items():
        r = train_memory.training_memory(
            _arch(src), batch, seq_len, dtype, master_fp32, checkpointing, optimizer, parallel, gpus
        )
        row = {"Model": label}
        row.update({f"{train_memory.PART_LABELS[k]} (GiB)": v / GiB for k, v in r.parts.items()})
        row["Total per GPU (GiB)"] = r.total / GiB
        row["Activations per token (KiB)"] = r.activation_per_token / 1024
        row["… with checkpointing (KiB)"] = r.activation_per_token_ckpt / 1024
        rows.append(row)
    df = pd.DataFrame(rows).set_index("Model")
    keep = [c for c in df.columns if not c.endswith("(GiB)") or c.startswith("Total") or (df[c] > 0).any()]
    return df[keep]


def training_long(
    models: Models,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    master_fp32: bool = True,
    checkpointing: bool = False,
    optimizer: str = "adamw",
    parallel: str = "none",
    gpus: int = 1,
) -> pd.DataFrame:
    """Long form (model, part, GiB) for stacked bars."""
    rows = []
    for label, src in models.items():
        r = train_memory.training_memory(
            _arch(src), batch, seq_len, dtype, master_fp32, checkpointing, optimizer, parallel, gpus
        )
        rows += [
            {"model": label, "part": k, "part_label": train_memory.PART_LABELS[k], "gib": v / GiB}
            for k, v in r.parts.items()
            if v
        ]
    return pd.DataFrame(rows, columns=["model", "part", "part_label", "gib"])


def training_workings(
    models: Models,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    master_fp32: bool = True,
    checkpointing: bool = False,
    optimizer: str = "adamw",
    parallel: str = "none",
    gpus: int = 1,
) -> dict[str, str]:
    return {
        label: train_memory.training_memory(
            _arch(src), batch, seq_len, dtype, master_fp32, checkpointing, optimizer, parallel, gpus
        ).working.markdown(md)
        for label, src in models.items()
    }


def training_measured(path: Optional[str] = None) -> Optional[pd.DataFrame]:
    """Measured training peaks (``bench/results/train-memory.json``, or ``path``) beside the estimate; None
    without the file."""
    rows = train_memory.measured_rows(path)
    if not rows:
        return None
    return pd.DataFrame(
        [
            {
                "Model": r.model,
                "GPU": r.gpu,
                "Batch": r.batch,
                "Sequence length": r.seq_len,
                "dtype": r.dtype,
                "fp32 master": r.master_fp32,
                "Checkpointing": r.checkpointing,
                "Estimate (GiB)": r.estimate.total / GiB,
                "Measured peak (GiB)": r.measured_peak_bytes / GiB,
                "Measured / estimate": r.ratio,
            }
            for r in rows
        ]
    )


# ----------------------------------------------------------------- workings of the existing figures


def params_workings(models: Models) -> dict[str, str]:
    """Label -> how total and active parameters are computed."""
    out = {}
    for label, src in models.items():
        a = _arch(src)
        out[label] = active_working(a.spec, a.counts.components).markdown(md)
    return out


def weights_workings(models: Models, dtype: str = "bf16") -> dict[str, str]:
    return {label: weights_working(_arch(src), dtype).markdown(md) for label, src in models.items()}


def kv_workings(
    models: Models, context: int, batch: int = 1, dtype: str = "bf16", mla_layout: str = "latent"
) -> dict[str, str]:
    return {
        label: kv_cache(_arch(src), context, batch, dtype, mla_layout).working.markdown(md)
        for label, src in models.items()
    }
