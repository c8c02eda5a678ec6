"""Turn a catalog key or a user's config.json into a validated transformers config.

Validation happens before anything is built, so absurd sizes are refused without allocating.
"""

from __future__ import annotations

import json
from typing import Any, Union

from . import catalog, libs, patches
from .errors import ArchLabError

#: A model is named by a catalog key or given as a config dict (e.g. an uploaded config.json).
ModelSource = Union[str, dict]

MAX_CONFIG_BYTES = 1_000_000
# Upper bounds far above any real model; anything larger is a typo or an attack.
LIMITS = {
    "hidden_size": 131_072,
    "num_hidden_layers": 2_048,
    "num_attention_heads": 4_096,
    "num_key_value_heads": 4_096,
    "intermediate_size": 1_048_576,
    "moe_intermediate_size": 1_048_576,
    "vocab_size": 4_194_304,
    "num_experts": 65_536,
    "head_dim": 65_536,
    "max_position_embeddings": 1 << 31,
    # MLA, MoE routing, linear attention, windows: also multiply into tensor shapes or loops.
    "kv_lora_rank": 65_536,
    "q_lora_rank": 65_536,
    "qk_rope_head_dim": 65_536,
    "shared_expert_intermediate_size": 1_048_576,
    "num_experts_per_tok": 65_536,
    "n_shared_experts": 1_024,
    "n_group": 65_536,
    "topk_group": 65_536,
    "linear_num_key_heads": 4_096,
    "linear_num_value_heads": 4_096,
    "linear_key_head_dim": 65_536,
    "linear_value_head_dim": 65_536,
    "linear_conv_kernel_dim": 1_024,
    "sliding_window": 1 << 31,
    "attention_chunk_size": 1 << 31,
}
#: Fields of LIMITS that may be 0 (0 experts = dense; 0 shared experts; 0 MoE width when dense).
_ZERO_OK = ("moe_intermediate_size", "num_experts", "n_shared_experts", "shared_expert_intermediate_size")
# Config field names that mean the same thing across model types.
ALIASES = {
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_hidden_layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "num_attention_heads": ("num_attention_heads", "n_head"),
    "num_key_value_heads": ("num_key_value_heads", "num_kv_heads"),
    "intermediate_size": ("intermediate_size", "n_inner", "intermediate_size_mlp", "ffn_dim"),
    "moe_intermediate_size": ("moe_intermediate_size", "expert_intermediate_size"),
    "vocab_size": ("vocab_size",),
    "num_experts": ("num_experts", "n_routed_experts", "num_local_experts"),
    "head_dim": ("head_dim", "qk_nope_head_dim", "v_head_dim"),
    "max_position_embeddings": ("max_position_embeddings", "n_positions"),
    **{
        k: (k,)
        for k in (
            "kv_lora_rank",
            "q_lora_rank",
            "qk_rope_head_dim",
            "shared_expert_intermediate_size",
            "n_shared_experts",
            "n_group",
            "topk_group",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_conv_kernel_dim",
            "sliding_window",
            "attention_chunk_size",
        )
    },
    "num_experts_per_tok": ("num_experts_per_tok", "experts_per_token", "moe_top_k"),
}
# Fields dropped before building: they describe how weights are stored, not the architecture.
_DROP = ("quantization_config",)


def _check_sizes(d: dict[str, Any]) -> None:
    for canon, names in ALIASES.items():
        for name in names:
            v = d.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ArchLabError(f"config field {name!r} must be an integer, got {v!r}")
            if v < 0 or (v == 0 and canon not in _ZERO_OK):
                raise ArchLabError(f"config field {name!r} must be positive, got {v}")
            if v > LIMITS[canon]:
                raise ArchLabError(f"config field {name!r} = {v:,} is beyond any real model (limit {LIMITS[canon]:,})")


def _field(d: dict[str, Any], canon: str) -> str:
    """The name a config uses for a field (its own alias if it has one, else the canonical name)."""
    return next((n for n in ALIASES.get(canon, (canon,)) if n in d), canon)


