"""Speed, training-memory, KV and weight estimates against values worked out by hand from the published configs,
for a dense (Llama 3 8B), a MoE (Qwen3-30B-A3B), an MLA (DeepSeek V3) and a sliding-window model (Gemma 3 27B).

The expected numbers below are written from the configs' sizes (hidden, heads, widths, vocabulary), not from
the code under test.
"""

import math
import re

import pytest

from backend.arch import gpus, measurements, roofline, train_memory
from backend.arch.errors import ArchLabError
from backend.arch.memory import kv_cache, weight_bytes, weights_working

H100_BW, H100_BF16 = 3.35e12, 989.4e12


def t(nbytes, flops, bw=H100_BW, peak=H100_BF16):
    """Roofline time of one operation."""
    return max(nbytes / bw, flops / peak)


def comp(phase, name):
    return next(c for c in phase.components() if c.component == name)


# ----------------------------------------------------------------- Llama 3 8B (dense, GQA)
# H 4096, 32 layers, 32 heads, 8 KV heads, head 128, MLP 14336 (SwiGLU), vocab 128256, untied.
L_ATTN = 32 * (4096 * (32 * 128 + 2 * 8 * 128) + 32 * 128 * 4096)  # q, k, v, o
L_MLP = 32 * 3 * 4096 * 14336
L_HEAD = 128256 * 4096
L_NORMS = (2 * 32 + 1) * 4096
L_PARAMS = L_ATTN + L_MLP + 2 * L_HEAD + L_NORMS


def test_llama_parameters_as_worked_out():
    assert L_ATTN == 1_342_177_280 and L_PARAMS == 8_030_261_248
    assert weight_bytes("llama3-8b", "bf16") == 2 * L_PARAMS


def test_llama_decode_roofline():
    e = roofline.estimate("llama3-8b", gpus.get("h100"), batch=1, context=2048, prompt=512, dtype="bf16")
    kv_bytes = 32 * 2048 * 8 * (128 + 128) * 2
    kv_flops = 32 * 2 * 2048 * 32 * (128 + 128)
    expected = (
        t(L_ATTN * 2, 2 * L_ATTN)
        + t(kv_bytes, kv_flops)
        + t(L_MLP * 2, 2 * L_MLP)
        + t(L_HEAD * 2, 2 * L_HEAD)
        + t((4096 + L_NORMS) * 2, 4 * L_NORMS)
    )
    assert e.step_s == pytest.approx(expected, rel=1e-12)
    assert e.tok_s == pytest.approx(1 / expected, rel=1e-12)
    assert comp(e.decode, "attention_kv").bytes == kv_bytes
    assert e.decode.bound == "memory" and all(c.bound == "memory" for c in e.decode.components())
    assert e.experts_touched is None and e.mla is None


def test_llama_prefill_roofline_is_compute_bound():
    e = roofline.estimate("llama3-8b", gpus.get("h100"), batch=1, context=2048, prompt=512, dtype="bf16")
    pairs = 512 * 513 // 2
    expected = (
        t(L_ATTN * 2, 2 * 512 * L_ATTN)
        + t(32 * 512 * 2048 * 2, 32 * 2 * pairs * 32 * 256)
        + t(L_MLP * 2, 2 * 512 * L_MLP)
        + t(L_HEAD * 2, 2 * L_HEAD)  # logits of the last token only
        + t((512 * 4096 + L_NORMS) * 2, 4 * 512 * L_NORMS)
    )
    assert e.prefill_s == pytest.approx(expected, rel=1e-12)
    assert comp(e.prefill, "dense_mlp").bound == "compute" and e.prefill.bound == "compute"


def test_fp8_on_a_gpu_without_fp8_is_weight_only():
    a100 = gpus.get("a100")
    e = roofline.estimate("llama3-8b", a100, dtype="fp8")
    assert e.compute_dtype == "bf16" and e.kv_dtype == "fp8"
    assert comp(e.decode, "dense_mlp").bytes == L_MLP * 1
    assert any("no fp8 tensor cores" in n for n in e.decode.working.notes)
    h = roofline.estimate("llama3-8b", gpus.get("h100"), dtype="fp8")
    assert h.compute_dtype == "fp8"


