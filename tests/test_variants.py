"""Variants as data: each axis changes only what it names (config and modules), the base is the variant with
its own values, refusals are one line, and variants are sized to their base's budget with its shape."""

import re

import numpy as np
import pytest

from backend.arch import catalog
from backend.arch.architecture import resolve
from backend.arch.errors import ArchLabError
from backend.arch.patches import PATCH_FIELD
from backend.arch.variants import AXES, RECIPE_FIELDS, axis_role, base_values, make_variant, parse_vary, variants

VOCAB = 2048
MOE_FIELDS = {
    "num_local_experts",
    "num_experts_per_tok",
    "n_shared_experts",
    "moe_intermediate_size",
    "n_group",
    "topk_group",
    "norm_topk_prob",
    "routed_scaling_factor",
}
MLA_FIELDS = {
    "kv_lora_rank",
    "q_lora_rank",
    "qk_nope_head_dim",
    "qk_rope_head_dim",
    "v_head_dim",
    "rope_interleave",
    "num_key_value_heads",
}

# (base, axis, value, config fields that change, pattern every changed parameter name matches (None: no change))
CASES = [
    ("olmo2-7b", "qk_norm", "off", {PATCH_FIELD}, r"self_attn\.[qk]_norm\."),
    ("llama3-8b", "qk_norm", "on", {PATCH_FIELD}, r"self_attn\.[qk]_proj\.norm\."),
    ("olmo2-7b", "norm", "pre", {PATCH_FIELD}, r"layers\.\d+\.\w+_layernorm\."),
    ("llama3-8b", "norm", "sandwich", {PATCH_FIELD}, r"layers\.\d+\.\w+_layernorm\."),
    ("llama3-8b", "attention", "mqa", {"num_key_value_heads"}, r"self_attn\.[kv]_proj\."),
    ("olmo2-7b", "attention", "gqa:8", {"num_key_value_heads"}, r"self_attn\.(k_proj|v_proj|k_norm)\."),
    ("llama3-8b", "attention", "mla", MLA_FIELDS | {PATCH_FIELD}, r"self_attn\."),
    (
        "deepseek-v3",
        "attention",
        "mla:kv_lora_rank=256",
        {"kv_lora_rank"},
        r"self_attn\.(kv_a_proj_with_mqa|kv_a_layernorm|kv_b_proj)\.",
    ),
    ("smollm3-3b", "positions", "rope", {"no_rope_layers"}, None),
    ("llama3-8b", "positions", "nope:4", {"no_rope_layers", PATCH_FIELD}, None),
    ("llama3-8b", "positions", "partial:0.5", {"partial_rotary_factor", PATCH_FIELD}, None),
    ("glm-4.5", "positions", "rope", {"partial_rotary_factor"}, None),
    ("deepseek-v3", "ffn", "dense", {"first_k_dense_replace"}, r"\.mlp\."),
    ("qwen3-30b-a3b", "ffn", "dense", {"mlp_only_layers"}, r"\.mlp\."),
    ("qwen3-30b-a3b", "ffn", "moe:64:4", {"num_experts", "num_experts_per_tok"}, r"\.mlp\.(experts|gate)\."),
    ("llama3-8b", "ffn", "moe:8:2:1", MOE_FIELDS | {PATCH_FIELD}, r"\.mlp\."),
    ("deepseek-v3", "shared_expert", "off", {"n_shared_experts"}, r"\.mlp\.shared_experts\."),
    ("gemma3-27b", "attention_pattern", "global", {"layer_types"}, None),
    ("qwen3-4b", "attention_pattern", "5:1:window=512", {"layer_types", "sliding_window", "use_sliding_window"}, None),
    ("mistral-small-3.1", "attention_pattern", "sliding", {"sliding_window"}, None),
    ("llama3-8b", "tied", "on", {"tie_word_embeddings"}, r"^lm_head\."),
    ("llama3-8b", "rms_norm_eps", 1e-6, {"rms_norm_eps"}, None),
]


def shapes(arch) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in arch.meta_model.named_parameters()}


@pytest.mark.parametrize("key,axis,value,fields,modules", CASES, ids=[f"{c[0]}-{c[1]}={c[2]}" for c in CASES])
def test_each_axis_changes_only_what_it_names(key, axis, value, fields, modules):
    v = make_variant(key, {axis: value})
    assert not v.is_base
    base = catalog.raw_config(key)
    changed = {k for k in set(base) | set(v.config) if k not in base or k not in v.config or base[k] != v.config[k]} - {
        "_name_or_path"
    }
    if "partial_rotary_factor" in fields and "rope_parameters" in base:
        fields = fields - {"partial_rotary_factor"} | {"rope_parameters"}
    assert changed == fields
    arch = resolve(v.config)
    assert AXES[axis].holds(arch.spec, v.changes[0][1]) if axis in AXES else arch.config.rms_norm_eps == value
    a, b = shapes(resolve(key)), shapes(arch)
    differ = {n for n in set(a) | set(b) if a.get(n) != b.get(n)}
    if modules is None:
        assert not differ
    else:
        assert differ and all(re.search(modules, n) for n in differ), sorted(differ)[:5]
    implied = {("ffn", "shared_expert"), ("shared_expert", "ffn")}
    other = {n: x for n, x in base_values(key).items() if n != axis and (axis, n) not in implied}
    assert all(base_values(v.config)[n] == x for n, x in other.items()) or v.notes


