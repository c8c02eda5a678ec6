"""What the Findings page shows: every claim of ``assets/findings/claims.json`` with its source and what the source
reports, ArchLab's static evidence (exact figures from the catalog configs and their variants), and its trained
evidence: the shipped one (``assets/findings/<claim>/<mode>/``) and a re-run (``<runs dir>/findings/<claim>/<mode>/``,
written by ``python -m backend findings`` or by an ablation the Experiments page started for the claim), each judged
by ``findings.judge`` (sanity first, then paired differences with intervals). Plus the links and command lines that
re-run a claim, and :func:`save_rerun`, the hook that keeps an ablation started for a claim as its re-run.

Plain data in, plain data out (no Streamlit); the figures are in ``findings_charts``, the HTML report in
``findings_report``. Static figures build variants on the meta device (torch); nothing else here imports it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional, Sequence
from urllib.parse import parse_qsl

import pandas as pd

from ..arch.errors import ArchLabError
from ..train import findings as F
from . import ablation as ab
from .reruns import (  # noqa: F401  (the page and its tests read them here)
    ABLATION_PARAM,
    CLAIM_PARAM,
    FINDING_PARAMS,
    MODE_PARAM,
    finding_tag,
    rerun_root,
    save_rerun,
    tag_problem,
)

log = logging.getLogger("archlab.findings")

MODES = F.MODES
MODE_LABELS = {"full": "full recipe (one GPU)", "quick": "quick recipe (2-core CPU)"}
SHIPPED, RERUN = "shipped", "re-run"
METRIC_LABELS = {
    "loss": "loss (best lr)",
    "lr_sensitivity": "LR sensitivity",
    "accuracy": "probe accuracy (best lr)",
    "grad_spike_score": "gradient spike score",
    "loss_spike_score": "loss spike score",
    "max_attn_logit": "largest attention logit",
}
DIGITS = {"accuracy": 3, "max_attn_logit": 2}
EXPECTED = {"lower": "a lower than b", "higher": "a higher than b", "same": "no difference", None: "no direction"}
NOT_JUDGED = "not judged (the source reports no direction)"
INTRO = (
    "The article's claims and the published results behind them, each tested by ArchLab on equal footing: exact "
    "figures from the catalog configs where the claim is static, and controlled ablations at a matched budget "
    "(one component changed, a grid of learning rates, several seeds) where it is trained. A verdict is read "
    "off the 95 % interval of a paired difference over seeds, and only once the task is shown learnable: "
    "supports, contradicts, or inconclusive at this scale. Tiny models on a small corpus are not the papers' "
    "scale: a verdict says what happens here, under the recipe shown."
)
#: what the page and the report say about the tables (one source for both)
CAPTIONS = {
    "sanity": "No trained verdict counts until the task is shown learnable. Learns: every cell's final loss minus "
    "its loss at initialisation, paired over seeds at its best learning rate, with its 95 % interval "
    "(below zero: it learned). Accuracy checks: mean over seeds at the best learning rate.",
    "comparisons": "Each comparison as the source makes it: the paired difference a − b over seeds (the same seed "
    "gives both cells the same batches), its 95 % Student-t interval, the direction measured "
    "(lower / higher when the interval excludes zero, within noise when it holds it) and the verdict "
    "against the source's direction: supports, contradicts, or inconclusive at this scale. A source "
    "that reports no difference is supported when the interval lies inside ± b's seed-to-seed standard "
    "deviation (what is left is smaller than re-running with another seed), contradicted when it excludes zero, "
    "and inconclusive when it holds zero but is wider than that. Fewer than 3 seeds give no verdict.",
    "cells": "Per cell at its best learning rate: the final validation loss, mean over seeds with its 95 % interval, "
    "and LR sensitivity (Wortsman et al. 2023: the mean over the grid of min(loss, loss at initialisation) "
    "minus the best loss) with its interval.",
    "loss_vs_lr": "Each cell's seeds (dots), their mean (line) and 95 % interval (band) at every learning rate; the "
    "star is its best learning rate. A re-run is drawn beside the shipped evidence (dashed, "
    "'· re-run'). Diverged or missing runs are crosses at the initial loss.",
    "stability": "Spike scores as OLMo 2 defines them (the share of steps at least 7 standard deviations from the "
    "rolling mean) and the largest attention logit, per cell and learning rate (means over seeds).",
    "recipe": "The exact recipe each piece of evidence was trained with (its spec.json), and where it ran.",
}


# ----------------------------------------------------------------- trained evidence


def _root(origin: str) -> Path:
    return F.ROOT if origin == SHIPPED else rerun_root()


def stamp(claim_name: str, mode: str, origin: str) -> tuple:
    """The files of a claim's evidence with their modification times (a cache key that changes with a re-run)."""
    base = F.evidence_dir(claim_name, mode, _root(origin))
    if not base.is_dir():
        return ()
    return tuple(sorted((str(p.relative_to(base)), p.stat().st_mtime_ns) for p in base.glob("*/*") if p.is_file()))


