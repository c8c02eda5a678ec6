"""A fast decode path for one sequence on GPUs: static KV cache + the decode step as CUDA graphs.

HF ``generate`` spends most of a decode step launching kernels from Python (hundreds per layer on MoE
models). Here the step is captured once as a CUDA graph and replayed: one launch per token. On a model
sharded over several GPUs the step is one graph per device segment, with the hand-off copies between them
(``segments.py``). Where Triton is present, ``decode_kernels.py`` replaces the MoE experts (only the chosen
experts' rows are read, two launches), RMSNorm and the rotary embedding by fused kernels, each only after a
probe shows it computes what the module computes; otherwise MoE experts use transformers' capture-safe
``batched_mm``. Router choices are written by the captured kernels into one graph-owned buffer per device
group, so routing capture stays on with no per-layer host sync: the caller copies the sampled token and all
layers' choices to the host once per step.

Falls back to running the same static-cache step eagerly when a model cannot be captured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .routers import router_choice, router_modules


@dataclass
class StepOutput:
    logits: torch.Tensor  # [vocab] float, on the model's device
    routing: list[tuple[int, torch.Tensor, torch.Tensor]]  # (layer, indices [T,k], weights [T,k]), on device;
    #                                                      on decode steps views of the routing buffer (float indices)
    packed: Optional[torch.Tensor] = None  # all of ``routing`` flattened into one float tensor


class _Taps:
    """Forward hooks that keep each router's choice of the current forward, on device.

    Once ``sink`` is set (decode steps, after the first), each router's choice of the one token is written
    into a slice of a preallocated float buffer instead (two small copies per layer, no concatenation).
    """

    def __init__(self, model):
        self.points = router_modules(model)
        self.current: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.sink: Optional[_RouteSink] = None
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in self.points]

    def _hook(self, layer: int):
        def hook(module, args, output):
            idx, w = router_choice(module, output)
            if self.sink is not None and self.sink.write(layer, idx, w):
                return
            # clone: graph-owned copies that later replays overwrite in place
            self.current.append((layer, idx.detach().clone(), w.detach().float().clone()))

        return hook

    def take(self) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        out, self.current = self.current, []
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class _RouteSink:
    """One float32 buffer per run of consecutive router layers on one device: per layer k indices, k weights."""

    def __init__(self, layout: list[tuple[int, int, torch.device]]):
        self.slots: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.buffers: list[torch.Tensor] = []
        self.routing: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        groups: list[tuple[torch.device, list[tuple[int, int]]]] = []
        for layer, k, dev in layout:
            if not groups or groups[-1][0] != dev:
                groups.append((dev, []))
            groups[-1][1].append((layer, k))
        for dev, layers in groups:
            buf = torch.zeros(sum(2 * k for _, k in layers), dtype=torch.float32, device=dev)
            off = 0
            for layer, k in layers:
                idx, w = buf[off : off + k].view(1, k), buf[off + k : off + 2 * k].view(1, k)
                self.slots[layer] = (idx, w)
                self.routing.append((layer, idx, w))
                off += 2 * k
            self.buffers.append(buf)

    def write(self, layer: int, idx: torch.Tensor, w: torch.Tensor) -> bool:
        slot = self.slots.get(layer)
        if slot is None or idx.shape != slot[0].shape:
            return False
        slot[0].copy_(idx)
        slot[1].copy_(w)
        return True

    def packed(self) -> torch.Tensor:
        if len(self.buffers) == 1:
            return self.buffers[0]
        last = self.buffers[-1].device
        return torch.cat([b.to(last) for b in self.buffers])


def _devices(model) -> set[torch.device]:
    return {p.device for p in model.parameters()}


def can_use(model) -> bool:
    """A model on CUDA devices only (one GPU, or sharded over several) whose cache transformers can make static."""
    devices = _devices(model)
    if not devices or any(d.type != "cuda" for d in devices):
        return False
    dmap = getattr(model, "hf_device_map", None) or {}
    if any(str(v) in ("cpu", "disk") for v in dmap.values()):
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
    ``batched_mm`` (gather the k chosen experts' weights): capture-safe and reads only those experts,
    or the fused Triton experts where they were installed.
    """
    if name is None or not router_modules(model) or not hasattr(model, "set_experts_implementation"):
        return None
    before = getattr(model.config, "_experts_implementation", None)
    try:
        model.set_experts_implementation(name)
    except Exception:
        return None
    return before


