"""Named module patches: components a model's transformers class does not have, applied right after it is built.

A config lists its patches in the field ``archlab_patches`` (:data:`PATCH_FIELD`), each ``"name"`` or
``"name:arg"``, e.g. ``["qk_norm_off", "norm:pre"]``. transformers keeps unknown config fields and writes them to
config.json, so a saved checkpoint carries its patches. A patch reads its sizes from ordinary config fields (MLA
ranks, expert counts, ``no_rope_layers``, ``partial_rotary_factor``), so shrinking a config scales a patched
component like a native one.

Every model built from a config goes through :func:`from_config` (or :func:`apply` right after its own build), and
every saved one through :func:`from_pretrained`: a patched checkpoint loaded into the unpatched class would drop or
miss weights, so it is built from its config, patched, and its safetensors state dict loaded strictly.

Patches are plain modules with parameters and buffers, safe under ``torch.func.functional_call`` and ``vmap``: no
hooks, no Python state that changes per call, no Python branches on tensor values. Attention modules keep calling
transformers' attention interface (``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``). Where a patch changes
what a module computes rather than which modules there are (NoPE layers, norm placement), the instance's class is
swapped for a subclass of its own class that overrides ``forward`` (same parameter names, same attributes).
Modules a patch creates are initialised the way the model initialises its own (``_init_weights``, also on a later
``init_weights()`` after a meta-device build); 3-D expert weights and router weights get normal(0,
``initializer_range``), their correction biases zeros.
"""

from __future__ import annotations

import copy
import json
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import ArchLabError
from .spec import _rope, base_model, decoder_layers

#: the config field holding a model's patch list
PATCH_FIELD = "archlab_patches"
#: norm placements the ``norm`` patch builds (OLMo 2's post-norm, Gemma 3's pre+post "sandwich")
PLACEMENTS = ("pre", "post", "sandwich")
#: QK-Norm kinds the ``qk_norm_on`` patch builds
QK_NORM_KINDS = ("per-head", "full-width")
#: MLA config fields the ``attention:mla`` patch reads
MLA_FIELDS = ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
#: MoE config fields the ``ffn:moe`` patch reads (DeepSeek-style experts, router and shared experts)
MOE_FIELDS = (
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "n_shared_experts",
    "n_group",
    "topk_group",
    "norm_topk_prob",
    "routed_scaling_factor",
)
_MLP_NAMES = ("mlp", "feed_forward")


@dataclass(frozen=True)
class Patch:
    """One named patch: ``apply(model, config, arg)`` changes the model in place and returns the modules it made."""

    name: str
    apply: Callable[[Any, Any, Optional[str]], list]
    args: tuple[str, ...] = ()  # the allowed ``:arg`` values (empty: the patch takes none)
    doc: str = ""


# ----------------------------------------------------------------- reading a patch list


def entries(source: Any) -> list[tuple[str, Optional[str]]]:
    """(name, arg) of every patch a config (dict or ``PretrainedConfig``) lists; ArchLabError for a malformed list
    or an unknown patch (the known ones listed)."""
    raw = source.get(PATCH_FIELD) if isinstance(source, dict) else getattr(source, PATCH_FIELD, None)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, str) for e in raw):
        raise ArchLabError(f"config field {PATCH_FIELD!r} must be a list of patch names, got {raw!r}")
    out = []
    for e in raw:
        name, _, arg = e.partition(":")
        patch = PATCHES.get(name)
        if patch is None:
            raise ArchLabError(f"unknown patch {e!r} in {PATCH_FIELD}; known: {', '.join(describe())}")
        if (arg or None) is None and patch.args or arg and arg not in patch.args:
            raise ArchLabError(f"patch {name!r} takes {' | '.join(patch.args) or 'no argument'}, got {e!r}")
        out.append((name, arg or None))
    return out


def describe() -> list[str]:
    """Every patch as it is written in a config (``name`` or ``name:arg|arg``)."""
    return [p.name + (":" + "|".join(p.args) if p.args else "") for p in PATCHES.values()]


# ----------------------------------------------------------------- building


