"""Variants: a base architecture with named components changed, as config data.

A variant is a config dict for the base's transformers class: the base's config with fields changed and, where
the class has no such component, named module patches listed in its ``archlab_patches`` field
(:mod:`backend.arch.patches`). Native fields are preferred wherever the class has them. Each axis is data
(:data:`AXES`): its value syntax, what it means, and how it applies. A variant is built on the meta device when it
is made, and the spec read from the built model must show every asked value, or the variant is refused (one
line); a change the axis did not ask for (e.g. MLA replacing OLMo 2's attention drops its QK-Norm) is kept as a
note. The base is the variant whose values equal its own (:func:`base_values`).

Value syntax (``--vary axis=v1,v2``; knobs after ``:``):

- ``attention``: ``mha`` | ``gqa:N`` (N KV heads at full size) | ``mqa`` | ``mla[:kv_lora_rank=R][:q_lora_rank=R|none]
  [:qk_nope_head_dim=D][:qk_rope_head_dim=D][:v_head_dim=D]``
- ``qk_norm``: ``off`` | ``on`` | ``per-head`` | ``full-width``
- ``norm``: ``pre`` | ``post`` | ``sandwich``
- ``positions``: ``rope`` | ``nope:K`` (NoPE every K-th layer) | ``partial:F`` (RoPE on a share F of each head)
- ``ffn``: ``dense`` | ``moe:E:K[:S]`` (E routed experts, top-K, S shared experts; none if left out)
- ``shared_expert``: ``on`` | ``off``
- ``attention_pattern``: ``global`` | ``L:G`` (L sliding-window layers, then G global) | ``sliding``, each with
  ``[:window=W]``
- ``mixer``: ``attention`` | ``L:G`` (L linear-attention layers, then G attention layers) | ``linear``
- ``tied``: ``on`` | ``off``
- any other field of the base's config: ``key=v1,v2`` (values read as JSON where they parse)

Recipe fields (:data:`RECIPE_FIELDS`: learning rate, warm-up...) are varied by the ablation runner, not here:
:func:`axis_role` tells the two apart.
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .architecture import Architecture, Source, resolve
from .configs import ALIASES
from .errors import ArchLabError
from .patches import MLA_FIELDS, ORDER, PATCH_FIELD, entries
from .spec import ArchSpec

#: fields of the training recipe an ablation may vary (routed to the runner, not to a config)
RECIPE_FIELDS = ("lr", "warmup", "weight_decay", "z_loss", "min_lr_ratio", "grad_clip", "betas", "batch", "seq_len")
#: window of sliding layers a pattern adds to a base that has none (Gemma 3's; the miniature scales it)
DEFAULT_WINDOW = 1024
#: config fields that are not architecture: never varied free-form
_NOT_FREE = {
    "model_type",
    "architectures",
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "auto_map",
    PATCH_FIELD,
}


@dataclass(frozen=True)
class Axis:
    """One component a variant may change."""

    name: str
    values: tuple[str, ...]  # value syntax, as a user writes it
    examples: tuple[str, ...]  # concrete values to offer
    description: str
    applies: str  # how: which native fields, else which patch
    families: tuple[str, ...]  # patch names this axis owns
    parse: Callable[[str], str]  # canonical value (ArchLabError on bad syntax)
    read: Callable[[ArchSpec], str]
    apply: Callable[["_Ctx", str], None]
    matches: Optional[Callable[[ArchSpec, str], bool]] = None  # default: read(spec) == value

    def holds(self, spec: ArchSpec, value: str) -> bool:
        """Whether a spec has ``value`` on this axis."""
        return self.matches(spec, value) if self.matches else self.read(spec) == value


@dataclass(frozen=True)
class Variant:
    """A base with named components changed: its name, the changes (axis, canonical value), its config dict, and
    notes on anything else the change brought along."""

    name: str
    base: str  # the base's display name
    changes: tuple[tuple[str, Any], ...]
    config: dict = field(repr=False)
    is_base: bool = False
    notes: tuple[str, ...] = ()

    @property
    def patches(self) -> tuple[str, ...]:
        return tuple(self.config.get(PATCH_FIELD) or ())

    @property
    def label(self) -> str:
        """The changes alone, e.g. ``qk_norm=off, norm=pre``."""
        return _changes(self.changes)


# ----------------------------------------------------------------- parsing values


def _bad(axis: str, value: str, syntax: Sequence[str], why: str = "") -> ArchLabError:
    return ArchLabError(
        f"{axis}={value!r} is not a value of {axis}{': ' + why if why else ''}; write one of {', '.join(syntax)}"
    )


def _int(text: str, lo: int = 1) -> int:
    v = int(text)
    if v < lo:
        raise ValueError(text)
    return v


def _knobs(parts: Sequence[str], allowed: Sequence[str]) -> dict[str, str]:
    out = {}
    for p in parts:
        k, eq, v = p.partition("=")
        if not eq or k not in allowed or not v or k in out:
            raise ValueError(p)
        out[k] = v
    return out


def _parse_attention(v: str) -> str:
    kind, *rest = v.split(":")
    if kind in ("mha", "mqa") and not rest:
        return kind
    if kind == "gqa" and len(rest) == 1:
        return f"gqa:{_int(rest[0], 2)}"
    if kind == "mla":
        knobs = _knobs(rest, MLA_FIELDS)
        canon = {
            k: ("none" if knobs[k].lower() == "none" and k == "q_lora_rank" else str(_int(knobs[k], 2)))
            for k in MLA_FIELDS
            if k in knobs
        }
        return "mla" + "".join(f":{k}={x}" for k, x in canon.items())
    raise ValueError(v)


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in choices:
            raise ValueError(v)
        return v

    return parse


def _parse_positions(v: str) -> str:
    kind, *rest = v.split(":")
    if kind == "rope" and not rest:
        return "rope"
    if kind == "nope" and len(rest) == 1:
        return f"nope:{_int(rest[0])}"
    if kind == "partial" and len(rest) == 1:
        f = float(rest[0])
        if not 0 < f < 1:
            raise ValueError(v)
        return f"partial:{f:g}"
    raise ValueError(v)


def _parse_ffn(v: str) -> str:
    kind, *rest = v.split(":")
    if kind == "dense" and not rest:
        return "dense"
    if kind == "moe" and len(rest) in (2, 3):
        e, k = _int(rest[0], 2), _int(rest[1])
        s = _int(rest[2], 0) if len(rest) == 3 else 0
        if k > e:
            raise ValueError(v)
        return f"moe:{e}:{k}" + (f":{s}" if s else "")
    raise ValueError(v)


def _parse_pattern(v: str) -> str:
    parts = v.split(":")
    window = None
    if parts[-1].startswith("window="):
        window = _int(parts.pop()[len("window=") :], 2)
    if parts in (["global"], ["sliding"]):
        kind = parts[0]
    elif len(parts) == 2:
        kind = f"{_int(parts[0])}:{_int(parts[1])}"
    else:
        raise ValueError(v)
    if window is not None and kind == "global":
        raise ValueError(v)
    return kind + (f":window={window}" if window else "")


# ----------------------------------------------------------------- reading a spec


def _read_attention(s: ArchSpec) -> str:
    if s.mla is not None:
        return "mla"
    return {"MHA": "mha", "MQA": "mqa"}.get(s.attention_kind) or f"gqa:{s.num_kv_heads}"


def _matches_attention(s: ArchSpec, v: str) -> bool:
    kind, *knobs = v.split(":")
    if kind != "mla":
        return _read_attention(s) == v
    if s.mla is None:
        return False
    want = _knobs(knobs, MLA_FIELDS)
    return all(str(getattr(s.mla, k) if getattr(s.mla, k) is not None else "none") == x for k, x in want.items())


def _read_qk_norm(s: ArchSpec) -> str:
    return "off" if s.qk_norm == "none" else "on"


def _matches_qk_norm(s: ArchSpec, v: str) -> bool:
    return _read_qk_norm(s) == v if v in ("on", "off") else s.qk_norm == v


def _read_norm(s: ArchSpec) -> str:
    return {"pre+post": "sandwich"}.get(s.norm_placement, s.norm_placement)


def _nope_every(flags: Sequence[bool]) -> Optional[int]:
    """K when exactly every K-th layer has no RoPE (None otherwise)."""
    for k in range(1, len(flags) + 1):
        if all(f == bool((i + 1) % k) for i, f in enumerate(flags)):
            return k
    return None


def _read_positions(s: ArchSpec) -> str:
    if s.position != "RoPE":
        return s.position.lower()
    if s.nope_layers:
        k = _nope_every([layer.rope for layer in s.layers])
        return f"nope:{k}" if k else "nope:custom"
    if s.mla is None and s.rope_fraction < 1:
        return f"partial:{s.rope_fraction:g}"
    return "rope"


def _read_ffn(s: ArchSpec) -> str:
    if s.moe is None:
        return "dense"
    m = s.moe
    return f"moe:{m.num_experts}:{m.top_k}" + (f":{m.num_shared}" if m.num_shared else "")


def _read_shared(s: ArchSpec) -> str:
    return "on" if s.moe is not None and s.moe.num_shared else "off"


def _period(tokens: Sequence[str]) -> int:
    for p in range(1, len(tokens) + 1):
        if all(t == tokens[i % p] for i, t in enumerate(tokens)):
            return p
    return len(tokens)


def _read_pattern(s: ArchSpec) -> str:
    types = [layer.attention for layer in s.layers if layer.attention != "linear"]
    local = [t in ("sliding", "chunked") for t in types]
    if not any(local):
        return "global"
    if all(local):
        return "sliding"
    unit = local[: _period(local)]
    return f"{sum(unit)}:{len(unit) - sum(unit)}"


def _matches_pattern(s: ArchSpec, v: str) -> bool:
    kind, _, window = v.partition(":window=")
    return _read_pattern(s) == kind and (not window or s.window == int(window))


def _read_tied(s: ArchSpec) -> str:
    return "on" if s.tied_embeddings else "off"


# ----------------------------------------------------------------- applying a value


class _Ctx:
    """A variant in the making: the base, its built config's fields, and the config dict being changed."""

    def __init__(self, arch: Architecture):
        self.arch, self.spec = arch, arch.spec
        self.built = arch.config.to_dict()
        self.d = arch.as_dict()
        self.cls = type(arch.config).__name__.removesuffix("Config")

    def has(self, name: str) -> bool:
        return name in self.built

    def patch(self, entry: str) -> None:
        self.d[PATCH_FIELD] = list(self.d.get(PATCH_FIELD) or []) + [entry]

    def set_alias(self, canon: str, value: Any) -> None:
        """Set a field under every name the config uses for it (configs.ALIASES)."""
        names = [n for n in ALIASES[canon] if n in self.d] or [n for n in ALIASES[canon] if n in self.built][:1]
        for n in names:
            self.d[n] = value

    @property
    def layers(self) -> int:
        return self.spec.num_layers


