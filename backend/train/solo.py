"""One run trained by the single-model trainer, behind the interface of a stack (the sweep's fallback).

A model class that cannot take the stacked step (it fails under ``torch.vmap``, or its kernels refuse the folded
shapes) still trains: its runs are taken out of the stack one by one and trained with
:class:`~backend.train.trainer.Member`, transformers' own attention and experts, and the run says so. What the
sweep reads from a stack is read here from the one model: losses, gradient norms before clipping, validation and
probe results, the routers' load, the output log-partition; the largest attention logit is not measured (the
single-model trainer has no hook on the softmax input) and is left empty.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .budget import Sized
from .probes import ProbeBatch, ProbeTask
from .recipe import Recipe
from .stack import Run
from .trainer import Member, _autocast


class Solo:
    """Run ``key`` of ``sized`` under ``recipe`` with the single-model trainer; ``why``: what the stack hit."""

    def __init__(self, sized: Sized, recipe: Recipe, key: str, device: torch.device, why: str):
        self.sized, self.recipe, self.device = sized, recipe, device
        self.member = Member(key, sized, recipe, device).start()
        self.runs = [Run(key, recipe, stream=self.member.stream)]
        self.graph_note = f"single-model trainer (the stacked step failed: {why[:160]})"
        self.routers = self.member.routers

    @property
    def step(self) -> int:
        return self.member.step

    @property
    def train_seconds(self) -> float:
        return self.member.train_seconds

    @property
    def peak_bytes(self):
        return self.member.peak_bytes

    def train_step(self, batches: Sequence) -> None:
        self.member.train_step(batches[0])

    def take(self) -> dict[str, np.ndarray]:
        losses, norms = self.member.take_losses(), self.member.take_norms()
        return {
            "loss": np.asarray(losses, dtype=float).reshape(-1, 1),
            "grad_norm": np.asarray(norms, dtype=float).reshape(-1, 1),
        }

    @torch.no_grad()
    def stability(self, batches: Sequence, rows: int = 8) -> dict[str, np.ndarray]:
        b = batches[0]
        x = b.inputs[:rows] if isinstance(b, ProbeBatch) else b[:rows, :-1]
        m = self.member
        m.model.eval()
        try:
            with _autocast(self.device, self.recipe):
                logits = m.model(
                    input_ids=torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(self.device), use_cache=False
                ).logits
            log_z = float(torch.logsumexp(logits.float(), dim=-1).mean())
        finally:
            if m.routers is not None:
                m.routers.discard_step()
            m.model.train()
        return {"max_logit": np.zeros((1, 0)), "log_z": np.array([log_z])}

    def loss_on(self, windows: np.ndarray) -> np.ndarray:
        return np.array([self.member.loss_on(windows)])

    def probe_loss(self, batch: ProbeBatch) -> np.ndarray:
        from .outcome import probe_loss

        return np.array([probe_loss(self.member, batch)])

    def probe_accuracy(self, task: ProbeTask, examples: int) -> list[tuple[dict, dict]]:
        return [self.member.probe_accuracy(task, examples)]

    def routing_snapshot(self):
        if self.member.routers is None:
            return None
        snap = self.member.routers.snapshot(self.member.step)
        return snap.load[None], (np.array([snap.aux_loss]) if snap.aux_loss is not None else None)

    def sync_time(self) -> None:
        self.member.sync_time()

    def save(self, index: int, folder: Path, tokenizer=None) -> Path:
        return self.member.save(folder, tokenizer)

    def keep(self, indices: Sequence[int]) -> None:
        if not list(indices):
            self.close()

    def close(self) -> None:
        self.member.close()
