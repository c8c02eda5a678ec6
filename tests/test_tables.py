"""Tables hold backend numbers, checked here against hand formulas and pinned counts."""

import pytest

from backend.arch import catalog
from backend.arch.architecture import count_params
from backend.arch.memory import GiB
from backend.present import tables as T

KiB = 1024


def test_feature_matrix_marks_differing_rows():
    df = T.feature_matrix({"small": "gpt2", "xl": "gpt2-xl"})
    assert list(df.columns) == ["small", "xl", "differs"]
    assert df.loc["Decoder layers", "small"] == "12" and df.loc["Decoder layers", "xl"] == "48"
    assert df.loc["Decoder layers", "differs"]
    assert not df.loc["Norm type", "differs"] and df.loc["Norm type", "small"] == "LayerNorm (with bias)"
    assert not df.loc["Tied embeddings", "differs"]


def test_feature_matrix_reads_the_spec():
    df = T.feature_matrix({"ds": "deepseek-v3", "gemma": "gemma3-27b", "scout": "llama4-scout"})
    assert df.loc["MLA ranks (q / kv / rope)", "ds"] == "1536 / 512 / 64"
    assert df.loc["Experts routed / active / shared", "ds"] == "256 / 8 / 1"
    assert df.loc["MoE layers", "ds"] == "58 of 61"
    assert df.loc["Local-attention layers (window)", "gemma"] == "52 of 62 sliding (1,024 tokens)"
    assert df.loc["NoPE layers", "scout"] == "12 of 48"
    assert df.loc["Norm placement", "gemma"] == "pre+post"
    assert not df.loc["Norm type", "differs"]  # RMSNorm in all three
    assert not T.feature_matrix({"one": "gpt2"})["differs"].any()


def test_params_table_is_exact():
    df = T.params_table({"GPT-2": "gpt2", "Qwen3": "qwen3-30b-a3b"})
    assert df.loc["GPT-2", "Total"] == 124_439_808
    assert df.loc["Qwen3", "Total"] == 30_532_122_624
    assert df.loc["Qwen3", "Active per token"] == count_params("qwen3-30b-a3b").active
    assert df.loc["Qwen3", "Stated total"] == "30.5B"
    comps = ["Embeddings", "Attention", "Dense MLP", "Routed experts", "Shared experts", "Router", "Norms", "LM head"]
    assert (df[comps].sum(axis=1) == df["Total"]).all()
    custom = T.params_table({"mine": catalog.raw_config("gpt2")})
    assert custom.loc["mine", "Stated total"] == T.NONE and custom.loc["mine", "Total"] == 124_439_808


def test_components_long_drops_zeros_and_sums():
    long = T.components_long({"GPT-2": "gpt2"})
    assert long["params"].sum() == 124_439_808 and (long["params"] > 0).all()
    assert "routed_experts" not in set(long["component"])


def test_weights_by_dtype():
    df = T.weights_by_dtype({"GPT-2": "gpt2"})
    assert df.loc["GPT-2", "bf16 (GiB)"] == pytest.approx(124_439_808 * 2 / GiB)
    assert df.loc["GPT-2", "int4 (GiB)"] == pytest.approx(124_439_808 * 0.5 / GiB)


def test_kv_table_against_hand_formulas():
    df = T.kv_table({"GPT-2": "gpt2", "Gemma": "gemma3-27b", "DS": "deepseek-v3"}, context=32768)
    # GPT-2: 12 layers × 12 heads × 64 dims × (K+V) × 2 bytes per token
    assert df.loc["GPT-2", "Per token, no window (KiB)"] == 12 * 12 * 64 * 2 * 2 / KiB
    assert not df.loc["GPT-2", "Within max context"] and df.loc["Gemma", "Within max context"]
    # Gemma 3: 52 sliding layers keep only 1024 tokens, 10 full layers keep all
    assert df.loc["Gemma", "Sliding window layers (GiB)"] == 52 * 16 * 128 * 2 * 2 * 1024 / GiB
    assert df.loc["Gemma", "Full attention layers (GiB)"] == 10 * 16 * 128 * 2 * 2 * 32768 / GiB
    # DeepSeek V3 MLA latent: 61 layers × (512 + 64) × 2 bytes
    assert df.loc["DS", "Per token, no window (KiB)"] == 61 * 576 * 2 / KiB
    assert df.loc["DS", "Cache layout"] == "MLA latent"
    exp = T.kv_table({"DS": "deepseek-v3"}, context=1024, mla_layout="expanded")
    assert exp.loc["DS", "Per token, no window (KiB)"] == 61 * 128 * (192 + 128) * 2 / KiB
    assert "Linear attention layers (GiB)" not in df.columns


def test_kv_curve_stops_at_max_context_and_grows():
    curve = T.kv_curve({"GPT-2": "gpt2", "Qwen3": "qwen3-30b-a3b"})
    g = curve[curve["model"] == "GPT-2"]
    assert g["context"].max() == 1024
    q = curve[curve["model"] == "Qwen3"]
    assert q["context"].max() == 40960
    assert q["kv_gib"].is_monotonic_increasing
    assert T.context_grid(256, 1024, 1) == [256, 512, 1024]


def test_device_table():
    df = T.device_table({"GPT-2": "gpt2", "DS": "deepseek-v3"}, [80, 80])
    g = df[df["model"] == "GPT-2"]
    assert list(g["device"]) == ["GPU 0"] and g["layers"].sum() == 12 and g["fits_on_gpus"].all()
    ds = df[df["model"] == "DS"]
    assert not ds["fits_on_gpus"].any() and ds["layers"].sum() == 61
    assert "does not fit (disk)" in set(ds["device"])
    assert (ds[ds["device"].str.startswith("GPU")]["weights_gib"] <= 80).all()
    assert ds["weights_gib"].sum() == pytest.approx(671_026_404_352 * 2 / GiB, rel=1e-3)


def test_default_gpus_without_cuda():
    import torch

    if not torch.cuda.is_available():
        assert T.default_gpus() == (2, 80.0)
