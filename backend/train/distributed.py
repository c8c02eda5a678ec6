"""One model over several processes: under ``accelerate launch`` or ``torchrun`` each model of a run trains with DDP.

    accelerate launch --num_processes 8 -m backend train --models deepseek-v3,llama3-8b --data corpus ...
    torchrun --nproc_per_node 2 -m backend train --device cpu ...       # CPU processes (gloo)

Equal footing holds as in one process. Step i's global batch is batch i of the run's stream: every process
draws it and hashes it (so the recorded stream hash is the one-process hash) and trains on its own contiguous
rows. DDP averages the gradients; each process backpropagates its share of the global loss sum (answers of a
probe counted over the global batch) times the world size, so the average is the gradient of the global mean.
MoE routers' load, and the balancing loss's statistics, are summed over the processes before the aux loss and
DeepSeek's bias update, so every process's routers stay identical. Rank 0 makes the run id, evaluates, writes
the run folder (checkpoints: ``save_pretrained`` of the unwrapped model) and prints; the others wait for it
and print nothing but errors. A process that fails ends the launch (the launcher stops the others).
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..arch.errors import ArchLabError
from .experts import IMPL as EXPERTS_IMPL
from .probes import IGNORE, ProbeBatch
from .recipe import RunSpec
from .router_stats import RouterStats

if TYPE_CHECKING:
    from .trainer import Member

#: how the launchers (torchrun / accelerate, MPI) announce the world size and this process's rank
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
#: how long a process waits for the others (rank 0's final evaluation and checkpoints included)
TIMEOUT = timedelta(hours=1)


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return default


def world_size() -> int:
    """Processes of the launch this process belongs to (1 outside a distributed launch)."""
    return max(1, _env_int(SIZE_VARS, 1))


def rank() -> int:
    """This process's rank in the launch (0 outside one)."""
    return _env_int(RANK_VARS, 0)


def launched() -> bool:
    """Whether this process is one of several started by ``accelerate launch``, ``torchrun`` or MPI."""
    return world_size() > 1


def refuse(*, zoo: bool, processes: Optional[int]) -> None:
    """One-line ArchLabError for flags that have no meaning under a distributed launch."""
    n = world_size()
    if zoo:
        raise ArchLabError(
            f"--zoo trains many small runs in worker processes of one machine; run it without "
            f"a distributed launch (this one has {n} processes)"
        )
    if processes is not None:
        raise ArchLabError(
            f"--processes and a distributed launch ({n} processes) both place the training: "
            f"drop --processes (under the launch every process trains each model with DDP)"
        )


def check(spec: RunSpec) -> None:
    """One-line ArchLabError, before any process group exists, for a run the launch cannot split."""
    n, r = world_size(), spec.recipe
    if r.batch % n:
        raise ArchLabError(
            f"the batch ({r.batch}) must divide by the {n} processes of the launch, so that each "
            f"trains on the same number of rows: use --batch {(r.batch // n + 1) * n}, or another "
            f"multiple of {n}"
        )
    if spec.device.startswith("cuda:"):
        raise ArchLabError(
            f"--device {spec.device}: under a distributed launch each process trains on the GPU of "
            f"its local rank; use --device auto, cuda or cpu"
        )
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise ArchLabError("--device cuda asked for, but no CUDA GPU is visible")


class Group:
    """This process's place in the launch: rank, world size, device, and the collectives the run needs."""

    def __init__(self, rank: int, world: int, device: torch.device, backend: str, control: Any = None):
        self.rank, self.world, self.device, self.backend = rank, world, device, backend
        self.control = control  # a gloo group for host-side agreement (None: the default group, gloo already)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every process (a barrier too)."""
        box = [obj if self.main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def any(self, flag: bool) -> bool:
        """Whether any process says ``flag`` (every process must ask, in the same order)."""
        t = torch.tensor([int(bool(flag))])
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control)
        return bool(t.item())

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes, in place (on its device)."""
        dist.all_reduce(tensor)
        return tensor

    def recipe_notes(self, batch: int) -> dict:
        """What recipe.json says about how the run was spread."""
        where = "cpu" if self.device.type == "cpu" else f"{self.device.type} (the GPU of each local rank)"
        return {
            "workers": f"DDP over {self.world} processes ({self.backend}), models in turn, "
            f"{batch // self.world} rows of each batch per process",
            "device": f"{self.world} × {where}",
        }

    def router_stats(self, model, spec, aux_coef: float, bias_speed: float) -> "SyncedRouters":
        return SyncedRouters(model, spec, aux_coef, bias_speed, group=self)

    def shard(self, member: "Member") -> "Shard":
        return Shard(member, self)

    def close(self, ok: bool) -> None:
        """Leave the process group: after every process is done when ``ok``; at once after a failure (the
        others may be waiting in a collective that will never finish: the launcher stops them)."""
        if not ok:
            return
        try:
            self.barrier()
            dist.destroy_process_group()
        except Exception:  # leaving anyway
            pass
        # Free the process group's last references (DDP reducers sit in reference cycles) now: freed by the
        # interpreter's final collection instead, a gloo worker thread woke, reached for the GIL during shutdown
        # and aborted the process ("terminate called without an active exception", exit code 1 after a good
        # run, ~1 launch in 10 here; 0 in 40 with this collect).
        gc.collect()

    def barrier(self) -> None:
        dist.barrier(group=self.control)


def init(device: str) -> Group:
    """Join the launch's process group (through accelerate: torchrun, accelerate launch and MPI variables);
    ``device`` is the run's ``auto``/``cuda`` (the GPU of the local rank) or ``cpu`` (gloo)."""
    from accelerate import PartialState

    if rank():  # the others print nothing but errors
        warnings.simplefilter("ignore")
        logging.getLogger("transformers").setLevel(logging.ERROR)
    cpu = device == "cpu" or not torch.cuda.is_available()
    try:
        state = PartialState(cpu=cpu, timeout=TIMEOUT)
    except (RuntimeError, ValueError) as e:
        raise ArchLabError(f"could not join the distributed launch: {(str(e).splitlines() or [''])[0][:200]}") from None
    if not dist.is_initialized() or state.num_processes != world_size():
        raise ArchLabError(
            f"the launch announces {world_size()} processes, but no process group of that size "
            f"started (launch with accelerate launch or torchrun)"
        )
    backend = str(dist.get_backend())
    control = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=TIMEOUT)
    return Group(state.process_index, state.num_processes, torch.device(state.device), backend, control)


