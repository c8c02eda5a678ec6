"""Routing capture agrees with the routers' own math; statistics pinned on hand-made traces."""

import numpy as np
import pytest
import torch

from backend.arch import catalog
from backend.arch.architecture import arch_spec
from backend.arch.errors import ArchLabError
from backend.live.routing import (
    RoutingRecorder,
    RoutingTrace,
    StepRouting,
    balance,
    balance_over_time,
    coselection,
    expert_load,
    find_routers,
    shared_share,
    token_layer_experts,
)
from backend.live.runtime import ModelRequest, load, release

MOE_KEYS = [k for k in catalog.keys() if arch_spec(k).moe is not None]


@torch.no_grad()
def _reference(router, x, spec, cfg):
    """Recompute the choice from the router's weight, independently of its forward()."""
    moe = spec.moe
    x = x.reshape(-1, x.shape[-1]).float()
    logits = x @ router.weight.float().T + (router.bias.float() if getattr(router, "bias", None) is not None else 0)
    k = moe.top_k
    if moe.bias_corrected:  # DeepSeek V3: sigmoid, choice-only bias, group-limited
        scores = logits.sigmoid()
        choice = scores + router.e_score_correction_bias.float()
        g = choice.view(-1, moe.n_group, moe.num_experts // moe.n_group)
        group_score = g.topk(2, dim=-1).values.sum(-1)
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(moe.topk_group, dim=-1).indices, 1)
        mask = keep.repeat_interleave(moe.num_experts // moe.n_group, dim=1)
        idx = choice.masked_fill(mask == 0, 0.0).topk(k, dim=-1).indices
        w = scores.gather(1, idx)
        if cfg.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return idx, w * cfg.routed_scaling_factor
    if moe.scoring == "sigmoid":  # Llama 4: top-k of logits, sigmoid of the chosen
        top = logits.topk(k, dim=-1)
        return top.indices, top.values.sigmoid()
    probs = logits.softmax(-1)
    idx = probs.topk(k, dim=-1).indices
    w = probs.gather(1, idx)
    if getattr(cfg, "norm_topk_prob", True):
        w = w / w.sum(-1, keepdim=True)
    return idx, w


def _sorted(idx, w):
    o = np.argsort(idx, axis=1)
    return np.take_along_axis(idx, o, 1), np.take_along_axis(w, o, 1)


@pytest.mark.parametrize("key", MOE_KEYS)
def test_capture_agrees_with_router_math(key):
    req = ModelRequest(key, size="tiny")
    lm = load(req)
    try:
        spec, model = lm.spec, lm.model
        cfg = model.config
        routers = find_routers(model)
        assert sorted(routers) == list(spec.moe.layers)
        torch.manual_seed(1)
        for r in routers.values():  # make the choice-only bias matter
            if hasattr(r, "e_score_correction_bias"):
                with torch.no_grad():
                    r.e_score_correction_bias.copy_(torch.randn_like(r.e_score_correction_bias) * 0.5)
        inputs = {}
        hooks = [
            r.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].detach().clone()))
            for i, r in routers.items()
        ]
        ids = torch.randint(0, lm.spec.vocab_size, (1, 9))
        try:
            with torch.inference_mode(), RoutingRecorder(model, spec) as rec:
                model(ids)
                assert all(isinstance(v[0], torch.Tensor) for v in rec._pending.values())  # still on device
                step = rec.collect(0, ids[0].tolist())
        finally:
            for h in hooks:
                h.remove()
        assert sorted(step.layers) == list(spec.moe.layers) and step.token_ids == ids[0].tolist()
        differs = False
        for layer, (idx, w) in step.layers.items():
            assert idx.shape == w.shape == (9, spec.moe.top_k) and idx.dtype == np.int64
            assert ((0 <= idx) & (idx < spec.moe.num_experts)).all()
            ridx, rw = _reference(routers[layer], inputs[layer], spec, cfg)
            a, b = _sorted(idx, w), _sorted(ridx.numpy(), rw.numpy())
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)
            if spec.moe.bias_corrected:  # the recorded choice is not the plain top-k of the scores
                x = inputs[layer].reshape(-1, inputs[layer].shape[-1]).float()
                with torch.no_grad():
                    plain = (x @ routers[layer].weight.float().T).topk(spec.moe.top_k).indices
                differs |= not np.array_equal(np.sort(plain.numpy(), 1), a[0])
        if spec.moe.bias_corrected:
            assert differs, "bias correction / group limit never changed a choice"
    finally:
        release(req)


