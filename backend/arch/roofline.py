"""Roofline speed estimates: prefill time and decode tokens/s of a model on a GPU.

Each step of the model is split into operations (attention projections, attention over the KV cache,
dense MLP, experts, LM head, embedding rows and norms). An operation moves ``bytes`` through memory and
does ``flops`` of arithmetic; on a GPU with bandwidth BW and peak P it takes ``max(bytes / BW, flops / P)``
and is memory-bound when the first term is the larger. A step takes the sum over its operations. This is
the upper bound of what the hardware allows (no kernel launch, host or communication overhead), not a
fitted prediction: ArchLab's measurements are shown beside it, never folded into it.

What is counted, read from the ArchSpec and the exact parameter counts:
- weights are read once per step whatever the batch; activations between operations are not counted;
- MoE: at batch B each of the E routed experts of a layer is touched with probability 1 − (1 − k/E)^B
  (tokens route independently and uniformly), so E·(1 − (1 − k/E)^B) distinct experts are read, while the
  arithmetic follows the k experts per token; shared experts and routers are always read;
- attention: a decode step reads the cached tokens each layer attends to: all L for full layers,
  min(L, W) for sliding-window layers, the tokens of the current chunk for chunked layers, and a fixed state
  (read and written) for linear-attention layers;
- MLA, two ways: ``engine`` (latent cache, up-projections absorbed into the query and output, as vLLM and
  SGLang run it: the cache read is (kv_lora_rank + rope) per token and the scores work in the latent space)
  and ``transformers`` (latent cache re-expanded by ``kv_b_proj`` for every cached token at every step, then
  ordinary attention over the expanded keys and values, as transformers 5.x runs it);
- prefill computes logits for the last token of each sequence only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .architecture import Architecture, Source, resolve
from .errors import ArchLabError
from .gpus import GPU
from .memory import DTYPE_BYTES, MAX_BATCH, MAX_CONTEXT, layer_kv_elements_per_token, linear_state_elements
from .spec import ArchSpec
from .working import Working, num

#: dtype -> (bytes per weight, tensor-core dtype of the arithmetic). int4 is weight-only (arithmetic in
#: bf16) and counts the 4-bit payload without group scales, like ``memory.DTYPE_BYTES``.
SPEED_DTYPES = {"bf16": (2.0, "bf16"), "fp16": (2.0, "bf16"), "fp8": (1.0, "fp8"), "int4": (0.5, "bf16")}
KV_DTYPES = ("bf16", "fp16", "fp8", "fp32")
MLA_MODES = ("engine", "transformers")
COMPONENT_ORDER = ("attention", "attention_kv", "dense_mlp", "experts", "lm_head", "other")
COMPONENT_LABELS = {
    "attention": "Attention: projections",
    "attention_kv": "Attention: KV cache / state",
    "dense_mlp": "Dense MLP",
    "experts": "Experts (routed + shared + router)",
    "lm_head": "LM head",
    "other": "Embedding rows + norms",
}
LAYER_NAMES = {"full": "full", "sliding": "sliding-window", "chunked": "chunked", "linear": "linear-attention"}


@dataclass(frozen=True)
class Op:
    """One operation of a step: bytes moved, arithmetic done, and its time on the GPU."""

    component: str
    bytes: float
    flops: float
    memory_s: float
    compute_s: float

    @property
    def time_s(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    @property
    def intensity(self) -> float:
        """FLOP per byte moved."""
        return self.flops / self.bytes if self.bytes else float("inf")


@dataclass(frozen=True)
class Phase:
    """A prefill or one decode step: its operations and total time."""

    ops: tuple[Op, ...]
    working: Working = field(compare=False, repr=False)

    @property
    def time_s(self) -> float:
        return sum(op.time_s for op in self.ops)

    @property
    def bytes(self) -> float:
        return sum(op.bytes for op in self.ops)

    @property
    def flops(self) -> float:
        return sum(op.flops for op in self.ops)

    @property
    def bound(self) -> str:
        """Memory-bound when memory-bound operations take most of the time."""
        mem = sum(op.time_s for op in self.ops if op.bound == "memory")
        return "memory" if mem >= self.time_s / 2 else "compute"

    def components(self) -> list["Component"]:
        """Operations summed per component, in COMPONENT_ORDER (times add)."""
        out = []
        for comp in COMPONENT_ORDER:
            ops = [o for o in self.ops if o.component == comp]
            if ops:
                t = sum(o.time_s for o in ops)
                mem = sum(o.time_s for o in ops if o.bound == "memory")
                out.append(
                    Component(
                        comp,
                        sum(o.bytes for o in ops),
                        sum(o.flops for o in ops),
                        t,
                        "memory" if mem >= t / 2 else "compute",
                    )
                )
        return out


@dataclass(frozen=True)
class Component:
    """A component's operations in one phase: bytes, FLOPs, time and what bounds most of that time."""

    component: str
    bytes: float
    flops: float
    time_s: float
    bound: str

    @property
    def label(self) -> str:
        return COMPONENT_LABELS.get(self.component, self.component)