# What bf16 autocast training (fp32 parameters, bf16 matmuls, as backend/train/trainer.py) keeps per layer and
# token, counted tensor by tensor with saved_tensors_hooks on the trained miniatures (on a GPU, and on the CPU by
# tests/test_train_memory_audit.py). The earlier hand count (168,064 B for a Llama 3 8B layer) counted the norms'
# inputs in bf16 and one projection input per sublayer; autocast keeps more:
# - each RMSNorm on the fp32 residual stream keeps its fp32 input, the fp32 normalised tensor and 1/RMS (4 B);
# - autocast casts a linear layer's fp32 input to bf16 once per call (q, k and v each make their own copy).
L_NORM = 4 * 4096 + 4 * 4096 + 4
L_ATTN_SAVED = 2 * (32 * 128 + 8 * 128 + 8 * 128 + 32 * 128) + 4 * 32  # SDPA: q, k, v, out + fp32 LSE per head
L_LAYER = 2 * L_NORM + 5 * 2 * 4096 + L_ATTN_SAVED + 4 * 2 * 14336  # casts for q, k, v, gate, up; SwiGLU's 4
L_HEAD_SAVED = 16 + L_NORM + 2 * 4096  # token ids (embedding, targets), final norm, the LM head's bf16 input
L_MATRICES = L_PARAMS - L_NORMS - L_HEAD  # read through bf16 copies (the embedding table is looked up in fp32)
L_LOSS = 128256 * (2 + 4 + 4 + 4)  # bf16 logits, fp32 log-softmax, its gradient in and out (start of backward)


def test_llama_training_memory():
    r = train_memory.training_memory(
        "llama3-8b", batch=1, seq_len=2048, dtype="bf16", master_fp32=True, checkpointing=False
    )
    per_layer = L_LAYER
    assert per_layer == 241_800
    assert r.activation_per_token == 32 * per_layer
    # at the start of the backward pass (the peak): the bf16 weight copies, no gradients yet (the previous
    # step's were freed by zero_grad(set_to_none=True)); fp32 parameters and AdamW's m, v
    assert r.moment == "backward"
    assert r.parts["weights"] == 2 * L_MATRICES and r.parts["gradients"] == 0
    assert r.parts["master_weights"] == 4 * L_PARAMS and r.parts["optimizer_states"] == 8 * L_PARAMS
    assert r.parts["activations"] == 2048 * (32 * per_layer + L_HEAD_SAVED)
    assert r.parts["loss"] == 2048 * L_LOSS
    assert r.total == 2 * L_MATRICES + 12 * L_PARAMS + 2048 * (32 * per_layer + L_HEAD_SAVED) + 2048 * L_LOSS
    # with checkpointing each layer keeps its fp32 input (the residual stream under autocast: 4 bytes, was 2)
    # plus one recomputed layer; the start of backward then holds less than the optimizer step, where the fp32
    # gradients (4 bytes a parameter) are all there, so that is the peak
    ck = train_memory.training_memory("llama3-8b", 1, 2048, checkpointing=True)
    assert ck.activation_per_token_ckpt == 32 * 4096 * 4 + per_layer
    assert ck.working.value("activations") == 2048 * (32 * 4096 * 4 + per_layer + L_HEAD_SAVED)
    start = 2 * L_MATRICES + 12 * L_PARAMS + 2048 * (32 * 4096 * 4 + per_layer + L_HEAD_SAVED) + 2048 * L_LOSS
    assert ck.working.value("at the start of the backward pass") == start
    assert ck.moment == "optimizer" and start < 16 * L_PARAMS
    assert ck.parts["gradients"] == 4 * L_PARAMS and ck.parts["activations"] == 0 and ck.parts["weights"] == 0
    assert ck.total == 16 * L_PARAMS
    pure = train_memory.training_memory("llama3-8b", 1, 2048, master_fp32=False)
    assert pure.parts["master_weights"] == 0 and pure.parts["optimizer_states"] == 4 * L_PARAMS  # m, v in bf16


