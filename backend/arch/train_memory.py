"""Training memory: weights, gradients, optimizer states and activations, split over GPUs.

:func:`training_memory` counts, per GPU, for a micro-batch of ``batch`` sequences of ``seq_len`` tokens:

- weights P × b (b = bytes of ``dtype``), gradients P × b;
- with ``master_fp32`` (mixed precision, ``dtype`` 16-bit): an fp32 master copy 4P, and the optimizer
  states in fp32; without it the states are kept in ``dtype``. AdamW keeps two states (m, v), SGD with
  momentum one;
- activations saved for the backward pass, per token and layer, read from the ArchSpec: the input of every
  norm, the input of the attention and MLP projections, queries, keys, values and the attention output
  (flash/SDPA attention: no T × T matrix, plus a 4-byte log-sum-exp per head), QK-norm inputs, the MLP's
  gate/up/activation/product tensors, for MoE the router scores and, per routed expert, the gathered input,
  its MLP tensors and its output; the loss keeps the logits in ``dtype`` plus fp32 log-softmax and its
  gradient (8 bytes per vocabulary entry);
- with ``checkpointing`` (every decoder layer recomputed in the backward pass): each layer keeps only its
  input, plus one layer's full activations while it is recomputed.

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
               "measured_peak_bytes": <int: torch.cuda.max_memory_allocated over the training steps>}]}

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
PARALLEL_LABELS = {"none": "one GPU", "ddp": "DDP", "zero1": "ZeRO-1", "zero2": "ZeRO-2", "zero3": "ZeRO-3",
                   "fsdp": "FSDP (full shard)", "tp": "tensor parallel", "pp": "pipeline parallel (1F1B)",
                   "ep": "expert parallel"}
MAX_GPUS = 4096
MAX_TOKENS = 1 << 26
MEASURED_FILE = Path(__file__).resolve().parents[2] / "bench" / "results" / "train-memory.json"
PARTS = ("weights", "gradients", "master_weights", "optimizer_states", "activations", "loss", "gathered")
PART_LABELS = {"weights": "Weights", "gradients": "Gradients", "master_weights": "fp32 master weights",
               "optimizer_states": "Optimizer states", "activations": "Activations", "loss": "Loss (logits)",
               "gathered": "Gathered layers (ZeRO-3/FSDP)"}


@dataclass(frozen=True)
class LayerActivations:
    """Activation bytes per token of one decoder layer: the H-wide part (kept whole under tensor parallel)
    and the rest (split by tensor parallel)."""
    replicated: float
    split: float

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
    parts: dict                  # part -> bytes on the busiest GPU
    activation_per_token: float  # bytes per token, all layers, without checkpointing (one GPU)
    activation_per_token_ckpt: float  # the same with checkpointing
    working: Working = field(compare=False, repr=False)

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))


def _elements(s: ArchSpec, layer) -> tuple[float, float]:
    """(H-wide elements, other elements) saved per token by one decoder layer, and 4-byte LSE bytes apart."""
    H = s.hidden_size
    wide = layer.norms * H + 2 * H  # norm inputs; inputs of the attention and MLP projections
    other = 0.0
    if layer.attention == "linear":
        la = s.linear
        kd, vd = la.num_key_heads * la.key_head_dim, la.num_value_heads * la.value_head_dim
        # q, k, v, z projections; conv input and output; beta and decay; core output; gated norm in/out
        other += (2 * kd + 2 * vd) + 2 * (2 * kd + vd) + 2 * la.num_value_heads + vd + 2 * vd
    elif s.mla is not None:
        m, nh = s.mla, s.num_heads
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = 2 * m.q_lora_rank if m.q_lora_rank else 0           # q_a output (norm input), normed q
        kv = (m.kv_lora_rank + m.qk_rope_head_dim) + m.kv_lora_rank  # kv_a output, normed latent
        other += q + kv + nh * qk + nh * qk + nh * m.v_head_dim + nh * m.v_head_dim  # Q, K, V, output
    else:
        nh, nkv, d, dv = s.num_heads, s.num_kv_heads, s.head_dim, s.v_head_dim
        other += nh * d + nkv * d + nkv * dv + nh * dv
        if s.qk_norm in ("per-head", "full-width"):
            other += nh * d + nkv * d
        if s.output_gate:
            other += 2 * nh * dv
    if layer.mlp == "dense":
        other += (4 if s.gated_mlp else 2) * layer.dense_width
    else:
        m = s.moe
        per_expert = (4 if s.gated_mlp else 2) * m.expert_width
        other += m.num_experts + m.top_k * (2 * H + per_expert)
        if m.num_shared:
            other += (4 if s.gated_mlp else 2) * m.shared_width
    return wide, other


def layer_activations(s: ArchSpec, b_act: float) -> list[LayerActivations]:
    """Activation bytes per token of each decoder layer."""
    out = []
    for layer in s.layers:
        wide, other = _elements(s, layer)
        lse = 4 * s.num_heads if layer.attention != "linear" else 0
        out.append(LayerActivations(wide * b_act, other * b_act + lse))
    return out


def _check_int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ArchLabError(f"{name} must be an integer from {lo} to {hi:,}, got {v!r}")
    return v


def training_memory(arch: Source, batch: int, seq_len: int, dtype: str = "bf16", master_fp32: bool = True,
                    checkpointing: bool = False, optimizer: str = "adamw", parallel: str = "none", gpus: int = 1,
                    activation_dtype: Optional[str] = None) -> TrainingMemory:
    """Training memory per GPU (busiest GPU) for a micro-batch of ``batch`` × ``seq_len`` tokens.

    ``dtype``: parameters and gradients (bf16 / fp16 / fp32); ``activation_dtype`` defaults to ``dtype``
    (bf16 with fp32 parameters is PyTorch autocast). See the module docstring for what is counted.
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
        raise ArchLabError(f"expert parallel over {N} GPUs needs at least {N} experts; {arch.label} has {s.moe.num_experts}")
    if parallel == "pp" and N > s.num_layers:
        raise ArchLabError(f"pipeline parallel over {N} GPUs needs at least {N} layers; {arch.label} has {s.num_layers}")

    b = TRAIN_DTYPES[dtype]
    ba = TRAIN_DTYPES[activation_dtype or dtype]
    master = master_fp32 and b < 4
    bs = 4 if (master or b == 4) else b
    k = OPTIMIZERS[optimizer]
    T = batch * seq_len
    P = c.total
    comp = c.components
    w = Working(f"Training memory of {arch.label}: {batch} × {seq_len:,} tokens, {dtype}"
                + (" + fp32 master" if master else "") + f", {optimizer}, {PARALLEL_LABELS[parallel]}"
                + (f" over {N} GPUs" if parallel != "none" else ""))

    # ---- what each GPU holds of the parameters (fraction per component)
    if parallel in ("zero3", "fsdp"):
        held = w.step("parameters held per GPU", "P / N", f"{num(P)} / {N}", P / N)
    elif parallel == "tp":
        repl = comp.get("norms", 0) + comp.get("router", 0)
        held = w.step("parameters held per GPU", "(P − P_norms − P_router) / N + P_norms + P_router",
                      f"({num(P)} − {num(repl)}) / {N} + {num(repl)}", (P - repl) / N + repl)
    elif parallel == "ep":
        routed = comp.get("routed_experts", 0)
        held = w.step("parameters held per GPU", "P − P_routed + P_routed / N",
                      f"{num(P)} − {num(routed)} + {num(routed)} / {N}", P - routed + routed / N)
    elif parallel == "pp":
        held = _pp_params(s, comp, N, w)
    else:
        held = w.step("parameters held per GPU", "P", num(P), P)

    parts = dict.fromkeys(PARTS, 0.0)
    parts["weights"] = w.step("weights", "P_held × b", f"{num(held)} × {b}", held * b, "B")
    g_held = held / N if parallel in ("zero2",) else held
    parts["gradients"] = w.step("gradients", "P_grad × b" + (" (sharded: P_held / N)" if parallel == "zero2" else ""),
                                f"{num(g_held)} × {b}", g_held * b, "B")
    o_held = held / N if parallel in ("zero1", "zero2") else held
    if master:
        parts["master_weights"] = w.step("fp32 master weights", "P_opt × 4", f"{num(o_held)} × 4", o_held * 4, "B")
    parts["optimizer_states"] = w.step(f"optimizer states ({optimizer}: {k} per parameter)", "P_opt × states × b_state",
                                       f"{num(o_held)} × {k} × {bs}", o_held * k * bs, "B")
    if parallel in ("zero3", "fsdp"):
        per_layer = (P - comp.get("embeddings", 0) - comp.get("lm_head", 0)) / s.num_layers
        parts["gathered"] = w.step("gathered layers (running + prefetched)", "2 × P_layer × b × (N − 1) / N",
                                   f"2 × {num(per_layer)} × {b} × {N - 1} / {N}", 2 * per_layer * b * (N - 1) / N, "B")

    # ---- activations
    layers = layer_activations(s, ba)
    tp = N if parallel == "tp" else 1
    full_tok = sum(l.total for l in layers)
    biggest = max(l.replicated + l.split / tp for l in layers)
    w.step("activations per token, all layers (no checkpointing)", "Σ over layers of saved bytes per token",
           _grouped([l.total for l in layers]), full_tok, "B")
    H = s.hidden_size
    ckpt_tok = w.step("activations per token with checkpointing", "n_layers × H × b_act + largest layer",
                      f"{s.num_layers} × {H:,} × {ba} + {num(max(l.total for l in layers))}",
                      s.num_layers * H * ba + max(l.total for l in layers), "B")
    V = s.vocab_size
    loss_tok = w.step("loss per token", "V × (b_act + 8)  (logits + fp32 log-softmax + its gradient)",
                      f"{V:,} × ({ba} + 8)", V * (ba + 8), "B")
    if parallel == "pp":
        act, loss = _pp_activations(s, layers, N, T, ba, checkpointing, loss_tok, w)
    else:
        if checkpointing:
            per_tok = s.num_layers * H * ba + biggest
            w.step("activations per token on this GPU", "n_layers × H × b_act + largest layer"
                   + (" / TP" if tp > 1 else ""), f"{s.num_layers} × {H:,} × {ba} + {num(biggest)}", per_tok, "B")
        else:
            per_tok = sum(l.replicated + l.split / tp for l in layers)
            if tp > 1:
                w.step("activations per token on this GPU", "Σ (H-wide + rest / N)",
                       f"{num(sum(l.replicated for l in layers))} + {num(sum(l.split for l in layers))} / {N}",
                       per_tok, "B")
        act = w.step("activations", "tokens × bytes per token", f"{T:,} × {num(per_tok)}", T * per_tok, "B")
        loss = w.step("loss (logits)", "tokens × loss per token" + (" / N (vocabulary split)" if tp > 1 else ""),
                      f"{T:,} × {num(loss_tok)}" + (f" / {N}" if tp > 1 else ""), T * loss_tok / tp, "B")
    parts["activations"], parts["loss"] = act, loss
    total = w.step("total per GPU", "Σ parts", " + ".join(num(int(v)) for v in parts.values() if v),
                   sum(parts.values()), "B")
    del total
    w.note("Not counted: CUDA context and kernels' workspaces, allocator fragmentation, communication buffers "
           "(DDP gradient buckets, all-to-all), dropout masks.")
    if parallel == "tp":
        w.note("Tensor parallel assumes the heads and widths divide by N; without sequence parallelism the H-wide "
               "activations are kept whole on every GPU.")
    return TrainingMemory(arch.label, batch, seq_len, dtype, master, checkpointing, optimizer, parallel, N,
                          {k_: int(round(v)) for k_, v in parts.items()}, full_tok, ckpt_tok, w)


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


