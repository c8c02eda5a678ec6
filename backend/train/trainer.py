"""One miniature in training: build it, take steps on the shared batch stream, evaluate, save.

nanoGPT-style and short on purpose: AdamW (decay on matrices only; fused on a GPU), warm-up + cosine
learning rate, gradient clipping, bf16 autocast on a GPU and fp32 on the CPU, cross-entropy over every
position (text) or over the answers only (probes). MoE routers are watched and balanced by
:class:`~backend.train.router_stats.RouterStats`. Losses stay on the device and are read back once per
log interval, so a GPU step needs no host synchronisation.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..arch.meta import building
from .budget import Sized
from .data import StreamHash
from .probes import IGNORE, ProbeBatch, ProbeTask, accuracy, accuracy_by_distance
from .recipe import Recipe
from .router_stats import RouterStats


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _autocast(device: torch.device, recipe: Recipe):
    bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda")
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_of(device: torch.device, recipe: Recipe) -> str:
    return (
        "bf16 autocast"
        if recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda")
        else "fp32"
    )


#: flex attention's Triton kernels refuse narrower heads ("embedding dimension ... must be at least 16")
FLEX_MIN_HEAD_DIM = 16


def attention_for(config, device: torch.device, choice: Optional[str] = "auto") -> Optional[str]:
    """The attention kernel a miniature trains with. ``auto``: transformers' default (SDPA where the model class
    supports it), except on a GPU for classes without SDPA but with flex attention (gpt-oss: attention sinks),
    whose default would be eager attention materialising every T × T score matrix; flex attention's kernels need
    heads at least 16 wide (narrower ones keep the default). None: transformers' default."""
    if choice != "auto":
        return choice
    from transformers import AutoModelForCausalLM

    cls = AutoModelForCausalLM._model_mapping.get(type(config), None)
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if (
        device.type == "cuda"
        and cls is not None
        and not cls._supports_sdpa
        and cls._supports_flex_attn
        and head >= FLEX_MIN_HEAD_DIM
    ):
        return "flex_attention"
    return None