def test_base_values_read_the_catalog():
    assert base_values("olmo2-7b") == {
        "attention": "mha",
        "qk_norm": "on",
        "norm": "post",
        "positions": "rope",
        "ffn": "dense",
        "shared_expert": "off",
        "attention_pattern": "global",
        "tied": "off",
        "mixer": "attention",
    }
    g = base_values("gemma3-27b")
    assert (g["norm"], g["attention_pattern"], g["tied"]) == ("sandwich", "5:1", "on")
    assert base_values("smollm3-3b")["positions"] == "nope:4"
    assert base_values("deepseek-v3")["ffn"] == "moe:256:8:1"
    assert base_values("gpt-oss-20b")["attention_pattern"] == "1:1"
    assert base_values("glm-4.5")["positions"] == "partial:0.5"


def test_the_factorial_includes_the_base_once():
    cells = variants("olmo2-7b", [("qk_norm", ["off", "on"]), ("norm", ["pre", "post"])])
    assert [c.label for c in cells] == [
        "qk_norm=off, norm=pre",
        "qk_norm=off, norm=post",
        "qk_norm=on, norm=pre",
        "qk_norm=on, norm=post",
    ]
    assert [c.is_base for c in cells] == [False, False, False, True]
    base = cells[3]
    assert {k: v for k, v in base.config.items() if k != "_name_or_path"} == catalog.raw_config("olmo2-7b")
    assert base.name == "OLMo 2 7B [qk_norm=on, norm=post]" and not base.patches
    assert cells[0].patches == ("qk_norm_off", "norm:pre")
    spec = resolve(cells[0].config).spec
    assert (spec.qk_norm, spec.norm_placement) == ("none", "pre")


def test_parse_vary():
    assert parse_vary("qk_norm=off,on") == ("qk_norm", ("off", "on"))
    assert parse_vary(" attention = mha, gqa:8 ,mqa,mla:q_lora_rank=None:kv_lora_rank=64") == (
        "attention",
        ("mha", "gqa:8", "mqa", "mla:kv_lora_rank=64:q_lora_rank=none"),
    )
    assert parse_vary("positions=rope,nope:4,partial:.50") == ("positions", ("rope", "nope:4", "partial:0.5"))
    assert parse_vary("ffn=dense,moe:8:2,moe:8:2:0,moe:8:2:1") == ("ffn", ("dense", "moe:8:2", "moe:8:2:1"))
    assert parse_vary("attention_pattern=global,5:1:window=512,sliding") == (
        "attention_pattern",
        ("global", "5:1:window=512", "sliding"),
    )
    assert parse_vary("lr=1e-3,3e-3") == ("lr", (1e-3, 3e-3))
    assert parse_vary("rms_norm_eps=1e-5,1e-6", "llama3-8b") == ("rms_norm_eps", (1e-5, 1e-6))
    assert parse_vary('layer_types=["full_attention"],x') == ("layer_types", (["full_attention"], "x"))
    assert axis_role("lr") == "recipe" and axis_role("qk_norm") == "architecture" and "z_loss" in RECIPE_FIELDS
    assert axis_role("rms_norm_eps") == "architecture"


