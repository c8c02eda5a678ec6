"""Triton kernels for the one-token decode step, installed on a model only where they compute what it computes.

A decode step of a MoE model is thousands of tiny launches; inside a CUDA graph each still costs a few
microseconds, and transformers' capture-safe ``batched_mm`` experts copy the chosen experts' weights
before reading them. Three kernels replace the worst offenders, for any architecture that has them:

- **experts** (any transformers experts module with fused ``gate_up_proj`` [E, 2I, H] or ``up_proj`` and
  ``down_proj``, with or without biases): the chosen experts' up projection (and the SiLU gate when the layout
  is the default one) in one launch, their down projection weighted by the router and summed over the top-k
  in a second; only the chosen experts' rows are read. Other gates (gpt-oss's clamped SwiGLU) run the
  module's own ``_apply_gate`` between the two launches. Shared experts (DeepSeek) are a plain MLP beside the
  routed ones and run as they are. Transposed weights ([E, H, 2I], gpt-oss) are computed right but were
  slower than ``batched_mm`` on an H100 with the tiles tried, so they are installed only on request.
- **RMSNorm** (any norm module with a 1-D ``weight`` and an epsilon): one launch instead of about eight; the
  three forms in use (``w * x̂`` rounded like transformers, ``x̂ * (1 + w)``, ``x̂ * w``) are told apart by probing.
- **rotary embedding** (a modeling module's ``apply_rotary_pos_emb`` in the rotate-half form): q and k in one
  launch instead of about ten.
- **router top-k** (softmax then top-k, optionally renormalised, or top-k then softmax): the router's own
  linear layer, then one launch instead of about five. Other routing (DeepSeek's biased group-limited
  sigmoid) is left as it is.

Nothing is chosen by model name: each candidate is run beside the original on random input on the device
when installed, and kept only when the two agree (the experts kernel's rounding follows ``batched_mm``'s, so
greedy tokens match it up to ties). Anything else (no Triton, CPU tensors, prefill-sized inputs, expert
parallelism) runs the original code. :func:`install` returns a handle that undoes it all.
"""

from __future__ import annotations

import inspect
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines (CI) run without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = None
    tl = None

#: ``experts_implementation`` name the fused experts are registered under in transformers
EXPERTS_IMPL = "archlab_fused"
#: (token, expert) pairs up to which the fused experts run; larger inputs (prefill) use ``batched_mm``
MAX_PAIRS = 64


def available() -> bool:
    """Triton importable and a CUDA device present."""
    return triton is not None and torch.cuda.is_available()


# ----------------------------------------------------------------- kernels

