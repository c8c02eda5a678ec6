"""The trained zoo shipped in ``assets/zoo/``: one trained miniature per catalog architecture.

Built by ``python -m backend train --zoo`` (``backend.train.zoo``): every catalog architecture's miniature
trained on the shipped corpus under one recorded recipe. ``index.json`` maps each catalog key to a folder
(architectures whose miniatures come out identical share one) that ``AutoModelForCausalLM.from_pretrained``
loads as it is (config.json + model.safetensors in bf16); the tokenizer is the shipped one in
``assets/tokenizer/``. ``ARCHLAB_ZOO_DIR`` points elsewhere (tests, a rebuild).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

from ..arch.catalog import ASSETS
from ..arch.errors import ArchLabError

INDEX = "index.json"
LEADERBOARD = "leaderboard.csv"


def zoo_dir() -> Path:
    raw = os.environ.get("ARCHLAB_ZOO_DIR", "").strip()
    return Path(raw).expanduser().resolve() if raw else ASSETS / "zoo"


@dataclass(frozen=True)
class ZooModel:
    """A shipped trained miniature."""

    key: str  # catalog key
    label: str
    folder: Path
    val_loss: Optional[float]
    experts: Optional[int]
    real_experts: Optional[int]
    notes: tuple[str, ...]
    stream_sha256: str


@lru_cache(maxsize=4)
def _index(path: str, mtime: float) -> dict:
    return json.loads(Path(path).read_text())


def index() -> dict:
    """The zoo's index (empty when no zoo is shipped)."""
    path = zoo_dir() / INDEX
    if not path.is_file():
        return {}
    return _index(str(path), path.stat().st_mtime)


def has(key: str) -> bool:
    return key in index().get("models", {})


def get(key: str) -> ZooModel:
    """The trained miniature of a catalog key; ArchLabError when the zoo has none."""
    row = index().get("models", {}).get(key)
    if row is None:
        raise ArchLabError(
            f"no trained miniature of {key!r} is shipped (rebuild the zoo: python -m backend train --zoo)"
        )
    folder = zoo_dir() / row["folder"]
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ArchLabError(f"the trained miniature of {key!r} is incomplete ({folder.name} lacks its weights)")
    return ZooModel(
        key,
        row.get("label", key),
        folder,
        row.get("val_loss"),
        row.get("experts"),
        row.get("real_experts"),
        tuple(row.get("notes", ())),
        row.get("stream_sha256", ""),
    )


def models() -> list[ZooModel]:
    """Every shipped trained miniature, in catalog order."""
    return [get(k) for k in index().get("models", {})]


def recipe() -> dict:
    """The recipe the zoo was trained with (empty without a zoo)."""
    return index().get("recipe", {})
