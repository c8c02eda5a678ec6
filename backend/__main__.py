"""Command line over the same backend the dashboard uses.

    python -m backend list
    python -m backend params gpt2 deepseek-v3 [--json | --csv]
    python -m backend memory qwen3-30b-a3b --context 32768 --dtype bf16 [--batch 4]
    python -m backend plan deepseek-v3 --gpus 8 --gpu-gib 80

A KEY may also be the path of a config.json. Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .arch import catalog
from .arch.architecture import Architecture, resolve
from .arch.configs import parse_config_text
from .arch.errors import ArchLabError

GB = 1e9
GiB = 1024 ** 3


def _source(key: str) -> Architecture:
    """A KEY of the command line (catalog key or config.json path), resolved once."""
    return resolve(_loose(key))


def _loose(key: str):
    if key.endswith(".json"):
        path = Path(key)
        if not path.is_file():
            raise ArchLabError(f"no such config file: {key}")
        d = parse_config_text(path.read_bytes())
        d.setdefault("_name_or_path", path.stem)
        return d
    catalog.get(key)  # unknown keys fail here with a hint
    return key


def list_rows() -> list[dict]:
    return [{"key": e.key, "name": e.name, "family": e.family, "org": e.org, "year": e.year,
             "stated_total": e.stated_total, "stated_active": e.stated_active} for e in catalog.entries()]


def params_rows(keys: list[str]) -> list[dict]:
    from .arch.counting import COMPONENTS

    rows = []
    for key in keys:
        src = _source(key)
        c = src.counts
        row = {"model": src.key or src.label, "total": c.total, "active": c.active}
        row.update({name: c.components.get(name, 0) for name in COMPONENTS})
        rows.append(row)
    return rows


def memory_rows(keys: list[str], context: int, dtype: str, batch: int, kv_dtype: str | None) -> list[dict]:
    from .arch.memory import kv_cache, weight_bytes

    rows = []
    for key in keys:
        src = _source(key)
        kv = kv_cache(src, context, batch, kv_dtype or dtype)
        w = weight_bytes(src, dtype)
        rows.append({"model": src.key or src.label, "dtype": dtype, "weights_bytes": w,
                     "kv_bytes_per_token": round(kv.per_token_bytes), "context": context, "batch": batch,
                     "kv_bytes": kv.total_bytes, "total_bytes": w + kv.total_bytes})
    return rows


def plan_rows(keys: list[str], gpus: int, gpu_gib: float, dtype: str) -> list[dict]:
    from .arch.memory import device_plan

    rows = []
    for key in keys:
        plan = device_plan(_source(key), [gpu_gib] * gpus, dtype)
        for dev, b in plan.bytes_per_device.items():
            rows.append({"model": key, "device": dev, "layers": plan.layers_per_device.get(dev, 0),
                         "weights_bytes": b, "fits_on_gpus": plan.fits})
    return rows


def _human(col: str, v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if v == 0:
        return "0"
    if "bytes" in col:
        return f"{v / GiB:,.2f} GiB" if v >= GiB / 10 else f"{v / 1024:,.1f} KiB"
    if col in ("context", "batch", "year", "layers"):
        return str(v)
    return f"{v / GB:,.3f} B" if v >= 1e8 else f"{v / 1e6:,.2f} M"


def render(rows: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    if not rows:
        return ""
    cols = list(rows[0])
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[_human(c, r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths)))
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in cells])


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, status 2, like every other bad input
        raise ArchLabError(message)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(prog="python -m backend", description="ArchLab: exact parameter and memory figures.")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    fmt = _Parser(add_help=False)
    g = fmt.add_mutually_exclusive_group()
    g.add_argument("--json", action="store_const", const="json", dest="fmt")
    g.add_argument("--csv", action="store_const", const="csv", dest="fmt")
    sub.add_parser("list", parents=[fmt], help="catalog models")
    sp = sub.add_parser("params", parents=[fmt], help="total/active parameters by component")
    sp.add_argument("keys", nargs="+")
    sm = sub.add_parser("memory", parents=[fmt], help="weights + KV cache")
    sm.add_argument("keys", nargs="+")
    sm.add_argument("--context", type=int, default=8192)
    sm.add_argument("--batch", type=int, default=1)
    sm.add_argument("--dtype", default="bf16")
    sm.add_argument("--kv-dtype", default=None)
    sl = sub.add_parser("plan", parents=[fmt], help="split over GPUs with accelerate")
    sl.add_argument("keys", nargs="+")
    sl.add_argument("--gpus", type=int, default=2)
    sl.add_argument("--gpu-gib", type=float, default=80.0)
    sl.add_argument("--dtype", default="bf16")
    try:
        a = p.parse_args(argv)
        if a.cmd == "list":
            rows = list_rows()
        elif a.cmd == "params":
            rows = params_rows(a.keys)
        elif a.cmd == "memory":
            rows = memory_rows(a.keys, a.context, a.dtype, a.batch, a.kv_dtype)
        else:
            if not 1 <= a.gpus <= 64:
                raise ArchLabError(f"--gpus must be between 1 and 64, got {a.gpus}")
            rows = plan_rows(a.keys, a.gpus, a.gpu_gib, a.dtype)
    except ArchLabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render(rows, a.fmt or "table"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