def build_model(
    sized: Sized,
    seed: int,
    device: torch.device,
    experts_impl: Optional[str] = "grouped",
    attention: Optional[str] = "auto",
):
    """The miniature with weights initialised from ``seed`` (the same seed for every model of a run).

    ``experts_impl``: the MoE expert kernel; "grouped" is transformers' token-sorted grouped GEMMs (fastest to
    train, STACK-NOTES) run in the autocast dtype (``experts.py``); None keeps transformers' default.
    ``attention``: see :func:`attention_for`."""
    from ..arch import patches

    with building(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # a copy: the model keeps its config, and set_experts_implementation writes to it (two models built
        # from one Sized would otherwise share, and switch, each other's expert kernel)
        model = patches.from_config(
            copy.deepcopy(sized.arch.config),
            dtype=torch.float32,
            attn_implementation=attention_for(sized.arch.config, device, attention),
        )
    if experts_impl and sized.arch.spec.moe is not None and hasattr(model, "set_experts_implementation"):
        from .experts import register

        with contextlib.suppress(Exception):
            patches.set_experts_implementation(model, register() if experts_impl == "grouped" else experts_impl)
    return model.to(device).train()


def optimizer_for(model, recipe: Recipe, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": recipe.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), eps=1e-8, fused=device.type == "cuda")


def _tensors(batch, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets): text windows [B, T+1] predict the next token; probe targets are given (IGNORE elsewhere)."""
    if isinstance(batch, ProbeBatch):
        x, y = batch.inputs, batch.labels
    else:
        x, y = batch[:, :-1], batch[:, 1:]
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(device, non_blocking=True),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)).to(device, non_blocking=True),
    )


def token_loss(logits: torch.Tensor, y: torch.Tensor, batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions. A probe batch labels only its answers (a few
    per sequence): only their rows of logits enter the softmax, picked by indices computed on the host from the
    batch (no device sync); the mean is the one ``ignore_index`` gives over all rows."""
    flat, target = logits.reshape(-1, logits.shape[-1]), y.reshape(-1)
    if isinstance(batch, ProbeBatch):
        keep = np.flatnonzero(batch.labels.reshape(-1) != IGNORE)
        if 0 < len(keep) < len(target):
            rows = torch.from_numpy(keep).to(logits.device, non_blocking=True)
            flat, target = flat.index_select(0, rows), target.index_select(0, rows)
    return F.cross_entropy(flat.float(), target, ignore_index=IGNORE)


def batch_array(batch) -> np.ndarray:
    """What a batch consists of, for the stream hash."""
    return np.concatenate([batch.inputs, batch.labels], axis=1) if isinstance(batch, ProbeBatch) else batch


@dataclass
class Member:
    """One model of a run and everything it has done."""

    key: str
    sized: Sized
    recipe: Recipe
    device: torch.device
    model: object = None
    optimizer: Optional[torch.optim.Optimizer] = None
    routers: Optional[RouterStats] = None
    stream: StreamHash = field(default_factory=StreamHash)
    step: int = 0
    train_seconds: float = 0.0
    _losses: list = field(default_factory=list)
    _norms: list = field(default_factory=list)  # gradient norms before clipping, on the device
    peak_bytes: Optional[int] = None
    group: Optional[object] = None  # distributed.Group under accelerate launch / torchrun: DDP over its processes
    shard: Optional[object] = None  # its distributed.Shard (set by start)

    @property
    def tokens(self) -> int:
        return self.step * self.recipe.batch * self.recipe.seq_len

    @property
    def done(self) -> bool:
        return self.step >= self.recipe.steps

    def start(self, experts_impl: Optional[str] = "grouped", attention: Optional[str] = "auto") -> "Member":
        self.model = build_model(self.sized, self.recipe.seed, self.device, experts_impl, attention)
        if self.recipe.compile and self.device.type == "cuda":
            self.model.forward = torch.compile(self.model.forward, dynamic=False)
        self.optimizer = optimizer_for(self.model, self.recipe, self.device)
        if self.sized.arch.spec.moe is not None:
            aux = getattr(self.sized.arch.config, "router_aux_loss_coef", 0.0)
            stats = RouterStats if self.group is None else self.group.router_stats
            self.routers = stats(self.model, self.sized.arch.spec, aux, self.recipe.router_bias_speed)
        if self.group is not None:
            self.shard = self.group.shard(self)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch`` (text windows or a ProbeBatch); the loss stays on the device."""
        t0 = time.perf_counter()
        self.stream.update(batch_array(batch))  # the global batch, under DDP too
        if self.shard is not None:
            batch = self.shard.rows(batch)
        x, y = _tensors(batch, self.device)
        for g in self.optimizer.param_groups:
            g["lr"] = self.recipe.lr_at(self.step)
        with _autocast(self.device, self.recipe):
            logits = (self.model if self.shard is None else self.shard.ddp)(input_ids=x, use_cache=False).logits
        if self.shard is None:
            loss = token_loss(logits, y, batch)
            total = loss
        else:
            loss, total = self.shard.loss(logits, y)  # the global mean; what this process backpropagates
        if self.routers is not None:
            aux = self.routers.aux_loss()
            if aux is not None:
                total = total + aux
        total.backward()
        # the norm before clipping, kept for the stability metrics (an infinite threshold measures without clipping)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip or float("inf"))
        self._norms.append(norm.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.routers is not None:
            self.routers.end_step()
        self._losses.append(loss.detach())
        self.step += 1
        self.train_seconds += time.perf_counter() - t0

    def take_norms(self) -> list[float]:
        """Gradient norms before clipping since the last call (one host copy)."""
        if not self._norms:
            return []
        values = torch.stack(self._norms).float().cpu().tolist()
        self._norms.clear()
        return values

    def take_losses(self) -> list[float]:
        """Training losses since the last call (one host copy)."""
        if not self._losses:
            return []
        values = torch.stack(self._losses).float().cpu().tolist()
        self._losses.clear()
        return values

    def sync_time(self) -> None:
        """Wait for the device so that ``train_seconds`` counts work done, not only work queued."""
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - t0
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))

    @torch.no_grad()
    def loss_on(self, windows: np.ndarray) -> float:
        """Mean next-token cross-entropy over validation windows [N, T+1]."""
        self.model.eval()
        total, count = 0.0, 0
        try:
            for i in range(0, len(windows), self.recipe.batch):
                x, y = _tensors(windows[i : i + self.recipe.batch], self.device)
                with _autocast(self.device, self.recipe):
                    logits = self.model(input_ids=x, use_cache=False).logits
                total += float(
                    F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
                )
                count += y.numel()
        finally:
            if self.routers is not None:
                self.routers.discard_step()
            self.model.train()
        return total / count

    @torch.no_grad()
    def probe_accuracy(self, task: ProbeTask, examples: int) -> tuple[dict, dict]:
        """({(kv pairs, seq len): accuracy}, {distance bucket: accuracy}) on held-out probe examples."""
        self.model.eval()
        by_setting, by_distance = {}, {}
        try:
            for kv, seq in task.settings():
                if seq > self.recipe.seq_len:
                    continue
                b = task.eval_batch(kv, seq, examples)
                preds = []
                for i in range(0, examples, self.recipe.batch):
                    x, _ = _tensors(
                        ProbeBatch(
                            b.inputs[i : i + self.recipe.batch],
                            b.labels[i : i + self.recipe.batch],
                            b.distance[i : i + self.recipe.batch],
                        ),
                        self.device,
                    )
                    with _autocast(self.device, self.recipe):
                        preds.append(self.model(input_ids=x, use_cache=False).logits.argmax(-1).cpu().numpy())
                p = np.concatenate(preds)
                by_setting[(kv, seq)] = accuracy(p, b)
                if task.name == "distance":
                    for d, acc in accuracy_by_distance(p, b).items():
                        by_distance.setdefault(d, []).append(acc)
        finally:
            if self.routers is not None:
                self.routers.discard_step()
            self.model.train()
        return by_setting, {d: float(np.mean(v)) for d, v in by_distance.items()}

    def save(self, folder: Path, tokenizer=None, dtype: Optional[torch.dtype] = None) -> Path:
        """``save_pretrained`` (safetensors) of the model, with the tokenizer beside it for text models."""
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model
        if dtype is not None:
            import copy

            model = copy.deepcopy(self.model).to(dtype)
        model.config.output_router_logits = False
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        return folder

    def close(self) -> None:
        if self.routers is not None:
            self.routers.remove()
        self.model = self.optimizer = self.shard = None
