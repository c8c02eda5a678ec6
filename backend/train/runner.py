"""A training run: several architectures trained side by side under one recipe.

The run's worker thread prepares the data, sizes every model to the budget and writes the recipe; then the
models train either in that thread, stepped in turn on the same batch stream so their curves advance
together (the CPU, one GPU), or one group per worker process at the same time (several GPUs, or several
processes sharing one GPU), reporting back over a queue. Every step's loss, each validation loss, the
routers' load, and at the end of each model its full validation loss (or probe accuracy), checkpoint and
row of the final table go into the run's state and its folder as they come, so the run carries on when the
page that started it closes; any page holding the run's id draws from :meth:`TrainingRun.view`.
Stop takes effect before the next step; a model that fails (a budget it cannot meet, out of memory) is
marked failed with one line and the others go on; models that were stopped keep their checkpoints.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue as queue_mod
import threading
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

from ..arch.architecture import resolve
from ..arch.errors import ArchLabError, one_line
from ..live.runs import new_id
from . import data as data_mod
from .budget import METRICS, Sized, flops_per_token, non_embedding, size_to_budget
from .outcome import FINAL_WINDOWS, FLUSH_S, Sink, vocab_of  # noqa: F401  (re-exported for callers)
from .probes import ProbeTask, probe_task
from .recipe import RunSpec
from .store import NullWriter, RunWriter, run_folder
from .turns import train_loop

log = logging.getLogger("archlab.train")


@dataclass
class ModelStatus:
    """What one model of the run is doing and has done."""

    key: str
    label: str
    status: str = "queued"  # queued / sizing / training / evaluating / finished / stopped / failed
    step: int = 0
    steps: int = 0
    tokens: int = 0
    train_loss: Optional[float] = None
    val_loss: Optional[float] = None
    tok_s: Optional[float] = None
    elapsed_s: float = 0.0
    eta_s: Optional[float] = None
    peak_bytes: Optional[int] = None
    error: str = ""
    total: Optional[int] = None
    active: Optional[int] = None
    nonemb_active: Optional[int] = None
    nonemb_total: Optional[int] = None
    budget_value: Optional[float] = None
    deviation: Optional[float] = None
    flops_per_token: Optional[float] = None
    experts: Optional[int] = None
    real_experts: Optional[int] = None
    notes: tuple = ()
    device: str = ""
    stream_sha256: str = ""
    batches: int = 0
    checkpoint: str = ""


@dataclass(frozen=True)
class RunView:
    """A consistent copy of a run's state for drawing."""

    id: str
    spec: RunSpec
    status: str
    message: str
    models: list[ModelStatus]
    metrics: list[dict]
    routing: list[dict]
    probes: list[dict]
    results: list[dict]
    shared: dict
    version: int
    started: float
    folder: str


def _quiet_transformers():
    from ..arch import libs

    libs.load()
    import transformers

    tlog = logging.getLogger("transformers")
    level = tlog.level
    tlog.setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    return lambda: tlog.setLevel(level)


