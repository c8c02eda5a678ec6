"""What the Experiments page's Ablation mode shows: the form's values and the spec they make, the preview of the
cells (their changes, config diff and exact sized parameters, refusals, runs and time), the link that pre-fills the
form, and a finished ablation's summary as tables.

Plain data in, plain data out (no Streamlit). The ablation itself is ``backend.train.ablation``: an
:class:`~backend.train.ablation.AblationSpec`, its :func:`~backend.train.ablation.plan` and
:func:`~backend.train.ablation.summarize`. The page leaves out the cells that cannot be built or cannot meet the
budget (:func:`leave_out`) and records the spec and those cells in the run folder (``ablation.json``), so that a
run re-attached from disk is judged the same way; when the run ends the page writes ``summary.json`` beside it
(:func:`summary_of`), as ``python -m backend ablate`` does.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence
from urllib.parse import urlencode

import pandas as pd

from ..arch import variants as variants_mod
from ..arch.architecture import resolve
from ..arch.errors import ArchLabError
from ..train import ablation as abl
from ..train import statistics as st
from ..train.recipe import Recipe
from . import experiments as ex
from .reruns import save_rerun

#: learning-rate grids the form offers: log-spaced, half a decade apart (the default is the CLI's)
LR_PRESETS: tuple[tuple[float, ...], ...] = (
    abl.DEFAULT_LRS,
    (3e-4, 1e-3, 3e-3, 1e-2),
    (1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
    (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1),
    (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1),
)
#: the page refuses an ablation its estimate says would train longer than this on the device (the CLI has no limit)
MAX_HOURS = 24.0
#: the run folder's record of the ablation a page started: its spec and the cells left out
SPEC_FILE = "ablation.json"
SUMMARY_FILE = "summary.json"
#: longest ``spec`` a link may carry (URL-safe base64 characters)
MAX_LINK_CHARS = 64_000


# ----------------------------------------------------------------- the form and the link


def values_text(values: Sequence[Any]) -> str:
    """Values as the form writes them: ``"1e-3, 3e-3"`` style numbers, strings as they are, others as JSON."""
    return ", ".join(f"{v:g}" if isinstance(v, float) else v if isinstance(v, str) else json.dumps(v) for v in values)


@dataclass(frozen=True)
class Form:
    """An ablation spec as the page's form holds it."""

    base: str  # catalog key
    axes: tuple[tuple[str, tuple[str, ...]], ...]  # named axes (``variants.AXES``) and their values
    free: str  # any other field, ``key=v1,v2`` per line
    lrs: str
    seeds: str
    recipe: Recipe
    device: str
    name: str


def form_of(spec: abl.AblationSpec) -> Form:
    """The form's values for ``spec`` (one-line ArchLabError for a base that is no catalog key)."""
    from ..arch import catalog

    if not isinstance(spec.base, str) or spec.base not in catalog.keys():
        raise ArchLabError(
            "the ablation in this link starts from a config object, not a catalog model: run it with "
            "python -m backend ablate --spec"
        )
    axes = tuple((a, tuple(str(v) for v in vals)) for a, vals in spec.vary if a in variants_mod.AXES)
    free = "\n".join(f"{a}={values_text(vals)}" for a, vals in spec.vary if a not in variants_mod.AXES)
    return Form(
        spec.base, axes, free, values_text(spec.lrs), values_text(spec.seeds), spec.recipe, spec.device, spec.name
    )


