"""The runs of a training run grouped into stacks and trained side by side (a sweep).

Runs that share a sized miniature and every recipe field but the per-run ones (learning rate, schedule shape,
weight decay, clipping, seed, z-loss) train as one :class:`~backend.train.stack.Stack`: an ablation's variant
with its learning rates and seeds, the zoo's seeds of one architecture, a single model too (a stack of one,
which on a GPU still gains the CUDA-graph step). Stacks larger than the device's memory allows are split
(the training-memory estimate per run, ``arch.train_memory``); a stack whose model class cannot run stacked
(its first step fails) is split in halves until it can, down to single runs, and a single run that still cannot
trains with the single-model trainer (``solo.py``), which its notes say. Stacks take steps in turn, so their
curves advance together. Each run reports as a model of the run does: its losses, validation losses, gradient
norm before clipping, sampled largest attention logit per layer and output log-partition, routers' load; at
the end its checkpoint, its row of the final table, and whether it diverged (a loss that was not finite: the
run is then taken out of its stack, and its row says so; the others go on). Stacks that do not fit the device
together train in waves: a stack starts when the memory of a finished one is free.
"""

from __future__ import annotations

import logging
import math
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..arch.errors import ArchLabError, one_line
from .budget import Sized
from .outcome import FINAL_WINDOWS, FLUSH_S
from .recipe import RunSpec
from .stack import Stack, stack_key
from .statistics import spike_score, spike_window
from .store import METRIC_COLUMNS, ROUTING_COLUMNS, STABILITY_COLUMNS, RunWriter

log = logging.getLogger("archlab.train")
#: a stack may use this share of the device's free memory (the estimate leaves out the vmap temporaries)
MEMORY_SHARE = 0.6
#: stability metrics (attention logits, log Z) are sampled this many times in a run
STABILITY_SAMPLES = 50


@dataclass
class _Context:
    """What every stack of the run reports with."""

    sink: Any
    folder: Path
    data: Any
    task: Any
    started: float


@dataclass
class _Unit:
    """A stack and the run indices (into the run's models) of its runs, in stack order."""

    stack: Stack
    index: list[int]
    jobs: list
    bytes: int = 0  # its runs' training-memory estimate
    init_loss: list = field(default_factory=list)
    grad_norms: dict = field(default_factory=dict)  # run index -> every step's gradient norm
    losses: dict = field(default_factory=dict)  # run index -> every step's training loss
    max_logit: dict = field(default_factory=dict)  # run index -> largest sampled attention logit