@dataclass(frozen=True)
class Trained:
    """One claim's evidence under one recipe (``mode``), shipped or re-run, with its verdict (``findings.judge``)."""

    claim: str
    mode: str
    origin: str
    folder: Path
    evidence: dict  # ablation name -> findings.Evidence
    verdict: dict

    @property
    def label(self) -> str:
        return f"{self.origin} ({self.mode})"


def trained(claim_name: str, mode: str, origin: str) -> Optional[Trained]:
    """The claim's ``origin`` evidence (shipped or re-run) under the ``mode`` recipe, judged; None without any."""
    if origin not in (SHIPPED, RERUN):
        raise ArchLabError(f"origin must be {SHIPPED} or {RERUN}, not {origin!r}")
    root = _root(origin)
    evidence = F.load_evidence(claim_name, mode, root)
    if not evidence:
        return None
    verdict = F.judge(F.claim(claim_name), evidence)
    return Trained(claim_name, mode, origin, F.evidence_dir(claim_name, mode, root), evidence, verdict)


@dataclass(frozen=True)
class ModeEvidence:
    """A claim's evidence under one recipe: the shipped one and a re-run, either possibly absent."""

    mode: str
    shipped: Optional[Trained]
    rerun: Optional[Trained]

    @property
    def runs(self) -> list[Trained]:
        return [t for t in (self.shipped, self.rerun) if t is not None]


def mode_evidence(claim_name: str, mode: str) -> ModeEvidence:
    return ModeEvidence(mode, trained(claim_name, mode, SHIPPED), trained(claim_name, mode, RERUN))


def sentence(text: str) -> str:
    """``text`` with its first letter in upper case (the rest kept: "GPU" stays)."""
    return text[:1].upper() + text[1:]


def short_verdict(verdict: str) -> str:
    """A verdict short enough for a badge in the summary table: the outcome without its details (the claim's
    section gives them in full)."""
    if verdict.startswith("no verdict: the task was not shown learnable"):
        return "no verdict: task not shown learnable" + (
            " (not run: " + verdict.split("(not run: ")[-1] if "(not run: " in verdict else ""
        )
    if verdict.startswith("mixed:"):
        return "mixed (see the claim)"
    return verdict.replace(": the task was not shown learnable)", ": not learnable)")


def verdict_text(t: Optional[Trained]) -> str:
    """The claim's overall verdict from ``t`` (``not run`` without evidence)."""
    return t.verdict["verdict"] if t is not None else "not run"


def verdict_color(verdict: Optional[str]) -> str:
    """A colour name for a verdict (Streamlit badges; the report maps it too): the same weight for every outcome."""
    v = (verdict or "").lower()
    if v.startswith("supports"):
        return "green"
    if v.startswith("contradicts"):
        return "red"
    if v.startswith("mixed"):
        return "violet"
    if v.startswith("no verdict"):
        return "orange"
    return "gray"


# ----------------------------------------------------------------- tables


