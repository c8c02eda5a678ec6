"""Run registry: every long job (a Playground generation, a training run) under an unguessable id, with
per-visitor quotas.

A run is reachable only through its id (its link ``?run=ID``): there is no listing by visitor. Ids are
``secrets.token_urlsafe(18)`` (144 random bits, 24 characters of ``A–Z a–z 0–9 _ -``). A finished run is
kept ``ttl_s`` seconds after it was seen to end (``ARCHLAB_RUN_TTL_S``, default 7,200 s = 2 h), then a
lookup fails like an id that never existed. Memory is bounded by count: a visitor keeps at most
``kept_per_session`` finished runs and the server at most ``kept`` in all (oldest finished dropped first).

Admission is per browser session (``session_id``): at most ``generate`` generation runs and ``train``
training runs going at once, and GPU memory of at most ``gpu_share`` of the GPUs' total across its runs
going (each run declares its bytes when admitted). Limits come from environment variables (:func:`limits`).

Usage (generation runs and training runs alike)::

    with runs.admit(session_id, "train", gpu_bytes=need) as ticket:   # ArchLabError: over a quota
        job = make_job(run_id=ticket.id)      # anything with a ``running`` property and ``cancel()``
        job.start()
        ticket.register(job)
    runs.job(ticket.id, "train")              # from any session that has the id

No Streamlit here; the pages keep only the id.
"""

from __future__ import annotations

import os
import re
import secrets
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

from ..arch.errors import ArchLabError

KINDS = ("generate", "train")
KIND_NAMES = {"generate": "generation run", "train": "training run"}
ID_BYTES = 18
ID_RE = re.compile(r"^[A-Za-z0-9_-]{24}$")
#: The one line for a malformed, unknown, expired or wrong-kind id (it says nothing about which).
NOT_FOUND = "This run link is not valid or has expired (finished runs are kept for a limited time). Start a new run."


class Job(Protocol):
    """What the registry needs of a job: whether it still uses compute, and how to stop it."""

    @property
    def running(self) -> bool: ...

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class Limits:
    """Per-visitor quotas and retention, from the environment (see :func:`limits`)."""

    generate: int = 2  # ARCHLAB_QUOTA_GENERATE: generation runs going at once per session
    train: int = 1  # ARCHLAB_QUOTA_TRAIN: training runs going at once per session
    gpu_share: float = 0.5  # ARCHLAB_QUOTA_GPU_SHARE: share of the GPUs' total memory per session
    ttl_s: float = 7200.0  # ARCHLAB_RUN_TTL_S: seconds a finished run stays reachable
    kept: int = 256  # ARCHLAB_RUNS_KEPT: finished runs kept in all
    kept_per_session: int = 16  # ARCHLAB_RUNS_KEPT_PER_SESSION: finished runs kept per session

    def quota(self, kind: str) -> int:
        return self.generate if kind == "generate" else self.train


_ENV = {
    "generate": ("ARCHLAB_QUOTA_GENERATE", int, 0, 1000),
    "train": ("ARCHLAB_QUOTA_TRAIN", int, 0, 1000),
    "gpu_share": ("ARCHLAB_QUOTA_GPU_SHARE", float, 0.0, 1.0),
    "ttl_s": ("ARCHLAB_RUN_TTL_S", float, 60.0, 30 * 86400.0),
    "kept": ("ARCHLAB_RUNS_KEPT", int, 1, 100_000),
    "kept_per_session": ("ARCHLAB_RUNS_KEPT_PER_SESSION", int, 1, 10_000),
}


def limits(env: Optional[dict] = None) -> Limits:
    """Limits from ``env`` (default ``os.environ``); a malformed value is one ArchLabError line naming it."""
    env = os.environ if env is None else env
    values = {}
    for name, (var, typ, lo, hi) in _ENV.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            v = typ(raw)
        except ValueError:
            v = None
        if v is None or not lo <= v <= hi:  # nan fails too
            raise ArchLabError(
                f"{var}={raw!r} is not valid: use a {'whole ' if typ is int else ''}number from {lo:g} to {hi:g}"
            )
        values[name] = v
    return Limits(**values)


def new_id() -> str:
    """A fresh run id: 144 bits from ``secrets``, URL-safe."""
    return secrets.token_urlsafe(ID_BYTES)


def valid_id(run_id: Any) -> bool:
    """True when ``run_id`` has the form of a run id (says nothing about whether it exists)."""
    return isinstance(run_id, str) and ID_RE.match(run_id) is not None