def build_spec(
    base: str,
    axes: Sequence[tuple[str, Sequence[str]]],
    free: str,
    lrs: str,
    seeds: str,
    recipe: Recipe,
    device: str,
    name: str = "",
) -> tuple[Optional[abl.AblationSpec], list[str]]:
    """The spec the form describes, or None and one line per problem (an unknown axis or value, a malformed
    learning rate or seed, a grid over ``ablation.MAX_RUNS``)."""
    errors, vary = [], []
    lines = [f"{a}={','.join(v)}" for a, v in axes if v] + [x.strip() for x in free.splitlines() if x.strip()]
    missing = [a for a, v in axes if not v]
    errors += [f"{a}: choose at least one value" for a in missing]
    for line in lines:
        try:
            vary.append(variants_mod.parse_vary(line, base))
        except ArchLabError as e:
            errors.append(str(e))
    parsed = {}
    for what, text, kind in (("learning rates", lrs, float), ("seeds", seeds, int)):
        try:
            parsed[what] = abl.parse_list(text, kind, what)
        except ArchLabError as e:
            errors.append(str(e))
    if not vary and not errors:
        errors.append("choose a component to vary (an axis and its values, or a key=v1,v2 line)")
    if errors:
        return None, errors
    try:
        return abl.AblationSpec(
            base, tuple(vary), parsed["learning rates"], parsed["seeds"], recipe, device, name
        ).validate(), []
    except ArchLabError as e:
        return None, [str(e)]