def summary_table(claims: Sequence[F.Claim], evidence: Mapping[str, Mapping[str, ModeEvidence]]) -> pd.DataFrame:
    """One row per claim: its title, name (the page's anchor), source and the verdict of each recipe, shipped and
    re-run (``evidence``: claim -> mode -> :class:`ModeEvidence`)."""
    rows = []
    for c in claims:
        row = {"claim": c.title, "name": c.name, "source": c.source["label"]}
        for mode in MODES:
            e = evidence[c.name][mode]
            row[f"verdict ({mode})"] = verdict_text(e.shipped)
            row[f"re-run ({mode})"] = verdict_text(e.rerun) if e.rerun else ""
        rows.append(row)
    return pd.DataFrame(rows)


def _holds(h) -> str:
    return "holds" if h is True else "fails" if h is False else "not shown"


def _sanity_detail(s: dict) -> str:
    if s["kind"] == "learns":
        return "; ".join(
            f"{x['cell']}: Δ loss {ab.with_ci(*(x['loss_drop'][k] for k in ('mean', 'low', 'high')), 3)}"
            if x.get("loss_drop")
            else f"{x['cell']}: {x['why']}"
            for x in s["cells"]
        )
    points = s.get("points") or []
    text = "; ".join(f"{p['setting']}: " + ("—" if p["accuracy"] is None else f"{p['accuracy']:.1%}") for p in points)
    return text or s.get("why", "")


def sanity_table(claim: F.Claim, runs: Sequence[Trained]) -> pd.DataFrame:
    """Every sanity check of the claim per piece of evidence: its rule, whether it holds, and the numbers."""
    rows = []
    for t in runs:
        judged = {(s["ablation"], s["kind"], s.get("cell")): s for s in t.verdict["sanity"]}
        for check in claim.sanity:
            s = judged.get((check["ablation"], check["kind"], check.get("cell")))
            rows.append(
                {
                    "evidence": t.label,
                    "ablation": check["ablation"],
                    "check": s["rule"] if s else check["kind"],
                    "holds": _holds(s["holds"]) if s else "not run",
                    "numbers": _sanity_detail(s) if s else "",
                }
            )
    return pd.DataFrame(rows, columns=["evidence", "ablation", "check", "holds", "numbers"])


def comparisons_table(runs: Sequence[Trained]) -> pd.DataFrame:
    """Every comparison of every piece of evidence with exact numbers: the paired difference a − b, its interval,
    the seeds, the direction measured and the verdict."""
    rows = []
    for t in runs:
        for k in t.verdict["comparisons"]:
            d = k["difference"]
            lrs = ", ".join("—" if k.get(x) is None else f"{k[x]:g}" for x in ("a_lr", "b_lr"))
            rows.append(
                {
                    "evidence": t.label,
                    "ablation": k["ablation"],
                    "a": k["a"],
                    "b": k["b"],
                    "metric": METRIC_LABELS.get(k["metric"], k["metric"]),
                    "learning rates (a, b)": lrs,
                    "the source": k.get("says", ""),
                    "expected": EXPECTED.get(k.get("expected"), k.get("expected"))
                    + (
                        f" (inside ±{k['margin']:.{DIGITS.get(k['metric'], 4)}f}, b's seed spread)"
                        if k.get("margin") is not None
                        else ""
                    ),
                    "no-difference margin": k.get("margin"),
                    "Δ (a − b)": d["mean"],
                    "CI low": d["low"],
                    "CI high": d["high"],
                    "seeds": d["n"],
                    "measured": k["measured"],
                    "verdict": k["verdict"] or NOT_JUDGED,
                    "digits": DIGITS.get(k["metric"], 4),
                }
            )
    return pd.DataFrame(rows)


