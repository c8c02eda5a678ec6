"""AdamW and gradient clipping for parameters stacked along a leading run dimension.

Each run of a stack keeps its own optimizer state (the moments are stacked like the parameters), learning rate,
weight decay and clipping threshold: those are tensors ``[R]`` broadcast over each parameter ``[R, ...]``. The
arithmetic is PyTorch's AdamW (``torch.optim.adam._single_tensor_adam``, decoupled weight decay) with the step
count and the per-run scalars on the device, so a whole training step can be captured in a CUDA graph. Weight decay applies to matrices only (parameters of two or more dimensions per run).
A run whose gradient norm is not finite takes no step (its moments keep decaying, its weights stay), so one
diverging run never writes NaN into the others' or its own weights.
"""

from __future__ import annotations

import torch


def _per_run(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``[R]`` tensor shaped to broadcast over ``like [R, ...]``."""
    return x.view(-1, *([1] * (like.dim() - 1)))


class StackedAdamW:
    """AdamW over ``params`` (name → ``[R, ...]`` leaf tensor); see the module docstring."""

    def __init__(self, params: dict[str, torch.Tensor], betas: tuple[float, float], eps: float = 1e-8):
        self.params = params
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)
        self.decays = {n: p.dim() >= 3 for n, p in params.items()}  # a run's matrices: [R, out, in] and up
        self.exp_avg = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p, memory_format=torch.preserve_format) for n, p in params.items()}
        device = next(iter(params.values())).device
        self.t = torch.zeros((), device=device)

    @torch.no_grad()
    def clip(self, max_norm: torch.Tensor) -> torch.Tensor:
        """Scale each run's gradients so their joint L2 norm is at most ``max_norm[r]`` (0: no clipping), as
        ``torch.nn.utils.clip_grad_norm_`` does for one model; returns the norms before clipping ``[R]``."""
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        runs = grads[0].shape[0]
        # each run's slice of each gradient reduced on its own (as clip_grad_norm_ reduces each tensor of one
        # model), so that the norms do not depend on how many runs share the stack; on the CPU from an aligned copy,
        # since a vectorised reduction adds in another order when a slice starts off a SIMD boundary
        cpu = grads[0].device.type == "cpu"
        per = torch._foreach_norm([(g[r].clone() if cpu else g[r]).float() for g in grads for r in range(runs)], 2)
        total = torch.linalg.vector_norm(torch.stack(per).view(len(grads), runs), 2, dim=0)
        coef = torch.where(max_norm > 0, (max_norm / (total + 1e-6)).clamp(max=1.0), torch.ones_like(total))
        for g in grads:
            g.mul_(_per_run(coef, g).to(g.dtype))
        return total

    @torch.no_grad()
    def step(self, lr: torch.Tensor, weight_decay: torch.Tensor, finite: torch.Tensor) -> None:
        """One AdamW step with per-run ``lr``, ``weight_decay`` and ``finite`` (False: that run does not move)."""
        b1, b2 = self.betas
        self.t.add_(1)
        bias1 = 1 - torch.pow(b1, self.t)
        bias2_sqrt = (1 - torch.pow(b2, self.t)).sqrt()
        move = finite.to(lr.dtype)
        step_neg = -(lr / bias1) * move
        for name, p in self.params.items():
            g = p.grad
            if g is None:
                continue
            g.masked_fill_(~_per_run(finite, g), 0.0)  # in place: a run that is not finite takes no step
            if self.decays[name]:
                p.mul_(1 - _per_run(lr * weight_decay * move, p))
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.add_(m / denom * _per_run(step_neg, p))

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def keep(self, index: torch.Tensor) -> None:
        """Keep only the runs at ``index`` (the moments of the others are dropped); the caller re-stacks the
        parameters the same way and hands them back through ``params``."""
        self.exp_avg = {n: t.index_select(0, index) for n, t in self.exp_avg.items()}
        self.exp_avg_sq = {n: t.index_select(0, index) for n, t in self.exp_avg_sq.items()}