if triton is not None:

    @triton.jit
    def _experts_up_kernel(
        x_ptr,
        w_ptr,
        b_ptr,
        idx_ptr,
        out_ptr,
        H,
        N_OUT,
        K,
        stride_xt,
        stride_we,
        stride_wn,
        stride_wh,
        stride_be,
        stride_os,
        HAS_BIAS: tl.constexpr,
        SILU: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_H: tl.constexpr,
    ):
        """out[s, n] for pair s = (token s // K, expert idx[s]): rows n of the expert's up projection
        (+ bias); with SILU, silu(row n) * row (n + N_OUT) of a concatenated gate/up weight."""
        s = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N_OUT
        t = s // K
        e = tl.load(idx_ptr + s).to(tl.int64)
        w_base = w_ptr + e * stride_we
        # products accumulate elementwise over the loop and are reduced once at the end (a reduction across
        # threads in every iteration would stall the loads)
        acc = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_H], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            hmask = hs < H
            x = tl.load(x_ptr + t * stride_xt + hs, mask=hmask, other=0.0).to(tl.float32)
            m2 = cmask[:, None] & hmask[None, :]
            w = tl.load(w_base + cols[:, None] * stride_wn + hs[None, :] * stride_wh, mask=m2, other=0.0)
            acc += w.to(tl.float32) * x[None, :]
            if SILU:
                w2 = tl.load(w_base + (cols[:, None] + N_OUT) * stride_wn + hs[None, :] * stride_wh, mask=m2, other=0.0)
                acc2 += w2.to(tl.float32) * x[None, :]
        acc = tl.sum(acc, axis=1)
        acc2 = tl.sum(acc2, axis=1)
        ty = out_ptr.dtype.element_ty
        # .to(ty).to(tl.float32): rounded where transformers stores an intermediate in the model's dtype
        g = acc.to(ty).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(b_ptr + e * stride_be + cols, mask=cmask, other=0.0).to(tl.float32)
            g = (g + bias).to(ty).to(tl.float32)
        if SILU:
            u = acc2.to(ty).to(tl.float32)
            if HAS_BIAS:
                bias2 = tl.load(b_ptr + e * stride_be + N_OUT + cols, mask=cmask, other=0.0).to(tl.float32)
                u = (u + bias2).to(ty).to(tl.float32)
            g = (g * tl.sigmoid(g)).to(ty).to(tl.float32) * u
        tl.store(out_ptr + s * stride_os + cols, g.to(ty), mask=cmask)

    @triton.jit
    def _experts_down_kernel(
        m_ptr,
        w_ptr,
        b_ptr,
        idx_ptr,
        rw_ptr,
        out_ptr,
        N,
        I,
        K,
        stride_ms,
        stride_we,
        stride_wn,
        stride_wi,
        stride_be,
        stride_ot,
        HAS_BIAS: tl.constexpr,
        ROUND_WEIGHTED: tl.constexpr,
        K_PAD: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_I: tl.constexpr,
    ):
        """out[t, n] = sum over the token's K experts of weight * (down row n of the expert · m[s] (+ bias)),
        all K experts' tiles loaded at once (one launch per token, no atomics: deterministic)."""
        t = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        cmask = cols < N
        ks = tl.arange(0, K_PAD)
        kmask = ks < K
        s = t * K + ks
        e = tl.load(idx_ptr + s, mask=kmask, other=0).to(tl.int64)
        r = tl.load(rw_ptr + s, mask=kmask, other=0.0).to(tl.float32)
        acc = tl.zeros([K_PAD, BLOCK_N, BLOCK_I], dtype=tl.float32)
        for i0 in range(0, I, BLOCK_I):
            iv = i0 + tl.arange(0, BLOCK_I)
            imask = iv < I
            mv = tl.load(
                m_ptr + s[:, None] * stride_ms + iv[None, :], mask=kmask[:, None] & imask[None, :], other=0.0
            ).to(tl.float32)
            ptr = w_ptr + e[:, None, None] * stride_we + cols[None, :, None] * stride_wn + iv[None, None, :] * stride_wi
            msk = kmask[:, None, None] & cmask[None, :, None] & imask[None, None, :]
            w = tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
            acc += w * mv[:, None, :]
        acc = tl.sum(acc, axis=2)
        ty = out_ptr.dtype.element_ty
        p = acc.to(ty).to(tl.float32)
        if HAS_BIAS:
            b = tl.load(
                b_ptr + e[:, None] * stride_be + cols[None, :], mask=kmask[:, None] & cmask[None, :], other=0.0
            ).to(tl.float32)
            p = (p + b).to(ty).to(tl.float32)
        p = p * r[:, None]
        if ROUND_WEIGHTED:
            p = p.to(ty).to(tl.float32)
        p = tl.where(kmask[:, None], p, 0.0)
        tl.store(out_ptr + t * stride_ot + cols, tl.sum(p, axis=0).to(ty), mask=cmask)

    @triton.jit
    def _rmsnorm_kernel(x_ptr, w_ptr, y_ptr, N, stride_x, stride_y, eps, MODE: tl.constexpr, BLOCK: tl.constexpr):
        """One row: MODE 0 ``w * x̂`` with x̂ rounded to the input dtype first, 1 ``x̂ * (1 + w)``, 2 ``x̂ * w``."""
        row = tl.program_id(0)
        c = tl.arange(0, BLOCK)
        m = c < N
        x = tl.load(x_ptr + row * stride_x + c, mask=m, other=0.0).to(tl.float32)
        var = tl.sum(x * x, axis=0) / N
        xn = x * tl.rsqrt(var + eps)
        w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
        if MODE == 0:
            y = xn.to(x_ptr.dtype.element_ty).to(tl.float32) * w
        elif MODE == 1:
            y = xn * (1.0 + w)
        else:
            y = xn * w
        tl.store(y_ptr + row * stride_y + c, y.to(y_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rope_kernel(
        q_ptr,
        k_ptr,
        cos_ptr,
        sin_ptr,
        qo_ptr,
        ko_ptr,
        T,
        HQ,
        sq_b,
        sq_h,
        sq_t,
        sk_b,
        sk_h,
        sk_t,
        sqo_b,
        sqo_h,
        sqo_t,
        sko_b,
        sko_h,
        sko_t,
        sc_b,
        sc_t,
        HALF: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """(x * cos) + (rotate_half(x) * sin) for one head row of q or k, rounded where transformers rounds."""
        bt = tl.program_id(0)
        h = tl.program_id(1)
        b = bt // T
        t = bt % T
        c = tl.arange(0, BLOCK)
        m = c < HALF
        cb = cos_ptr + b * sc_b + t * sc_t
        sb = sin_ptr + b * sc_b + t * sc_t
        c1 = tl.load(cb + c, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(cb + HALF + c, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(sb + c, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(sb + HALF + c, mask=m, other=0.0).to(tl.float32)
        if h < HQ:
            src = q_ptr + b * sq_b + h * sq_h + t * sq_t
            dst = qo_ptr + b * sqo_b + h * sqo_h + t * sqo_t
        else:
            src = k_ptr + b * sk_b + (h - HQ) * sk_h + t * sk_t
            dst = ko_ptr + b * sko_b + (h - HQ) * sko_h + t * sko_t
        ty = qo_ptr.dtype.element_ty
        x1 = tl.load(src + c, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF + c, mask=m, other=0.0).to(tl.float32)
        o1 = ((x1 * c1).to(ty).to(tl.float32) + (-x2 * s1).to(ty).to(tl.float32)).to(ty).to(tl.float32)
        o2 = ((x2 * c2).to(ty).to(tl.float32) + (x1 * s2).to(ty).to(tl.float32)).to(ty).to(tl.float32)
        tl.store(dst + c, o1.to(ty), mask=m)
        tl.store(dst + HALF + c, o2.to(ty), mask=m)


if triton is not None:

    @triton.jit
    def _router_kernel(
        logits_ptr,
        w_ptr,
        idx_ptr,
        E,
        stride_l,
        K: tl.constexpr,
        K_PAD: tl.constexpr,
        FORM: tl.constexpr,
        NORM: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        """One token's top-k from its router logits. FORM 0: softmax over all experts (float32), top-k of the
        probabilities, optionally renormalised (NORM); FORM 1: top-k of the logits, softmax over those k."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        m = offs < E
        x = tl.load(logits_ptr + row * stride_l + offs, mask=m, other=float("-inf")).to(tl.float32)
        if FORM == 0:
            e = tl.exp(x - tl.max(x, axis=0))
            vals = e / tl.sum(e, axis=0)
        else:
            vals = x
        vals = tl.where(m, vals, float("-inf"))
        ks = tl.arange(0, K_PAD)
        top = tl.zeros([K_PAD], dtype=tl.float32)
        which = tl.zeros([K_PAD], dtype=tl.int32)
        for j in tl.static_range(K):
            best = tl.max(vals, axis=0)
            at = tl.min(tl.where(vals == best, offs, BLOCK), axis=0)
            top = tl.where(ks == j, best, top)
            which = tl.where(ks == j, at, which)
            vals = tl.where(offs == at, float("-inf"), vals)
        kmask = ks < K
        ty = w_ptr.dtype.element_ty
        if FORM == 0:
            if NORM:
                top = top / tl.sum(tl.where(kmask, top, 0.0), axis=0)
        else:
            t = tl.where(kmask, top.to(logits_ptr.dtype.element_ty).to(tl.float32), float("-inf"))
            ex = tl.exp(t - tl.max(t, axis=0))
            top = ex / tl.sum(tl.where(kmask, ex, 0.0), axis=0)
        tl.store(w_ptr + row * K + ks, top.to(ty), mask=kmask)
        tl.store(idx_ptr + row * K + ks, which.to(tl.int64), mask=kmask)


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


# ----------------------------------------------------------------- experts


@dataclass
class ExpertsPlan:
    """How one experts module runs fused: ``silu`` (gate fused in the first launch) or ``gate`` (the
    module's own ``_apply_gate`` / ``act_fn`` between the launches), and the tile sizes chosen for it."""

    form: str
    up_block: tuple[int, int] = (8, 256)  # BLOCK_N, BLOCK_H
    down_block: tuple[int, int] = (4, 128)  # BLOCK_N, BLOCK_I
    warps: int = 4


def _up_weight(module):
    w = module.gate_up_proj if module.has_gate else module.up_proj
    b = (module.gate_up_proj_bias if module.has_gate else module.up_proj_bias) if module.has_bias else None
    if module.is_transposed:  # [E, H, N]
        return w, b, w.shape[2], w.stride(2), w.stride(1)
    return w, b, w.shape[1], w.stride(1), w.stride(2)  # [E, N, H]


def _down_weight(module):
    w = module.down_proj
    b = module.down_proj_bias if module.has_bias else None
    if module.is_transposed:  # [E, I, H]
        return w, b, w.shape[2], w.shape[1], w.stride(2), w.stride(1)
    return w, b, w.shape[1], w.shape[2], w.stride(1), w.stride(2)  # [E, H, I]


def run_experts(
    module, plan: ExpertsPlan, hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """The fused experts of ``module`` on ``hidden`` [T, H] (no host synchronisation: capture-safe)."""
    x = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    t_n, k = top_k_index.shape[0], top_k_index.shape[-1]
    idx = top_k_index.reshape(-1)
    idx = idx if idx.is_contiguous() else idx.contiguous()
    rw = top_k_weights.reshape(-1)
    rw = rw if rw.is_contiguous() else rw.contiguous()
    s_n = t_n * k
    w, b, n_up, s_wn, s_wh = _up_weight(module)
    silu = plan.form == "silu"
    n_out = n_up // 2 if silu else n_up
    mid = torch.empty(s_n, n_out, device=x.device, dtype=x.dtype)
    bn, bh = plan.up_block
    _experts_up_kernel[(s_n, triton.cdiv(n_out, bn))](
        x,
        w,
        b if b is not None else w,
        idx,
        mid,
        x.shape[1],
        n_out,
        k,
        x.stride(0),
        w.stride(0),
        s_wn,
        s_wh,
        b.stride(0) if b is not None else 0,
        mid.stride(0),
        HAS_BIAS=b is not None,
        SILU=silu,
        BLOCK_N=bn,
        BLOCK_H=bh,
        num_warps=plan.warps,
    )
    if not silu:
        mid = module._apply_gate(mid) if module.has_gate else module.act_fn(mid)
        mid = mid if mid.stride(-1) == 1 else mid.contiguous()
    wd, bd, n_dn, i_dn, s_dn, s_di = _down_weight(module)
    out = torch.empty(t_n, n_dn, device=x.device, dtype=x.dtype)
    bn, bi = plan.down_block
    _experts_down_kernel[(t_n, triton.cdiv(n_dn, bn))](
        mid,
        wd,
        bd if bd is not None else wd,
        idx,
        rw,
        out,
        n_dn,
        i_dn,
        k,
        mid.stride(0),
        wd.stride(0),
        s_dn,
        s_di,
        bd.stride(0) if bd is not None else 0,
        out.stride(0),
        HAS_BIAS=bd is not None,
        ROUND_WEIGHTED=rw.dtype != torch.float32,
        K_PAD=_pow2(k),
        BLOCK_N=bn,
        BLOCK_I=bi,
        num_warps=plan.warps,
    )
    return out


def fused_experts_forward(
    module, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
) -> torch.Tensor:
    """``experts_implementation`` entry: fused where this module was probed, else transformers' batched_mm."""
    from transformers.integrations.moe import batched_mm_experts_forward

    plan: Optional[ExpertsPlan] = getattr(module, "_archlab_experts", None)
    if (
        plan is None
        or not hidden_states.is_cuda
        or top_k_index.numel() > MAX_PAIRS
        or getattr(module, "_is_expert_parallel", False)
    ):
        return batched_mm_experts_forward(module, hidden_states, top_k_index, top_k_weights)
    return run_experts(module, plan, hidden_states, top_k_index, top_k_weights)


def _is_fused_experts(module) -> bool:
    """A transformers experts module with 3-D expert weights dispatched through ``experts_implementation``."""
    need = ("has_gate", "has_bias", "is_transposed", "down_proj")
    if not all(hasattr(module, a) for a in need) or getattr(module, "has_post_expert_norm", False):
        return False
    up = getattr(module, "gate_up_proj" if module.has_gate else "up_proj", None)
    return isinstance(up, torch.Tensor) and up.dim() == 3 and module.down_proj.dim() == 3


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same values up to rounding of the lower-precision dtype (relative to the tensor's norm)."""
    if a.shape != b.shape or a.dtype != b.dtype or not torch.isfinite(a).all():
        return False
    tol = 1e-4 if a.dtype == torch.float32 else 1e-2
    return float((a.float() - b.float()).norm()) <= tol * float(b.float().norm()) + 1e-6


def _tile_options(
    n_out: int, n_down: int, k_pad: int, up_rows: bool = True, down_rows: bool = True
) -> list[ExpertsPlan]:
    """Tile sizes to try: accumulators of 2,048-4,096 floats a program (4 or 8 warps). ``up_rows`` /
    ``down_rows``: the weight is contiguous along the reduced dimension (rows of [E, N, H]); transposed
    weights ([E, H, N]) are contiguous along the outputs and want wide, short tiles instead."""
    up_tiles = ((8, 256), (16, 128), (4, 512), (16, 256)) if up_rows else ((256, 8), (128, 16), (512, 4), (256, 16))
    down_tiles = ((4, 128), (8, 64), (2, 256), (8, 128)) if down_rows else ((128, 4), (64, 8), (256, 2), (128, 8))
    opts = []
    for up in up_tiles:
        for down in down_tiles:
            if down_rows:
                dn = (max(1, min(down[0], 4096 // (k_pad * down[1]))), down[1])
            else:
                dn = (down[0], max(1, min(down[1], 4096 // (k_pad * down[0]))))
            if up[0] <= _pow2(n_out) and dn[0] <= _pow2(n_down):
                plan = ExpertsPlan("", up, dn, warps=8 if up[0] * up[1] >= 4096 else 4)
                if (plan.up_block, plan.down_block) not in {(o.up_block, o.down_block) for o in opts}:
                    opts.append(plan)
    return opts or [ExpertsPlan("")]


def _time(fn: Callable[[], object], reps: int = 20) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


#: tuned plans per experts layout, kept for the process: the tiles set the summation order, so every decoder
#: of a process uses the same ones (same tokens run to run), and tuning happens once
_plans: dict[tuple, Optional[ExpertsPlan]] = {}


def _rows(module) -> bool:
    """Expert weights contiguous along the reduced dimension ([E, N, H] and [E, H, I]): the layout the kernels
    were measured fast on. Transposed layouts (gpt-oss) are computed right but were slower than batched_mm."""
    return _up_weight(module)[4] == 1 and _down_weight(module)[5] == 1


def _probe_experts(module, top_k: int) -> Optional[ExpertsPlan]:
    """The plan (form and fastest tiles) that matches ``batched_mm`` on random input, or None. Every tile
    option timed is checked against ``batched_mm`` too."""
    from transformers.integrations.moe import _default_apply_gate, batched_mm_experts_forward

    w, _, n_up, _, _ = _up_weight(module)
    dev, dt = w.device, w.dtype
    experts = w.shape[0]
    hidden = module.down_proj.shape[2] if module.is_transposed else module.down_proj.shape[1]
    k = max(1, min(top_k, experts))
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, hidden, device=dev, dtype=dt, generator=g)
    idx = torch.randperm(experts, device=dev, generator=g)[:k].view(1, k)
    rw = torch.softmax(torch.randn(1, k, device=dev, generator=g), -1).to(dt)
    ref = batched_mm_experts_forward(module, x, idx, rw)
    forms = ["gate"]
    if (
        module.has_gate
        and getattr(module, "is_concatenated", True)
        and type(module)._apply_gate is _default_apply_gate
        and isinstance(getattr(module, "act_fn", None), torch.nn.Module)
        and _close(module.act_fn(x.float()), torch.nn.functional.silu(x.float()))
    ):
        forms.insert(0, "silu")
    for form in forms:
        try:
            plan = ExpertsPlan(form)
            if not _close(run_experts(module, plan, x, idx, rw), ref):
                continue
        except Exception:  # a layout the kernel cannot take: try the next form, else batched_mm
            continue
        n_out = n_up // 2 if form == "silu" else n_up
        options = _tile_options(
            n_out, hidden, _pow2(k), up_rows=_up_weight(module)[4] == 1, down_rows=_down_weight(module)[5] == 1
        )
        for opt in options:
            opt.form = form
        timed: dict[int, list[float]] = {}
        for i, opt in enumerate(options):
            try:
                if not _close(run_experts(module, opt, x, idx, rw), ref):
                    timed[i] = [float("inf")] * 3
            except Exception:
                timed[i] = [float("inf")] * 3
        for _ in range(3):  # rounds over all options: the median of each resists clock and load drift
            for i, opt in enumerate(options):
                if i not in timed or len(timed[i]) < 3:
                    timed.setdefault(i, []).append(_time(lambda: run_experts(module, opt, x, idx, rw)))
        best = min(timed, key=lambda i: sorted(timed[i])[1], default=None)
        return options[best] if best is not None and sorted(timed[best])[1] < float("inf") else plan
    return None


# ----------------------------------------------------------------- RMSNorm


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float, mode: int, out_dtype: torch.dtype) -> torch.Tensor:
    """RMSNorm over the last dimension in one launch (``mode`` as in ``_rmsnorm_kernel``)."""
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    y = torch.empty(rows.shape, device=x.device, dtype=out_dtype)
    _rmsnorm_kernel[(rows.shape[0],)](
        rows, weight, y, n, rows.stride(0), y.stride(0), eps, MODE=mode, BLOCK=_pow2(n), num_warps=4 if n <= 4096 else 8
    )
    return y.view(x.shape)


def _norm_eps(module) -> Optional[float]:
    for attr in ("variance_epsilon", "eps", "epsilon"):
        v = getattr(module, attr, None)
        if isinstance(v, float):
            return v
    return None


def _is_norm(module) -> bool:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.shape[0] > 16384 or _norm_eps(module) is None:
        return False
    if getattr(module, "bias", None) is not None or list(module.children()):
        return False
    try:
        params = [
            p
            for p in inspect.signature(module.forward).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and "norm" in type(module).__name__.lower()


def _probe_norm(module) -> Optional[tuple[int, torch.dtype]]:
    """(mode, output dtype) whose kernel matches the module on random input and a random weight (set on a
    copy of the module: the model's own weights are never touched)."""
    import copy

    probe = copy.deepcopy(module)
    w = probe.weight
    g = torch.Generator(device=w.device).manual_seed(0)
    x = torch.randn(3, w.shape[0], device=w.device, dtype=w.dtype, generator=g) * 3
    with torch.no_grad():
        w.copy_(torch.randn(w.shape, device=w.device, generator=g) * 0.5)
        ref = type(probe).forward(probe, x)
        if not isinstance(ref, torch.Tensor):
            return None
        best = None
        for mode in (0, 1, 2):
            y = rmsnorm(x, w, _norm_eps(probe), mode, ref.dtype)
            if _close(y, ref):
                err = float((y.float() - ref.float()).abs().max())
                if best is None or err < best[0]:
                    best = (err, mode)
    return (best[1], ref.dtype) if best else None


def _norm_forward(module, mode: int, in_dtype: torch.dtype, out_dtype: torch.dtype):
    original = type(module).forward
    eps = _norm_eps(module)

    def forward(hidden_states, *args, **kwargs):
        if args or kwargs or not hidden_states.is_cuda or hidden_states.dtype != in_dtype:
            return original(module, hidden_states, *args, **kwargs)
        return rmsnorm(hidden_states, module.weight, eps, mode, out_dtype)

    return forward


# ----------------------------------------------------------------- rotary embedding


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [B, Hq, T, D] and k [B, Hk, T, D] with cos/sin [B, T, D], one launch."""
    b, hq, t, d = q.shape
    qo, ko = torch.empty_like(q), torch.empty_like(k)
    _rope_kernel[(b * t, hq + k.shape[1])](
        q,
        k,
        cos,
        sin,
        qo,
        ko,
        t,
        hq,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        qo.stride(0),
        qo.stride(1),
        qo.stride(2),
        ko.stride(0),
        ko.stride(1),
        ko.stride(2),
        cos.stride(0),
        cos.stride(1),
        HALF=d // 2,
        BLOCK=_pow2(d // 2),
        num_warps=1,
    )
    return qo, ko


def _rope_ok(q, k, cos, sin, args, kwargs) -> bool:
    if args or any(v not in (None, 1) for v in kwargs.values()) or set(kwargs) - {"unsqueeze_dim", "position_ids"}:
        return False
    if not (q.is_cuda and q.dim() == 4 and k.dim() == 4 and cos.dim() == 3 and sin.shape == cos.shape):
        return False
    d = q.shape[-1]
    return (
        d % 2 == 0
        and k.shape[-1] == d
        and cos.shape[-1] == d
        and q.shape[0] == k.shape[0] == cos.shape[0]
        and q.shape[2] == k.shape[2] == cos.shape[1]
        and q.stride(-1) == k.stride(-1) == 1
        and cos.stride(-1) == sin.stride(-1) == 1
        and cos.stride() == sin.stride()
        and q.dtype == k.dtype == cos.dtype == sin.dtype
    )


def _rope_wrapper(original: Callable) -> Callable:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if _rope_ok(q, k, cos, sin, args, kwargs):
            return rope(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.__wrapped__ = original
    apply_rotary_pos_emb._archlab_rope = True
    return apply_rotary_pos_emb


def _probe_rope(fn: Callable, head_dim: int, device, dtype) -> bool:
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, 3, 4, head_dim, device=device, dtype=dtype, generator=g).transpose(1, 2)
    k = torch.randn(1, 2, 3, head_dim, device=device, dtype=dtype, generator=g)
    cos = torch.randn(1, 3, head_dim, device=device, dtype=dtype, generator=g)
    sin = torch.randn(1, 3, head_dim, device=device, dtype=dtype, generator=g)
    try:
        rq, rk = fn(q, k, cos, sin)
        fq, fk = rope(q, k, cos, sin)
    except Exception:
        return False
    return isinstance(rq, torch.Tensor) and _close(fq, rq) and _close(fk, rk)


_rope_lock = threading.Lock()
_rope_users: dict[str, int] = {}  # modeling module -> installed decoders using its patched function


# ----------------------------------------------------------------- routers

#: router forms: (FORM, NORM) of ``_router_kernel``
_ROUTER_FORMS = ((0, True), (0, False), (1, False))


def route(
    logits: torch.Tensor, top_k: int, form: tuple[int, bool], out_dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [T, k], indices [T, k] int64) from router logits [T, E] in one launch."""
    t, e = logits.shape
    w = torch.empty(t, top_k, device=logits.device, dtype=out_dtype)
    idx = torch.empty(t, top_k, device=logits.device, dtype=torch.int64)
    _router_kernel[(t,)](
        logits,
        w,
        idx,
        e,
        logits.stride(0),
        K=top_k,
        K_PAD=_pow2(top_k),
        FORM=form[0],
        NORM=form[1],
        BLOCK=_pow2(e),
        num_warps=1 if e <= 256 else 4,
    )
    return w, idx


def _is_router(module, top_k: int) -> bool:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not 0 < top_k <= min(w.shape[0], 32) or w.shape[0] > 4096:
        return False
    b = getattr(module, "bias", None)
    return (b is None or isinstance(b, torch.Tensor) and b.shape == (w.shape[0],)) and not list(module.children())


def _probe_router(module, top_k: int) -> Optional[tuple[int, bool]]:
    """The form whose kernel gives the router's own logits, experts and weights on random input, or None."""
    from .routers import router_choice

    w = module.weight
    g = torch.Generator(device=w.device).manual_seed(0)
    x = torch.randn(3, w.shape[1], device=w.device, dtype=w.dtype, generator=g)
    ref = type(module).forward(module, x)
    if not (isinstance(ref, tuple) and len(ref) == 3 and isinstance(ref[0], torch.Tensor)):
        return None
    ref_idx, ref_w = router_choice(module, ref)
    logits = torch.nn.functional.linear(x.reshape(-1, w.shape[1]), w, getattr(module, "bias", None))
    if ref_idx.shape[-1] != top_k or not torch.equal(logits, ref[0].reshape(logits.shape)):
        return None
    scores = logits.float()
    for form in _ROUTER_FORMS:
        weights, idx = route(logits, top_k, form, ref_w.dtype)
        # the same experts, except where two have exactly equal logits (bf16 ties: either is the top-k)
        same = torch.equal(idx, ref_idx) or torch.equal(scores.gather(-1, idx), scores.gather(-1, ref_idx))
        if same and _close(weights, ref_w):
            return form
    return None


def _router_forward(module, form: tuple[int, bool], top_k: int, dtype: torch.dtype, out_dtype: torch.dtype):
    original = type(module).forward

    def forward(hidden_states, *args, **kwargs):
        if args or kwargs or not hidden_states.is_cuda or hidden_states.dtype != dtype:
            return original(module, hidden_states, *args, **kwargs)
        x = hidden_states.reshape(-1, module.weight.shape[1])
        logits = torch.nn.functional.linear(x, module.weight, getattr(module, "bias", None))
        weights, idx = route(logits, top_k, form, out_dtype)
        return logits, weights, idx

    return forward


# ----------------------------------------------------------------- install


@dataclass
class Installed:
    """What :func:`install` put on a model; ``remove()`` undoes it."""

    experts: int = 0
    experts_form: str = ""
    routers: int = 0
    norms: int = 0
    rope_modules: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    _undo: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {
            "experts": self.experts,
            "experts_form": self.experts_form,
            "routers": self.routers,
            "norms": self.norms,
            "rope": len(self.rope_modules),
            "skipped": self.skipped,
        }

    def remove(self) -> None:
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()


def _register_experts() -> bool:
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return False
    if EXPERTS_IMPL not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(EXPERTS_IMPL, fused_experts_forward)
    return True


def _top_k(model) -> int:
    cfg = model.config
    for attr in ("num_experts_per_tok", "experts_per_token", "moe_topk", "top_k"):
        v = getattr(cfg, attr, None) or getattr(getattr(cfg, "text_config", None), attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2


def install(
    model,
    experts: bool = True,
    norms: bool = True,
    rotary: bool = True,
    routers: bool = True,
    transposed_experts: bool = False,
) -> Installed:
    """Probe and install the kernels on a CUDA model (a no-op without Triton or off CUDA).

    ``transposed_experts``: also fuse experts stored transposed (off by default, see :func:`_rows`)."""
    done = Installed()
    params = list(model.parameters())
    if not available() or not params or params[0].device.type != "cuda":
        done.skipped.append("no Triton or not on CUDA")
        return done
    with torch.inference_mode():
        if experts and _register_experts():
            for _name, m in model.named_modules():
                if not _is_fused_experts(m) or not m.down_proj.is_cuda:
                    continue
                if not transposed_experts and not _rows(m):
                    if f"experts {type(m).__name__}: transposed" not in done.skipped:
                        done.skipped.append(f"experts {type(m).__name__}: transposed")
                    continue
                w = m.gate_up_proj if m.has_gate else m.up_proj
                key = (
                    type(m),
                    tuple(w.shape),
                    tuple(m.down_proj.shape),
                    w.dtype,
                    str(w.device),
                    _top_k(model),
                    m.has_bias,
                    m.is_transposed,
                )
                if key not in _plans:
                    try:
                        _plans[key] = _probe_experts(m, _top_k(model))
                    except Exception as e:  # keep batched_mm for this layout
                        done.skipped.append(f"experts {type(m).__name__}: {type(e).__name__}")
                        _plans[key] = None
                plan = _plans[key]
                if plan is None:
                    continue
                m._archlab_experts = ExpertsPlan(plan.form, plan.up_block, plan.down_block, plan.warps)
                done.experts += 1
                done.experts_form = f"{plan.form} up{plan.up_block} down{plan.down_block} w{plan.warps}"
                done._undo.append(lambda m=m: m.__dict__.pop("_archlab_experts", None))
        if routers:
            _install_routers(model, done)
        if norms:
            found: dict[tuple, Optional[tuple[int, torch.dtype]]] = {}
            for m in model.modules():
                if not _is_norm(m) or not m.weight.is_cuda or "forward" in m.__dict__:
                    continue
                key = (type(m), m.weight.dtype, m.weight.device, _norm_eps(m))
                if key not in found:
                    try:
                        found[key] = _probe_norm(m)
                    except Exception as e:
                        done.skipped.append(f"norm {type(m).__name__}: {type(e).__name__}")
                        found[key] = None
                if found[key] is None:
                    continue
                mode, out_dtype = found[key]
                m.forward = _norm_forward(m, mode, m.weight.dtype, out_dtype)
                done.norms += 1
                done._undo.append(lambda m=m: m.__dict__.pop("forward", None))
        if rotary:
            _install_rope(model, done, params[0])
    return done


def _install_routers(model, done: Installed) -> None:
    from .routers import router_modules, router_top_k

    forms: dict[tuple, Optional[tuple[int, bool]]] = {}
    for _, m in router_modules(model):
        k = router_top_k(m)
        if not _is_router(m, k) or not m.weight.is_cuda or "forward" in m.__dict__:
            continue
        key = (type(m), tuple(m.weight.shape), m.weight.dtype, k)
        if key not in forms:
            try:
                forms[key] = _probe_router(m, k)
            except Exception as e:
                done.skipped.append(f"router {type(m).__name__}: {type(e).__name__}")
                forms[key] = None
            if forms[key] is None:
                done.skipped.append(f"router {type(m).__name__}")
        if forms[key] is None:
            continue
        out = type(m).forward(m, torch.zeros(1, m.weight.shape[1], device=m.weight.device, dtype=m.weight.dtype))
        m.forward = _router_forward(m, forms[key], k, m.weight.dtype, out[1].dtype)
        done.routers += 1
        done._undo.append(lambda m=m: m.__dict__.pop("forward", None))


def _install_rope(model, done: Installed, param: torch.Tensor) -> None:
    head_dim = getattr(model.config, "head_dim", None) or getattr(
        getattr(model.config, "text_config", None), "head_dim", None
    )
    if not isinstance(head_dim, int):
        cfg = getattr(model.config, "text_config", None) or model.config
        try:
            head_dim = cfg.hidden_size // cfg.num_attention_heads
        except (AttributeError, TypeError, ZeroDivisionError):
            return
    names = {type(m).__module__ for m in model.modules() if "attention" in type(m).__name__.lower()}
    for name in sorted(names):
        mod = sys.modules.get(name)
        fn = getattr(mod, "apply_rotary_pos_emb", None)
        if not callable(fn):
            continue
        with _rope_lock:
            original = getattr(fn, "__wrapped__", fn) if getattr(fn, "_archlab_rope", False) else fn
            if not getattr(fn, "_archlab_rope", False):
                try:
                    params = list(inspect.signature(fn).parameters)[:4]
                except (TypeError, ValueError):
                    continue
                if params != ["q", "k", "cos", "sin"] or not _probe_rope(fn, head_dim, param.device, param.dtype):
                    done.skipped.append(f"rope {name.rsplit('.', 1)[-1]}")
                    continue
                mod.apply_rotary_pos_emb = _rope_wrapper(fn)
            _rope_users[name] = _rope_users.get(name, 0) + 1
        done.rope_modules.append(name)
        done._undo.append(lambda name=name, mod=mod, original=original: _release_rope(name, mod, original))


def _release_rope(name: str, mod, original: Callable) -> None:
    with _rope_lock:
        _rope_users[name] = _rope_users.get(name, 1) - 1
        if _rope_users[name] <= 0:
            _rope_users.pop(name, None)
            mod.apply_rotary_pos_emb = original


_installs_lock = threading.Lock()


def acquire(model) -> Installed:
    """The kernels installed on ``model``, installing them on first use (counted: see :func:`release`)."""
    with _installs_lock:
        held = model.__dict__.get("_archlab_kernels")
        if held is None:
            held = [install(model), 0]
            model.__dict__["_archlab_kernels"] = held
        held[1] += 1
        return held[0]


def release(model) -> None:
    """One user of :func:`acquire` is done; the last one removes the kernels."""
    with _installs_lock:
        held = model.__dict__.get("_archlab_kernels")
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            held[0].remove()
            del model.__dict__["_archlab_kernels"]
