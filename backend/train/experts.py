"""MoE experts while training: transformers' token-sorted grouped GEMMs, run in the autocast dtype.

``torch.nn.functional.grouped_mm`` is not autocast-aware: with fp32 master weights under bf16 autocast,
transformers casts the tokens to the weights' fp32 and the grouped GEMMs run in fp32. This implementation
hands transformers' own ``grouped_mm`` forward a view of the experts module whose floating-point parameters
are cast to the autocast dtype (the cast is differentiable, so gradients still reach the fp32 masters), the
way autocast treats an ordinary linear layer. Outside autocast, or when the expert widths are not multiples
of 8 (bf16 grouped GEMMs need 16-byte rows), it is transformers' ``grouped_mm`` unchanged.
"""
from __future__ import annotations

import torch

IMPL = "archlab_grouped_autocast"


class _Cast:
    """The experts module with its floating-point parameters read in ``dtype``."""

    def __init__(self, module: torch.nn.Module, dtype: torch.dtype):
        self._module, self._dtype = module, dtype

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        if isinstance(value, torch.nn.Parameter) and value.is_floating_point():
            return value.to(self._dtype)
        return value


def _aligned(module: torch.nn.Module) -> bool:
    """Whether every expert weight's rows are 16-byte aligned in 2-byte floats (grouped GEMMs refuse others)."""
    return all(p.shape[-1] % 8 == 0 and p.shape[-2] % 8 == 0 for p in module.parameters() if p.dim() == 3)


def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    from transformers.integrations.moe import grouped_mm_experts_forward

    kind = hidden_states.device.type
    if torch.is_autocast_enabled(kind) and _aligned(self):
        dtype = torch.get_autocast_dtype(kind)
        out = grouped_mm_experts_forward(_Cast(self, dtype), hidden_states.to(dtype), top_k_index,
                                         top_k_weights.to(dtype))
        return out.to(hidden_states.dtype)
    return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)


def register() -> str:
    """Register the implementation with transformers (once); returns its name for ``set_experts_implementation``."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPL not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPL, forward)
    return IMPL