@pytest.mark.parametrize(
    "text,match",
    [
        ("qk_norm=maybe", r"qk_norm='maybe' is not a value of qk_norm; write one of off, on, per-head, full-width"),
        ("attention=gqa", "write one of mha, gqa:N, mqa, mla"),
        ("attention=mla:rank=3", "write one of"),
        ("positions=partial:1.5", "write one of rope, nope:K, partial:F"),
        ("ffn=moe:4:8", "write one of dense, moe:E:K"),
        ("attention_pattern=global:window=8", "write one of"),
        ("no_such_field=1", "unknown axis 'no_such_field': not one of attention, qk_norm, norm"),
        ("qk_norm", "--vary takes axis=v1,v2"),
        ("qk_norm=", "needs at least one value"),
        ("lr=fast", "a recipe field takes numbers"),
    ],
)
def test_parse_vary_refuses_in_one_line(text, match):
    with pytest.raises(ArchLabError, match=match) as e:
        parse_vary(text, "llama3-8b")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "key,changes,match",
    [
        ("gpt2", {"norm": "post"}, "GPT-2 .* cannot build norm=post: .*no self_attn and mlp"),
        ("llama3-8b", {"attention_pattern": "5:1"}, "cannot build attention_pattern=5:1: Llama has no sliding-window"),
        ("deepseek-v3", {"attention": "mha"}, "builds only MLA attention"),
        ("olmo2-7b", {"shared_expert": "on"}, "a dense model has no experts"),
        ("mistral-small-3.1", {"attention_pattern": "5:1"}, "no layer_types field"),
        ("llama3-8b", {"attention": "gqa:5"}, "KV heads dividing the 32 query heads"),
        ("llama3-8b", {"positions": "partial:0.3"}, "not an even number of dimensions"),
        ("deepseek-v3", {"ffn": "moe:12:8"}, "do not fit its 8 expert groups"),
        ("olmo2-7b", {"lr": 0.1}, "lr is a recipe field"),
        ("olmo2-7b", [("norm", "pre"), ("norm", "post")], "an axis is given twice"),
    ],
)
def test_refusals_are_one_line(key, changes, match):
    with pytest.raises(ArchLabError, match=match) as e:
        make_variant(key, changes)
    assert "\n" not in str(e.value)


def test_a_variant_of_a_variant_on_the_same_axis_is_refused():
    v = make_variant("olmo2-7b", {"qk_norm": "off"})
    with pytest.raises(ArchLabError, match="already changes qk_norm"):
        make_variant(v.config, {"qk_norm": "per-head"})
    both = make_variant(v.config, {"norm": "pre"})  # another axis composes
    assert both.patches == ("qk_norm_off", "norm:pre")


def test_refused_cells_keep_their_place_in_the_factorial():
    cells = variants("qwen3-30b-a3b", [("shared_expert", ["off", "on"])])
    assert cells[0].is_base and isinstance(cells[1], ArchLabError)
    assert "no n_shared_experts field" in str(cells[1])


def test_side_effects_become_notes():
    v = make_variant("olmo2-7b", {"attention": "mla"})
    assert v.notes == ("also changes qk_norm: on -> off",)  # DeepSeek's attention has no q/k norms
    moe = make_variant("gpt2", {"ffn": "moe:8:2"})
    assert "also changes the gated MLP: False -> True" in moe.notes
    assert make_variant("olmo2-7b", {"norm": "pre"}).notes == ()


def test_the_base_value_is_the_base_whatever_the_class_can_change():
    v = make_variant("gpt2", {"attention": "mha"})  # GPT-2 has no KV-head field, but mha is what it is
    assert v.is_base and v.config["_name_or_path"] == "GPT-2 (124M) [attention=mha]"


# ----------------------------------------------------------------- sizing


def _sized(base, varies, **kw):
    from backend.train.budget import size_to_budget, size_variants

    cells = variants(base, varies)
    out = size_variants(base, cells, 1e6, "active", vocab=VOCAB, **kw)
    return cells, out, size_to_budget(base, 1e6, "active", vocab=VOCAB, **kw).arch.spec


def test_variants_are_sized_to_the_base_budget_with_its_shape():
    cells, out, mini = _sized("olmo2-7b", [("qk_norm", ["off", "on"]), ("norm", ["pre", "post"])])
    for s in out:
        spec = s.arch.spec
        assert abs(s.deviation) <= 0.05
        assert (spec.num_heads, spec.head_dim, spec.num_layers, spec.hidden_size) == (
            mini.num_heads,
            mini.head_dim,
            mini.num_layers,
            mini.hidden_size,
        )
        assert not s.notes
    assert [(s.arch.spec.qk_norm, s.arch.spec.norm_placement) for s in out] == [
        ("none", "pre"),
        ("none", "post"),
        ("full-width", "pre"),
        ("full-width", "post"),
    ]
    assert out[3].config == size_to_base(out)  # the base's cell is the base's sizing


def size_to_base(out):
    from backend.train.budget import size_to_budget

    mini = out[3].arch.spec
    return size_to_budget(
        "olmo2-7b",
        1e6,
        "active",
        vocab=VOCAB,
        heads=mini.num_heads,
        head_dim=mini.head_dim,
        layers=mini.num_layers,
        prefer=(mini.hidden_size, out[3].width),
    ).config


