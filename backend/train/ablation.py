"""Ablations: one base architecture, named components changed, trained over a learning-rate grid and seeds.

An :class:`AblationSpec` is data (JSON round trip): the base (a catalog key or a config), the axes varied
(``arch.variants``: architecture components, or per-run recipe fields such as warm-up and weight decay), the
learning rates, the seeds and the recipe everything else shares. :func:`plan` turns it into the cells of the
full factorial (each a variant, sized together with the base to one matched budget by
``budget.size_variants``) and one training run whose runs are cells × learning rates × seeds: the same seed
gives every cell the same batches and its own initialisation, and the runs of one cell train as one stack
(``sweep.py``). :func:`summarize` reads the finished run back and judges it (``statistics.py``): per cell and
learning rate the seeds' final losses with an interval, the best learning rate, LR sensitivity, spike scores and
the largest attention logits, and, for every cell against the reference cell (the base), the paired difference
over seeds at each one's best learning rate, with its 95 % interval and a verdict read off the interval.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..arch import variants as variants_mod
from ..arch.architecture import resolve
from ..arch.errors import ArchLabError
from . import statistics as st
from .recipe import PER_RUN, Recipe, RunSpec

#: per-run recipe fields an ablation may vary besides the learning rate (the grid) and the seed
RECIPE_AXES = tuple(f for f in PER_RUN if f not in ("lr", "seed"))
MAX_RUNS = 512
DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_SEEDS = (0, 1, 2)


@dataclass(frozen=True)
class AblationSpec:
    """What an ablation trains (see the module docstring)."""

    base: Any  # catalog key or config dict
    vary: tuple = ()  # ((axis, (value, ...)), ...)
    lrs: tuple = DEFAULT_LRS
    seeds: tuple = DEFAULT_SEEDS
    recipe: Recipe = field(default_factory=Recipe)
    device: str = "auto"
    name: str = ""

    def validate(self) -> "AblationSpec":
        if not isinstance(self.base, (str, dict)):
            raise ArchLabError("the base is a catalog key or a config object")
        if not self.vary:
            raise ArchLabError("an ablation varies at least one component (--vary axis=v1,v2)")
        lrs = list(self.lrs)
        if not lrs or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x <= 1 for x in lrs):
            raise ArchLabError(f"learning rates must be numbers in (0, 1], got {self.lrs!r}")
        if len(set(lrs)) != len(lrs):
            raise ArchLabError("the learning-rate grid repeats a value")
        seeds = list(self.seeds)
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in seeds):
            raise ArchLabError(f"seeds must be integers from 0 to 2**31 - 1, got {self.seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ArchLabError("the seeds repeat a value")
        for axis, values in self.vary:
            if variants_mod.axis_role(axis) == "recipe" and axis not in RECIPE_AXES:
                raise ArchLabError(
                    f"{axis} cannot vary inside one ablation (its runs share batches and shapes); "
                    f"per-run recipe fields are {', '.join(RECIPE_AXES)}, and the learning rate is "
                    "the grid (--lrs)"
                )
            if not values:
                raise ArchLabError(f"{axis} has no values")
            if len(set(map(str, values))) != len(values):
                raise ArchLabError(f"{axis} repeats a value")
        if len({a for a, _ in self.vary}) != len(self.vary):
            raise ArchLabError("an axis is varied twice (two --vary flags make a factorial of two axes)")
        self.recipe.validate()
        runs = self.cells_count() * len(lrs) * len(seeds)
        if runs > MAX_RUNS:
            raise ArchLabError(
                f"this grid trains {runs} runs; an ablation trains at most {MAX_RUNS} "
                "(fewer values, learning rates or seeds)"
            )
        return self

    def cells_count(self) -> int:
        return int(np.prod([len(v) for _, v in self.vary])) if self.vary else 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "base": self.base,
                "vary": [[a, list(v)] for a, v in self.vary],
                "lrs": list(self.lrs),
                "seeds": list(self.seeds),
                "recipe": self.recipe.as_dict(),
                "device": self.device,
                "name": self.name,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "AblationSpec":
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise ArchLabError(f"ablation spec is not valid JSON: {str(e)[:200]}") from None
        if not isinstance(d, dict) or "base" not in d or "vary" not in d:
            raise ArchLabError(
                'an ablation spec is a JSON object with "base" and "vary" (and optionally "lrs", '
                '"seeds", "recipe", "device", "name")'
            )
        unknown = sorted(set(d) - {"base", "vary", "lrs", "seeds", "recipe", "device", "name"})
        if unknown:
            raise ArchLabError(f"unknown ablation-spec field(s): {', '.join(unknown)}")
        vary = d["vary"]
        if not isinstance(vary, list) or not all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[1], list) for x in vary
        ):
            raise ArchLabError('"vary" is a list of [axis, [values...]]')
        return cls(
            d["base"],
            tuple((str(a), tuple(v)) for a, v in vary),
            tuple(d.get("lrs") or DEFAULT_LRS),
            tuple(d.get("seeds") or DEFAULT_SEEDS),
            Recipe.from_dict(d.get("recipe") or {}),
            d.get("device", "auto"),
            str(d.get("name") or ""),
        ).validate()


def parse_list(text: str, kind=float, what: str = "values") -> tuple:
    """``"1e-3,1e-2"`` -> (0.001, 0.01); one-line ArchLabError otherwise."""
    try:
        out = tuple(kind(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ArchLabError(
            f"{what} must be comma-separated {'integers' if kind is int else 'numbers'}, got {text!r}"
        ) from None
    if not out:
        raise ArchLabError(f"{what}: none given")
    return out


@dataclass(frozen=True)
class Cell:
    """One cell of the factorial: a variant (its config) and the per-run recipe values it sets."""

    name: str  # e.g. "qk_norm=off, norm=pre"
    changes: tuple  # ((axis, value), ...) over every varied axis
    config: Optional[dict]  # the variant's config (None when only recipe fields vary and it is the base)
    model: int  # index into the run's models
    recipe: dict  # per-run recipe overrides of this cell
    is_reference: bool = False
    notes: tuple = ()


@dataclass(frozen=True)
class Plan:
    """An ablation made concrete: its cells and the run that trains them."""

    spec: AblationSpec
    cells: list[Cell]
    refused: list[tuple[str, str]]  # (cell name, one-line reason) of cells that cannot be built
    run: RunSpec
    base_label: str
    variant_objects: list  # the arch Variants (for sizing), in model order

    @property
    def runs(self) -> int:
        return len(self.run.members)

    def sizer(self):
        """The run's sizer: every variant sized together with the base (``budget.size_variants``)."""
        from .budget import size_variants

        def size(target, metric, **shape):
            return size_variants(self.spec.base, self.variant_objects, target, metric, **shape)

        return size


