"""ArchSpecs and exact parameter counts of the catalog models kept in ``assets/specs.json``, so a fresh
server draws its first pages without importing torch or transformers.

Specs and counts are read from the model transformers builds on the meta device (:mod:`backend.arch.spec`,
:mod:`backend.arch.counting`): that needs torch and transformers imported, 3-5 s on a 2-core machine before
the first diagram. The file holds, per catalog config (keyed by the sha256 of its canonical JSON), the spec
and the counts that build gives, and a fingerprint of what the build depends on: the transformers version
and the source of ``spec.py``, ``counting.py``, ``configs.py`` and ``meta.py``. A process whose fingerprint
differs ignores the file and builds everything as before, so the file can make a page faster but never
different; ``tests/test_speccache.py`` holds every entry equal to a fresh build. Rebuild it after changing any
of those files (or transformers):

    python -m backend.arch.speccache
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import typing
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

from . import catalog
from .counting import ParamCount
from .spec import ArchSpec

PATH = Path(__file__).resolve().parents[2] / "assets" / "specs.json"
#: the modules whose code decides what a spec and its counts are
SOURCES = ("spec.py", "counting.py", "configs.py", "meta.py")


def fingerprint() -> str:
    """What a spec built in this process depends on: transformers' version and our spec-building code."""
    h = hashlib.sha256(f"transformers {metadata.version('transformers')}\n".encode())
    for name in SOURCES:
        h.update((Path(__file__).with_name(name)).read_bytes())
    return h.hexdigest()[:32]


def config_key(canon: str) -> str:
    """The file's key of a canonical config text."""
    return hashlib.sha256(canon.encode()).hexdigest()


def to_json(spec: ArchSpec) -> dict[str, Any]:
    """A spec as plain JSON values (tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def _decode(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        item = args[0] if args else Any
        return tuple(_decode(item, v) for v in value)
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint, vars(sys.modules[hint.__module__]))
        return hint(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(hint)})
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def from_json(data: dict[str, Any]) -> ArchSpec:
    """The spec :func:`to_json` gave (KeyError/TypeError when the fields do not match this ArchSpec)."""
    return _decode(ArchSpec, data)


@lru_cache(maxsize=1)
def _entries() -> dict[str, dict]:
    """The file's specs when it was built by this process's code and transformers, else nothing."""
    try:
        data = json.loads(PATH.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("fingerprint") != fingerprint():
        return {}
    return data.get("specs") or {}


def lookup(canon: str) -> Optional[ArchSpec]:
    """The stored spec of a canonical config, or None (not stored, or stored by other code)."""
    data = _entries().get(config_key(canon))
    try:
        return None if data is None else from_json(data["spec"])
    except (KeyError, TypeError, ValueError):
        return None


def lookup_counts(canon: str) -> Optional[ParamCount]:
    """The stored exact counts of a canonical config, or None."""
    data = _entries().get(config_key(canon))
    try:
        return None if data is None else _decode(ParamCount, data["counts"])
    except (KeyError, TypeError, ValueError):
        return None


def build() -> dict[str, Any]:
    """The file's content, each catalog model's spec and counts built afresh from its config and meta model."""
    from .configs import build_config
    from .counting import count_tensors
    from .meta import build_meta_model
    from .spec import read_spec

    entries = {}
    for key in catalog.keys():
        canon = json.dumps(catalog.raw_config(key), sort_keys=True)
        cfg = build_config(canon)
        model = build_meta_model(cfg)
        spec = read_spec(cfg, model)
        entries[config_key(canon)] = {
            "key": key,
            "spec": to_json(spec),
            "counts": dataclasses.asdict(count_tensors(model, spec)),
        }
    return {"fingerprint": fingerprint(), "transformers": metadata.version("transformers"), "specs": entries}


def write(data: dict[str, Any], path: Path = PATH) -> None:
    """Write the file: one catalog model a line, so a diff shows which specs changed."""
    lines = [f"  {json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in data["specs"].items()]
    head = {k: v for k, v in data.items() if k != "specs"}
    text = "{\n" + "".join(f"  {json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items())
    path.write_text(text + '  "specs": {\n' + ",\n".join("  " + l for l in lines) + "\n  }\n}\n")


def main() -> None:
    data = build()
    write(data)
    print(f"wrote {PATH} ({len(data['specs'])} catalog models, fingerprint {data['fingerprint']})")


if __name__ == "__main__":
    main()
