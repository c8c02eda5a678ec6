"""``python -m backend findings``: re-train a claim of the Findings page and judge it.

    python -m backend findings --list
    python -m backend findings --claim olmo2-norm --device auto            # the full recipe (one GPU)
    python -m backend findings --claim olmo2-norm --quick                  # the CPU quick version (3 seeds)
    python -m backend findings --claim olmo2-norm --quick --ship           # write assets/findings (maintainers)
    python -m backend findings --rejudge                                   # re-judge the shipped evidence (no training)

The evidence goes to ``<runs dir>/findings/<claim>/<full|quick>/`` (``--ship``: ``assets/findings/``), where the
Findings page draws it beside the shipped one, and the verdict is printed with the shipped verdict.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..arch.errors import ArchLabError


def add_parser(sub) -> None:
    t = sub.add_parser("findings", help="re-train a claim of the Findings page and judge it")
    t.add_argument("--claim", help="the claim's name (--list shows them)")
    t.add_argument("--list", action="store_true", help="list the claims and their shipped verdicts")
    t.add_argument(
        "--quick", action="store_true", help="the quick CPU recipe (fewer learning rates and tokens, 3 seeds)"
    )
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--runs-dir", default=None, help="where run folders go (default: ARCHLAB_RUNS_DIR or runs/)")
    t.add_argument("--ship", action="store_true", help="write the evidence into assets/findings (shipped results)")
    t.add_argument(
        "--rejudge",
        action="store_true",
        help="judge the shipped evidence again with the current rules and rewrite its verdict.json (maintainers)",
    )


def run(a) -> int:
    from . import findings as F

    if a.list:
        for c in F.claims():
            shipped = []
            for mode in F.MODES:
                path = F.evidence_dir(c.name, mode) / "verdict.json"
                if path.is_file():
                    shipped.append(f"{mode}: {json.loads(path.read_text())['verdict']}")
            print(f"{c.name:18s} {c.title}  [{'; '.join(shipped) or 'no shipped evidence'}]")
        return 0
    if a.rejudge:
        for c in F.claims() if not a.claim else [F.claim(a.claim)]:
            for mode in F.MODES:
                v = F.rejudge(c.name, mode)
                if v is not None:
                    print("\n".join(verdict_lines(v)))
        return 0
    if not a.claim:
        raise ArchLabError("--claim NAME is required (--list shows the claims)")
    c = F.claim(a.claim)
    if a.runs_dir:
        os.environ["ARCHLAB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    mode = "quick" if a.quick else "full"
    out = F.evidence_dir(c.name, mode) if a.ship else None
    verdict = F.run_claim(c.name, mode, a.device, out, log=lambda s: print(s, flush=True))
    for line in verdict_lines(verdict):
        print(line)
    shipped = F.evidence_dir(c.name, mode) / "verdict.json"
    if not a.ship and shipped.is_file():
        print(f"shipped ({mode}): {json.loads(shipped.read_text())['verdict']}")
    return 0


def verdict_lines(v: dict) -> list[str]:
    """A claim's verdict as text: sanity, then each comparison with its interval."""
    lines = [f"{v['claim']} ({v.get('mode', '')}): {v['verdict']}"]
    for s in v["sanity"]:
        lines.append(
            f"  sanity {s['ablation']}: {'holds' if s['holds'] else 'not shown' if s['holds'] is None else 'fails'}"
            f" ({s['rule']})"
        )
    for k in v["comparisons"]:
        d = k["difference"]
        iv = "—" if d["mean"] is None or d["low"] is None else f"{d['mean']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        lines.append(
            f"  {k['a']} − {k['b']} ({k['metric']}): {iv} → {k['measured']}"
            + (f"; expected {k['expected']}: {k['verdict']}" if k.get("expected") else "")
        )
    return lines