@dataclass
class Run:
    """One registered run."""

    id: str
    kind: str
    session_id: str
    job: Any
    gpu_bytes: int = 0
    created: float = 0.0  # registry clock
    ended: Optional[float] = None  # registry clock when first seen finished

    @property
    def running(self) -> bool:
        return self.ended is None


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def _gpu_total() -> int:
    """Bytes of all visible GPUs together (0 without CUDA)."""
    from .runtime import hardware

    return int(sum(g["total_gib"] for g in hardware()["gpus"]) * 2**30)


class Registry:
    """Runs by id, quotas by session. ``clock`` (monotonic seconds) and ``gpu_total`` (bytes) can be injected."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        gpu_total: Optional[Callable[[], int]] = None,
        env: Optional[dict] = None,
    ):
        self._clock, self._gpu_total, self._env = clock, gpu_total or _gpu_total, env
        self._runs: dict[str, Run] = {}
        self._pending: dict[str, Run] = {}  # admitted, job not registered yet (counts against quotas)
        self._lock = threading.RLock()
        self._total: Optional[int] = None

    # ----- quotas
    def limits(self) -> Limits:
        return limits(self._env)

    def gpu_total(self) -> int:
        if self._total is None:
            self._total = int(self._gpu_total())
        return self._total

    def usage(self, session_id: str) -> dict:
        """What a session has going: {"generate": n, "train": n, "gpu_bytes": n}."""
        with self._lock:
            self._sweep()
            going = [
                r
                for r in list(self._runs.values()) + list(self._pending.values())
                if r.session_id == session_id and r.running
            ]
        out = {k: sum(r.kind == k for r in going) for k in KINDS}
        out["gpu_bytes"] = sum(r.gpu_bytes for r in going)
        return out

    def _check(self, session_id: str, kind: str, gpu_bytes: int, lim: Limits) -> None:
        used = self.usage(session_id)
        cap = lim.quota(kind)
        if used[kind] >= cap:
            what = KIND_NAMES[kind]
            if cap == 0:
                raise ArchLabError(f"This server does not start {what}s for visitors.")
            raise ArchLabError(
                f"You already have {used[kind]} {what}{'s' if used[kind] != 1 else ''} going; each "
                f"visitor may have {cap} at once. Stop one or wait until it ends."
            )
        if gpu_bytes > 0:
            allowed = lim.gpu_share * self.gpu_total()
            if used["gpu_bytes"] + gpu_bytes > allowed:
                held = f" and your runs going hold {_gib(used['gpu_bytes'])}" if used["gpu_bytes"] else ""
                raise ArchLabError(
                    f"This {KIND_NAMES[kind]} needs {_gib(gpu_bytes)} of GPU memory{held}; each "
                    f"visitor may use {lim.gpu_share:.0%} of this server's GPU memory "
                    f"({_gib(allowed)}). Stop a run or choose smaller models."
                )

    @contextmanager
    def admit(self, session_id: str, kind: str, gpu_bytes: int = 0) -> Iterator["Ticket"]:
        """Reserve a run of ``kind`` for ``session_id`` (ArchLabError with the quota message when over a limit).

        Inside the block, start the job and call ``ticket.register(job)``; leaving the block without
        registering (an exception, a refusal further on) frees the reservation.
        """
        if kind not in KINDS:
            raise ArchLabError(f"unknown run kind {kind!r}; one of {', '.join(KINDS)}")
        if isinstance(gpu_bytes, bool) or not isinstance(gpu_bytes, int) or gpu_bytes < 0:
            raise ArchLabError(f"gpu_bytes must be a whole number of bytes, got {gpu_bytes!r}")
        session_id = str(session_id or "")
        lim = self.limits()
        with self._lock:
            self._check(session_id, kind, gpu_bytes, lim)
            run = Run(self._fresh_id(), kind, session_id, None, gpu_bytes, self._clock())
            self._pending[run.id] = run
        ticket = Ticket(self, run)
        try:
            yield ticket
        finally:
            with self._lock:
                self._pending.pop(run.id, None)

    def register(self, job: Job, kind: str, session_id: str, gpu_bytes: int = 0) -> str:
        """Admit and register a job in one call (for a job that is made but not yet started); returns its id."""
        with self.admit(session_id, kind, gpu_bytes) as ticket:
            return ticket.register(job)

    def _fresh_id(self) -> str:
        while True:
            run_id = new_id()
            if run_id not in self._runs and run_id not in self._pending:
                return run_id

    def _add(self, run: Run, job: Job) -> str:
        if not hasattr(job, "cancel") or not hasattr(job, "running"):
            raise ArchLabError(f"a run needs a job with .running and .cancel(), not {type(job).__name__}")
        with self._lock:
            if run.id not in self._pending:
                raise ArchLabError("this admission has ended; admit the run again")
            run.job = job
            del self._pending[run.id]
            self._runs[run.id] = run
            self._sweep()
        return run.id

    # ----- lookup
    def get(self, run_id: Any, kind: Optional[str] = None) -> Run:
        """The run of an id; ArchLabError(NOT_FOUND) for a malformed, unknown, expired or other-kind id."""
        if not valid_id(run_id):
            raise ArchLabError(NOT_FOUND)
        with self._lock:
            self._sweep()
            run = self._runs.get(run_id)
        if run is None or (kind is not None and run.kind != kind):
            raise ArchLabError(NOT_FOUND)
        return run

    def job(self, run_id: Any, kind: Optional[str] = None) -> Any:
        """The job of an id (see :meth:`get`)."""
        return self.get(run_id, kind).job

    def cancel(self, run_id: Any) -> None:
        """Ask the run's job to stop (anyone holding the id may)."""
        self.get(run_id).job.cancel()

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._runs)

    # ----- retention
    def _sweep(self) -> None:
        """Note runs that ended, drop the expired, then hold the counts (oldest finished dropped first)."""
        now, lim = self._clock(), self.limits()
        for run in self._runs.values():
            if run.ended is None and not _running(run.job):
                run.ended = now
        for rid in [rid for rid, r in self._runs.items() if r.ended is not None and now - r.ended > lim.ttl_s]:
            del self._runs[rid]
        finished = sorted((r for r in self._runs.values() if r.ended is not None), key=lambda r: r.ended)
        per: dict[str, int] = {}
        for r in reversed(finished):  # newest first: the oldest beyond a session's allowance go
            per[r.session_id] = per.get(r.session_id, 0) + 1
            if per[r.session_id] > lim.kept_per_session:
                del self._runs[r.id]
        finished = [r for r in finished if r.id in self._runs]
        for r in finished[: max(0, len(finished) - lim.kept)]:
            del self._runs[r.id]


