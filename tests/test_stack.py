"""Stacked training (backend/train/stack.py): a stacked run equals the same run trained alone, each run keeps its
own schedule, clipping and divergence, and a run taken out of the stack is an ordinary checkpoint."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from backend.train.budget import size_to_budget
from backend.train.data import BatchStream, StreamHash
from backend.train.recipe import preset
from backend.train.stack import Stack
from backend.train.trainer import batch_array

VOCAB = 256
BASE = preset("tiny", budget=100_000, layers=2, batch=4, seq_len=32, tokens=4 * 32 * 5, warmup=0.4, lr=3e-3)
TOKENS = np.random.default_rng(7).integers(0, VOCAB, 20_000).astype(np.int32)
CPU = torch.device("cpu")


def sized(key: str):
    return size_to_budget(
        key, BASE.budget, seq_len=BASE.seq_len, vocab=VOCAB, layers=BASE.layers, min_head_dim=BASE.min_head_dim
    )


def train(stack: Stack, steps: int) -> np.ndarray:
    streams = [BatchStream(TOKENS, r.recipe.batch, r.recipe.seq_len, r.recipe.seed) for r in stack.runs]
    for step in range(steps):
        stack.train_step([s[step] for s in streams])
    return stack.take()["loss"]


RECIPES = [replace(BASE, lr=lr, seed=seed) for lr in (1e-3, 3e-3, 1e-2) for seed in (0, 1)]


@pytest.fixture(scope="module", params=["olmo2-7b", "qwen3-30b-a3b", "deepseek-v3"])
def stacked_and_alone(request):
    """(key, losses of the 6 runs stacked [steps, 6], losses of each run alone [steps, 6])."""
    torch.set_num_threads(1)  # reductions split their work by thread count; one thread keeps the order fixed
    try:
        s = sized(request.param)
        together = train(Stack(s, RECIPES, [f"r{i}" for i in range(6)], CPU), BASE.steps)
        alone = np.stack([train(Stack(s, [r], ["x"], CPU), BASE.steps)[:, 0] for r in RECIPES], 1)
    finally:
        torch.set_num_threads(2)
    return request.param, together, alone


def test_a_stacked_run_equals_the_same_run_alone(stacked_and_alone):
    """Dense (OLMo 2), MoE (Qwen3-MoE) and MoE + MLA (DeepSeek V3) miniatures, 3 learning rates × 2 seeds, fp32 on
    the CPU: every step's loss equals the run's alone to float32 rounding. Exactly equal in most runs; where not,
    a few units in the last place, because the backward's reductions over the batch (the gradient of a norm's
    weight, say) are laid out differently with R runs than with one, and add in another order."""
    key, together, alone = stacked_and_alone
    assert together.shape == alone.shape == (BASE.steps, 6)
    assert np.isfinite(together).all()
    np.testing.assert_allclose(together, alone, rtol=1e-6, atol=0)
    assert (together == alone).mean() > 0.5  # rounding, not a drift: most losses are bit-identical


def test_the_runs_of_a_stack_really_differ(stacked_and_alone):
    """The equality above is not trivial: the six runs (3 learning rates × 2 seeds) have six different curves."""
    _, together, _ = stacked_and_alone
    assert len({round(float(x), 6) for x in together[-1]}) == 6


def test_stacked_and_alone_agree_with_the_single_model_trainer():
    """The project's one-model trainer (trainer.Member: torch's AdamW, clip_grad_norm_) and a stack of one agree to
    float32 rounding over every step (they order a few additions differently)."""
    from backend.train.trainer import Member

    s = sized("olmo2-7b")
    r = RECIPES[3]
    stack = train(Stack(s, [r], ["x"], CPU), BASE.steps)[:, 0]
    m = Member("m", s, r, CPU).start()
    stream = BatchStream(TOKENS, r.batch, r.seq_len, r.seed)
    for step in range(BASE.steps):
        m.train_step(stream[step])
    np.testing.assert_allclose(stack, m.take_losses(), rtol=1e-5)


def test_each_run_keeps_its_own_schedule_and_clipping():
    s = sized("olmo2-7b")
    recipes = [replace(BASE, lr=1e-2, warmup=0.0, grad_clip=0.01), replace(BASE, lr=1e-3, warmup=0.5, grad_clip=0.0)]
    st = Stack(s, recipes, ["a", "b"], CPU)
    table = st.lr_table.numpy()
    for step in range(BASE.steps):
        assert table[step].tolist() == pytest.approx([recipes[0].lr_at(step), recipes[1].lr_at(step)])
    streams = [BatchStream(TOKENS, BASE.batch, BASE.seq_len, r.seed) for r in recipes]
    before = {n: p.detach().clone() for n, p in st.params.items()}
    st.train_step([streams[0][0], streams[1][0]])
    norms = st.take()["grad_norm"][0]
    assert (norms > 0.01).all()  # both runs' gradients exceed run 0's threshold, so run 0 was clipped and run 1 not
    # the clipped run moved as far as a run alone with the same clipping: compare with stacks of one
    for r, recipe in enumerate(recipes):
        alone = Stack(s, [recipe], ["x"], CPU)
        alone.train_step([streams[r][0]])
        for n, p in st.params.items():
            torch.testing.assert_close(p.detach()[r], alone.params[n].detach()[0], rtol=0, atol=0)
            assert not torch.equal(p.detach()[r], before[n][r]) or p.grad is None


def test_a_nan_in_one_run_leaves_the_others_unchanged():
    s = sized("olmo2-7b")
    clean = Stack(s, RECIPES[:3], ["a", "b", "c"], CPU)
    poisoned = Stack(s, RECIPES[:3], ["a", "b", "c"], CPU)
    with torch.no_grad():
        poisoned.params["model.norm.weight"][1].fill_(float("nan"))
    a, b = train(clean, 3), train(poisoned, 3)
    assert np.isnan(b[:, 1]).all()
    np.testing.assert_array_equal(a[:, [0, 2]], b[:, [0, 2]])
    for n, p in poisoned.params.items():  # the others' weights are untouched by run 1's NaN
        torch.testing.assert_close(p.detach()[[0, 2]], clean.params[n].detach()[[0, 2]], rtol=0, atol=0)


def test_a_run_taken_out_of_the_stack_trains_on_unchanged():
    s = sized("olmo2-7b")
    st = Stack(s, RECIPES[:3], ["a", "b", "c"], CPU)
    alone = Stack(s, [RECIPES[2]], ["c"], CPU)
    streams = [BatchStream(TOKENS, BASE.batch, BASE.seq_len, r.seed) for r in RECIPES[:3]]
    st.train_step([x[0] for x in streams])
    alone.train_step([streams[2][0]])
    st.keep([2])  # runs a and b stopped
    st.train_step([streams[2][1]])
    alone.train_step([streams[2][1]])
    np.testing.assert_array_equal(st.take()["loss"][:, -1], alone.take()["loss"][:, 0])


def test_the_batch_stream_hash_is_the_same_stacked_and_alone():
    s = sized("olmo2-7b")
    st = Stack(s, RECIPES[:2], ["a", "b"], CPU)
    train(st, 3)
    for r, recipe in enumerate(RECIPES[:2]):
        h = StreamHash()
        stream = BatchStream(TOKENS, recipe.batch, recipe.seq_len, recipe.seed)
        for step in range(3):
            h.update(batch_array(stream[step]))
        assert st.runs[r].stream.hexdigest() == h.hexdigest() and st.runs[r].stream.batches == 3
    assert st.runs[0].stream.hexdigest() != st.runs[1].stream.hexdigest()  # two seeds, two streams


@pytest.mark.parametrize("key", ["olmo2-7b", "deepseek-v3"])
def test_a_checkpoint_unstacked_loads_with_from_pretrained_and_has_its_loss(key, tmp_path):
    from transformers import AutoModelForCausalLM

    s = sized(key)
    st = Stack(s, RECIPES[:2], ["a", "b"], CPU)
    train(st, 3)
    windows = np.stack([TOKENS[i * 33 : (i + 1) * 33] for i in range(8)])
    stacked = st.loss_on(windows)
    st.save(1, tmp_path / "b")
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b"), dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.from_numpy(windows.astype(np.int64))
        logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert float(loss) == pytest.approx(float(stacked[1]), rel=1e-5)
    assert float(stacked[0]) != pytest.approx(float(stacked[1]), rel=1e-6)  # it is run b's checkpoint, not a's


def test_the_attention_logit_hook_matches_a_recomputation():
    """The largest softmax input per layer that the stack records equals q·kᵀ·scale over the causal positions,
    recomputed from the query and key that the model hands its attention (captured by a plain attention function)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    s = sized("llama3-8b")
    st = Stack(s, RECIPES[:2], ["a", "b"], CPU)
    train(st, 2)
    batch = [BatchStream(TOKENS, BASE.batch, BASE.seq_len, 0)[5]] * 2
    recorded = st.stability(batch, rows=2)["max_logit"]
    captured = []

    def capture(module, query, key, value, attention_mask, **kw):
        captured.append((query.detach(), key.detach(), kw.get("scaling")))
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

    AttentionInterface.register("test_capture", capture)
    model = st.model_of(1)
    model.config._attn_implementation = "test_capture"
    with torch.no_grad():
        model(input_ids=torch.from_numpy(batch[1][:2, :-1].astype(np.int64)))
    assert len(captured) == recorded.shape[1] == s.arch.spec.num_layers
    for layer, (q, k, scale) in enumerate(captured):
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scores = (q @ k.transpose(-1, -2)) * scale
        t = scores.shape[-1]
        scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        assert float(recorded[1, layer]) == pytest.approx(float(scores.max()), rel=1e-5)


@pytest.mark.parametrize("key", ["deepseek-v3", "gpt-oss-20b"])
def test_under_bf16_autocast_the_stacked_attention_runs_in_bf16_without_autocast(key, monkeypatch):
    """Under bf16 autocast the stacked attention gets bf16 inputs and runs with autocast off: no op inside it is
    re-cast, so its backward never meets a bf16 tensor with an fp32 gradient (the MLA sweep's failure on CUDA, whose
    softmax backward refuses that mix). DeepSeek (MLA: SDPA with a value head narrower than the key's) and gpt-oss
    (sinks: the explicit softmax, taken in fp32)."""
    from backend.train import vmapped

    seen = []
    attend = vmapped.attend

    def spy(q, k, v, *args):
        seen.append((q.dtype, v.dtype, torch.is_autocast_enabled("cpu")))
        return attend(q, k, v, *args)

    monkeypatch.setattr(vmapped, "attend", spy)
    recipes = [replace(BASE, precision="bf16", lr=lr) for lr in (1e-3, 1e-2)]
    losses = train(Stack(sized(key), recipes, ["a", "b"], CPU), 3)
    assert np.isfinite(losses).all() and losses.shape == (3, 2)
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16, False)}
