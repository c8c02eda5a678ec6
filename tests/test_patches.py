"""Named module patches: what each changes in the modules, that the spec and both counts read the patched model,
that the re-wired modules compute what their formulas say, and that patched checkpoints load back."""

import json

import pytest
import torch
from transformers import AutoConfig

from backend.arch import catalog, patches
from backend.arch.architecture import resolve
from backend.arch.errors import ArchLabError
from backend.arch.patch_modules import NoPE

TINY = dict(
    hidden_size=64,
    num_attention_heads=4,
    num_key_value_heads=2,
    num_hidden_layers=2,
    intermediate_size=96,
    vocab_size=97,
    max_position_embeddings=64,
)
MLA = dict(
    kv_lora_rank=32,
    q_lora_rank=48,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    rope_interleave=False,
    num_key_value_heads=4,
)
MOE = dict(
    num_local_experts=4,
    num_experts_per_tok=2,
    moe_intermediate_size=32,
    n_shared_experts=1,
    n_group=1,
    topk_group=1,
    norm_topk_prob=True,
    routed_scaling_factor=1.0,
)


def tiny(model_type: str, patch_list: list[str], seed: int = 0, **extra):
    cfg = AutoConfig.for_model(model_type, **{**TINY, **extra, patches.PATCH_FIELD: patch_list})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    return patches.from_config(cfg, dtype=torch.float32).eval()


def full(key: str, patch_list: list[str], **extra):
    """A catalog model with patches, resolved (meta model, spec, both counts)."""
    d = {**catalog.raw_config(key), **extra, patches.PATCH_FIELD: patch_list, "_name_or_path": f"{key} {patch_list}"}
    return resolve(d)


def shapes(model) -> dict[str, tuple]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def counts_agree(arch) -> None:
    assert arch.counts.components == arch.formula_counts.components
    assert arch.counts.total == arch.formula_counts.total and arch.counts.active == arch.formula_counts.active


def test_olmo2_without_qk_norm_has_no_qk_norm_and_otherwise_equal_modules():
    base, off = resolve("olmo2-7b"), full("olmo2-7b", ["qk_norm_off"])
    assert base.spec.qk_norm == "full-width" and off.spec.qk_norm == "none"
    a, b = shapes(base.meta_model), shapes(off.meta_model)
    gone = set(a) - set(b)
    assert gone and all(n.endswith(("self_attn.q_norm.weight", "self_attn.k_norm.weight")) for n in gone)
    assert set(b) <= set(a) and all(a[n] == b[n] for n in b)
    assert len(gone) == 2 * base.spec.num_layers
    counts_agree(off)
    s = base.spec
    assert base.counts.total - off.counts.total == s.num_layers * (s.num_heads + s.num_kv_heads) * s.head_dim


def test_qk_norm_off_refused_where_there_is_none():
    with pytest.raises(ArchLabError, match="no q_norm/k_norm"):
        full("llama3-8b", ["qk_norm_off"]).spec


@pytest.mark.parametrize("kind", ["per-head", "full-width"])
def test_qk_norm_on_adds_norms_read_by_spec_and_counts(kind):
    base, on = resolve("llama3-8b"), full("llama3-8b", [f"qk_norm_on:{kind}"])
    assert on.spec.qk_norm == kind
    counts_agree(on)
    added = set(shapes(on.meta_model)) - set(shapes(base.meta_model))
    assert added and all(n.endswith(("q_proj.norm.weight", "k_proj.norm.weight")) for n in added)
    assert set(shapes(base.meta_model)) <= set(shapes(on.meta_model))


@pytest.mark.parametrize("kind", ["per-head", "full-width"])
def test_qk_norm_on_normalises_the_projection(kind):
    m = tiny("llama", [f"qk_norm_on:{kind}"])
    proj = m.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        proj.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 5, 64)
    y = x @ proj.weight.T
    w, eps = proj.norm.weight, proj.norm.variance_epsilon
    if kind == "per-head":
        h = y.view(2, 5, 4, 16)
        want = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * w).view(2, 5, 64)
    else:
        want = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * w
    torch.testing.assert_close(proj(x), want)


def _layer_inputs(model, x):
    pos = torch.arange(x.shape[1])[None]
    return model.model.rotary_emb(x, pos)


