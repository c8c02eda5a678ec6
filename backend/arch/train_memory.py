"""Training memory: weights, gradients, optimizer states, activations and the loss, split over GPUs.

:func:`training_memory` counts, per GPU, what one training step of a micro-batch of ``batch`` sequences of
``seq_len`` tokens holds at its peak, the way PyTorch trains a Hugging Face model (ArchLab's own trainer,
``backend/train/trainer.py``, is the reference: fp32 parameters, ``torch.autocast`` to bf16 around the forward,
``F.cross_entropy(logits.float())``, fused AdamW, ``zero_grad(set_to_none=True)``). Two moments are compared and
the larger is reported, with the parts held at that moment:

- **start of the backward pass** (where the activations peak): the parameters; with ``master_fp32`` and a 16-bit
  ``dtype`` (autocast) the parameters are the fp32 master copy (4 bytes each) and the matrix multiplications
  read 16-bit copies of the weight matrices (autocast casts each once per forward and autograd keeps the copy
  for the backward pass: "weights" below counts b × the parameters of the matrices, embeddings and norms
  excepted, the LM head included when tied); the optimizer states (AdamW m and v, SGD momentum; fp32 with a
  master copy, else in ``dtype``); the activations autograd saved (below); the loss chain; and gradients only
  where a parallel layout keeps gradient buffers (DDP buckets, ZeRO partitions, pipeline micro-batches): on one
  GPU the previous step's gradients were freed, and none exist yet;
- **optimizer step**: parameters, optimizer states and every gradient (fp32 with a master copy), activations
  and 16-bit copies freed.

Activations: per token and decoder layer, each tensor autograd saves for the backward pass, from the ArchSpec
(:func:`saved_per_token`), as CUDA runs it under bf16 autocast (b_act = 2):

- every RMSNorm keeps its input in fp32 (the fp32 residual stream itself, or an fp32 copy of a 16-bit input), the
  normalised tensor (fp32, or 16-bit where the model casts before scaling by the weight and the input was
  16-bit) and 1/RMS per row; LayerNorm its fp32 input, mean and 1/σ;
- under autocast, every linear layer keeps a 16-bit copy of its fp32 input (one cast per call: q, k and v each
  cast the same normalised tensor);
- QK-norms as norms over the query and key heads; MLA's latent norms and the latent inputs of q_b / kv_b;
- attention through a fused kernel (cuDNN / flash / memory-efficient SDPA, flex attention for attention sinks):
  q, k and v as the kernel received them (k and v repeated to every query head when a mask is passed, as
  transformers then repeats them), the output and an fp32 log-sum-exp per head; a 16-bit additive mask of
  T entries per token (B × 1 × T × T) where a sliding window shorter than the sequence needs one; a head-major
  output made contiguous for the output projection (partial RoPE and MLA concatenate q); head dimensions that
  the fused kernels refuse (not multiples of 8, or above 256) fall back to SDPA's math path, which on CUDA works
  in fp32: q, k, v and the T-wide softmax of every head in fp32;
- the MLP's gate and up outputs, the activation and the product (SwiGLU/GeGLU), or the up output and the
  activation;
- MoE: the router input and scores (fp32 softmax over the experts; sigmoid scores in b_act plus group masks
  for DeepSeek-style routing; gpt-oss: softmax over the k chosen logits), the chosen indices and weights; per
  routed token (top-k of them), the token gathered in b_act, the expert's gate_up output, activation and product
  (gpt-oss's clamped SwiGLU keeps five expert-wide tensors), the expert output before weighting, the routing
  weight, and the int64 sort/gather indices (all in fp32, and no 16-bit copies of the experts, when the widths are
  not multiples of 8: the trainer's grouped GEMMs then fall back to transformers' fp32 ones); shared experts as a dense MLP (and their sigmoid gate); for routers
  balanced by a loss, the fp32 softmax of every MoE layer's router logits that the load-balancing loss keeps;
- gated delta-net linear attention (Qwen3-Next) as transformers' PyTorch chunked path runs it (chunks of 64):
  the causal conv's input and output, β and the decay, the fp32 copies the chunked rule keeps (queries, keys,
  values, β-scaled keys, UT-transform results: 8 head-wide tensors), the chunk × chunk decay and UT matrices
  (fp32) and their 16-bit products, the 16-bit copies the chunk matmuls take, the per-chunk recurrent states,
  and the gated RMSNorm.

Outside the layers: the token ids, the final norm and the LM head's 16-bit input. The loss chain at the start
of the backward pass: the 16-bit logits, the fp32 log-softmax (kept by the loss) and the gradient coming in and
going out of it (12 bytes per vocabulary entry), or, if larger, the load-balancing loss's backward (three fp32
tensors of its probabilities' size), which runs first.

With ``checkpointing`` (every decoder layer recomputed in the backward pass) each layer keeps only its input (the
residual stream: fp32 under autocast), plus one layer's full activations while it is recomputed.

Not counted: the CUDA context, cuBLAS/cuBLASLt workspaces (2 × 32 MiB on Hopper, allocated through PyTorch's
allocator, so measured peaks include them), the caching allocator's rounding (up to 1 MiB per tensor), kernels'
transient buffers, communication buffers. Where PyTorch's CPU autocast differs (its flash kernel takes any head
dimension and the mask as it is; ``saved_per_token(..., backend="cpu")``), what CUDA does is counted.

Parallel layouts over N GPUs (``parallel``): ``ddp`` (everything replicated), ``zero1`` (optimizer states and
master copy sharded), ``zero2`` (+ gradients), ``zero3``/``fsdp`` (+ weights, with two decoder layers gathered
at a time: the one running and the one prefetched), ``tp`` (Megatron tensor parallel without sequence
parallelism: matrices and vocabulary split, norms and routers replicated, activations split except the
H-wide ones), ``pp`` (1F1B pipeline: layers split into N stages, the first stage holding N micro-batches of
activations, the last the loss; the busiest stage is reported) and ``ep`` (routed experts split, the rest
replicated).

Measured peaks to compare with (written by the trainer's benchmark, never by hand) live in
``bench/results/train-memory.json``::

    {"gpu": "<torch device name>",
     "rows": [{"model": "<catalog key or config label>",
               "config": {<config dict of the trained miniature>},
               "batch": <int>, "seq_len": <int>, "dtype": "bf16",
               "master_fp32": <bool>, "checkpointing": <bool>,
               "measured_peak_bytes": <int: torch.cuda.max_memory_allocated over the training steps>,
               "saved_bytes": <optional int: bytes autograd saved for the backward pass in one step
                               (saved_tensors_hooks, each storage once, parameters excluded)>,
               "saved_weight_copy_bytes": <optional int: the autocast weight copies among them>,
               "step_start_bytes": <optional int: torch.cuda.memory_allocated as a step starts>}]}

:func:`measured_rows` reads it and pairs each row with this module's estimate for the same settings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .architecture import Architecture, Source, resolve
from .errors import ArchLabError
from .spec import ArchSpec
from .working import Working, num

TRAIN_DTYPES = {"bf16": 2, "fp16": 2, "fp32": 4}
OPTIMIZERS = {"adamw": 2, "sgd": 1}
PARALLEL = ("none", "ddp", "zero1", "zero2", "zero3", "fsdp", "tp", "pp", "ep")
PARALLEL_LABELS = {
    "none": "one GPU",
    "ddp": "DDP",
    "zero1": "ZeRO-1",
    "zero2": "ZeRO-2",
    "zero3": "ZeRO-3",
    "fsdp": "FSDP (full shard)",
    "tp": "tensor parallel",
    "pp": "pipeline parallel (1F1B)",
    "ep": "expert parallel",
}
MAX_GPUS = 4096
MAX_TOKENS = 1 << 26
MEASURED_FILE = Path(__file__).resolve().parents[2] / "bench" / "results" / "train-memory.json"
PARTS = ("weights", "gradients", "master_weights", "optimizer_states", "activations", "loss", "gathered")
PART_LABELS = {
    "weights": "Weights",
    "gradients": "Gradients",
    "master_weights": "fp32 master weights",
    "optimizer_states": "Optimizer states",
    "activations": "Activations",
    "loss": "Loss (logits)",
    "gathered": "Gathered layers (ZeRO-3/FSDP)",
}
BACKENDS = ("cuda", "cpu")
# transformers' RMSNorms that scale by the weight in fp32 before casting back ((w · x̂).to(dtype) or x̂ · (1 + w)):
# on a 16-bit input they keep the normalised tensor in fp32; the others (Llama's w · x̂.to(dtype)) in 16 bits.
WEIGHT_FIRST_NORMS = frozenset(
    {"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text", "olmo2", "olmo3", "gpt_oss", "qwen3_next"}
)
DELTA_CHUNK = 64  # chunk length of transformers' torch_chunk_gated_delta_rule


@dataclass(frozen=True)
class Saved:
    """A group of tensors autograd keeps for the backward pass: bytes per token, and how they were counted."""

    what: str
    formula: str  # in symbols, bytes per token
    nbytes: float  # bytes per token
    wide: bool = False  # H-wide: kept whole on every GPU under tensor parallelism (else split)

    def text(self) -> str:
        return f"{self.what} [{self.formula}]"


@dataclass(frozen=True)
class LayerActivations:
    """Activation bytes per token of one decoder layer: the H-wide part (kept whole under tensor parallel)
    and the rest (split by tensor parallel)."""

    replicated: float
    split: float
    terms: tuple = ()

    @property
    def total(self) -> float:
        return self.replicated + self.split


@dataclass(frozen=True)
class TrainingMemory:
    model: str
    batch: int
    seq_len: int
    dtype: str
    master_fp32: bool
    checkpointing: bool
    optimizer: str
    parallel: str
    gpus: int
    parts: dict  # part -> bytes on the busiest GPU, at the peak moment
    activation_per_token: float  # bytes per token, all layers, without checkpointing (one GPU)
    activation_per_token_ckpt: float  # the same with checkpointing
    working: Working = field(compare=False, repr=False)
    moment: str = "backward"  # "backward" (start of the backward pass) or "optimizer" (the optimizer step)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))


# ----------------------------------------------------------------- what autograd saves, per token


class _Terms:
    """Collects the Saved groups of one layer (bytes per token; groups of 0 bytes are left out)."""

    def __init__(self):
        self.items: list[Saved] = []

    def add(self, what: str, formula: str, nbytes: float, wide: bool = False) -> None:
        if nbytes:
            self.items.append(Saved(what, formula, float(nbytes), wide))


def _rmsnorm(
    t: _Terms,
    what: str,
    width: int,
    rows: int,
    b_in: float,
    weight_first: bool,
    sym: str,
    rows_sym: str = "",
    wide: bool = False,
    layer_norm: bool = False,
    autocast: bool = True,
) -> None:
    """A norm over ``rows`` rows of ``width`` per token (``width`` is the total) with ``b_in``-byte input."""
    if layer_norm:  # native_layer_norm keeps its input (fp32 under autocast, which runs it in fp32), mean, 1/σ
        b = 4 if autocast else b_in
        t.add(what, f"{num(b)}·{sym} + 8{'·' + rows_sym if rows_sym else ''}", b * width + 8 * rows, wide)
        return
    normed = 4 if (weight_first or b_in == 4) else b_in
    rr = f" + 4·{rows_sym}" if rows_sym else " + 4"
    t.add(what, f"4·{sym} + {num(normed)}·{sym}{rr}", 4 * width + normed * width + 4 * rows, wide)


def _kernel(s: ArchSpec, d: int, dv: int, backend: str) -> str:
    """Which attention kernel runs: fused (cuDNN / flash / memory-efficient SDPA), flex attention, SDPA's math
    fallback, or eager attention.

    CUDA's fused SDPA kernels need 16-bit head rows of whole 16 bytes (head dimensions multiples of 8); the CPU's
    flash kernel takes any head dimension but one width for q, k and v. Both fall back to the math path otherwise,
    which upcasts 16-bit inputs to fp32. Attention sinks: transformers' gpt-oss has no SDPA; the trainer takes flex
    attention on a GPU, eager attention on the CPU."""
    if s.attention_sinks:
        return "eager" if backend == "cpu" else "flex"
    if backend == "cuda":
        return "math" if d % 8 or dv % 8 else "fused"
    return "math" if d != dv else "fused"


def _attention_core(
    t: _Terms,
    s: ArchSpec,
    nh: int,
    kvh: int,
    d: int,
    dv: int,
    S: int,
    masked: bool,
    ba: float,
    backend: str,
    head_major: bool,
) -> None:
    """The attention kernel's saved tensors for ``nh`` query heads over ``kvh`` key/value heads."""
    kernel = _kernel(s, d, dv, backend)
    if kernel == "flex":  # block masks (windows) and GQA inside the kernel; the sinks join through the log-sum-exp
        t.add(
            "flex attention: q, k, v, output, fp32 log-sum-exp",
            f"{num(ba)}·(nh·d + nkv·d + nkv·dv + nh·dv) + 4·nh",
            ba * (nh * d + kvh * d + kvh * dv + nh * dv) + 4 * nh,
        )
        t.add(
            "attention sinks: log-sum-exp with the sink (fp32), rescaled output for o_proj",
            f"16·nh + {num(ba)}·nh·dv",
            16 * nh + ba * nh * dv,
        )
        return
    if masked:
        kvh = nh  # transformers repeats k and v (repeat_kv) when a mask is passed
    if kernel == "fused":
        t.add(
            "attention kernel: q, k, v, output, fp32 log-sum-exp",
            f"{num(ba)}·(nh·d + kvh·d + kvh·dv + nh·dv) + 4·nh",
            ba * (nh * d + kvh * d + kvh * dv + nh * dv) + 4 * nh,
        )
        if masked:  # the boolean mask becomes an additive one in the query's dtype, kept for the backward pass
            t.add("additive mask (B × 1 × T × T)", f"{num(ba)}·T", ba * S)
        if head_major:
            t.add("attention output made contiguous for o_proj", f"{num(ba)}·nh·dv", ba * nh * dv)
    elif kernel == "math":  # SDPA's math path upcasts 16-bit inputs to fp32 on CUDA; k, v repeated to nh heads
        t.add(
            "attention (SDPA math path, fp32): q, k, v, T-wide softmax",
            "4·(nh·d + nh·d + nh·dv) + 4·nh·T",
            4 * (nh * d + nh * d + nh * dv) + 4 * nh * S,
        )
        if masked:
            t.add("additive mask (B × 1 × T × T)", "4·T", 4 * S)
        t.add("attention output cast back for o_proj", f"{num(ba)}·nh·dv", ba * nh * dv)
    else:  # eager with sinks (gpt-oss): scores + sink column softmaxed in fp32, probabilities cast to 16 bits
        t.add(
            "eager attention: q, repeated k, v, fp32 softmax over T+1, 16-bit probabilities, argmax, output copy",
            f"{num(ba)}·(2·nh·d + 2·nh·dv) + 4·nh·(T+1) + {num(ba)}·nh·T + 8·nh",
            ba * (2 * nh * d + 2 * nh * dv) + 4 * nh * (S + 1) + ba * nh * S + 8 * nh,
        )