def comparisons_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`comparisons_table` as the page shows it: the difference and its interval in one column."""
    if table.empty:
        return table
    t = table.astype(object).where(table.notna(), None)
    return pd.DataFrame(
        {
            "comparison (a − b)": [f"{a} − {b}" for a, b in zip(t["a"], t["b"])],
            "metric": t["metric"],
            "Δ (95 % CI)": [
                ab.with_ci(m, lo, hi, int(d))
                for m, lo, hi, d in zip(t["Δ (a − b)"], t["CI low"], t["CI high"], t["digits"])
            ],
            "measured": t["measured"],
            "expected": t["expected"],
            "verdict": t["verdict"],
            "evidence": t["evidence"],
            "seeds": t["seeds"],
            "learning rates (a, b)": t["learning rates (a, b)"],
            "the source": t["the source"],
        }
    )


def comparisons_csv(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["digits"], errors="ignore")


def cells_table(runs: Sequence[Trained], ablation: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shown, exact) per piece of evidence and cell: best learning rate, loss there and LR sensitivity, each with
    its 95 % interval, and the runs that diverged or are missing. ``exact`` has every bound as a number."""
    shown, exact = [], []
    for t in runs:
        ev = t.evidence.get(ablation)
        if ev is None:
            continue
        table = ab.headline(ev.summary)
        bad = {c["name"]: sum(g["diverged"] + g["missing"] for g in c["grid"]) for c in ev.summary["cells"]}
        d = ab.headline_display(table)[["cell", "best lr", "loss at best lr (95 % CI)", "LR sensitivity (95 % CI)"]]
        d.insert(0, "evidence", t.label)
        edge = {c["name"]: c.get("best_at_edge") for c in ev.summary["cells"]}
        lo = min(ev.spec.lrs)
        d["best lr"] = [
            f"{lr} (the grid's {'smallest' if float(lr) == lo else 'largest'}: the optimum may lie beyond)"
            if edge.get(c) and lr not in (None, "—")
            else lr
            for c, lr in zip(d["cell"], d["best lr"])
        ]
        d["diverged or missing runs"] = [f"{bad[c]} of {len(ev.spec.lrs) * len(ev.spec.seeds)}" for c in d["cell"]]
        shown.append(d)
        keep = [
            "cell",
            "best lr",
            "loss at best lr",
            "loss CI low",
            "loss CI high",
            "LR sensitivity",
            "LR sensitivity CI low",
            "LR sensitivity CI high",
        ]
        x = table[keep].copy()
        x.insert(0, "evidence", t.label)
        x["diverged or missing runs"] = [bad[c] for c in x["cell"]]
        x["best lr at the grid's edge"] = [bool(edge.get(c)) for c in x["cell"]]
        exact.append(x)
    if not shown:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(shown, ignore_index=True), pd.concat(exact, ignore_index=True)


def device_text(ev: F.Evidence) -> str:
    """Where an ablation ran: the device its spec asked for (or the run recorded) and how its steps ran."""
    device = ev.summary.get("device") or ev.spec.device
    kinds = []
    if "step_kind" in ev.results:
        kinds = [str(k) for k in ev.results["step_kind"].dropna().unique()]
    return str(device) + (f" (steps: {', '.join(kinds)})" if kinds else "")


def recipe_rows(ev: F.Evidence, mode: str) -> dict[str, str]:
    """The exact recipe of one ablation's evidence, field by field (from its spec.json and summary)."""
    s, r = ev.spec, ev.spec.recipe
    cells = len(ev.summary.get("cells", [])) or s.cells_count()
    return {
        "recipe": MODE_LABELS[mode],
        "base": str(ev.summary.get("base") or s.base),
        "components varied": " × ".join(f"{a} = {ab.values_text(v)}" for a, v in s.vary),
        "data": r.data,
        "budget (matched)": f"{r.budget:,.0f} non-embedding {r.budget_metric} parameters"
        if r.budget_metric in ("active", "total")
        else f"{r.budget:,.0f} {r.budget_metric}",
        "tokens per run": f"{r.tokens:,}",
        "batch × sequence length": f"{r.batch} × {r.seq_len}",
        "steps per run": f"{r.steps:,}",
        "target depth (layers)": str(r.layers),
        "peak learning rates": ab.values_text(s.lrs),
        "seeds": ab.values_text(s.seeds),
        "runs": f"{cells} cells × {len(s.lrs)} learning rates × {len(s.seeds)} seeds = "
        f"{cells * len(s.lrs) * len(s.seeds)}",
        "schedule": f"warm-up {r.warmup:g} of the steps, cosine to {r.min_lr_ratio:g} × the peak",
        "optimizer": f"AdamW betas {tuple(r.betas)}, weight decay {r.weight_decay:g}, clipping {r.grad_clip:g}, "
        f"z-loss {r.z_loss:g}",
        "precision": r.precision,
        "device": device_text(ev),
        "run": str(ev.summary.get("run_id") or ""),
    }