class TrainingRun:
    """Train ``spec.models`` under ``spec.recipe``; ``start()``, then read ``view()``; ``cancel()`` stops it.

    ``processes``: 0 trains every model in the run's thread, in turn; N > 0 trains the models in N worker
    processes at once (models spread over ``spec.device``'s GPUs round-robin when it is ``auto``/``cuda``).
    ``group``: under a distributed launch (``distributed.Group``), every process of the launch runs the same
    run with the same ``run_id`` and trains each model in turn with DDP; rank 0 alone writes the folder.
    ``sizer``: sizes the models together (an ablation's variants, ``budget.size_variants``), called as
    ``sizer(budget, metric, **shape)`` → one Sized or ArchLabError per model. ``stacked``: runs with the same
    shapes train as one stacked model (``sweep.py``); False trains every run on its own, in turn.
    """

    def __init__(
        self,
        spec: RunSpec,
        *,
        run_id: Optional[str] = None,
        root: Optional[Path] = None,
        upload: Optional[data_mod.TokenData] = None,
        processes: int = 0,
        group=None,
        sizer=None,
        stacked: bool = True,
    ):
        self.spec = spec.validate()
        self.sizer, self.stacked = sizer, stacked
        if spec.recipe.data == "upload" and upload is None:
            raise ArchLabError("data 'upload' needs an uploaded .txt file")
        if isinstance(processes, bool) or not isinstance(processes, int) or not 0 <= processes <= 64:
            raise ArchLabError(f"processes must be an integer from 0 to 64, got {processes!r}")
        if group is not None and (processes or run_id is None):
            raise ArchLabError("a distributed run trains in the launch's processes, under the id rank 0 made")
        self.group = group
        self.id = run_id or new_id()
        self.folder = run_folder(self.id, root)
        self.upload, self.processes = upload, processes
        self.members = spec.runs()  # (model index, key, recipe) of every run
        self.keys = [k for _, k, _ in self.members]
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.status, self.message = "created", ""
        labels = [_label(m) for m in spec.models]
        self.models = [ModelStatus(k, labels[i] if not spec.members else k, steps=r.steps) for i, k, r in self.members]
        self.metrics: list[dict] = []
        self.routing: list[dict] = []
        self.probes: list[dict] = []
        self.stability: list[dict] = []
        self.results: list[dict] = []
        self.shared: dict = {}
        self.version = 0
        self.started = time.time()
        self.trackers = None
        if group is None or group.main:
            self.writer = RunWriter(self.folder)
            from .trackers import Trackers

            self.trackers = Trackers(self.folder, {k: r.as_dict() for _, k, r in self.members})
        else:
            self.writer = NullWriter(self.folder)

    # ----- control
    def start(self) -> "TrainingRun":
        if self._thread is not None:
            raise ArchLabError("this run has already started")
        from ..arch import libs

        libs.load()  # transformers' first import is not thread-safe: do it here, once per process
        self._thread = threading.Thread(target=self._work, daemon=True, name=f"archlab-train-{self.id[:6]}")
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Stop before the next step; trained checkpoints are kept."""
        self._cancel.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: Optional[float] = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def view(self) -> RunView:
        with self._lock:
            return RunView(
                self.id,
                self.spec,
                self.status,
                self.message,
                [replace(m) for m in self.models],
                list(self.metrics),
                list(self.routing),
                list(self.probes),
                list(self.results),
                dict(self.shared),
                self.version,
                self.started,
                str(self.folder),
            )

    # ----- the Sink of a loop in this process
    def model(self, i: int, **fields) -> None:
        with self._lock:
            for k, v in fields.items():
                setattr(self.models[i], k, v)
            self.version += 1

    def rows(self, name: str, columns: tuple, rows: list[dict]) -> None:
        if not rows:
            return
        with self._lock:
            getattr(self, name.split(".")[0]).extend(rows)
            self.version += 1
        self.writer.append(name, columns, rows)
        if name == "metrics.csv" and self.trackers is not None:
            self.trackers.log(rows)

    def result(self, row: dict) -> None:
        import pandas as pd

        with self._lock:
            self.results.append(row)
            self.version += 1
            table = pd.DataFrame(self.results)
        self.writer.table("results.csv", table)

    def _set(self, **kw) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, v)
            self.version += 1

    # ----- the worker thread
    def _work(self) -> None:
        import torch

        restore = _quiet_transformers()
        try:
            self._set(status="preparing", message="preparing the data")
            data, task = self._data()
            sized = self._size(data, task)
            jobs = [(n, s, self.members[n][2]) for n, s in enumerate(sized) if s is not None]
            devices = _devices(self.spec.device, self.processes) if self.group is None else [self.group.device]
            self._write_recipe(data, task, devices[0])
            self._set(status="training", message="")
            if self.processes:
                self._train_in_processes(jobs, data, task, devices)
            else:
                train_loop(
                    jobs,
                    self.keys,
                    self.spec,
                    data,
                    task,
                    devices[0],
                    self,
                    self.writer.folder,
                    self._cancel,
                    self.started,
                    self.group,
                    stacked=self.stacked,
                )
            stopped = self._cancel.is_set()
            done = [m for m in self.models if m.status in ("finished", "stopped", "diverged")]
            if not done:
                failed = "; ".join(f"{m.key}: {m.error}" for m in self.models if m.error)
                self._set(status="failed", message=f"no model finished ({failed[:400]})")
            else:
                self._set(
                    status="stopped" if stopped else "finished",
                    message="stopped: the checkpoints trained so far were kept" if stopped else "",
                )
        except ArchLabError as e:
            self._set(status="failed", message=str(e))
        except Exception as e:  # never a traceback for the page; the log has it
            log.error("training run %s failed:\n%s", self.id, traceback.format_exc())
            self._set(status="failed", message=one_line(e))
        finally:
            restore()
            if self.trackers is not None:
                self.trackers.close()
            self.writer.write_json(
                "status.json",
                {"status": self.status, "message": self.message, "models": [asdict(m) for m in self.models]},
            )
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _data(self) -> tuple[Optional[data_mod.TokenData], Optional[ProbeTask]]:
        r = self.spec.recipe
        if r.data == "corpus":
            data = data_mod.corpus_data()
            data_mod.check_enough(data, r.tokens, r.seq_len)
            return data, None
        if r.data == "upload":
            data_mod.check_enough(self.upload, r.tokens, r.seq_len)
            return self.upload, None
        return None, probe_task(r.data, r.probe_vocab, r.seq_len)

    def _size(self, data, task) -> list[Optional[Sized]]:
        """Each run's sized miniature (runs of one model share it); a model that cannot be sized fails its runs."""
        r = self.spec.recipe
        vocab, eos, pad = vocab_of(data, task)
        common = dict(
            seq_len=r.seq_len,
            vocab=vocab,
            eos=eos,
            pad=pad,
            max_positions=max(1024, r.seq_len),
            max_total=r.max_total,
            layers=r.layers,
            min_head_dim=r.min_head_dim,
        )
        runs_of = {}
        for n, (i, _, _) in enumerate(self.members):
            runs_of.setdefault(i, []).append(n)
        for runs in runs_of.values():
            for n in runs:
                self.model(n, status="sizing")
        if self.sizer is not None:
            by_model = self.sizer(r.budget, r.budget_metric, **common)
        else:
            by_model = []
            for i, source in enumerate(self.spec.models):
                if self._cancel.is_set() or i not in runs_of:
                    by_model.append(None)
                    continue
                try:
                    by_model.append(size_to_budget(source, r.budget, r.budget_metric, **common))
                except ArchLabError as e:
                    by_model.append(e)
        out: list[Optional[Sized]] = [None] * len(self.members)
        for i, runs in runs_of.items():
            s = by_model[i]
            for n in runs:
                if isinstance(s, ArchLabError) or s is None:
                    self.model(n, status="failed" if s is not None else "stopped", error=str(s or ""))
                    continue
                c = s.arch.counts
                self.model(
                    n,
                    status="queued",
                    total=c.total,
                    active=c.active,
                    nonemb_active=non_embedding(c, "active"),
                    nonemb_total=non_embedding(c, "total"),
                    budget_value=s.value,
                    deviation=s.deviation,
                    flops_per_token=flops_per_token(s.arch, r.seq_len),
                    experts=s.experts,
                    real_experts=s.real_experts,
                    notes=s.notes,
                )
                out[n] = s
        if not any(out):
            raise ArchLabError(
                "no model of this run could be sized to the budget: "
                + "; ".join(m.error for m in self.models if m.error)[:400]
            )
        return out

    def _write_recipe(self, data, task, device) -> None:
        from .trainer import precision_of

        r = self.spec.recipe
        shared = {
            "tokenizer": "assets/tokenizer (byte-level BPE, shipped)"
            if task is None
            else f"synthetic vocabulary of {task.vocab} ids (keys 1–{task.vocab // 2 - 1}, values {task.vocab // 2}–{task.vocab - 1})",
            "data": data.describe()
            if data is not None
            else f"{task.name} probe, sequence length {task.seq_len}, KV pairs {list(task.kv_pairs)}",
            "data_sha256": data.sha256 if data is not None else "",
            "batch_order": f"batch i drawn from (seed {r.seed}, i): the same for every model",
            "optimizer": f"AdamW (betas {tuple(r.betas)}, weight decay {r.weight_decay} on matrices, eps 1e-8"
            f"{', fused' if device.type == 'cuda' else ''})",
            "schedule": f"linear warm-up {r.warmup_steps} steps to {r.lr:g}, cosine to {r.lr * r.min_lr_ratio:g} "
            f"at step {r.steps}",
            "batch": f"{r.batch} × {r.seq_len} tokens",
            "tokens": r.tokens,
            "steps": r.steps,
            "precision": precision_of(device, r),
            "seed": r.seed,
            "device": str(device),
            "budget": f"{r.budget:,.0f} {METRICS[r.budget_metric]} (±5%)",
            "grad_clip": r.grad_clip,
            "layers": r.layers,
            "workers": f"{self.processes} processes" if self.processes else "one thread, models in turn",
        }
        if self.group is not None:
            shared.update(self.group.recipe_notes(r.batch))
        models = {
            m.key: {
                k: getattr(m, k)
                for k in (
                    "label",
                    "status",
                    "total",
                    "active",
                    "nonemb_active",
                    "nonemb_total",
                    "budget_value",
                    "deviation",
                    "experts",
                    "real_experts",
                    "notes",
                    "error",
                )
            }
            for m in self.models
        }
        self._set(shared=shared)
        self.writer.write_json(
            "recipe.json", {"run_id": self.id, "spec": self.spec.to_json(), "shared": shared, "models": models}
        )

    def _train_in_processes(self, jobs, data, task, devices) -> None:
        """Groups of models in worker processes (spawned), reporting over a queue applied here."""
        ctx = mp.get_context("spawn")
        q, cancel = ctx.Queue(), ctx.Event()
        tokens = None
        if data is not None:
            tokens = str(self.folder / "tokens.npz")
            data_mod.save_tokens(Path(tokens), data.train, data.validation)
        groups = [jobs[k :: self.processes] for k in range(self.processes)]
        procs = []
        for k, group in enumerate(g for g in groups if g):
            payload = {
                "spec": self.spec.to_json(),
                "keys": self.keys,
                "tokens": tokens,
                "data_name": data.name if data is not None else "",
                "device": str(devices[k % len(devices)]),
                "folder": str(self.folder),
                "started": self.started,
                "jobs": [(i, s.config, s.value, s.experts, s.real_experts) for i, s, _ in group],
                "stacked": self.stacked,
            }
            p = ctx.Process(target=_child, args=(payload, q, cancel), daemon=True, name=f"archlab-train-{k}")
            p.start()
            procs.append(p)
        while any(p.is_alive() for p in procs) or not q.empty():
            if self._cancel.is_set():
                cancel.set()
            try:
                kind, args = q.get(timeout=0.2)
            except queue_mod.Empty:
                continue
            getattr(self, kind)(*args[0], **args[1])
        for p in procs:
            p.join(5)
            if p.exitcode not in (0, None):
                for i, *_ in jobs:
                    if self.models[i].status in ("queued", "training", "evaluating"):
                        self.model(i, status="failed", error=f"its worker process exited with code {p.exitcode}")