def run_key(cell: str, lr: float, seed: int) -> str:
    return f"{cell} · lr {lr:g} · seed {seed}"


def plan(spec: AblationSpec) -> Plan:
    """The cells of ``spec`` and the run that trains them; one-line ArchLabError when nothing can be built."""
    spec = spec.validate()
    base = resolve(spec.base)
    arch_axes = [(a, v) for a, v in spec.vary if variants_mod.axis_role(a) == "architecture"]
    recipe_axes = [
        (a, tuple(variants_mod.parse_value(a, x) for x in v))
        for a, v in spec.vary
        if variants_mod.axis_role(a) == "recipe"
    ]
    if arch_axes:
        built = variants_mod.variants(base, arch_axes)
        combos = list(
            itertools.product(
                *[vals for _, vals in [(a, [variants_mod.parse_value(a, x, base) for x in v]) for a, v in arch_axes]]
            )
        )
    else:
        built = [variants_mod.make_variant(base, {})]
        combos = [()]
    models, objects, refused = [], [], []
    arch_cells = []
    for combo, v in zip(combos, built):
        changes = tuple(zip([a for a, _ in arch_axes], combo))
        label = ", ".join(f"{a}={_text(x)}" for a, x in changes) or "base"
        if isinstance(v, ArchLabError):
            refused.append((label, str(v)))
            continue
        arch_cells.append((label, changes, v, len(models)))
        models.append(v.config)
        objects.append(v)
    if not models:
        raise ArchLabError(
            "no variant of this ablation can be built: " + "; ".join(f"{n}: {e}" for n, e in refused)[:400]
        )
    recipe_combos = list(itertools.product(*[vals for _, vals in recipe_axes])) or [()]
    cells = []
    for (label, changes, v, model), rc in itertools.product(arch_cells, recipe_combos):
        over = {a: x for (a, _), x in zip(recipe_axes, rc)}
        rname = ", ".join(f"{a}={_text(x)}" for a, x in over.items())
        name = ", ".join(x for x in (label if arch_axes else "", rname) if x) or "base"
        reference = getattr(v, "is_base", False) and all(
            math.isclose(float(getattr(spec.recipe, a)), float(x)) for a, x in over.items()
        )
        cells.append(Cell(name, changes + tuple(over.items()), v.config, model, over, reference, tuple(v.notes)))
    if not any(c.is_reference for c in cells):  # the base is not among the values: the first cell is the reference
        cells[0] = replace(
            cells[0],
            is_reference=True,
            notes=cells[0].notes + ("reference cell (the base's own values are not in the grid)",),
        )
    members = tuple(
        {"model": c.model, "key": run_key(c.name, lr, seed), "recipe": {"lr": lr, "seed": seed, **c.recipe}}
        for c in cells
        for lr in spec.lrs
        for seed in spec.seeds
    )
    run = RunSpec(tuple(models), spec.recipe, spec.device, members).validate()
    return Plan(spec, cells, refused, run, base.label, objects)