def recipe_table(runs: Sequence[Trained], ablation: str) -> pd.DataFrame:
    """The recipe of each piece of evidence of one ablation, one column each (field by field)."""
    cols = {}
    for t in runs:
        if ablation in t.evidence:
            rows = recipe_rows(t.evidence[ablation], t.mode)
            if recipe_changes(t, ablation):
                rows["recipe"] += ", changed (see the note above)"
            cols[t.label] = rows
    if not cols:
        return pd.DataFrame()
    fields = list(next(iter(cols.values())))
    return pd.DataFrame({"field": fields, **{k: [v[f] for f in fields] for k, v in cols.items()}})


def recipe_changes(t: Trained, ablation: str) -> list[str]:
    """How a piece of evidence's recipe differs from the claim's ``t.mode`` recipe (empty: it is that recipe)."""
    ev = t.evidence[ablation]
    want = F.ablation_spec(F.claim(t.claim), ablation, t.mode, ev.spec.device)
    out = []
    got_r, want_r = ev.spec.recipe.as_dict(), want.recipe.as_dict()
    for k in want_r:  # the grid sets each run's learning rate and seed: the base recipe's are not used
        if k not in ("name", "lr", "seed") and got_r.get(k) != want_r[k]:
            out.append(f"{k.replace('_', ' ')} {_value(got_r.get(k))} (the claim's: {_value(want_r[k])})")
    for what, got, exp in (("learning rates", ev.spec.lrs, want.lrs), ("seeds", ev.spec.seeds, want.seeds)):
        if tuple(got) != tuple(exp):
            out.append(f"{what} {ab.values_text(got)} (the claim's: {ab.values_text(exp)})")
    return out


def _value(x) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def chart_title(claim: F.Claim, mode: str, ablation: str, what: str = "loss") -> str:
    """A chart's title (and, on the page, its export name): unique per claim, recipe and ablation."""
    text = "final validation loss against the learning rate" if what == "loss" else what
    return f"{claim.name} / {ablation}, {mode} recipe: {text}"


def uses_stability(claim: F.Claim, ablation: str) -> bool:
    """Whether a comparison of this ablation reads a stability score (the page then draws the score heatmaps)."""
    return any(
        k["ablation"] == ablation and k["metric"] in ("grad_spike_score", "loss_spike_score", "max_attn_logit")
        for k in claim.comparisons
    )


# ----------------------------------------------------------------- re-running a claim


def rerun_params(claim: F.Claim, ablation: str, mode: str) -> dict[str, str]:
    """The Experiments page's query that opens the Ablation mode filled with this ablation of the claim under the
    ``mode`` recipe (device ``auto``), tagged with the claim so that its result lands on the Findings page."""
    spec = F.ablation_spec(claim, ablation, mode, "auto")
    return {**dict(parse_qsl(ab.spec_query(spec))), CLAIM_PARAM: claim.name, ABLATION_PARAM: ablation, MODE_PARAM: mode}


def cli_line(claim: F.Claim, mode: str) -> str:
    """The command that re-trains every ablation of the claim under the ``mode`` recipe."""
    return f"python -m backend findings --claim {claim.name} --device auto" + (" --quick" if mode == "quick" else "")


# ----------------------------------------------------------------- static evidence


@dataclass(frozen=True)
class Static:
    """A claim's exact figures from the catalog: one row per value of the axis it varies."""

    kind: str
    title: str
    table: pd.DataFrame
    caption: str
    chart: tuple  # columns charted (bars), in the table