class _QueueSink:
    """A worker process's Sink: every report goes to the parent's queue."""

    def __init__(self, q):
        self.q = q

    def model(self, i: int, **fields) -> None:
        self.q.put(("model", ((i,), fields)))

    def rows(self, name: str, columns: tuple, rows: list[dict]) -> None:
        if rows:
            self.q.put(("rows", ((name, columns, rows), {})))

    def result(self, row: dict) -> None:
        self.q.put(("result", ((row,), {})))


def _child(payload: dict, q, cancel) -> None:
    """Entry point of a worker process: rebuild what the parent sized and train it, reporting to ``q``."""
    restore = _quiet_transformers()
    sink = _QueueSink(q)
    try:
        spec = RunSpec.from_json(payload["spec"])
        r = spec.recipe
        data = data_mod.load_tokens(Path(payload["tokens"]), payload["data_name"]) if payload["tokens"] else None
        task = None if data is not None else probe_task(r.data, r.probe_vocab, r.seq_len)
        jobs = []
        runs = spec.runs()
        for i, config, value, experts, real in payload["jobs"]:
            arch = resolve(config)
            jobs.append(
                (
                    i,
                    Sized(
                        arch.label,
                        config,
                        arch,
                        r.budget_metric,
                        r.budget,
                        value,
                        arch.counts.total,
                        arch.counts.active,
                        experts,
                        real,
                    ),
                    runs[i][2],
                )
            )
        import torch

        train_loop(
            jobs,
            payload["keys"],
            spec,
            data,
            task,
            torch.device(payload["device"]),
            sink,
            Path(payload["folder"]),
            cancel,
            payload["started"],
            stacked=payload.get("stacked", True),
        )
    except Exception as e:
        for i, *_ in payload["jobs"]:
            sink.model(i, status="failed", error=one_line(e))
    finally:
        restore()


