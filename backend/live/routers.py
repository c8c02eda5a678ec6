"""Where a model's MoE routers are and how to read their choice from a router's output.

Routers are found structurally: the ``gate``/``router`` child of a block that has ``experts``.
transformers' top-k routers return ``(logits, weights[T,k], indices[T,k])``; Llama 4's returns
``(scores[T,E], logits)``, from which the choice is the top-k of the scores.
"""

from __future__ import annotations

import torch

from ..arch.errors import ArchLabError
from ..arch.spec import decoder_layers

_MLP_NAMES = ("mlp", "feed_forward", "block_sparse_moe")
_ROUTER_NAMES = ("gate", "router")


def router_modules(model) -> list[tuple[int, torch.nn.Module]]:
    """(layer index, router module) for every MoE layer, in layer order."""
    found = []
    for i, layer in enumerate(decoder_layers(model)):
        for name in _MLP_NAMES:
            mlp = getattr(layer, name, None)
            if mlp is None or getattr(mlp, "experts", None) is None:
                continue
            router = next(
                (getattr(mlp, r) for r in _ROUTER_NAMES if isinstance(getattr(mlp, r, None), torch.nn.Module)), None
            )
            if router is not None:
                found.append((i, router))
    return found


def router_top_k(router: torch.nn.Module) -> int:
    for attr in ("top_k", "num_experts_per_tok", "experts_per_token"):
        v = getattr(router, attr, None)
        if isinstance(v, int):
            return v
    cfg = getattr(router, "config", None)
    return int(getattr(cfg, "num_experts_per_tok", None) or getattr(cfg, "experts_per_token", 1))


def router_choice(router: torch.nn.Module, output) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices [T,k] int64, weights [T,k]) the router chose, from its forward output; stays on device."""
    if isinstance(output, (tuple, list)) and len(output) >= 3 and not output[2].is_floating_point():
        weights, indices = output[1], output[2]
    elif isinstance(output, (tuple, list)) and len(output) == 2:  # Llama 4: (scores [T,E], logits)
        scores = output[0]
        weights, indices = torch.topk(scores, router_top_k(router), dim=-1)
    else:
        raise ArchLabError(f"cannot read the output of router {type(router).__name__}")
    k = indices.shape[-1]
    return indices.reshape(-1, k).long(), weights.reshape(-1, k)


def router_logits(output) -> torch.Tensor:
    """The raw router logits ``[T, E]`` from a router's forward output (keeps the autograd graph)."""
    if isinstance(output, (tuple, list)) and len(output) >= 3:
        logits = output[0]
    elif isinstance(output, (tuple, list)) and len(output) == 2:  # Llama 4: (scores, logits)
        logits = output[1]
    else:
        raise ArchLabError(f"cannot read router logits from a {type(output).__name__}")
    return logits.reshape(-1, logits.shape[-1])