def test_llama_training_split_over_gpus():
    z3 = train_memory.training_memory("llama3-8b", 1, 2048, parallel="zero3", gpus=8)
    # weights: the bf16 copies of the matrices (L_MATRICES, not every parameter), sharded
    assert z3.parts["weights"] == round(2 * L_MATRICES / 8) and z3.parts["optimizer_states"] == round(8 * L_PARAMS / 8)
    per_layer_params = (L_PARAMS - 2 * L_HEAD) / 32
    assert z3.parts["gathered"] == round(2 * per_layer_params * 2 * 7 / 8)
    # the layouts keep gradient buffers (DDP buckets, ZeRO partitions, pipeline micro-batches), so they hold the
    # gradients at the start of the backward pass too; fp32 (4 bytes) as the fp32 parameters they belong to
    z1 = train_memory.training_memory("llama3-8b", 1, 2048, parallel="zero1", gpus=8)
    assert z1.parts["weights"] == 2 * L_MATRICES and z1.parts["gradients"] == 4 * L_PARAMS
    assert z1.parts["optimizer_states"] == round(8 * L_PARAMS / 8) and z1.parts["master_weights"] == round(
        4 * L_PARAMS / 8
    )
    z2 = train_memory.training_memory("llama3-8b", 1, 2048, parallel="zero2", gpus=8)
    assert z2.parts["gradients"] == round(4 * L_PARAMS / 8)
    ddp = train_memory.training_memory("llama3-8b", 1, 2048, parallel="ddp", gpus=8)
    # DDP replicates everything, and its gradient buckets are there at the start of backward (one GPU: not yet)
    assert ddp.total == train_memory.training_memory("llama3-8b", 1, 2048).total + 4 * L_PARAMS
    tp = train_memory.training_memory("llama3-8b", 1, 2048, parallel="tp", gpus=4)
    assert tp.parts["weights"] == round(2 * L_MATRICES / 4)  # norms (replicated) are not among the matrices
    wide = 2 * L_NORM + 5 * 2 * 4096  # norms and the bf16 copies of H-wide inputs: whole on every GPU
    rest = L_ATTN_SAVED + 4 * 2 * 14336  # heads and MLP widths: split
    assert tp.parts["activations"] == round(2048 * (32 * (wide + rest / 4) + (L_HEAD_SAVED - 16) + 16 / 4))
    assert tp.parts["loss"] == round(2048 * L_LOSS / 4)
    pp = train_memory.training_memory("llama3-8b", 1, 2048, parallel="pp", gpus=4)
    # first stage: 8 layers + embeddings; last: 8 layers + LM head; the matrices read through bf16 copies: the
    # attention and MLP matrices of 8 layers, + the LM head on the last stage
    assert pp.parts["weights"] == round(2 * (8 * (L_ATTN + L_MLP) / 32 + L_HEAD))
    # 1F1B: the first stage keeps 4 micro-batches of its 8 layers; the last keeps 1 plus the loss and what is
    # saved outside the layers
    first = 4 * 2048 * 8 * L_LAYER
    last = 1 * 2048 * 8 * L_LAYER + 2048 * L_HEAD_SAVED + 2048 * L_LOSS
    assert pp.parts["activations"] + pp.parts["loss"] == max(first, last)


# ----------------------------------------------------------------- Qwen3-30B-A3B (MoE)
# H 2048, 48 layers all MoE, 128 experts, top-8, expert width 768, 32 heads / 4 KV heads of 128, vocab 151936.
Q_EXPERT = 3 * 2048 * 768
Q_ROUTER = 48 * 128 * 2048


def test_qwen_experts_touched_and_decode():
    e = roofline.estimate("qwen3-30b-a3b", gpus.get("h200"), batch=4, context=4096, prompt=128)
    touched = 128 * (1 - (1 - 8 / 128) ** 4)
    assert touched == 29.123046875  # 128 × (1 − 0.9375⁴), not 4 × 8 = 32
    assert e.experts_touched == pytest.approx(touched, rel=1e-12)
    ex = comp(e.decode, "experts")
    assert ex.bytes == pytest.approx((48 * touched * Q_EXPERT + Q_ROUTER) * 2, rel=1e-12)
    assert ex.flops == 2 * 4 * (48 * 8 * Q_EXPERT + Q_ROUTER)
    assert ex.time_s == pytest.approx(t(ex.bytes, ex.flops, 4.8e12, 989.4e12), rel=1e-12)
    kv = comp(e.decode, "attention_kv")
    assert kv.bytes == 48 * 4 * 4096 * 4 * 256 * 2
    assert e.total_tok_s == pytest.approx(4 / e.step_s)
    # at batch 1 a token reads exactly its top-k experts
    one = roofline.estimate("qwen3-30b-a3b", gpus.get("h200"), batch=1)
    assert one.experts_touched == pytest.approx(8.0)


