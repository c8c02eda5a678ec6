"""Shrink a full-size config to a runnable miniature that keeps its architecture.

Kept: attention kind (MHA/GQA/MQA/MLA, MLA ranks scaled), the per-layer pattern of attention
kinds, NoPE layers and dense/MoE layers (at least one period of it, leading dense layers reduced
to one), norms, QK-norm, partial rotary, linear attention, and the MoE shape (routed + shared
experts, top-k, group-limited routing). Widths scale with the hidden size; windows shrink so they
matter at prompt lengths of tens of tokens. Everything is read from the config and its ArchSpec;
nothing branches on a model name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from ..arch.architecture import Architecture, Source, resolve
from ..arch.configs import ALIASES
from ..arch.errors import ArchLabError
from ..arch.patches import PATCH_FIELD
from ..arch.spec import ArchSpec

#: preset -> knobs. ``layers`` is a target: a layer pattern's period is never cut.
MINIATURE_SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 64, "heads": 4, "layers": 2, "experts": 4, "window": 16},
    "small": {"hidden": 128, "heads": 4, "layers": 4, "experts": 8, "window": 32},
    "medium": {"hidden": 256, "heads": 8, "layers": 8, "experts": 16, "window": 64},
}
# Widths that scale with the hidden size (kept in ratio, rounded to a multiple of 8).
_WIDTHS = (
    "intermediate_size",
    "intermediate_size_mlp",
    "moe_intermediate_size",
    "n_inner",
    "shared_expert_intermediate_size",
    "ffn_dim",
)
_TOP_K = ("num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k")
_WINDOWS = ("sliding_window", "attention_chunk_size")


def _round8(x: float, lo: int = 8) -> int:
    return max(lo, int(round(x / 8)) * 8)


def _even(x: float, lo: int = 2) -> int:
    return max(lo, int(round(x / 2)) * 2)


def _set(d: dict, canon: str, value: Any) -> None:
    """Set a field under every alias name the config uses (hidden_size / n_embd / ...)."""
    names = [n for n in ALIASES[canon] if n in d] or [ALIASES[canon][0]]
    for n in names:
        d[n] = value


def _period(tokens: list) -> int:
    """Smallest p with tokens[i] == tokens[i % p] for all i (the full list if it never repeats)."""
    for p in range(1, len(tokens) + 1):
        if all(t == tokens[i % p] for i, t in enumerate(tokens)):
            return p
    return len(tokens)


def layer_plan(spec: ArchSpec, target_layers: int) -> list[int]:
    """For each miniature layer, the index of the full-size layer it copies.

    Leading dense layers of a MoE model (DeepSeek's first_k_dense) become one; the rest keeps
    whole periods of its pattern (dense/MoE interleaving included).
    """
    tokens = [(l.attention, l.rope, l.mlp) for l in spec.layers]
    lead = 0
    if spec.moe is not None and _period(tokens) * 2 > len(tokens):  # dense layers lead, not interleave
        while lead < len(tokens) and tokens[lead][2] == "dense":
            lead += 1
        if lead == len(tokens):
            lead = 0
    tail = tokens[lead:]
    p = _period(tail)
    lead_m = min(lead, 1)
    reps = max(1, (target_layers - lead_m) // p)
    if p * reps > len(tail):  # the model itself is smaller than one more period
        reps = max(1, len(tail) // p)
    return list(range(lead_m)) + [lead + (j % p) for j in range(p * reps)]


def _heads(spec: ArchSpec, heads: int) -> int:
    """KV heads keeping the attention kind: MHA all, MQA one, GQA a proper divisor >= 2 if possible."""
    if spec.attention_kind in ("MHA", "MLA"):
        return heads
    if spec.attention_kind == "MQA":
        return 1
    group = max(2, spec.num_heads // max(spec.num_kv_heads, 1))
    kv = min(max(2, heads // group), heads // 2)
    while kv > 1 and heads % kv:
        kv -= 1
    return max(1, kv)


def _moe_fields(d: dict, spec: ArchSpec, cap: int, keep_top_k: bool = False) -> None:
    moe = spec.moe
    experts = min(moe.num_experts, cap)
    k = 1 if moe.top_k == 1 else min(moe.top_k, max(2, experts // 4))
    if keep_top_k:  # the real top-k whenever at least twice as many experts remain
        k = min(moe.top_k, max(1, experts // 2))
    n_group, topk_group = moe.n_group, moe.topk_group
    if n_group > 1:
        n_group = min(n_group, experts // 2)
        while n_group > 1 and experts % n_group:
            n_group -= 1
        topk_group = max(1, min(n_group - 1, round(moe.topk_group * n_group / moe.n_group)))
        k = min(k, topk_group * (experts // n_group))
    _set(d, "num_experts", experts)
    for name in _TOP_K:
        if name in d:
            d[name] = k
    if "n_group" in d:
        d["n_group"], d["topk_group"] = n_group, topk_group


def _offline_vocab() -> tuple[int, int, int]:
    from .tokenizer import load_offline

    tok = load_offline()
    return len(tok), tok.eos_token_id, tok.pad_token_id


@dataclass(frozen=True)
class Knobs:
    """How to shrink a model. Presets (``MINIATURE_SIZES``) set the first five; training sizes them to a budget.

    ``experts``: cap on routed experts (None keeps the real count). ``width_mult`` scales every MLP/expert
    width beyond the hidden-size ratio (budget fine-tuning). ``gqa_ratio``: keep the real query/KV head ratio
    exactly (heads raised to two KV groups if needed) instead of the nearest divisor. ``min_head_dim``: head
    width floor when the config has its own ``head_dim``. ``vocab``/``eos``/``pad``: the tokenizer's (default:
    the shipped one). ``max_positions``: learned absolute position tables cut to this length. ``keep_top_k``: the
    real top-k when experts are capped (else presets scale it down with the experts). ``head_dim``: this exact head
    width (the value width for MLA, whose other head widths keep their ratios to it) instead of one derived from
    the hidden size, so variants of one ablation keep their base's heads (a class that ignores a config's head_dim
    keeps hidden / heads).
    """

    hidden: int
    heads: int
    layers: int
    experts: Optional[int]
    window: int
    width_mult: float = 1.0
    gqa_ratio: bool = False
    min_head_dim: int = 0
    vocab: Optional[int] = None
    eos: Optional[int] = None
    pad: Optional[int] = None
    max_positions: Optional[int] = None
    keep_top_k: bool = False
    width_step: int = 4
    head_dim: Optional[int] = None
    name: str = "miniature"

    @classmethod
    def preset(cls, size: str) -> "Knobs":
        if size not in MINIATURE_SIZES:
            raise ArchLabError(f"unknown miniature size {size!r}; choose one of {', '.join(MINIATURE_SIZES)}")
        return cls(**MINIATURE_SIZES[size], name=f"miniature-{size}")


def attention_heads(spec: ArchSpec, knobs: Knobs) -> tuple[int, int]:
    """(query heads, KV heads) of the miniature."""
    heads = min(knobs.heads, spec.num_heads)
    if not knobs.gqa_ratio or spec.attention_kind != "GQA":
        return heads, _heads(spec, heads)
    group = spec.num_heads // spec.num_kv_heads
    kv = max(2, heads // group)
    return min(group * kv, spec.num_heads), min(kv, spec.num_kv_heads)


def miniature_config_dict(source: Source, size: str = "small") -> dict[str, Any]:
    """The config dict of a preset miniature of ``source`` (see module doc), sized for the offline tokenizer."""
    return shrink(source, Knobs.preset(size))


def shrink(source: Source, knobs: Knobs) -> dict[str, Any]:
    """The config dict of ``source`` shrunk by ``knobs``, keeping its architecture (see module doc)."""
    arch = source if isinstance(source, Architecture) else resolve(source)
    spec = arch.spec
    d = arch.config.to_dict()
    for k in ("architectures", "transformers_version", "_name_or_path", "dtype", "torch_dtype", "auto_map"):
        d.pop(k, None)
    n_full = spec.num_layers
    plan = layer_plan(spec, knobs.layers)
    n = len(plan)

    hidden = knobs.hidden
    heads, kv_heads = attention_heads(spec, knobs)
    scale = hidden / spec.hidden_size
    head_dim = hidden // heads
    has_head_dim = "head_dim" in d and d["head_dim"]
    if knobs.min_head_dim and spec.mla is None:
        # Head width decoupled from hidden / heads (configs without a head_dim field mostly honour one;
        # those that do not fall back to hidden / heads).
        q_ratio = spec.num_heads * spec.head_dim / spec.hidden_size  # query width over hidden, as in the real model
        head_dim = max(knobs.min_head_dim, _round8(q_ratio * hidden / heads))
        has_head_dim = True
    if knobs.head_dim:
        head_dim = knobs.head_dim
        has_head_dim = has_head_dim or spec.mla is None
    _set(d, "hidden_size", hidden)
    _set(d, "num_attention_heads", heads)
    if any(name in d for name in ALIASES["num_key_value_heads"]):
        _set(d, "num_key_value_heads", kv_heads)
    _set(d, "num_hidden_layers", n)
    # Budget fine-tuning moves widths in steps of ``width_step`` (8 keeps bf16 expert rows 16-byte aligned, as
    # grouped GEMMs want; 4 is finer).
    step, floor = (knobs.width_step, knobs.width_step) if knobs.width_mult != 1.0 else (8, 16)
    for w in _WIDTHS:
        if isinstance(d.get(w), int) and d[w] > 0:
            d[w] = max(floor, int(round(d[w] * scale * knobs.width_mult / step)) * step)

    if spec.mla is not None:
        m, f = spec.mla, head_dim / spec.mla.v_head_dim
        rope = _even(m.qk_rope_head_dim * f, 4)
        # the rotated share of each head is part of the architecture: derive the unrotated width from it
        d["qk_nope_head_dim"], d["qk_rope_head_dim"] = _even(rope * m.qk_nope_head_dim / m.qk_rope_head_dim, 4), rope
        d["v_head_dim"] = _even(m.v_head_dim * f, 4)
        d["kv_lora_rank"] = _round8(m.kv_lora_rank * scale, 16)
        if m.q_lora_rank:
            d["q_lora_rank"] = _round8(m.q_lora_rank * scale, 16)
        if "head_dim" in d:
            d["head_dim"] = d["qk_rope_head_dim"]
    elif has_head_dim:
        if d.get("query_pre_attn_scalar"):  # attention scale given in units of the head width
            d["query_pre_attn_scalar"] = max(1, round(d["query_pre_attn_scalar"] * head_dim / d["head_dim"]))
        d["head_dim"] = head_dim
    if spec.linear is not None:
        la = spec.linear
        kh = max(1, heads // 2)
        d["linear_num_key_heads"] = kh
        d["linear_num_value_heads"] = max(kh, kh * la.num_value_heads // la.num_key_heads)
        d["linear_key_head_dim"] = d["linear_value_head_dim"] = head_dim

    for w in _WINDOWS:
        if isinstance(d.get(w), int) and d[w] > 0:
            d[w] = min(d[w], knobs.window)
    if spec.moe is not None:
        _moe_fields(d, spec, knobs.experts or spec.moe.num_experts, knobs.keep_top_k)

    # Per-layer patterns: lists as long as the stack are resampled through the plan; lists of
    # layer indices are rebuilt from the plan's dense/MoE layers.
    for key, v in list(d.items()):
        if isinstance(v, list) and len(v) == n_full and key not in ("eos_token_id", PATCH_FIELD):
            d[key] = [v[i] for i in plan]
    moe_idx = [j for j, i in enumerate(plan) if spec.layers[i].mlp == "moe"]
    dense_idx = [j for j, i in enumerate(plan) if spec.layers[i].mlp == "dense"]
    if isinstance(d.get("moe_layers"), list):
        d["moe_layers"] = moe_idx
    if isinstance(d.get("mlp_only_layers"), list) and d["mlp_only_layers"]:
        d["mlp_only_layers"] = dense_idx
    if isinstance(d.get("first_k_dense_replace"), int) and d["first_k_dense_replace"] > 0:
        # the plan keeps one leading dense layer; a stack made all dense (ffn=dense) stays all dense
        d["first_k_dense_replace"] = min(d["first_k_dense_replace"], 1) if moe_idx else len(plan)
    if isinstance(d.get("max_window_layers"), int):
        d["max_window_layers"] = min(d["max_window_layers"], n)
    if knobs.max_positions and spec.position == "absolute":
        _set(d, "max_position_embeddings", knobs.max_positions)

    vocab, eos, pad = _offline_vocab() if knobs.vocab is None else (knobs.vocab, knobs.eos, knobs.pad)
    d["vocab_size"] = vocab
    for key in list(d):
        if key.endswith("_token_id") and d[key] is not None:
            d[key] = pad if key.startswith("pad") else eos
    d["_name_or_path"] = knobs.name
    return d


def expected_layers(spec: ArchSpec, size: str = "small") -> list[tuple[str, bool, str]]:
    """(attention, rope, mlp) of each miniature layer, as the full model's pattern dictates."""
    plan = layer_plan(spec, MINIATURE_SIZES[size]["layers"])
    return [(spec.layers[i].attention, spec.layers[i].rope, spec.layers[i].mlp) for i in plan]


