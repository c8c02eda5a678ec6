"""ArchLab's own decode measurements (``bench/results/gpu-*.json``, written by ``bench/gpu.py``) beside the
roofline estimate for the same shape.

Each measured row is one model (or its first k layers at full width) decoding at batch 1 in bf16 after a
32-token prompt (``bench/gpu.py``'s ``prompt()``), ``tokens`` new tokens, steady rate after the warm-up
steps. The estimate is computed for that shape on the table's GPU whose device name matches, at the mean
context of the timed steps, with MLA run as transformers runs it (the measured code). Nothing is fitted:
the ratio measured / estimate is shown as it is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from . import gpus
from .architecture import resolve, with_layers
from .catalog import raw_config
from .errors import ArchLabError
from .roofline import SpeedEstimate, estimate

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
#: prompt tokens of every bench/gpu.py decode measurement (its ``prompt()``)
BENCH_PROMPT_TOKENS = 32


@dataclass(frozen=True)
class DecodeMeasurement:
    file: str
    device: str  # torch device name
    gpu: Optional[gpus.GPU]  # the table's GPU of that name (None: not in the table)
    key: str
    layers: int
    full_layers: int
    tokens: int
    tok_s: float  # fast path (static cache + CUDA graph), steady decode
    compiled_tok_s: Optional[float]
    copy_bandwidth_Bps: Optional[float]

    @property
    def context(self) -> int:
        """Mean context of the timed decode steps."""
        return BENCH_PROMPT_TOKENS + self.tokens // 2

    @property
    def tag(self) -> str:
        """The run's short name: the file name without ``gpu-``, the device part and ``.json``."""
        stem = self.file[:-5] if self.file.endswith(".json") else self.file
        stem = stem[4:] if stem.startswith("gpu-") else stem
        device = self.device.replace(" ", "_")
        if device in stem:  # bench/gpu.py names files gpu-<device>x<count>[-tag].json
            stem = re.sub(r"^x\d+-?", "", stem.split(device, 1)[1]) or stem
        return stem

    @property
    def label(self) -> str:
        return (
            self.key if self.layers == self.full_layers else f"{self.key} [{self.layers} of {self.full_layers} layers]"
        )

    def estimate(self, gpu: Optional[gpus.GPU] = None) -> SpeedEstimate:
        """The roofline estimate for this shape (on ``gpu``, else the measured GPU)."""
        g = gpu or self.gpu
        if g is None:
            raise ArchLabError(f"{self.device} is not in the GPU table")
        src = self.key if self.layers == self.full_layers else with_layers(self.key, self.layers)
        return estimate(resolve(src), g, 1, self.context, BENCH_PROMPT_TOKENS, "bf16", "bf16", "transformers")


def decode_measurements(results: Path = RESULTS) -> list[DecodeMeasurement]:
    """Every measured decode row of ``gpu-*.json`` whose model is a catalog key (files in name order)."""
    out = []
    for f in sorted(results.glob("gpu-*.json")):
        try:
            data = json.loads(f.read_text())
            device = str(data["gpu"])
            for r in data.get("rows") or []:
                if not r.get("fast_tok_s"):
                    continue
                key = str(r["key"])
                try:
                    cfg = raw_config(key)
                except ArchLabError:
                    continue
                full = int(cfg.get("num_hidden_layers") or cfg.get("n_layer"))
                out.append(
                    DecodeMeasurement(
                        f.name,
                        device,
                        gpus.by_device_name(device),
                        key,
                        int(r["layers"]),
                        full,
                        int(data["tokens"]),
                        float(r["fast_tok_s"]),
                        float(r["compiled_tok_s"]) if r.get("compiled_tok_s") else None,
                        float(data["copy_bandwidth_Bps"]) if data.get("copy_bandwidth_Bps") else None,
                    )
                )
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ArchLabError(f"{f.name} is not a bench/gpu.py result ({type(e).__name__}: {str(e)[:120]})") from None
    return out


def measured_for(key: str, results: Path = RESULTS) -> list[DecodeMeasurement]:
    """Measurements of one catalog model (full depth or fewer layers)."""
    return [m for m in decode_measurements(results) if m.key == key]