def saved_per_token(
    s: ArchSpec, layer, seq_len: int, b_act: float = 2, autocast: bool = True, backend: str = "cuda"
) -> list[Saved]:
    """What autograd keeps for the backward pass of one decoder layer, per token (see the module docstring).

    ``autocast``: fp32 parameters with ``b_act``-byte matmuls (PyTorch autocast); else the model runs in
    ``b_act`` throughout. ``backend``: "cuda" (counted by the estimate) or "cpu" (PyTorch's CPU kernels, for the
    audit test)."""
    if backend not in BACKENDS:
        raise ArchLabError(f"backend must be one of {', '.join(BACKENDS)}")
    t = _Terms()
    ba, S, H = b_act, seq_len, s.hidden_size
    res = 4 if autocast else ba  # the residual stream: fp32 under autocast (fp32 embeddings + adds)
    wf = s.model_type in WEIGHT_FIRST_NORMS
    ln = s.norm_type == "LayerNorm"

    def inputs(what: str, calls: int) -> None:  # linear layers reading an H-wide, res-byte input
        if autocast and ba < 4:
            t.add(
                f"{what}: 16-bit copies of the input (one per linear)", f"{calls} × {num(ba)}·H", calls * ba * H, True
            )
        # otherwise the linear saves the norm's output itself, counted once with the norm below

    # ---- block norms
    n = layer.norms
    post = n if s.norm_placement == "post" else (n // 2 if s.norm_placement == "pre+post" else 0)
    pre = n - post
    if pre:
        _rmsnorm(
            t,
            f"{pre} pre-norm{'s' if pre > 1 else ''} (input, normalised, 1/RMS)",
            pre * H,
            pre,
            res,
            wf,
            f"{pre}·H" if pre > 1 else "H",
            f"{pre}" if pre > 1 else "",
            True,
            ln,
            autocast,
        )
    if post:
        _rmsnorm(
            t,
            f"{post} post-norm{'s' if post > 1 else ''} on sublayer outputs",
            post * H,
            post,
            ba,
            wf,
            f"{post}·H" if post > 1 else "H",
            f"{post}" if post > 1 else "",
            True,
            ln,
            autocast,
        )

    if not (autocast and ba < 4):  # the token mixer's and the MLP's inputs, each saved once by its projections
        t.add("projection inputs (token mixer, MLP)", f"2 × {num(ba)}·H", 2 * ba * H, True)

    # ---- token mixer
    if layer.attention == "linear":
        la = s.linear
        nk, nv, dk, dv = la.num_key_heads, la.num_value_heads, la.key_head_dim, la.value_head_dim
        conv = 2 * nk * dk + nv * dv
        C = DELTA_CHUNK
        chunks = -(-S // C)
        pad = chunks * C / S  # padded length over T
        inputs("in_proj_qkvz, in_proj_ba", 2)
        t.add(
            "causal conv: input and output (kernel − 1 extra positions)",
            f"{num(ba)}·K·(1 + (T + k_conv − 1)/T)",
            ba * conv * (1 + (S + la.conv_kernel - 1) / S),
        )
        t.add("β (sigmoid) and the decay (softplus input, scaled)", f"{num(ba)}·nv + 2 × 4·nv", ba * nv + 8 * nv)
        t.add(
            "chunked delta rule, fp32 copies (q, k normalised and padded, v, β·k, UT results)",
            "4·nv·(6·dk + 2·dv)",
            4 * nv * (6 * dk + 2 * dv) * pad,
        )
        t.add(
            "chunk × chunk decay and UT matrices (fp32) and their 16-bit matmul outputs",
            f"2 × 4·nv·C + 3 × {num(ba)}·nv·C",
            (8 + 3 * ba) * nv * C * pad,
        )
        # the scan over n chunks: the first chunk's state is zeros (no gradient), the last state update is dropped
        later = (chunks - 1) / chunks
        t.add(
            "16-bit copies taken by the chunk matmuls (before the scan; in it)",
            f"{num(ba)}·nv·(4·dk + 3·dk·(n − 1)/n + dv·(2n − 1)/n)",
            ba * nv * (4 * dk + 3 * dk * later + dv * (1 + later)) * pad,
        )
        t.add(
            "per-chunk recurrent states (two 16-bit copies each; fp32 but the last)",
            f"(2·{num(ba)} + 4·(n − 1)/n)·nv·dk·dv / C",
            (2 * ba + 4 * later) * nv * dk * dv / C * pad,
        )
        t.add("1/‖q‖, 1/‖k‖, β and three decay factors (fp32)", "6 × 4·nv", 24 * nv)
        t.add(
            "gated RMSNorm: fp32 input, scaled, gate, SiLU; 16-bit normalised; 1/RMS",
            f"4 × 4·nv·dv + {num(ba)}·nv·dv + 4·nv",
            16 * nv * dv + ba * nv * dv + 4 * nv,
        )
        t.add("out_proj input", f"{num(ba)}·nv·dv", ba * nv * dv)
    elif s.mla is not None:
        m, nh = s.mla, s.num_heads
        dqk = m.qk_nope_head_dim + m.qk_rope_head_dim
        inputs("q_a / kv_a projections", 2)
        if m.q_lora_rank:
            _rmsnorm(t, "query latent norm", m.q_lora_rank, 1, ba, wf, "r_q")
            t.add("q_b input (normalised latent)", f"{num(ba)}·r_q", ba * m.q_lora_rank)
        _rmsnorm(t, "key/value latent norm", m.kv_lora_rank, 1, ba, wf, "r_kv")
        t.add("kv_b input (normalised latent)", f"{num(ba)}·r_kv", ba * m.kv_lora_rank)
        _attention_core(t, s, nh, nh, dqk, m.v_head_dim, S, False, ba, backend, True)
    else:
        nh, nkv, d, dv = s.num_heads, s.num_kv_heads, s.head_dim, s.v_head_dim
        masked = layer.attention in ("sliding", "chunked") and bool(s.window) and s.window < S
        inputs("q, k, v projections", 3)
        if s.qk_norm in ("per-head", "full-width"):
            per_head = s.qk_norm == "per-head"
            _rmsnorm(t, "QK-norm on q", nh * d, nh if per_head else 1, ba, wf, "nh·d", "nh" if per_head else "")
            _rmsnorm(t, "QK-norm on k", nkv * d, nkv if per_head else 1, ba, wf, "nkv·d", "nkv" if per_head else "")
        elif s.qk_norm == "L2":
            t.add(
                "L2 QK-norm: inputs and 1/‖·‖",
                f"{num(ba)}·(nh + nkv)·d + 4·(nh + nkv)",
                ba * (nh + nkv) * d + 4 * (nh + nkv),
            )
        _attention_core(t, s, nh, nkv, d, dv, S, masked, ba, backend, s.rope_fraction < 1)
        if s.output_gate:
            t.add("output gate: sigmoid and gated output", f"2 × {num(ba)}·nh·dv", 2 * ba * nh * dv)

    # ---- MLP
    if layer.mlp == "dense":
        I = layer.dense_width
        if s.gated_mlp:
            inputs("gate, up projections", 2)
            t.add("MLP: gate and up outputs, activation, product", f"4 × {num(ba)}·I", 4 * ba * I)
        else:
            inputs("up projection", 1)
            t.add("MLP: up output, activation", f"2 × {num(ba)}·I", 2 * ba * I)
    else:
        m = s.moe
        E, k, I = m.num_experts, m.top_k, m.expert_width
        inputs("router", 1)
        if s.model_type == "gpt_oss":
            t.add("router: softmax over the k chosen logits, indices", f"{num(ba)}·k + 8·k", ba * k + 8 * k)
        elif m.scoring == "sigmoid":  # DeepSeek-style: scores in b_act; group-limited routing keeps its group picks
            grp = m.n_group if m.n_group > 1 else 0
            t.add(
                "router: sigmoid scores, top-2 per expert group, indices, normalised weights",
                f"{num(ba)}·E + {'2·8·n_group + ' if grp else ''}8·k + {num(ba)}·(k + 1)",
                ba * E + 16 * grp + 8 * k + ba * (k + 1),
            )
        else:
            t.add(
                "router: fp32 softmax over the experts, indices, normalised weights",
                "4·E + 8·k + 4·k + 4",
                4 * E + 8 * k + 4 * k + 4,
            )
        if not m.bias_corrected:
            t.add("load-balancing loss: fp32 router probabilities", "4·E", 4 * E)
        if s.model_type == "gpt_oss":  # clamped SwiGLU on interleaved gate/up: clamped gate, σ, GLU, up + 1, product
            inner, inner_sym = 2 * I + 5 * I, "7·I_e"
        elif s.gated_mlp:
            inner, inner_sym = 4 * I, "4·I_e"
        else:
            inner, inner_sym = 2 * I, "2·I_e"
        idx = 3 + (1 if m.expert_bias else 0)
        be = ba if experts_in_act_dtype(s, autocast) else 4
        t.add(
            "routed experts, per chosen expert: gathered token, expert tensors, output; weight; sort indices"
            + ("" if be == ba else " (fp32: widths not multiples of 8)"),
            f"k·({num(be)}·(2·H + {inner_sym} + 1) + {idx}·8)",
            k * (be * (2 * H + inner + 1) + 8 * idx),
        )
        if m.num_shared:
            Is = m.shared_width
            inputs("shared expert gate, up projections", 2)
            t.add("shared expert: gate and up outputs, activation, product", f"4 × {num(ba)}·I_s", 4 * ba * Is)
            if m.shared_gate:
                inputs("shared expert gate", 1)
                t.add("shared expert gate: sigmoid and the gated output", f"{num(ba)}·(H + 1)", ba * (H + 1))
    return t.items


def experts_in_act_dtype(s: ArchSpec, autocast: bool = True) -> bool:
    """Whether the routed experts run in the 16-bit compute dtype: the trainer's grouped GEMMs
    (``backend/train/experts.py``) need expert and hidden widths that are multiples of 8, and otherwise fall back to
    transformers' grouped GEMMs, which run in the fp32 parameters' dtype under autocast."""
    m = s.moe
    return m is None or not autocast or (s.hidden_size % 8 == 0 and m.expert_width % 8 == 0)


def _head_terms(s: ArchSpec, b_act: float, autocast: bool) -> list[Saved]:
    """Saved outside the decoder layers, per token: token ids (embedding, targets), final norm, LM head input."""
    t = _Terms()
    res = 4 if autocast else b_act
    t.add("token ids (embedding lookup and loss targets, int64)", "2 × 8", 16)
    _rmsnorm(
        t,
        "final norm",
        s.hidden_size,
        1,
        res,
        s.model_type in WEIGHT_FIRST_NORMS,
        "H",
        "",
        True,
        s.norm_type == "LayerNorm",
        autocast,
    )
    if autocast and b_act < 4:
        t.add("LM head input (16-bit copy)", f"{num(b_act)}·H", b_act * s.hidden_size, True)
    else:
        t.add("LM head input (final norm output)", f"{num(b_act)}·H", b_act * s.hidden_size, True)
    return t.items


def layer_activations(
    s: ArchSpec, b_act: float, seq_len: int = 4096, autocast: bool = True, backend: str = "cuda"
) -> list[LayerActivations]:
    """Activation bytes per token of each decoder layer (H-wide part, rest, and the terms counted)."""
    out = []
    for layer in s.layers:
        terms = saved_per_token(s, layer, seq_len, b_act, autocast, backend)
        out.append(
            LayerActivations(
                sum(x.nbytes for x in terms if x.wide), sum(x.nbytes for x in terms if not x.wide), tuple(terms)
            )
        )
    return out


def _layer_kind(s: ArchSpec, layer) -> str:
    mixer = {"linear": "linear-attention", "sliding": "sliding-window", "chunked": "chunked"}.get(
        layer.attention, "full-attention"
    )
    if s.mla is not None and layer.attention != "linear":
        mixer = "MLA"
    return f"{mixer} + {'MoE' if layer.mlp == 'moe' else 'dense MLP'}"


def _check_int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ArchLabError(f"{name} must be an integer from {lo} to {hi:,}, got {v!r}")
    return v


def _cast_components(s: ArchSpec, comp: dict) -> dict:
    """Parameters the matrix multiplications read (through autocast's 16-bit copies): all but the norms and the
    embedding table, which the lookup reads in fp32 (the LM head reads it when tied), and routed experts that run
    in fp32 (:func:`experts_in_act_dtype`)."""
    out = {k_: v for k_, v in comp.items() if k_ not in ("norms", "embeddings")}
    if not experts_in_act_dtype(s):
        out["routed_experts"] = 0
    if s.tied_embeddings:
        out["lm_head"] = out.get("lm_head", 0) + comp.get("embeddings", 0)
    return out


def _held(s: ArchSpec, comp: dict, parallel: str, N: int, w: Optional[Working], what: str = "parameters") -> float:
    """Parameters (of ``comp``) held by the busiest GPU."""
    P = sum(comp.values())
    if parallel in ("zero3", "fsdp"):
        f, n, v = "P / N", f"{num(P)} / {N}", P / N
    elif parallel == "tp":
        repl = comp.get("norms", 0) + comp.get("router", 0)
        f, n, v = (
            "(P − P_norms − P_router) / N + P_norms + P_router",
            f"({num(P)} − {num(repl)}) / {N} + {num(repl)}",
            (P - repl) / N + repl,
        )
    elif parallel == "ep":
        routed = comp.get("routed_experts", 0)
        f, n = "P − P_routed + P_routed / N", f"{num(P)} − {num(routed)} + {num(routed)} / {N}"
        v = P - routed + routed / N
    elif parallel == "pp":
        return _pp_params(s, comp, N, w, what)
    else:
        f, n, v = "P", num(P), P
    if w is not None:
        w.step(f"{what} held per GPU", f, n, v)
    return v


def training_memory(
    arch: Source,
    batch: int,
    seq_len: int,
    dtype: str = "bf16",
    master_fp32: bool = True,
    checkpointing: bool = False,
    optimizer: str = "adamw",
    parallel: str = "none",
    gpus: int = 1,
    activation_dtype: Optional[str] = None,
) -> TrainingMemory:
    """Training memory per GPU (busiest GPU) at the peak of one step on a micro-batch of ``batch`` × ``seq_len``
    tokens.

    ``dtype``: the parameters (bf16 / fp16 / fp32); with ``master_fp32`` and a 16-bit ``dtype``, fp32 parameters
    (the master copy) run under autocast in ``dtype``; ``activation_dtype`` defaults to ``dtype`` (bf16 with fp32
    parameters is PyTorch autocast too). See the module docstring for what is counted.
    """
    arch = arch if isinstance(arch, Architecture) else resolve(arch)
    _check_int("batch", batch, 1, MAX_TOKENS)
    _check_int("sequence length", seq_len, 1, MAX_TOKENS)
    if batch * seq_len > MAX_TOKENS:
        raise ArchLabError(f"batch × sequence length must be at most {MAX_TOKENS:,} tokens")
    for name, v in (("dtype", dtype), ("activation dtype", activation_dtype or dtype)):
        if v not in TRAIN_DTYPES:
            raise ArchLabError(f"{name} for training must be one of {', '.join(TRAIN_DTYPES)}, got {v!r}")
    if optimizer not in OPTIMIZERS:
        raise ArchLabError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if parallel not in PARALLEL:
        raise ArchLabError(f"parallel layout must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    N = _check_int("GPUs", gpus, 1, MAX_GPUS) if parallel != "none" else 1
    s, c = arch.spec, arch.counts
    if parallel == "ep" and s.moe is None:
        raise ArchLabError(f"expert parallel needs a model with routed experts; {arch.label} has none")
    if parallel == "ep" and N > s.moe.num_experts:
        raise ArchLabError(
            f"expert parallel over {N} GPUs needs at least {N} experts; {arch.label} has {s.moe.num_experts}"
        )
    if parallel == "pp" and N > s.num_layers:
        raise ArchLabError(
            f"pipeline parallel over {N} GPUs needs at least {N} layers; {arch.label} has {s.num_layers}"
        )

    b = TRAIN_DTYPES[dtype]
    ba = TRAIN_DTYPES[activation_dtype or dtype]
    master = master_fp32 and b < 4
    autocast = ba < 4 and (master or b == 4)  # fp32 parameters, 16-bit matrix multiplications
    bp = 4 if master else b  # the parameters (and their gradients)
    bs = 4 if (master or b == 4) else b
    k = OPTIMIZERS[optimizer]
    T = batch * seq_len
    P = c.total
    comp = c.components
    w = Working(
        f"Training memory of {arch.label}: {batch} × {seq_len:,} tokens, {dtype}"
        + (" + fp32 master" if master else "")
        + (" (autocast)" if autocast else "")
        + f", {optimizer}, {PARALLEL_LABELS[parallel]}"
        + (f" over {N} GPUs" if parallel != "none" else "")
    )

    # ---- parameters, their 16-bit copies, gradients, optimizer states
    held = _held(s, comp, parallel, N, w)
    parts = dict.fromkeys(PARTS, 0.0)
    if autocast:
        cast_comp = _cast_components(s, comp)
        cast_held = _held(s, cast_comp, parallel, N, None)
        w.step(
            "matrix parameters held (read by the matmuls through 16-bit copies)",
            "P_held − norms − embedding table (the LM head reads it when tied)"
            + ("" if experts_in_act_dtype(s) else " − routed experts (run in fp32)"),
            f"{num(cast_held)}",
            cast_held,
        )
        copies = w.step(
            "16-bit weight copies (autocast casts each matrix once per forward, kept for backward)",
            "P_matrices,held × b_act",
            f"{num(cast_held)} × {ba}",
            cast_held * ba,
            "B",
        )
    else:
        copies = 0.0
    own = 0.0 if master else held * b  # the parameters themselves, when they are not the fp32 master copy
    weights = w.step(
        "weights",
        ("P_held × b + " if not master else "") + "16-bit copies" if autocast else "P_held × b",
        (f"{num(held)} × {b} + " if not master else "") + num(copies) if autocast else f"{num(held)} × {b}",
        own + copies,
        "B",
    )
    g_held = held / N if parallel == "zero2" else held
    grads = w.step(
        "gradients (all, once the backward pass is done)",
        "P_grad × b_param"
        + (" (sharded: P_held / N)" if parallel == "zero2" else "")
        + (" (fp32, as the fp32 parameters they belong to)" if master else ""),
        f"{num(g_held)} × {bp}",
        g_held * bp,
        "B",
    )
    o_held = held / N if parallel in ("zero1", "zero2") else held
    if master:
        parts["master_weights"] = w.step(
            "fp32 master weights (the parameters)", "P_opt × 4", f"{num(o_held)} × 4", o_held * 4, "B"
        )
    parts["optimizer_states"] = w.step(
        f"optimizer states ({optimizer}: {k} per parameter)",
        "P_opt × states × b_state",
        f"{num(o_held)} × {k} × {bs}",
        o_held * k * bs,
        "B",
    )
    if parallel in ("zero3", "fsdp"):
        per_layer = (P - comp.get("embeddings", 0) - comp.get("lm_head", 0)) / s.num_layers
        parts["gathered"] = w.step(
            "gathered layers (running + prefetched)",
            "2 × P_layer × b × (N − 1) / N",
            f"2 × {num(per_layer)} × {b} × {N - 1} / {N}",
            2 * per_layer * b * (N - 1) / N,
            "B",
        )

    # ---- activations: what autograd saved, per token
    layers = layer_activations(s, ba, seq_len, autocast)
    head = _head_terms(s, ba, autocast)
    done: set[str] = set()
    for layer, la in zip(s.layers, layers):
        kind = _layer_kind(s, layer)
        if kind in done:
            continue
        done.add(kind)
        count = sum(1 for x in s.layers if _layer_kind(s, x) == kind)
        w.step(
            f"saved per token by a {kind} layer (× {count})",
            " + ".join(x.text() for x in la.terms),
            " + ".join(num(x.nbytes) for x in la.terms),
            la.total,
            "B",
        )
    tp = N if parallel == "tp" else 1
    full_tok = sum(l.total for l in layers)
    w.step(
        "activations per token, all layers (no checkpointing)",
        "Σ over layers of saved bytes per token",
        _grouped([l.total for l in layers]),
        full_tok,
        "B",
    )
    head_tok = w.step(
        "saved per token outside the layers",
        " + ".join(x.text() for x in head),
        " + ".join(num(x.nbytes) for x in head),
        sum(x.nbytes for x in head),
        "B",
    )
    head_split = sum(x.nbytes for x in head if not x.wide)
    H = s.hidden_size
    res = 4 if autocast else ba
    biggest_full = max(l.total for l in layers)
    ckpt_tok = w.step(
        "activations per token with checkpointing",
        "n_layers × H × b_residual + largest layer",
        f"{s.num_layers} × {H:,} × {res} + {num(biggest_full)}",
        s.num_layers * H * res + biggest_full,
        "B",
    )
    V = s.vocab_size
    aux = (
        4 * s.moe.num_experts * sum(1 for x in s.layers if x.mlp == "moe")
        if s.moe is not None and not s.moe.bias_corrected
        else 0
    )
    if 3 * aux > 8 * V:
        loss_tok = w.step(
            "loss chain per token at the start of backward",
            "V × (b_act + 4) + 3 × A  (logits, fp32 log-softmax; the balancing loss's backward first: "
            "A = 4 × E × MoE layers, its probabilities' gradient, the softmax's gradient, a temporary)",
            f"{V:,} × ({ba} + 4) + 3 × {num(aux)}",
            V * (ba + 4) + 3 * aux,
            "B",
        )
    else:
        loss_tok = w.step(
            "loss chain per token at the start of backward",
            "V × (b_act + 4 + 8)  (logits, fp32 log-softmax, its gradient in and out)",
            f"{V:,} × ({ba} + 12)",
            V * (ba + 12),
            "B",
        )
    if parallel == "pp":
        act, loss = _pp_activations(s, layers, N, T, res, checkpointing, loss_tok, head_tok, w)
    else:
        if checkpointing:
            biggest = max(l.replicated + l.split / tp for l in layers)
            per_tok = s.num_layers * H * res + biggest
            w.step(
                "activations per token on this GPU",
                "n_layers × H × b_residual + largest layer" + (" / TP" if tp > 1 else ""),
                f"{s.num_layers} × {H:,} × {res} + {num(biggest)}",
                per_tok,
                "B",
            )
        else:
            per_tok = sum(l.replicated + l.split / tp for l in layers)
            if tp > 1:
                w.step(
                    "activations per token on this GPU",
                    "Σ (H-wide + rest / N)",
                    f"{num(sum(l.replicated for l in layers))} + {num(sum(l.split for l in layers))} / {N}",
                    per_tok,
                    "B",
                )
        head_gpu = head_tok - head_split + head_split / tp
        act = w.step(
            "activations",
            "tokens × (bytes per token + outside the layers)",
            f"{T:,} × ({num(per_tok)} + {num(head_gpu)})",
            T * (per_tok + head_gpu),
            "B",
        )
        loss = w.step(
            "loss (logits)",
            "tokens × loss per token" + (" / N (vocabulary split)" if tp > 1 else ""),
            f"{T:,} × {num(loss_tok)}" + (f" / {N}" if tp > 1 else ""),
            T * loss_tok / tp,
            "B",
        )

    # ---- the two moments
    keeps_grads = parallel != "none"
    start = dict(parts, weights=weights, activations=act, loss=loss, gradients=grads if keeps_grads else 0.0)
    a_total = w.step(
        "at the start of the backward pass",
        "weights + master + optimizer states + activations + loss"
        + (" + gathered" if parts["gathered"] else "")
        + (
            " + gradients (kept in the layout's buffers)"
            if keeps_grads
            else " (no gradients yet: the previous step's were freed)"
        ),
        " + ".join(num(int(v)) for v in start.values() if v),
        sum(start.values()),
        "B",
    )
    moment, peak = "backward", start
    if not keeps_grads:
        step = dict.fromkeys(PARTS, 0.0)
        step.update(
            weights=own,
            gradients=grads,
            master_weights=parts["master_weights"],
            optimizer_states=parts["optimizer_states"],
        )
        b_total = w.step(
            "at the optimizer step",
            "parameters + master + optimizer states + gradients"
            + (" (activations and 16-bit copies freed)" if autocast else " (activations freed)"),
            " + ".join(num(int(v)) for v in step.values() if v),
            sum(step.values()),
            "B",
        )
        if b_total > a_total:
            moment, peak = "optimizer", step
    w.step(
        "total per GPU",
        "max(start of backward, optimizer step): the "
        + ("optimizer step" if moment == "optimizer" else "start of backward"),
        " + ".join(num(int(v)) for v in peak.values() if v),
        sum(peak.values()),
        "B",
    )
    w.note(_symbols(s, seq_len))
    w.note(
        "Not counted: the CUDA context, cuBLAS/cuBLASLt workspaces (2 × 32 MiB on Hopper, which measured peaks "
        "include), the caching allocator's rounding, kernels' transient buffers, communication buffers."
    )
    if layers and any(l.attention == "linear" for l in s.layers):
        w.note(
            "Linear attention is counted as transformers' PyTorch chunked gated delta rule runs it (no "
            "flash-linear-attention); fused kernels keep far less."
        )
    if s.attention_sinks:
        w.note(
            "Attention sinks: counted as a fused kernel (flex attention, the trainer's choice on a GPU); "
            "transformers' eager default keeps each head's T × (T + 1) fp32 softmax and 16-bit probabilities."
        )
    if parallel == "tp":
        w.note(
            "Tensor parallel assumes the heads and widths divide by N; without sequence parallelism the H-wide "
            "activations are kept whole on every GPU."
        )
    return TrainingMemory(
        arch.label,
        batch,
        seq_len,
        dtype,
        master,
        checkpointing,
        optimizer,
        parallel,
        N,
        {k_: int(round(v)) for k_, v in peak.items()},
        full_tok,
        ckpt_tok,
        w,
        moment,
    )


def _symbols(s: ArchSpec, seq_len: int) -> str:
    """What the symbols in the per-layer formulas stand for, with this model's values."""
    kinds = {layer.attention for layer in s.layers}
    out = [f"H = {s.hidden_size:,} (hidden)", f"T = {seq_len:,} (tokens per sequence)", f"V = {s.vocab_size:,}"]
    if kinds - {"linear"}:
        if s.mla is not None:
            m = s.mla
            out += [
                f"nh = {s.num_heads} heads",
                f"d = {m.qk_nope_head_dim + m.qk_rope_head_dim} (q·k width)",
                f"dv = {m.v_head_dim}",
                f"r_q = {m.q_lora_rank or 0}",
                f"r_kv = {m.kv_lora_rank} (latent ranks)",
            ]
        else:
            out += [
                f"nh = {s.num_heads}",
                f"nkv = {s.num_kv_heads} (query, key/value heads)",
                f"d = {s.head_dim}",
                f"dv = {s.v_head_dim}",
                "kvh = the k/v heads the kernel gets (nh when a mask makes transformers repeat them)",
            ]
    if "linear" in kinds and s.linear is not None:
        la = s.linear
        out += [
            f"in linear-attention layers nk = {la.num_key_heads}, nv = {la.num_value_heads} (key, value heads), "
            f"dk = {la.key_head_dim}, dv = {la.value_head_dim}",
            f"K = {2 * la.num_key_heads * la.key_head_dim + la.num_value_heads * la.value_head_dim} (conv channels)",
            f"k_conv = {la.conv_kernel}",
            f"C = {DELTA_CHUNK} (chunk)",
            f"n = {-(-seq_len // DELTA_CHUNK)} chunks",
        ]
    dense = [layer.dense_width for layer in s.layers if layer.mlp == "dense"]
    if dense:
        out.append(f"I = {max(dense):,} (MLP width)")
    if s.moe is not None:
        m = s.moe
        out += [f"E = {m.num_experts} experts", f"k = {m.top_k} chosen", f"I_e = {m.expert_width:,} (expert width)"]
        if m.num_shared:
            out.append(f"I_s = {m.shared_width:,} (shared expert width)")
        if m.n_group > 1:
            out.append(f"n_group = {m.n_group}")
    return (
        "Symbols: " + "; ".join(out) + ". Numbers in a formula are bytes per element (2 for bf16, 4 for fp32, "
        "8 for int64)."
    )


def _grouped(values: list[float]) -> str:
    """'3 × 1,024 + 58 × 2,048' for a list of per-layer values."""
    counts: dict[float, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return " + ".join(f"{n} × {num(v)}" for v, n in counts.items())


def _stages(n_layers: int, N: int) -> list[range]:
    per, extra = divmod(n_layers, N)
    out, start = [], 0
    for i in range(N):
        size = per + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _pp_params(s: ArchSpec, comp: dict, N: int, w: Optional[Working], what: str = "parameters") -> float:
    """Parameters of the busiest pipeline stage (first: embeddings, last: final norm + LM head)."""
    body = sum(v for k_, v in comp.items() if k_ not in ("embeddings", "lm_head"))
    per_layer = body / s.num_layers
    stages = _stages(s.num_layers, N)
    first = len(stages[0]) * per_layer + comp.get("embeddings", 0)
    last = len(stages[-1]) * per_layer + comp.get("lm_head", 0) + (comp.get("embeddings", 0) if N == 1 else 0)
    held = max(first, last)
    if w is not None:
        w.step(
            f"{what} held by the busiest stage",
            "max(layers₀ × P_layer + P_emb, layers_last × P_layer + P_head)",
            f"max({len(stages[0])} × {num(per_layer)} + {num(comp.get('embeddings', 0))}, {len(stages[-1])} × "
            f"{num(per_layer)} + {num(comp.get('lm_head', 0))})",
            held,
        )
    return held


def _pp_activations(
    s: ArchSpec,
    layers: list[LayerActivations],
    N: int,
    T: int,
    res: float,
    ckpt: bool,
    loss_tok: float,
    head_tok: float,
    w: Working,
) -> tuple[float, float]:
    """(activations, loss) of the busiest stage under 1F1B: stage i keeps N − i micro-batches in flight; the
    last stage also keeps what is saved outside the layers and the loss."""
    H = s.hidden_size
    best = (0.0, 0.0, 0)
    for i, st in enumerate(_stages(s.num_layers, N)):
        mine = [layers[j] for j in st]
        if ckpt:
            per_tok = len(mine) * H * res
            extra = max(l.total for l in mine)
        else:
            per_tok, extra = sum(l.total for l in mine), 0.0
        last = i == N - 1
        act = (N - i) * T * per_tok + T * extra + (T * head_tok if last else 0.0)
        loss = T * loss_tok if last else 0.0
        if act + loss > best[0] + best[1]:
            best = (act, loss, i)
    act, loss, i = best
    w.step(
        f"activations of the busiest stage (stage {i}, {N - i} micro-batches in flight)",
        "in-flight micro-batches × tokens × stage bytes per token"
        + (" + one recomputed layer" if ckpt else "")
        + (" + saved outside the layers" if i == N - 1 else ""),
        f"{N - i} × {T:,} × …",
        act,
        "B",
    )
    w.step(
        "loss (logits) on that stage",
        "tokens × loss per token (last stage only)",
        f"{T:,} × {num(loss_tok)}" if loss else "0 (not the last stage)",
        loss,
        "B",
    )
    return act, loss


# ----------------------------------------------------------------- measured peaks


@dataclass(frozen=True)
class MeasuredTraining:
    gpu: str
    model: str
    batch: int
    seq_len: int
    dtype: str
    master_fp32: bool
    checkpointing: bool
    measured_peak_bytes: int
    estimate: TrainingMemory
    saved_bytes: Optional[int] = None  # what autograd saved in one step, when the benchmark recorded it
    step_start_bytes: Optional[int] = None  # allocated as a step starts (weights, optimizer states, workspaces)

    @property
    def ratio(self) -> float:
        """measured / estimated."""
        return self.measured_peak_bytes / self.estimate.total


def _opt_int(r: dict, key: str) -> Optional[int]:
    v = r.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 50:
        raise ValueError(f"{key} {v!r}")
    return v


def measured_rows(path: Optional[Path] = None) -> list[MeasuredTraining]:
    """Rows of ``bench/results/train-memory.json`` (or ``path``) with the estimate for the same settings
    ([] if the file is absent)."""
    path = Path(path) if path is not None else MEASURED_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        gpu, rows = str(data["gpu"]), data["rows"]
        out = []
        for r in rows:
            cfg = dict(r["config"])
            cfg.setdefault("_name_or_path", str(r["model"]))
            est = training_memory(
                resolve(cfg),
                int(r["batch"]),
                int(r["seq_len"]),
                str(r["dtype"]),
                bool(r["master_fp32"]),
                bool(r["checkpointing"]),
            )
            peak = int(r["measured_peak_bytes"])
            if not 0 < peak < 1 << 50 or math.isnan(peak):
                raise ValueError(f"measured_peak_bytes {peak}")
            out.append(
                MeasuredTraining(
                    gpu,
                    str(r["model"]),
                    est.batch,
                    est.seq_len,
                    est.dtype,
                    bool(r["master_fp32"]),
                    est.checkpointing,
                    peak,
                    est,
                    _opt_int(r, "saved_bytes"),
                    _opt_int(r, "step_start_bytes"),
                )
            )
        return out
    except ArchLabError as e:
        raise ArchLabError(f"{path.name}: {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArchLabError(
            f"{path.name} does not have the documented format ({type(e).__name__}: {str(e)[:120]})"
        ) from None
