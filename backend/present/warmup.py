"""Warm-up of a fresh server, in one background thread, once its first page is sent (app.py lets it wait a few
seconds, or until the next page, while the browser fetches and draws that page).

The first page (Architectures) needs no torch (catalog specs come from ``assets/specs.json``), but the next
ones do: the Parameters page counts tensors of meta models and plans device maps, the Playground and Routing
pages import the runtime. :func:`start` does that work once per process in a daemon thread: torch and
transformers (:func:`backend.arch.libs.load`) and their model code (``libs.load_models``), accelerate, the configs, meta models, specs and exact counts of
the given models (device plans read the meta models), the offline tokenizer, and on a CPU-only server the
given models' shipped trained miniatures (the Playground's default). Nothing waits for it: a page that needs one of these before the
thread got there builds it itself (the libraries and every cache are shared and thread-safe, so the work is
done once either way).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterable

from ..arch import libs
from ..arch.architecture import resolve
from ..arch.errors import ArchLabError

log = logging.getLogger("archlab.warmup")
_lock = threading.Lock()
_thread: threading.Thread | None = None
_go = threading.Event()  # ends a delayed start's wait
#: what the warm-up did: step -> seconds (read by the benchmark and the tests)
done: dict[str, float] = {}


def start(keys: Iterable[str], delay: float = 0.0) -> bool:
    """Start the warm-up of ``keys`` (catalog keys) unless it was started before in this process: after ``delay``
    seconds, or at the next call (e.g. the visitor's next page) if that comes first. Returns True when this call
    started it."""
    global _thread
    with _lock:
        if _thread is not None:
            _go.set()
            return False
        _thread = threading.Thread(target=_run, args=(tuple(keys), delay), daemon=True, name="archlab-warmup")
    _thread.start()
    return True


def join(timeout: float | None = None) -> bool:
    """Wait for the warm-up to end (tests, benchmarks); True when it has ended (or never started)."""
    t = _thread
    if t is not None:
        t.join(timeout)
    return t is None or not t.is_alive()


def _step(name: str, fn) -> None:
    t = time.perf_counter()
    try:
        fn()
    except ArchLabError as e:  # a bad model is the page's business, not the warm-up's
        log.info("warm-up: %s skipped: %s", name, e)
    done[name] = time.perf_counter() - t


def _model(key: str) -> None:
    arch = resolve(key)
    arch.config, arch.meta_model, arch.spec, arch.counts  # the meta model even when spec and counts are stored


def _trained(keys: tuple[str, ...]) -> None:
    """On a server without GPUs, the shipped trained miniatures of ``keys`` (the Playground's default models),
    loaded into the runtime's cache as the Playground asks for them and run once, so that a first Generate finds
    them ready (the first ``from_pretrained`` of a process also imports transformers' loading code: seconds)."""
    from ..live import runtime, zoo
    from .playground import preload

    if runtime.hardware()["gpus"]:
        return  # GPU memory is taken only by runs (admitted against the visitor's share)
    preload([runtime.ModelRequest(key, mode="trained") for key in keys if zoo.has(key)])


def _run(keys: tuple[str, ...], delay: float = 0.0) -> None:
    _go.wait(delay)
    try:
        _step("torch + transformers", libs.load)
        _step("transformers model code", libs.load_models)
        _step("accelerate", lambda: __import__("accelerate"))
        for key in keys:
            _step(f"model {key}", lambda k=key: _model(k))
        from ..live.tokenizer import load_offline

        _step("tokenizer", load_offline)
        _step("trained miniatures", lambda: _trained(keys))
        log.info("warm-up done: %s", ", ".join(f"{k} {v:.2f} s" for k, v in done.items()))
    except Exception:  # a background thread has nobody to tell: log it, the pages still build what they need
        log.exception("warm-up failed")
