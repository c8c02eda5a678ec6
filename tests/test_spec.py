"""ArchSpec reads each architecture's decisive features correctly."""

import pytest

from backend.arch import catalog
from backend.arch.architecture import arch_spec
from backend.arch.errors import ArchLabError


@pytest.mark.parametrize(
    "key,kind,heads,kv",
    [
        ("gpt2", "MHA", 12, 12),
        ("olmo2-7b", "MHA", 32, 32),
        ("olmo2-32b", "GQA", 40, 8),
        ("deepseek-v3", "MLA", 128, 128),
        ("qwen3-30b-a3b", "GQA", 32, 4),
        ("gemma3-27b", "GQA", 32, 16),
    ],
)
def test_attention_kind(key, kind, heads, kv):
    s = arch_spec(key)
    assert (s.attention_kind, s.num_heads, s.num_kv_heads) == (kind, heads, kv)


def test_norm_placement():
    assert arch_spec("gpt2").norm_placement == "pre" and arch_spec("gpt2").norm_type == "LayerNorm"
    assert arch_spec("olmo2-7b").norm_placement == "post"
    assert arch_spec("gemma3-27b").norm_placement == "pre+post"
    assert arch_spec("qwen3-4b").norm_placement == "pre" and arch_spec("qwen3-4b").norm_type == "RMSNorm"


def test_qk_norm():
    assert arch_spec("olmo2-7b").qk_norm == "full-width"
    assert arch_spec("qwen3-4b").qk_norm == "per-head"
    assert arch_spec("llama4-scout").qk_norm == "L2 (no weights)"
    assert arch_spec("mistral-small-3.1").qk_norm == "none"


def test_positions():
    assert arch_spec("gpt2").position == "absolute"
    assert arch_spec("smollm3-3b").nope_layers == 9  # every 4th of 36
    assert arch_spec("llama4-scout").nope_layers == 12
    assert arch_spec("glm-4.5").rope_fraction == 0.5
    assert arch_spec("deepseek-v3").rope_fraction == pytest.approx(64 / 192)


def test_mlp_kinds():
    assert arch_spec("gpt2").mlp_kind == "GELU MLP"
    assert arch_spec("gemma3-27b").mlp_kind == "GeGLU"
    assert arch_spec("qwen3-4b").mlp_kind == "SwiGLU"


def test_moe_shapes():
    ds = arch_spec("deepseek-v3").moe
    assert (ds.num_experts, ds.top_k, ds.num_shared, ds.expert_width) == (256, 8, 1, 2048)
    assert ds.bias_corrected and (ds.n_group, ds.topk_group) == (8, 4) and ds.scoring == "sigmoid"
    assert ds.layers == tuple(range(3, 61))  # first 3 dense
    mav = arch_spec("llama4-maverick").moe
    assert (mav.num_experts, mav.top_k, mav.num_shared) == (128, 1, 1) and mav.layers == tuple(range(1, 48, 2))
    q = arch_spec("qwen3-30b-a3b").moe
    assert q.num_shared == 0 and q.top_k == 8
    nxt = arch_spec("qwen3-next-80b-a3b").moe
    assert nxt.shared_gate and nxt.num_experts == 512 and nxt.top_k == 10
    assert arch_spec("gpt2").moe is None


def test_layer_patterns():
    assert arch_spec("gemma3-27b").layer_pattern == "S S S S S F ×10 + S S"
    assert arch_spec("gpt-oss-20b").layer_pattern == "S F ×12"
    assert arch_spec("qwen3-next-80b-a3b").layer_pattern == "L L L F ×12"
    assert arch_spec("llama4-scout").layer_pattern == "C C C Fø ×12"
    assert arch_spec("olmo3-7b").window == 4096


def test_user_config_without_catalog():
    cfg = catalog.raw_config("qwen3-4b")
    cfg["num_hidden_layers"] = 4
    cfg["_name_or_path"] = "my-qwen"
    s = arch_spec(cfg)
    assert s.num_layers == 4 and s.attention_kind == "GQA"


def test_other_transformers_model_type():
    # A model type outside the catalog (Mixtral) still gets a spec.
    s = arch_spec(
        {
            "model_type": "mixtral",
            "hidden_size": 256,
            "intermediate_size": 512,
            "num_hidden_layers": 2,
            "num_attention_heads": 8,
            "num_key_value_heads": 2,
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "vocab_size": 1000,
        }
    )
    assert s.moe.num_experts == 4 and s.moe.top_k == 2 and s.attention_kind == "GQA"


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"model_type": "nonesuch"}, "unknown model_type"),
        ({"hidden_size": 64}, "model_type"),
        ({"model_type": "qwen3_moe", "num_experts": 10**9}, "beyond any real model"),
        ({"model_type": "llama", "hidden_size": -4}, "positive"),
        ({"model_type": "llama", "hidden_size": "big"}, "integer"),
        ({"model_type": "llama", "auto_map": {"AutoModel": "x.Y"}}, "remote code"),
    ],
)
def test_bad_configs_are_refused(cfg, needle):
    with pytest.raises(ArchLabError, match=needle):
        arch_spec(cfg)


def test_unknown_key():
    with pytest.raises(ArchLabError, match="unknown model"):
        arch_spec("gpt5")


@pytest.mark.parametrize(
    "key,k", [("deepseek-v3", 4), ("gemma3-27b", 7), ("llama4-maverick", 4), ("qwen3-next-80b-a3b", 5)]
)
def test_full_width_fewer_layers(key, k):
    from backend.arch.architecture import with_layers

    full, cut = arch_spec(key), arch_spec(with_layers(key, k))
    assert cut.num_layers == k and cut.hidden_size == full.hidden_size
    assert cut.layers == full.layers[:k]  # same per-layer pattern, cut
    assert with_layers(key, k)["_name_or_path"].endswith(f"[{k} of {full.num_layers} layers]")


@pytest.mark.parametrize("k", [0, 62, "3", True])
def test_fewer_layers_bad_input(k):
    from backend.arch.architecture import with_layers

    with pytest.raises(ArchLabError, match="layers must be"):
        with_layers("deepseek-v3", k)