def _text(x: Any) -> str:
    return x if isinstance(x, str) else json.dumps(x)


# ----------------------------------------------------------------- judging a finished run


def summarize(plan_: Plan, results: Sequence[dict], metrics: Optional[Sequence[dict]] = None) -> dict:
    """The ablation's summary (see the module docstring) from the run's final rows (``results.csv``)."""
    spec = plan_.spec
    by_key = {r["model"]: r for r in results}
    init = [r.get("init_loss") for r in results if _finite(r.get("init_loss"))]
    seeds = list(spec.seeds)
    cells_out, ref = [], None
    for cell in plan_.cells:
        grid = []
        per_seed = {s: [] for s in seeds}  # seed -> loss per lr (None: missing or diverged)
        for lr in spec.lrs:
            rows = [by_key.get(run_key(cell.name, lr, s)) for s in seeds]
            losses = [_loss(r) for r in rows]
            for s, x in zip(seeds, losses):
                per_seed[s].append(x)
            iv = st.interval([x for x in losses if x is not None])
            grid.append(
                {
                    "lr": lr,
                    "losses": losses,
                    "interval": iv.as_dict(),
                    "diverged": sum(1 for r in rows if r is not None and _truthy(r.get("diverged"))),
                    "missing": sum(1 for r in rows if r is None or r.get("status") in ("failed", "stopped")),
                    "grad_spike_score": _mean([r.get("grad_spike_score") for r in rows if r]),
                    "loss_spike_score": _mean([r.get("loss_spike_score") for r in rows if r]),
                    "max_attn_logit": _mean([r.get("max_attn_logit") for r in rows if r]),
                }
            )
        ok = [g for g in grid if g["diverged"] == 0 and g["missing"] == 0 and _finite(g["interval"]["mean"])]
        best = min(ok, key=lambda g: g["interval"]["mean"]) if ok else None
        sens = []
        for s in seeds:
            rows = [by_key.get(run_key(cell.name, lr, s)) for lr in spec.lrs]
            if any(r is None or r.get("status") in ("failed", "stopped") for r in rows):
                continue  # a missing run is no divergence: this seed's curve is incomplete
            i0 = _mean([r.get("init_loss") for r in rows])
            if _finite(i0):
                sens.append(st.lr_sensitivity(per_seed[s], i0))
        out = {
            "name": cell.name,
            "changes": [[a, x] for a, x in cell.changes],
            "reference": cell.is_reference,
            "notes": list(cell.notes),
            "grid": grid,
            "best_lr": best["lr"] if best else None,
            "best_at_edge": bool(best) and len(spec.lrs) > 1 and best["lr"] in (min(spec.lrs), max(spec.lrs)),
            "best": best["interval"] if best else None,
            "lr_sensitivity": st.interval(sens).as_dict(),
            "lr_sensitivity_per_seed": sens,
            "best_losses": [per_seed[s][list(spec.lrs).index(best["lr"])] for s in seeds] if best else None,
        }
        cells_out.append(out)
        if cell.is_reference:
            ref = out
    comparisons = []
    for c in cells_out:
        if c is ref:
            continue
        row = {"cell": c["name"], "reference": ref["name"] if ref else None}
        if ref and c["best_losses"] is not None and ref["best_losses"] is not None:
            d = st.paired_difference(c["best_losses"], ref["best_losses"])
            row.update(
                {
                    "loss_difference": d.as_dict(),
                    "verdict": st.verdict(d),
                    "best_lr": c["best_lr"],
                    "reference_best_lr": ref["best_lr"],
                }
            )
        else:
            row.update({"loss_difference": None, "verdict": "no verdict (no learning rate without divergence)"})
        if (
            ref
            and c["lr_sensitivity_per_seed"]
            and ref["lr_sensitivity_per_seed"]
            and len(c["lr_sensitivity_per_seed"]) == len(ref["lr_sensitivity_per_seed"])
        ):
            ds = st.paired_difference(c["lr_sensitivity_per_seed"], ref["lr_sensitivity_per_seed"])
            row.update({"lr_sensitivity_difference": ds.as_dict(), "lr_sensitivity_verdict": st.verdict(ds)})
        comparisons.append(row)
    quick = len(seeds) < 3
    return {
        "name": spec.name,
        "base": plan_.base_label,
        "spec": json.loads(spec.to_json()),
        "seeds": seeds,
        "lrs": list(spec.lrs),
        "quick_look": quick,
        "note": (
            f"quick look: {len(seeds)} seed(s); "
            + ("no interval with one seed" if len(seeds) < 2 else "intervals over 2 seeds")
            + f"; a verdict needs {st.MIN_SEEDS} seeds"
        )
        if quick
        else "",
        "confidence": st.CONFIDENCE,
        "initial_loss": _mean(init),
        "refused": [{"cell": n, "reason": e} for n, e in plan_.refused],
        "cells": cells_out,
        "comparisons": comparisons,
    }


