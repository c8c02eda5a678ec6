"""Runs trained one at a time by the single-model trainer (``trainer.Member``), taking steps in turn on their
batch streams so that their curves advance together: the loop of a run that does not stack its runs, of the
worker processes, and of a distributed launch (each model with DDP over the launch's processes).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..arch.errors import one_line
from .budget import Sized
from .outcome import FINAL_WINDOWS, FLUSH_S, Sink, probe_eval_batch, probe_loss, report_result, tokenizer_for
from .recipe import RunSpec
from .store import METRIC_COLUMNS, ROUTING_COLUMNS

log = logging.getLogger("archlab.train")


def train_loop(
    jobs: list[tuple[int, Sized, Any]],
    keys: list[str],
    spec: RunSpec,
    data,
    task,
    device,
    sink: Sink,
    folder: Path,
    cancel,
    started: float,
    group=None,
    stacked: bool = True,
) -> None:
    """Train ``jobs`` ((run index, sized miniature, its recipe)) on ``device``, reporting to ``sink``.

    ``stacked``: runs with the same shapes train as one stacked model (``sweep.train_stacked``); otherwise each
    run trains on its own, the runs in turn. ``group`` (a distributed launch): every process runs this loop in step
    with the others, each model with DDP; they stop together, rank 0 evaluates, and a failure ends the process
    (the launcher stops the others)."""
    import torch

    from .data import BatchStream, validation_windows
    from .trainer import Member

    if stacked and group is None:
        from .sweep import train_stacked

        return train_stacked(jobs, keys, spec, data, task, device, sink, folder, cancel, started)
    r = spec.recipe
    members: dict[int, Any] = {}
    for i, s, recipe in jobs:
        try:
            members[i] = Member(keys[i], s, recipe, device, group=group).start()
            sink.model(i, status="training", device=str(device))
        except Exception as e:
            if group is not None:
                raise
            sink.model(i, status="failed", error=one_line(e))
    streams = (
        {m.recipe.seed: BatchStream(data.train, r.batch, r.seq_len, m.recipe.seed) for m in members.values()}
        if data is not None
        else None
    )
    eval_windows = validation_windows(data.validation, r.seq_len, r.eval_windows) if data is not None else None
    probe_eval = probe_eval_batch(task, r) if task is not None else None
    active = list(members)
    last_flush = time.monotonic()
    report = _Reporter(sink, spec, started, keys)
    # a distributed launch stops when any process was asked to, all at the same step
    stopping = cancel.is_set if group is None else lambda: group.any(cancel.is_set())
    evaluates = group is None or group.main
    while active and not stopping():
        for i in list(active):
            if group is None and cancel.is_set():
                break
            m = members[i]
            try:
                batch = (
                    streams[m.recipe.seed][m.step]
                    if streams is not None
                    else task.batch(m.recipe.seed, m.step, r.batch)
                )
                m.train_step(batch)
                if m.step % r.eval_interval == 0 or m.done:
                    val = (
                        None
                        if not evaluates
                        else m.loss_on(eval_windows)
                        if eval_windows is not None
                        else probe_loss(m, probe_eval)
                    )
                    report.flush(i, m, val, members)
                    last_flush = time.monotonic()
            except torch.OutOfMemoryError:
                if group is not None:
                    raise
                _drop(i, members, sink, "out of memory on the GPU (the model was freed; try a smaller budget or batch)")
                active.remove(i)
                continue
            except Exception as e:
                if group is not None:
                    raise
                log.error("model %s failed:\n%s", m.key, traceback.format_exc())
                _drop(i, members, sink, one_line(e))
                active.remove(i)
                continue
            if m.done:
                active.remove(i)
                _finish(i, m, data, task, spec, sink, folder, stopped=False, group=group)
                del members[i]
        if time.monotonic() - last_flush >= FLUSH_S:
            for i in active:
                report.flush(i, members[i], None, members)
            last_flush = time.monotonic()
    for i in active:  # stopped: keep what they learned
        report.flush(i, members[i], None, members)
        _finish(i, members[i], data, task, spec, sink, folder, stopped=True, group=group)


class _Reporter:
    """Turns a member's progress into rows and status for a Sink."""

    def __init__(self, sink: Sink, spec: RunSpec, started: float, keys: list[str]):
        self.sink, self.r, self.started = sink, spec.recipe, started

    def flush(self, i: int, m, val: Optional[float], members: dict) -> None:
        r = m.recipe
        first = m.step - len(m._losses)
        losses = m.take_losses()
        norms = m.take_norms()
        m.sync_time()
        now = round(time.time() - self.started, 3)
        rows = [
            {
                "model": m.key,
                "step": first + j + 1,
                "tokens": (first + j + 1) * r.batch * r.seq_len,
                "train_loss": loss,
                "val_loss": "",
                "lr": r.lr_at(first + j),
                "elapsed_s": now,
                "grad_norm": norms[j] if j < len(norms) else "",
            }
            for j, loss in enumerate(losses)
        ]
        if val is not None:
            if rows:
                rows[-1]["val_loss"] = val
            else:
                rows.append(
                    {
                        "model": m.key,
                        "step": m.step,
                        "tokens": m.tokens,
                        "train_loss": "",
                        "val_loss": val,
                        "lr": r.lr_at(max(0, m.step - 1)),
                        "elapsed_s": now,
                    }
                )
        self.sink.rows("metrics.csv", METRIC_COLUMNS, rows)
        if m.routers is not None and losses:
            snap = m.routers.snapshot(m.step)
            summary = snap.summary()
            self.sink.rows(
                "routing.csv",
                ROUTING_COLUMNS,
                [
                    {
                        "model": m.key,
                        "step": m.step,
                        "tokens": m.tokens,
                        "layer": layer,
                        "max_over_mean": float(summary["max_over_mean"][row]),
                        "entropy": float(summary["entropy"][row]),
                        "never_chosen": int(summary["never_chosen"][row]),
                        "aux_loss": snap.aux_loss if snap.aux_loss is not None else "",
                        "load": " ".join(str(int(x)) for x in snap.load[row]),
                    }
                    for row, layer in enumerate(snap.layers)
                ],
            )
        step_s = m.train_seconds / m.step if m.step else None
        # models in this loop take turns: the remaining steps wait for each other's steps too
        turn = sum(o.train_seconds / o.step for o in members.values() if o.step and not o.done)
        eta = (r.steps - m.step) * max(turn, step_s or 0) if step_s else None
        fields = {
            "step": m.step,
            "tokens": m.tokens,
            "elapsed_s": m.train_seconds,
            "eta_s": eta,
            "tok_s": m.tokens / m.train_seconds if m.train_seconds > 0 else None,
            "peak_bytes": m.peak_bytes,
            "stream_sha256": m.stream.hexdigest(),
            "batches": m.stream.batches,
        }
        if losses:
            fields["train_loss"] = float(np.mean(losses[-10:]))
        if val is not None:
            fields["val_loss"] = val
        self.sink.model(i, **fields)


