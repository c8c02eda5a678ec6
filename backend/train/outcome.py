"""What a training run reports, whichever loop trains it: the Sink it reports to, a finished run's final row and
training.json, the held-out probe batch and loss of probe runs, the vocabulary and tokenizer of its data.

Shared by the single-model loop (``turns.py``), the stacked sweep (``sweep.py``) and the run (``runner.py``), which
sit above it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from .budget import Sized, non_embedding
from .probes import ProbeTask
from .store import PROBE_COLUMNS

#: seconds between reading losses back from the device (and writing them)
FLUSH_S = 0.5
#: at most this many validation windows in the final validation loss
FINAL_WINDOWS = 2048


class Sink(Protocol):
    """Where a training loop reports (the run itself, or a queue to it from a worker process)."""

    def model(self, i: int, **fields) -> None: ...
    def rows(self, name: str, columns: tuple, rows: list[dict]) -> None: ...
    def result(self, row: dict) -> None: ...


def tokenizer_for(data):
    """The shipped tokenizer for a text run's checkpoints (None for probes)."""
    if data is None:
        return None
    from ..live.tokenizer import load_offline

    return load_offline()


def report_result(
    i: int,
    sink: Sink,
    folder: Path,
    *,
    key: str,
    sized: Sized,
    recipe,
    status: str,
    step: int,
    tokens: int,
    val: Optional[float],
    by_setting: dict,
    by_distance: dict,
    stream,
    train_seconds: float,
    peak_bytes: Optional[int],
    model_dir: Optional[Path],
    data,
    task,
    extra: Optional[dict] = None,
) -> dict:
    """A finished (or stopped, or diverged) run's probe rows, training.json beside its checkpoint, its row of the
    final table (plus ``extra`` columns) and its status; returns the status fields."""
    from .store import RunWriter

    r = recipe
    sink.rows(
        "probes.csv",
        PROBE_COLUMNS,
        [
            {"model": key, "probe": task.name, "kv_pairs": kv, "seq_len": t, "distance": "", "accuracy": a}
            for (kv, t), a in by_setting.items()
        ]
        + [
            {"model": key, "probe": "distance", "kv_pairs": "", "seq_len": r.seq_len, "distance": d, "accuracy": a}
            for d, a in by_distance.items()
        ],
    )
    finite = val is not None and math.isfinite(val)
    info = {
        "key": key,
        "label": sized.source_label,
        "run_id": folder.name,
        "status": status,
        "step": step,
        "tokens": tokens,
        "val_loss": val if finite else None,
        "stream_sha256": stream.hexdigest(),
        "batches": stream.batches,
        "recipe": r.as_dict(),
        "data": data.name if data is not None else task.name,
        "data_sha256": data.sha256 if data is not None else "",
    }
    saved = model_dir is not None and model_dir.is_dir()
    if saved:
        RunWriter(folder).write_json(f"models/{model_dir.name}/training.json", info)
    c = sized.arch.counts
    sink.result(
        {
            "model": key,
            "label": sized.source_label,
            "status": status,
            "steps": step,
            "tokens": tokens,
            "val_loss": val,
            "perplexity": math.exp(val) if data is not None and finite and val < 50 else None,
            "probe_accuracy": float(np.mean(list(by_setting.values()))) if by_setting else None,
            "total_params": c.total,
            "active_params": c.active,
            "nonemb_active_params": non_embedding(c, "active"),
            "budget_value": sized.value,
            "tok_s": tokens / train_seconds if train_seconds else None,
            "peak_bytes": peak_bytes,
            "train_seconds": train_seconds,
            "experts": sized.experts,
            "stream_sha256": stream.hexdigest(),
            "checkpoint": str(model_dir) if saved else "",
            **(extra or {}),
        }
    )
    outcome = {
        "status": status,
        "val_loss": val,
        "checkpoint": str(model_dir) if saved else "",
        "stream_sha256": stream.hexdigest(),
        "batches": stream.batches,
    }
    sink.model(i, **outcome)
    return outcome


def probe_eval_batch(task: ProbeTask, r):
    """A fixed held-out probe batch for the validation-loss curve of probe runs."""
    kv = task.kv_pairs[len(task.kv_pairs) // 2] if task.name == "mqar" else task.kv_pairs[0]
    while 4 * kv > task.seq_len:
        kv //= 2
    return task.eval_batch(max(kv, 1), task.seq_len, min(r.probe_examples, 4 * r.batch))


def probe_loss(m, batch) -> float:
    """Cross-entropy on the answers of a held-out probe batch."""
    import torch

    from .trainer import _autocast, _tensors, token_loss

    m.model.eval()
    try:
        with torch.no_grad(), _autocast(m.device, m.recipe):
            x, y = _tensors(batch, m.device)
            return float(token_loss(m.model(input_ids=x, use_cache=False).logits, y, batch))
    finally:
        if m.routers is not None:
            m.routers.discard_step()
        m.model.train()


def vocab_of(data, task) -> tuple[int, int, int]:
    if task is not None:
        return task.vocab, 0, 0
    from ..live.tokenizer import load_offline

    tok = load_offline()
    return data.vocab_size, tok.eos_token_id, tok.pad_token_id