@dataclass(frozen=True)
class SpeedEstimate:
    model: str
    gpu: GPU
    batch: int
    context: int
    prompt: int
    dtype: str
    kv_dtype: str
    mla: Optional[str]  # engine / transformers for MLA models, else None
    compute_dtype: str  # tensor-core dtype the arithmetic runs in
    experts_touched: Optional[float]  # expected distinct routed experts per MoE layer in a decode step
    decode: Phase
    prefill: Phase
    within_context: bool

    @property
    def step_s(self) -> float:
        return self.decode.time_s

    @property
    def tok_s(self) -> float:
        """Decode tokens/s of one sequence."""
        return 1.0 / self.decode.time_s

    @property
    def total_tok_s(self) -> float:
        """Decode tokens/s over the whole batch."""
        return self.batch / self.decode.time_s

    @property
    def prefill_s(self) -> float:
        return self.prefill.time_s


def _check(name: str, v, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= hi:
        raise ArchLabError(f"{name} must be an integer from 1 to {hi:,}, got {v!r}")
    return v


def _dtypes(gpu: GPU, dtype: str, kv_dtype: Optional[str]) -> tuple[float, str, str, float]:
    if dtype not in SPEED_DTYPES:
        raise ArchLabError(f"unknown dtype {dtype!r} for a speed estimate; choose one of {', '.join(SPEED_DTYPES)}")
    wb, compute = SPEED_DTYPES[dtype]
    if compute == "fp8" and not gpu.fp8_flops:
        compute = "bf16"  # weight-only fp8: weights read at 1 byte, arithmetic in bf16
    kv = kv_dtype or ("bf16" if dtype == "int4" else dtype)
    if kv not in KV_DTYPES:
        raise ArchLabError(f"unknown KV-cache dtype {kv!r}; choose one of {', '.join(KV_DTYPES)}")
    return wb, compute, kv, DTYPE_BYTES[kv]


def tokens_read(kind: str, context: int, window: Optional[int]) -> int:
    """Cached tokens one decode step attends to in a layer of this kind (``context`` includes the new token)."""
    if kind == "sliding" and window:
        return min(context, window)
    if kind == "chunked" and window:
        return (context - 1) % window + 1
    return context


def prefill_pairs(kind: str, n: int, window: Optional[int]) -> int:
    """(query, key) pairs causal attention scores over a prompt of ``n`` tokens in a layer of this kind."""
    if kind == "sliding" and window and n > window:
        return window * (window + 1) // 2 + (n - window) * window
    if kind == "chunked" and window:
        full, rest = divmod(n, window)
        return full * window * (window + 1) // 2 + rest * (rest + 1) // 2
    return n * (n + 1) // 2


def experts_touched(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts chosen by ``tokens`` tokens each routing to top-k of E (uniform, independent)."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


class _Builder:
    """Records operations and the working behind them."""

    def __init__(self, title: str, gpu: GPU, compute: str):
        self.w = Working(title)
        self.gpu, self.bw, self.peak = gpu, gpu.bandwidth_Bps, gpu.flops(compute)
        self.ops: list[Op] = []
        self.w.note(
            f"{gpu.name}: BW = {gpu.bandwidth_Bps / 1e12:g} TB/s, peak = {self.peak / 1e12:g} TFLOP/s "
            f"({compute}, dense); time of an operation = max(bytes / BW, FLOPs / peak)."
        )

    def op(
        self,
        component: str,
        label: str,
        bytes_f: str,
        bytes_n: str,
        nbytes: float,
        flops_f: str,
        flops_n: str,
        flops: float,
    ) -> None:
        w = self.w
        w.step(f"{label}: bytes", bytes_f, bytes_n, nbytes, "B")
        w.step(f"{label}: FLOPs", flops_f, flops_n, flops, "FLOP")
        mem, comp = nbytes / self.bw, flops / self.peak
        o = Op(component, nbytes, flops, mem, comp)
        w.step(
            f"{label}: time ({o.bound}-bound)",
            "max(bytes / BW, FLOPs / peak)",
            f"max({num(nbytes)} / {self.bw:.4g}, {num(flops)} / {self.peak:.4g})",
            o.time_s,
            "s",
        )
        self.ops.append(o)


def _layer_groups(spec: ArchSpec) -> dict[str, int]:
    groups: dict[str, int] = {}
    for layer in spec.layers:
        groups[layer.attention] = groups.get(layer.attention, 0) + 1
    return groups


def _params(arch: Architecture) -> dict[str, int]:
    c = arch.counts.components
    return {
        k: int(c.get(k, 0))
        for k in (
            "embeddings",
            "attention",
            "dense_mlp",
            "routed_experts",
            "shared_experts",
            "router",
            "norms",
            "lm_head",
            "other",
        )
    }


def _decode(
    arch: Architecture, gpu: GPU, batch: int, context: int, wb: float, compute: str, kv: str, kvb: float, mla: str
) -> tuple[Phase, Optional[float]]:
    s, p = arch.spec, _params(arch)
    B = batch
    b = _Builder(
        f"Decode step: batch {B}, {context:,} tokens of context, weights {wb:g} B each, KV cache {kv}", gpu, compute
    )
    H, V = s.hidden_size, s.vocab_size
    # --- attention projections
    pa = p["attention"]
    mla_t = s.mla is not None and mla == "transformers"
    if mla_t:
        m = s.mla
        kvb_params = s.num_layers * m.kv_lora_rank * s.num_heads * (m.qk_nope_head_dim + m.v_head_dim)
        b.op(
            "attention",
            "attention projections",
            "P_attn × b_w",
            f"{num(pa)} × {num(wb)}",
            pa * wb,
            "2 × B × (P_attn − P_kv_b)",
            f"2 × {B} × ({num(pa)} − {num(kvb_params)})",
            2 * B * (pa - kvb_params),
        )
    else:
        b.op(
            "attention",
            "attention projections",
            "P_attn × b_w",
            f"{num(pa)} × {num(wb)}",
            pa * wb,
            "2 × B × P_attn",
            f"2 × {B} × {num(pa)}",
            2 * B * pa,
        )
    # --- attention over the cache, one group per layer kind
    for kind, n in _layer_groups(s).items():
        name = f"attention over the cache, {n} {LAYER_NAMES.get(kind, kind)} layers"
        if kind == "linear":
            la = s.linear
            st = linear_state_elements(s)
            b.op(
                "attention_kv",
                name,
                "n × 2 × B × state × b_kv (read + write)",
                f"{n} × 2 × {B} × {num(st)} × {num(kvb)}",
                n * 2 * B * st * kvb,
                "n × B × 6 × heads_v × d_k × d_v",
                f"{n} × {B} × 6 × {la.num_value_heads} × {la.key_head_dim} × {la.value_head_dim}",
                n * B * 6 * la.num_value_heads * la.key_head_dim * la.value_head_dim,
            )
            continue
        T = tokens_read(kind, context, s.window)
        if kind == "sliding" and s.window:
            formula, numbers = "min(L, W)", f"min({context:,}, {s.window:,})"
        elif kind == "chunked" and s.window:
            formula, numbers = "((L − 1) mod C) + 1", f"(({context:,} − 1) mod {s.window:,}) + 1"
        else:
            formula, numbers = "L", f"{context:,}"
        b.w.step(f"tokens read per {LAYER_NAMES.get(kind, kind)} layer (T)", formula, numbers, T)
        if s.mla is not None and mla == "engine":
            m = s.mla
            lat = m.kv_lora_rank + m.qk_rope_head_dim
            b.op(
                "attention_kv",
                name + " (MLA, absorbed)",
                "n × B × T × (r_kv + d_rope) × b_kv",
                f"{n} × {B} × {num(T)} × ({m.kv_lora_rank} + {m.qk_rope_head_dim}) × {num(kvb)}",
                n * B * T * lat * kvb,
                "n × 2 × B × T × heads × (2 r_kv + d_rope)",
                f"{n} × 2 × {B} × {num(T)} × {s.num_heads} × (2 × {m.kv_lora_rank} + {m.qk_rope_head_dim})",
                n * 2 * B * T * s.num_heads * (2 * m.kv_lora_rank + m.qk_rope_head_dim),
            )
        elif s.mla is not None:
            m = s.mla
            lat = m.kv_lora_rank + m.qk_rope_head_dim
            qk = m.qk_nope_head_dim + m.qk_rope_head_dim
            exp = s.num_heads * (qk + m.v_head_dim)
            b.op(
                "attention_kv",
                name + " (MLA as transformers runs it: re-expanded each step)",
                "n × B × T × b_kv × ((r_kv + d_rope) + 2 × heads × (d_qk + d_v))",
                f"{n} × {B} × {num(T)} × {num(kvb)} × ({lat} + 2 × {s.num_heads} × ({qk} + {m.v_head_dim}))",
                n * B * T * kvb * (lat + 2 * exp),
                "n × 2 × B × T × heads × (r_kv × (d_nope + d_v) + d_qk + d_v)",
                f"{n} × 2 × {B} × {num(T)} × {s.num_heads} × ({m.kv_lora_rank} × ({m.qk_nope_head_dim} + "
                f"{m.v_head_dim}) + {qk} + {m.v_head_dim})",
                n
                * 2
                * B
                * T
                * s.num_heads
                * (m.kv_lora_rank * (m.qk_nope_head_dim + m.v_head_dim) + qk + m.v_head_dim),
            )
        else:
            e = layer_kv_elements_per_token(s, kind)
            b.op(
                "attention_kv",
                name,
                "n × B × T × kv_heads × (d_k + d_v) × b_kv",
                f"{n} × {B} × {num(T)} × {s.num_kv_heads} × ({s.head_dim} + {s.v_head_dim}) × {num(kvb)}",
                n * B * T * e * kvb,
                "n × 2 × B × T × heads × (d_k + d_v)",
                f"{n} × 2 × {B} × {num(T)} × {s.num_heads} × ({s.head_dim} + {s.v_head_dim})",
                n * 2 * B * T * s.num_heads * (s.head_dim + s.v_head_dim),
            )
    # --- dense MLP
    if p["dense_mlp"]:
        pd_ = p["dense_mlp"]
        b.op(
            "dense_mlp",
            "dense MLP",
            "P_mlp × b_w",
            f"{num(pd_)} × {num(wb)}",
            pd_ * wb,
            "2 × B × P_mlp",
            f"2 × {B} × {num(pd_)}",
            2 * B * pd_,
        )
    # --- experts
    touched = None
    if s.moe is not None:
        m = s.moe
        n_moe = len(m.layers)
        pe = p["routed_experts"] / (n_moe * m.num_experts)
        touched = b.w.step(
            "distinct experts touched per MoE layer",
            "E × (1 − (1 − k / E)^B)",
            f"{m.num_experts} × (1 − (1 − {m.top_k} / {m.num_experts})^{B})",
            experts_touched(m.num_experts, m.top_k, B),
        )
        always = p["shared_experts"] + p["router"]
        b.op(
            "experts",
            "experts",
            "(n_moe × touched × P_expert + P_shared + P_router) × b_w",
            f"({n_moe} × {touched:,.3f} × {num(pe)} + {num(p['shared_experts'])} + {num(p['router'])}) × {num(wb)}",
            (n_moe * touched * pe + always) * wb,
            "2 × B × (n_moe × k × P_expert + P_shared + P_router)",
            f"2 × {B} × ({n_moe} × {m.top_k} × {num(pe)} + {num(p['shared_experts'])} + {num(p['router'])})",
            2 * B * (n_moe * m.top_k * pe + always),
        )
    # --- LM head (the embedding matrix when tied)
    b.op(
        "lm_head",
        "LM head",
        "V × H × b_w",
        f"{V:,} × {H:,} × {num(wb)}",
        V * H * wb,
        "2 × B × V × H",
        f"2 × {B} × {V:,} × {H:,}",
        2 * B * V * H,
    )
    # --- embedding rows and norms (small)
    small = p["norms"] + p["other"]
    b.op(
        "other",
        "embedding rows + norms",
        "(B × H + P_norms) × b_w",
        f"({B} × {H:,} + {num(small)}) × {num(wb)}",
        (B * H + small) * wb,
        "4 × B × P_norms",
        f"4 × {B} × {num(p['norms'])}",
        4 * B * p["norms"],
    )
    phase = Phase(tuple(b.ops), b.w)
    b.w.step(
        "decode step",
        "Σ operation times",
        " + ".join(f"{o.time_s * 1e3:.4g} ms" for o in b.ops),
        sum(o.time_s for o in b.ops),
        "s",
    )
    b.w.step("tokens/s per sequence", "1 / step", f"1 / {phase.time_s:.6g}", 1 / phase.time_s, "tok/s")
    if B > 1:
        b.w.step("tokens/s over the batch", "B / step", f"{B} / {phase.time_s:.6g}", B / phase.time_s, "tok/s")
    return phase, touched


def _prefill(arch: Architecture, gpu: GPU, batch: int, n: int, wb: float, compute: str, kv: str, kvb: float) -> Phase:
    s, p = arch.spec, _params(arch)
    B, M = batch, batch * n
    b = _Builder(f"Prefill: batch {B} × {n:,} prompt tokens, weights {wb:g} B each, KV cache {kv}", gpu, compute)
    H, V = s.hidden_size, s.vocab_size
    pa = p["attention"]
    b.op(
        "attention",
        "attention projections",
        "P_attn × b_w",
        f"{num(pa)} × {num(wb)}",
        pa * wb,
        "2 × B × N × P_attn",
        f"2 × {B} × {n:,} × {num(pa)}",
        2 * M * pa,
    )
    for kind, count in _layer_groups(s).items():
        name = f"attention scores, {count} {LAYER_NAMES.get(kind, kind)} layers"
        if kind == "linear":
            la = s.linear
            st = linear_state_elements(s)
            b.op(
                "attention_kv",
                name,
                "n × B × state × b_kv (final state written)",
                f"{count} × {B} × {num(st)} × {num(kvb)}",
                count * B * st * kvb,
                "n × B × N × 6 × heads_v × d_k × d_v",
                f"{count} × {B} × {n:,} × 6 × {la.num_value_heads} × {la.key_head_dim} × {la.value_head_dim}",
                count * M * 6 * la.num_value_heads * la.key_head_dim * la.value_head_dim,
            )
            continue
        if kind == "sliding" and s.window:
            formula, numbers = "Σ_{i=1..N} min(i, W)", f"N = {n:,}, W = {s.window:,}"
        elif kind == "chunked" and s.window:
            formula, numbers = "⌊N/C⌋ × C(C + 1)/2 + r(r + 1)/2, r = N mod C", f"N = {n:,}, C = {s.window:,}"
        else:
            formula, numbers = "N(N + 1) / 2", f"{n:,} × {n + 1:,} / 2"
        pairs = b.w.step(
            f"causal (query, key) pairs per {LAYER_NAMES.get(kind, kind)} layer",
            formula,
            numbers,
            prefill_pairs(kind, n, s.window),
        )
        e = layer_kv_elements_per_token(s, kind, "latent")
        if s.mla is not None:  # prefill runs MLA expanded (no absorption) in engines and transformers alike
            m = s.mla
            dk, dv = m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim
        else:
            dk, dv = s.head_dim, s.v_head_dim
        b.op(
            "attention_kv",
            name,
            "n × B × N × kv_elements × b_kv (cache written)",
            f"{count} × {B} × {n:,} × {e} × {num(kvb)}",
            count * M * e * kvb,
            "n × 2 × B × pairs × heads × (d_k + d_v)",
            f"{count} × 2 × {B} × {num(pairs)} × {s.num_heads} × ({dk} + {dv})",
            count * 2 * B * pairs * s.num_heads * (dk + dv),
        )
    if p["dense_mlp"]:
        pd_ = p["dense_mlp"]
        b.op(
            "dense_mlp",
            "dense MLP",
            "P_mlp × b_w",
            f"{num(pd_)} × {num(wb)}",
            pd_ * wb,
            "2 × B × N × P_mlp",
            f"2 × {B} × {n:,} × {num(pd_)}",
            2 * M * pd_,
        )
    if s.moe is not None:
        m = s.moe
        n_moe = len(m.layers)
        pe = p["routed_experts"] / (n_moe * m.num_experts)
        touched = b.w.step(
            "distinct experts touched per MoE layer",
            "E × (1 − (1 − k / E)^(B × N))",
            f"{m.num_experts} × (1 − (1 − {m.top_k} / {m.num_experts})^{M:,})",
            experts_touched(m.num_experts, m.top_k, M),
        )
        always = p["shared_experts"] + p["router"]
        b.op(
            "experts",
            "experts",
            "(n_moe × touched × P_expert + P_shared + P_router) × b_w",
            f"({n_moe} × {touched:,.3f} × {num(pe)} + {num(always)}) × {num(wb)}",
            (n_moe * touched * pe + always) * wb,
            "2 × B × N × (n_moe × k × P_expert + P_shared + P_router)",
            f"2 × {B} × {n:,} × ({n_moe} × {m.top_k} × {num(pe)} + {num(always)})",
            2 * M * (n_moe * m.top_k * pe + always),
        )
    b.op(
        "lm_head",
        "LM head (last token of each sequence)",
        "V × H × b_w",
        f"{V:,} × {H:,} × {num(wb)}",
        V * H * wb,
        "2 × B × V × H",
        f"2 × {B} × {V:,} × {H:,}",
        2 * B * V * H,
    )
    small = p["norms"] + p["other"]
    b.op(
        "other",
        "embedding rows + norms",
        "(B × N × H + P_norms) × b_w",
        f"({B} × {n:,} × {H:,} + {num(small)}) × {num(wb)}",
        (M * H + small) * wb,
        "4 × B × N × P_norms",
        f"4 × {B} × {n:,} × {num(p['norms'])}",
        4 * M * p["norms"],
    )
    phase = Phase(tuple(b.ops), b.w)
    b.w.step(
        "prefill time",
        "Σ operation times",
        " + ".join(f"{o.time_s * 1e3:.4g} ms" for o in b.ops),
        sum(o.time_s for o in b.ops),
        "s",
    )
    return phase


def estimate(
    source: Source,
    gpu: GPU,
    batch: int = 1,
    context: int = 2048,
    prompt: int = 512,
    dtype: str = "bf16",
    kv_dtype: Optional[str] = None,
    mla: str = "engine",
) -> SpeedEstimate:
    """Roofline prefill time and decode speed of a model on ``gpu``.

    ``context``: tokens each sequence attends to during the decode step (prompt + generated so far);
    ``prompt``: tokens per sequence in the prefill; ``kv_dtype``: defaults to ``dtype`` (bf16 for int4);
    ``mla``: ``engine`` or ``transformers`` (ignored for models without MLA). ArchLabError on bad input.
    """
    arch = source if isinstance(source, Architecture) else resolve(source)
    _check("batch", batch, MAX_BATCH)
    _check("context", context, MAX_CONTEXT)
    _check("prompt length", prompt, MAX_CONTEXT)
    if mla not in MLA_MODES:
        raise ArchLabError(f"MLA mode must be one of {', '.join(MLA_MODES)}, got {mla!r}")
    wb, compute, kv, kvb = _dtypes(gpu, dtype, kv_dtype)
    s = arch.spec
    decode, touched = _decode(arch, gpu, batch, context, wb, compute, kv, kvb, mla)
    prefill = _prefill(arch, gpu, batch, prompt, wb, compute, kv, kvb)
    if compute != SPEED_DTYPES[dtype][1]:
        for w in (decode.working, prefill.working):
            w.note(
                f"{gpu.name} has no {SPEED_DTYPES[dtype][1]} tensor cores: weights are read at {wb:g} byte(s) "
                "and the arithmetic runs in bf16 (weight-only quantization)."
            )
    if dtype == "int4":
        for w in (decode.working, prefill.working):
            w.note("int4 counts the 4-bit payload only (group scales add a few per cent); arithmetic in bf16.")
    limit = s.max_context or MAX_CONTEXT
    return SpeedEstimate(
        arch.label,
        gpu,
        batch,
        context,
        prompt,
        dtype,
        kv,
        mla if s.mla is not None else None,
        compute,
        touched,
        decode,
        prefill,
        max(context, prompt) <= limit,
    )
