"""ArchSpec: one normalized, typed view of any transformers causal-LM config.

Built from the config plus a look at the modules transformers builds from it on the meta device
(which norms a block has, whether projections carry biases, where the experts are), so a config
of any model type transformers knows gets a spec without per-model code. Diagrams, tables,
formulas and the runtime all read this spec, never a model name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from .errors import ArchLabError

#: router classes that score experts with a sigmoid although their config does not say so
SIGMOID_ROUTERS = frozenset({"Llama4Router"})

LAYER_TYPES = {
    "full_attention": "full",
    "sliding_attention": "sliding",
    "chunked_attention": "chunked",
    "linear_attention": "linear",
}


@dataclass(frozen=True)
class MLASpec:
    q_lora_rank: Optional[int]
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


@dataclass(frozen=True)
class LinearAttentionSpec:
    """Gated-DeltaNet-style linear attention: a fixed-size state instead of a growing KV cache."""

    num_key_heads: int
    num_value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int


@dataclass(frozen=True)
class MoESpec:
    num_experts: int
    top_k: int
    expert_width: int
    num_shared: int  # shared (always-on) experts; 0 if none
    shared_width: int  # total intermediate width of the shared expert(s)
    shared_gate: bool  # a learned sigmoid gate scales the shared expert
    router_bias: bool
    expert_bias: bool
    scoring: str  # softmax / sigmoid
    bias_corrected: bool  # DeepSeek-style per-expert bias used only for the choice
    n_group: int  # expert groups for group-limited routing (1 = none)
    topk_group: int
    layers: tuple[int, ...]  # indices of MoE layers


@dataclass(frozen=True)
class LayerSpec:
    attention: str  # full / sliding / chunked / linear
    rope: bool  # False: NoPE layer (or absolute positions)
    mlp: str  # dense / moe
    dense_width: int  # intermediate width of the dense MLP (0 in MoE layers)
    norms: int  # norm modules in the block (QK/latent norms excluded)


@dataclass(frozen=True)
class ArchSpec:
    model_type: str
    architecture: str
    decoder_layer_class: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    max_context: int
    tied_embeddings: bool
    # attention
    attention_kind: str  # MHA / GQA / MQA / MLA
    num_heads: int
    num_kv_heads: int
    head_dim: int  # query/key head width
    v_head_dim: int
    qkv_bias: bool
    out_bias: bool
    attention_sinks: bool
    output_gate: bool  # queries projected twice as wide to gate the attention output
    window: Optional[int]  # sliding window / chunk size for local layers
    mla: Optional[MLASpec]
    linear: Optional[LinearAttentionSpec]
    # norms and positions
    norm_type: str  # RMSNorm / LayerNorm
    norm_bias: bool
    norm_placement: str  # pre / post / pre+post
    qk_norm: str  # none / per-head / full-width / L2 (no weights)
    position: str  # absolute / RoPE
    rope_fraction: float  # share of each head rotated (partial RoPE)
    rope_theta: Optional[float]
    rope_scaling: Optional[str]
    # MLP
    activation: str
    gated_mlp: bool
    mlp_bias: bool
    moe: Optional[MoESpec]
    layers: tuple[LayerSpec, ...]

    # ----- derived views -----
    @property
    def mlp_kind(self) -> str:
        act = self.activation.lower()
        if self.gated_mlp:
            return (
                "SwiGLU"
                if ("silu" in act or "swish" in act)
                else ("GeGLU" if "gelu" in act else f"gated {self.activation}")
            )
        return f"{self.activation.upper().split('_')[0]} MLP"

    def count(self, attention: str) -> int:
        return sum(1 for layer in self.layers if layer.attention == attention)

    @property
    def local_layers(self) -> int:
        return self.count("sliding") + self.count("chunked")

    @property
    def nope_layers(self) -> int:
        return sum(1 for layer in self.layers if not layer.rope) if self.position == "RoPE" else 0

    @property
    def layer_pattern(self) -> str:
        """Compact per-layer pattern of attention kinds, e.g. 'S S S S S F ×10 + S S'."""
        return _pattern(
            [l.attention[0].upper() + ("" if l.rope or self.position != "RoPE" else "ø") for l in self.layers]
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = self.layer_pattern
        d["mlp_kind"] = self.mlp_kind
        return d


def decoder_layers(model) -> list:
    """The repeated decoder blocks of a causal LM, whatever the attribute is called."""
    for base in (base_model(model), model):
        for name in ("layers", "h", "blocks", "decoder_layers"):
            layers = getattr(base, name, None)
            if layers is not None:
                return list(layers)
    raise ArchLabError(f"cannot find the decoder layers of {type(model).__name__}")


def base_model(model):
    """The decoder stack under the LM head (``model.model``, ``model.transformer``, ...)."""
    for name in (model.base_model_prefix, "model", "transformer"):
        base = getattr(model, name, None)
        if base is not None and base is not model:
            return base
    return model


def _pattern(tokens: list[str]) -> str:
    """Shortest repeating unit of a sequence, written with its repeat count."""
    n = len(tokens)
    for size in range(1, n + 1):
        unit = tokens[:size]
        reps = n // size
        if unit * reps == tokens[: size * reps]:
            rest = tokens[size * reps :]
            if len(rest) < size and (reps > 1 or not rest):
                text = " ".join(unit) + (f" ×{reps}" if reps > 1 else "")
                return text + (" + " + " ".join(rest) if rest else "")
    return " ".join(tokens)


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _params(module) -> dict[str, Any]:
    return dict(module.named_parameters())


def _child(module, *names):
    for n in names:
        c = getattr(module, n, None)
        if c is not None:
            return c
    return None


def _linear_out(module) -> int:
    """Output width of a Linear or GPT-2 Conv1D."""
    if hasattr(module, "out_features"):
        return module.out_features
    if hasattr(module, "nf"):
        return module.nf
    return module.weight.shape[0]


def _norm_names(layer) -> list[str]:
    return [n for n, _ in layer.named_children() if "norm" in n or n.startswith("ln")]


def _placement(names: list[str]) -> str:
    has_post_ff = any("post_feedforward" in n for n in names)
    has_pre = any(n.startswith(("input_", "pre_", "ln")) for n in names)
    if has_post_ff and has_pre:
        return "pre+post"
    if has_post_ff:
        return "post"
    return "pre"


def _rope(cfg) -> tuple[Optional[float], Optional[str], float]:
    rp = getattr(cfg, "rope_parameters", None) or {}
    if rp and all(isinstance(v, dict) for v in rp.values()):  # per layer type (Gemma 3, OLMo 3)
        rp = rp.get("full_attention") or next(iter(rp.values()))
    theta = rp.get("rope_theta", getattr(cfg, "rope_theta", None))
    kind = rp.get("rope_type") or rp.get("type")
    frac = rp.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", None)) or 1.0
    return (float(theta) if theta is not None else None), (None if kind in (None, "default") else kind), float(frac)


def _moe(cfg, model_layers, hidden: int) -> Optional[MoESpec]:
    moe_layers, first = [], None
    for i, layer in enumerate(model_layers):
        mlp = _child(layer, "mlp", "feed_forward", "block_sparse_moe")
        if mlp is not None and _child(mlp, "experts") is not None:
            moe_layers.append(i)
            first = first or mlp
    if first is None:
        return None
    experts = first.experts
    ep = _params(experts)
    gate_up = ep.get("gate_up_proj")
    if gate_up is not None:
        num = gate_up.shape[0]
        dims = [d for d in gate_up.shape[1:] if d != hidden]
        width = (dims[0] if dims else hidden) // 2
    else:  # experts as a ModuleList of MLPs
        num = len(experts)
        width = _linear_out(_child(experts[0], "up_proj", "w3", "fc1"))
    top_k = _get(cfg, "num_experts_per_tok", "experts_per_token", "moe_top_k", "top_k")
    if not top_k:
        raise ArchLabError("MoE config has no top-k (num_experts_per_tok)")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 < top_k <= num:
        raise ArchLabError(
            f"MoE top-k (num_experts_per_tok) must be an integer from 1 to the {num} experts, got {top_k!r}"
        )
    n_group, topk_group = _get(cfg, "n_group", default=1), _get(cfg, "topk_group", default=1)
    if (
        any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (n_group, topk_group))
        or num % n_group
        or topk_group > n_group
        or top_k > topk_group * (num // n_group)
    ):
        raise ArchLabError(
            f"MoE groups do not fit: {num} experts in n_group={n_group!r} groups, "
            f"topk_group={topk_group!r}, top-k {top_k}"
        )
    shared = _child(first, "shared_experts", "shared_expert", "shared_mlp")
    if shared is not None and not sum(p.numel() for p in shared.parameters()):
        shared = None  # zero shared experts: DeepSeek's class builds them zero wide
    shared_width = _linear_out(_child(shared, "up_proj", "gate_proj", "w3")) if shared is not None else 0
    router = _child(first, "gate", "router")
    bias_corrected = router is not None and any("correction_bias" in n for n, _ in router.named_buffers())
    # Configs rarely name the scoring function: routers with a choice-only bias correction use sigmoid
    # scores, and so do the router classes listed in SIGMOID_ROUTERS; the rest use softmax.
    scoring = _get(cfg, "scoring_func", default=None) or (
        "sigmoid" if bias_corrected or type(router).__name__ in SIGMOID_ROUTERS else "softmax"
    )
    return MoESpec(
        num_experts=int(num),
        top_k=int(top_k),
        expert_width=int(width),
        num_shared=int(_get(cfg, "n_shared_experts", default=1)) if shared is not None else 0,
        shared_width=int(shared_width),
        shared_gate=_child(first, "shared_expert_gate") is not None,
        router_bias=router is not None and "bias" in _params(router),
        expert_bias=any(n.endswith("_bias") for n in ep),
        scoring=str(scoring),
        bias_corrected=bias_corrected,
        n_group=int(_get(cfg, "n_group", default=1)),
        topk_group=int(_get(cfg, "topk_group", default=1)),
        layers=tuple(moe_layers),
    )


def _check_heads(cfg, hidden: int, heads: int, kv_heads: int, mla: bool) -> None:
    """Refuse head layouts that transformers builds but that do not fit together: latent attention expands a
    key and a value for every query head; without a ``head_dim`` a head is hidden_size / num_attention_heads
    wide, so the heads must divide the hidden size. (Head ratios are checked with the config: configs.py.)"""
    if mla and kv_heads != heads:
        raise ArchLabError(
            f"config field 'num_key_value_heads' = {kv_heads} must equal 'num_attention_heads' = "
            f"{heads}: latent attention expands a key and a value for every query head"
        )
    if not mla and not _get(cfg, "head_dim") and hidden % heads:
        raise ArchLabError(
            f"config field 'num_attention_heads' = {heads} must divide 'hidden_size' = {hidden}: "
            f"without a 'head_dim' each head is hidden_size / num_attention_heads wide"
        )


def _refuse_layer_type(cfg, i: int, layer) -> None:
    """A layer whose attention module does not match its config entry (a layer_types entry the class builds no
    attention for, or linear attention where the class builds softmax attention)."""
    got = (
        "linear"
        if _child(layer, "linear_attn") is not None
        else ("softmax" if _child(layer, "self_attn", "attn", "attention") is not None else "no")
    )
    raw = getattr(cfg, "layer_types", None)
    entry = f"config field 'layer_types' has {raw[i]!r} at layer {i}" if raw and i < len(raw) else f"layer {i}"
    raise ArchLabError(f"{entry}, but {type(layer).__name__} builds {got} attention there")


def _module_kv_heads(attn, heads: int, head_dim: int, config_kv_heads: int) -> int:
    """KV heads of an attention module: its key projection's width over the head width; one per query head for
    a fused QKV projection (GPT-2's c_attn, whose class ignores a num_key_value_heads field)."""
    k_proj = _child(attn, "k_proj")
    if k_proj is not None:
        return _linear_out(k_proj) // head_dim
    return heads if _child(attn, "c_attn") is not None else config_kv_heads


def read_spec(cfg, model) -> ArchSpec:
    """The spec of a validated config and its meta-device model (``Architecture.spec`` keeps it)."""
    try:
        return _read_spec(cfg, model)
    except ArchLabError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, ZeroDivisionError) as e:
        # A config transformers accepted but whose fields do not fit together (a user's upload).
        raise ArchLabError(
            f"this {cfg.model_type} config is inconsistent: {type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}"
        ) from None


