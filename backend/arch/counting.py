"""Exact parameter counts: from the meta-device model, by component, and by formula.

Two independent paths: :func:`count_tensors` sums the tensors transformers builds;
:func:`count_formula` computes the same components from the :class:`ArchSpec` alone. An
``Architecture`` keeps both (``.counts``, ``.formula_counts``).
Tests hold them equal to the parameter for every catalog model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .spec import ArchSpec
from .working import Working, num

COMPONENTS = ("embeddings", "attention", "dense_mlp", "routed_experts", "shared_experts", "router", "norms", "lm_head")
COMPONENT_LABELS = {
    "embeddings": "Embeddings",
    "attention": "Attention",
    "dense_mlp": "Dense MLP",
    "routed_experts": "Routed experts",
    "shared_experts": "Shared experts",
    "router": "Router",
    "norms": "Norms",
    "lm_head": "LM head",
}


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int
    components: dict[str, int] = field(default_factory=dict)

    def active_excluding(self, components: tuple[str, ...] | list[str]) -> int:
        """Active parameters without some always-active components (vendors' conventions differ)."""
        return self.active - sum(self.components.get(c, 0) for c in components)

    @property
    def active_share(self) -> float:
        return self.active / self.total if self.total else 0.0


def component_of(name: str) -> str:
    """Which component a parameter belongs to, from its dotted name."""
    parts = name.split(".")
    leaf = set(parts)
    if "shared_expert" in leaf or "shared_experts" in leaf or "shared_expert_gate" in leaf or "shared_mlp" in leaf:
        return "shared_experts"
    if "experts" in leaf:
        return "routed_experts"
    if "router" in leaf or (("mlp" in leaf or "feed_forward" in leaf or "block_sparse_moe" in leaf) and "gate" in leaf):
        return "router"
    if any("norm" in p or p.startswith("ln_") for p in parts):
        return "norms"
    if leaf & {"embed_tokens", "wte", "wpe", "embed_positions", "word_embeddings"}:
        return "embeddings"
    if "lm_head" in leaf:
        return "lm_head"
    if leaf & {"self_attn", "attn", "linear_attn", "attention"}:
        return "attention"
    if leaf & {"mlp", "feed_forward", "block_sparse_moe"}:
        return "dense_mlp"
    return "other"


def _active(spec: ArchSpec, components: dict[str, int]) -> int:
    return int(active_working(spec, components).value("active"))


def active_working(spec: ArchSpec, components: dict[str, int]) -> Working:
    """Total and active parameters from the components, with the formula and this model's numbers."""
    w = Working("Total and active parameters")
    total = w.step(
        "total", "Σ components", " + ".join(num(v) for v in components.values() if v), sum(components.values())
    )
    if spec.moe is None:
        w.step("active", "total (dense: every parameter runs for every token)", num(total), total)
        return w
    routed = components["routed_experts"]
    m = spec.moe
    # Every token runs top_k of the E routed experts in each MoE layer (all layers share E).
    w.step(
        "active",
        "total − routed + routed × k / E",
        f"{num(total)} − {num(routed)} + {num(routed)} × {m.top_k} / {m.num_experts}",
        total - routed + routed * m.top_k // m.num_experts,
    )
    return w


def count_tensors(model, spec: ArchSpec) -> ParamCount:
    """Exact total/active parameters and per-component breakdown from a (meta-device) model's tensors."""
    comps = dict.fromkeys(COMPONENTS, 0)
    for name, p in model.named_parameters():  # shared (tied) tensors are listed once
        c = component_of(name)
        comps[c] = comps.get(c, 0) + p.numel()
    if comps.get("other") == 0:
        comps.pop("other", None)
    return ParamCount(sum(comps.values()), _active(spec, comps), comps)


# ----------------------------------------------------------------- formula path


def _attention(s: ArchSpec, layer_type: str) -> tuple[int, int]:
    """(attention params, attention-internal norm params) of one layer."""
    H = s.hidden_size
    if layer_type == "linear":
        la = s.linear
        key_dim, value_dim = la.num_key_heads * la.key_head_dim, la.num_value_heads * la.value_head_dim
        params = (
            H * (2 * key_dim + 2 * value_dim)  # q, k, v and output gate z
            + H * 2 * la.num_value_heads  # beta and decay a
            + (2 * key_dim + value_dim) * la.conv_kernel  # depthwise causal conv
            + 2 * la.num_value_heads  # dt bias, A_log
            + value_dim * H
        )  # output projection
        return params, la.value_head_dim  # gated RMSNorm over the value head
    if s.mla is not None:
        m, nh = s.mla, s.num_heads
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank:
            q, q_norm = H * m.q_lora_rank + m.q_lora_rank * nh * qk, m.q_lora_rank
        else:
            q, q_norm = H * nh * qk, 0
        kv = H * (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank * nh * (m.qk_nope_head_dim + m.v_head_dim)
        params = q + kv + nh * m.v_head_dim * H
        if s.qkv_bias:  # on the down-projections into the latents (the up-projections carry none)
            params += (m.q_lora_rank or 0) + m.kv_lora_rank + m.qk_rope_head_dim
        if s.out_bias:
            params += H
        return params, q_norm + m.kv_lora_rank
    q_out = s.num_heads * s.head_dim * (2 if s.output_gate else 1)
    kv_out = s.num_kv_heads * (s.head_dim + s.v_head_dim)
    params = H * (q_out + kv_out) + s.num_heads * s.v_head_dim * H
    if s.qkv_bias:
        params += q_out + kv_out
    if s.out_bias:
        params += H
    if s.attention_sinks:
        params += s.num_heads
    norms = {"per-head": 2 * s.head_dim, "full-width": (s.num_heads + s.num_kv_heads) * s.head_dim}.get(s.qk_norm, 0)
    return params, norms


def _mlp(H: int, width: int, gated: bool, bias: bool) -> int:
    n = (3 if gated else 2) * H * width
    if bias:
        n += (2 if gated else 1) * width + H
    return n


def count_formula(s: ArchSpec) -> ParamCount:
    """Total/active/components computed from the ArchSpec by formula (no tensors involved)."""
    H, V = s.hidden_size, s.vocab_size
    norm = H * (2 if s.norm_bias else 1)
    c = dict.fromkeys(COMPONENTS, 0)
    c["embeddings"] = V * H + (s.max_context * H if s.position == "absolute" else 0)
    c["lm_head"] = 0 if s.tied_embeddings else V * H
    c["norms"] = norm  # final norm
    for layer in s.layers:
        attn, attn_norms = _attention(s, layer.attention)
        c["attention"] += attn
        c["norms"] += attn_norms + layer.norms * norm
        if layer.mlp == "dense":
            c["dense_mlp"] += _mlp(H, layer.dense_width, s.gated_mlp, s.mlp_bias)
            continue
        m = s.moe
        c["routed_experts"] += m.num_experts * _mlp(H, m.expert_width, s.gated_mlp, m.expert_bias)
        c["router"] += m.num_experts * H + (m.num_experts if m.router_bias else 0)
        if m.num_shared:
            c["shared_experts"] += _mlp(H, m.shared_width, s.gated_mlp, False) + (H if m.shared_gate else 0)
    return ParamCount(sum(c.values()), _active(s, c), c)