def apply(model) -> Any:
    """Apply the patches ``model.config`` lists, in order (a model without any is returned untouched).

    Modules the patches make get the device and dtype of what they replace; on a real device they are
    initialised at once (after a meta-device build, the model's ``init_weights()`` does it)."""
    todo = entries(model.config)
    if not todo:
        return model
    made = []
    for name, arg in todo:
        try:
            made += PATCHES[name].apply(model, model.config, arg)
        except ArchLabError:
            raise
        except Exception as e:  # a class whose modules do not look like the patch expects
            raise ArchLabError(
                f"patch {name}{':' + arg if arg else ''} does not fit {type(model).__name__}: "
                f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"
            ) from None
    from transformers import PreTrainedModel

    for sub in model.modules():  # a composite model initialises each sub-model with its own _init_weights
        if isinstance(sub, PreTrainedModel):
            sub._init_weights = types.MethodType(_init_weights, sub)
    for module in made:
        for sub in module.modules():
            sub._archlab_patch = True
    if not any(p.is_meta for p in model.parameters()):
        import torch

        with torch.no_grad():
            for module in made:
                for sub in module.modules():
                    model._init_weights(sub)
    return model


def from_config(config, **kwargs):
    """``AutoModelForCausalLM.from_config(config, **kwargs)`` with the config's patches applied (call it inside the
    same device context and lock as a plain build)."""
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():  # zero shared experts are built zero wide (DeepSeek V3's class, ffn:moe)
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return apply(AutoModelForCausalLM.from_config(config, **kwargs))


def has_patches(config: Any) -> bool:
    """Whether a config (dict or ``PretrainedConfig``) lists any patch."""
    return bool(entries(config))


def from_pretrained(folder: str | Path, *, dtype=None, device_map=None, **kwargs):
    """A saved model: ``AutoModelForCausalLM.from_pretrained`` for an unpatched config; a patched one is built from
    its config.json, patched, and its safetensors state dict loaded strictly (tied weights may be absent from the
    file), then moved to ``device_map`` (one device: a patched model is never split across devices)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    if not has_patches(raw):
        return AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, device_map=device_map, **kwargs)
    import torch
    from safetensors.torch import load_file

    config = AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    model = from_config(config, dtype=dtype) if dtype is not None else from_config(config)
    state = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ArchLabError(f"{folder} has no *.safetensors file")
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if _is_tied(model, k)}
    if unexpected or set(missing) - tied:
        wrong = sorted(set(missing) - tied)[:1] + sorted(unexpected)[:1]
        raise ArchLabError(f"{folder}: the weights do not fit its patched config ({', '.join(wrong)})")
    model.tie_weights()
    if isinstance(device_map, dict):
        device_map = device_map.get("", next(iter(device_map.values()), None))
    if device_map not in (None, "auto"):
        model.to(torch.device(f"cuda:{device_map}" if isinstance(device_map, int) else device_map))
    return model.eval()


def _is_tied(model, key: str) -> bool:
    out = model.get_output_embeddings()
    return (
        out is not None
        and key.endswith(".weight")
        and model.get_submodule(key.rsplit(".", 1)[0]) is out
        and out.weight is model.get_input_embeddings().weight
    )


def set_experts_implementation(model, implementation: str) -> None:
    """``model.set_experts_implementation``. A class without experts of its own (a dense class given experts by the
    ``ffn:moe`` patch) refuses the choice or ignores it; its patched experts then read it from the config, set
    directly."""
    patched = any(name == "ffn" for name, _ in entries(model.config))
    try:
        model.set_experts_implementation(implementation)
    except Exception:
        if not patched:
            raise
    if patched:
        model.config._experts_implementation_internal = implementation


def _init_weights(self, module) -> None:
    """The model's own ``_init_weights``, plus what it does not know in modules a patch made: direct parameters of
    modules that are neither linear layers nor norms (3-D experts, router weights) get normal(0,
    initializer_range), their persistent buffers (router correction biases) zeros."""
    type(self)._init_weights(self, module)
    if not getattr(module, "_archlab_patch", False) or not (module._parameters or module._buffers):
        return
    import torch
    from torch import nn

    name = type(module).__name__
    if isinstance(module, (nn.Linear, nn.Embedding)) or "Norm" in name or "RotaryEmbedding" in name:
        return
    std = getattr(self.config, "initializer_range", None) or 0.02
    with torch.no_grad():
        for p in module.parameters(recurse=False):
            p.normal_(0.0, std)
        for key, b in module.named_buffers(recurse=False):
            if key not in module._non_persistent_buffers_set:
                b.zero_()


# ----------------------------------------------------------------- helpers


def _fit(new, like):
    """``new`` on the device and in the dtype of ``like``'s first parameter (or buffer)."""
    ref = next(iter(like.parameters()), None) if hasattr(like, "parameters") else like
    if ref is None:
        ref = next(iter(like.buffers()), None)
    return new if ref is None else new.to(device=ref.device, dtype=ref.dtype)