def test_qwen_training_expert_parallel():
    r = train_memory.training_memory("qwen3-30b-a3b", 2, 1024, parallel="ep", gpus=4)
    routed = 48 * 128 * Q_EXPERT
    total = 30_532_122_624
    # the bf16 weight copies cover the matrices: all but the untied embedding table (151,936 × 2,048) and the
    # norms (48 layers × (2 × 2,048 + 2 × 128 QK-norm weights) + the final 2,048)
    matrices = total - 151936 * 2048 - (48 * (2 * 2048 + 2 * 128) + 2048)
    assert r.parts["weights"] == round(2 * (matrices - routed + routed / 4))
    # per layer and token (bf16 autocast; the earlier count, 2 bytes for everything, missed the fp32 norm tensors,
    # the per-linear bf16 copies and the router's fp32 softmax):
    per_layer = (
        2 * (8 * 2048 + 4)  # 2 RMSNorms on the fp32 stream: input, normalised, 1/RMS
        + 4 * 2 * 2048  # bf16 copies of the inputs of q, k, v and the router
        + (4 + 2) * 32 * 128
        + 4 * 32  # per-head QK-norm on q: fp32 copy, bf16 normalised, 1/RMS
        + (4 + 2) * 4 * 128
        + 4 * 4  # ... on k
        + 2 * (32 * 128 + 4 * 128 + 4 * 128 + 32 * 128)
        + 4 * 32  # SDPA: q, k, v, out, fp32 LSE
        + 4 * 128
        + 8 * 8
        + 4 * 8
        + 4  # router: fp32 softmax, top-8 indices, weights, their sum
        + 4 * 128  # the load-balancing loss's fp32 probabilities
        # per routed expert (8): gathered token, gate_up (2 × 768), SiLU, product, expert output, weight
        # (bf16), 3 int64 sort/gather indices
        + 8 * (2 * (2 * 2048 + 4 * 768 + 1) + 3 * 8)
    )
    assert per_layer == 211_532
    assert r.activation_per_token == 48 * per_layer
    head = 16 + (8 * 2048 + 4) + 2 * 2048  # token ids, final norm, LM head input
    assert r.parts["activations"] == 2048 * (48 * per_layer + head)
    with pytest.raises(ArchLabError, match="needs a model with routed experts"):
        train_memory.training_memory("llama3-8b", 1, 128, parallel="ep", gpus=2)


# ----------------------------------------------------------------- DeepSeek V3 (MLA + MoE)
# H 7168, 61 layers (3 dense, 58 MoE), 128 heads, q_lora 1536, kv_lora 512, rope 64, nope 128, v 128,
# 256 experts top-8 of width 2048 + 1 shared, dense MLP 18432, vocab 129280.
D_ATTN = 61 * (7168 * 1536 + 1536 * 128 * 192 + 7168 * (512 + 64) + 512 * 128 * (128 + 128) + 128 * 128 * 7168)


def test_deepseek_mla_engine_vs_transformers():
    h100 = gpus.get("h100")
    eng = roofline.estimate("deepseek-v3", h100, batch=1, context=4096, mla="engine")
    hf = roofline.estimate("deepseek-v3", h100, batch=1, context=4096, mla="transformers")
    assert eng.mla == "engine" and hf.mla == "transformers"
    k_eng = comp(eng.decode, "attention_kv")
    assert k_eng.bytes == 61 * 4096 * (512 + 64) * 2
    assert k_eng.flops == 61 * 2 * 4096 * 128 * (2 * 512 + 64)
    k_hf = comp(hf.decode, "attention_kv")
    assert k_hf.bytes == 61 * 4096 * 2 * ((512 + 64) + 2 * 128 * (192 + 128))
    assert k_hf.flops == 61 * 2 * 4096 * 128 * (512 * (128 + 128) + 192 + 128)
    assert comp(eng.decode, "attention").flops == 2 * D_ATTN
    assert comp(hf.decode, "attention").flops == 2 * (D_ATTN - 61 * 512 * 128 * 256)
    assert comp(eng.decode, "attention").bytes == comp(hf.decode, "attention").bytes == 2 * D_ATTN
    assert hf.step_s > eng.step_s
    # the expert part is the same for both ways of running attention
    assert comp(hf.decode, "experts").time_s == comp(eng.decode, "experts").time_s