def _read_spec(cfg, model) -> ArchSpec:
    layers = decoder_layers(model)
    hidden = int(_get(cfg, "hidden_size", "n_embd", "d_model"))
    n_layers = len(layers)
    heads = int(_get(cfg, "num_attention_heads", "n_head"))
    kv_heads = int(_get(cfg, "num_key_value_heads", "num_kv_heads", default=heads))

    # --- attention ---
    raw_types = getattr(cfg, "layer_types", None)
    if raw_types:
        types = [LAYER_TYPES.get(t, t) for t in raw_types[:n_layers]]
    else:
        sliding = _get(cfg, "sliding_window") and getattr(cfg, "use_sliding_window", True)
        types = ["sliding" if sliding else "full"] * n_layers
    for i, layer in enumerate(layers):  # trust the modules over the config
        if _child(layer, "linear_attn") is not None:
            types[i] = "linear"
        elif _child(layer, "self_attn", "attn", "attention") is None or types[i] == "linear":
            _refuse_layer_type(cfg, i, layer)
    window = None
    if "chunked" in types:
        window = int(cfg.attention_chunk_size)
    elif "sliding" in types:
        window = int(cfg.sliding_window)

    attn_layer = next((l for l, t in zip(layers, types) if t != "linear"), layers[0])
    attn = _child(attn_layer, "self_attn", "attn", "attention")
    ap = _params(attn) if attn is not None else {}  # None: every layer is linear attention
    mla = None
    if _child(attn, "kv_b_proj") is not None:  # latent attention: the modules say so, not the config fields
        mla = MLASpec(cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim)
        head_dim, v_head_dim, kind = mla.qk_nope_head_dim + mla.qk_rope_head_dim, mla.v_head_dim, "MLA"
    else:
        head_dim = int(_get(cfg, "head_dim", default=hidden // heads))
    _check_heads(cfg, hidden, heads, kv_heads, mla is not None)
    if mla is None:
        module_head_dim = getattr(attn, "head_dim", None)
        if isinstance(module_head_dim, int) and module_head_dim != head_dim:
            head_dim = module_head_dim  # the module's width wins (GPT-2 ignores a config head_dim)
        v_head_dim = head_dim
        kv_heads = _module_kv_heads(attn, heads, head_dim, kv_heads)
        kind = "MHA" if kv_heads == heads else ("MQA" if kv_heads == 1 else "GQA")
    else:
        kv_heads = heads
    qkv_bias = any(
        n.endswith("bias")
        and n.split(".")[0] in ("q_proj", "k_proj", "v_proj", "c_attn", "qkv_proj", "q_a_proj", "kv_a_proj_with_mqa")
        for n in ap
    )
    out_bias = any(n.split(".")[0] in ("o_proj", "c_proj", "out_proj") and n.endswith("bias") for n in ap)
    q_proj = _child(attn, "q_proj")
    output_gate = mla is None and q_proj is not None and _linear_out(q_proj) == 2 * heads * head_dim
    q_norm = ap.get("q_norm.weight", ap.get("q_proj.norm.weight"))  # the latter: the qk_norm_on patch
    if q_norm is not None:
        qk_norm = "per-head" if q_norm.numel() == head_dim else "full-width"
    elif getattr(cfg, "use_qk_norm", False) or any(
        _child(_child(l, "self_attn") or l, "qk_norm") is not None for l in layers
    ):
        qk_norm = "L2 (no weights)"
    else:
        qk_norm = "none"

    linear = None
    if "linear" in types:
        linear = LinearAttentionSpec(
            cfg.linear_num_key_heads,
            cfg.linear_num_value_heads,
            cfg.linear_key_head_dim,
            cfg.linear_value_head_dim,
            cfg.linear_conv_kernel_dim,
        )

    # --- norms, positions ---
    norm_names = _norm_names(layers[0])
    norm_mod = getattr(layers[0], norm_names[0]) if norm_names else None
    norm_type = (
        "LayerNorm"
        if norm_mod is not None
        and "rms" not in type(norm_mod).__name__.lower()
        and "layernorm" in type(norm_mod).__name__.lower().replace("_", "")
        else "RMSNorm"
    )
    norm_bias = norm_mod is not None and "bias" in _params(norm_mod)
    base = base_model(model)
    absolute = any(getattr(base, n, None) is not None for n in ("wpe", "embed_positions", "position_embeddings"))
    theta, scaling, frac = _rope(cfg)
    if mla is not None:
        frac = mla.qk_rope_head_dim / head_dim
    # NoPE layers: the attention module's own flag (classes that ignore a no_rope_layers field have none)
    rope = [
        not absolute and bool(getattr(_child(l, "self_attn", "attn", "attention"), "use_rope", True)) for l in layers
    ]

    # --- MLP / MoE ---
    moe = _moe(cfg, layers, hidden)
    moe_set = set(moe.layers) if moe else set()
    per_layer, gated, mlp_bias = [], False, False
    for i, layer in enumerate(layers):
        mlp = _child(layer, "mlp", "feed_forward", "block_sparse_moe")
        width = 0
        if i in moe_set:
            gated = gated or "gate_up_proj" in _params(mlp.experts) or _child(mlp.experts, "gate_proj") is not None
        elif mlp is not None:
            up = _child(mlp, "up_proj", "c_fc", "fc1", "w3", "gate_up_proj")
            width = _linear_out(up) // (2 if _child(mlp, "gate_up_proj") is not None and up is mlp.gate_up_proj else 1)
            gated = gated or _child(mlp, "gate_proj", "w1", "gate_up_proj") is not None
            mlp_bias = mlp_bias or any(n.endswith("bias") for n in _params(mlp))
        per_layer.append(
            LayerSpec(types[i], rope[i], "moe" if i in moe_set else "dense", int(width), len(_norm_names(layer)))
        )

    tied = (
        model.get_output_embeddings() is not None
        and model.get_output_embeddings().weight is model.get_input_embeddings().weight
    )
    return ArchSpec(
        model_type=cfg.model_type,
        architecture=type(model).__name__,
        decoder_layer_class=type(layers[0]).__name__,
        vocab_size=int(cfg.vocab_size),
        hidden_size=hidden,
        num_layers=n_layers,
        max_context=int(_get(cfg, "max_position_embeddings", "n_positions", default=0)),
        tied_embeddings=bool(tied),
        attention_kind=kind,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        v_head_dim=v_head_dim,
        qkv_bias=qkv_bias,
        out_bias=out_bias,
        attention_sinks="sinks" in ap,
        output_gate=output_gate,
        window=window,
        mla=mla,
        linear=linear,
        norm_type=norm_type,
        norm_bias=norm_bias,
        norm_placement=_placement(norm_names),
        qk_norm=qk_norm,
        position="absolute" if absolute else "RoPE",
        rope_fraction=frac,
        rope_theta=None if absolute else theta,
        rope_scaling=None if absolute else scaling,
        activation=str(_get(cfg, "hidden_act", "hidden_activation", "activation_function", default="?")),
        gated_mlp=gated,
        mlp_bias=mlp_bias,
        moe=moe,
        layers=tuple(per_layer),
    )
