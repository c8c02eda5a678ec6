"""Memory of a loaded model: what backend.memory predicts beside what the devices report.

Predictions come from the model's own config (weights at its dtype, the fast path's static KV
cache); measurements from the tensors themselves and, on GPUs, ``torch.cuda.memory_allocated``.
"""

from __future__ import annotations

from ..arch.architecture import Architecture, Source, resolve
from ..arch.memory import DTYPE_BYTES, kv_cache, linear_state_elements

_TORCH_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _config_dict(model) -> dict:
    d = model.config.to_dict()
    for k in ("quantization_config", "auto_map"):
        d.pop(k, None)
    return d


def static_cache_bytes(source: Source, tokens: int, dtype: str) -> int:
    """Bytes of the GPU fast path's static cache: every attention layer keeps ``tokens`` positions."""
    arch = source if isinstance(source, Architecture) else resolve(source)
    kv = kv_cache(arch, 1, 1, dtype)
    spec = arch.spec
    linear = spec.count("linear") * linear_state_elements(spec) * DTYPE_BYTES[dtype]
    return int(kv.per_token_bytes * tokens + linear)


def memory_check(lm) -> list[dict]:
    """Rows (device, predicted bytes, measured bytes, what) for a ``runtime.LoadedModel``."""
    import torch

    model = lm.model
    # Predicted from the config of the model as built (independently of the tensors measured below).
    src = lm.arch if getattr(lm, "arch", None) is not None else resolve(_config_dict(model))
    dtype = _TORCH_DTYPE.get(str(next(model.parameters()).dtype).replace("torch.", ""), "fp32")
    predicted_weights = int(src.counts.total * DTYPE_BYTES[dtype])
    measured_weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = [
        {
            "what": "weights (all devices)",
            "device": lm.device_summary,
            "predicted_bytes": predicted_weights,
            "measured_bytes": measured_weights,
            "how measured": "sum of parameter tensors",
        }
    ]
    dec = getattr(lm, "decoder", None)
    if dec is not None:
        predicted = static_cache_bytes(src, dec.max_cache_len, dtype)
        measured = (
            sum(
                t.numel() * t.element_size()
                for layer in dec.cache.layers
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                if t is not None and t.numel() > 0
            )
            if hasattr(dec.cache, "layers")
            else None
        )
        rows.append(
            {
                "what": f"static KV cache ({dec.max_cache_len:,} tokens)",
                "device": lm.device_summary,
                "predicted_bytes": predicted,
                "measured_bytes": measured,
                "how measured": "cache tensors (allocated at first use)",
            }
        )
    if torch.cuda.is_available():
        devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
        for d in devices:
            on_d = sum(p.numel() * p.element_size() for p in model.parameters() if p.device == d)
            rows.append(
                {
                    "what": "allocated on GPU (this process)",
                    "device": str(d),
                    "predicted_bytes": on_d,
                    "measured_bytes": torch.cuda.memory_allocated(d),
                    "how measured": "torch.cuda.memory_allocated (includes other loaded models)",
                }
            )
    return rows


def _planned_device(name: str, device_map: dict[str, str]) -> str | None:
    """The device ``device_map`` gives the parameter ``name`` (its longest matching module prefix)."""
    best, where = -1, None
    for module, dev in device_map.items():
        if (module == "" or name == module or name.startswith(module + ".")) and len(module) > best:
            best, where = len(module), dev
    return where


def placement_check(model, device_map: dict[str, str]) -> dict:
    """Where a device map puts each parameter beside where it is: bytes per device planned and actual,
    and the parameters found elsewhere (``misplaced``, at most 20 named; ``misplaced_count`` in all)."""
    planned: dict[str, int] = {}
    actual: dict[str, int] = {}
    misplaced: list[str] = []
    count = 0
    seen = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = p.numel() * p.element_size()
        want = str(_planned_device(name, device_map))
        planned[want] = planned.get(want, 0) + size
        actual[str(p.device)] = actual.get(str(p.device), 0) + size
        if str(p.device) != want:
            count += 1
            if len(misplaced) < 20:
                misplaced.append(f"{name}: planned {want}, on {p.device}")
    return {"planned_bytes": planned, "actual_bytes": actual, "misplaced": misplaced, "misplaced_count": count}


def placement_rows(lm) -> list[dict]:
    """One row per device of a ``runtime.LoadedModel``: bytes its device map puts there vs bytes there."""
    check = placement_check(lm.model, lm.device_map)
    devices = sorted(set(check["planned_bytes"]) | set(check["actual_bytes"]))
    return [
        {
            "device": d,
            "planned_bytes": check["planned_bytes"].get(d, 0),
            "actual_bytes": check["actual_bytes"].get(d, 0),
            "misplaced": check["misplaced_count"],
        }
        for d in devices
    ]
