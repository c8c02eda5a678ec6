"""A stack's whole training step (forward, backward, clipping, AdamW) replayed as one CUDA graph.

Small models are bound by kernel launches, not arithmetic: a step of a 1 M-parameter miniature launches
thousands of kernels of microseconds each. PyTorch's CUDA graphs record them once and replay them with one
launch (``torch.cuda.graph``, the "whole network capture" of PyTorch's CUDA-graph notes). A step qualifies
because :meth:`~backend.train.stack.Stack._body` reads only static device buffers (the batch, the learning-rate
table indexed by a device step counter, the per-run constants) and never synchronises with the host. The first
steps run eagerly on a side stream (lazy initialisation, allocator warm-up), then one step is captured, and every
later step is a copy of the next batch into the static buffer and a replay. A model class whose step cannot be
captured (an operation that synchronises or allocates on the host) trains eagerly, and the run says why.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

log = logging.getLogger("archlab.train")

#: eager steps before the capture
WARMUP_STEPS = 3


class CapturedStep:
    """The captured training step of a stack; ``replay()``, then read ``outputs`` (losses, gradient norms)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, outputs: tuple[torch.Tensor, torch.Tensor]):
        self.graph, self.outputs = graph, outputs

    def replay(self) -> None:
        self.graph.replay()


def capture(stack) -> tuple[Optional[CapturedStep], str]:
    """Capture ``stack``'s step (after its warm-up steps, which the caller has run); (graph or None, a note)."""
    if stack.device.type != "cuda":
        return None, "eager (no CUDA device)"
    stack.optimizer.zero_grad()
    torch.cuda.synchronize(stack.device)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            outputs = stack._body()
    except Exception as e:  # a class whose step cannot be captured: say so, train eagerly
        log.warning("CUDA graph capture failed: %s", e)
        stack.optimizer.zero_grad()
        torch.cuda.synchronize(stack.device)
        return None, f"eager (CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:160]})"
    return CapturedStep(graph, outputs), "CUDA graph"
