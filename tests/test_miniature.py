"""Miniatures keep the architecture of their full-size model and run."""

from collections import Counter

import pytest
import torch

from backend.arch import catalog
from backend.arch.architecture import arch_spec
from backend.arch.errors import ArchLabError
from backend.live.miniature import (
    MINIATURE_SIZES,
    miniature_config_dict,
    miniature_spec,
)
from backend.live.tokenizer import load_offline

KEYS = catalog.keys()


def _tokens(spec):
    return [(l.attention, l.rope, l.mlp) for l in spec.layers]


def _tail(spec):
    """Layers after leading dense layers of a MoE model (DeepSeek's first_k_dense)."""
    t = _tokens(spec)
    lead = 0
    if spec.moe is not None:
        while t[lead][2] == "dense":
            lead += 1
        if any(x[2] == "dense" for x in t[lead:]):  # interleaved dense/MoE, not a dense lead
            lead = 0
    return lead, t[lead:]


@pytest.mark.parametrize("key", KEYS)
def test_miniature_keeps_architecture(key):
    full, mini = arch_spec(key), miniature_spec(key, "small")
    assert mini.hidden_size == MINIATURE_SIZES["small"]["hidden"] and mini.vocab_size == len(load_offline())
    for f in (
        "attention_kind",
        "qk_norm",
        "norm_placement",
        "norm_type",
        "position",
        "output_gate",
        "attention_sinks",
        "tied_embeddings",
        "gated_mlp",
    ):
        assert getattr(mini, f) == getattr(full, f), f
    assert mini.rope_fraction == pytest.approx(full.rope_fraction, rel=0.02)
    assert (mini.mla is None) == (full.mla is None) and (mini.linear is None) == (full.linear is None)
    assert set(_tokens(mini)) == set(_tokens(full)), "every kind of layer survives"
    assert (mini.nope_layers > 0) == (full.nope_layers > 0)
    assert (mini.window is None) == (full.window is None)
    if full.window:
        assert mini.window <= 64
    # the same mix of layer kinds, period by period (proportions exact when the full stack is whole periods)
    flead, ftail = _tail(full)
    mlead, mtail = _tail(mini)
    assert mlead == min(flead, 1)
    fc, mc = Counter(ftail), Counter(mtail)
    for k in fc:
        assert mc[k] / len(mtail) == pytest.approx(fc[k] / len(ftail), abs=0.05), k
    if full.moe:
        f, m = full.moe, mini.moe
        assert (m.num_shared > 0) == (f.num_shared > 0) and (m.top_k > 1) == (f.top_k > 1)
        assert m.scoring == f.scoring and m.bias_corrected == f.bias_corrected
        assert m.num_experts <= MINIATURE_SIZES["small"]["experts"] and m.top_k < m.num_experts
        if f.n_group > 1:
            assert 1 < m.n_group and m.topk_group < m.n_group and m.num_experts % m.n_group == 0
            assert m.top_k <= m.topk_group * m.num_experts // m.n_group


def test_known_patterns():
    """Hand-checked: one period of each pattern, leading dense layers reduced to one."""
    assert miniature_spec("gemma3-27b").layer_pattern == "S S S S S F"
    assert miniature_spec("llama4-scout").layer_pattern == "C C C Fø"
    m = miniature_spec("llama4-maverick")
    assert m.layer_pattern == "C C C Fø" and m.moe.layers == (1, 3)
    d = miniature_spec("deepseek-v3")
    assert d.layers[0].mlp == "dense" and d.moe.layers == (1, 2, 3) and d.moe.n_group > 1
    assert miniature_spec("qwen3-next-80b-a3b").layer_pattern == "L L L F"
    assert miniature_spec("gpt-oss-20b").layer_pattern == "S F ×2"


def test_sizes_and_layer_lists_consistent():
    for size in MINIATURE_SIZES:
        d = miniature_config_dict("gemma3-27b", size)
        assert len(d["layer_types"]) == d["num_hidden_layers"]
    d = miniature_config_dict("smollm3-3b", "medium")
    assert len(d["no_rope_layers"]) == d["num_hidden_layers"] == 8
    with pytest.raises(ArchLabError):
        miniature_config_dict("gpt2", "huge")


def test_custom_config_dict():
    cfg = {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "vocab_size": 32000,
        "head_dim": 64,
    }
    assert miniature_spec(cfg).attention_kind == "GQA"


@pytest.mark.parametrize("key", KEYS)
def test_miniature_builds_fast_and_generates(key):

    from backend.live.runtime import ModelRequest, load, release

    req = ModelRequest(key, size="tiny")
    lm = load(req)
    ids = lm.tokenizer("def f(x):", return_tensors="pt").input_ids
    with torch.inference_mode():
        out = lm.model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4
    assert torch.isfinite(lm.model(ids).logits).all()
    release(req)