def test_deepseek_kv_bytes_per_token():
    kv = kv_cache("deepseek-v3", 1000, 1, "bf16")
    assert kv.per_token_bytes == 61 * (512 + 64) * 2
    assert kv.working.value("KV bytes per token, no window") == kv.per_token_bytes
    expanded = kv_cache("deepseek-v3", 1000, 1, "bf16", "expanded")
    assert expanded.per_token_bytes == 61 * 128 * (192 + 128) * 2


def test_deepseek_training_activations():
    r = train_memory.training_memory("deepseek-v3", 1, 4096)
    # bf16 autocast: 2 RMSNorms on the fp32 stream, bf16 copies of the q_a and kv_a inputs, the latent norms
    # (fp32 copy of the bf16 latent, bf16 normalised, 1/RMS) and the latents fed to q_b / kv_b, fused SDPA over
    # 128 heads (q·k 192 wide, v 128: multiples of 8) with its fp32 LSE, and the head-major output made contiguous
    # for o_proj (MLA concatenates q's rope and nope parts). The earlier count put everything at 2 bytes, one
    # input per projection and no output copy.
    attn = (
        2 * (8 * 7168 + 4)
        + 2 * 2 * 7168
        + (4 + 2) * 1536
        + 4
        + 2 * 1536
        + (4 + 2) * 512
        + 4
        + 2 * 512
        + 2 * 128 * (192 + 192 + 128 + 128)
        + 4 * 128
        + 2 * 128 * 128
    )
    dense = attn + 2 * 2 * 7168 + 4 * 2 * 18432
    # MoE: router input copy, sigmoid scores (bf16), top-2 per group (8 groups, int64), top-8 indices, weights and
    # their sum (bf16); 8 routed experts (gathered token, gate_up, SiLU, product, output, weight; 3 int64 indices);
    # the shared expert as a dense SwiGLU of width 2,048; no balancing loss (bias-corrected router)
    moe = (
        attn
        + 2 * 7168
        + 2 * 256
        + 2 * 8 * 8
        + 8 * 8
        + 2 * 9
        + 8 * (2 * (2 * 7168 + 4 * 2048 + 1) + 3 * 8)
        + 2 * 2 * 7168
        + 4 * 2 * 2048
    )
    assert (dense, moe) == (533_008, 777_650)
    assert r.activation_per_token == 3 * dense + 58 * moe


# ----------------------------------------------------------------- Gemma 3 27B (5 sliding : 1 full, window 1024)
# H 5376, 62 layers (52 sliding, 10 full), 32 heads / 16 KV heads of 128, MLP 21504 (GeGLU), vocab 262208, tied.