_subclasses: dict[tuple[type, type, tuple], type] = {}


def _swap_class(module, mixin: type, **attrs) -> None:
    """Give ``module`` a subclass of its own class whose behaviour ``mixin`` overrides (one subclass per class,
    mixin and class attributes; the name stays the class's own, as memory placement matches classes by name)."""
    cls = type(module)
    key = (cls, mixin, tuple(sorted(attrs.items())))
    sub = _subclasses.get(key)
    if sub is None:
        sub = _subclasses.setdefault(key, type(cls.__name__, (mixin, cls), {"__module__": cls.__module__, **attrs}))
    module.__class__ = sub


def _attentions(model) -> list:
    """(layer, attention module) of every decoder layer with a standard ``self_attn`` (linear-attention layers
    of a hybrid have none)."""
    found = [(layer, getattr(layer, "self_attn", None)) for layer in decoder_layers(model)]
    found = [(layer, a) for layer, a in found if a is not None]
    if not found:
        raise ArchLabError(f"{type(model).__name__} has no self_attn modules to patch")
    return found


def _block_norm(layer):
    """A norm module of a decoder block (the class every norm a patch adds copies)."""
    for name, child in layer.named_children():
        if "norm" in name or name.startswith("ln"):
            return child
    raise ArchLabError(f"{type(layer).__name__} has no norm module to copy")


def _new_norm(like, width: int):
    eps = getattr(like, "variance_epsilon", None) or getattr(like, "eps", None) or 1e-6
    return _fit(type(like)(width, eps=eps), like)


def _rotary_for(model, config, rotated: int):
    """The model's own rotary-embedding class built for ``rotated`` dimensions (its config copied with that head
    width and no partial factor); the shared rotary module it replaces is returned too."""
    base = base_model(model)
    old = getattr(base, "rotary_emb", None)
    if old is None:
        raise ArchLabError(f"{type(model).__name__} has no rotary embedding (rotary_emb) to patch")
    c = copy.deepcopy(config)
    c.head_dim = rotated
    if getattr(c, "qk_rope_head_dim", None) is not None:
        c.qk_rope_head_dim = rotated
    rp = copy.deepcopy(getattr(c, "rope_parameters", None))
    if isinstance(rp, dict):
        for d in [rp] + [v for v in rp.values() if isinstance(v, dict)]:
            d.pop("partial_rotary_factor", None)
        c.rope_parameters = rp
    if hasattr(c, PATCH_FIELD):
        delattr(c, PATCH_FIELD)
    return base, old, _fit(type(old)(c), old)


def _head_dim(config) -> int:
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


# ----------------------------------------------------------------- the patches


def _qk_norm_off(model, config, arg) -> list:
    """QK-Norm off: every attention's ``q_norm`` and ``k_norm`` become identities (the projections, heads and
    everything else unchanged). For classes that normalise queries and keys in modules (OLMo 2, Qwen3, Gemma 3)."""
    from torch import nn

    n = 0
    for _, attn in _attentions(model):
        for name in ("q_norm", "k_norm"):
            if isinstance(getattr(attn, name, None), nn.Module) and not isinstance(getattr(attn, name), nn.Identity):
                setattr(attn, name, nn.Identity())
                n += 1
    if not n:
        raise ArchLabError(f"{type(model).__name__} has no q_norm/k_norm modules: QK-Norm is already off")
    return []


