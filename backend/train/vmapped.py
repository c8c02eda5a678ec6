"""Attention and MoE experts for models run under ``torch.vmap`` (stacked training, ``stack.py``).

A stack of R runs of one architecture is one transformers model called through ``torch.func.functional_call``
under ``torch.vmap`` over the run dimension. Most operations batch well (a linear layer becomes a batched matrix
product), but two have no efficient batching rule:

- **Attention.** ``scaled_dot_product_attention`` has none, so vmap would loop over the runs. Here it is a custom
  operator whose vmap rule folds the run dimension into the batch (``[R, B, H, T, D]`` → ``[R·B, H, T, D]``) and
  calls the fused kernel once; autograd records that call, so the backward is the kernel's own.
- **MoE experts.** The token-sorted grouped GEMMs (``experts.py``) depend on data (how many tokens each expert
  got). Their vmap rule folds the runs into the experts: run r's expert e becomes expert ``r·E + e``, every
  run's tokens are sorted together, and one set of grouped GEMMs serves all runs (in chunks of runs when R·E
  would exceed the grouped GEMM's 1,024 groups).

Both are registered with transformers (``AttentionInterface``, its mask interface, ``ExpertsInterface``) under
names that a stacked model's config selects. Attention sinks (gpt-oss) and logit soft-capping take an explicit
softmax; everything else goes to the fused kernel. The attention function can also record the largest
attention logit of each layer (the softmax input, ``recording``), for the stability metrics.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Optional

import torch
import torch.nn.functional as F

ATTENTION = "archlab_stacked"
EXPERTS = "archlab_stacked_experts"

_local = threading.local()
_EXPERT_MODULES: dict[int, torch.nn.Module] = {}


# ----- attention
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    scale: float,
    causal: bool,
    softcap: float,
) -> torch.Tensor:
    """Softmax attention of ``q [N, H, T, D]`` over ``k, v [N, Hkv, S, D]`` → ``[N, H, T, Dv]``.

    ``mask``: boolean (True attends) or additive, broadcastable to ``[N, H, T, S]``; None with ``causal`` is a plain
    causal mask. ``sinks``: per-head logits ``[H]`` or ``[N, H]`` of a sink that takes probability but gives no value.
    """
    groups = q.shape[1] // k.shape[1]
    if sinks is None and not softcap:
        gqa = groups > 1 and mask is None
        if groups > 1 and not gqa:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=gqa
        )
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = _logits(q.float(), k.float(), mask, scale, causal, softcap)  # softmax in fp32, as eager attention
    if sinks is not None:
        n, h, t = q.shape[0], q.shape[1], q.shape[2]
        sink = (sinks.reshape(1, h, 1, 1) if sinks.dim() == 1 else sinks.reshape(n, h, 1, 1)).to(scores.dtype)
        scores = torch.cat([scores, sink.expand(n, h, t, 1)], dim=-1)
        scores = scores - scores.max(dim=-1, keepdim=True).values
        probs = torch.softmax(scores, dim=-1)[..., :-1]
    else:
        probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs.to(v.dtype), v)


def _logits(
    q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], scale: float, causal: bool, softcap: float
) -> torch.Tensor:
    """The softmax input: scaled (and soft-capped) q·kᵀ with masked positions at -inf."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    elif causal:
        t, s = scores.shape[-2], scores.shape[-1]
        keep = torch.ones(t, s, dtype=torch.bool, device=scores.device).tril(s - t)
        scores = scores.masked_fill(~keep, float("-inf"))
    return scores


def max_logit(
    q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], scale: float, causal: bool, softcap: float
) -> torch.Tensor:
    """The largest attention logit (softmax input over the attended positions) of one layer, a scalar."""
    groups = q.shape[-3] // k.shape[-3]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=-3)
    return _logits(q.float(), k.float(), mask, scale, causal, softcap).amax()


@torch.library.custom_op("archlab::attention", mutates_args=())
def _attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    scale: float,
    causal: bool,
    softcap: float,
) -> torch.Tensor:
    return attend(q, k, v, mask, sinks, scale, causal, softcap)


@_attention_op.register_fake
def _(q, k, v, mask, sinks, scale, causal, softcap):
    return q.new_empty(q.shape[:-1] + (v.shape[-1],))


def _fold(t: Optional[torch.Tensor], dim: Optional[int], runs: int) -> Optional[torch.Tensor]:
    """``[R, N, ...]`` (run dimension at ``dim``) → ``[R·N, ...]``; an unbatched tensor is repeated per run,
    except a leading size-1 dimension, which broadcasts as it is."""
    if t is None:
        return None
    if dim is None:
        if t.shape[0] == 1:
            return t
        t = t.unsqueeze(0).expand(runs, *t.shape)
    elif dim != 0:
        t = t.movedim(dim, 0)
    return t.reshape(runs * t.shape[1], *t.shape[2:])


