"""Re-runs of the Findings page's claims: the query a re-run link carries (the claim, ablation and recipe it
re-runs), its checks, and keeping a finished ablation that was started for a claim where the Findings page reads it
(``<runs dir>/findings/<claim>/<mode>/<ablation>/``, judged with the claim's other ablations found there).

Apart from ``findings.py`` (the page's tables) so that the Ablation page's summary can keep a re-run without
importing the page that imports it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping, Optional, Sequence

import pandas as pd

from ..arch.errors import ArchLabError
from ..live.roots import runs_dir
from ..train import findings as F
from ..train.ablation import AblationSpec

log = logging.getLogger("archlab.findings")

MODES = F.MODES
#: query parameters of a re-run link besides the ablation's own (``mode``, ``spec``): the claim it re-runs
CLAIM_PARAM, ABLATION_PARAM, MODE_PARAM = "claim", "ablation", "fmode"
FINDING_PARAMS = (CLAIM_PARAM, ABLATION_PARAM, MODE_PARAM)


def rerun_root() -> Path:
    """Where re-runs of the claims go: ``<runs dir>/findings``."""
    return runs_dir() / "findings"


def finding_tag(params: Mapping[str, str]) -> Optional[dict]:
    """The claim a link's query (``claim``, ``ablation``, ``fmode``) re-runs, checked; None when the link names no
    claim; one-line ArchLabError for a claim, ablation or recipe that does not exist."""
    name = params.get(CLAIM_PARAM)
    if not name:
        return None
    c = F.claim(str(name))
    ablation = str(params.get(ABLATION_PARAM) or "")
    if ablation not in {a["name"] for a in c.ablations}:
        raise ArchLabError(
            f"claim {c.name} has no ablation {ablation!r}; it has {', '.join(a['name'] for a in c.ablations)}"
        )
    mode = str(params.get(MODE_PARAM) or "quick")
    if mode not in MODES:
        raise ArchLabError(f"a claim's recipe is {' or '.join(MODES)}, not {mode!r}")
    return {"claim": c.name, "ablation": ablation, "mode": mode}


def tag_problem(spec, tag: Mapping[str, str]) -> str:
    """Why ``spec`` (an AblationSpec) no longer tests the tagged claim's ablation ("" when it does): the claim's
    verdict reads its cells by name, so the base and the components varied must be the claim's."""
    c = F.claim(tag["claim"])
    a = next(x for x in c.ablations if x["name"] == tag["ablation"])
    want = {axis: set(map(str, values)) for axis, values in a["vary"]}
    got = {axis: set(map(str, values)) for axis, values in spec.vary}
    if spec.base != a["base"] or want != got:
        vary = " × ".join(f"{axis} = {', '.join(values)}" for axis, values in a["vary"])
        return (
            f"this ablation no longer tests the claim {c.title!r} (it varies {vary} over {a['base']}), so it "
            "will not be drawn on the Findings page"
        )
    return ""


def save_rerun(
    folder: Path, summary: dict, results: Sequence[dict], tag: Mapping[str, str], root: Optional[Path] = None
) -> Optional[dict]:
    """Keep a finished ablation that was started for a claim (``tag``) as that claim's re-run: its evidence in
    ``<root>/<claim>/<mode>/<ablation>/`` (``findings.save_evidence``: spec, summary, results, probes, thinned
    curves; root: :func:`rerun_root`) and the claim judged on every ablation found there, in ``verdict.json``.
    Returns the verdict; None (logged) when the run does not fit the claim."""
    from ..train.store import RunWriter, read_run

    folder = Path(folder)
    try:
        tag = finding_tag(
            {CLAIM_PARAM: tag.get("claim"), ABLATION_PARAM: tag.get("ablation"), MODE_PARAM: tag.get("mode")}
        )
        spec = AblationSpec.from_json(json.dumps(summary["spec"]))
        problem = tag_problem(spec, tag)
        if problem:
            raise ArchLabError(problem)
        rec = read_run(folder.name, folder.parent)
        mode, c = tag["mode"], F.claim(tag["claim"])
        kept = {
            **summary,
            "run_id": folder.name,
            "mode": mode,
            "device": rec.recipe.get("device", spec.device),
            "status": rec.status.get("status", ""),
        }
        root = Path(root) if root else rerun_root()
        out = F.evidence_dir(c.name, mode, root)
        F.save_evidence(
            out / tag["ablation"],
            F.Evidence(
                tag["ablation"], spec, kept, pd.DataFrame(list(results)), rec.probes, F.thin_curves(rec.metrics)
            ),
        )
        verdict = {**F.judge(c, F.load_evidence(c.name, mode, root)), "mode": mode}
        RunWriter(out).write_json("verdict.json", verdict)
        return verdict
    except ArchLabError as e:
        log.warning("run %s is not kept as a re-run of %s: %s", folder.name, dict(tag), e)
        return None
