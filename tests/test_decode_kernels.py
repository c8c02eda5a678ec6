"""Fused decode kernels: the same numbers as transformers' modules, and the same greedy tokens in the graph."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from backend.arch import architecture
from backend.live import decode_kernels
from backend.live.fastdecode import GraphDecoder, pack_step, sample
from backend.live.miniature import miniature_config_dict
from backend.live.routers import router_modules

ROOT = Path(__file__).resolve().parent.parent
MOE = ["qwen3-30b-a3b", "gpt-oss-20b", "deepseek-v3"]


def _tiny(key, dtype=torch.float32, device="cpu"):
    cfg = architecture.load_config(miniature_config_dict(key, "tiny"))
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval().to(device)


def test_install_is_a_no_op_without_cuda():
    model = _tiny("qwen3-30b-a3b")
    done = decode_kernels.install(model)
    assert (done.experts, done.norms, done.rope_modules) == (0, 0, [])
    assert not any("_archlab_experts" in m.__dict__ or "forward" in m.__dict__ for m in model.modules())


def test_acquire_release_counts_users():
    model = _tiny("qwen3-30b-a3b")
    a = decode_kernels.acquire(model)
    assert decode_kernels.acquire(model) is a  # a second decoder on the model shares the install
    decode_kernels.release(model)
    assert "_archlab_kernels" in model.__dict__
    decode_kernels.release(model)
    assert "_archlab_kernels" not in model.__dict__


_INTERPRETED = r"""
import torch
from transformers.integrations.moe import batched_mm_experts_forward
from backend.live import decode_kernels as dk
from tests.test_decode_kernels import _tiny
errors = []
for key in ("qwen3-30b-a3b", "gpt-oss-20b", "deepseek-v3"):
    m = _tiny(key)
    ex = next(x for x in m.modules() if dk._is_fused_experts(x))
    with torch.no_grad():
        for p in ex.parameters():
            p.normal_(0, 0.1)
    e = (ex.gate_up_proj if ex.has_gate else ex.up_proj).shape[0]
    h = ex.down_proj.shape[2] if ex.is_transposed else ex.down_proj.shape[1]
    g = torch.Generator().manual_seed(1)
    for t in (1, 3):
        x = torch.randn(t, h, generator=g)
        idx = torch.stack([torch.randperm(e, generator=g)[:4] for _ in range(t)])
        rw = torch.softmax(torch.randn(t, 4, generator=g), -1)
        ref = batched_mm_experts_forward(ex, x, idx, rw)
        forms = ["silu", "gate"] if ex.has_gate and ex.is_concatenated else ["gate"]
        for form in forms:
            out = dk.run_experts(ex, dk.ExpertsPlan(form, (8, 32), (4, 16)), x, idx, rw)
            errors.append(float((out - ref).norm() / ref.norm()))
    norm = next(x for x in m.modules() if dk._is_norm(x))
    x = torch.randn(2, norm.weight.shape[0], generator=g)
    ref = type(norm).forward(norm, x)
    errors.append(float((dk.rmsnorm(x, norm.weight, dk._norm_eps(norm), 0, ref.dtype) - ref).norm() / ref.norm()))
from backend.live.routers import router_choice, router_modules, router_top_k
for key in ("qwen3-30b-a3b", "gpt-oss-20b"):
    _, r = router_modules(_tiny(key))[0]
    with torch.no_grad():
        r.weight.normal_()
    x = torch.randn(3, r.weight.shape[1], generator=g)
    ref_idx, ref_w = router_choice(r, type(r).forward(r, x))
    w, idx = dk.route(torch.nn.functional.linear(x, r.weight, getattr(r, "bias", None)), router_top_k(r), (0, True),
                      ref_w.dtype)
    assert torch.equal(idx, ref_idx), key
    errors.append(float((w - ref_w).norm() / ref_w.norm()))
import sys
fn = sys.modules["transformers.models.qwen3_moe.modeling_qwen3_moe"].apply_rotary_pos_emb
q = torch.randn(1, 3, 4, 16).transpose(1, 2); k = torch.randn(1, 2, 3, 16)
cos, sin = torch.randn(1, 3, 16), torch.randn(1, 3, 16)
for a, b in zip(dk.rope(q, k, cos, sin), fn(q, k, cos, sin)):
    errors.append(float((a - b).norm() / b.norm()))