#: expert kernels that run every expert's weights in one op: each expert takes a gradient, chosen or not
WHOLE_EXPERT_KERNELS = (EXPERTS_IMPL, "grouped_mm", "batched_mm")
_DDP_ARGS = set(inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters)


def _unused_possible(member) -> bool:
    """Whether some parameters may take no gradient in a step (MoE experts no token chose, with a kernel that
    loops over the chosen experts): DDP must then look for them every step (``find_unused_parameters``)."""
    if member.sized.arch.spec.moe is None:
        return False
    return getattr(member.model.config, "_experts_implementation", None) not in WHOLE_EXPERT_KERNELS


class Shard:
    """One model's DDP on this process: its rows of each global batch, the wrapped model, the loss."""

    def __init__(self, member: "Member", group: Group):
        from torch.nn.parallel import DistributedDataParallel

        if member.device.type == "cuda":
            torch.cuda.set_device(member.device)  # the training thread's current GPU
        self.group, self.count = group, 1
        # buffers (RoPE tables, routers' correction bias) are identical on every process: not re-sent each step
        quiet = {"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS else {"broadcast_buffers": False}
        self.ddp = DistributedDataParallel(
            member.model,
            device_ids=[member.device.index] if member.device.type == "cuda" else None,
            find_unused_parameters=_unused_possible(member),
            **quiet,
        )

    def rows(self, batch: "np.ndarray | ProbeBatch") -> "np.ndarray | ProbeBatch":
        """This process's contiguous rows of the global ``batch`` (text windows or a ProbeBatch); notes how many
        targets the global batch holds."""
        n = len(batch.inputs) if isinstance(batch, ProbeBatch) else len(batch)
        per = n // self.group.world
        lo, hi = self.group.rank * per, (self.group.rank + 1) * per
        if isinstance(batch, ProbeBatch):
            self.count = max(1, int((batch.labels != IGNORE).sum()))
            return ProbeBatch(batch.inputs[lo:hi], batch.labels[lo:hi], batch.distance[lo:hi])
        self.count = max(1, n * (batch.shape[1] - 1))
        return batch[lo:hi]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the global mean cross-entropy, detached; what this process backpropagates: its share of the global
        sum over the global count, times the world size, since DDP averages the gradients)."""
        local = F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE, reduction="sum"
        )
        mean = self.group.sum_(local.detach().clone()) / self.count
        return mean, local * (self.group.world / self.count)


class SyncedRouters(RouterStats):
    """RouterStats whose step load (and the balancing loss's statistics) are summed over the processes."""

    def __init__(self, model, spec, aux_coef: float, bias_speed: float, *, group: Group):
        super().__init__(model, spec, aux_coef, bias_speed)
        self.group, self._summed = group, False

    def aux_loss(self) -> Optional[torch.Tensor]:
        """The balancing loss of the global batch (value), whose gradient through this process's tokens is
        scaled for DDP's average; the load is summed over the processes first."""
        if not self.aux_coef or not self._logits:
            self._logits.clear()
            return None
        logits = torch.cat(self._logits).float()
        local = self._probs(logits).sum(0)
        n = self._step_load.numel()
        stats = self.group.sum_(
            torch.cat([self._step_load.reshape(-1), local.detach(), local.new_tensor([float(logits.shape[0])])])
        )
        self._step_load.copy_(stats[:n].view_as(self._step_load))
        self._summed = True
        probs, count = stats[n:-1], stats[-1]
        f = self._step_load.sum(0) / count
        value = self.num_experts * (f * probs / count).sum()
        share = self.num_experts * (f * local / count).sum() * self.group.world
        self._logits.clear()
        self._aux_sum += value.detach()
        self._aux_steps += 1
        return self.aux_coef * (value + share - share.detach())

    @torch.no_grad()
    def end_step(self) -> None:
        if not self._summed:  # aux-loss-free routers: sum the load before the bias update
            self.group.sum_(self._step_load)
        self._summed = False
        super().end_step()

    def discard_step(self) -> None:
        super().discard_step()
        self._summed = False
