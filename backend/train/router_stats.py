"""Routers while training: expert load per layer, the load-balancing loss, and DeepSeek's aux-loss-free bias.

Forward hooks on every router (``live.routers``) keep each step's choices on the device. Two balancing
schemes, chosen from the ArchSpec (never a model name): routers with a choice-only correction bias
(DeepSeek-V3, GLM-4.5) get the aux-loss-free update ``bias += speed × sign(mean load − load)`` after each
step; the others add the Switch-Transformer loss ``E × Σ_i f_i × P_i`` (f = selections of expert i per token,
P = its mean router probability, over all MoE layers at once, as transformers computes it) scaled by the
config's ``router_aux_loss_coef``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..arch.spec import ArchSpec
from ..live.routers import router_choice, router_logits, router_modules
from ..live.routing import balance


@dataclass(frozen=True)
class LoadSnapshot:
    """Expert load over the steps since the last snapshot."""

    step: int
    layers: list[int]
    load: np.ndarray  # [layers, experts] selections
    aux_loss: Optional[float]  # mean balancing loss over those steps (None: aux-loss-free router)

    def summary(self) -> dict:
        """Per layer: max/mean load, normalized entropy (1 = uniform), experts never chosen."""
        b = balance(self.load)
        return {
            "max_over_mean": b["max_over_mean"],
            "entropy": b["entropy"],
            "never_chosen": (self.load == 0).sum(axis=1),
        }


class RouterStats:
    """Hooks on a model's routers during training; see the module docstring."""

    def __init__(self, model, spec: ArchSpec, aux_coef: float, bias_speed: float):
        m = spec.moe
        self.num_experts, self.top_k = m.num_experts, m.top_k
        self.scoring, self.bias_corrected = m.scoring, m.bias_corrected
        self.aux_coef = 0.0 if m.bias_corrected else float(aux_coef or 0.0)
        self.bias_speed = bias_speed if m.bias_corrected else 0.0
        self.routers = router_modules(model)
        self.layers = [i for i, _ in self.routers]
        device = next(model.parameters()).device
        self.window = torch.zeros(len(self.routers), self.num_experts, device=device)  # since last snapshot
        self._step_load = torch.zeros_like(self.window)
        self._aux_sum = torch.zeros((), device=device)
        self._aux_steps = 0
        self._logits: list[torch.Tensor] = []
        self._handles = [r.register_forward_hook(self._hook(n)) for n, (_, r) in enumerate(self.routers)]
        self._bias = [
            next((b for name, b in r.named_buffers() if "correction_bias" in name), None) for _, r in self.routers
        ]

    def _hook(self, row: int):
        def hook(module, _inputs, output):
            idx, _w = router_choice(module, output)
            flat = idx.reshape(-1)
            self._step_load[row].index_add_(0, flat, torch.ones_like(flat, dtype=self._step_load.dtype))
            if self.aux_coef:
                self._logits.append(router_logits(output))

        return hook

    def aux_loss(self) -> Optional[torch.Tensor]:
        """The balancing loss of the forward just run (None when this router uses the bias instead).

        As transformers' ``load_balancing_loss_func`` computes it, over all MoE layers at once:
        ``E × Σ_i f_i × P_i`` with f_i the selections of expert i per routed token (summing to top-k) and P_i
        its mean router probability, both over every layer's tokens, so that a config's
        ``router_aux_loss_coef`` means what it means there.
        """
        if not self.aux_coef or not self._logits:
            self._logits.clear()
            return None
        logits = torch.cat(self._logits).float()
        probs = self._probs(logits)
        f = self._step_load.sum(0) / logits.shape[0]
        loss = self.num_experts * (f * probs.mean(0)).sum()
        self._logits.clear()
        self._aux_sum += loss.detach()
        self._aux_steps += 1
        return self.aux_coef * loss

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Router probabilities per token (sigmoid scores normalised over the experts)."""
        if self.scoring == "softmax":
            return torch.softmax(logits, -1)
        return torch.sigmoid(logits) / torch.sigmoid(logits).sum(-1, keepdim=True)

    @torch.no_grad()
    def end_step(self) -> None:
        """After the optimizer step: the aux-loss-free bias update, and this step's load into the window."""
        if self.bias_speed:
            for row, bias in enumerate(self._bias):
                if bias is not None:
                    load = self._step_load[row]
                    bias.add_(self.bias_speed * torch.sign(load.mean() - load))
        self.window += self._step_load
        self._step_load.zero_()

    def discard_step(self) -> None:
        """Forget what an evaluation forward recorded (no training step followed)."""
        self._step_load.zero_()
        self._logits.clear()

    def snapshot(self, step: int) -> LoadSnapshot:
        load = self.window.cpu().numpy().astype(np.int64)  # the one host copy per log interval
        aux = float(self._aux_sum.item() / self._aux_steps) if self._aux_steps else None
        self.window.zero_()
        self._aux_sum.zero_()
        self._aux_steps = 0
        return LoadSnapshot(step, list(self.layers), load, aux)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
