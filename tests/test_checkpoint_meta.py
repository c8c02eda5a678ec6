"""Checkpoint memory from metadata: small checkpoints written here in each format (bf16, fp8 with block scales,
GPTQ, AWQ, MXFP4, GGUF), sizes checked against the bytes written and the files' real sizes, no weights read."""

import builtins
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.arch import checkpoint_meta as cm
from backend.arch.errors import ArchLabError
from backend.present import estimates

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "torch_dtype": "bfloat16",
}


def header_bytes(path) -> int:
    """8 + the header length, read independently of the code under test."""
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def files(folder, suffix=".safetensors"):
    return sorted(p for p in folder.iterdir() if p.name.endswith(suffix))


def write(folder, tensors: dict, config: dict | None = None, name="model.safetensors"):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / name))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def check_sizes(ck, folder, suffix=".safetensors"):
    real = sum(os.path.getsize(p) for p in files(folder, suffix))
    assert ck.file_bytes == real
    if suffix == ".safetensors":
        assert ck.tensor_bytes + sum(header_bytes(p) for p in files(folder, suffix)) == real


def test_bf16_checkpoint_and_kv_from_config(tmp_path):
    t = {
        "model.embed_tokens.weight": torch.zeros(256, 64, dtype=torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": torch.zeros(128, 64, dtype=torch.bfloat16),
        "model.norm.weight": torch.ones(64, dtype=torch.float32),
    }
    write(tmp_path, t, TINY)
    ck = cm.read_checkpoint(str(tmp_path))
    assert ck.format == "safetensors" and len(ck.tensors) == 4
    assert ck.tensor_bytes == (256 * 64 + 64 * 64 + 128 * 64) * 2 + 64 * 4
    assert ck.params == 256 * 64 + 64 * 64 + 128 * 64 + 64
    by = ck.by("kind")
    assert by["bf16 weights"] == (3, (256 * 64 + 64 * 64 + 128 * 64) * 2, 256 * 64 + 64 * 64 + 128 * 64)
    assert by["fp32 weights"] == (1, 256, 64)
    comps = ck.by("component")
    assert comps["embeddings"][1] == 256 * 64 * 2 and comps["attention"][1] == 64 * 64 * 2
    assert comps["dense_mlp"][1] == 128 * 64 * 2 and comps["norms"][1] == 256
    check_sizes(ck, tmp_path)
    assert ck.kv_dtype == "bf16" and "bfloat16" in ck.kv_dtype_source
    kv = cm.checkpoint_kv(ck, 1000)
    # 2 layers × 2 KV heads × (16 + 16) × 2 bytes
    assert kv.per_token_bytes == 2 * 2 * 32 * 2 and kv.total_bytes == 1000 * 2 * 2 * 32 * 2


def test_fp8_with_block_scales_sharded_and_kv_from_quantization_config(tmp_path):
    w = torch.zeros(256, 384).to(torch.float8_e4m3fn)
    cfg = dict(
        TINY,
        quantization_config={
            "quant_method": "fp8",
            "weight_block_size": [128, 128],
            "kv_cache_scheme": {"num_bits": 8, "type": "float", "strategy": "tensor"},
        },
    )
    write(
        tmp_path,
        {
            "model.layers.0.mlp.experts.0.up_proj.weight": w,
            "model.layers.0.mlp.experts.0.up_proj.weight_scale_inv": torch.ones(2, 3),
        },
        cfg,
        "model-00001-of-00002.safetensors",
    )
    write(
        tmp_path,
        {"lm_head.weight": torch.zeros(256, 64, dtype=torch.bfloat16)},
        None,
        "model-00002-of-00002.safetensors",
    )
    index = {
        "weight_map": {
            "lm_head.weight": "model-00002-of-00002.safetensors",
            "model.layers.0.mlp.experts.0.up_proj.weight": "model-00001-of-00002.safetensors",
        }
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    ck = cm.read_checkpoint(str(tmp_path))
    assert len(ck.files) == 2 and ck.quant_method == "fp8"
    kinds = ck.by("kind")
    assert kinds["fp8 weights"] == (1, 256 * 384, 256 * 384)
    assert kinds["fp8 scales"] == (1, 2 * 3 * 4, 0)
    assert ck.tensor_bytes == 256 * 384 + 24 + 256 * 64 * 2
    assert ck.by("component")["routed_experts"][1] == 256 * 384 + 24
    check_sizes(ck, tmp_path)
    assert ck.kv_dtype == "fp8" and "kv_cache_scheme" in ck.kv_dtype_source
    assert cm.checkpoint_kv(ck, 10).per_token_bytes == 2 * 2 * 32 * 1
    index["weight_map"]["x"] = "model-00003-of-00003.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ArchLabError, match="missing 1 shard"):
        cm.read_checkpoint(str(tmp_path))


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_packed_int4(tmp_path, method):
    inp, out, group = 64, 128, 32
    base = "model.layers.0.self_attn.q_proj"
    if method == "gptq":
        t = {
            f"{base}.qweight": torch.zeros(inp // 8, out, dtype=torch.int32),
            f"{base}.qzeros": torch.zeros(inp // group, out // 8, dtype=torch.int32),
            f"{base}.scales": torch.zeros(inp // group, out, dtype=torch.float16),
            f"{base}.g_idx": torch.zeros(inp, dtype=torch.int32),
        }
        side = (inp // group) * (out // 8) * 4 + (inp // group) * out * 2 + inp * 4
    else:
        t = {
            f"{base}.qweight": torch.zeros(inp, out // 8, dtype=torch.int32),
            f"{base}.qzeros": torch.zeros(inp // group, out // 8, dtype=torch.int32),
            f"{base}.scales": torch.zeros(inp // group, out, dtype=torch.float16),
        }
        side = (inp // group) * (out // 8) * 4 + (inp // group) * out * 2
    write(tmp_path, t, dict(TINY, quantization_config={"quant_method": method, "bits": 4, "group_size": group}))
    ck = cm.read_checkpoint(str(tmp_path))
    kinds = ck.by("kind")
    assert kinds["int4 packed (GPTQ/AWQ)"] == (1, inp * out // 2, inp * out)  # 4 bits a weight
    assert kinds["int4 scales, zeros, g_idx"][1:] == (side, 0)
    assert ck.params == inp * out and ck.bits_per_param == pytest.approx(8 * (inp * out / 2 + side) / (inp * out))
    check_sizes(ck, tmp_path)
    assert ck.kv_dtype == "bf16"  # nothing about the KV cache in this quantization_config


def test_mxfp4_experts(tmp_path):
    E, I, H = 4, 16, 64
    t = {
        "model.layers.0.mlp.experts.gate_up_proj_blocks": torch.zeros(E, 2 * I, H // 32, 16, dtype=torch.uint8),
        "model.layers.0.mlp.experts.gate_up_proj_scales": torch.zeros(E, 2 * I, H // 32, dtype=torch.uint8),
        "model.layers.0.mlp.experts.gate_up_proj_bias": torch.zeros(E, 2 * I, dtype=torch.bfloat16),
        "model.layers.0.mlp.router.weight": torch.zeros(E, H, dtype=torch.bfloat16),
    }
    write(tmp_path, t, {"model_type": "gpt_oss", "quantization_config": {"quant_method": "mxfp4"}})
    ck = cm.read_checkpoint(str(tmp_path))
    kinds = ck.by("kind")
    assert kinds["MXFP4 blocks"] == (1, E * 2 * I * H // 2, E * 2 * I * H)  # two 4-bit values a byte
    assert kinds["MXFP4 scales"] == (1, E * 2 * I * H // 32, 0)  # one exponent per 32 values
    assert ck.by("component")["router"][1] == E * H * 2
    assert ck.quant_method == "mxfp4"
    check_sizes(ck, tmp_path)


def test_gguf(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    a = np.zeros((16, 32), dtype=np.float32)
    b = np.zeros(64, dtype=np.float16)
    q = gguf.quants.quantize(
        np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    w.add_tensor("token_embd.weight", a)
    w.add_tensor("output_norm.weight", b)
    w.add_tensor("blk.0.attn_q.weight", q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ck = cm.read_checkpoint(str(path))
    assert ck.format == "gguf" and ck.file_bytes == os.path.getsize(path)
    assert ck.tensor_bytes == a.nbytes + b.nbytes + q.nbytes == 16 * 32 * 4 + 64 * 2 + (32 * 64 // 32) * 34
    assert ck.params == 16 * 32 + 64 + 32 * 64
    kinds = ck.by("kind")
    assert kinds["Q8_0 weights"] == (1, 2176, 2048) and kinds["F32 weights"][1] == 2048
    assert ck.by("component") == {"embeddings": (1, 2048, 512), "attention": (1, 2176, 2048), "norms": (1, 128, 64)}
    assert 0 < ck.file_bytes - ck.tensor_bytes < 4096  # header, tensor table and alignment
    assert ck.kv_dtype is None
    with pytest.raises(ArchLabError, match="no config.json"):
        cm.checkpoint_kv(ck, 100)


def test_reads_headers_only(tmp_path, monkeypatch):
    write(tmp_path, {"w": torch.zeros(1024, 1024, dtype=torch.bfloat16)}, TINY)
    read = []
    real_open = builtins.open

    def counting_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        if str(path).endswith(".safetensors"):
            orig = f.read
            f.read = lambda n=-1: (lambda data: (read.append(len(data)), data)[1])(orig(n))
        return f

    monkeypatch.setattr(cm, "open", counting_open, raising=False)
    ck = cm.read_checkpoint(str(tmp_path))
    assert ck.tensor_bytes == 2 * 1024 * 1024
    assert sum(read) == header_bytes(tmp_path / "model.safetensors") < 1000


def test_kv_dtype_from_configs():
    assert (
        cm.kv_dtype_of({"quantization_config": {"quant_method": "modelopt", "kv_cache_quant_algo": "FP8"}})[0] == "fp8"
    )
    assert cm.kv_dtype_of({"quantization_config": {"kv_cache_scheme": {"num_bits": 8, "type": "int"}}})[0] == "int8"
    assert cm.kv_dtype_of({"quantization_config": {"kv_cache_dtype": "fp8_e5m2"}})[0] == "fp8"
    assert cm.kv_dtype_of({"torch_dtype": "float16"})[0] == "fp16"
    assert cm.kv_dtype_of({})[0] == "bf16"
    with pytest.raises(ArchLabError, match="kv_cache_scheme"):
        cm.kv_dtype_of({"quantization_config": {"kv_cache_scheme": {"num_bits": 3, "type": "float"}}})


def test_bad_checkpoints_give_one_line(tmp_path):
    with pytest.raises(ArchLabError, match="neither a file or folder"):
        cm.read_checkpoint(str(tmp_path / "nope"))
    with pytest.raises(ArchLabError, match="holds no .safetensors"):
        cm.read_checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(ArchLabError, match="not a valid safetensors") as e:
        cm.read_checkpoint(str(tmp_path))
    assert "\n" not in str(e.value)
    hdr = json.dumps({"w": {"dtype": "BF16", "shape": [4, 4], "data_offsets": [0, 64]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(hdr).to_bytes(8, "little") + hdr + b"\0" * 32)
    with pytest.raises(ArchLabError, match="does not match its shape or the file"):
        cm.read_checkpoint(str(tmp_path))
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(ArchLabError, match="not a valid GGUF"):
        cm.read_checkpoint(str(tmp_path / "bad.gguf"))


def test_summary_tables(tmp_path):
    write(
        tmp_path,
        {"model.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64, dtype=torch.bfloat16)},
        dict(TINY, quantization_config={"kv_cache_quant_algo": "FP8"}),
    )
    info = estimates.checkpoint_summary(str(tmp_path), context=100)
    assert info["tensor_bytes"] == 64 * 64 * 2 and info["kv_dtype"] == "fp8"
    assert info["kv_total"] == 100 * 2 * 2 * 32 * 1
    assert list(info["kinds"].index) == ["bf16 weights"] and info["config_params"] > 0
    assert "Σ bytes of their byte ranges" in info["working"] and "8,192 B" in info["working"]