def test_attention_variants_share_query_heads_and_head_width():
    cells, out, mini = _sized("olmo2-7b", [("attention", ["mha", "gqa:8", "mqa", "mla"])])
    specs = [s.arch.spec for s in out]
    assert all(abs(s.deviation) <= 0.05 for s in out)
    assert {s.num_heads for s in specs} == {8}  # gqa:8 of 32 heads groups 4: eight query heads give two KV heads
    assert [s.num_kv_heads for s in specs] == [8, 2, 1, 8]
    assert [s.attention_kind for s in specs] == ["MHA", "GQA", "MQA", "MLA"]
    assert {s.v_head_dim for s in specs} == {mini.head_dim} and {s.num_layers for s in specs} == {mini.num_layers}
    assert all("8 query heads (not 4)" in s.notes[0] for s in out)


def test_a_pattern_that_does_not_fit_the_depth_is_noted():
    cells, out, mini = _sized("gemma3-27b", [("attention_pattern", ["5:1", "3:1"])])
    assert out[0].arch.spec.num_layers == mini.num_layers == 6 and not out[0].notes
    assert out[1].arch.spec.num_layers == 4 and "4 layers, not the base's 6" in out[1].notes[0]
    assert all(abs(s.deviation) <= 0.05 for s in out)


def test_moe_variants_meet_the_active_budget_at_the_base_hidden_size():
    cells, out, mini = _sized("deepseek-v3", [("shared_expert", ["on", "off"])])
    assert [s.arch.spec.moe.num_shared for s in out] == [1, 0]
    assert all(abs(s.deviation) <= 0.05 for s in out)
    assert {s.arch.spec.hidden_size for s in out} == {mini.hidden_size}
    assert out[1].width > out[0].width  # the routed experts widen to make up for the shared one


def test_a_patched_variant_trains_with_the_project_trainer():
    """build_model applies the patches, the MoE patch gets the grouped expert kernel and its routers are watched."""
    import torch

    from backend.train import data
    from backend.train.budget import size_to_budget
    from backend.train.experts import register
    from backend.train.recipe import preset
    from backend.train.trainer import Member

    v = make_variant("olmo2-7b", [("ffn", "moe:8:2:1")])
    s = size_to_budget(v.config, 100_000, "active", vocab=VOCAB, layers=2)
    recipe = preset("tiny", budget=100_000, layers=2, batch=4, seq_len=32, tokens=4 * 32 * 4)
    m = Member("v", s, recipe, torch.device("cpu")).start()
    assert m.model.config._experts_implementation == register()
    assert len(m.routers.routers) == s.arch.spec.num_layers
    stream = data.BatchStream(data.corpus_data().train, 4, 32, 0)
    for i in range(2):
        m.train_step(stream[i])
    assert m.step == 2 and np.isfinite(m.routers.snapshot(2).load).all()
    assert m.model.model.layers[0].post_attention_layernorm is not None  # OLMo 2's post-norm kept
    m.close()


@pytest.mark.parametrize(
    "key,changes,marked",
    [
        ("olmo2-7b", {"qk_norm": "off"}, {"attention": {"qk_norm"}}),
        (
            "olmo2-7b",
            {"norm": "pre"},
            {"norm_attn_pre": {"*"}, "norm_attn_post": {"*"}, "norm_mlp_pre": {"*"}, "norm_mlp_post": {"*"}},
        ),
        ("llama3-8b", {"positions": "nope:4"}, {"attention": {"nope"}, "pattern": {"summary", "pos"}}),
        ("llama3-8b", {"tied": "on"}, {"lm_head": {"tied"}}),
        ("gemma3-27b", {"attention_pattern": "global"}, {"attention": {"window"}, "pattern": {"summary", "attn"}}),
    ],
)
def test_the_diagram_marks_exactly_the_changed_boxes(key, changes, marked):
    from backend.present import diagram

    v = make_variant(key, changes)
    specs = {"base": resolve(key).spec, "variant": resolve(v.config).spec}
    assert diagram.marks(specs, "base") == {"base": {}, "variant": marked}


def test_a_moe_model_made_dense_sizes_to_an_all_dense_miniature():
    """DeepSeek V3 with ffn=dense keeps its MoE fields but marks every layer dense (first_k_dense_replace = all);
    its miniature stays all dense rather than turning the layers after the first back into MoE layers."""
    from backend.train.budget import size_variants

    base = make_variant("deepseek-v3", [("ffn", "moe:256:8:1")])  # its own values: the base itself
    dense = make_variant("deepseek-v3", [("ffn", "dense")])
    base_sized, dense_sized = size_variants("deepseek-v3", [base, dense], 200_000, seq_len=64, vocab=512, layers=4)
    assert base_sized.arch.spec.moe is not None
    assert not isinstance(dense_sized, Exception), dense_sized
    assert dense_sized.arch.spec.moe is None and {layer.mlp for layer in dense_sized.arch.spec.layers} == {"dense"}
    assert dense_sized.arch.spec.num_layers == base_sized.arch.spec.num_layers == 4