def plan(jobs: list[tuple[int, Sized, Any]], device) -> list[list[tuple[int, Sized, Any]]]:
    """Groups of jobs that can share a stack, each no larger than the device's memory allows."""
    groups: dict[tuple, list] = {}
    for job in jobs:
        _, s, recipe = job
        groups.setdefault((s.arch.canon, stack_key(recipe)), []).append(job)
    budget = memory_budget(device)
    out = []
    for group in groups.values():
        most = max(1, int(budget // max(run_bytes(group[0][1], group[0][2], device), 1)))
        out += [group[k : k + most] for k in range(0, len(group), most)]
    return out


def run_bytes(sized: Sized, recipe, device) -> int:
    """Training memory of one run of ``sized`` (the training-memory estimate, ``arch.train_memory``)."""
    from ..arch.train_memory import training_memory

    try:
        return training_memory(
            sized.arch,
            recipe.batch,
            recipe.seq_len,
            "bf16" if device.type == "cuda" and recipe.precision != "fp32" else "fp32",
        ).total
    except ArchLabError:
        return 0


def memory_budget(device) -> int:
    """Bytes the run's stacks may hold at once: a share of the device's free memory (RAM on the CPU)."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import os

        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return int(MEMORY_SHARE * free)


def max_runs(sized: Sized, recipe, device) -> int:
    """How many runs of ``sized`` fit one stack on ``device``."""
    return max(1, int(memory_budget(device) // max(run_bytes(sized, recipe, device), 1)))


def train_stacked(
    jobs: list[tuple[int, Sized, Any]],
    keys: list[str],
    spec: RunSpec,
    data,
    task,
    device,
    sink,
    folder: Path,
    cancel,
    started: float,
) -> None:
    """Train ``jobs`` ((run index, sized miniature, recipe)) as stacks on ``device``, reporting to ``sink``."""
    from .data import BatchStream, validation_windows
    from .outcome import probe_eval_batch

    r = spec.recipe
    ctx = _Context(sink, folder, data, task, started)
    pending = plan(jobs, device)
    budget = memory_budget(device)
    streams = {}
    if data is not None:
        for _, _, rec in jobs:
            streams.setdefault(rec.seed, BatchStream(data.train, r.batch, r.seq_len, rec.seed))
    eval_windows = validation_windows(data.validation, r.seq_len, r.eval_windows) if data is not None else None
    probe_eval = probe_eval_batch(task, r) if task is not None else None
    every = max(5, r.steps // STABILITY_SAMPLES)

    def batches(u: _Unit) -> list:
        step = u.stack.step
        return [streams[j[2].seed][step] if streams else task.batch(j[2].seed, step, r.batch) for j in u.jobs]

    def validate(u: _Unit) -> np.ndarray:
        return u.stack.loss_on(eval_windows) if eval_windows is not None else u.stack.probe_loss(probe_eval)

    def start(units_now: list) -> list[_Unit]:
        """Stacks of the pending groups while they fit the memory budget beside the running ones (at least one)."""
        used = sum(u.bytes for u in units_now)
        out = []
        while pending and not cancel.is_set():
            g = pending[0]
            need = sum(run_bytes(j[1], j[2], device) for j in g)
            if (units_now or out) and used + need > budget:
                break
            pending.pop(0)
            for u in _build(g, keys, device, sink):
                u.bytes = need * len(u.jobs) // len(g)
                u.init_loss = [float(x) for x in validate(u)]  # LR sensitivity and divergence are judged against it
                out.append(u)
            used += need
        return out

    active = start([])
    last_flush = time.monotonic()
    while active and not cancel.is_set():
        for u in list(active):
            if cancel.is_set():
                break
            st = u.stack
            try:
                b = batches(u)
                st.train_step(b)
                if st.step % every == 0 or st.step == 1:
                    _stability(u, st.stability(b), ctx)
                if st.step % r.eval_interval == 0 or st.step >= r.steps:
                    _flush(u, validate(u), ctx)
                    last_flush = time.monotonic()
            except Exception as e:  # out of memory, or a class that cannot run stacked at this size
                active.remove(u)
                split = _split_after_failure(u, e, keys, device, sink)
                for v in split:
                    v.bytes = u.bytes * len(v.jobs) // max(1, len(u.jobs))
                    v.init_loss = [float(x) for x in validate(v)]
                active += split
                continue
            if u.stack is not None and st.step >= r.steps:
                active.remove(u)
                _finish(u, ctx, stopped=False)
                _release(device)
                active += start(active)
            elif u.stack is not None and not u.index:  # every run of it diverged
                active.remove(u)
                st.close()
                _release(device)
                active += start(active)
        if time.monotonic() - last_flush >= FLUSH_S:
            for u in active:
                _flush(u, None, ctx)
            last_flush = time.monotonic()
    for u in active:  # stopped: keep what they learned
        _flush(u, None, ctx)
        _finish(u, ctx, stopped=True)
    for group in pending:  # never started: stopped before their turn
        for i, *_ in group:
            sink.model(i, status="stopped", error="stopped before it started")


def _release(device) -> None:
    """Give a finished stack's memory (its CUDA graph's pool too) back before the next one starts."""
    if device.type == "cuda":
        import torch

        torch.cuda.empty_cache()


def _build(group: list, keys: list[str], device, sink) -> list[_Unit]:
    """The stack of ``group``; a group whose stack cannot be built is split in halves (down to single runs)."""
    _, s, _ = group[0]
    try:
        st = Stack(s, [j[2] for j in group], [keys[j[0]] for j in group], device)
    except ArchLabError as e:
        for i, *_ in group:
            sink.model(i, status="failed", error=str(e))
        return []
    except Exception as e:
        if len(group) == 1:
            return _solo(group[0], keys, device, sink, e)
        half = len(group) // 2
        return _build(group[:half], keys, device, sink) + _build(group[half:], keys, device, sink)
    for i, *_ in group:
        sink.model(i, status="training", device=str(device), notes=_notes(s, st))
    return [_Unit(st, [j[0] for j in group], list(group))]


def _solo(job, keys, device, sink, why: Exception) -> list[_Unit]:
    """A run whose stack of one failed: the single-model trainer (``solo.Solo``), or its failure in one line."""
    from .solo import Solo

    i, s, recipe = job
    log.warning(
        "%s cannot take the stacked step (%s); training it with the single-model trainer", keys[i], one_line(why)
    )
    try:
        st = Solo(s, recipe, keys[i], device, one_line(why))
    except Exception as e:
        log.error("building %s failed:\n%s", keys[i], traceback.format_exc())
        sink.model(i, status="failed", error=one_line(e))
        return []
    sink.model(i, status="training", device=str(device), notes=tuple(s.notes) + (st.graph_note,))
    return [_Unit(st, [i], [job])]


def _notes(s: Sized, st: Stack) -> tuple:
    return tuple(s.notes) + (f"stacked with {len(st.runs) - 1} other run(s)" if len(st.runs) > 1 else "trained alone",)


def _split_after_failure(u: _Unit, e: Exception, keys, device, sink) -> list[_Unit]:
    """A stack whose step failed: out of memory or any failure of a stack of several runs → start its runs again
    in two halves; a single run's failure is its end."""
    import torch

    st = u.stack
    oom = isinstance(e, torch.OutOfMemoryError)
    first = st.step <= 1
    st.close()
    u.stack = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if len(u.jobs) > 1 and (oom or first):
        half = len(u.jobs) // 2
        log.warning("a stack of %d runs failed (%s); trying halves", len(u.jobs), one_line(e))
        return _build(u.jobs[:half], keys, device, sink) + _build(u.jobs[half:], keys, device, sink)
    if first and not oom and isinstance(st, Stack):  # one run that cannot take the stacked step
        return _solo(u.jobs[0], keys, device, sink, e)
    if not oom:
        log.error("stack failed:\n%s", traceback.format_exc())
    msg = "out of memory on the GPU (the model was freed; try a smaller budget or batch)" if oom else one_line(e)
    for i in u.index:
        sink.model(i, status="failed", error=msg)
    return []


def _stability(u: _Unit, m: dict, ctx: _Context) -> None:
    st, sink = u.stack, ctx.sink
    now = round(time.time() - ctx.started, 3)
    rows = []
    for r, i in enumerate(u.index):
        key = st.runs[r].key
        for layer, value in enumerate(m["max_logit"][r]):
            rows.append({"model": key, "step": st.step, "layer": layer, "max_attn_logit": float(value)})
        top = float(np.max(m["max_logit"][r])) if len(m["max_logit"][r]) else float("nan")
        u.max_logit[i] = max(u.max_logit.get(i, -math.inf), top) if math.isfinite(top) else u.max_logit.get(i, top)
        sink.rows(
            "metrics.csv",
            METRIC_COLUMNS,
            [
                {
                    "model": key,
                    "step": st.step,
                    "tokens": st.step * st.recipe.batch * st.recipe.seq_len,
                    "train_loss": "",
                    "val_loss": "",
                    "lr": st.runs[r].recipe.lr_at(max(0, st.step - 1)),
                    "elapsed_s": now,
                    "grad_norm": "",
                    "max_attn_logit": top,
                    "log_z": float(m["log_z"][r]),
                }
            ],
        )
    sink.rows("stability.csv", STABILITY_COLUMNS, rows)


def _flush(u: _Unit, val: Optional[np.ndarray], ctx: _Context) -> None:
    """Losses and gradient norms since the last flush, validation losses, routers' load, progress; runs whose loss
    is no longer finite are marked diverged and taken out of the stack."""
    st, sink = u.stack, ctx.sink
    taken = st.take()
    st.sync_time()
    n = len(taken["loss"])
    first = st.step - n
    now = round(time.time() - ctx.started, 3)
    rows = []
    for r, i in enumerate(u.index):
        run = st.runs[r]
        for j in range(n):
            step = first + j + 1
            rows.append(
                {
                    "model": run.key,
                    "step": step,
                    "tokens": step * st.recipe.batch * st.recipe.seq_len,
                    "train_loss": float(taken["loss"][j, r]),
                    "val_loss": "",
                    "lr": run.recipe.lr_at(step - 1),
                    "elapsed_s": now,
                    "grad_norm": float(taken["grad_norm"][j, r]),
                    "max_attn_logit": "",
                    "log_z": "",
                }
            )
        if val is not None and rows:
            rows[-1]["val_loss"] = float(val[r])
        u.losses.setdefault(i, []).extend(taken["loss"][:, r].tolist())
        u.grad_norms.setdefault(i, []).extend(taken["grad_norm"][:, r].tolist())
    sink.rows("metrics.csv", METRIC_COLUMNS, rows)
    snap = st.routing_snapshot() if n else None
    if snap is not None:
        from ..live.routing import balance

        load, aux = snap
        routing = []
        for r in range(len(u.index)):
            b = balance(load[r])
            routing += [
                {
                    "model": st.runs[r].key,
                    "step": st.step,
                    "tokens": st.step * st.recipe.batch * st.recipe.seq_len,
                    "layer": layer,
                    "max_over_mean": float(b["max_over_mean"][k]),
                    "entropy": float(b["entropy"][k]),
                    "never_chosen": int((load[r][k] == 0).sum()),
                    "aux_loss": float(aux[r]) if aux is not None else "",
                    "load": " ".join(str(int(x)) for x in load[r][k]),
                }
                for k, layer in enumerate(st.routers.layers)
            ]
        sink.rows("routing.csv", ROUTING_COLUMNS, routing)
    steps = st.recipe.steps
    step_s = st.train_seconds / st.step if st.step else None
    for r, i in enumerate(u.index):
        run = st.runs[r]
        fields = {
            "step": st.step,
            "tokens": st.step * st.recipe.batch * st.recipe.seq_len,
            "elapsed_s": st.train_seconds,
            "eta_s": (steps - st.step) * step_s if step_s else None,
            "tok_s": st.step * st.recipe.batch * st.recipe.seq_len / st.train_seconds if st.train_seconds else None,
            "peak_bytes": st.peak_bytes,
            "stream_sha256": run.stream.hexdigest(),
            "batches": run.stream.batches,
        }
        if n:
            fields["train_loss"] = float(np.mean(taken["loss"][-10:, r]))
        if val is not None:
            fields["val_loss"] = float(val[r])
        sink.model(i, **fields)
    bad = [r for r in range(len(st.runs)) if n and not np.all(np.isfinite(taken["loss"][:, r]))]
    if bad:
        for r in bad:
            run = st.runs[r]
            j = int(np.argmax(~np.isfinite(taken["loss"][:, r])))
            run.status, run.diverged_at = "diverged", first + j + 1
        _diverged(u, bad, ctx)


def _diverged(u: _Unit, bad: list[int], ctx: _Context) -> None:
    """Record the runs at stack positions ``bad`` as diverged (no checkpoint) and take them out of the stack."""
    st = u.stack
    for r in bad:
        _report(
            u,
            r,
            ctx,
            status="diverged",
            val=float("nan"),
            model_dir=None,
            by_setting={},
            by_distance={},
            note=f"loss not finite at step {st.runs[r].diverged_at}",
        )
    keep = [r for r in range(len(st.runs)) if r not in bad]
    if keep:
        st.keep(keep)
    u.index = [u.index[r] for r in keep]
    u.jobs = [u.jobs[r] for r in keep]
    u.init_loss = [u.init_loss[r] for r in keep]


def _finish(u: _Unit, ctx: _Context, stopped: bool) -> None:
    """Final validation loss (or probe accuracy), a checkpoint per run, the final rows; then the stack is freed."""
    from .data import validation_windows
    from .outcome import probe_eval_batch, tokenizer_for

    st, sink, data, task = u.stack, ctx.sink, ctx.data, ctx.task
    if st is None or not u.index:
        return
    r0 = st.recipe
    for i in u.index:
        sink.model(i, status="evaluating")
    try:
        if data is not None:
            vals = st.loss_on(
                validation_windows(data.validation, r0.seq_len, r0.eval_windows if stopped else None)[:FINAL_WINDOWS]
            )
            probes = [({}, {})] * len(u.index)
        else:
            vals = st.probe_loss(probe_eval_batch(task, r0))
            probes = [({}, {})] * len(u.index) if stopped else st.probe_accuracy(task, r0.probe_examples)
        writer = RunWriter(ctx.folder)
        tokenizer = tokenizer_for(data)
        for r in range(len(u.index)):
            model_dir = writer.model_dir(st.runs[r].key)
            st.save(r, model_dir, tokenizer)
            _report(
                u,
                r,
                ctx,
                status="stopped" if stopped else "finished",
                val=float(vals[r]),
                model_dir=model_dir,
                by_setting=probes[r][0],
                by_distance=probes[r][1],
            )
    except Exception as e:
        log.error("finishing a stack failed:\n%s", traceback.format_exc())
        for i in u.index:
            sink.model(i, status="failed", error=f"could not evaluate or save: {one_line(e)}")
    finally:
        st.close()
        u.stack = None


def _report(
    u: _Unit,
    r: int,
    ctx: _Context,
    *,
    status: str,
    val: float,
    model_dir: Optional[Path],
    by_setting: dict,
    by_distance: dict,
    note: str = "",
) -> None:
    """One run's final row (through the runner's ``report_result``) with the sweep's columns."""
    from .outcome import report_result

    st, sink = u.stack, ctx.sink
    i, run = u.index[r], st.runs[r]
    init = u.init_loss[r] if r < len(u.init_loss) else float("nan")
    losses, norms = u.losses.get(i, []), u.grad_norms.get(i, [])
    window = spike_window(st.recipe.steps)
    if status == "finished" and math.isfinite(val) and math.isfinite(init) and val > init:
        status, note = "diverged", f"final loss {val:.3f} above the loss at initialisation {init:.3f}"
    extra = {
        "lr": run.recipe.lr,
        "seed": run.recipe.seed,
        "warmup": run.recipe.warmup,
        "weight_decay": run.recipe.weight_decay,
        "z_loss": run.recipe.z_loss,
        "init_loss": init,
        "diverged": status == "diverged",
        "diverged_note": note,
        "loss_spike_score": spike_score(losses, window),
        "grad_spike_score": spike_score(norms, window),
        "spike_window": window,
        "max_attn_logit": u.max_logit.get(i, float("nan")),
        "stack_runs": len(st.runs),
        "step_kind": st.graph_note,
    }
    report_result(
        i,
        sink,
        ctx.folder,
        key=run.key,
        sized=st.sized,
        recipe=run.recipe,
        status=status,
        step=st.step,
        tokens=st.step * st.recipe.batch * st.recipe.seq_len,
        val=val,
        by_setting=by_setting,
        by_distance=by_distance,
        stream=run.stream,
        train_seconds=st.train_seconds,
        peak_bytes=st.peak_bytes,
        model_dir=model_dir,
        data=ctx.data,
        task=ctx.task,
        extra=extra,
    )
    if note:
        sink.model(i, error=note)
