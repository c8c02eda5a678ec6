"""The training experts kernel (backend/train/experts.py) against transformers' own grouped_mm, on the CPU:
same outputs and gradients, through its own gathers."""

import pytest
import torch

from backend.train import budget, experts
from backend.train.trainer import build_model


@pytest.mark.parametrize("key", ["gpt-oss-20b", "qwen3-30b-a3b", "deepseek-v3", "qwen3-next-80b-a3b"])
def test_training_experts_equal_transformers_grouped_mm(key, monkeypatch):
    s = budget.size_to_budget(key, 1e6, "active", vocab=2048)
    ours = build_model(s, 0, torch.device("cpu"), experts_impl="grouped")
    theirs = build_model(s, 0, torch.device("cpu"), experts_impl="grouped_mm")
    assert ours.config._experts_implementation == experts.IMPL != theirs.config._experts_implementation
    with torch.no_grad():  # biases (gpt-oss) start at zero: give them values so their gradients carry through
        g = torch.Generator().manual_seed(1)
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            if n.endswith("proj_bias"):
                q.copy_(p.copy_(torch.randn(p.shape, generator=g) * 0.1))
    calls = []
    linear = experts._linear
    monkeypatch.setattr(experts, "_linear", lambda *a: calls.append(1) or linear(*a))
    x = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    outs = [m(input_ids=x, use_cache=False).logits.float() for m in (ours, theirs)]
    assert calls, "the experts did not run through backend/train/experts.py"
    assert torch.allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for o in outs:
        o.pow(2).mean().backward()
    biases = 0
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n
            biases += n.endswith("proj_bias") and bool(q.grad.abs().sum() > 0)
    assert biases == (2 * s.arch.spec.num_layers if key == "gpt-oss-20b" else 0)
