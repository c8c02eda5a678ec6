"""A run's metrics through accelerate's experiment trackers, for the tools people already use.

Beside ``metrics.csv``, every model (every run of a sweep) of a training run logs its curves to an accelerate
tracker as the rows come: TensorBoard, offline, under ``<run folder>/tensorboard/<model>`` (open it with
``tensorboard --logdir <run folder>/tensorboard``). Nothing is logged when no tracker package is installed;
``ARCHLAB_TRACKERS=none`` turns it off.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

log = logging.getLogger("archlab.train")
#: metrics.csv columns logged as scalars
SCALARS = ("train_loss", "val_loss", "lr", "grad_norm", "max_attn_logit", "log_z")


def available() -> bool:
    """Whether a tracker can log here (TensorBoard installed, not turned off)."""
    if os.environ.get("ARCHLAB_TRACKERS", "").lower() == "none":
        return False
    from accelerate.tracking import is_tensorboard_available

    return bool(is_tensorboard_available())


class Trackers:
    """One TensorBoard tracker per model of a run, made on its first row."""

    def __init__(self, folder: Path, configs: dict | None = None):
        self.folder = folder / "tensorboard"
        self.configs = configs or {}  # model -> its recipe fields, stored as the tracker's hyperparameters
        self.enabled = available()
        self._by_model: dict = {}
        self._lock = threading.Lock()

    def log(self, rows: list[dict]) -> None:
        if not self.enabled:
            return
        try:
            with self._lock:
                for row in rows:
                    values = {k: float(row[k]) for k in SCALARS if _finite(row.get(k))}
                    if values:
                        self._tracker(str(row["model"])).log(values, step=int(row["step"]))
        except Exception as e:  # a tracker never stops a run
            log.warning("tracker logging switched off: %s", e)
            self.enabled = False

    def _tracker(self, model: str):
        t = self._by_model.get(model)
        if t is None:
            from accelerate.tracking import TensorBoardTracker

            from .store import safe_name

            t = TensorBoardTracker(safe_name(model), str(self.folder))
            t.start()
            if model in self.configs:
                t.store_init_configuration(
                    {k: v for k, v in self.configs[model].items() if isinstance(v, (bool, int, float, str))}
                )
            self._by_model[model] = t
        return t

    def close(self) -> None:
        with self._lock:
            for t in self._by_model.values():
                try:
                    t.finish()
                except Exception:  # noqa: BLE001 - closing what may already be closed
                    pass
            self._by_model.clear()


def _finite(x) -> bool:
    try:
        return x is not None and x != "" and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