@_attention_op.register_vmap
def _(info, in_dims, q, k, v, mask, sinks, scale, causal, softcap):
    runs = info.batch_size
    qd, kd, vd, md, sd = in_dims[:5]
    fq = _fold(q, qd, runs)
    n = fq.shape[0] // runs
    if sinks is not None and sd is not None:  # per-run sink logits [R, H] → one row per folded sequence
        s = sinks.movedim(sd, 0)
        sinks = s.unsqueeze(1).expand(runs, n, *s.shape[1:]).reshape(runs * n, *s.shape[1:])
    out = attend(fq, _fold(k, kd, runs), _fold(v, vd, runs), _fold(mask, md, runs), sinks, scale, causal, softcap)
    return out.reshape(runs, n, *out.shape[1:]), 0


def attention_forward(
    module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers' attention interface (``config._attn_implementation = ATTENTION``)."""
    scale = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    softcap = float(kwargs.get("softcap") or 0.0)
    kind = query.device.type
    dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else value.dtype
    # a fused kernel under autocast runs in the autocast dtype; the custom operator is not autocast-aware
    query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    if getattr(_local, "logits", None) is not None:
        with torch.no_grad():
            _local.logits.append(max_logit(query, key, attention_mask, scale, causal, softcap))
    # The inputs are in the autocast dtype already; autocast left on inside would re-cast the ops the kernel falls
    # back to (SDPA's math path, the softmax of sinks and soft-capping) and mix bf16 and fp32 in their backward
    # (CUDA's softmax backward refuses a bf16 input with an fp32 gradient).
    with torch.autocast(kind, enabled=False):
        out = torch.ops.archlab.attention(
            query, key, value, attention_mask, kwargs.get("s_aux"), scale, causal, softcap
        )
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def recording():
    """Within: every attention layer appends its largest logit to the list this yields (no gradient)."""
    _local.logits = []
    try:
        yield _local.logits
    finally:
        _local.logits = None


# ----- MoE experts
@torch.library.custom_op("archlab::experts", mutates_args=())
def _experts_op(
    hidden: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    up: torch.Tensor,
    down: torch.Tensor,
    up_bias: Optional[torch.Tensor],
    down_bias: Optional[torch.Tensor],
    module: int,
) -> torch.Tensor:
    from .experts import grouped

    return grouped(_EXPERT_MODULES[module], hidden, index, weights, up, down, up_bias, down_bias)


@_experts_op.register_fake
def _(hidden, index, weights, up, down, up_bias, down_bias, module):
    return hidden.new_empty(hidden.shape)


#: grouped GEMMs take fewer than 1,024 groups (torch._grouped_mm on a GPU): runs are folded in chunks of at most this
MAX_GROUPS = 1023


@_experts_op.register_vmap
def _(info, in_dims, hidden, index, weights, up, down, up_bias, down_bias, module):
    from .experts import grouped

    runs = info.batch_size
    hd, xd, wd, ud, dd, ubd, dbd = in_dims[:7]
    moved = [
        None if t is None else (t.movedim(d, 0) if d is not None else t.unsqueeze(0).expand(runs, *t.shape))
        for t, d in ((hidden, hd), (index, xd), (weights, wd), (up, ud), (down, dd), (up_bias, ubd), (down_bias, dbd))
    ]
    experts = moved[3].shape[1]
    per_chunk = max(1, MAX_GROUPS // experts)
    outs = []
    for lo in range(0, runs, per_chunk):  # run r's expert e becomes expert (r - lo)·E + e of its chunk
        x, idx, w, *weights_ = [None if t is None else t[lo : lo + per_chunk] for t in moved]
        n_runs, n = x.shape[0], x.shape[1]
        idx = (idx + experts * torch.arange(n_runs, device=idx.device).view(n_runs, 1, 1)).reshape(n_runs * n, -1)
        folded = [None if t is None else t.reshape(n_runs * t.shape[1], *t.shape[2:]) for t in weights_]
        out = grouped(_EXPERT_MODULES[module], x.reshape(n_runs * n, -1), idx, w.reshape(n_runs * n, -1), *folded)
        outs.append(out.reshape(n_runs, n, *out.shape[1:]))
    return torch.cat(outs) if len(outs) > 1 else outs[0], 0


def experts_forward(
    self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """transformers' experts interface (``config._experts_implementation = EXPERTS``)."""
    key = id(self)
    _EXPERT_MODULES.setdefault(key, self)
    up = self.gate_up_proj if self.has_gate else self.up_proj
    biases = (
        (getattr(self, "gate_up_proj_bias" if self.has_gate else "up_proj_bias"), self.down_proj_bias)
        if self.has_bias
        else (None, None)
    )
    return torch.ops.archlab.experts(hidden_states, top_k_index, top_k_weights, up, self.down_proj, *biases, key)


def forget(model: torch.nn.Module) -> None:
    """Drop a model's experts modules from the registry (when its stack is closed)."""
    for m in model.modules():
        _EXPERT_MODULES.pop(id(m), None)


_registered = False


def register() -> None:
    """Register the attention, its masks (those of SDPA: boolean, None when plainly causal) and the experts."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    ALL_EXPERTS_FUNCTIONS.register(EXPERTS, experts_forward)
    _registered = True
