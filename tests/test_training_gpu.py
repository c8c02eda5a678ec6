"""Training on a GPU (skipped without CUDA): the autocast grouped experts equal the plain grouped ones, and a
MoE miniature learns in bf16 autocast."""

import pytest
import torch

from backend.train import budget, data
from backend.train.recipe import preset
from backend.train.trainer import Member

pytestmark = pytest.mark.gpu


def test_autocast_grouped_experts_match_the_fp32_ones():
    s = budget.size_to_budget("qwen3-30b-a3b", 1e6, "active", vocab=2048)
    r = preset("small", budget=1e6)
    fast = Member("a", s, r, torch.device("cuda")).start()  # experts in bf16 under autocast
    slow = Member("b", s, r, torch.device("cuda")).start(experts_impl="grouped_mm")  # transformers' as is (fp32)
    assert fast.model.config._experts_implementation != slow.model.config._experts_implementation
    x = torch.randint(0, 2048, (4, 64), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        a = fast.model(input_ids=x, use_cache=False).logits.float()
        b = slow.model(input_ids=x, use_cache=False).logits.float()
    assert torch.allclose(a, b, atol=0.05, rtol=0.05)
    fast.close(), slow.close()


def test_a_moe_miniature_learns_on_the_gpu():
    r = preset("small", budget=1e6, tokens=64 * 256 * 40)
    s = budget.size_to_budget("deepseek-v3", r.budget, "active", vocab=2048)
    m = Member("d", s, r, torch.device("cuda")).start()
    stream = data.BatchStream(data.corpus_data().train, r.batch, r.seq_len, 0)
    while not m.done:
        m.train_step(stream[m.step])
    losses = m.take_losses()
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert m.routers.snapshot(m.step).load.sum() > 0
    m.close()