@pytest.mark.parametrize("placement", ["pre", "post", "sandwich"])
@pytest.mark.parametrize("model_type", ["llama", "olmo2"])
def test_norm_placement_computes_its_formula(placement, model_type):
    m = tiny(model_type, [f"norm:{placement}"])
    layer = m.model.layers[0]
    names = {n for n, _ in layer.named_children() if "norm" in n}
    assert names == set(patches.PLACEMENT_NORMS[placement])
    for n in names:  # distinct weights, so that a wrong norm in a wrong place shows
        with torch.no_grad():
            getattr(layer, n).weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 6, 64)
    pe = _layer_inputs(m, x)
    attn = lambda h: layer.self_attn(hidden_states=h, position_embeddings=pe, attention_mask=None)[0]  # noqa: E731
    n = {k: getattr(layer, k) for k in names}
    if placement == "pre":
        h = x + attn(n["input_layernorm"](x))
        want = h + layer.mlp(n["post_attention_layernorm"](h))
    elif placement == "post":
        h = x + n["post_attention_layernorm"](attn(x))
        want = h + n["post_feedforward_layernorm"](layer.mlp(h))
    else:
        h = x + n["post_attention_layernorm"](attn(n["input_layernorm"](x)))
        want = h + n["post_feedforward_layernorm"](layer.mlp(n["pre_feedforward_layernorm"](h)))
    with torch.no_grad():
        torch.testing.assert_close(layer(x, position_embeddings=pe, attention_mask=None), want)
    spec_placement = {"sandwich": "pre+post"}.get(placement, placement)
    arch = full({"llama": "llama3-8b", "olmo2": "olmo2-7b"}[model_type], [f"norm:{placement}"])
    assert arch.spec.norm_placement == spec_placement
    assert all(layer.norms == len(patches.PLACEMENT_NORMS[placement]) for layer in arch.spec.layers)
    counts_agree(arch)


def test_norm_placement_keeps_what_the_model_forward_reads():
    m = tiny(
        "gemma3_text", ["norm:pre"], head_dim=16, layer_types=["sliding_attention", "full_attention"], sliding_window=4
    )
    ref = tiny("gemma3_text", [], head_dim=16, layer_types=["sliding_attention", "full_attention"], sliding_window=4)
    for a, b in zip(m.model.layers, ref.model.layers):
        assert type(a).__name__ == type(b).__name__
        assert {k: v for k, v in vars(a).items() if not k.startswith("_")} == {
            k: v for k, v in vars(b).items() if not k.startswith("_")
        }
    assert torch.isfinite(m(torch.randint(0, 97, (1, 9))).logits).all()


def test_norm_placement_refuses_blocks_it_cannot_rewire():
    with pytest.raises(ArchLabError, match="no self_attn and mlp"):
        full("gpt2", ["norm:post"]).spec


def test_mla_patch_spec_has_the_ranks_and_counts_agree():
    arch = full(
        "llama3-8b",
        ["attention:mla"],
        kv_lora_rank=512,
        q_lora_rank=1024,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        rope_interleave=False,
        num_key_value_heads=32,
    )
    s = arch.spec
    assert s.attention_kind == "MLA" and s.num_kv_heads == s.num_heads
    assert (
        s.mla.kv_lora_rank,
        s.mla.q_lora_rank,
        s.mla.qk_nope_head_dim,
        s.mla.qk_rope_head_dim,
        s.mla.v_head_dim,
    ) == (512, 1024, 128, 64, 128)
    counts_agree(arch)
    m = tiny("llama", ["attention:mla"], **MLA)
    x = torch.randn(1, 5, 64)
    cos, sin = m.model.rotary_emb(x, torch.arange(5)[None])
    assert cos.shape[-1] == MLA["qk_rope_head_dim"]  # the rotary module is rebuilt for the RoPE key's width
    assert type(m.model.layers[0].self_attn).__name__ == "DeepseekV3Attention"


def test_mla_patch_needs_its_fields():
    with pytest.raises(ArchLabError, match="needs config fields"):
        full("llama3-8b", ["attention:mla"]).spec