def test_recorder_refuses_dense_models():
    with pytest.raises(ArchLabError):
        RoutingRecorder(load(ModelRequest("qwen3-4b", size="tiny")).model, arch_spec("qwen3-4b"))


def _trace():
    t = RoutingTrace([1, 3], num_experts=4, top_k=2)
    t.add(
        StepRouting(
            0,
            [5, 6],
            {
                1: (np.array([[0, 1], [0, 2]]), np.full((2, 2), 0.5)),
                3: (np.array([[3, 2], [1, 0]]), np.full((2, 2), 0.5)),
            },
        )
    )
    t.add(
        StepRouting(
            1, [7], {1: (np.array([[0, 3]]), np.array([[0.7, 0.3]])), 3: (np.array([[2, 3]]), np.array([[0.6, 0.4]]))}
        )
    )
    return t


def test_expert_load_streaming_equals_after_the_fact():
    t = _trace()
    load_ = expert_load(t)
    np.testing.assert_array_equal(load_, [[3, 1, 1, 1], [1, 1, 2, 2]])
    np.testing.assert_array_equal(expert_load(t, slice(0, 1)) + expert_load(t, slice(1, 2)), load_)


def test_balance_formulas():
    u = balance(np.array([2, 2, 2, 2]))
    assert u == pytest.approx({"cv": 0.0, "max_over_mean": 1.0, "entropy": 1.0})
    one = balance(np.array([0, 0, 8, 0]))
    assert one["entropy"] == pytest.approx(0.0) and one["max_over_mean"] == pytest.approx(4.0)
    assert one["cv"] == pytest.approx(np.sqrt(3))
    rows = balance(np.array([[2, 2, 2, 2], [0, 0, 8, 0]]))
    np.testing.assert_allclose(rows["entropy"], [1.0, 0.0], atol=1e-12)


def test_balance_over_time_and_tables():
    t = _trace()
    df = balance_over_time(t)
    assert list(df.columns) == ["step", "layer", "cv", "max_over_mean", "entropy"] and len(df) == 4
    last = df[df.step == 1].set_index("layer")
    assert last.loc[1, "cv"] == pytest.approx(balance(expert_load(t)[0])["cv"])
    tle = token_layer_experts(t)
    assert list(tle.columns) == ["position", "token_id", "layer", "rank", "expert", "weight"]
    assert len(tle) == 3 * 2 * 2 and tle.position.max() == 2
    row = tle[(tle.position == 2) & (tle.layer == 1) & (tle["rank"] == 0)].iloc[0]
    assert row.token_id == 7 and row.expert == 0 and row.weight == pytest.approx(0.7)


def test_coselection():
    co = coselection(_trace(), 1)
    assert (co == co.T).all()
    np.testing.assert_array_equal(np.diag(co), expert_load(_trace())[0])
    assert co[0, 1] == 1 and co[0, 2] == 1 and co[0, 3] == 1 and co[1, 2] == 0
    with pytest.raises(ArchLabError):
        coselection(_trace(), 0)


def test_shared_share():
    assert shared_share(arch_spec("deepseek-v3")) == pytest.approx(2048 / (2048 + 8 * 2048))
    assert shared_share(arch_spec("qwen3-30b-a3b")) == 0.0
    assert shared_share(arch_spec("qwen3-4b")) == 0.0
    assert shared_share(arch_spec("llama4-scout")) == pytest.approx(8192 / (8192 + 8192))