def _qk_norm_on(model, config, arg) -> list:
    """QK-Norm on, for classes without it (Llama, Mistral, SmolLM3...): each attention's ``q_proj`` and ``k_proj``
    become a ``NormedLinear`` (:mod:`~backend.arch.patch_modules`): their outputs are normalised before the heads
    are split and RoPE applied, by a norm of the block's own class (RMSNorm for Llama). ``per-head`` (Qwen3,
    Gemma 3; the QK-layernorm of Dehghani et al. and Wortsman et al., who normalise each head's query and key):
    one norm over ``head_dim`` shared by the heads; ``full-width`` (OLMo 2): one norm over all heads' queries
    (keys) together."""
    from torch import nn

    from .patch_modules import NormedLinear

    made = []
    for layer, attn in _attentions(model):
        if any(not isinstance(getattr(attn, n, None), (type(None), nn.Identity)) for n in ("q_norm", "k_norm")):
            raise ArchLabError(f"{type(attn).__name__} already normalises queries and keys (list qk_norm_off first)")
        like = _block_norm(layer)
        hd = int(getattr(attn, "head_dim", 0) or _head_dim(config))
        for name in ("q_proj", "k_proj"):
            proj = getattr(attn, name, None)
            if proj is None or type(proj).__name__ != "Linear":
                raise ArchLabError(f"{type(attn).__name__} has no plain {name} to normalise")
            norm = _new_norm(like, hd if arg == "per-head" else proj.out_features)
            setattr(attn, name, NormedLinear(proj, norm, hd if arg == "per-head" else 0))
            made.append(norm)
    return made


#: the block norms each placement has, named as the class that has it natively names them
PLACEMENT_NORMS = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),
    "sandwich": (
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
}


def _norm_placement(model, config, arg) -> list:
    """Norm placement: every decoder block re-wired to ``pre``, ``post`` or ``sandwich`` (``Placed`` in
    :mod:`~backend.arch.patch_modules` gives the formulas), reusing its attention and MLP; its block norms are
    replaced by fresh ones of the same class, named as the classes that have that placement natively name them
    (:data:`PLACEMENT_NORMS`), so the spec reads the placement from the names. Attributes the model's forward
    reads (``attention_type``...) stay on the block."""
    from .patch_modules import Placed

    made = []
    for layer in decoder_layers(model):
        mlp = next((n for n in _MLP_NAMES if getattr(layer, n, None) is not None), None)
        if getattr(layer, "self_attn", None) is None or mlp is None:
            raise ArchLabError(
                f"{type(layer).__name__} has no self_attn and mlp to re-wire (linear-attention or "
                "GPT-2-style blocks are not covered)"
            )
        like = _block_norm(layer)
        for name in [n for n, _ in layer.named_children() if "norm" in n or n.startswith("ln")]:
            delattr(layer, name)
        for name in PLACEMENT_NORMS[arg]:
            norm = _new_norm(like, like.weight.shape[0])
            setattr(layer, name, norm)
            made.append(norm)
        _swap_class(layer, Placed, _placement=arg, _mlp_name=mlp)
    return made


def _nope(model, config, arg) -> list:
    """NoPE layers, for classes without them natively (SmolLM3 and Llama 4 have ``no_rope_layers``): the attention
    of every layer whose ``no_rope_layers`` entry is 0 gets the identity rotation (cos 1, sin 0), so it sees no
    positions but the causal mask; the other layers are unchanged."""
    from .patch_modules import NoPE

    flags = getattr(config, "no_rope_layers", None)
    layers = _attentions(model)
    if not isinstance(flags, list) or len(flags) < len(decoder_layers(model)):
        raise ArchLabError("the nope patch needs no_rope_layers in the config: one 1 (RoPE) or 0 (NoPE) per layer")
    stack = decoder_layers(model)
    for layer, attn in layers:
        if not flags[stack.index(layer)]:
            _swap_class(attn, NoPE)
    return []


