"""A decode step split into segments, each captured as its own CUDA graph, with a hand-off between them.

A model sharded over several GPUs cannot be one CUDA graph: a graph belongs to one device. Here the step
runs the model's own forward once under capture; forward pre-hooks on the placed modules (those of the
device map) notice when execution moves to a module of another segment. There the graph being captured
is closed, every tensor the module is called with is copied into a static buffer on the next segment's
device (the hand-off, replayed as a copy between the graphs), and capture goes on with a new graph on
that device. A replay is then: graph 0, hand-off copies, graph 1, ... Modules are assigned to segments by
a label (their device, from the device map); any labelling works, so a model on one device can be split
into several segments to exercise the same path. Without CUDA (or ``capture`` off) the hooks make the
same hand-off copies eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import torch


def device_labels(model) -> dict[str, str]:
    """Module name -> device for a model placed on several devices by a device map; {} on one device."""
    dmap = getattr(model, "hf_device_map", None) or {}
    labels = {name: (f"cuda:{d}" if isinstance(d, int) else str(d)) for name, d in dmap.items()}
    return labels if len(set(labels.values())) > 1 else {}


def _module_device(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return fallback


@dataclass
class Segment:
    label: Hashable
    device: torch.device
    graph: Any = None  # torch.cuda.CUDAGraph once captured
    handoffs: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (source, static copy)


def _map_tensors(obj, fn: Callable[[torch.Tensor], torch.Tensor]):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        return tuple(_map_tensors(x, fn) for x in obj)
    if isinstance(obj, list):
        return [_map_tensors(x, fn) for x in obj]
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


class Segmenter:
    """Splits each forward of ``model`` into segments at the modules of ``labels`` (name -> segment label).

    Use ``run(fn, capture)``: eager (hand-offs copied as they happen) or captured (one graph per segment);
    ``replay()`` then runs the captured graphs with their hand-offs.
    """

    def __init__(self, model, labels: dict[str, Hashable], start: torch.device):
        self.model, self.start = model, torch.device(start)
        self.segments: list[Segment] = []
        self._capture = self._active = False
        self._ctx = None
        self._stream = None
        self._mapped: dict[int, torch.Tensor] = {}
        self._handles = []
        for name, label in labels.items():
            module = model.get_submodule(name)
            device = _module_device(module, self.start)
            self._handles.append(module.register_forward_pre_hook(self._hook(label, device), with_kwargs=True))

    @property
    def captured(self) -> bool:
        return bool(self.segments) and all(s.graph is not None for s in self.segments)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ----- one forward
    def run(self, fn: Callable[[], Any], capture: bool) -> Any:
        """Run ``fn`` (the model call) once, split into segments; with ``capture``, as CUDA graphs."""
        self.segments, self._mapped, self._capture = [Segment(None, self.start)], {}, capture
        self._active = True
        if capture:
            self._begin(self.segments[0])
        try:
            out = fn()
            if capture:
                self._end(self.segments[-1])
        except BaseException:
            if capture:
                self._abort()
            self.segments = []
            raise
        finally:
            self._capture = self._active = False
            self._mapped = {}
        return out

    def replay(self) -> None:
        for seg in self.segments:
            for src, dst in seg.handoffs:
                dst.copy_(src)
            with torch.cuda.device(seg.device):
                seg.graph.replay()

    # ----- hooks
    def _hook(self, label: Hashable, device: torch.device):
        def pre(module, args, kwargs):
            if not self._active:
                return None
            seg = self.segments[-1]
            if seg.label is None and device == seg.device:
                seg.label = label
            if label != seg.label:
                return self._switch(Segment(label, device), args, kwargs)
            if self._mapped:
                args, kwargs = _map_tensors((args, kwargs), lambda t: self._mapped.get(id(t), t))
            foreign = []
            _map_tensors((args, kwargs), lambda t: foreign.append(t.device != device) or t)
            if any(foreign):  # made in an earlier segment on another device, not handed off yet: split here
                return self._switch(Segment(label, device), args, kwargs)
            return args, kwargs

        return pre

    def _switch(self, seg: Segment, args, kwargs):
        if self._capture:
            self._end(self.segments[-1])
        self.segments.append(seg)

        def hand_off(t: torch.Tensor) -> torch.Tensor:
            if id(t) in self._mapped:
                return self._mapped[id(t)]
            # the same strides as the source: the next segment's kernels see the layout they would have seen
            dst = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=seg.device)
            dst.copy_(t)
            seg.handoffs.append((t, dst))
            self._mapped[id(t)] = dst
            return dst

        args, kwargs = _map_tensors((args, kwargs), hand_off)
        if self._capture:
            self._begin(seg)
        return args, kwargs

    # ----- capture
    def _begin(self, seg: Segment) -> None:
        torch.cuda.synchronize(seg.device)
        self._stream = torch.cuda.Stream(seg.device)
        self._stream.wait_stream(torch.cuda.current_stream(seg.device))
        self._ctx = torch.cuda.stream(self._stream)
        self._ctx.__enter__()
        seg.graph = torch.cuda.CUDAGraph()
        seg.graph.capture_begin()

    def _end(self, seg: Segment) -> None:
        seg.graph.capture_end()
        self._ctx.__exit__(None, None, None)
        torch.cuda.current_stream(seg.device).wait_stream(self._stream)
        self._ctx = None

    def _abort(self) -> None:
        if self._ctx is None:
            return
        seg = self.segments[-1] if self.segments else None
        try:
            if seg is not None and seg.graph is not None:
                seg.graph.capture_end()
        except Exception:  # the capture was already invalidated
            pass
        self._ctx.__exit__(None, None, None)
        self._ctx = None
        torch.cuda.synchronize()


def hand_off_count(segmenter: Optional[Segmenter]) -> int:
    """Tensors copied between segments per step."""
    return sum(len(s.handoffs) for s in segmenter.segments) if segmenter else 0
