"""MoE experts while training: token-sorted grouped GEMMs, run in the autocast dtype.

transformers' ``grouped_mm`` experts (``integrations/moe.py``) with three changes for training:

- **Autocast.** ``torch.nn.functional.grouped_mm`` is not autocast-aware: with fp32 master weights under bf16
  autocast, transformers casts the tokens to the weights' fp32 and the grouped GEMMs run in fp32. Here the
  expert weights are cast to the autocast dtype (a differentiable cast, so gradients reach the fp32 masters),
  the way autocast treats an ordinary linear layer; when the expert widths are not multiples of 8 (bf16 grouped
  GEMMs need 16-byte rows) the GEMMs run in the weights' dtype.
- **Gathers whose gradients are cheap.** transformers gathers the sorted tokens with advanced indexing, whose
  gradient is an index-put with accumulation: 9x slower than ``index_select``'s on the CPU (2,048 × 48 rows).
  The expert biases (gpt-oss) were gathered per token the same way, and on a GPU that gradient serialises on
  repeated indices (every expert's row repeats for all its tokens): one kernel took 89 % of a gpt-oss
  miniature's step on an H200 (213 of 240 ms, ``bench/train.py --profile``); here it is a one-hot GEMM.
- Models with expert parallelism or a post-expert norm keep transformers' function (the trainer uses neither).
"""

from __future__ import annotations

from typing import Optional

import torch

IMPL = "archlab_grouped_autocast"


def _expert_rows(table: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """``table[expert_ids]`` as ``one_hot(expert_ids) @ table``: exact (one 1.0 per row), and its gradient is a GEMM
    (``one_hotᵀ @ grad``) instead of an index-put that serialises on repeated indices."""
    onehot = torch.nn.functional.one_hot(expert_ids, table.shape[0]).to(table.dtype)
    return onehot @ table


def _linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    offsets: torch.Tensor,
    bias: Optional[torch.Tensor],
    expert_ids: torch.Tensor,
    transposed: bool,
) -> torch.Tensor:
    """Each expert's run of rows of ``x`` times its weight (+ its bias)."""
    from transformers.integrations.moe import _grouped_mm

    out = _grouped_mm(x, weight if transposed else weight.transpose(-2, -1), offs=offsets)
    return out if bias is None else out + _expert_rows(bias, expert_ids)


def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    from transformers.integrations.moe import grouped_mm_experts_forward

    if getattr(self, "_is_expert_parallel", False) or getattr(self, "has_post_expert_norm", False):
        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    up = self.gate_up_proj if self.has_gate else self.up_proj
    biases = (
        (getattr(self, "gate_up_proj_bias" if self.has_gate else "up_proj_bias"), self.down_proj_bias)
        if self.has_bias
        else (None, None)
    )
    return grouped(self, hidden_states, top_k_index, top_k_weights, up, self.down_proj, *biases)


def grouped(
    module: torch.nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    up_bias: Optional[torch.Tensor],
    down_bias: Optional[torch.Tensor],
) -> torch.Tensor:
    """The experts of ``module`` (its gate function and layout flags) with weights ``up [E, ...]``, ``down [E, ...]``
    (and biases) on ``hidden_states [N, H]`` routed by ``top_k_index``/``top_k_weights [N, k]``; the number of
    experts is read from ``up`` (stacked training folds several runs' experts into one set, ``vmapped.py``)."""
    kind = hidden_states.device.type
    aligned = all(t.shape[-1] % 8 == 0 and t.shape[-2] % 8 == 0 for t in (up, down))
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) and aligned else None
    cast = (lambda t: t.to(dtype)) if dtype is not None else (lambda t: t)  # noqa: E731
    x = cast(hidden_states)
    tokens, k = top_k_index.shape
    experts = up.shape[0]
    expert_ids, perm = torch.sort(top_k_index.reshape(-1), stable=True)
    rows = x.index_select(0, perm // k)
    weights = cast(top_k_weights).reshape(-1).index_select(0, perm)
    # a scatter-add, not bincount: no host sync; exact for any number of experts (histc's float bins are not)
    counts = torch.zeros(experts, dtype=torch.int64, device=expert_ids.device).scatter_add_(
        0, expert_ids, torch.ones_like(expert_ids)
    )
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    transposed = module.is_transposed
    h = _linear(rows, cast(up), offsets, None if up_bias is None else cast(up_bias), expert_ids, transposed)
    h = module._apply_gate(h) if module.has_gate else module.act_fn(h)
    out = _linear(h, cast(down), offsets, None if down_bias is None else cast(down_bias), expert_ids, transposed)
    out = out * weights.unsqueeze(-1)
    # back to token order (an index_select by the inverse permutation: its gradient saves only the indices),
    # then each token's k experts summed
    inverse = torch.empty_like(perm).scatter_(0, perm, torch.arange(perm.numel(), device=perm.device))
    out = out.index_select(0, inverse)
    return out.view(tokens, k, -1).sum(dim=1).to(hidden_states.dtype)


def register() -> str:
    """Register the implementation with transformers (once); returns its name for ``set_experts_implementation``."""
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    if IMPL not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(IMPL, forward)
    return IMPL
