"""The run folder: what a training run leaves on disk, and reading it back.

    <runs dir>/<run id>/
      recipe.json      the run spec, what every model shared (tokenizer, data and its hash, batch order, optimizer,
                       schedule, precision, seed) and per model: its sized config, parameters, stream hash
      metrics.csv      one row per model and step: model, step, tokens, train_loss, val_loss (where measured), lr,
                       elapsed_s, grad_norm (before clipping), max_attn_logit and log_z (where sampled)
      stability.csv    the largest attention logit per model, sampled step and layer
      routing.csv      MoE models, one row per model, log point and MoE layer: max/mean load, entropy, experts
                       never chosen, aux loss, and the load vector
      probes.csv       probe runs: accuracy per model and setting (KV pairs, sequence length) or distance
      results.csv      the final table (validation loss and perplexity, probe accuracy, parameters, tokens/s,
                       peak memory, wall time, status)
      status.json      run and model status
      models/<model>/  save_pretrained (safetensors) + the tokenizer for text runs + training.json
The runs dir is ``live.roots.runs_dir()`` (``ARCHLAB_RUNS_DIR``, default ``runs/``, git-ignored).
"""

from __future__ import annotations

import csv
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from ..arch.errors import ArchLabError
from ..live.roots import runs_dir
from ..live.runs import NOT_FOUND, valid_id

METRIC_COLUMNS = (
    "model",
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "lr",
    "elapsed_s",
    "grad_norm",
    "max_attn_logit",
    "log_z",
)
#: the largest attention logit of each layer, sampled during training (stacked runs)
STABILITY_COLUMNS = ("model", "step", "layer", "max_attn_logit")
ROUTING_COLUMNS = ("model", "step", "tokens", "layer", "max_over_mean", "entropy", "never_chosen", "aux_loss", "load")
PROBE_COLUMNS = ("model", "probe", "kv_pairs", "seq_len", "distance", "accuracy")


def run_folder(run_id: str, root: Optional[Path] = None) -> Path:
    """The folder of a run id (ArchLabError for a malformed id: ids never become arbitrary paths)."""
    if not valid_id(run_id):
        raise ArchLabError("not a run id")
    return Path(root or runs_dir()) / run_id


class RunWriter:
    """Appends a run's rows as they come (thread-safe); nothing is lost if the run stops half-way."""

    def __init__(self, folder: Path):
        self.folder = folder
        (folder / "models").mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` (relative to the run folder) atomically."""
        path = self.folder / name
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=_jsonable) + "\n")
        os.replace(tmp, path)

    def append(self, name: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        if not rows:
            return
        path = self.folder / name
        with self._lock:
            new = not path.exists()
            with open(path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                if new:
                    w.writeheader()
                w.writerows(rows)

    def table(self, name: str, df: pd.DataFrame) -> None:
        with self._lock:
            df.to_csv(self.folder / name, index=False)

    def model_dir(self, key: str) -> Path:
        return self.folder / "models" / safe_name(key)


class NullWriter(RunWriter):
    """The run folder as the other processes of a distributed launch see it: rank 0 writes it, they write nothing."""

    def __init__(self, folder: Path):
        self.folder = folder

    def write_json(self, name: str, data: Any) -> None:
        pass

    def append(self, name: str, columns: tuple[str, ...], rows: list[dict]) -> None:
        pass

    def table(self, name: str, df) -> None:
        pass


def safe_name(key: str) -> str:
    """A model key as a folder name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:80] or "model"


def _jsonable(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


@dataclass(frozen=True)
class RunRecord:
    """A run as read back from its folder."""

    id: str
    folder: Path
    recipe: dict
    status: dict
    metrics: pd.DataFrame
    routing: pd.DataFrame
    probes: pd.DataFrame
    results: pd.DataFrame
    stability: Optional[pd.DataFrame] = None


def _csv(path: Path, columns) -> pd.DataFrame:
    return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame(columns=list(columns))


def read_run(run_id: str, root: Optional[Path] = None) -> RunRecord:
    """A finished (or interrupted) run from disk; ArchLabError with one line when there is none."""
    folder = run_folder(run_id, root)
    if not (folder / "recipe.json").is_file():
        raise ArchLabError(NOT_FOUND)
    load = lambda n: json.loads((folder / n).read_text()) if (folder / n).is_file() else {}
    return RunRecord(
        run_id,
        folder,
        load("recipe.json"),
        load("status.json"),
        _csv(folder / "metrics.csv", METRIC_COLUMNS),
        _csv(folder / "routing.csv", ROUTING_COLUMNS),
        _csv(folder / "probes.csv", PROBE_COLUMNS),
        _csv(folder / "results.csv", ()),
        _csv(folder / "stability.csv", STABILITY_COLUMNS),
    )


@dataclass(frozen=True)
class TrainedModel:
    """A trained miniature's checkpoint that the Playground and Routing pages can load."""

    run_id: str
    key: str
    label: str
    path: Path
    val_loss: Optional[float]


def trained_models(run_ids: list[str], root: Optional[Path] = None) -> list[TrainedModel]:
    """Loadable text-trained checkpoints of the given runs (those with weights and a tokenizer)."""
    out = []
    for run_id in run_ids:
        try:
            folder = run_folder(run_id, root)
        except ArchLabError:
            continue
        for model_dir in sorted((folder / "models").glob("*")):
            info_path = model_dir / "training.json"
            if (
                not info_path.is_file()
                or not (model_dir / "tokenizer.json").is_file()
                or not (model_dir / "model.safetensors").is_file()
            ):
                continue
            info = json.loads(info_path.read_text())
            out.append(
                TrainedModel(
                    run_id,
                    info.get("key", model_dir.name),
                    f"{info.get('label', model_dir.name)} (trained miniature, run {run_id[:6]}…)",
                    model_dir,
                    info.get("val_loss"),
                )
            )
    return out
