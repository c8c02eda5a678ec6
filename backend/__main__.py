"""Command line over the same backend the dashboard uses.

    python -m backend list
    python -m backend params gpt2 deepseek-v3 [--json | --csv]
    python -m backend memory qwen3-30b-a3b --context 32768 --dtype bf16 [--batch 4]
    python -m backend plan deepseek-v3 --gpus 8 --gpu-gib 80
    python -m backend speed llama3-8b deepseek-v3 --gpu h100 --batch 1 --context 2048 --prompt 512 --dtype bf16 [--json]

A KEY may also be the path of a config.json. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import os

# Before torch is first imported: idle OpenMP threads sleep instead of spinning (as app.py does), so that a CLI
# sharing the machine's cores with other work does not stall its own thread team.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json
import sys
from pathlib import Path

from .arch import catalog
from .arch.architecture import Architecture, resolve
from .arch.configs import parse_config_text
from .arch.errors import ArchLabError
from .train import ablate_cli, findings_cli
from .train import cli as train_cli

GB = 1e9
GiB = 1024**3


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
    return [
        {
            "key": e.key,
            "name": e.name,
            "family": e.family,
            "org": e.org,
            "year": e.year,
            "stated_total": e.stated_total,
            "stated_active": e.stated_active,
        }
        for e in catalog.entries()
    ]


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
        rows.append(
            {
                "model": src.key or src.label,
                "dtype": dtype,
                "weights_bytes": w,
                "kv_bytes_per_token": round(kv.per_token_bytes),
                "context": context,
                "batch": batch,
                "kv_bytes": kv.total_bytes,
                "total_bytes": w + kv.total_bytes,
            }
        )
    return rows


def plan_rows(keys: list[str], gpus: int, gpu_gib: float, dtype: str) -> list[dict]:
    from .arch.memory import device_plan

    rows = []
    for key in keys:
        plan = device_plan(_source(key), [gpu_gib] * gpus, dtype)
        for dev, b in plan.bytes_per_device.items():
            rows.append(
                {
                    "model": key,
                    "device": dev,
                    "layers": plan.layers_per_device.get(dev, 0),
                    "weights_bytes": b,
                    "fits_on_gpus": plan.fits,
                }
            )
    return rows


def speed_rows(
    keys: list[str],
    gpu: str,
    batch: int,
    context: int,
    prompt: int,
    dtype: str,
    kv_dtype: str | None,
    mla: str,
    custom: tuple | None = None,
    detail: bool = False,
) -> list[dict]:
    """Roofline prefill time and decode speed per model (``detail``: components and the worked formulas)."""
    from .arch import gpus as gpu_table
    from .arch.roofline import COMPONENT_ORDER, estimate

    g = gpu_table.custom(*custom) if gpu == gpu_table.CUSTOM else gpu_table.get(gpu)
    rows = []
    for key in keys:
        src = _source(key)
        e = estimate(src, g, batch, context, prompt, dtype, kv_dtype, mla)
        row = {
            "model": src.key or src.label,
            "gpu": g.key,
            "batch": batch,
            "context": context,
            "prompt": prompt,
            "dtype": dtype,
            "kv_dtype": e.kv_dtype,
            "mla": e.mla or "",
            "prefill_ms": e.prefill_s * 1e3,
            "decode_step_ms": e.step_s * 1e3,
            "tok_s": e.tok_s,
            "batch_tok_s": e.total_tok_s,
            "bound": e.decode.bound,
            "experts_touched": e.experts_touched,
        }
        times = {c.component: c.time_s for c in e.decode.components()}
        row.update({f"{c}_ms": times.get(c, 0.0) * 1e3 for c in COMPONENT_ORDER})
        if detail:
            row["decode_components"] = [
                {"component": c.component, "bytes": c.bytes, "flops": c.flops, "time_s": c.time_s, "bound": c.bound}
                for c in e.decode.components()
            ]
            row["prefill_components"] = [
                {"component": c.component, "bytes": c.bytes, "flops": c.flops, "time_s": c.time_s, "bound": c.bound}
                for c in e.prefill.components()
            ]
            row["within_max_context"] = e.within_context
            row["working"] = {"decode": e.decode.working.text(), "prefill": e.prefill.working.text()}
        rows.append(row)
    return rows


def _speed_text(rows: list[dict]) -> list[dict]:
    """Speed rows with numbers written for a terminal table."""

    def cell(col, v):
        if v is None or isinstance(v, str):
            return v or "—"
        if col.endswith("_ms"):
            return f"{v:,.3f}"
        if col.endswith("tok_s"):
            return f"{v:,.1f}"
        if col == "experts_touched":
            return f"{v:,.2f}"
        return f"{v:,}" if isinstance(v, int) else str(v)

    return [{c: cell(c, v) for c, v in r.items()} for r in rows]


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
    ss = sub.add_parser("speed", parents=[fmt], help="roofline prefill time and decode tok/s on a GPU")
    ss.add_argument("keys", nargs="+")
    ss.add_argument("--gpu", default="h100", help="h100, h200, a100, l40s, rtx4090, mi300x, or custom")
    ss.add_argument("--batch", type=int, default=1)
    ss.add_argument("--context", type=int, default=2048, help="tokens attended to in the decode step")
    ss.add_argument("--prompt", type=int, default=512, help="prompt tokens of the prefill")
    ss.add_argument("--dtype", default="bf16", help="weights: bf16, fp16, fp8, int4")
    ss.add_argument("--kv-dtype", default=None, help="KV cache (default: as --dtype; bf16 for int4)")
    ss.add_argument("--mla", default="engine", help="MLA as an engine runs it (engine) or as transformers does")
    ss.add_argument("--bandwidth-tbs", type=float, default=None, help="custom GPU: memory bandwidth in TB/s")
    ss.add_argument("--bf16-tflops", type=float, default=None, help="custom GPU: dense bf16 TFLOP/s")
    ss.add_argument("--fp8-tflops", type=float, default=None, help="custom GPU: dense fp8 TFLOP/s")
    train_cli.add_parser(sub)
    ablate_cli.add_parser(sub)
    findings_cli.add_parser(sub)
    try:
        a = p.parse_args(argv)
        if a.cmd == "train":
            return train_cli.run(a)
        if a.cmd == "ablate":
            return ablate_cli.run(a)
        if a.cmd == "findings":
            return findings_cli.run(a)
        if a.cmd == "list":
            rows = list_rows()
        elif a.cmd == "params":
            rows = params_rows(a.keys)
        elif a.cmd == "memory":
            rows = memory_rows(a.keys, a.context, a.dtype, a.batch, a.kv_dtype)
        elif a.cmd == "speed":
            custom = None
            if a.gpu == "custom":
                if a.bandwidth_tbs is None or a.bf16_tflops is None:
                    raise ArchLabError(
                        "--gpu custom needs --bandwidth-tbs and --bf16-tflops (and --fp8-tflops for fp8)"
                    )
                custom = (a.bandwidth_tbs, a.bf16_tflops, a.fp8_tflops)
            rows = speed_rows(
                a.keys, a.gpu, a.batch, a.context, a.prompt, a.dtype, a.kv_dtype, a.mla, custom, detail=a.fmt == "json"
            )
            if a.fmt is None:
                rows = _speed_text(rows)
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