class _Refused(Exception):
    """Raised by an axis's apply; made into one line naming the base, the axis and the value."""


def _apply_attention(c: _Ctx, v: str) -> None:
    s = c.spec
    kind, *rest = v.split(":")
    knobs = _knobs(rest, MLA_FIELDS) if kind == "mla" else {}
    if s.mla is not None:
        if kind != "mla":
            raise _Refused(
                f"{c.cls}'s class builds only MLA attention (its head width is tied to qk_rope_head_dim), "
                "and no patch adds standard attention to it"
            )
        for k, x in knobs.items():
            c.d[k] = None if x == "none" else int(x)
        return
    if kind == "mla":
        if s.position != "RoPE":
            raise _Refused("MLA needs rotary positions, and this model uses learned absolute positions")
        hd = s.head_dim
        mla = {
            "kv_lora_rank": 4 * hd,
            "q_lora_rank": None,
            "qk_nope_head_dim": hd,
            "qk_rope_head_dim": max(2, hd // 4 * 2),
            "v_head_dim": hd,
        }
        mla.update({k: (None if x == "none" else int(x)) for k, x in knobs.items()})
        c.d.update(mla, rope_interleave=False)
        if not c.has("attention_bias"):  # the MLA module reads it
            c.d["attention_bias"] = s.qkv_bias
        if c.has("num_key_value_heads"):
            c.d["num_key_value_heads"] = s.num_heads
        c.patch("attention:mla")
        if s.nope_layers and c.has("no_rope_layers"):
            c.patch("nope")  # the class's own NoPE lived in the attention MLA replaces
        return
    if not c.has("num_key_value_heads"):
        raise _Refused(f"{c.cls} has no num_key_value_heads field (only multi-head attention)")
    kv = {"mha": s.num_heads, "mqa": 1}.get(kind) or int(rest[0])
    if kind == "gqa" and (kv >= s.num_heads or s.num_heads % kv):
        raise _Refused(f"gqa:N takes N KV heads dividing the {s.num_heads} query heads, with 1 < N < {s.num_heads}")
    c.d["num_key_value_heads"] = kv


def _apply_qk_norm(c: _Ctx, v: str) -> None:
    cur = c.spec.qk_norm
    if _matches_qk_norm(c.spec, v):
        return
    if c.spec.mla is not None:
        raise _Refused("MLA attention has no q/k projections to normalise (its latents have their own norms)")
    native = c.has("use_qk_norm")
    if v == "off":
        if native:
            c.d["use_qk_norm"] = False
        else:
            c.patch("qk_norm_off")
        return
    if v == "on" and native:
        c.d["use_qk_norm"] = True
        return
    if cur != "none":  # another kind: take it off first
        if native:
            c.d["use_qk_norm"] = False
        else:
            c.patch("qk_norm_off")
    c.patch("qk_norm_on:" + ("per-head" if v == "on" else v))


def _apply_norm(c: _Ctx, v: str) -> None:
    if _read_norm(c.spec) != v:
        c.patch("norm:" + v)


def _set_rotary_fraction(c: _Ctx, frac: float) -> None:
    rp = c.d.get("rope_parameters")
    if isinstance(rp, dict):
        rp = copy.deepcopy(rp)
        for part in [x for x in rp.values() if isinstance(x, dict)] or [rp]:
            part["partial_rotary_factor"] = frac
        c.d["rope_parameters"] = rp
    else:
        c.d["partial_rotary_factor"] = frac


def _apply_positions(c: _Ctx, v: str) -> None:
    s = c.spec
    if s.position != "RoPE":
        raise _Refused("this model uses learned absolute positions, and no patch adds rotary positions")
    kind, _, arg = v.partition(":")
    nope, partial = s.nope_layers > 0, s.mla is None and s.rope_fraction < 1
    if kind == "partial" and s.mla is not None:
        raise _Refused("MLA rotates qk_rope_head_dim of each head: vary that field instead")
    if kind != "nope" and nope:  # back to RoPE in every layer (the class has no_rope_layers natively)
        c.d["no_rope_layers"] = [1] * c.layers
    if kind == "nope":
        k = int(arg)
        c.d["no_rope_layers"] = [int(bool((i + 1) % k)) for i in range(c.layers)]
        if not c.has("no_rope_layers"):
            c.patch("nope")
    if kind == "partial" or partial:
        frac = float(arg) if kind == "partial" else 1.0
        hd = s.head_dim * frac
        if kind == "partial" and (hd != int(hd) or int(hd) % 2 or hd < 2):
            raise _Refused(f"a share of {frac:g} of the {s.head_dim}-wide heads is not an even number of dimensions")
        _set_rotary_fraction(c, frac)
        if kind == "partial" and not partial:
            c.patch("partial_rotary")


def _apply_ffn(c: _Ctx, v: str) -> None:
    s = c.spec
    if v == "dense":
        if s.moe is None:
            return
        if c.has("first_k_dense_replace"):
            c.d["first_k_dense_replace"] = c.layers
        elif c.has("mlp_only_layers"):
            c.d["mlp_only_layers"] = list(range(c.layers))
        elif c.has("moe_layers"):
            c.d["moe_layers"] = []
        else:
            raise _Refused(f"{c.cls} has no config field for dense MLP layers, and no patch covers it")
        return
    e, k, *rest = (int(x) for x in v.split(":")[1:])
    shared = rest[0] if rest else 0
    if s.moe is None:
        width = next((layer.dense_width for layer in s.layers if layer.dense_width), 0)
        c.d.update(
            num_local_experts=e,
            num_experts_per_tok=k,
            n_shared_experts=shared,
            moe_intermediate_size=max(8, width // (k + shared)),
            n_group=1,
            topk_group=1,
            norm_topk_prob=True,
            routed_scaling_factor=1.0,
        )
        act = next((c.built[k] for k in ("hidden_activation", "activation_function") if c.has(k)), None)
        if not c.has("hidden_act") and act:
            c.d["hidden_act"] = act  # the experts read hidden_act
        c.patch("ffn:moe")
        return
    m = s.moe
    if m.n_group > 1 and (e % m.n_group or k > m.topk_group * (e // m.n_group)):
        raise _Refused(
            f"{e} experts top-{k} do not fit its {m.n_group} expert groups (top {m.topk_group} groups); "
            "vary n_group and topk_group with it"
        )
    c.set_alias("num_experts", e)
    c.set_alias("num_experts_per_tok", k)
    if shared != m.num_shared:
        if not c.has("n_shared_experts"):
            raise _Refused(f"{c.cls} has no n_shared_experts field to set the shared experts")
        c.d["n_shared_experts"] = shared


def _apply_shared(c: _Ctx, v: str) -> None:
    s = c.spec
    if s.moe is None:
        raise _Refused("a dense model has no experts: vary ffn=moe:E:K:S instead")
    if _read_shared(s) == v:
        return
    if not c.has("n_shared_experts"):
        raise _Refused(f"{c.cls} has no n_shared_experts field, and no patch covers shared experts")
    c.d["n_shared_experts"] = 1 if v == "on" else 0


def _apply_pattern(c: _Ctx, v: str) -> None:
    s = c.spec
    kind, _, window = v.partition(":window=")
    if s.linear is not None or s.local_layers and s.count("chunked"):
        raise _Refused("chunked and linear-attention layer patterns are not varied by this axis")
    if not c.has("sliding_window"):
        raise _Refused(f"{c.cls} has no sliding-window attention (no sliding_window field), and no patch covers it")
    w = int(window) if window else (s.window or DEFAULT_WINDOW)
    if c.has("layer_types"):
        if kind in ("global", "sliding"):
            c.d["layer_types"] = [f"{'full' if kind == 'global' else 'sliding'}_attention"] * c.layers
        else:
            n_local, n_global = (int(x) for x in kind.split(":"))
            unit = ["sliding_attention"] * n_local + ["full_attention"] * n_global
            c.d["layer_types"] = [unit[i % len(unit)] for i in range(c.layers)]
    elif kind not in ("global", "sliding"):
        raise _Refused(f"{c.cls} has no layer_types field: its sliding window applies to every layer or none")
    if kind == "global":
        if not c.has("layer_types"):
            c.d["sliding_window"] = None
    else:
        c.d["sliding_window"] = w
        if c.has("use_sliding_window"):
            c.d["use_sliding_window"] = True


def _parse_mixer(v: str) -> str:
    if v in ("attention", "linear"):
        return v
    parts = v.split(":")
    if len(parts) == 2:
        return f"{_int(parts[0])}:{_int(parts[1])}"
    raise ValueError(v)


def _read_mixer(s: ArchSpec) -> str:
    linear = [layer.attention == "linear" for layer in s.layers]
    if not any(linear):
        return "attention"
    if all(linear):
        return "linear"
    unit = linear[: _period(linear)]
    return f"{sum(unit)}:{len(unit) - sum(unit)}"


def _apply_mixer(c: _Ctx, v: str) -> None:
    if c.spec.linear is None or not c.has("layer_types"):
        raise _Refused(f"{c.cls} has no linear-attention layers (no linear_attention in layer_types)")
    if v in ("attention", "linear"):
        c.d["layer_types"] = [f"{'full' if v == 'attention' else 'linear'}_attention"] * c.layers
    else:
        n_linear, n_full = (int(x) for x in v.split(":"))
        unit = ["linear_attention"] * n_linear + ["full_attention"] * n_full
        c.d["layer_types"] = [unit[i % len(unit)] for i in range(c.layers)]


def _apply_tied(c: _Ctx, v: str) -> None:
    c.d["tie_word_embeddings"] = v == "on"


AXES: dict[str, Axis] = {
    a.name: a
    for a in (
        Axis(
            "attention",
            (
                "mha",
                "gqa:N",
                "mqa",
                "mla[:kv_lora_rank=R:q_lora_rank=R|none:qk_nope_head_dim=D:qk_rope_head_dim=D:v_head_dim=D]",
            ),
            ("mha", "gqa:8", "mqa", "mla"),
            "attention kind: all heads with their own K/V (MHA), N shared K/V heads (GQA), one (MQA), or a compressed "
            "latent (MLA, ranks as knobs)",
            "num_key_value_heads (N counts KV heads of the full-size model; the miniature keeps the query/KV ratio); "
            "MLA in a class without it: patch attention:mla (DeepSeek V3's attention; defaults from the head width d: "
            "kv_lora_rank 4d, no query latent, qk_nope_head_dim d, qk_rope_head_dim d/2, v_head_dim d)",
            ("attention",),
            _parse_attention,
            _read_attention,
            _apply_attention,
            _matches_attention,
        ),
        Axis(
            "qk_norm",
            ("off", "on", "per-head", "full-width"),
            ("off", "on"),
            "QK-Norm: queries and keys normalised before the dot product (on: the class's own kind, else per head)",
            "use_qk_norm where the class has it; else patch qk_norm_off (its q/k norms become identities) or "
            "qk_norm_on:per-head|full-width (norms on the q/k projections' outputs)",
            ("qk_norm_off", "qk_norm_on"),
            _parse_choice("off", "on", "per-head", "full-width"),
            _read_qk_norm,
            _apply_qk_norm,
            _matches_qk_norm,
        ),
        Axis(
            "norm",
            ("pre", "post", "sandwich"),
            ("pre", "post", "sandwich"),
            "where each block's norms sit: before attention and MLP (pre), on their outputs before the residual add "
            "(OLMo 2's post), or both (Gemma 3's sandwich)",
            "patch norm:pre|post|sandwich (the block re-wired around its own attention and MLP)",
            ("norm",),
            _parse_choice("pre", "post", "sandwich"),
            _read_norm,
            _apply_norm,
        ),
        Axis(
            "positions",
            ("rope", "nope:K", "partial:F"),
            ("rope", "nope:4", "partial:0.5"),
            "rotary positions in every layer, none in every K-th layer (SmolLM3: 4), or on a share F of each head",
            "no_rope_layers and rope_parameters.partial_rotary_factor where the class has them; else patch nope "
            "(identity rotation in those layers) or partial_rotary (a rotary module over F of each head)",
            ("nope", "partial_rotary"),
            _parse_positions,
            _read_positions,
            _apply_positions,
        ),
        Axis(
            "ffn",
            ("dense", "moe:E:K[:S]"),
            ("dense", "moe:8:2", "moe:8:2:1", "moe:64:8:1"),
            "feed-forward: one dense MLP, or E routed experts with top-K routing and S shared experts (none if left out)",
            "first_k_dense_replace / mlp_only_layers / moe_layers and the expert-count fields where the class has them; "
            "a dense class gets patch ffn:moe (DeepSeek V3's experts and router, expert width = MLP width / (K + S))",
            ("ffn",),
            _parse_ffn,
            _read_ffn,
            _apply_ffn,
        ),
        Axis(
            "shared_expert",
            ("on", "off"),
            ("on", "off"),
            "a MoE model's always-on shared expert (DeepSeek's)",
            "n_shared_experts (0 or 1)",
            (),
            _parse_choice("on", "off"),
            _read_shared,
            _apply_shared,
        ),
        Axis(
            "attention_pattern",
            ("global", "L:G", "sliding", "...[:window=W]"),
            ("global", "5:1", "1:1", "sliding"),
            f"which layers attend within a sliding window: none, L of every L + G (Gemma 3 5:1, gpt-oss 1:1), or all; "
            f"the window W defaults to the base's, else {DEFAULT_WINDOW}",
            "layer_types and sliding_window (classes without layer_types: all layers or none)",
            (),
            _parse_pattern,
            _read_pattern,
            _apply_pattern,
            _matches_pattern,
        ),
        Axis(
            "mixer",
            ("attention", "L:G", "linear"),
            ("attention", "3:1", "linear"),
            "token mixer of a linear-attention hybrid: softmax attention in every layer, L linear-attention layers "
            "then G attention layers (Qwen3-Next 3:1), or linear attention in every layer",
            "layer_types (classes with linear_attention layers)",
            (),
            _parse_mixer,
            _read_mixer,
            _apply_mixer,
        ),
        Axis(
            "tied",
            ("on", "off"),
            ("on", "off"),
            "the LM head shares the input embedding matrix",
            "tie_word_embeddings",
            (),
            _parse_choice("on", "off"),
            _read_tied,
            _apply_tied,
        ),
    )
}


# ----------------------------------------------------------------- public API


def axis_role(name: str) -> str:
    """``"recipe"`` for a training-recipe field (:data:`RECIPE_FIELDS`, varied by the ablation runner), else
    ``"architecture"`` (an axis of :data:`AXES` or a config field)."""
    return "recipe" if name in RECIPE_FIELDS else "architecture"


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def _free_fields(arch: Architecture) -> set[str]:
    return set(arch.config.to_dict()) - _NOT_FREE - set(AXES)


def parse_value(axis: str, value: Any, base: Optional[Source] = None) -> Any:
    """One value of an axis in canonical form (a string for :data:`AXES`, a JSON value for a config or recipe
    field); ArchLabError (one line, the syntax listed) for a value the axis does not have."""
    if axis in AXES:
        a = AXES[axis]
        text = str(value).strip()
        try:
            return a.parse(text)
        except (ValueError, IndexError):
            raise _bad(axis, text, a.values) from None
    if axis_role(axis) == "recipe":
        v = _json(value) if isinstance(value, str) else value
        if isinstance(v, bool) or not isinstance(v, (int, float, list)):
            raise ArchLabError(f"{axis}={value!r}: a recipe field takes numbers")
        return v
    if base is not None and axis not in _free_fields(resolve(base)):
        arch = resolve(base)
        raise ArchLabError(
            f"unknown axis {axis!r}: not one of {', '.join(AXES)}, a recipe field "
            f"({', '.join(RECIPE_FIELDS)}) or a field of {arch.label}'s config "
            f"({type(arch.config).__name__})"
        )
    return _json(value) if isinstance(value, str) else value


def parse_vary(text: str, base: Optional[Source] = None) -> tuple[str, tuple]:
    """``"qk_norm=off,on"`` -> ``("qk_norm", ("off", "on"))``: an axis (or recipe or config field) and its values in
    canonical form, duplicates dropped. Without ``base``, a name that is no axis or recipe field is taken for a
    config field; with it, that field must be one of the base's. One-line ArchLabError otherwise."""
    name, eq, rest = str(text).partition("=")
    name = name.strip()
    if not eq or not name:
        raise ArchLabError(f"--vary takes axis=v1,v2 (axes: {', '.join(AXES)}), got {text!r}")
    raw = _split(rest)
    if not raw:
        raise ArchLabError(f"{name}= needs at least one value")
    values = [parse_value(name, v, base) for v in raw]
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return name, tuple(out)


def _split(text: str) -> list[str]:
    """Values split on commas outside JSON brackets (a list value stays whole)."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{" and 1 or (ch in "]}" and -1 or 0)
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def base_values(base: Source) -> dict[str, str]:
    """The base's own value on every axis (e.g. OLMo 2: qk_norm ``on``, norm ``post``)."""
    spec = resolve(base).spec
    return {name: a.read(spec) for name, a in AXES.items()}


def make_variant(base: Source, changes: Union[Mapping[str, Any], Sequence[tuple[str, Any]]]) -> Variant:
    """``base`` with ``changes`` ({axis or config field: value}) applied, built and checked (see module doc).

    The variant whose values equal the base's is the base (``is_base``; its config is the base's). One-line
    ArchLabError for an unknown axis or value, a recipe field, or a value the base's class cannot build."""
    arch = resolve(base)
    items = list(changes.items()) if isinstance(changes, Mapping) else [tuple(x) for x in changes]
    if not items:
        raise ArchLabError("a variant changes at least one axis")
    _check_axes([a for a, _ in items])
    canon = [(axis, parse_value(axis, value, arch)) for axis, value in items]
    ctx = _Ctx(arch)
    listed = [name for name, _ in entries(ctx.d)]
    for axis, value in canon:
        a = AXES.get(axis)
        own = [p for p in listed if a is not None and p in a.families]
        if own:
            raise ArchLabError(f"{arch.label} already changes {axis} (patch {own[0]}); start from its base")
        try:
            if a is None:
                ctx.d[axis] = value
            elif not a.holds(arch.spec, value):
                a.apply(ctx, value)
        except _Refused as e:
            raise ArchLabError(f"{arch.label} cannot build {axis}={_text(value)}: {e}") from None
    name = f"{arch.label} [{_changes(canon)}]"
    is_base = all(AXES[a].holds(arch.spec, v) if a in AXES else arch.config.to_dict().get(a) == v for a, v in canon)
    if is_base:
        return Variant(name, arch.label, tuple(canon), {**arch.as_dict(), "_name_or_path": name}, True)
    d = ctx.d
    if d.get(PATCH_FIELD):
        d[PATCH_FIELD] = sorted(d[PATCH_FIELD], key=lambda e: ORDER.index(e.partition(":")[0]))
    d["_name_or_path"] = name
    try:
        built = resolve(d).spec
    except ArchLabError as e:
        raise ArchLabError(f"{arch.label} cannot build {_changes(canon)}: {e}") from None
    for axis, value in canon:
        if axis in AXES and not AXES[axis].holds(built, value):
            raise ArchLabError(
                f"{arch.label} cannot build {axis}={value}: its class built {axis}={AXES[axis].read(built)}"
            )
    return Variant(name, arch.label, tuple(canon), d, False, _side_effects(arch.spec, built, [a for a, _ in canon]))


def _changes(canon) -> str:
    return ", ".join(f"{a}={_text(v)}" for a, v in canon)


def _check_axes(names: Sequence[str]) -> None:
    """ArchLabError for an axis given twice or a recipe field (the runner varies those)."""
    if len(set(names)) < len(names):
        raise ArchLabError(f"an axis is given twice: {', '.join(names)}")
    for axis in names:
        if axis_role(axis) == "recipe":
            raise ArchLabError(f"{axis} is a recipe field: the ablation runner varies it, not the architecture")


#: axes whose value another axis's change decides (not reported as side effects of it)
_IMPLIED = {"ffn": ("shared_expert",), "shared_expert": ("ffn",), "attention": ("head_dim",)}
#: spec fields no axis reads, compared too: (field, what it is)
_ALSO = (
    ("gated_mlp", "gated MLP"),
    ("activation", "activation"),
    ("norm_type", "norm type"),
    ("qkv_bias", "q/k/v biases"),
    ("output_gate", "attention output gate"),
    ("attention_sinks", "attention sinks"),
    ("num_heads", "query heads"),
    ("head_dim", "head width"),
    ("num_layers", "layers"),
)


def _side_effects(base: ArchSpec, variant: ArchSpec, asked: Sequence[str]) -> tuple[str, ...]:
    skip = set(asked) | {x for a in asked for x in _IMPLIED.get(a, ())}
    notes = []
    for name, a in AXES.items():
        if name not in skip and a.read(base) != a.read(variant):
            notes.append(f"also changes {name}: {a.read(base)} -> {a.read(variant)}")
    for attr, what in _ALSO:
        if attr not in skip and getattr(base, attr) != getattr(variant, attr):
            notes.append(f"also changes the {what}: {getattr(base, attr)} -> {getattr(variant, attr)}")
    return tuple(notes)


def variants(base: Source, varies: Sequence[tuple[str, Sequence[Any]]]) -> list[Union[Variant, ArchLabError]]:
    """The full factorial of ``varies`` ([(axis, values), ...], e.g. from :func:`parse_vary`) over ``base``, in
    the order of :func:`itertools.product` (the last axis changing fastest). A cell the class cannot build is its
    one-line ArchLabError, in its place; the others are built. ArchLabError at once for an axis given twice, a
    recipe field, or a value the axis does not have."""
    arch = resolve(base)
    names = [a for a, _ in varies]
    _check_axes(names)
    cleaned = []
    for axis, values in varies:
        vals = [parse_value(axis, v, arch) for v in values]
        if not vals:
            raise ArchLabError(f"{axis} has no values")
        cleaned.append((axis, [v for i, v in enumerate(vals) if v not in vals[:i]]))
    out: list[Union[Variant, ArchLabError]] = []
    for combo in itertools.product(*[vals for _, vals in cleaned]):
        try:
            out.append(make_variant(arch, list(zip(names, combo))))
        except ArchLabError as e:
            out.append(e)
    return out


def describe_axes() -> list[dict[str, str]]:
    """Every axis as a table row: name, value syntax, meaning, how it applies."""
    return [
        {"axis": a.name, "values": " | ".join(a.values), "meaning": a.description, "applies": a.applies}
        for a in AXES.values()
    ]