@lru_cache(maxsize=16)
def static_evidence(claim_name: str) -> Optional[Static]:
    """The claim's static evidence (its ``static`` spec in claims.json), exact, from the catalog config and its
    variants (``arch.variants.make_variant``, ``arch.memory``, the exact counts); None for a claim without one.

    - ``kv_per_token``: per attention kind, cached elements per token in one layer and KV bytes per token over all
      layers (the first token, no window), parameters;
    - ``kv_at_context``: per layer pattern, the layers of each kind, the window, and the KV cache at the context;
    - ``params``: per feed-forward kind, total and active parameters.
    """
    from ..arch import memory
    from ..arch.architecture import resolve
    from ..arch.variants import make_variant

    c = F.claim(claim_name)
    s = c.static
    if not s:
        return None
    axis, dtype = s["axis"], s.get("dtype", "bf16")
    base = resolve(s["base"]).label
    rows = []
    for value in s["values"]:
        v = make_variant(s["base"], {axis: value})
        arch = resolve(s["base"]) if v.is_base else resolve(v.config)
        spec, counts = arch.spec, arch.counts
        row = {axis: value, "the base's own": v.is_base}
        if s["kind"] == "kv_per_token":
            kv = memory.kv_cache(arch, 1, 1, dtype)
            kinds = sorted({layer.attention for layer in spec.layers})
            row |= {
                "layers": spec.num_layers,
                "cached elements per token, one layer": memory.layer_kv_elements_per_token(spec, kinds[0]),
                f"KV bytes per token ({dtype})": int(kv.per_token_bytes),
                "total parameters": counts.total,
            }
        elif s["kind"] == "kv_at_context":
            kv = memory.kv_cache(arch, int(s["context"]), 1, dtype)
            kinds = [layer.attention for layer in spec.layers]
            row |= {
                "layers": spec.num_layers,
                "global layers": sum(k == "full" for k in kinds),
                "sliding layers": sum(k == "sliding" for k in kinds),
                "window": spec.window if any(k == "sliding" for k in kinds) else None,
                f"KV cache at {int(s['context']):,} tokens ({dtype}, bytes)": kv.total_bytes,
                "KV bytes per token at this context": kv.per_token_at_context,
                f"weights ({dtype}, bytes)": memory.weight_bytes(arch, dtype),
            }
        elif s["kind"] == "params":
            row |= {
                "total parameters": counts.total,
                "active parameters": counts.active,
                "active share": counts.active / counts.total,
            }
        else:
            raise ArchLabError(f"claim {c.name}: unknown static kind {s['kind']!r}")
        rows.append(row)
    table = pd.DataFrame(rows)
    first = s["values"][0]
    if s["kind"] == "kv_per_token":
        col = f"KV bytes per token ({dtype})"
        table[f"share of {first}"] = table[col] / table[col].iloc[0]
        return Static(
            s["kind"],
            f"KV cache per token: {', '.join(s['values'])} on {base}",
            table,
            f"Exact, from each variant's config as transformers builds it (arch.memory): cached elements "
            f"per token and layer (MHA, GQA, MQA: KV heads × (key + value width); MLA: the compressed "
            f"latent + the shared RoPE key), times the layers, times {memory.dtype_bytes(dtype):g} bytes "
            f"({dtype}). The variants keep the base's heads, widths and depth.",
            (col,),
        )
    if s["kind"] == "kv_at_context":
        col = [x for x in table.columns if x.startswith("KV cache at")][0]
        ref = table[table[axis] == "global"][col]
        table["share of all global"] = table[col] / (ref.iloc[0] if len(ref) else table[col].iloc[0])
        table["KV ÷ weights"] = table[col] / table[f"weights ({dtype}, bytes)"]
        return Static(
            s["kind"],
            f"KV cache at {int(s['context']):,} tokens: {', '.join(s['values'])} on {base}",
            table,
            f"Exact (arch.memory): a global layer caches every token of the context, a sliding layer at most "
            f"its window; one sequence, {dtype}. The report's Figure 5 (60 % → under 15 % overhead) is for "
            "a 2B model and other ratios, so its percentages are not these.",
            (col,),
        )
    return Static(
        s["kind"],
        f"Parameters: {', '.join(s['values'])} on {base}",
        table,
        "Exact counts of the model transformers builds (meta device): total parameters, and those active "
        "for one token (routed experts × top-k / experts, plus every shared part).",
        ("total parameters", "active parameters"),
    )