def check_miniature(full: ArchSpec, mini: ArchSpec, size: str = "small") -> list[str]:
    """Architecture features the miniature lost (empty when it kept them all)."""
    lost = []
    got = [(l.attention, l.rope, l.mlp) for l in mini.layers]
    if got != expected_layers(full, size):
        lost.append(f"layer pattern {mini.layer_pattern!r}")
    for field in (
        "attention_kind",
        "qk_norm",
        "norm_placement",
        "norm_type",
        "position",
        "output_gate",
        "attention_sinks",
        "qkv_bias",
        "gated_mlp",
        "tied_embeddings",
        "rope_fraction",
    ):
        a, b = getattr(full, field), getattr(mini, field)
        if (not math.isclose(a, b, rel_tol=0.02)) if isinstance(a, float) else a != b:
            lost.append(f"{field} {a!r} -> {b!r}")
    for field in ("mla", "linear", "moe"):
        if (getattr(full, field) is None) != (getattr(mini, field) is None):
            lost.append(field)
    if full.moe and mini.moe:
        f, m = full.moe, mini.moe
        if (f.num_shared > 0) != (m.num_shared > 0) or (f.top_k > 1) != (m.top_k > 1):
            lost.append("MoE shared experts / top-k")
        for field in ("scoring", "bias_corrected", "shared_gate", "router_bias", "expert_bias"):
            if getattr(f, field) != getattr(m, field):
                lost.append(f"MoE {field}")
        if (f.n_group > 1) != (m.n_group > 1) or not m.top_k <= m.topk_group * (m.num_experts // m.n_group):
            lost.append("group-limited routing")
    if (full.window is None) != (mini.window is None):
        lost.append("window")
    return lost


def miniature(source: Source, size: str = "small") -> Architecture:
    """The miniature of ``source`` as an Architecture (kept on the full one); ArchLabError if it would
    lose part of the architecture."""
    full = source if isinstance(source, Architecture) else resolve(source)

    def make() -> Architecture:
        mini = resolve(miniature_config_dict(full, size))
        lost = check_miniature(full.spec, mini.spec, size)
        if lost:
            raise ArchLabError(f"the {size} miniature cannot keep this architecture: lost {'; '.join(lost)}")
        return mini

    return full.memo(("miniature", size), make)


def miniature_spec(source: Source, size: str = "small") -> ArchSpec:
    """ArchSpec of the miniature; ArchLabError if it would lose part of the architecture."""
    return miniature(source, size).spec
