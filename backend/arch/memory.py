"""Memory: weights by dtype, KV cache per token and at a context length, and a multi-GPU plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .architecture import Architecture, Source, resolve
from .errors import ArchLabError
from .spec import ArchSpec
from .working import Working, num

#: Bytes per parameter (int4 counts the 4-bit payload only, without group scales).
DTYPE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5}
GiB = 1024**3
MAX_CONTEXT = 1 << 26  # 64M tokens: any larger request is a typo
MAX_BATCH = 1 << 16


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ArchLabError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_BYTES)}") from None


def weight_bytes(source: Source, dtype: str = "bf16") -> int:
    """Bytes of all weights stored at ``dtype``."""
    return int(weights_working(source, dtype).value("weights"))


def weights_working(source: Source, dtype: str = "bf16") -> Working:
    """Weight bytes at ``dtype`` with the formula and this model's numbers (``weight_bytes`` reads it)."""
    arch = source if isinstance(source, Architecture) else resolve(source)
    b, total = dtype_bytes(dtype), arch.counts.total
    w = Working(f"Weights of {arch.label} in {dtype}")
    w.step("weights", "parameters × bytes per parameter", f"{num(total)} × {num(b)}", int(total * b), "B")
    if dtype == "int4":
        w.note("int4 counts the 4-bit payload only; quantization scales and zero points come on top.")
    return w


def weights_table(source: Source) -> dict[str, int]:
    """Weight bytes for every dtype we know."""
    total = (source if isinstance(source, Architecture) else resolve(source)).counts.total
    return {d: int(total * b) for d, b in DTYPE_BYTES.items()}


# ----------------------------------------------------------------- KV cache


def layer_kv_elements_per_token(spec: ArchSpec, attention: str, mla_layout: str = "latent") -> int:
    """Cached elements per token for one layer of a given attention type.

    MLA ``latent`` is what an MLA-aware engine caches (compressed KV + the shared RoPE key), and what
    transformers 5.2x caches (measured on an H100, bench/gpu.py); ``expanded`` is what a cache holds
    if keys and values are decompressed before caching, as MHA would.
    """
    if attention == "linear":
        return 0
    if spec.mla is not None:
        if mla_layout == "latent":
            return spec.mla.kv_lora_rank + spec.mla.qk_rope_head_dim
        return spec.num_heads * (spec.head_dim + spec.v_head_dim)
    return spec.num_kv_heads * (spec.head_dim + spec.v_head_dim)


def linear_state_elements(spec: ArchSpec) -> int:
    """Fixed per-sequence state of one linear-attention layer (conv window + recurrent matrix)."""
    la = spec.linear
    if la is None:
        return 0
    conv_dim = 2 * la.num_key_heads * la.key_head_dim + la.num_value_heads * la.value_head_dim
    return conv_dim * la.conv_kernel + la.num_value_heads * la.key_head_dim * la.value_head_dim


@dataclass(frozen=True)
class KVCache:
    context: int
    batch: int
    dtype: str
    per_token_bytes: float  # the first token's cost over all layers (no window cap)
    total_bytes: int  # at ``context`` tokens and ``batch`` sequences
    by_layer_type: dict  # attention type -> bytes at this context and batch
    working: Optional[Working] = field(default=None, compare=False, repr=False)  # the formula, with numbers

    @property
    def per_token_at_context(self) -> float:
        """Average bytes per cached token at this context (windows make it fall with length)."""
        return self.total_bytes / (self.context * self.batch) if self.context and self.batch else 0.0