def _check_heads(cfg, d: dict[str, Any]) -> None:
    """Refuse head ratios transformers builds but that do not fit together (``d``: the config as given, for field
    names): each KV head serves a whole group of query heads, each linear-attention key head a whole group of
    value heads. Refuse cross-attention (decoder-only models only). Head widths are checked with the modules
    (spec.py)."""

    def get(name: str) -> Any:
        v = getattr(cfg, name, None)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    for many, few, why in (
        ("num_attention_heads", "num_key_value_heads", "KV head serves a group of query heads"),
        ("linear_num_value_heads", "linear_num_key_heads", "linear-attention key head serves a group of value heads"),
    ):
        m, f = get(many), get(few)
        if m and f and m % f:
            raise ArchLabError(
                f"config field {_field(d, few)!r} = {f} must divide {_field(d, many)!r} = {m}: "
                f"each {why} of the same size"
            )
    if getattr(cfg, "add_cross_attention", False):
        raise ArchLabError(
            "config field 'add_cross_attention' must be false: ArchLab builds decoder-only models "
            "(cross-attention layers need an encoder)"
        )


def parse_config_text(text: str | bytes) -> dict[str, Any]:
    """Parse an uploaded config.json; one-line ArchLabError on anything malformed."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ArchLabError(f"config.json is {len(text):,} bytes; the limit is {MAX_CONFIG_BYTES:,}")
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArchLabError(f"config.json is not valid JSON: {e}") from None
    except RecursionError:
        raise ArchLabError("config.json is nested too deeply") from None
    if not isinstance(d, dict):
        raise ArchLabError("config.json must hold a JSON object")
    return d


def canonical(source: ModelSource) -> str:
    """Stable JSON text of a model's config: the cache key of everything built from it."""
    if isinstance(source, str):
        return json.dumps(catalog.raw_config(source), sort_keys=True)
    if isinstance(source, dict):
        try:
            return json.dumps(source, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ArchLabError(f"config is not JSON-serialisable: {e}") from None
        except RecursionError:
            raise ArchLabError("config is nested too deeply") from None
    raise ArchLabError(f"a model is a catalog key or a config dict, not {type(source).__name__}")


def label(source: ModelSource) -> str:
    """A short display name for a model source."""
    if isinstance(source, str):
        return catalog.get(source).name
    name = source.get("_name_or_path") or source.get("name_or_path")
    return str(name) if name else f"custom {source.get('model_type', '?')}"


def build_config(canon: str):
    """Validate a canonical config text and build its ``PretrainedConfig`` (``Architecture`` keeps the result)."""
    libs.load()  # the first import of transformers, once, whichever thread comes first
    from transformers import CONFIG_MAPPING, AutoConfig

    d = json.loads(canon)
    if d.get("auto_map") or d.get("trust_remote_code"):
        raise ArchLabError("this config asks for remote code (auto_map); ArchLab never runs code from a config")
    model_type = d.get("model_type")
    if not model_type:
        raise ArchLabError("config.json has no 'model_type'")
    if not isinstance(model_type, str):
        raise ArchLabError(f"config field 'model_type' must be a string, got {type(model_type).__name__}")
    if model_type not in CONFIG_MAPPING:
        raise ArchLabError(f"unknown model_type {model_type!r}: this transformers version does not know it")
    _check_sizes(d)
    patches.entries(d)  # an unknown or malformed patch list fails here, with one line
    for k in _DROP:
        d.pop(k, None)
    d.pop("model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **d)
        built = cfg.to_dict()
    except Exception as e:  # transformers raises many types for bad values
        raise ArchLabError(
            f"transformers rejected this {model_type} config: {(str(e).splitlines() or [type(e).__name__])[0][:300]}"
        ) from None
    _check_sizes(built)
    _check_heads(cfg, d)
    return cfg
