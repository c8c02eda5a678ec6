"""Findings benchmark: re-train claims of the Findings page, check each against its shipped result, time it.

    python bench/findings.py [--claims olmo2-norm,qk-norm-lr] [--quick] [--device auto]
    python bench/findings.py --claims olmo2-norm --ship      # (maintainers) the new evidence becomes the shipped one

For each claim: every ablation trained with the claim's recipe (``full`` on a GPU, ``--quick`` the CPU version),
judged (``backend.train.findings.judge``), and compared with the shipped evidence: the verdict holds, and each
cell's mean loss at its best learning rate lies within the shipped 95 % interval. Minutes per claim, the verdicts
and the checks are printed and written to bench/results/findings-<device>[-tag].json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep (see app.py)
RESULTS = ROOT / "bench" / "results"


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "_") + f"x{torch.cuda.device_count()}"
    return f"cpu{os.cpu_count()}"


def check(name: str, mode: str, new: Path) -> dict:
    """The re-run against the shipped evidence: same verdict; every cell's mean best loss inside the shipped interval."""
    from backend.train import findings as F

    shipped_dir = F.evidence_dir(name, mode)
    if not (shipped_dir / "verdict.json").is_file():
        return {"shipped": None}
    shipped = json.loads((shipped_dir / "verdict.json").read_text())
    renewed = json.loads((new / "verdict.json").read_text())
    cells = []
    for abl, ev in F.load_evidence(name, mode).items():
        again = F.load_evidence(name, mode, new.parent.parent).get(abl)
        if again is None:
            continue
        for c_old, c_new in zip(ev.summary["cells"], again.summary["cells"]):
            old, now = c_old.get("best") or {}, c_new.get("best") or {}
            inside = (
                None if old.get("low") is None or now.get("mean") is None else old["low"] <= now["mean"] <= old["high"]
            )
            cells.append(
                {
                    "ablation": abl,
                    "cell": c_old["name"],
                    "shipped": old,
                    "rerun_mean": now.get("mean"),
                    "inside": inside,
                }
            )
    return {
        "shipped": shipped["verdict"],
        "rerun": renewed["verdict"],
        "verdict_holds": shipped["verdict"] == renewed["verdict"],
        "cells": cells,
        "means_inside": all(c["inside"] for c in cells if c["inside"] is not None),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--claims", default=None, help="comma-separated claim names (default: all)")
    ap.add_argument("--quick", action="store_true", help="the CPU quick recipes")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ship", action="store_true", help="write the evidence into assets/findings")
    ap.add_argument(
        "--only",
        default=None,
        help="claim:ablation pairs to train (the others are left out), e.g. sliding-windows:loss",
    )
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    from backend.train import findings as F
    from backend.train.findings_cli import verdict_lines

    mode = "quick" if a.quick else "full"
    names = a.claims.split(",") if a.claims else [c.name for c in F.claims()]
    out = {"device": _device(), "mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "claims": []}
    scratch = Path(tempfile.mkdtemp(prefix="findings-"))
    for name in names:
        t0 = time.perf_counter()
        folder = F.evidence_dir(name, mode) if a.ship else F.evidence_dir(name, mode, scratch)
        only = [x.split(":", 1)[1] for x in (a.only or "").split(",") if x.startswith(name + ":")] or None
        verdict = F.run_claim(name, mode, a.device, folder, log=lambda s: print(s, flush=True), only=only)
        minutes = (time.perf_counter() - t0) / 60
        for line in verdict_lines(verdict):
            print(line, flush=True)
        row = {"claim": name, "minutes": minutes, "verdict": verdict["verdict"]}
        if not a.ship:
            row["against_shipped"] = check(name, mode, folder)
        print(
            f"{name}: {minutes:.1f} min" + (f"; against shipped: {row['against_shipped']}" if not a.ship else ""),
            flush=True,
        )
        out["claims"].append(row)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"findings-{out['device']}-{mode}{'-' + a.tag if a.tag else ''}.json"
        path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