def _drop(i: int, members: dict, sink: Sink, message: str) -> None:
    import torch

    members.pop(i).close()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    sink.model(i, status="failed", error=message)


def _finish(i: int, m, data, task, spec: RunSpec, sink: Sink, folder: Path, stopped: bool, group=None) -> None:
    """Full validation loss (not when stopped), probe accuracy, the checkpoint and the final row (under a
    distributed launch by rank 0, whose outcome the others wait for and take)."""
    sink.model(i, status="evaluating")
    outcome = {}
    try:
        if group is None or group.main:
            outcome = _record(i, m, data, task, spec, sink, folder, stopped)
    except Exception as e:
        log.error("finishing %s failed:\n%s", m.key, traceback.format_exc())
        outcome = {"status": "failed", "error": f"could not evaluate or save: {one_line(e)}"}
        sink.model(i, **outcome)
    finally:
        if group is not None:
            outcome = group.broadcast(outcome)
            if not group.main:
                sink.model(i, **outcome)
        m.close()


def _record(i: int, m, data, task, spec: RunSpec, sink: Sink, folder: Path, stopped: bool) -> dict:
    from .data import validation_windows
    from .store import RunWriter

    r = m.recipe
    val = None
    by_setting, by_distance = {}, {}
    if data is not None:
        val = m.loss_on(
            validation_windows(data.validation, r.seq_len, None if not stopped else r.eval_windows)[:FINAL_WINDOWS]
        )
    else:
        val = probe_loss(m, probe_eval_batch(task, r))
        if not stopped:
            by_setting, by_distance = m.probe_accuracy(task, r.probe_examples)
    writer = RunWriter(folder)
    model_dir = writer.model_dir(m.key)
    m.save(model_dir, tokenizer_for(data))
    return report_result(
        i,
        sink,
        folder,
        key=m.key,
        sized=m.sized,
        recipe=r,
        status="stopped" if stopped else "finished",
        step=m.step,
        tokens=m.tokens,
        val=val,
        by_setting=by_setting,
        by_distance=by_distance,
        stream=m.stream,
        train_seconds=m.train_seconds,
        peak_bytes=m.peak_bytes,
        model_dir=model_dir,
        data=data,
        task=task,
    )