def test_nope_layers_see_no_positions():
    """A NoPE layer is blind to order: in a one-layer model the last position attends to the set of earlier
    tokens, so its logits do not change when they are shuffled; with RoPE they do."""
    ids = torch.tensor([[5, 17, 3, 42, 8, 11, 60]])
    shuffled = ids[:, [3, 0, 5, 1, 4, 2, 6]]
    nope = tiny("llama", ["nope"], no_rope_layers=[0], num_hidden_layers=1)
    rope = tiny("llama", [], num_hidden_layers=1)
    with torch.no_grad():
        torch.testing.assert_close(nope(ids).logits[0, -1], nope(shuffled).logits[0, -1])
        assert not torch.allclose(rope(ids).logits[0, -1], rope(shuffled).logits[0, -1], atol=1e-4)
    some = tiny("llama", ["nope"], no_rope_layers=[1, 0])
    assert [isinstance(layer.self_attn, NoPE) for layer in some.model.layers] == [False, True]
    arch = full("llama3-8b", ["nope"], no_rope_layers=[int((i + 1) % 4 != 0) for i in range(32)])
    assert arch.spec.nope_layers == 8 and arch.spec.layer_pattern == "F F F Fø ×8"
    counts_agree(arch)


def test_partial_rotary_rotates_only_its_share():
    m = tiny("llama", ["partial_rotary"], partial_rotary_factor=0.5)
    x = torch.randn(1, 5, 64)
    cos, sin = m.model.rotary_emb(x, torch.arange(5)[None])
    assert cos.shape[-1] == 16  # the full head: 8 rotated (4 pairs), 8 passed through
    rotated = [0, 1, 2, 3, 8, 9, 10, 11]
    passed = [4, 5, 6, 7, 12, 13, 14, 15]
    assert torch.all(cos[..., passed] == 1) and torch.all(sin[..., passed] == 0)
    inv = 1.0 / (m.config.rope_parameters["rope_theta"] ** (torch.arange(0, 8, 2).float() / 8))
    want = torch.arange(5)[:, None].float() * inv  # theta^(-2j/rotated): the usual partial rotary's frequencies
    torch.testing.assert_close(cos[0][:, rotated], torch.cat([want.cos(), want.cos()], -1))
    arch = full("llama3-8b", ["partial_rotary"], partial_rotary_factor=0.25)
    assert arch.spec.rope_fraction == 0.25
    with pytest.raises(ArchLabError, match="even width"):
        full("llama3-8b", ["partial_rotary"], partial_rotary_factor=0.3).spec


def test_moe_patch_builds_experts_read_by_spec_and_counts():
    arch = full("llama3-8b", ["ffn:moe"], **{**MOE, "num_local_experts": 16, "moe_intermediate_size": 1024})
    m = arch.spec.moe
    assert (m.num_experts, m.top_k, m.num_shared, m.expert_width) == (16, 2, 1, 1024)
    assert m.layers == tuple(range(32)) and m.bias_corrected
    counts_agree(arch)
    no_shared = full("llama3-8b", ["ffn:moe"], **{**MOE, "n_shared_experts": 0})
    assert no_shared.spec.moe.num_shared == 0 and no_shared.counts.components["shared_experts"] == 0
    counts_agree(no_shared)


def test_patched_modules_are_initialised_on_both_build_paths():
    real = tiny("llama", ["ffn:moe", "qk_norm_on:per-head"], **MOE)
    cfg = real.config
    with torch.device("meta"):
        meta = patches.from_config(cfg, dtype=torch.float32)
    meta.to_empty(device="cpu")
    for t in list(meta.parameters()) + list(meta.buffers()):
        t.__dict__.pop("_is_hf_initialized", None)
    for mod in meta.modules():
        mod.__dict__.pop("_is_hf_initialized", None)
    meta.init_weights()
    for m in (real, meta):
        mlp = m.model.layers[0].mlp
        for p in (mlp.experts.gate_up_proj, mlp.gate.weight):
            assert 0.01 < float(p.detach().std()) < 0.03
        assert torch.all(mlp.gate.e_score_correction_bias == 0)
        assert torch.all(m.model.layers[0].self_attn.q_proj.norm.weight == 1)


def test_every_patch_trains_a_step():
    for mt, plist, extra in [
        ("llama", ["attention:mla", "nope", "norm:post"], {**MLA, "no_rope_layers": [1, 0]}),
        ("llama", ["ffn:moe", "partial_rotary"], {**MOE, "partial_rotary_factor": 0.5}),
        ("olmo2", ["qk_norm_off", "qk_norm_on:per-head", "norm:sandwich"], {}),
    ]:
        m = tiny(mt, plist, **extra).train()
        ids = torch.randint(0, 97, (2, 12))
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.optim.AdamW(m.parameters(), lr=1e-2).step()
        assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in m.parameters())
        assert all(p.grad is not None for n, p in m.named_parameters() if "norm" in n and "layers" in n), plist


