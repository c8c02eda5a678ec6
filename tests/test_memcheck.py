"""Predicted vs measured memory of loaded models."""

import pytest
import torch

from backend.live import memcheck, runtime
from backend.live.generation import GenerationRun, GenerationSettings


@pytest.mark.parametrize("key", ["deepseek-v3", "gemma3-27b", "gpt2"])
def test_weights_prediction_equals_tensors(key):
    lm = runtime.load(runtime.ModelRequest(key, size="tiny"))
    rows = memcheck.memory_check(lm)
    assert rows[0]["predicted_bytes"] == rows[0]["measured_bytes"] > 0


def test_static_cache_bytes_by_hand():
    # gpt2: 12 layers x (K+V) x 768 x 2 bytes per token, full length in every layer
    assert memcheck.static_cache_bytes("gpt2", 100, "bf16") == 12 * 2 * 768 * 2 * 100
    # Gemma 3: sliding layers keep every position too in the static cache
    assert memcheck.static_cache_bytes("gemma3-27b", 10, "bf16") == 62 * 2 * 16 * 128 * 2 * 10


@pytest.mark.gpu
def test_gpu_static_cache_measured_matches_prediction():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    req = runtime.ModelRequest("qwen3-30b-a3b", size="small", device="cuda")
    run = GenerationRun([req], "hello there", GenerationSettings(max_new_tokens=8)).start()
    run.join(120)
    assert run.stats(0)["fast_path"]
    rows = memcheck.memory_check(runtime.load(req))
    kv = next(r for r in rows if r["what"].startswith("static KV"))
    assert abs(kv["measured_bytes"] - kv["predicted_bytes"]) <= 0.03 * kv["predicted_bytes"]


def test_placement_check_finds_parameters_off_their_planned_device():
    lm = runtime.load(runtime.ModelRequest("deepseek-v3", size="tiny"))
    ok = memcheck.placement_check(lm.model, lm.device_map)
    assert ok["misplaced_count"] == 0 and ok["planned_bytes"] == ok["actual_bytes"]
    # a map that puts layer 1 elsewhere: every parameter of layer 1 (and of no other layer) is reported
    wrong = memcheck.placement_check(lm.model, {"": "cpu", "model.layers.1": "cuda:1"})
    layer1 = [n for n, _ in lm.model.named_parameters() if n.startswith("model.layers.1.")]
    assert wrong["misplaced_count"] == len(layer1) > 0
    assert all(m.startswith("model.layers.1.") for m in wrong["misplaced"])
    assert wrong["planned_bytes"]["cuda:1"] == sum(
        p.numel() * p.element_size() for n, p in lm.model.named_parameters() if n.startswith("model.layers.1.")
    )
    rows = memcheck.placement_rows(lm)
    assert rows == [
        {
            "device": "cpu",
            "planned_bytes": ok["actual_bytes"]["cpu"],
            "actual_bytes": ok["actual_bytes"]["cpu"],
            "misplaced": 0,
        }
    ]
