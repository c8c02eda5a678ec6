"""A fast decode path for one sequence on one GPU: static KV cache + the decode step as a CUDA graph.

HF ``generate`` spends most of a decode step launching kernels from Python (hundreds per layer on MoE
models). Here the step is captured once as a CUDA graph and replayed: one launch per token. MoE experts
use transformers' ``batched_mm`` kernels (gather the chosen experts' weights, one batched matmul), which
have no host synchronisation and so can be captured. Router choices are written by the captured kernels
into graph-owned tensors, so routing capture stays on with no per-layer host sync: the caller copies the
sampled token and all layers' choices to the host once per step.

Falls back to running the same static-cache step eagerly when a model cannot be captured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .routers import router_choice, router_modules


@dataclass
class StepOutput:
    logits: torch.Tensor                                  # [vocab] float, on the model's device
    routing: list[tuple[int, torch.Tensor, torch.Tensor]]  # (layer, indices [T,k], weights [T,k]), on device
    packed: Optional[torch.Tensor] = None                 # all of ``routing`` flattened into one float tensor


class _Taps:
    """Forward hooks that keep each router's choice of the current forward, on device."""

    def __init__(self, model):
        self.points = router_modules(model)
        self.current: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in self.points]

    def _hook(self, layer: int):
        def hook(module, args, output):
            idx, w = router_choice(module, output)
            # clone: graph-owned copies that later replays overwrite in place
            self.current.append((layer, idx.detach().clone(), w.detach().float().clone()))
        return hook

    def take(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        out, self.current = self.current, []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def can_use(model) -> bool:
    """A CUDA model on a single device whose cache transformers can make static."""
    params = list(model.parameters())
    if not params or params[0].device.type != "cuda":
        return False
    if len({p.device for p in params}) > 1 or getattr(model, "hf_device_map", None) and \
            len(set(model.hf_device_map.values())) > 1:
        return False
    return _static_cache(model, 2) is not None


_LOCAL = ("sliding_attention", "chunked_attention")


def _static_cache(model, max_len: int):
    """A static cache whose attention layers all keep every position.

    transformers' static sliding-window layer decides where to write, and the mask offset, from Python
    integers that a replayed graph would freeze. With full-length layers everywhere the only moving
    state is on the device; the window is still applied, by the mask, from absolute positions.
    Sliding layers then hold ``max_len`` tokens instead of ``window`` (more memory, same result).
    """
    import copy

    from transformers import StaticCache

    cfg = copy.deepcopy(model.config)
    types = getattr(cfg, "layer_types", None)
    if types:
        cfg.layer_types = ["full_attention" if t in _LOCAL else t for t in types]
    try:
        return StaticCache(config=cfg, max_cache_len=max_len)
    except Exception:  # models transformers cannot give a static cache
        return None


def _experts_impl(model, name: Optional[str]) -> Optional[str]:
    """Switch the MoE expert kernels (read at call time); returns the previous choice.

    Prefill wants ``grouped_mm`` (tokens sorted by expert); a one-token decode step wants
    ``batched_mm`` (gather the k chosen experts' weights): capture-safe and reads only those experts.
    """
    if name is None or not router_modules(model) or not hasattr(model, "set_experts_implementation"):
        return None
    before = getattr(model.config, "_experts_implementation", None)
    try:
        model.set_experts_implementation(name)
    except Exception:
        return None
    return before


class GraphDecoder:
    """Prefill eagerly, then decode one token per step, replaying a captured CUDA graph.

    ``use_graph=False`` runs the same static-cache step eagerly (also how it runs on CPU in tests).
    """

    def __init__(self, model, max_cache_len: int, capture_routing: bool = True, use_graph: bool = True,
                 compile: bool = False):
        self.model = model
        self._call = model
        self.compiled = False
        if compile and use_graph:
            try:
                self._call = torch.compile(model, dynamic=False, fullgraph=False)
                self.compiled = True
            except Exception:
                self._call = model
        self.device = next(model.parameters()).device
        self.cache = _static_cache(model, max_cache_len)
        if self.cache is None:
            raise ValueError("this model has no static KV cache")
        self.max_cache_len = max_cache_len
        self.taps = _Taps(model) if capture_routing else None
        self.use_graph = use_graph and self.device.type == "cuda"
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.graph_error: Optional[str] = None
        self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self._out: Optional[StepOutput] = None
        self._steps = 0
        self.length = 0
        self._restore_impl = getattr(model.config, "_experts_implementation", None)

    def reset(self) -> None:
        """Empty the cache for a new prompt; a captured graph stays valid (same buffers)."""
        self.cache.reset()
        self._pos.zero_()
        self.length = 0
        if self.taps is not None:
            self.taps.take()

    def close(self) -> None:
        if self.taps is not None:
            self.taps.remove()
        self.graph = None
        _experts_impl(self.model, self._restore_impl)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> StepOutput:
        out = self._call(input_ids=ids, position_ids=pos.unsqueeze(0), cache_position=pos,
                         past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        routing = self.taps.take() if self.taps is not None else []
        # Packed here so that, inside a graph, packing is part of the replay (no extra launches).
        packed = torch.cat([t for _, i, w in routing for t in (i.reshape(-1).float(), w.reshape(-1))]) if routing else None
        return StepOutput(out.logits[0, -1], routing, packed)

    def prefill(self, input_ids: torch.Tensor) -> StepOutput:
        """Run the prompt ``[1, T]``; returns the last position's logits and the prompt's routing."""
        t = input_ids.shape[1]
        if t + 1 > self.max_cache_len:
            raise ValueError(f"prompt of {t} tokens does not fit a cache of {self.max_cache_len}")
        pos = torch.arange(t, device=self.device)
        if self.device.type == "cuda":
            _experts_impl(self.model, "grouped_mm")
        call, self._call = self._call, self.model
        try:
            out = self._forward(input_ids.to(self.device), pos)
        finally:
            self._call = call
        if self.device.type == "cuda":
            _experts_impl(self.model, "batched_mm")
        self.length = t
        self._pos.fill_(t)
        return out

    def step(self, token: torch.Tensor) -> StepOutput:
        """Feed one token (a device tensor of shape [1] or [1,1]); no host sync here."""
        if self.length + 1 > self.max_cache_len:
            raise ValueError("the static cache is full")
        self._ids.copy_(token.view(1, 1))
        if self.graph is not None:
            self.graph.replay()
            out = self._out
        elif self.use_graph and self._steps >= (2 if self.compiled else 1) and self.graph_error is None:
            out = self._capture_and_run()
        else:
            out = self._forward(self._ids, self._pos)
        self._pos.add_(1)
        self._steps += 1
        self.length += 1
        return out

    def _capture_and_run(self) -> StepOutput:
        """Capture the step as a graph, then replay it once (capturing runs nothing)."""
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                out = self._forward(self._ids, self._pos)
        except Exception as e:  # a host sync or dynamic shape inside the model: stay eager
            self.graph_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            self._call = self.model
            torch.cuda.current_stream(self.device).wait_stream(stream)
            torch.cuda.synchronize(self.device)
            if self.taps is not None:
                self.taps.take()
            return self._forward(self._ids, self._pos)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph, self._out = graph, out
        graph.replay()
        return out


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Greedy (temperature 0) or temperature / nucleus sampling, on device, no host sync."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return order.gather(-1, choice)
    return torch.multinomial(probs, 1, generator=generator)


def pack_step(token: torch.Tensor, out: StepOutput) -> tuple[torch.Tensor, Callable]:
    """The step's token and routing as one float tensor, for a single device→host copy.

    Returns the packed tensor and a function that unpacks the host copy into
    ``(token_id, [(layer, indices ndarray, weights ndarray), ...])``.
    """
    shapes = [(layer, tuple(idx.shape)) for layer, idx, _ in out.routing]
    packed = token.view(-1).float() if out.packed is None else torch.cat([token.view(-1).float(), out.packed])

    def unpack(host: torch.Tensor):
        arr = host.numpy()
        tok, off, layers = int(arr[0]), 1, []
        for layer, shape in shapes:
            n = shape[0] * shape[1]
            idx = arr[off:off + n].astype("int64").reshape(shape)
            w = arr[off + n:off + 2 * n].reshape(shape)
            off += 2 * n
            layers.append((layer, idx, w))
        return tok, layers

    return packed, unpack
