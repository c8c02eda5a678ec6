"""The architecture catalog: rows from ``assets/catalog.json``, configs from ``assets/configs/``.

Adding a model is adding data: a config file and a catalog row; no code changes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import ArchLabError

ASSETS = Path(__file__).resolve().parents[2] / "assets"
CONFIG_DIR = ASSETS / "configs"

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


@dataclass(frozen=True)
class CatalogEntry:
    key: str
    name: str
    family: str
    org: str
    year: int
    source: str
    stated_total: str
    stated_active: str
    note: str
    count_note: str = ""
    trained_note: str = ""  # where the shipped trained miniature could not keep the real routing
    native_dtype: str = "bf16"
    config_file: str = ""
    #: components the authors leave out of their "active" figure (e.g. the embedding lookup)
    active_excludes: tuple[str, ...] = ()

    @property
    def stated_total_value(self) -> float:
        return parse_count(self.stated_total)

    @property
    def stated_active_value(self) -> float:
        return parse_count(self.stated_active)


def parse_count(text: str) -> float:
    """'30.5B' -> 3.05e10. Raises ArchLabError on anything else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMBT])\s*", text or "")
    if not m:
        raise ArchLabError(f"not a parameter count: {text!r} (expected e.g. '7B', '30.5B', '124M')")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def count_precision(text: str) -> float:
    """Half a unit of the last digit of a stated figure: '7B' -> 0.5e9, '30.5B' -> 0.05e9."""
    m = re.fullmatch(r"\s*[0-9]+(?:\.([0-9]+))?\s*([KMBT])\s*", text)
    if not m:
        raise ArchLabError(f"not a parameter count: {text!r}")
    decimals = len(m.group(1) or "")
    return 0.5 * 10 ** (-decimals) * _SUFFIX[m.group(2)]


@lru_cache(maxsize=1)
def _rows() -> dict[str, CatalogEntry]:
    data = json.loads((ASSETS / "catalog.json").read_text())
    rows = {}
    for row in data["models"]:
        row = dict(row)
        row.setdefault("config_file", f"{row['key']}.json")
        row["active_excludes"] = tuple(row.get("active_excludes", ()))
        rows[row["key"]] = CatalogEntry(**row)
    return rows


def keys() -> list[str]:
    """Catalog keys in catalog order."""
    return list(_rows())


def entries() -> list[CatalogEntry]:
    return list(_rows().values())


def get(key: str) -> CatalogEntry:
    try:
        return _rows()[key]
    except KeyError:
        close = [k for k in _rows() if key.lower() in k or k in key.lower()]
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'python -m backend list' for the keys"
        raise ArchLabError(f"unknown model {key!r}{hint}") from None


@lru_cache(maxsize=None)
def _raw_config_text(key: str) -> str:
    return (CONFIG_DIR / get(key).config_file).read_text()


def raw_config(key: str) -> dict[str, Any]:
    """The published config.json of a catalog model, as a fresh dict."""
    return json.loads(_raw_config_text(key))
