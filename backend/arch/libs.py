"""torch and transformers, imported once per process, under a lock, before anything uses them.

transformers' package replaces itself in ``sys.modules`` with a lazy module at the end of its first import.
A second thread that asks for it meanwhile waits for that import, then gets the *replaced* module object, on
which ``from transformers import AutoConfig`` fails ("ImportError: cannot import name 'AutoConfig'"): six
Streamlit sessions pressing Generate on a fresh server hit exactly that. Every first use of transformers in
ArchLab goes through :func:`load` (config building, meta models, tokenizers, generation), so the import runs
in one thread and the others wait for it; after that ``load`` is a flag check.
"""

from __future__ import annotations

import logging
import re
import threading
import time

_lock = threading.Lock()
_ready = threading.Event()
#: seconds the import took in this process (None until it has run)
import_seconds: float | None = None


def loaded() -> bool:
    """True once torch and transformers are imported (no waiting)."""
    return _ready.is_set()


def load() -> None:
    """Import torch, transformers and the transformers names ArchLab uses, once; later calls return at once.
    A thread that arrives while another imports waits for it."""
    global import_seconds
    if _ready.is_set():
        return
    with _lock:
        if _ready.is_set():
            return
        t = time.perf_counter()
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from transformers import (  # noqa: F401  (each name resolves a lazy submodule: do it here, once)
            CONFIG_MAPPING,
            AutoConfig,
            AutoModelForCausalLM,
            AutoTokenizer,
            PreTrainedTokenizerFast,
            StaticCache,
        )

        logging.getLogger("transformers.modeling_rope_utils").addFilter(_equal_llama3_rope_factors)
        import_seconds = time.perf_counter() - t
        _ready.set()


_EQUAL_FACTORS = re.compile(
    r"high_freq_factor field must be greater than low_freq_factor, "
    r"got high_freq_factor=(\S+) and low_freq_factor=(\S+)$"
)


def _equal_llama3_rope_factors(record: logging.LogRecord) -> bool:
    """Drop transformers' warning about equal llama3 rope factors: Llama 4's real configs set both to 1.0 (the
    scaling then degenerates to a plain factor, which transformers computes fine), and every build of one
    repeated it (50 lines in a zoo sizing). Factors that really are reversed still warn."""
    m = _EQUAL_FACTORS.search(record.getMessage())
    return not (m and m.group(1) == m.group(2))


_models_ready = threading.Event()


def models_loaded() -> bool:
    """True once :func:`load_models` has run (no waiting)."""
    return _models_ready.is_set()


def load_models() -> None:
    """:func:`load`, then transformers' model machinery (``modeling_utils``, ~2 s), once. Model builds call it
    before they take ``meta.BUILD_LOCK``: imported lazily by the first ``from_config`` under that lock, it made
    every other build and load of the process queue behind it (a fresh server's first Generate waited ~2.8 s)."""
    if _models_ready.is_set():
        return
    load()
    with _lock:
        if not _models_ready.is_set():
            import transformers.modeling_utils  # noqa: F401

            _models_ready.set()