def test_gemma_sliding_layers_read_only_their_window():
    e = roofline.estimate("gemma3-27b", gpus.get("mi300x"), batch=2, context=32768, prompt=2048)
    kv = comp(e.decode, "attention_kv")
    sliding = 52 * 2 * 1024 * 16 * 256 * 2
    full = 10 * 2 * 32768 * 16 * 256 * 2
    assert kv.bytes == sliding + full
    assert kv.flops == 52 * 2 * 2 * 1024 * 32 * 256 + 10 * 2 * 2 * 32768 * 32 * 256
    # tied embeddings: the LM head still reads the vocabulary matrix every step
    assert comp(e.decode, "lm_head").bytes == 262208 * 5376 * 2
    # prefill: sliding layers score min(i, W) keys for query i
    pairs_sliding = 1024 * 1025 // 2 + (2048 - 1024) * 1024
    pk = comp(e.prefill, "attention_kv")
    assert pk.flops == 2 * 2 * (52 * pairs_sliding + 10 * 2048 * 2049 // 2) * 32 * 256


def test_gemma_kv_cache_by_hand():
    kv = kv_cache("gemma3-27b", 32768, 1, "bf16")
    assert kv.total_bytes == 52 * 1024 * 4096 * 2 + 10 * 32768 * 4096 * 2
    assert kv.per_token_bytes == 62 * 4096 * 2


def test_gemma_training_with_checkpointing():
    r = train_memory.training_memory("gemma3-27b", 1, 4096, checkpointing=True)
    # the largest layer is a sliding one (window 1,024 < 4,096 tokens): 4 RMSNorms (2 on the fp32 stream, 2 on
    # bf16 sublayer outputs, which Gemma normalises in fp32: 8 bytes a channel either way, + 1/RMS), bf16 copies
    # of the inputs of q, k, v, gate, up, per-head QK-norms kept in fp32, SDPA with the window's additive bf16 mask
    # (so transformers repeats k and v to all 32 heads), GeGLU's 4 tensors. The earlier count had 2 bytes for
    # everything and no mask.
    per_layer = (
        4 * (8 * 5376 + 4)
        + 5 * 2 * 5376
        + (8 * 32 * 128 + 4 * 32)
        + (8 * 16 * 128 + 4 * 16)
        + 2 * (32 * 128 + 32 * 128 + 32 * 128 + 32 * 128)
        + 4 * 32
        + 2 * 4096
        + 4 * 2 * 21504
    )
    assert per_layer == 488_272
    # checkpointing keeps each layer's input: the fp32 residual stream under autocast (4 bytes, was 2)
    assert r.activation_per_token_ckpt == 62 * 5376 * 4 + per_layer
    head = 16 + (8 * 5376 + 4) + 2 * 5376  # token ids, final norm, the tied LM head's bf16 input
    assert r.working.value("activations") == 4096 * (62 * 5376 * 4 + per_layer + head)


def test_window_helpers():
    assert roofline.tokens_read("sliding", 5000, 4096) == 4096
    assert roofline.tokens_read("chunked", 8193, 8192) == 1 and roofline.tokens_read("chunked", 8192, 8192) == 8192
    assert roofline.prefill_pairs("sliding", 10, 4) == 1 + 2 + 3 + 4 * 7
    assert roofline.prefill_pairs("chunked", 10, 4) == 10 + 10 + 3
    assert roofline.prefill_pairs("full", 10, None) == 55


# ----------------------------------------------------------------- the text is the number

_SAFE = re.compile(r"^[0-9.()+\-*/ ]+$")


def _evaluate(numbers: str) -> float:
    expr = numbers.replace(",", "").replace("×", "*").replace("−", "-").replace("^", "**")
    assert _SAFE.match(expr.replace("**", "*")), expr
    return eval(expr)  # digits and operators only (checked above)


@pytest.mark.parametrize(
    "key,mla",
    [
        ("llama3-8b", "engine"),
        ("qwen3-30b-a3b", "engine"),
        ("deepseek-v3", "engine"),
        ("deepseek-v3", "transformers"),
        ("gemma3-27b", "engine"),
        ("qwen3-next-80b-a3b", "engine"),
    ],
)
def test_formula_text_evaluates_to_the_number(key, mla):
    e = roofline.estimate(key, gpus.get("h100"), batch=3, context=5000, prompt=700, mla=mla)
    checked = 0
    for w in (e.decode.working, e.prefill.working):
        for s in w.steps:
            if s.name.endswith((": bytes", ": FLOPs")):
                assert _evaluate(s.numbers) == pytest.approx(s.value, rel=1e-3), s.text()
                checked += 1
        assert w.value("decode step" if w is e.decode.working else "prefill time") == pytest.approx(
            sum(o.time_s for o in (e.decode if w is e.decode.working else e.prefill).ops)
        )
    assert checked >= 10
    md = e.decode.working.markdown()
    assert "max(bytes / BW, FLOPs / peak)" in md and f"{e.step_s * 1e3:,.3f} ms" in md


def test_weights_and_kv_text_evaluate_to_the_number():
    w = weights_working("qwen3-30b-a3b", "fp8")
    assert _evaluate(w.steps[0].numbers) == weight_bytes("qwen3-30b-a3b", "fp8") == 30_532_122_624
    kv = kv_cache("gemma3-27b", 2000, 3, "fp8")
    for s in kv.working.steps:
        if "layers at this context" in s.name:
            assert _evaluate(s.numbers) == s.value
    assert kv.working.value("KV cache total") == kv.total_bytes


# ----------------------------------------------------------------- GPUs, bad input, measurements


def test_gpu_table_and_custom():
    assert gpus.keys() == ["h100", "h200", "a100", "l40s", "rtx4090", "mi300x"]
    assert all(g.source.startswith("https://") for g in gpus.table())
    assert gpus.get("A100").fp8_flops is None and gpus.get("h100").bandwidth_Bps == 3.35e12
    c = gpus.custom(2.0, 500.0)
    e = roofline.estimate("llama3-8b", c)
    assert comp(e.decode, "dense_mlp").time_s == pytest.approx(L_MLP * 2 / 2e12)
    with pytest.raises(ArchLabError, match="has no fp8"):
        c.flops("fp8")
    for bad in (0, -1, float("nan"), float("inf"), "x"):
        with pytest.raises(ArchLabError):
            gpus.custom(bad, 100)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(batch=0), "batch"),
        (dict(context=0), "context"),
        (dict(prompt=True), "prompt"),
        (dict(dtype="fp5"), "unknown dtype"),
        (dict(kv_dtype="int3"), "KV-cache dtype"),
        (dict(mla="magic"), "MLA mode"),
    ],
)
def test_bad_speed_input(kwargs, needle):
    with pytest.raises(ArchLabError, match=needle):
        roofline.estimate("gpt2", gpus.get("h100"), **kwargs)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(batch=0), "batch"),
        (dict(dtype="fp8"), "dtype"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(parallel="zero4"), "parallel"),
        (dict(parallel="pp", gpus=99), "pipeline"),
        (dict(parallel="tp", gpus=0), "GPUs"),
    ],
)
def test_bad_training_input(kwargs, needle):
    args = dict(batch=1, seq_len=128)
    args.update(kwargs)
    with pytest.raises(ArchLabError, match=needle):
        train_memory.training_memory("gpt2", **args)


