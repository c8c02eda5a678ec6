"""Expert routing: forward hooks on every router of a MoE model, and statistics over the records.

Routers are found generically: the ``gate``/``router`` child of each decoder layer's MLP block that
has ``experts``. Hooks keep what the router returned on its device (no host sync inside a hook);
``RoutingRecorder.collect`` moves one step's records to the host in one copy per device.
Routers return ``(logits, weights, indices)``, or ``(scores, logits)`` (full score matrix, zeros
off the chosen experts, e.g. Llama 4): the top-k of the scores is then the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..arch.errors import ArchLabError
from ..arch.spec import ArchSpec
from .routers import router_choice, router_modules


@dataclass
class StepRouting:
    step: int  # 0 = prefill (all prompt tokens), then one per generated token
    token_ids: list[int]  # tokens routed at this step
    layers: dict[int, tuple[np.ndarray, np.ndarray]]  # layer -> (indices [T,k] int, weights [T,k] float)


@dataclass
class RoutingTrace:
    moe_layers: list[int]
    num_experts: int
    top_k: int
    steps: list[StepRouting] = field(default_factory=list)

    def add(self, step: StepRouting) -> None:
        self.steps.append(step)

    @classmethod
    def for_spec(cls, spec: ArchSpec) -> "RoutingTrace":
        if spec.moe is None:
            raise ArchLabError(f"{spec.model_type} has no mixture-of-experts layers to trace")
        return cls(list(spec.moe.layers), spec.moe.num_experts, spec.moe.top_k)


def find_routers(model) -> dict[int, object]:
    """Decoder layer index -> router module, for every MoE block of the model."""
    return dict(router_modules(model))


class RoutingRecorder:
    """Context manager: hooks every router; ``collect(step, token_ids)`` after each forward."""

    def __init__(self, model, spec: ArchSpec):
        if spec.moe is None:
            raise ArchLabError(f"{spec.model_type} has no mixture-of-experts layers to record")
        self.model, self.spec, self.top_k = model, spec, spec.moe.top_k
        self.routers = find_routers(model)
        if not self.routers:
            raise ArchLabError(f"found no router modules in {type(model).__name__}")
        self._pending: dict[int, tuple] = {}
        self._handles: list = []

    def _hook(self, layer: int):
        def hook(module, _inputs, output):
            idx, w = router_choice(module, output)
            self._pending[layer] = (idx.detach(), w.detach())  # fresh tensors: no copy needed

        return hook

    def __enter__(self) -> "RoutingRecorder":
        self._handles = [r.register_forward_hook(self._hook(i)) for i, r in self.routers.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._pending.clear()

    def collect(self, step: int, token_ids: list[int]) -> StepRouting:
        """What the hooks saw since the last call, on the host, as one step's record."""
        return StepRouting(step, list(token_ids), self.take())

    def take(self) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Move what the hooks saw since the last call to the host (one copy per device)."""
        import torch

        pending, self._pending = self._pending, {}
        by_device: dict = {}
        for layer, (idx, w) in sorted(pending.items()):
            by_device.setdefault(idx.device, []).append((layer, idx, w))
        layers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for device, items in by_device.items():
            if device.type == "cpu":  # already on the host: view the tensors, no concatenation or copy
                for layer, i, x in items:
                    k = i.shape[-1]
                    layers[layer] = (i.reshape(-1, k).numpy(), x.reshape(-1, k).float().numpy())
                continue
            idx = torch.cat([i.reshape(-1, i.shape[-1]).to(torch.int64) for _, i, _ in items]).cpu().numpy()
            w = torch.cat([x.reshape(-1, x.shape[-1]).float() for _, _, x in items]).cpu().numpy()
            start = 0
            for layer, i, _ in items:
                n = i.numel() // i.shape[-1]
                layers[layer] = (idx[start : start + n], w[start : start + n])
                start += n
        return layers


# ----------------------------------------------------------------- statistics


def _steps(trace: RoutingTrace, steps: Optional[slice]) -> list[StepRouting]:
    return trace.steps if steps is None else trace.steps[steps]


def expert_load(trace: RoutingTrace, steps: Optional[slice] = None) -> np.ndarray:
    """[n_moe_layers, E] how often each expert was chosen (rows follow ``trace.moe_layers``)."""
    load = np.zeros((len(trace.moe_layers), trace.num_experts), dtype=np.int64)
    row = {layer: r for r, layer in enumerate(trace.moe_layers)}
    for s in _steps(trace, steps):
        for layer, (idx, _w) in s.layers.items():
            load[row[layer]] += np.bincount(idx.ravel(), minlength=trace.num_experts)[: trace.num_experts]
    return load


def balance(load: np.ndarray) -> dict:
    """Coefficient of variation, max/mean and normalized entropy (1 = uniform) of a load vector,
    or of each row of a matrix (arrays then). All-zero loads give NaN."""
    a = np.asarray(load, dtype=float)
    mean = a.mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = a.std(axis=-1) / mean
        mx = a.max(axis=-1) / mean
        p = a / a.sum(axis=-1, keepdims=True)
        ent = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(axis=-1) / np.log(a.shape[-1])
        ent = np.where(mean > 0, ent, np.nan)
    if a.ndim == 1:
        return {"cv": float(cv), "max_over_mean": float(mx), "entropy": float(ent)}
    return {"cv": cv, "max_over_mean": mx, "entropy": ent}


def balance_over_time(trace: RoutingTrace):
    """Balance of the cumulative load after each step: columns step, layer, cv, max_over_mean, entropy."""
    import pandas as pd

    rows = []
    cum = np.zeros((len(trace.moe_layers), trace.num_experts), dtype=np.int64)
    for k, s in enumerate(trace.steps):
        cum += expert_load(trace, slice(k, k + 1))
        b = balance(cum)
        for r, layer in enumerate(trace.moe_layers):
            rows.append((s.step, layer, b["cv"][r], b["max_over_mean"][r], b["entropy"][r]))
    return pd.DataFrame(rows, columns=["step", "layer", "cv", "max_over_mean", "entropy"])


def token_layer_experts(trace: RoutingTrace):
    """One row per (token, layer, rank): position, token_id, layer, rank, expert, weight."""
    import pandas as pd

    rows = []
    pos = 0
    for s in trace.steps:
        for layer, (idx, w) in sorted(s.layers.items()):
            for t in range(idx.shape[0]):
                tok = s.token_ids[t] if t < len(s.token_ids) else -1
                for r in range(idx.shape[1]):
                    rows.append((pos + t, tok, layer, r, int(idx[t, r]), float(w[t, r])))
        pos += max((v[0].shape[0] for v in s.layers.values()), default=len(s.token_ids))
    return pd.DataFrame(rows, columns=["position", "token_id", "layer", "rank", "expert", "weight"])


def coselection(trace: RoutingTrace, layer: int) -> np.ndarray:
    """[E,E] how often two experts served the same token in ``layer`` (diagonal: selections)."""
    if layer not in trace.moe_layers:
        raise ArchLabError(f"layer {layer} is not a MoE layer (MoE layers: {trace.moe_layers})")
    E = trace.num_experts
    co = np.zeros((E, E), dtype=np.int64)
    for s in trace.steps:
        if layer not in s.layers:
            continue
        idx = s.layers[layer][0]
        onehot = np.zeros((idx.shape[0], E), dtype=np.int64)
        np.put_along_axis(onehot, idx, 1, axis=1)
        co += onehot.T @ onehot
    return co


def shared_share(spec: ArchSpec) -> float:
    """Share of the per-token expert FFN width that shared (always-on) experts provide."""
    moe = spec.moe
    if moe is None or moe.num_shared == 0:
        return 0.0
    routed = moe.top_k * moe.expert_width
    return moe.shared_width / (moe.shared_width + routed)