def _running(job: Any) -> bool:
    try:
        return bool(job.running)
    except Exception:  # noqa: BLE001 - a broken job is not running; it must not break the registry
        return False


@dataclass
class Ticket:
    """An admitted run: its id is fixed already (e.g. for a run folder); ``register`` files the job under it."""

    registry: Registry
    run: Run
    _done: bool = field(default=False, repr=False)

    @property
    def id(self) -> str:
        return self.run.id

    def register(self, job: Job) -> str:
        """File ``job`` under this ticket's id; returns the id."""
        if self._done:
            raise ArchLabError("this ticket has already registered a run")
        run_id = self.registry._add(self.run, job)
        self._done = True
        return run_id


#: The server's registry (one per process, shared by every browser session).
REGISTRY = Registry()


def admit(session_id: str, kind: str, gpu_bytes: int = 0):
    """``REGISTRY.admit``: reserve a run for a session, within its quotas (a context manager yielding a Ticket)."""
    return REGISTRY.admit(session_id, kind, gpu_bytes)


def register(job: Job, kind: str, session_id: str, gpu_bytes: int = 0) -> str:
    """``REGISTRY.register``: admit and file a job in one call; returns its id."""
    return REGISTRY.register(job, kind, session_id, gpu_bytes)


def get(run_id: Any, kind: Optional[str] = None) -> Run:
    """``REGISTRY.get``: the run of an id, or ArchLabError(NOT_FOUND)."""
    return REGISTRY.get(run_id, kind)


def job(run_id: Any, kind: Optional[str] = None) -> Any:
    """``REGISTRY.job``: the job of an id, or ArchLabError(NOT_FOUND)."""
    return REGISTRY.job(run_id, kind)


def cancel(run_id: Any) -> None:
    """``REGISTRY.cancel``: stop the run of an id."""
    REGISTRY.cancel(run_id)


def usage(session_id: str) -> dict:
    """``REGISTRY.usage``: what a session has going."""
    return REGISTRY.usage(session_id)
