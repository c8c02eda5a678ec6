"""Numbers pinned to independent figures: official counts, hand-computed formulas."""

import pytest

from backend.arch import architecture, catalog, memory
from backend.arch.architecture import arch_spec

KEYS = catalog.keys()


def test_gpt2_exact():
    assert architecture.count_params("gpt2").total == 124_439_808  # OpenAI's released checkpoint


def test_deepseek_v3_exact():
    c = architecture.count_params("deepseek-v3")
    assert c.total == 671_026_404_352  # HF model without the MTP module (685B - 14B MTP)
    assert 37.4e9 < c.active < 37.6e9  # ≈37.5B: 37B as DeepSeek states


def test_qwen3_30b_a3b_exact():
    assert architecture.count_params("qwen3-30b-a3b").total == 30_532_122_624


def _check_stated(count: float, stated: str, note: str) -> None:
    value = catalog.parse_count(stated)
    within = abs(count - value) <= max(0.015 * value, catalog.count_precision(stated))
    if not within:
        # A larger gap must be explained in the catalog and still be small.
        assert note, f"{count:,} vs stated {stated}: no count_note explains the gap"
        assert abs(count - value) <= 0.05 * value, f"{count:,} vs stated {stated}: gap over 5 %"


@pytest.mark.parametrize("key", KEYS)
def test_total_matches_stated(key):
    e = catalog.get(key)
    c = architecture.count_params(key)
    _check_stated(c.total, e.stated_total, e.count_note)
    if abs(c.total - e.stated_total_value) > 0.015 * e.stated_total_value:
        assert e.count_note


@pytest.mark.parametrize("key", KEYS)
def test_active_matches_stated(key):
    e = catalog.get(key)
    c = architecture.count_params(key)
    _check_stated(c.active_excluding(e.active_excludes), e.stated_active, e.count_note)


@pytest.mark.parametrize("key", KEYS)
def test_formula_agrees_with_meta_count_exactly(key):
    meta, formula = architecture.count_params(key), architecture.formula_params(key)
    assert formula.components == meta.components
    assert formula.total == meta.total and formula.active == meta.active


@pytest.mark.parametrize("key", KEYS)
def test_components_sum_to_total(key):
    c = architecture.count_params(key)
    assert "other" not in c.components, "a parameter was not classified"
    assert sum(c.components.values()) == c.total
    assert 0 < c.active <= c.total


def test_active_is_total_for_dense_models():
    for key in ("gpt2", "olmo2-7b", "qwen3-4b", "gemma3-27b"):
        c = architecture.count_params(key)
        assert c.active == c.total


def test_active_formula_moe_by_hand():
    # Qwen3-30B-A3B: 48 layers x 128 experts x 3 x 2048 x 768 routed weights, 8 of 128 active.
    c = architecture.count_params("qwen3-30b-a3b")
    routed = 48 * 128 * 3 * 2048 * 768
    assert c.components["routed_experts"] == routed
    assert c.active == c.total - routed + routed * 8 // 128


# ---------------------------------------------------------------- KV cache by hand


def test_kv_mha_gpt2():
    # 12 layers x (K+V) x 12 heads x 64 dims x 2 bytes
    assert memory.kv_cache("gpt2", 1).per_token_bytes == 12 * 2 * 12 * 64 * 2
    assert memory.kv_cache("gpt2", 1024, batch=3).total_bytes == 12 * 2 * 12 * 64 * 2 * 1024 * 3


def test_kv_gqa_qwen3_30b():
    assert memory.kv_cache("qwen3-30b-a3b", 1).per_token_bytes == 48 * 2 * 4 * 128 * 2  # 96 KiB


def test_kv_mla_deepseek_latent_and_expanded():
    # latent: 61 layers x (512 latent + 64 rope key) x 2 bytes
    assert memory.kv_cache("deepseek-v3", 1).per_token_bytes == 61 * 576 * 2
    expanded = memory.kv_cache("deepseek-v3", 1, mla_layout="expanded").per_token_bytes
    assert expanded == 61 * 128 * (192 + 128) * 2


def test_kv_sliding_gemma3_capped_at_window():
    s = arch_spec("gemma3-27b")
    assert (s.count("full"), s.count("sliding"), s.window) == (10, 52, 1024)
    per_layer = 2 * 16 * 128 * 2
    kv = memory.kv_cache("gemma3-27b", 32768)
    assert kv.by_layer_type == {"full": 10 * 32768 * per_layer, "sliding": 52 * 1024 * per_layer}
    short = memory.kv_cache("gemma3-27b", 512)  # below the window every layer keeps every token
    assert short.total_bytes == 62 * 512 * per_layer


def test_kv_hybrid_linear_attention_fixed_state():
    kv1, kv2 = memory.kv_cache("qwen3-next-80b-a3b", 1000), memory.kv_cache("qwen3-next-80b-a3b", 2000)
    state = 36 * ((2 * 16 * 128 + 32 * 128) * 4 + 32 * 128 * 128) * 2
    assert kv1.by_layer_type["linear"] == kv2.by_layer_type["linear"] == state
    assert kv2.by_layer_type["full"] == 2 * kv1.by_layer_type["full"] == 2 * 12 * 1000 * 2 * 2 * 256 * 2


def test_weights_by_dtype():
    total = architecture.count_params("qwen3-0.6b").total
    t = memory.weights_table("qwen3-0.6b")
    assert t == {"fp32": 4 * total, "bf16": 2 * total, "fp16": 2 * total, "fp8": total, "int4": total // 2}


def test_device_plan_splits_over_gpus():
    plan = memory.device_plan("qwen3-30b-a3b", [40, 40])
    assert plan.fits and set(plan.bytes_per_device) == {"GPU 0", "GPU 1"}
    assert sum(plan.layers_per_device.values()) == 48
    # bf16 weights plus small buffers (rotary inverse frequencies)
    extra = sum(plan.bytes_per_device.values()) - 2 * architecture.count_params("qwen3-30b-a3b").total
    assert 0 <= extra < 4096
    small = memory.device_plan("deepseek-v3", [80] * 2)
    assert not small.fits and "disk" in small.bytes_per_device