def test_patched_models_run_stacked_under_vmap():
    """functional_call + vmap over two stacked copies gives each copy's own loss (no hooks, no per-call state)."""
    from torch.func import functional_call, stack_module_state

    models = [
        tiny(
            "llama",
            ["nope", "partial_rotary", "qk_norm_on:per-head", "norm:sandwich"],
            seed=s,
            no_rope_layers=[1, 0],
            partial_rotary_factor=0.5,
        )
        for s in (0, 1)
    ]
    params, buffers = stack_module_state(models)
    ids = torch.randint(0, 97, (2, 10))

    def loss(p, b):
        return functional_call(models[0], (p, b), (), {"input_ids": ids, "labels": ids}).loss

    stacked = torch.vmap(loss)(params, buffers)
    alone = torch.stack([m(input_ids=ids, labels=ids).loss for m in models])
    torch.testing.assert_close(stacked, alone)


def test_patch_lists_are_validated():
    for bad, match in (
        (["nonsense"], "unknown patch"),
        (["norm"], "takes pre"),
        (["qk_norm_off:x"], "no argument"),
        ("qk_norm_off", "must be a list"),
    ):
        with pytest.raises(ArchLabError, match=match):
            resolve({**catalog.raw_config("olmo2-7b"), patches.PATCH_FIELD: bad})


@pytest.mark.parametrize(
    "key,plist,extra",
    [
        ("olmo2-7b", ["qk_norm_off", "norm:pre"], {}),
        (
            "llama3-8b",
            ["attention:mla", "ffn:moe", "nope"],
            {
                "kv_lora_rank": 512,
                "q_lora_rank": None,
                "qk_nope_head_dim": 128,
                "qk_rope_head_dim": 64,
                "v_head_dim": 128,
                "rope_interleave": False,
                "num_key_value_heads": 32,
                **MOE,
                "no_rope_layers": [int((i + 1) % 4 != 0) for i in range(32)],
            },
        ),
    ],
)
def test_patched_miniature_saves_and_loads_back_identically(tmp_path, key, plist, extra):
    from backend.live.runtime import ModelRequest, load, release

    source = {**catalog.raw_config(key), **extra, patches.PATCH_FIELD: plist, "_name_or_path": "patched"}
    req = ModelRequest(source, size="tiny", device="cpu", dtype="fp32")
    lm = load(req)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())[patches.PATCH_FIELD] == plist
    back = ModelRequest(key, mode="pretrained", path=str(tmp_path), device="cpu", dtype="fp32")
    loaded = load(back)
    assert loaded.spec == lm.spec
    ids = torch.randint(0, 200, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, lm.model(ids).logits, rtol=0, atol=0)
    direct = patches.from_pretrained(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(direct(ids).logits, lm.model(ids).logits, rtol=0, atol=0)
    release(req)
    release(back)


def test_a_patched_checkpoint_with_wrong_weights_is_refused(tmp_path):
    m = tiny("llama", ["qk_norm_on:per-head"])
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[patches.PATCH_FIELD] = ["norm:post"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchLabError, match="do not fit"):
        patches.from_pretrained(tmp_path)


def test_zero_shared_experts_build_and_train():
    """DeepSeek V3's class with n_shared_experts 0 (shared_expert=off) builds them zero wide: no parameters, no
    shared expert in the spec, and a training step stays finite."""
    m = tiny(
        "deepseek_v3",
        [],
        **{
            **MLA,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "n_shared_experts": 0,
            "first_k_dense_replace": 1,
            "n_group": 1,
            "topk_group": 1,
        },
    )
    assert sum(p.numel() for p in m.model.layers[1].mlp.shared_experts.parameters()) == 0
    ids = torch.randint(0, 97, (2, 12))
    loss = m.train()(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.AdamW(m.parameters(), lr=1e-2).step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in m.parameters())
    spec = full("deepseek-v3", [], n_shared_experts=0).spec
    assert spec.moe.num_shared == 0 and spec.moe.shared_width == 0


def test_a_seed_gives_the_same_patched_weights():
    extra = {**MLA, **MOE, "no_rope_layers": [1, 0]}
    a, b = (tiny("llama", ["attention:mla", "ffn:moe", "nope", "norm:post"], seed=3, **extra) for _ in range(2))
    c = tiny("llama", ["attention:mla", "ffn:moe", "nope", "norm:post"], seed=4, **extra)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.0.mlp.gate.weight"], sc["model.layers.0.mlp.gate.weight"])