def start_distributed(spec: RunSpec, upload: Optional[data_mod.TokenData], group) -> TrainingRun:
    """The same run started on every process of a distributed launch (``distributed.Group``): rank 0 tokenizes the
    corpus (the others then read its cache) and makes the run id, which every process takes."""
    made = None
    if group.main:
        try:
            if spec.recipe.data == "corpus":
                data_mod.corpus_data()
            made = {"id": new_id()}
        except Exception as e:
            made = {"error": one_line(e)}
    made = group.broadcast(made)
    if "error" in made:
        raise ArchLabError(made["error"])
    return TrainingRun(spec, run_id=made["id"], upload=upload, group=group).start()


def default_processes(device: str, models: int) -> int:
    """Worker processes a run uses unless told: one per GPU (at most one per model) when ``device`` may use several
    GPUs (``auto``/``cuda``) and there are several; otherwise 0, the models trained in turn in the run's thread."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return min(gpus, models) if gpus > 1 and device in ("auto", "cuda") else 0


def _devices(name: str, processes: int) -> list:
    """The device(s) models train on: ``auto``/``cuda`` with worker processes spreads them over every GPU."""
    import torch

    from .trainer import resolve_device

    if name in ("cuda", "auto") and processes and torch.cuda.is_available():
        return [torch.device(f"cuda:{k}") for k in range(torch.cuda.device_count())]
    try:
        device = resolve_device(name)
    except RuntimeError as e:
        raise ArchLabError(f"device {name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArchLabError(f"device {name!r} asked for, but no CUDA GPU is visible")
    return [device]


def _label(source) -> str:
    try:
        return resolve(source).label
    except ArchLabError:
        return str(source)[:60] if isinstance(source, str) else "custom model"