def _check_context(context: int, batch: int) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or not 0 < context <= MAX_CONTEXT:
        raise ArchLabError(f"context length must be an integer from 1 to {MAX_CONTEXT:,}, got {context!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 0 < batch <= MAX_BATCH:
        raise ArchLabError(f"batch size must be an integer from 1 to {MAX_BATCH:,}, got {batch!r}")


def kv_cache(source: Source, context: int, batch: int = 1, dtype: str = "bf16", mla_layout: str = "latent") -> KVCache:
    """KV-cache bytes for ``batch`` sequences of ``context`` tokens.

    Sliding-window and chunked layers keep at most ``window`` tokens; linear-attention layers keep
    a fixed state whatever the length.
    """
    _check_context(context, batch)
    arch = source if isinstance(source, Architecture) else resolve(source)
    return arch.memo(
        ("kv", context, batch, dtype, mla_layout), lambda: _kv(arch.spec, context, batch, dtype, mla_layout)
    )


def _kv(spec: ArchSpec, context: int, batch: int, dtype: str, mla_layout: str) -> KVCache:
    b = dtype_bytes(dtype)
    per_token = 0.0
    by_type: dict[str, float] = {}
    layers: dict[str, int] = {}
    for layer in spec.layers:
        elems = layer_kv_elements_per_token(spec, layer.attention, mla_layout)
        per_token += elems * b
        if layer.attention == "linear":
            n = linear_state_elements(spec) * batch * b
        else:
            tokens = min(context, spec.window) if layer.attention in ("sliding", "chunked") and spec.window else context
            n = elems * tokens * batch * b
        by_type[layer.attention] = by_type.get(layer.attention, 0) + n
        layers[layer.attention] = layers.get(layer.attention, 0) + 1
    total = int(sum(by_type.values()))
    return KVCache(
        context,
        batch,
        dtype,
        per_token,
        total,
        {k: int(v) for k, v in by_type.items()},
        _kv_working(spec, context, batch, dtype, mla_layout, layers, by_type, per_token, total),
    )


def _kv_working(
    spec: ArchSpec,
    context: int,
    batch: int,
    dtype: str,
    mla_layout: str,
    layers: dict,
    by_type: dict,
    per_token: float,
    total: int,
) -> Working:
    """The KV figures of ``_kv`` written out with this model's numbers."""
    b = dtype_bytes(dtype)
    w = Working(f"KV cache: {context:,} tokens × {batch} sequence(s) in {dtype}")
    parts = []
    for kind, n in layers.items():
        elems = layer_kv_elements_per_token(spec, kind, mla_layout)
        if kind == "linear":
            state = linear_state_elements(spec)
            w.step(
                f"{n} linear-attention layers, fixed state",
                "n × state elements × B × b",
                f"{n} × {num(state)} × {batch} × {num(b)}",
                by_type[kind],
                "B",
            )
            continue
        if spec.mla is not None and mla_layout == "latent":
            f, v = "r_kv + d_rope", f"{spec.mla.kv_lora_rank} + {spec.mla.qk_rope_head_dim}"
        elif spec.mla is not None:
            f, v = "heads × (d_qk + d_v)", f"{spec.num_heads} × ({spec.head_dim} + {spec.v_head_dim})"
        else:
            f, v = "kv_heads × (d_k + d_v)", f"{spec.num_kv_heads} × ({spec.head_dim} + {spec.v_head_dim})"
        w.step(f"cached elements per token, one {kind} layer", f, v, elems)
        parts.append(f"{n} × {num(elems)}")
        capped = kind in ("sliding", "chunked") and spec.window
        tokens = min(context, spec.window) if capped else context
        w.step(
            f"{n} {kind} layers at this context",
            "n × elements × " + ("min(L, W)" if capped else "L") + " × B × b",
            f"{n} × {num(elems)} × {num(tokens)} × {batch} × {num(b)}",
            by_type[kind],
            "B",
        )
    w.step(
        "KV bytes per token, no window",
        "Σ n × elements × b",
        f"({' + '.join(parts) or '0'}) × {num(b)}",
        per_token,
        "B",
    )
    w.step("KV cache total", "Σ over layer kinds", " + ".join(num(int(v)) for v in by_type.values()), total, "B")
    return w


def kv_curve(
    source: Source, contexts: list[int], batch: int = 1, dtype: str = "bf16", mla_layout: str = "latent"
) -> list[int]:
    """Total KV bytes at each context length (for charts)."""
    return [kv_cache(source, c, batch, dtype, mla_layout).total_bytes for c in contexts]


# ----------------------------------------------------------------- device plan


@dataclass(frozen=True)
class DevicePlan:
    device_map: dict[str, object]  # module name -> device (int GPU index, "cpu" or "disk")
    bytes_per_device: dict[str, int]  # device label -> weight bytes placed there
    layers_per_device: dict[str, int]
    fits: bool  # everything on the GPUs

    @property
    def devices(self) -> list[str]:
        return list(self.bytes_per_device)


def _parse_gib(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ArchLabError(f"GPU memory must be a number of GiB, got {v!r}") from None
    if not 0 < f <= 100_000:
        raise ArchLabError(f"GPU memory must be between 0 and 100,000 GiB, got {v!r}")
    return f


def device_plan(
    source: Source, gpu_gib: list[float], dtype: str = "bf16", cpu_gib: float = 0, reserve_gib: float = 0.0
) -> DevicePlan:
    """Where ``accelerate.infer_auto_device_map`` would put each block over GPUs of the given sizes.

    Decoder layers are never split across devices. ``reserve_gib`` is kept free on each GPU
    (for the KV cache and activations). Whatever does not fit goes to "cpu", then "disk".
    """
    if not gpu_gib or len(gpu_gib) > 64:
        raise ArchLabError("give between 1 and 64 GPUs")
    sizes = tuple(_parse_gib(g) for g in gpu_gib)
    arch = source if isinstance(source, Architecture) else resolve(source)
    return arch.memo(
        ("plan", sizes, dtype, float(cpu_gib), float(reserve_gib)),
        lambda: _plan(arch, sizes, dtype, float(cpu_gib), float(reserve_gib)),
    )


def _plan(arch, sizes: tuple, dtype: str, cpu_gib: float, reserve_gib: float) -> DevicePlan:
    import warnings

    import torch
    from accelerate import infer_auto_device_map
    from accelerate.utils import compute_module_sizes

    torch_dtype = {
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
        "fp8": torch.float8_e4m3fn,
    }.get(dtype)
    if torch_dtype is None:
        raise ArchLabError(f"device plans support fp32, bf16, fp16 and fp8, not {dtype!r}")
    model, spec = arch.meta_model, arch.spec
    max_memory = {i: int(max(g - reserve_gib, 0.01) * GiB) for i, g in enumerate(sizes)}
    max_memory["cpu"] = int(cpu_gib * GiB) if cpu_gib else 0
    import logging

    alog = logging.getLogger("accelerate.utils.modeling")
    level, alog.level = alog.level, logging.ERROR  # "Device 0 is not available" on GPU-less hosts
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dmap = infer_auto_device_map(
                model, max_memory=max_memory, dtype=torch_dtype, no_split_module_classes=[spec.decoder_layer_class]
            )
    finally:
        alog.setLevel(level)
    module_sizes = compute_module_sizes(model, dtype=torch_dtype)
    layer_names = [n for n, m in model.named_modules() if type(m).__name__ == spec.decoder_layer_class]
    per_dev: dict[str, int] = {}
    layers: dict[str, int] = {}
    for name, dev in dmap.items():
        label = f"GPU {dev}" if isinstance(dev, int) else str(dev)
        per_dev[label] = per_dev.get(label, 0) + int(module_sizes[name])
        # Decoder layers inside this map entry (the entry may be one layer, the stack, or the whole model).
        inside = sum(1 for n in layer_names if not name or n == name or n.startswith(name + "."))
        layers[label] = layers.get(label, 0) + inside
    fits = all(isinstance(d, int) for d in dmap.values())
    return DevicePlan(dict(dmap), per_dev, layers, fits)
