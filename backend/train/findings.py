"""Findings: the article's claims and published results, tested by ablations and judged from the intervals.

The claims are data (``assets/findings/claims.json``): each names its source and what it reports, the ablations
that test it (a base, the components varied, the data), two recipes (``full``: one GPU; ``quick``: a 2-core CPU,
fewer learning rates and seeds, and it says so), the sanity checks that must hold before any trained verdict
counts, and the comparisons with the direction the source reports. :func:`run_claim` trains a claim's ablations
(the same ablation path as the Experiments page and ``python -m backend ablate``) and keeps what a page needs:
per ablation its spec, ``summary.json``, the runs' final rows, probe accuracies and thinned curves. :func:`judge`
reads that evidence: sanity first, then each comparison as a paired difference over seeds with its 95 % interval,
and a verdict read off the interval (``statistics.finding``): ``supports``, ``contradicts`` or
``inconclusive at this scale``; a source that reports no difference is supported when the interval holds zero
and contradicted when it does not. The shipped evidence lives in ``assets/findings/<claim>/<mode>/``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import pandas as pd

from ..arch.errors import ArchLabError
from . import statistics as st
from .ablation import AblationSpec, plan, run_key, summarize
from .recipe import preset

ROOT = Path(__file__).resolve().parents[2] / "assets" / "findings"
CLAIMS_FILE = ROOT / "claims.json"
MODES = ("full", "quick")
#: result columns a shipped finding keeps (the rest of results.csv is for the run folder)
KEPT = (
    "model",
    "status",
    "val_loss",
    "init_loss",
    "diverged",
    "lr",
    "seed",
    "probe_accuracy",
    "loss_spike_score",
    "grad_spike_score",
    "spike_window",
    "max_attn_logit",
    "steps",
    "tokens",
    "train_seconds",
    "total_params",
    "active_params",
    "nonemb_active_params",
    "budget_value",
    "stack_runs",
    "step_kind",
)
#: points kept per run in a shipped curve
CURVE_POINTS = 200
METRICS = ("loss", "lr_sensitivity", "accuracy", "grad_spike_score", "loss_spike_score", "max_attn_logit")


@dataclass(frozen=True)
class Claim:
    """One claim of ``claims.json`` (see the module docstring)."""

    name: str
    title: str
    claim: str
    source: dict
    article: str
    ablations: tuple
    recipes: dict
    sanity: tuple
    comparisons: tuple
    static: Optional[dict] = None


def claims(path: Path = CLAIMS_FILE) -> list[Claim]:
    """Every claim, in the file's order."""
    data = json.loads(path.read_text())
    return [
        Claim(
            c["name"],
            c["title"],
            c["claim"],
            c["source"],
            c.get("article", ""),
            tuple(c["ablations"]),
            c["recipes"],
            tuple(c.get("sanity", ())),
            tuple(c.get("comparisons", ())),
            c.get("static"),
        )
        for c in data["claims"]
    ]


def claim(name: str) -> Claim:
    """The claim called ``name``; one-line ArchLabError naming the claims otherwise."""
    for c in claims():
        if c.name == name:
            return c
    raise ArchLabError(f"unknown claim {name!r}; choose one of {', '.join(c.name for c in claims())}")


def ablation_spec(c: Claim, name: str, mode: str = "full", device: str = "auto") -> AblationSpec:
    """The ablation ``name`` of claim ``c`` under its ``mode`` recipe."""
    if mode not in MODES:
        raise ArchLabError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    a = next((x for x in c.ablations if x["name"] == name), None)
    if a is None:
        raise ArchLabError(f"claim {c.name} has no ablation {name!r}")
    r = dict(c.recipes[mode])
    probe = a["data"] in ("mqar", "distance")
    lrs = r.pop("probe_lrs", None) if probe else None
    tokens = r.pop("probe_tokens", None) if probe else None
    r.pop("probe_lrs", None), r.pop("probe_tokens", None)
    lrs = lrs or r.pop("lrs")
    r.pop("lrs", None)
    seeds = r.pop("seeds")
    base = replace(preset(r.pop("preset"), **r, data=a["data"]), name=f"{c.name}/{name} ({mode})")
    if tokens:
        base = replace(base, tokens=int(tokens)).validate()
    vary = tuple((axis, tuple(values)) for axis, values in a["vary"])
    return AblationSpec(a["base"], vary, tuple(lrs), tuple(seeds), base, device, f"{c.name}/{name} ({mode})").validate()


