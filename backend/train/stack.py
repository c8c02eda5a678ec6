"""Many runs of one architecture trained at once, as one stacked model on one device.

The runs of a stack share the architecture (the same sized miniature, so the same shapes and code) and the
batch shape; each keeps its own weights (initialised from its seed), batch stream (its seed), learning rate,
schedule, weight decay, clipping threshold, optimizer state and z-loss. Their parameters are stacked along a
leading run dimension (``torch.func.stack_module_state``) and one transformers model is called on them through
``torch.func.functional_call`` under ``torch.vmap``: a linear layer becomes one batched matrix product for all
runs, attention and MoE experts fold the runs into one fused call (``vmapped.py``). A GPU then launches the
kernels of one small model for R of them. The loss is computed per run, and the runs' losses are summed for the
backward pass; no operation mixes runs, so each run's gradient is its own, and a run that diverges (NaN) or is
stopped leaves the others as they were. ``tests/test_stack.py`` holds a stacked run equal to the same run alone.

MoE routers are watched inside the vmapped call (each step's expert load per run and layer, the balancing loss,
DeepSeek's aux-loss-free bias per run), as :class:`~backend.train.router_stats.RouterStats` does for one model.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from ..arch.errors import ArchLabError
from ..live.routers import router_choice, router_logits, router_modules
from . import graphs, vmapped
from . import recipe as recipe_mod
from .budget import Sized
from .data import StreamHash
from .probes import IGNORE, ProbeBatch, ProbeTask, accuracy, accuracy_by_distance
from .recipe import Recipe
from .stacked_optim import StackedAdamW
from .trainer import _autocast, batch_array, build_model

#: recipe fields that may differ between the runs of one stack (everything else must be equal)
PER_RUN = recipe_mod.PER_RUN + ("name",)


def stack_key(recipe: Recipe) -> tuple:
    """What runs must share to train in one stack (besides the architecture)."""
    return tuple((f.name, repr(getattr(recipe, f.name))) for f in fields(recipe) if f.name not in PER_RUN)


@dataclass
class Run:
    """One run of a stack."""

    key: str
    recipe: Recipe
    stream: StreamHash = field(default_factory=StreamHash)
    status: str = "training"  # training / diverged / stopped / finished
    diverged_at: Optional[int] = None  # the step whose loss was first not finite


class _Routers:
    """The routers of the stack's model, read inside the vmapped call."""

    def __init__(self, model, spec, aux_coef: float, bias_speed: float):
        m = spec.moe
        self.experts, self.scoring = m.num_experts, m.scoring
        self.aux_coef = 0.0 if m.bias_corrected else float(aux_coef or 0.0)
        self.bias_speed = bias_speed if m.bias_corrected else 0.0
        self.routers = router_modules(model)
        self.layers = [i for i, _ in self.routers]
        names = {id(r): n for n, r in model.named_modules()}
        self.bias_names = [
            next((f"{names[id(r)]}.{b}" for b, _ in r.named_buffers() if "correction_bias" in b), None)
            for _, r in self.routers
        ]
        self._seen: list = []
        self._handles = [r.register_forward_hook(self._hook) for _, r in self.routers]

    def _hook(self, module, _inputs, output):
        if self._seen is not None:
            self._seen.append((module, output))

    @contextlib.contextmanager
    def watching(self):
        self._seen = []
        try:
            yield
        finally:
            self._seen = None

    def summary(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(load ``[layers, experts]``, balancing loss) of the forward just run (inside vmap: one run's)."""
        loads, logits = [], []
        for module, output in self._seen:
            idx, _ = router_choice(module, output)
            flat = idx.reshape(-1)
            loads.append(
                torch.zeros(self.experts, device=flat.device).scatter_add(
                    0, flat, torch.ones_like(flat, dtype=torch.float32)
                )
            )
            if self.aux_coef:
                logits.append(router_logits(output))
        load = torch.stack(loads)
        if not self.aux_coef:
            return load, load.new_zeros(())
        lg = torch.cat(logits).float()
        probs = (
            torch.softmax(lg, -1)
            if self.scoring == "softmax"
            else torch.sigmoid(lg) / torch.sigmoid(lg).sum(-1, keepdim=True)
        )
        f = load.sum(0) / lg.shape[0]
        return load, self.experts * (f * probs.mean(0)).sum()  # logged as it is; weighted by the coef in the loss

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def _no_gradient_at_padding(module, args, output):
    """An embedding's padding row gets no gradient from its lookups (``padding_idx``): vmap's batching rule for the
    embedding backward honours it for the first run of a stack only, so the stack blocks those gradients itself."""
    ids = args[0]
    return torch.where((ids == module.padding_idx).unsqueeze(-1), output.detach(), output)


class Stack:
    """R runs of one sized miniature, trained together on ``device``; see the module docstring.

    ``recipes``: one per run; they may differ only in :data:`PER_RUN` fields. ``keys``: the runs' names.
    ``cuda_graph``: on a GPU, replay the training step as a CUDA graph after a few eager steps (``graphs.py``);
    ``graph_note`` says what the stack does.
    """

    def __init__(
        self,
        sized: Sized,
        recipes: Sequence[Recipe],
        keys: Sequence[str],
        device: torch.device,
        cuda_graph: bool = True,
    ):
        if not recipes or len(recipes) != len(keys):
            raise ArchLabError("a stack needs one recipe per run")
        if len({stack_key(r) for r in recipes}) > 1:
            raise ArchLabError("the runs of a stack may differ only in " + ", ".join(PER_RUN))
        vmapped.register()
        self.sized, self.device = sized, device
        self.recipe = recipes[0]
        self.runs = [Run(k, r) for k, r in zip(keys, recipes)]
        models = [
            build_model(sized, r.seed, torch.device("cpu"), experts_impl=None, attention=vmapped.ATTENTION)
            for r in recipes
        ]
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().to(device).requires_grad_() for n, p in params.items()}
        self.buffers = {n: b.to(device) for n, b in buffers.items()}
        self.base = models[0]  # its own tensors are never used: functional_call swaps in the stacked ones
        for p in self.base.parameters():
            p.requires_grad_(False)
        for m in self.base.modules():
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None:
                m.register_forward_hook(_no_gradient_at_padding)
        del models
        cfg = self.base.config
        cfg._attn_implementation = vmapped.ATTENTION
        if sized.arch.spec.moe is not None:
            cfg._experts_implementation = vmapped.EXPERTS
        self.dropout = any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in self.base.modules())
        self.routers = None
        if sized.arch.spec.moe is not None:
            self.routers = _Routers(
                self.base,
                sized.arch.spec,
                getattr(sized.arch.config, "router_aux_loss_coef", 0.0),
                self.recipe.router_bias_speed,
            )
        self.optimizer = StackedAdamW(self.params, self.recipe.betas)
        self.step = 0
        self.train_seconds = 0.0
        self._log: dict[str, list] = {"loss": [], "grad_norm": []}
        if self.routers is not None:
            layers = len(self.routers.layers)
            self.load_window = torch.zeros(len(self.runs), layers, self.routers.experts, device=device)
            self.aux_sum = torch.zeros(len(self.runs), device=device)
            self.aux_steps = torch.zeros((), dtype=torch.long, device=device)
        self.inputs: Optional[torch.Tensor] = None
        self._host, self._events, self._turn, self.probe = None, [], 0, False
        self.graph = None
        self.use_graph = bool(cuda_graph) and device.type == "cuda"
        self.graph_note = "" if self.use_graph else "eager"
        self._constants()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.peak_bytes: Optional[int] = None

    # ----- the vmapped model
    def _one(self, params, buffers, x, measure: bool = False):
        """One run's forward (called under vmap): logits, router load and balancing loss, attention logits."""
        router = self.routers.watching() if self.routers is not None else contextlib.nullcontext()
        rec = vmapped.recording() if measure else contextlib.nullcontext()
        with router, rec as logits_max:
            logits = functional_call(
                self.base, (params, buffers), (), {"input_ids": x, "use_cache": False}, tie_weights=True, strict=False
            ).logits
            out = {"logits": logits}
            if self.routers is not None:
                out["load"], out["aux"] = self.routers.summary()
            if measure:
                out["max_logit"] = torch.stack(logits_max) if logits_max else logits.new_zeros(0)
        return out

    def forward(self, x: torch.Tensor, per_run: bool = True, measure: bool = False) -> dict:
        """The stacked forward: ``x`` is ``[R, B, T]`` (``per_run``) or one ``[B, T]`` batch shared by all runs."""
        fn = vmap(
            lambda p, b, xx: self._one(p, b, xx, measure),
            in_dims=(0, 0, 0 if per_run else None),
            randomness="different" if self.dropout else "error",
        )
        return fn(self.params, self.buffers, x)

    # ----- training
    def _upload(self, batches: Sequence) -> None:
        """The runs' batches into the static input buffer (through a pinned buffer on a GPU, two in turn, so the
        host writes the next batch while the device still works on this one)."""
        probe = isinstance(batches[0], ProbeBatch)
        arr = np.stack([np.stack([b.inputs, b.labels]) for b in batches], 1) if probe else np.stack(batches)
        if self._host is None:
            shape = arr.shape
            self.inputs = torch.zeros(shape, dtype=torch.int64, device=self.device)
            pin = self.device.type == "cuda"
            self._host = [torch.zeros(shape, dtype=torch.int64, pin_memory=pin) for _ in range(2 if pin else 1)]
            self._events = [None] * len(self._host)
            self.probe = probe
        k = self._turn = (self._turn + 1) % len(self._host)
        if self._events[k] is not None:
            self._events[k].synchronize()
        self._host[k].numpy()[...] = arr
        self.inputs.copy_(self._host[k], non_blocking=self.device.type == "cuda")
        if self.device.type == "cuda":
            self._events[k] = torch.cuda.Event()
            self._events[k].record()

    def _xy(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """(inputs, targets ``[R, B, T]``, answer mask or None) as views of the static input buffer."""
        if self.probe:
            x, y = self.inputs[0], self.inputs[1]
            return x, y, y != IGNORE
        return self.inputs[:, :, :-1], self.inputs[:, :, 1:], None

    def _per_run(self, name: str) -> torch.Tensor:
        return torch.tensor([float(getattr(r.recipe, name)) for r in self.runs], device=self.device)

    def _constants(self) -> None:
        """Per-run recipe values on the device: the learning rate of every step, weight decay, clipping, z-loss."""
        steps = self.recipe.steps
        table = [[r.recipe.lr_at(i) for r in self.runs] for i in range(steps + 1)]
        self.lr_table = torch.tensor(table, dtype=torch.float32, device=self.device)
        self.step_t = torch.full((), self.step, dtype=torch.long, device=self.device)
        for name in ("weight_decay", "grad_clip", "z_loss"):
            setattr(self, f"_{name}", self._per_run(name))
        self.z_on = any(r.recipe.z_loss for r in self.runs)

    @staticmethod
    def losses(logits: torch.Tensor, y: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy per run ``[R]`` over the labelled positions."""
        runs, vocab = logits.shape[0], logits.shape[-1]
        ce = F.cross_entropy(
            logits.reshape(-1, vocab).float(), y.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view(runs, -1)
        # one reduction per run: a reduction over [R, N] splits its rows differently for different R
        if mask is None:
            return torch.stack([row.mean() for row in ce])
        m = mask.reshape(runs, -1).to(ce.dtype)
        return torch.stack([(row * w).sum() / w.sum().clamp(min=1) for row, w in zip(ce, m)])

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step of every run on the static inputs, all on the device (no host synchronisation, so
        that it can be captured in a CUDA graph): forward, per-run loss (+ balancing loss, + z-loss), backward,
        per-run clipping and AdamW, routers' bias and load. Returns (losses, gradient norms before clipping)."""
        x, y, mask = self._xy()
        lr = self.lr_table.index_select(0, self.step_t.view(1)).view(-1)
        with _autocast(self.device, self.recipe):
            out = self.forward(x)
        losses = self.losses(out["logits"], y, mask)
        total = losses
        if self.routers is not None:
            total = total + self.routers.aux_coef * out["aux"]
        if self.z_on:
            log_z = torch.logsumexp(out["logits"].float(), dim=-1).reshape(len(self.runs), -1)
            total = total + self._z_loss * torch.stack([row.pow(2).mean() for row in log_z])
        total.sum().backward()
        norms = self.optimizer.clip(self._grad_clip)
        finite = torch.isfinite(losses) & torch.isfinite(norms)
        self.optimizer.step(lr, self._weight_decay, finite)
        if self.routers is not None:
            self._routing(out["load"].detach(), out["aux"].detach())
        self.step_t.add_(1)
        return losses.detach(), norms

    def train_step(self, batches: Sequence) -> None:
        """One optimizer step of every run on its own batch (``batches[r]``: text windows or a ProbeBatch)."""
        t0 = time.perf_counter()
        for run, b in zip(self.runs, batches):
            run.stream.update(batch_array(b))
        warming = self.use_graph and self.graph is None and self.graph_note == ""
        side = torch.cuda.Stream(self.device) if warming else None
        if side is not None:  # warm-up steps before a capture run on a side stream (PyTorch's CUDA-graph notes)
            side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            self._upload(batches)
            if warming and self.step >= graphs.WARMUP_STEPS:
                self.graph, self.graph_note = graphs.capture(self)
            if self.graph is not None:
                self.graph.replay()
                losses, norms = (t.clone() for t in self.graph.outputs)
            else:
                losses, norms = self._body()
                self.optimizer.zero_grad()
        if side is not None:
            torch.cuda.current_stream(self.device).wait_stream(side)
        self._log["loss"].append(losses)
        self._log["grad_norm"].append(norms)
        self.step += 1
        self.train_seconds += time.perf_counter() - t0

    @torch.no_grad()
    def _routing(self, load: torch.Tensor, aux: torch.Tensor) -> None:
        """The step's expert load into the window; DeepSeek's bias update per run (``bias += speed·sign(mean − load)``)."""
        r = self.routers
        if r.bias_speed:
            for row, name in enumerate(r.bias_names):
                if name is not None:
                    lo = load[:, row]
                    self.buffers[name].add_(r.bias_speed * torch.sign(lo.mean(-1, keepdim=True) - lo))
        self.load_window.add_(load)
        if r.aux_coef:
            self.aux_sum.add_(aux)
            self.aux_steps.add_(1)

    def take(self) -> dict[str, np.ndarray]:
        """Per-step losses and gradient norms ``[steps, R]`` since the last call (one host copy)."""
        out = {}
        for name in ("loss", "grad_norm"):
            vals = self._log[name]
            out[name] = torch.stack(vals).float().cpu().numpy() if vals else np.zeros((0, len(self.runs)))
            vals.clear()
        return out

    def routing_snapshot(self) -> Optional[tuple[np.ndarray, Optional[np.ndarray]]]:
        """(load ``[R, layers, experts]`` since the last call, mean balancing loss ``[R]`` or None)."""
        if self.routers is None:
            return None
        load = self.load_window.cpu().numpy().astype(np.int64)
        steps = int(self.aux_steps.item())
        aux = (self.aux_sum / steps).cpu().numpy() if steps else None
        self.load_window.zero_()
        self.aux_sum.zero_()
        self.aux_steps.zero_()
        return load, aux

    # ----- measuring
    @torch.no_grad()
    def stability(self, batches: Sequence, rows: int = 8) -> dict[str, np.ndarray]:
        """On the first ``rows`` sequences of each run's batch: the largest attention logit per layer
        ``[R, layers]`` (the softmax input) and the output logits' mean log-partition ``[R]``; no gradient, and the
        routers' load of this forward is not kept (it is no training step)."""
        arr = np.stack([b.inputs[:rows] if isinstance(b, ProbeBatch) else b[:rows, :-1] for b in batches])
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64)).to(self.device)
        with _autocast(self.device, self.recipe):
            out = self.forward(x, measure=True)
        log_z = torch.logsumexp(out["logits"].float(), dim=-1).reshape(len(self.runs), -1)
        return {
            "max_logit": out["max_logit"].float().cpu().numpy(),
            "log_z": torch.stack([row.mean() for row in log_z]).cpu().numpy(),
        }

    @torch.no_grad()
    def loss_on(self, windows: np.ndarray) -> np.ndarray:
        """Mean next-token cross-entropy per run ``[R]`` over validation windows ``[N, T+1]`` (the same for all)."""
        total = torch.zeros(len(self.runs), dtype=torch.float64, device=self.device)
        count = 0
        for i in range(0, len(windows), self.recipe.batch):
            w = torch.from_numpy(np.ascontiguousarray(windows[i : i + self.recipe.batch], dtype=np.int64)).to(
                self.device
            )
            x, y = w[:, :-1], w[:, 1:]
            with _autocast(self.device, self.recipe):
                logits = self.forward(x, per_run=False)["logits"]
            ce = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                y.reshape(1, -1).expand(len(self.runs), -1).reshape(-1),
                reduction="none",
            )
            total += ce.view(len(self.runs), -1).sum(1).double()
            count += y.numel()
        return (total / count).cpu().numpy()

    @torch.no_grad()
    def probe_loss(self, batch: ProbeBatch) -> np.ndarray:
        """Cross-entropy per run on the answers of one held-out probe batch."""
        x = torch.from_numpy(np.ascontiguousarray(batch.inputs, dtype=np.int64)).to(self.device)
        y = torch.from_numpy(np.ascontiguousarray(batch.labels, dtype=np.int64)).to(self.device)
        with _autocast(self.device, self.recipe):
            logits = self.forward(x, per_run=False)["logits"]
        runs = len(self.runs)
        yy = y.unsqueeze(0).expand(runs, *y.shape)
        return self.losses(logits, yy, yy != IGNORE).cpu().numpy()

    @torch.no_grad()
    def probe_accuracy(self, task: ProbeTask, examples: int) -> list[tuple[dict, dict]]:
        """Per run: ({(kv pairs, seq len): accuracy}, {distance bucket: accuracy}) on held-out probe examples."""
        runs = len(self.runs)
        by_setting = [{} for _ in range(runs)]
        by_distance = [{} for _ in range(runs)]
        for kv, seq in task.settings():
            if seq > self.recipe.seq_len:
                continue
            b = task.eval_batch(kv, seq, examples)
            preds = []
            for i in range(0, examples, self.recipe.batch):
                x = torch.from_numpy(np.ascontiguousarray(b.inputs[i : i + self.recipe.batch], dtype=np.int64)).to(
                    self.device
                )
                with _autocast(self.device, self.recipe):
                    preds.append(self.forward(x, per_run=False)["logits"].argmax(-1).cpu().numpy())
            p = np.concatenate(preds, axis=1)
            for r in range(runs):
                by_setting[r][(kv, seq)] = accuracy(p[r], b)
                if task.name == "distance":
                    for d, acc in accuracy_by_distance(p[r], b).items():
                        by_distance[r].setdefault(d, []).append(acc)
        return [(s, {d: float(np.mean(v)) for d, v in dist.items()}) for s, dist in zip(by_setting, by_distance)]

    # ----- runs in and out of the stack
    def model_of(self, index: int, device: Optional[torch.device] = None):
        """Run ``index`` as an ordinary transformers model (its own weights, fp32, eval mode)."""
        model = build_model(
            self.sized, self.runs[index].recipe.seed, device or torch.device("cpu"), experts_impl=None, attention=None
        )
        state = model.state_dict()
        with torch.no_grad():
            for name, t in list(self.params.items()) + list(self.buffers.items()):
                if name in state:
                    state[name].copy_(t[index].detach().to(state[name].device, state[name].dtype))
        return model.eval()

    def save(self, index: int, folder: Path, tokenizer=None) -> Path:
        """``save_pretrained`` (safetensors) of run ``index``, with the tokenizer beside it for text models."""
        folder.mkdir(parents=True, exist_ok=True)
        model = self.model_of(index)
        model.config.output_router_logits = False
        model.save_pretrained(str(folder))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        return folder

    def keep(self, indices: Sequence[int]) -> None:
        """Go on with the runs at ``indices`` only (the others were stopped, diverged or finished elsewhere)."""
        idx = torch.tensor(list(indices), device=self.device, dtype=torch.long)
        self.params = {n: p.detach().index_select(0, idx).requires_grad_() for n, p in self.params.items()}
        self.buffers = {n: b.index_select(0, idx) for n, b in self.buffers.items()}
        self.optimizer.params = self.params
        self.optimizer.keep(idx)
        self.runs = [self.runs[i] for i in indices]
        for name in self._log:
            self._log[name] = [v.index_select(0, idx) for v in self._log[name]]
        if self.routers is not None:
            self.load_window = self.load_window.index_select(0, idx)
            self.aux_sum = self.aux_sum.index_select(0, idx)
        self.inputs, self._host, self._events = None, None, []
        self.graph = None  # shapes changed: a captured step no longer fits; capture again
        self.graph_note = "" if self.use_graph else "eager"
        self._constants()

    def sync_time(self) -> None:
        """Wait for the device so that ``train_seconds`` counts work done, not only work queued."""
        if self.device.type == "cuda":
            t0 = time.perf_counter()
            torch.cuda.synchronize(self.device)
            self.train_seconds += time.perf_counter() - t0
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))

    def close(self) -> None:
        """Free the stack: weights, optimizer state, the captured graph and its memory pool, the input buffers."""
        if self.routers is not None:
            self.routers.remove()
        vmapped.forget(self.base)
        self.params = self.buffers = {}
        self.optimizer = self.graph = self.inputs = self._host = None
        self._events, self._log = [], {"loss": [], "grad_norm": []}