def _partial_rotary(model, config, arg) -> list:
    """Partial rotary, for classes whose rotation covers the whole head: the model's shared rotary module is
    replaced by a ``PartialRotary`` (:mod:`~backend.arch.patch_modules`) over ``partial_rotary_factor`` × head_dim
    dimensions (read from the config's rope parameters; an even number of at least 2)."""
    frac = _rope(config)[2]
    hd = _head_dim(config)
    rotated = int(round(frac * hd))
    if not 0 < frac < 1 or abs(frac * hd - rotated) > 1e-6 or rotated < 2 or rotated % 2 or rotated >= hd:
        raise ArchLabError(
            f"partial rotary needs rope_parameters.partial_rotary_factor giving an even width "
            f"from 2 to below the head width {hd}, got {frac!r}"
        )
    from .patch_modules import PartialRotary

    base, old, inner = _rotary_for(model, config, rotated)
    base.rotary_emb = _fit(PartialRotary(inner, hd, rotated), old)
    return []


def _attention_mla(model, config, arg) -> list:
    """Multi-head latent attention in a class that has only MHA/GQA: every ``self_attn`` becomes transformers'
    ``DeepseekV3Attention`` (q and kv latents, their norms, the decoupled RoPE key), sized by the config's
    ``kv_lora_rank``, ``q_lora_rank`` (None: no query latent), ``qk_nope_head_dim``, ``qk_rope_head_dim`` and
    ``v_head_dim``; the model's rotary module is rebuilt for ``qk_rope_head_dim`` dimensions. The config also
    needs ``rope_interleave`` and as many KV heads as query heads (MLA expands its latent to every head)."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention

    missing = [f for f in MLA_FIELDS + ("rope_interleave",) if not hasattr(config, f)]
    if missing or config.kv_lora_rank is None:
        raise ArchLabError(f"the attention:mla patch needs config fields {', '.join(missing or ['kv_lora_rank'])}")
    if getattr(config, "num_key_value_heads", config.num_attention_heads) != config.num_attention_heads:
        raise ArchLabError("the attention:mla patch needs num_key_value_heads equal to num_attention_heads")
    made = []
    for layer, attn in _attentions(model):
        new = _fit(DeepseekV3Attention(config, attn.layer_idx), attn)
        layer.self_attn = new
        made.append(new)
    base, old, rotary = _rotary_for(model, config, int(config.qk_rope_head_dim))
    base.rotary_emb = rotary
    return made


def _ffn_moe(model, config, arg) -> list:
    """Mixture of experts in a dense class: every decoder block's MLP becomes transformers' ``DeepseekV3MoE``
    (``num_local_experts`` routed experts of width ``moe_intermediate_size`` as fused 3-D tensors, a sigmoid
    top-``num_experts_per_tok`` router with DeepSeek's choice-only correction bias and ``n_group``/``topk_group``
    group-limited routing, and ``n_shared_experts`` always-on experts in one MLP; 0: none)."""
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    missing = [f for f in MOE_FIELDS if getattr(config, f, None) is None]
    if missing:
        raise ArchLabError(f"the ffn:moe patch needs config fields {', '.join(missing)}")
    made = []
    for layer in decoder_layers(model):
        name = next((n for n in _MLP_NAMES if getattr(layer, n, None) is not None), None)
        if name is None:
            raise ArchLabError(f"{type(layer).__name__} has no MLP to replace with experts")
        old = getattr(layer, name)
        if getattr(old, "experts", None) is not None:
            raise ArchLabError(f"{type(layer).__name__} already has experts")
        new = _fit(DeepseekV3MoE(config), old)
        setattr(layer, name, new)
        made.append(new)
    return made


PATCHES: dict[str, Patch] = {
    p.name: p
    for p in (
        Patch("qk_norm_off", _qk_norm_off, doc=_qk_norm_off.__doc__),
        Patch("qk_norm_on", _qk_norm_on, QK_NORM_KINDS, _qk_norm_on.__doc__),
        Patch("norm", _norm_placement, PLACEMENTS, _norm_placement.__doc__),
        Patch("nope", _nope, doc=_nope.__doc__),
        Patch("partial_rotary", _partial_rotary, doc=_partial_rotary.__doc__),
        Patch("attention", _attention_mla, ("mla",), _attention_mla.__doc__),
        Patch("ffn", _ffn_moe, ("moe",), _ffn_moe.__doc__),
    )
}
#: the order patches are listed in (and applied): what replaces modules before what changes their behaviour
ORDER = ("attention", "ffn", "qk_norm_off", "qk_norm_on", "nope", "partial_rotary", "norm")