print(max(errors), len(errors))
"""


def test_kernels_compute_the_modules_math_in_triton_interpreter():
    """The Triton kernels themselves, run by Triton's CPU interpreter (float32) where Triton is installed."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    worst, n = out.stdout.split()
    assert int(n) == 17 and float(worst) < 1e-5  # 10 expert cases, 3 norms, 2 routers, q and k


def _gpu():
    if not torch.cuda.is_available() or not decode_kernels.available():
        pytest.skip("needs CUDA and Triton")


@pytest.mark.gpu
@pytest.mark.parametrize("key", MOE)
def test_fused_experts_match_batched_mm_on_gpu(key):
    """Row layouts by default; gpt-oss's transposed experts when asked for (computed right, measured slower)."""
    _gpu()
    from transformers.integrations.moe import batched_mm_experts_forward

    model = _tiny(key, torch.bfloat16, "cuda")
    done = decode_kernels.install(model, transposed_experts=True)
    moe = [m for m in model.modules() if decode_kernels._is_fused_experts(m)]
    assert done.experts == len(moe) > 0, done.skipped
    ex = moe[0]
    e = (ex.gate_up_proj if ex.has_gate else ex.up_proj).shape[0]
    h = ex.down_proj.shape[2] if ex.is_transposed else ex.down_proj.shape[1]
    g = torch.Generator(device="cuda").manual_seed(2)
    with torch.inference_mode():
        for t in (1, 2):
            x = torch.randn(t, h, device="cuda", dtype=torch.bfloat16, generator=g)
            idx = torch.stack([torch.randperm(e, device="cuda", generator=g)[:2] for _ in range(t)])
            rw = torch.softmax(torch.randn(t, 2, device="cuda", generator=g), -1).to(torch.bfloat16)
            ref = batched_mm_experts_forward(ex, x, idx, rw)
            out = decode_kernels.fused_experts_forward(ex, x, idx, rw)
            assert float((out.float() - ref.float()).norm()) <= 1e-2 * float(ref.float().norm())
    done.remove()
    assert not any("_archlab_experts" in m.__dict__ or "forward" in m.__dict__ for m in model.modules())


def _decode(model, ids, n, **kw):
    dec = GraphDecoder(model, ids.shape[1] + n + 1, **kw)
    out = dec.prefill(ids)
    tokens, routed = [], []
    tok = sample(out.logits, 0.0, 1.0, None)
    for i in range(n):
        packed, unpack = pack_step(tok, out)
        t, layers = unpack(packed.cpu())
        tokens.append(t)
        routed.append([(layer, idx.tolist()) for layer, idx, _ in layers])
        if i < n - 1:
            out = dec.step(tok)
            tok = sample(out.logits, 0.0, 1.0, None)
    info = (dec.kernels.summary() if dec.kernels else None, len(dec.graphs), dec.graph_error)
    dec.close()
    return tokens, routed, info


@pytest.mark.gpu
@pytest.mark.parametrize("key", MOE + ["llama3-8b", "gemma3-27b"])
def test_graph_with_fused_kernels_matches_plain_eager_on_gpu(key):
    """Graph + fused kernels = the static step run eagerly without them = generate (float32 miniatures)."""
    _gpu()
    model = _tiny(key, device="cuda")
    ids = torch.randint(0, model.config.vocab_size, (1, 9), generator=torch.Generator().manual_seed(1)).cuda()
    window = getattr(model.config, "sliding_window", None) or 0
    n = max(16, window + 8)
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)[0, 9:].tolist()
        eager, eager_routes, _ = _decode(model, ids, n, use_graph=False, kernels=False)
        fused, fused_routes, (kernels, graphs, error) = _decode(model, ids, n)
    assert error is None and graphs == 1
    assert kernels["norms"] > 0
    rows = [m for m in model.modules() if decode_kernels._is_fused_experts(m) and decode_kernels._rows(m)]
    assert kernels["experts"] == len(rows) == (len(router_modules(model)) if key != "gpt-oss-20b" else 0)
    assert fused == eager == ref
    assert fused_routes == eager_routes
    assert not any("_archlab_experts" in m.__dict__ or "forward" in m.__dict__ for m in model.modules())
