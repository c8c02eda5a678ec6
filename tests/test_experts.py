"""The training experts kernel (backend/train/experts.py) against transformers' own grouped_mm, on the CPU."""
import torch

from backend.train import budget, experts
from backend.train.trainer import build_model


def test_expert_bias_gradient_by_gemm_equals_the_gather_one(monkeypatch):
    s = budget.size_to_budget("gpt-oss-20b", 1e6, "active", vocab=2048)  # experts with biases
    ours = build_model(s, 0, torch.device("cpu"), experts_impl="grouped")
    theirs = build_model(s, 0, torch.device("cpu"), experts_impl="grouped_mm")
    assert ours.config._experts_implementation == experts.IMPL != theirs.config._experts_implementation
    with torch.no_grad():  # biases start at zero: give them values so their gradients carry through
        g = torch.Generator().manual_seed(1)
        for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
            if n.endswith("proj_bias"):
                q.copy_(p.copy_(torch.randn(p.shape, generator=g) * 0.1))
    calls = []
    backward = experts._ExpertRows.backward
    monkeypatch.setattr(experts._ExpertRows, "backward", staticmethod(lambda ctx, gr: calls.append(1) or backward(ctx, gr)))
    x = torch.randint(0, 2048, (2, 32), generator=torch.Generator().manual_seed(0))
    for m in (ours, theirs):
        m(input_ids=x, use_cache=False).logits.float().pow(2).mean().backward()
    assert calls, "the bias gather's GEMM gradient was not used"
    biases = 0
    for (n, p), (_, q) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-7), n
        biases += n.endswith("proj_bias") and bool(q.grad.abs().sum() > 0)
    assert biases == 2 * s.arch.spec.num_layers
