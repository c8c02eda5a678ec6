"""MoE experts while training: transformers' token-sorted grouped GEMMs, run in the autocast dtype.

``torch.nn.functional.grouped_mm`` is not autocast-aware: with fp32 master weights under bf16 autocast,
transformers casts the tokens to the weights' fp32 and the grouped GEMMs run in fp32. This implementation
hands transformers' own ``grouped_mm`` forward a view of the experts module whose floating-point parameters
are cast to the autocast dtype (the cast is differentiable, so gradients still reach the fp32 masters), the
way autocast treats an ordinary linear layer. Outside autocast, or when the expert widths are not multiples
of 8 (bf16 grouped GEMMs need 16-byte rows), the GEMMs run in the weights' dtype.

Expert biases (gpt-oss): transformers gathers each sorted token's bias row (``bias[expert_ids]``), and the
gradient of that gather is CUDA's index-put backward, which serialises on repeated indices: every expert's row
repeats for all its tokens, and on an H200 that one kernel took 89 % of a gpt-oss miniature's step (213 of 240
ms, ``bench/train.py --profile``). Here the same gather's gradient is a one-hot matrix product (experts × tokens
@ tokens × width), saving only the indices, as the gather did.
"""
from __future__ import annotations

from typing import Optional

import torch

IMPL = "archlab_grouped_autocast"


class _ExpertRows(torch.autograd.Function):
    """``bias[idx]`` whose gradient is ``one_hot(idx).T @ grad`` (a GEMM) instead of an index-put backward."""

    @staticmethod
    def forward(ctx, bias: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = bias.shape[0]
        return bias[idx]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (idx,) = ctx.saved_tensors
        onehot = torch.nn.functional.one_hot(idx, ctx.rows).to(grad.dtype)
        return onehot.t() @ grad, None


class _Rows:
    """A bias table read as ``table[idx]`` through :class:`_ExpertRows`."""

    def __init__(self, table: torch.Tensor):
        self._table = table

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return _ExpertRows.apply(self._table, idx)


class _View:
    """The experts module with its floating-point parameters read in ``dtype`` (None: as they are) and its
    per-expert bias tables gathered through :class:`_Rows`."""

    def __init__(self, module: torch.nn.Module, dtype: Optional[torch.dtype]):
        self._module, self._dtype = module, dtype

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        if isinstance(value, torch.nn.Parameter) and value.is_floating_point():
            if self._dtype is not None:
                value = value.to(self._dtype)
            if name.endswith("_bias") and value.dim() == 2:
                return _Rows(value)
        return value


def _aligned(module: torch.nn.Module) -> bool:
    """Whether every expert weight's rows are 16-byte aligned in 2-byte floats (grouped GEMMs refuse others)."""
    return all(p.shape[-1] % 8 == 0 and p.shape[-2] % 8 == 0 for p in module.parameters() if p.dim() == 3)


def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    from transformers.integrations.moe import grouped_mm_experts_forward

    kind = hidden_states.device.type
    if torch.is_autocast_enabled(kind) and _aligned(self):
        dtype = torch.get_autocast_dtype(kind)
        out = grouped_mm_experts_forward(_View(self, dtype), hidden_states.to(dtype), top_k_index,
                                         top_k_weights.to(dtype))
        return out.to(hidden_states.dtype)
    return grouped_mm_experts_forward(_View(self, None), hidden_states, top_k_index, top_k_weights)


def register() -> str:
    """Register the implementation with transformers (once); returns its name for ``set_experts_implementation``."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPL not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPL, forward)
    return IMPL
