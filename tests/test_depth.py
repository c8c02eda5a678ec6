"""Full width, fewer layers: the shallower view shares weights and computes what a real (k-1)-layer
model computes; the extrapolation arithmetic."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.arch import architecture
from backend.arch.errors import ArchLabError
from backend.live import depth
from backend.live.miniature import miniature_config_dict


def _model(src):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(architecture.load_config(src)).eval()


@pytest.mark.parametrize("key", ["gpt2", "deepseek-v3", "gpt-oss-20b", "gemma3-27b"])
def test_shallower_view_shares_weights_and_equals_a_real_shallower_model(key):
    src = architecture.with_layers(miniature_config_dict(key, "small") if key != "gpt2" else "gpt2", 3)
    model = _model(src)
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.inference_mode():
        before = model(ids).logits
    view = depth.shallower(model, 2)
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert all(p.data_ptr() in ptrs for p in view.parameters())  # no weight copied
    real = _model(architecture.with_layers(src, 2))
    state = model.state_dict()
    real.load_state_dict({k: state[k] for k in real.state_dict()})
    with torch.inference_mode():
        assert torch.equal(view(ids).logits, real(ids).logits)
        assert not torch.equal(view(ids).logits, before)  # it really skips layer 3
        assert torch.equal(model(ids).logits, before)  # and leaves the model as it was


def test_estimate_times_both_depths_and_extrapolates():
    model = _model(architecture.with_layers("gpt2", 3))
    e = depth.estimate(model, 12)
    assert e.layers == 3 and e.full_layers == 12 and not e.graph
    assert e.step_s > 0 and e.shallower_step_s > 0
    if e.measurable:
        assert e.full_step_s == pytest.approx(e.step_s + 9 * (e.step_s - e.shallower_step_s))
        assert e.full_tok_s == pytest.approx(1 / e.full_step_s) and "assumed" in e.note
    with pytest.raises(ArchLabError, match="less than"):
        depth.estimate(model, 2)
    with pytest.raises(ArchLabError, match="at least 2"):
        depth.estimate(_model(architecture.with_layers("gpt2", 1)), 12)


def test_extrapolation_arithmetic():
    # 5 ms at 4 layers, 6.25 ms at 5: 1.25 ms per layer; 61 layers: 5 + 57 x 1.25 = 76.25 ms
    assert depth.two_depth_tok_s(4, 200.0, 5, 160.0, 61) == pytest.approx(1000 / 76.25)
    e = depth.DepthEstimate(5, 61, 0.00625, 0.005, True)
    assert e.per_layer_s == pytest.approx(0.00125) and e.full_tok_s == pytest.approx(1000 / 76.25)
    noisy = depth.DepthEstimate(5, 61, 0.005, 0.0051, False)
    assert not noisy.measurable and math.isnan(noisy.full_tok_s) and "noise" in noisy.note
    with pytest.raises(ArchLabError):
        depth.two_depth_tok_s(4, 200.0, 4, 160.0, 61)


@pytest.mark.gpu
def test_fewer_layers_on_gpu_through_the_playground_path():
    """The Playground's flow on a GPU: a full-width 3-layer Qwen3-30B-A3B streams on the fast path, then
    its per-layer cost is timed as CUDA graph replays and extrapolated."""
    from backend.live import runtime
    from backend.live.generation import GenerationSettings
    from backend.present import playground

    ((_, src, request),) = playground.requests_for([("qwen3-30b-a3b", "qwen3-30b-a3b")], "layers", "cuda", layers=3)
    slot = playground.SlotModel("qwen3-30b-a3b", "Qwen3", "#000", True, playground.full_depth(src))
    live = playground.LiveRun.start([slot], [request], "Hello", GenerationSettings(max_new_tokens=16))
    live.run.join(300)
    assert live.run.stats(0)["status"] == "finished" and live.run.stats(0)["fast_path"]
    playground.measure_depth(live)
    e = live.depth[0]
    assert isinstance(e, depth.DepthEstimate), e
    assert e.graph and e.measurable and e.layers == 3 and e.full_layers == 48
    assert 0 < e.full_tok_s < 1 / e.step_s
    runtime.release(request)