def _pp_params(s: ArchSpec, comp: dict, N: int, w: Working) -> float:
    """Parameters of the busiest pipeline stage (first: embeddings, last: final norm + LM head)."""
    body = sum(v for k_, v in comp.items() if k_ not in ("embeddings", "lm_head"))
    per_layer = body / s.num_layers
    stages = _stages(s.num_layers, N)
    first = len(stages[0]) * per_layer + comp.get("embeddings", 0)
    last = len(stages[-1]) * per_layer + comp.get("lm_head", 0) + (comp.get("embeddings", 0) if N == 1 else 0)
    held = max(first, last)
    w.step("parameters held by the busiest stage", "max(layers₀ × P_layer + P_emb, layers_last × P_layer + P_head)",
           f"max({len(stages[0])} × {num(per_layer)} + {num(comp.get('embeddings', 0))}, {len(stages[-1])} × "
           f"{num(per_layer)} + {num(comp.get('lm_head', 0))})", held)
    return held


def _pp_activations(s: ArchSpec, layers: list[LayerActivations], N: int, T: int, ba: float, ckpt: bool,
                    loss_tok: float, w: Working) -> tuple[float, float]:
    """(activations, loss) of the busiest stage under 1F1B: stage i keeps N − i micro-batches in flight."""
    H = s.hidden_size
    best = (0.0, 0.0, 0)
    for i, st in enumerate(_stages(s.num_layers, N)):
        mine = [layers[j] for j in st]
        if ckpt:
            per_tok = len(mine) * H * ba
            extra = max(l.total for l in mine)
        else:
            per_tok, extra = sum(l.total for l in mine), 0.0
        act = (N - i) * T * per_tok + T * extra
        loss = T * loss_tok if i == N - 1 else 0.0
        if act + loss > best[0] + best[1]:
            best = (act, loss, i)
    act, loss, i = best
    w.step(f"activations of the busiest stage (stage {i}, {N - i} micro-batches in flight)",
           "in-flight micro-batches × tokens × stage bytes per token" + (" + one recomputed layer" if ckpt else ""),
           f"{N - i} × {T:,} × …", act, "B")
    w.step("loss (logits) on that stage", "tokens × loss per token (last stage only)",
           f"{T:,} × {num(loss_tok)}" if loss else "0 (not the last stage)", loss, "B")
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

    @property
    def ratio(self) -> float:
        """measured / estimated."""
        return self.measured_peak_bytes / self.estimate.total


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
            est = training_memory(resolve(cfg), int(r["batch"]), int(r["seq_len"]), str(r["dtype"]),
                                  bool(r["master_fp32"]), bool(r["checkpointing"]))
            peak = int(r["measured_peak_bytes"])
            if not 0 < peak < 1 << 50 or math.isnan(peak):
                raise ValueError(f"measured_peak_bytes {peak}")
            out.append(MeasuredTraining(gpu, str(r["model"]), est.batch, est.seq_len, est.dtype, bool(r["master_fp32"]),
                                        est.checkpointing, peak, est))
        return out
    except ArchLabError as e:
        raise ArchLabError(f"{path.name}: {e}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ArchLabError(f"{path.name} does not have the documented format ({type(e).__name__}: {str(e)[:120]})") from None