def encode_spec(spec: abl.AblationSpec) -> str:
    """URL-safe base64 (no padding) of the spec's JSON: the ``spec`` value of an Ablation link."""
    raw = json.dumps(json.loads(spec.to_json()), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_spec(text: str) -> abl.AblationSpec:
    """The spec an Ablation link carries; one-line ArchLabError for anything else."""
    text = str(text).strip()
    if not text or len(text) > MAX_LINK_CHARS:
        raise ArchLabError("the ablation in this link is empty or too long")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise ArchLabError("the ablation in this link is not URL-safe base64 of an ablation spec") from None
    return abl.AblationSpec.from_json(raw)


def spec_query(spec: abl.AblationSpec) -> str:
    """The query of the Experiments page that opens the Ablation mode with every field of ``spec`` filled:
    ``mode=ablation&spec=<encode_spec(spec)>`` (e.g. the Findings page's "re-run" link: ``/experiments?`` + this)."""
    return urlencode({"mode": "ablation", "spec": encode_spec(spec)})


# ----------------------------------------------------------------- the preview


def _fmt(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "…"


def config_diff(base: dict, variant: Optional[dict]) -> str:
    """The fields a variant's config sets differently from its base's (patches included), one ``; `` apart."""
    if variant is None:
        return ""
    missing = object()
    out = []
    for k in sorted((set(base) | set(variant)) - {"_name_or_path"}):
        a, b = base.get(k, missing), variant.get(k, missing)
        if a == b:
            continue
        if k == variants_mod.PATCH_FIELD:
            added = [p for p in (b if b is not missing else []) if a is missing or p not in a]
            out.append("patches + " + ", ".join(added))
        else:
            out.append(f"{k}: {'(none)' if a is missing else _fmt(a)} → {'(none)' if b is missing else _fmt(b)}")
    return "; ".join(out)


@dataclass(frozen=True)
class Preview:
    """What the page shows before training: one row per cell, the cells left out and why, the runs and the time."""

    cells: pd.DataFrame
    left_out: list[tuple[str, str]]  # (cell, one-line reason): cannot be built or cannot meet the budget
    runs: int
    estimate: dict  # ``ablation.estimate`` of the cells that train
    problem: str  # "" or why this ablation is not offered for training (one line)
    quick_look: str  # "" or what fewer than 3 seeds means


def _device_kind(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return "cuda" if str(device).startswith("cuda") or torch.cuda.is_available() else "cpu"


def duration(seconds: float) -> str:
    """``about 3 h 5 min`` style."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"about {max(1, round(s))} s"
    if s < 3600:
        return f"about {round(s / 60)} min"
    h, m = divmod(round(s / 60), 60)
    return f"about {h} h" + (f" {m} min" if m and h < 10 else "")


def sized(p: abl.Plan) -> list:
    """Every model of the plan sized as its run will size it (``Plan.sizer`` with the recipe's shape): Sized, or
    the one-line ArchLabError of a variant that cannot meet the budget. ArchLabError when the base cannot."""
    r = p.spec.recipe
    return p.sizer()(r.budget, r.budget_metric, **ex.sizing_args(r))


def leave_out(p: abl.Plan, reasons: dict[str, str]) -> abl.Plan:
    """``p`` without the cells named in ``reasons`` (their runs dropped; listed with their reason among the refused
    cells). The models stay, so every remaining variant is sized exactly as the preview showed. When the reference
    cell is left out the first remaining cell becomes the reference (noted)."""
    if not reasons:
        return p
    cells = [c for c in p.cells if c.name not in reasons]
    if not cells:
        raise ArchLabError(
            "no cell of this ablation can train: " + "; ".join(f"{n}: {why}" for n, why in reasons.items())[:400]
        )
    if not any(c.is_reference for c in cells):
        cells[0] = replace(
            cells[0], is_reference=True, notes=cells[0].notes + ("reference cell (the base's cell cannot train)",)
        )
    keys = {abl.run_key(c.name, lr, s) for c in cells for lr in p.spec.lrs for s in p.spec.seeds}
    run = replace(p.run, members=tuple(m for m in p.run.members if m["key"] in keys)).validate()
    refused = list(p.refused) + [(n, why) for n, why in reasons.items() if n not in dict(p.refused)]
    return replace(p, cells=cells, refused=refused, run=run)


def prepare(spec: abl.AblationSpec) -> tuple[abl.Plan, Preview]:
    """The plan that trains (cells that cannot be sized left out) and its preview. One-line ArchLabError when
    nothing can be built or the base cannot meet the budget."""
    p = abl.plan(spec)
    sizes = sized(p)
    base = resolve(spec.base).as_dict()
    reasons = {c.name: str(sizes[c.model]) for c in p.cells if isinstance(sizes[c.model], ArchLabError)}
    kept = leave_out(p, reasons)
    r = spec.recipe
    rows = []
    for c in kept.cells:
        s = sizes[c.model]
        rows.append(
            {
                "cell": c.name,
                "reference": c.is_reference,
                "config diff against the base": config_diff(base, c.config) or "(the base's own config)",
                **ex.sized_columns(s, r),
                "notes": "; ".join(list(c.notes) + list(s.notes)),
            }
        )
    cells = pd.DataFrame(rows).dropna(axis=1, how="all")
    device = _device_kind(spec.device)
    est = abl.estimate(kept, sizes, device)
    problem = ""
    if est["seconds"] > MAX_HOURS * 3600:
        problem = (
            f"this ablation would train for {duration(est['seconds'])} on the {device.upper()} "
            f"({est['basis']}); the page trains at most {MAX_HOURS:g} h: use fewer cells, learning rates, "
            "seeds or tokens, or a GPU"
        )
    n = len(spec.seeds)
    quick = (
        ""
        if n >= 3
        else (
            f"Quick look: {n} seed(s). "
            + ("One seed gives no interval." if n < 2 else "Intervals over 2 seeds are wide.")
            + f" A verdict needs {st.MIN_SEEDS} seeds."
        )
    )
    return kept, Preview(cells, list(kept.refused), kept.runs, est, problem, quick)


# ----------------------------------------------------------------- the run folder


def record(folder: Path, p: abl.Plan, finding: Optional[dict] = None) -> None:
    """``ablation.json`` in the run folder: the spec and the cells left out, so the run can be judged from disk, and
    the claim of the Findings page it re-runs (``finding``: claim, ablation, mode; see ``reruns.finding_tag``)."""
    from ..train.store import RunWriter

    RunWriter(folder).write_json(
        SPEC_FILE,
        {
            "spec": json.loads(p.spec.to_json()),
            "left_out": [[n, why] for n, why in p.refused],
            **({"finding": dict(finding)} if finding else {}),
        },
    )


def finding_of(folder: Path) -> Optional[dict]:
    """The claim an ablation's run folder re-runs (``{"claim", "ablation", "mode"}``), or None."""
    path = Path(folder) / SPEC_FILE
    try:
        found = json.loads(path.read_text()).get("finding") if path.is_file() else None
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, dict) and {"claim", "ablation", "mode"} <= set(found) else None


def spec_of(folder: Path) -> Optional[tuple[abl.AblationSpec, dict[str, str]]]:
    """The ablation a run folder holds (its spec and the cells left out, with their reasons), or None for a run
    that is no ablation. Read from ``ablation.json`` (the page's), else ``summary.json`` (the CLI's)."""
    for name in (SPEC_FILE, SUMMARY_FILE):
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            d = json.loads(path.read_text())
            spec = abl.AblationSpec.from_json(json.dumps(d["spec"]))
        except (ValueError, KeyError, TypeError, ArchLabError):
            continue
        left = d.get("left_out") if name == SPEC_FILE else [[x["cell"], x["reason"]] for x in d.get("refused", [])]
        return spec, {str(n): str(why) for n, why in left or []}
    return None


def summary_of(
    folder: Path, results: Optional[Sequence[dict] | pd.DataFrame] = None, finished: bool = True
) -> Optional[dict]:
    """The summary of the ablation in ``folder``: ``summary.json`` when there is one, else computed from the run's
    final rows (``results``, or the folder's ``results.csv``) and, once the run has ended (``finished``), written
    there. None for a folder that holds no ablation or no final row yet."""
    folder = Path(folder)
    path = folder / SUMMARY_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass
    found = spec_of(folder)
    if found is None:
        return None
    if results is None:
        csv = folder / "results.csv"
        results = pd.read_csv(csv) if csv.is_file() and csv.stat().st_size else pd.DataFrame()
    rows = results.to_dict("records") if isinstance(results, pd.DataFrame) else list(results)
    if not rows:
        return None
    spec, left = found
    p = abl.plan(spec)
    p = leave_out(p, {n: why for n, why in left.items() if n not in dict(p.refused)})
    summary = abl.summarize(p, rows)
    if finished:
        abl.write_summary(folder, summary)
        finding = finding_of(folder)
        if finding is not None:  # started for a claim: its evidence goes where the Findings page looks
            save_rerun(folder, summary, rows, finding)
    return summary


# ----------------------------------------------------------------- results as tables


def _iv(d: Optional[dict], key: str) -> Optional[float]:
    v = (d or {}).get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def headline(summary: dict) -> pd.DataFrame:
    """One row per cell: best learning rate, the loss there with its 95 % interval over seeds, LR sensitivity with
    its interval, the paired difference against the reference cell with its interval and verdict (exact numbers)."""
    comp = {c["cell"]: c for c in summary["comparisons"]}
    rows = []
    for c in summary["cells"]:
        k = comp.get(c["name"], {})
        d, ds = k.get("loss_difference"), k.get("lr_sensitivity_difference")
        rows.append(
            {
                "cell": c["name"],
                "reference": c["reference"],
                "best lr": c["best_lr"],
                "loss at best lr": _iv(c["best"], "mean"),
                "loss CI low": _iv(c["best"], "low"),
                "loss CI high": _iv(c["best"], "high"),
                "seeds": (c["best"] or {}).get("n", 0),
                "LR sensitivity": _iv(c["lr_sensitivity"], "mean"),
                "LR sensitivity CI low": _iv(c["lr_sensitivity"], "low"),
                "LR sensitivity CI high": _iv(c["lr_sensitivity"], "high"),
                "Δ loss vs reference": _iv(d, "mean"),
                "Δ CI low": _iv(d, "low"),
                "Δ CI high": _iv(d, "high"),
                "verdict": "reference" if c["reference"] else k.get("verdict", ""),
                "Δ LR sensitivity": _iv(ds, "mean"),
                "Δ sensitivity CI low": _iv(ds, "low"),
                "Δ sensitivity CI high": _iv(ds, "high"),
                "sensitivity verdict": "reference" if c["reference"] else k.get("lr_sensitivity_verdict", ""),
                "notes": "; ".join(c.get("notes") or []),
            }
        )
    return pd.DataFrame(rows)


def with_ci(mean, low, high, digits: int = 4) -> str:
    """``mean [low, high]`` with ``digits`` decimals (``—`` without a mean, ``(no interval)`` without bounds)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if low is None or high is None or any(isinstance(x, float) and math.isnan(x) for x in (low, high)):
        return f"{mean:.{digits}f} (no interval)"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def headline_display(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`headline` as the page shows it: each value with its interval in one column."""
    t = table.astype(object).where(table.notna(), None)
    return pd.DataFrame(
        {
            "cell": t["cell"],
            "best lr": [f"{x:g}" if x else "—" for x in t["best lr"]],
            "loss at best lr (95 % CI)": [
                with_ci(*r) for r in zip(t["loss at best lr"], t["loss CI low"], t["loss CI high"])
            ],
            "LR sensitivity (95 % CI)": [
                with_ci(*r) for r in zip(t["LR sensitivity"], t["LR sensitivity CI low"], t["LR sensitivity CI high"])
            ],
            "Δ loss vs reference (95 % CI)": [
                "reference" if ref else with_ci(*r)
                for ref, *r in zip(t["reference"], t["Δ loss vs reference"], t["Δ CI low"], t["Δ CI high"])
            ],
            "verdict": t["verdict"],
            "Δ LR sensitivity (95 % CI)": [
                "reference" if ref else with_ci(*r)
                for ref, *r in zip(
                    t["reference"], t["Δ LR sensitivity"], t["Δ sensitivity CI low"], t["Δ sensitivity CI high"]
                )
            ],
            "sensitivity verdict": t["sensitivity verdict"],
            "notes": t["notes"],
        }
    )


def grid_table(summary: dict) -> pd.DataFrame:
    """One row per cell and learning rate: the seeds' losses, their mean and interval, runs diverged or missing,
    spike scores and the largest attention logit (means over seeds)."""
    rows = []
    for c in summary["cells"]:
        for g in c["grid"]:
            iv = g["interval"]
            rows.append(
                {
                    "cell": c["name"],
                    "lr": g["lr"],
                    "best": g["lr"] == c["best_lr"],
                    "mean loss": _iv(iv, "mean"),
                    "CI low": _iv(iv, "low"),
                    "CI high": _iv(iv, "high"),
                    "seeds' losses": ", ".join("diverged/missing" if x is None else f"{x:.4f}" for x in g["losses"]),
                    "diverged": g["diverged"],
                    "missing": g["missing"],
                    "loss spike score": g.get("loss_spike_score"),
                    "grad spike score": g.get("grad_spike_score"),
                    "max attention logit": g.get("max_attn_logit"),
                }
            )
    return pd.DataFrame(rows)


def seed_hashes(models: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the runs and whether every one of them (every cell, every learning rate) consumed the same batch
    stream (equal SHA-256 of the batches)."""
    if models.empty or "stream_sha256" not in models:
        return pd.DataFrame()
    m = models[models["stream_sha256"].astype(str) != ""].copy()
    m["seed"] = [parse_key(k)[2] if parse_key(k) else None for k in m["key"]]
    m = m[m["seed"].notna()]
    if m.empty:
        return pd.DataFrame()
    rows = []
    for seed, g in m.groupby("seed"):
        full = g[g["batches"] == g["batches"].max()]
        rows.append(
            {
                "seed": int(seed),
                "runs": len(g),
                "batches consumed": int(g["batches"].max()),
                "distinct batch streams": int(full["stream_sha256"].nunique()),
                "same batches for every cell and learning rate": bool(full["stream_sha256"].nunique() == 1),
                "SHA-256": full["stream_sha256"].iloc[0],
            }
        )
    return pd.DataFrame(rows)


# ----------------------------------------------------------------- runs and their styles


def parse_key(key: str) -> Optional[tuple[str, float, int]]:
    """(cell, learning rate, seed) of a run key (``ablation.run_key``), or None for another key."""
    parts = str(key).rsplit(" · ", 2)
    if len(parts) != 3 or not parts[1].startswith("lr ") or not parts[2].startswith("seed "):
        return None
    try:
        return parts[0], float(parts[1][3:]), int(parts[2][5:])
    except ValueError:
        return None


DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")


def shade(color: str, amount: float) -> str:
    """``color`` (#rrggbb) mixed with white by ``amount`` (0: unchanged)."""
    if amount <= 0:
        return color
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "#" + "".join(f"{round(x + (255 - x) * amount):02x}" for x in (r, g, b))


@dataclass(frozen=True)
class Styles:
    """How a run's curves look: one colour per cell (lighter for later seeds), one dash per learning rate, one
    legend entry per cell."""

    colors: dict  # run key -> colour
    dashes: dict  # run key -> dash
    groups: dict  # run key -> its cell (the legend entry)
    cells: dict  # cell -> colour
    lr_dashes: dict  # learning rate -> dash

    def legend(self) -> str:
        """What the dashes mean, e.g. ``solid: lr 0.001, dash: lr 0.01``."""
        return ", ".join(f"{d}: lr {lr:g}" for lr, d in self.lr_dashes.items())


def run_styles(keys: Sequence[str]) -> Styles:
    """Styles of an ablation's runs, from their keys."""
    from .colors import PALETTE

    parsed = {k: parse_key(k) for k in keys}
    cells = list(dict.fromkeys(p[0] for p in parsed.values() if p))
    lrs = sorted({p[1] for p in parsed.values() if p})
    seeds = sorted({p[2] for p in parsed.values() if p})
    cell_color = {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(cells)}
    lr_dash = {lr: DASHES[i % len(DASHES)] for i, lr in enumerate(lrs)}
    colors, dashes, groups = {}, {}, {}
    for k, p in parsed.items():
        if p is None:
            colors[k], dashes[k], groups[k] = "#444444", "solid", k
            continue
        light = 0.45 * seeds.index(p[2]) / (len(seeds) - 1) if len(seeds) > 1 else 0.0
        colors[k], dashes[k], groups[k] = shade(cell_color[p[0]], light), lr_dash[p[1]], p[0]
    return Styles(colors, dashes, groups, cell_color, lr_dash)


def shared_table(table: pd.DataFrame, spec: abl.AblationSpec) -> pd.DataFrame:
    """The run's shared-recipe table (``experiments.recipe_table``) with what an ablation sets per run said so: the
    seeds and learning rates of the grid (the recorded values are the base recipe's) and the recipe fields varied."""
    r = spec.recipe
    per_run = {
        "seed": f"per run: {values_text(spec.seeds)} (each seed: the same batches for every cell)",
        "batch order": "batch i drawn from (the run's seed, i): the same for every cell and learning rate",
        "schedule": f"linear warm-up over {r.warmup:g} of the steps, then cosine to {r.min_lr_ratio:g} × the peak at "
        f"step {r.steps}; peak learning rate per run: {values_text(spec.lrs)}",
    }
    out = table.copy()
    key = out.columns[0]
    for name, text in per_run.items():
        out.loc[out[key] == name, out.columns[1]] = text
    varied = [(a, v) for a, v in spec.vary if variants_mod.axis_role(a) == "recipe"]
    extra = pd.DataFrame(
        [{key: f"{a.replace('_', ' ')} (varied)", out.columns[1]: values_text(v)} for a, v in varied],
        columns=out.columns,
    )
    return pd.concat([out, extra], ignore_index=True) if varied else out


def axes_table() -> pd.DataFrame:
    """Every axis the form offers: its values, meaning, and how a variant applies it."""
    return pd.DataFrame(variants_mod.describe_axes())
