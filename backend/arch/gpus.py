"""GPUs for speed estimates: the published table in ``assets/gpus.json`` plus a custom entry.

Each GPU has its peak memory bandwidth and dense tensor-core FLOP/s for bf16 and fp8, as the vendor
publishes them (sources in the JSON). A GPU is data: add a row to the JSON, no code.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from .catalog import ASSETS
from .errors import ArchLabError

#: Limits of a custom GPU (far above any real part; larger is a typo).
MAX_BANDWIDTH_TBS = 1000.0
MAX_TFLOPS = 1_000_000.0
CUSTOM = "custom"


@dataclass(frozen=True)
class GPU:
    key: str
    name: str
    vendor: str
    memory_gb: float
    bandwidth_Bps: float
    bf16_flops: float
    fp8_flops: Optional[float]
    source: str = ""
    device_names: tuple[str, ...] = ()

    def flops(self, compute: str) -> float:
        """Peak dense FLOP/s for a compute dtype ("bf16" or "fp8")."""
        if compute == "fp8":
            if not self.fp8_flops:
                raise ArchLabError(f"{self.name} has no fp8 tensor cores")
            return self.fp8_flops
        return self.bf16_flops

    @property
    def ridge_bf16(self) -> float:
        """FLOP per byte above which a bf16 kernel is compute-bound on this GPU."""
        return self.bf16_flops / self.bandwidth_Bps


@lru_cache(maxsize=1)
def _table() -> dict[str, GPU]:
    rows = json.loads((ASSETS / "gpus.json").read_text())["gpus"]
    return {
        r["key"]: GPU(
            r["key"],
            r["name"],
            r["vendor"],
            float(r["memory_gb"]),
            float(r["bandwidth_Bps"]),
            float(r["bf16_flops"]),
            None if r["fp8_flops"] is None else float(r["fp8_flops"]),
            r["source"],
            tuple(r.get("device_names", ())),
        )
        for r in rows
    }


def keys() -> list[str]:
    """Keys of the published GPUs, in table order."""
    return list(_table())


def table() -> list[GPU]:
    return list(_table().values())


def get(key: str) -> GPU:
    """A GPU of the table by key (case-insensitive). ArchLabError names the keys otherwise."""
    gpu = _table().get(str(key).strip().lower())
    if gpu is None:
        raise ArchLabError(f"unknown GPU {key!r}; choose one of {', '.join(keys())} or a custom GPU")
    return gpu


def by_device_name(name: str) -> Optional[GPU]:
    """The table's GPU whose torch device name is ``name`` (None if not in the table)."""
    return next((g for g in _table().values() if name in g.device_names), None)


def _positive(v, what: str, hi: float) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ArchLabError(f"{what} must be a number, got {v!r}") from None
    if not (math.isfinite(f) and 0 < f <= hi):
        raise ArchLabError(f"{what} must be above 0 and at most {hi:,g}, got {v!r}")
    return f


def custom(
    bandwidth_tbs: float,
    bf16_tflops: float,
    fp8_tflops: Optional[float] = None,
    memory_gb: float = 80.0,
    name: str = "custom GPU",
) -> GPU:
    """A GPU of your own: bandwidth in TB/s (10¹² bytes/s), dense FLOP/s in TFLOP/s."""
    bw = _positive(bandwidth_tbs, "bandwidth (TB/s)", MAX_BANDWIDTH_TBS)
    bf = _positive(bf16_tflops, "bf16 TFLOP/s", MAX_TFLOPS)
    f8 = None if fp8_tflops in (None, 0, 0.0) else _positive(fp8_tflops, "fp8 TFLOP/s", MAX_TFLOPS)
    mem = _positive(memory_gb, "memory (GB)", 1e6)
    return GPU(
        CUSTOM,
        f"{name} ({bw:g} TB/s, {bf:g} TFLOP/s bf16)",
        "custom",
        mem,
        bw * 1e12,
        bf * 1e12,
        None if f8 is None else f8 * 1e12,
        "entered by the user",
    )
