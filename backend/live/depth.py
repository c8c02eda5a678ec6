"""Full width, fewer layers: speed of a model too large for the hardware, extrapolated to full depth.

A variant keeps every tensor shape of the real model but only its first ``k`` decoder layers
(:func:`backend.arch.architecture.with_layers`). The cost of one more layer is measured, not assumed: the
decode step is timed on the loaded ``k``-layer model and on a ``k - 1``-layer view of it that
shares its weights (no extra weight memory), the same way the Playground decodes (CUDA graph on a
GPU). Full depth then costs ``step(k) + (n - k) × per-layer``, assuming the layers past ``k`` cost
what layer ``k`` costs (true when they are of one kind, e.g. DeepSeek-V3's MoE layers after its
three dense ones; pick ``k`` past such a prefix).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

from ..arch.architecture import resolve, with_layers
from ..arch.errors import ArchLabError

#: Decode steps timed per depth (after warm-up), and the prompt length they decode after.
STEPS, WARM, PROMPT, ROUNDS = 32, 4, 8, 2


@dataclass(frozen=True)
class DepthEstimate:
    """Per-layer decode cost measured at ``layers`` and ``shallower_layers``, extrapolated to ``full_layers``."""

    layers: int
    full_layers: int
    step_s: float  # decode step at ``layers``
    shallower_step_s: float  # decode step at ``shallower_layers``
    graph: bool  # timed as CUDA graph replays (else eager static-cache steps)
    shallower_layers: Optional[int] = None  # default ``layers - 1``

    @property
    def below(self) -> int:
        """The shallower depth timed."""
        return self.layers - 1 if self.shallower_layers is None else self.shallower_layers

    @property
    def per_layer_s(self) -> float:
        return (self.step_s - self.shallower_step_s) / (self.layers - self.below)

    @property
    def measurable(self) -> bool:
        """The extra layer costs more than the timing noise (it can come out ≤ 0 on a busy CPU)."""
        return self.per_layer_s > 0

    @property
    def full_step_s(self) -> float:
        return self.step_s + self.per_layer_s * (self.full_layers - self.layers) if self.measurable else float("nan")

    @property
    def full_tok_s(self) -> float:
        return 1.0 / self.full_step_s if self.measurable else float("nan")

    @property
    def note(self) -> str:
        if not self.measurable:
            return (
                f"the step at {self.layers} layers was not slower than at {self.below} "
                "(timing noise): no extrapolation; run again on an idle machine"
            )
        return (
            f"decode step timed at {self.layers} and {self.below} layers "
            f"({'CUDA graph' if self.graph else 'eager'}); layers {self.layers + 1}–{self.full_layers} "
            f"assumed to cost what layer {self.layers} costs"
        )


def two_depth_tok_s(a_layers: int, a_tok_s: float, b_layers: int, b_tok_s: float, full_layers: int) -> float:
    """tok/s at ``full_layers`` from decode speeds measured at two depths (per-layer cost = the slope)."""
    if a_layers == b_layers or min(a_tok_s, b_tok_s) <= 0:
        raise ArchLabError("need two different depths with positive speeds")
    (lo, lo_tok_s), (hi, hi_tok_s) = sorted([(a_layers, a_tok_s), (b_layers, b_tok_s)])
    return DepthEstimate(hi, full_layers, 1 / hi_tok_s, 1 / lo_tok_s, True, lo).full_tok_s


def num_layers(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "num_hidden_layers", None) or cfg.n_layer)


def shallower(model, layers: int):
    """A view of ``model`` with only its first ``layers`` decoder layers, sharing its weight tensors."""
    import torch

    from ..arch import patches
    from ..arch.meta import building

    d = model.config.to_dict()
    d.pop("quantization_config", None)
    cfg = resolve(with_layers(d, layers)).config
    with building(), torch.device("meta"):
        view = patches.from_config(cfg, dtype=next(model.parameters()).dtype)
    state = model.state_dict()
    missing = [k for k in view.state_dict() if k not in state]
    if missing:
        raise ArchLabError(f"cannot make a {layers}-layer view: {missing[0]} has no counterpart")
    view.load_state_dict({k: state[k] for k in view.state_dict()}, assign=True, strict=True)
    for name, _ in list(view.named_buffers()):  # non-persistent buffers (rotary frequencies) are not in state
        module, _, attr = name.rpartition(".")
        source = model.get_submodule(module) if module else model
        (view.get_submodule(module) if module else view)._buffers[attr] = source._buffers[attr]
    view.tie_weights()
    return view.eval()


def _step_seconds(model, steps: int = STEPS) -> tuple[float, bool]:
    """Median decode-step time of ``model`` the way the Playground decodes, and whether as a graph."""
    import torch

    from .fastdecode import GraphDecoder, can_use, pack_step, sample

    graph = can_use(model)
    device = next(model.parameters()).device
    dec = GraphDecoder(model, PROMPT + WARM + steps + 2, use_graph=graph)
    try:
        with torch.inference_mode():
            ids = torch.arange(PROMPT, device=device).unsqueeze(0) % model.config.vocab_size
            out = dec.prefill(ids)
            tok = sample(out.logits, 0.0, 1.0, None)
            times = []
            for i in range(WARM + steps):
                t = time.perf_counter()
                out = dec.step(tok)
                tok = sample(out.logits, 0.0, 1.0, None)
                packed, _ = pack_step(tok, out)
                packed.cpu()  # the step's one host copy, as when streaming
                if i >= WARM:
                    times.append(time.perf_counter() - t)
        return sorted(times)[len(times) // 2], dec.graph is not None
    finally:
        dec.close()


def estimate(model, full_layers: int) -> DepthEstimate:
    """Time the decode step of a fewer-layer ``model`` at its depth and one layer less; extrapolate."""
    k = num_layers(model)
    if k < 2:
        raise ArchLabError("the per-layer cost needs a variant of at least 2 layers")
    if full_layers < k:
        raise ArchLabError(f"full depth {full_layers} is less than the {k} layers run")
    view = shallower(model, k - 1)
    shallow, step = [], []
    try:
        for _ in range(ROUNDS):  # interleaved, best of each: drift and stray load hit both alike
            shallow.append(_step_seconds(view)[0])
            t, graph = _step_seconds(model)
            step.append(t)
    finally:
        del view
    return DepthEstimate(k, full_layers, min(step), min(shallow), graph)