def _loss(row: Optional[dict]) -> Optional[float]:
    """A run's final loss for the grid: None when missing, failed, stopped or diverged."""
    if row is None or row.get("status") not in ("finished",) or _truthy(row.get("diverged")):
        return None
    v = row.get("val_loss")
    return float(v) if _finite(v) else None


def _finite(x) -> bool:
    try:
        return x is not None and x != "" and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def _truthy(x) -> bool:
    return x is True or str(x).lower() == "true"


def _mean(xs) -> Optional[float]:
    v = [float(x) for x in xs if _finite(x)]
    return float(np.mean(v)) if v else None


def write_summary(folder: Path, summary: dict) -> Path:
    """``summary.json`` in the run folder (atomically)."""
    from .store import RunWriter

    RunWriter(folder).write_json("summary.json", summary)
    return folder / "summary.json"


#: training FLOP/s a stack of miniatures reaches, by device kind, for the estimate before an ablation starts:
#: measured with bench/train.py --sweep (docs/performance.md): an H100 (bf16, CUDA graphs, 15 runs of 1 M
#: parameters, batch 64 × 256) and this 2-core CPU (fp32, tiny preset)
RATES = {"cuda": 17e12, "cpu": 3e9}


def estimate(plan_: Plan, sized: Sequence, device: str) -> dict:
    """How long the ablation would train on ``device`` (``cuda`` or ``cpu``): training FLOPs of every run (6 ×
    parameters + attention, ``budget.flops_per_token``) over the measured rate of stacked miniatures there. An
    estimate for deciding before starting, not a promise."""
    from .budget import flops_per_token

    r = plan_.spec.recipe
    per_model = [
        flops_per_token(s.arch, r.seq_len) if s is not None and not isinstance(s, Exception) else 0.0 for s in sized
    ]
    total = sum(per_model[m["model"]] * r.tokens for m in plan_.run.members)
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    seconds = total / RATES[kind]
    return {
        "flops": total,
        "seconds": seconds,
        "device": kind,
        "rate": RATES[kind],
        "basis": f"{total:.3g} training FLOPs at ~{RATES[kind]:.2g} FLOP/s, the rate of stacked miniatures "
        f"measured on {'an H100' if kind == 'cuda' else 'a 2-core CPU'} (bench/train.py --sweep)",
    }