# ----------------------------------------------------------------- evidence on disk


@dataclass
class Evidence:
    """What one ablation of a claim left: its spec, summary and the runs' rows."""

    name: str
    spec: AblationSpec
    summary: dict
    results: pd.DataFrame
    probes: pd.DataFrame
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)


def evidence_dir(claim_name: str, mode: str, root: Path = ROOT) -> Path:
    return root / claim_name / mode


def save_evidence(folder: Path, ev: Evidence) -> None:
    """A claim's ablation as the Findings page reads it (small files: no checkpoints)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(ev.spec.to_json() + "\n")
    (folder / "summary.json").write_text(json.dumps(ev.summary, indent=1, default=_json) + "\n")
    ev.results[[c for c in KEPT if c in ev.results]].to_csv(folder / "results.csv", index=False)
    ev.probes.to_csv(folder / "probes.csv", index=False)
    ev.curves.to_csv(folder / "curves.csv", index=False)


def load_evidence(claim_name: str, mode: str, root: Path = ROOT) -> dict[str, Evidence]:
    """The evidence of every ablation of a claim found under ``root`` (empty when there is none)."""
    out = {}
    base = evidence_dir(claim_name, mode, root)
    for folder in sorted(p for p in base.glob("*") if (p / "summary.json").is_file()):
        read = lambda n: (
            pd.read_csv(folder / n) if (folder / n).is_file() and (folder / n).stat().st_size else pd.DataFrame()
        )  # noqa: E731
        out[folder.name] = Evidence(
            folder.name,
            AblationSpec.from_json((folder / "spec.json").read_text()),
            json.loads((folder / "summary.json").read_text()),
            read("results.csv"),
            read("probes.csv"),
            read("curves.csv"),
        )
    return out


def thin_curves(metrics: pd.DataFrame, points: int = CURVE_POINTS) -> pd.DataFrame:
    """Per run at most ``points`` training-loss and gradient-norm rows, every validation row."""
    if metrics.empty:
        return metrics
    keep = []
    for _, g in metrics.groupby("model", sort=False):
        train = g[pd.to_numeric(g["train_loss"], errors="coerce").notna()]
        step = max(1, math.ceil(len(train) / points))
        keep.append(train.iloc[::step])
        keep.append(g[pd.to_numeric(g["val_loss"], errors="coerce").notna()])
    cols = [c for c in ("model", "step", "tokens", "train_loss", "val_loss", "lr", "grad_norm") if c in metrics]
    return pd.concat(keep).drop_duplicates().sort_values(["model", "step"])[cols]


# ----------------------------------------------------------------- training a claim


def run_claim(
    name: str,
    mode: str = "full",
    device: str = "auto",
    out: Optional[Path] = None,
    log: Callable[[str], None] = print,
    cancel=None,
    only: Optional[list] = None,
) -> dict:
    """Train the ablations of claim ``name`` (every one, or those named in ``only``; the ``mode`` recipe) and judge
    it; the evidence goes to ``out`` (default: ``findings/<claim>/<mode>`` under the runs dir). Returns the verdict."""
    from ..live.roots import runs_dir
    from .runner import TrainingRun
    from .store import read_run

    c = claim(name)
    out = out or runs_dir() / "findings" / c.name / mode
    evidence = {}
    if only:
        unknown = sorted(set(only) - {a["name"] for a in c.ablations})
        if unknown:
            raise ArchLabError(f"claim {c.name} has no ablation {', '.join(unknown)}")
    for a in c.ablations:
        if only and a["name"] not in only:
            continue
        spec = ablation_spec(c, a["name"], mode, device)
        p = plan(spec)
        log(
            f"{c.name}/{a['name']} ({mode}): {len(p.cells)} cells × {len(spec.lrs)} lrs × {len(spec.seeds)} seeds = "
            f"{p.runs} runs, {spec.recipe.tokens:,} tokens each, data {spec.recipe.data}"
        )
        run = TrainingRun(p.run, sizer=p.sizer()).start()
        while run.running:
            run.join(5.0)
            if cancel is not None and cancel():
                run.cancel()
        rec = read_run(run.id)
        v = run.view()
        summary = summarize(p, v.results)
        summary["run_id"], summary["mode"] = run.id, mode
        ev = Evidence(a["name"], spec, summary, pd.DataFrame(v.results), rec.probes, thin_curves(rec.metrics))
        save_evidence(out / a["name"], ev)
        evidence[a["name"]] = ev
        log(f"  {v.status} in {time.time() - run.started:.0f} s: {run.folder}")
    verdict = judge(c, evidence)
    verdict["mode"] = mode
    (out / "verdict.json").write_text(json.dumps(verdict, indent=1, default=_json) + "\n")
    return verdict


def rejudge(name: str, mode: str, root: Path = ROOT) -> Optional[dict]:
    """Judge the evidence of claim ``name`` under ``root`` again (no training) and rewrite its verdict.json; None
    when there is no evidence. For when the rules change: the verdict always follows from the recorded runs."""
    evidence = load_evidence(name, mode, root)
    if not evidence:
        return None
    verdict = {**judge(claim(name), evidence), "mode": mode}
    (evidence_dir(name, mode, root) / "verdict.json").write_text(json.dumps(verdict, indent=1, default=_json) + "\n")
    return verdict


# ----------------------------------------------------------------- judging


def _rows(ev: Evidence, cell: str, lr: float) -> pd.DataFrame:
    keys = [run_key(cell, lr, s) for s in ev.spec.seeds]
    r = ev.results
    return r.set_index("model").reindex(keys) if not r.empty else pd.DataFrame(index=keys)


def _cell(ev: Evidence, name: str) -> dict:
    for c in ev.summary["cells"]:
        if c["name"] == name:
            return c
    raise ArchLabError(f"{ev.name}: no cell {name!r} (cells: {', '.join(c['name'] for c in ev.summary['cells'])})")


def _finished(row) -> bool:
    return row.get("status") == "finished" and str(row.get("diverged")).lower() != "true"


def _accuracy_best(ev: Evidence, cell: str) -> tuple[Optional[float], list]:
    """(the learning rate with the best mean probe accuracy, the seeds' accuracies there)."""
    best = None
    for lr in ev.spec.lrs:
        rows = _rows(ev, cell, lr)
        acc = [
            float(r["probe_accuracy"]) if _finished(r) and _num(r.get("probe_accuracy")) else None
            for _, r in rows.iterrows()
        ]
        if any(a is None for a in acc):
            continue
        if best is None or np.mean(acc) > np.mean(best[1]):
            best = (lr, acc)
    return best if best else (None, [None] * len(ev.spec.seeds))


def values(ev: Evidence, cell: str, metric: str, lr: Any = None) -> tuple[list, Optional[float]]:
    """The seeds' values of ``metric`` for ``cell`` (seed order), and the learning rate they were taken at."""
    if metric not in METRICS:
        raise ArchLabError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    c = _cell(ev, cell)
    if metric == "loss":
        return (c["best_losses"] or [None] * len(ev.spec.seeds)), c["best_lr"]
    if metric == "lr_sensitivity":
        per = c["lr_sensitivity_per_seed"]
        return (per if len(per) == len(ev.spec.seeds) else [None] * len(ev.spec.seeds)), None
    if metric == "accuracy":
        best_lr, acc = _accuracy_best(ev, cell)
        return acc, best_lr
    at = max(ev.spec.lrs) if lr in (None, "max") else float(lr)
    rows = _rows(ev, cell, at)
    return [float(r[metric]) if _num(r.get(metric)) else None for _, r in rows.iterrows()], at


def sanity(ev: Evidence, check: dict) -> dict:
    """One sanity check on an ablation's evidence: ``holds`` true/false (None: it could not be shown)."""
    kind = check["kind"]
    if kind == "learns":
        out = []
        for c in ev.summary["cells"]:
            best = c["best_lr"]
            if best is None:
                out.append({"cell": c["name"], "holds": False, "why": "every learning rate diverged or failed"})
                continue
            rows = _rows(ev, c["name"], best)
            drop = st.paired_difference(
                [float(r["val_loss"]) if _finished(r) else None for _, r in rows.iterrows()],
                [float(r["init_loss"]) if _num(r.get("init_loss")) else None for _, r in rows.iterrows()],
            )
            holds = None if drop.high is None else drop.high < 0
            out.append(
                {
                    "cell": c["name"],
                    "holds": holds,
                    "loss_drop": drop.as_dict(),
                    "why": "final loss − loss at initialisation over seeds, at the best learning rate",
                }
            )
        ok = [x["holds"] for x in out]
        return {
            "kind": kind,
            "ablation": ev.name,
            "holds": (False if False in ok else None if None in ok else True),
            "cells": out,
            "rule": "every cell ends below its loss at initialisation (interval below zero)",
        }
    if kind in ("accuracy", "distance"):
        best_lr, _ = _accuracy_best(ev, check["cell"])
        p = ev.probes
        if best_lr is None or p.empty:
            return {
                "kind": kind,
                "ablation": ev.name,
                "cell": check["cell"],
                "holds": False,
                "why": "no finished run to measure",
                "rule": f"at least {check['at_least']:.0%}",
            }
        keys = [run_key(check["cell"], best_lr, s) for s in ev.spec.seeds]
        rows = p[p["model"].isin(keys)]
        points = []
        if kind == "accuracy":
            for kv, seq in check["settings"]:
                if seq > ev.spec.recipe.seq_len:  # not measurable: the runs trained on shorter sequences
                    continue
                g = rows[
                    (pd.to_numeric(rows["kv_pairs"], errors="coerce") == kv)
                    & (pd.to_numeric(rows["seq_len"], errors="coerce") == seq)
                ]
                points.append(
                    {
                        "setting": f"{kv} pairs at {seq}",
                        "accuracy": float(g["accuracy"].mean()) if len(g) else None,
                        "seeds": int(len(g)),
                    }
                )
        else:
            g = rows[pd.to_numeric(rows["distance"], errors="coerce").notna()]
            for d, gg in g.groupby(pd.to_numeric(g["distance"])):
                points.append(
                    {"setting": f"distance ≤ {int(d)}", "accuracy": float(gg["accuracy"].mean()), "seeds": int(len(gg))}
                )
        measured = [x for x in points if x["accuracy"] is not None]
        holds = (
            bool(measured)
            and len(measured) == len(points)
            and all(x["accuracy"] >= check["at_least"] for x in measured)
        )
        return {
            "kind": kind,
            "ablation": ev.name,
            "cell": check["cell"],
            "lr": best_lr,
            "holds": holds,
            "points": points,
            "rule": f"{check['cell']} reaches at least {check['at_least']:.0%} at every "
            f"{'setting' if kind == 'accuracy' else 'distance bucket'} (mean over seeds)",
        }
    raise ArchLabError(f"unknown sanity check {kind!r}")


def compare(ev: Evidence, comp: dict) -> dict:
    """One comparison: the paired difference over seeds of ``metric`` (a − b), its interval and verdicts."""
    a, lr_a = values(ev, comp["a"], comp["metric"], comp.get("lr"))
    b, lr_b = values(ev, comp["b"], comp["metric"], comp.get("lr"))
    diff = st.paired_difference(a, b)
    measured = st.verdict(diff)
    expected = comp.get("expected")
    spread = None
    if expected is None:
        finding = None
    elif measured in ("too few seeds", "no interval"):
        finding = f"no verdict (fewer than {st.MIN_SEEDS} seeds)"
    elif expected == "same":
        spread = st.interval(b).sd  # the reference's seed-to-seed spread: the margin of "no difference"
        finding = st.no_difference(diff, spread)
    else:
        finding = st.finding(diff, expected)
    if finding == "inconclusive":
        finding = "inconclusive at this scale"
    return {
        **comp,
        "a_values": a,
        "b_values": b,
        "a_lr": lr_a,
        "b_lr": lr_b,
        "difference": diff.as_dict(),
        "measured": measured,
        "margin": spread,
        "verdict": finding,
    }


def _unmet(check: dict) -> str:
    """Where a sanity check did not hold: the cells (or the reason) that failed it."""
    if check.get("why"):
        return check["why"]
    if check["kind"] == "learns":
        bad = [
            f"{x['cell']} ({'not below' if 'loss_drop' in x else x['why']})"
            if x["holds"] is False
            else f"{x['cell']} (not measurable)"
            for x in check["cells"]
            if x["holds"] is not True
        ]
        return "not met by " + ", ".join(bad)
    return "measured " + ", ".join(
        f"{x['setting']} {x['accuracy']:.0%}" if x["accuracy"] is not None else f"{x['setting']} not measured"
        for x in check.get("points", [])
    )


def judge(c: Claim, evidence: dict[str, Evidence]) -> dict:
    """Sanity, comparisons and the claim's verdict from its evidence (see the module docstring)."""
    checks = [sanity(evidence[s["ablation"]], s) for s in c.sanity if s["ablation"] in evidence]
    failed = [s for s in checks if s["holds"] is False]
    unknown = [s for s in checks if s["holds"] is None]
    comps = [compare(evidence[k["ablation"]], k) for k in c.comparisons if k["ablation"] in evidence]
    # a task must be shown learnable before a verdict on it counts: a failed sanity check blocks the comparisons of
    # its own ablation, not those of another ablation whose task was shown learnable
    blocked = {s["ablation"] for s in failed + unknown}
    why = "; ".join(f"{s['ablation']}: {s['rule']} — {_unmet(s)}" for s in failed + unknown)
    for k in comps:
        if k["ablation"] in blocked and k["verdict"] is not None:
            k["verdict"] = "no verdict (sanity not shown)"
    judged = [k["verdict"] for k in comps if k["verdict"] is not None and k["ablation"] not in blocked]
    if blocked and not judged:
        overall = f"no verdict: the task was not shown learnable ({why})"
    elif not judged:
        overall = "not run"
    elif any(v.startswith("no verdict") for v in judged):
        overall = f"no verdict: fewer than {st.MIN_SEEDS} seeds"
    elif all(v == "supports" for v in judged):
        overall = "supports"
    elif all(v == "contradicts" for v in judged):
        overall = "contradicts"
    elif "supports" in judged and "contradicts" in judged:
        overall = "mixed: " + "; ".join(
            f"{k['a']} vs {k['b']} ({k['metric']}): {k['verdict']}"
            for k in comps
            if k["verdict"] is not None and k["ablation"] not in blocked
        )
    elif "contradicts" in judged:
        overall = "contradicts (in part)"
    else:
        overall = "inconclusive at this scale"
    if blocked and judged:
        overall += f" (no verdict on {', '.join(sorted(blocked))}: the task was not shown learnable)"
    seeds = sorted({len(ev.spec.seeds) for ev in evidence.values()})
    missing = [a["name"] for a in c.ablations if a["name"] not in evidence]
    if missing and overall != "not run":
        overall += f" (not run: {', '.join(missing)})"
    return {
        "claim": c.name,
        "verdict": overall,
        "sanity": checks,
        "comparisons": comps,
        "ablations": sorted(evidence),
        "not_run": missing,
        "seeds": seeds,
    }


def _num(x) -> bool:
    try:
        return x is not None and x != "" and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _json(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)