def compile_cache_dir():
    """Persistent torch.compile caches (inductor FX graphs, Triton kernels, autotuning) under the runs
    folder, so that a later process reuses the first one's compile work; returns the folder."""
    import os

    from .roots import runs_dir

    folder = runs_dir() / "cache" / "torch-compile"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(folder / "triton"))
    try:
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        inductor_config.autotune_local_cache = True
    except (ImportError, AttributeError):
        pass
    return folder


class GraphDecoder:
    """Prefill eagerly, then decode one token per step, replaying captured CUDA graphs.

    ``use_graph=False`` runs the same static-cache step eagerly (also how it runs on CPU in tests).
    ``kernels``: install the fused Triton kernels (CUDA only; a no-op elsewhere). ``segments``: module
    name -> segment label, one graph per run of modules with one label and a hand-off between them; by
    default the devices of a model's device map (one segment on one device).
    """

    def __init__(
        self,
        model,
        max_cache_len: int,
        capture_routing: bool = True,
        use_graph: bool = True,
        compile: bool = False,
        kernels: bool = True,
        segments: Optional[dict] = None,
    ):
        from .segments import Segmenter, device_labels

        self.model = model
        self._call = model
        self.compiled = False
        self.device = model.get_input_embeddings().weight.device
        labels = device_labels(model) if segments is None else dict(segments)
        self.segmenter = Segmenter(model, labels, self.device) if labels else None
        if compile and use_graph and self.segmenter is None:
            try:
                compile_cache_dir()
                self._call = torch.compile(model, dynamic=False, fullgraph=False)
                self.compiled = True
            except Exception:
                self._call = model
        self.cache = _static_cache(model, max_cache_len)
        if self.cache is None:
            self.close()
            raise ValueError("this model has no static KV cache")
        self.max_cache_len = max_cache_len
        self.taps = _Taps(model) if capture_routing else None
        self.use_graph = use_graph and self.device.type == "cuda"
        self.kernels = None
        if kernels and not self.compiled and self.device.type == "cuda":
            from . import decode_kernels

            self.kernels = decode_kernels.acquire(model)
        self.graph = None  # the first segment's graph once captured (all of them: ``graphs``)
        self.graph_error: Optional[str] = None
        self._ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self._pos = torch.zeros(1, dtype=torch.long, device=self.device)
        self._out: Optional[StepOutput] = None
        self._steps = 0
        self.length = 0
        self._restore_impl = getattr(model.config, "_experts_implementation", None)
        self._decode_impl = "batched_mm"
        if self.kernels is not None and self.kernels.experts:
            from .decode_kernels import EXPERTS_IMPL

            self._decode_impl = EXPERTS_IMPL

    @property
    def graphs(self) -> list:
        if self.segmenter is not None:
            return [s.graph for s in self.segmenter.segments] if self.segmenter.captured else []
        return [self.graph] if self.graph is not None else []

    def reset(self) -> None:
        """Empty the cache for a new prompt; a captured graph stays valid (same buffers)."""
        self.cache.reset()
        self._pos.zero_()
        self.length = 0
        if self.taps is not None:
            self.taps.take()

    def close(self) -> None:
        if getattr(self, "taps", None) is not None:
            self.taps.remove()
        if self.segmenter is not None:
            self.segmenter.remove()
        self.graph = None
        if getattr(self, "kernels", None) is not None:
            from . import decode_kernels

            decode_kernels.release(self.model)
            self.kernels = None
        _experts_impl(self.model, getattr(self, "_restore_impl", None))

    def _model_call(self, ids: torch.Tensor, pos: torch.Tensor):
        return self._call(
            input_ids=ids,
            position_ids=pos.unsqueeze(0),
            cache_position=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, capture: bool = False) -> StepOutput:
        if self.segmenter is not None:
            with _local_outputs(self.model):
                out = self.segmenter.run(lambda: self._model_call(ids, pos), capture)
        else:
            out = self._model_call(ids, pos)
        sink = self.taps.sink if self.taps is not None else None
        if sink is not None and ids.shape[1] == 1:
            self.taps.take()
            return StepOutput(out.logits[0, -1], sink.routing, sink.packed())
        routing = self.taps.take() if self.taps is not None else []
        # Packed here so that, inside a graph, packing is part of the replay (no extra launches).
        packed = (
            torch.cat([t for _, i, w in routing for t in (i.reshape(-1).float(), w.reshape(-1))]) if routing else None
        )
        if self.taps is not None and routing and ids.shape[1] == 1 and self.taps.sink is None:
            # the first one-token step gives the layout of the routing buffer later steps write into
            self.taps.sink = _RouteSink([(layer, i.shape[-1], i.device) for layer, i, _ in routing])
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
            _experts_impl(self.model, self._decode_impl)
        self.length = t
        self._pos.fill_(t)
        return out

    def step(self, token: torch.Tensor) -> StepOutput:
        """Feed one token (a device tensor of shape [1] or [1,1]); no host sync here."""
        if self.length + 1 > self.max_cache_len:
            raise ValueError("the static cache is full")
        self._ids.copy_(token.view(1, 1))
        if self.graphs:
            if self.segmenter is not None:
                self.segmenter.replay()
                self._repack(self._out)
            else:
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
        """Capture the step as graphs (one per segment), then replay them once (capturing runs nothing)."""
        if self.segmenter is not None:
            try:
                out = self._forward(self._ids, self._pos, capture=True)
            except Exception as e:  # a host sync or dynamic shape inside the model: stay eager
                return self._give_up(e)
            self.graph, self._out = self.segmenter.segments[0].graph, out
            self.segmenter.replay()
            self._repack(out)
            return out
        graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
                out = self._forward(self._ids, self._pos)
        except Exception as e:  # a host sync or dynamic shape inside the model: stay eager
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return self._give_up(e)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph, self._out = graph, out
        graph.replay()
        return out

    def _repack(self, out: StepOutput) -> None:
        """Routing buffers on several devices are gathered after the graphs ran (outside them)."""
        sink = self.taps.sink if self.taps is not None else None
        if sink is not None and len(sink.buffers) > 1:
            out.packed = sink.packed()

    def _give_up(self, e: Exception) -> StepOutput:
        self.graph_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        self._call = self.model
        torch.cuda.synchronize()
        if self.taps is not None:
            self.taps.take()
        return self._forward(self._ids, self._pos)


class _local_outputs:
    """While driving a dispatched model segment by segment, keep its outputs where they are made:
    accelerate's top-level hook would copy the logits back to the input device inside the last graph."""

    def __init__(self, model):
        hook = getattr(model, "_hf_hook", None)
        hooks = list(getattr(hook, "hooks", None) or ([hook] if hook is not None else []))
        self.hooks = [h for h in hooks if getattr(h, "io_same_device", False)]

    def __enter__(self):
        for h in self.hooks:
            h.io_same_device = False
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.io_same_device = True


def sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: Optional[torch.Generator]
) -> torch.Tensor:
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
            idx = arr[off : off + n].astype("int64").reshape(shape)
            w = arr[off + n : off + 2 * n].reshape(shape)
            off += 2 * n
            layers.append((layer, idx, w))
        return tok, layers

    return packed, unpack