def test_measurements_pair_with_estimates_of_the_same_shape():
    rows = measurements.decode_measurements()
    assert rows, "bench/results/gpu-*.json are part of the repository"
    for m in rows:
        e = m.estimate()
        assert m.gpu is not None and m.device in m.gpu.device_names  # the GPU table's row of the device measured on
        assert e.batch == 1 and e.dtype == "bf16" and e.context == 32 + m.tokens // 2
        if m.layers < m.full_layers:  # fewer layers at full width: the estimate has exactly that many
            assert "[" in m.label and e.model.endswith(f"[{m.layers} of {m.full_layers} layers]")
        assert 0 < m.tok_s / e.tok_s < 1.5  # a measurement above the roofline would mean a wrong estimate
    ds = [m for m in rows if m.key == "deepseek-v3"]
    assert ds and all(m.estimate().mla == "transformers" for m in ds)


def test_training_measured_file_format(tmp_path):
    assert train_memory.measured_rows(tmp_path / "absent.json") == []
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
    }
    f = tmp_path / "train-memory.json"
    f.write_text(
        '{"gpu": "test", "rows": [{"model": "tiny", "config": %s, "batch": 4, "seq_len": 32, "dtype": "bf16",'
        ' "master_fp32": true, "checkpointing": false, "measured_peak_bytes": 1000000}]}'
        % __import__("json").dumps(cfg)
    )
    rows = train_memory.measured_rows(f)
    assert len(rows) == 1 and rows[0].estimate.batch == 4 and rows[0].estimate.master_fp32
    assert rows[0].ratio == pytest.approx(1_000_000 / rows[0].estimate.total)
    f.write_text('{"gpu": "x", "rows": [{"model": "tiny"}]}')
    with pytest.raises(ArchLabError, match="documented format"):
        train_memory.measured_rows(f)


def test_no_fudge_factor_in_the_estimate():
    """The estimate does not depend on any measurement: same numbers with and without result files."""
    m = next(m for m in measurements.decode_measurements() if m.key == "llama3-8b")
    e = roofline.estimate("llama3-8b", m.gpu, batch=1, context=m.context, prompt=32, mla="transformers")
    assert m.estimate().step_s == e.step_s
    assert math.isclose(e.tok_s, 1 / e.step_s)
