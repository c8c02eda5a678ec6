"""``python -m backend ablate``: an ablation from the command line (the same run folder as the Experiments page).

    python -m backend ablate --base olmo2-7b --vary qk_norm=off,on --vary norm=pre,post \\
        --lrs 1e-3,1e-2,1e-1 --seeds 0,1,2 --data corpus --budget 1M --tokens 10M --device auto --runs-dir runs
    python -m backend ablate --spec ablation.json          # an ablation spec written by --save-spec
    python -m backend ablate --base olmo2-7b --vary qk_norm=off,on --preset tiny --dry-run   # cells and estimate

Two ``--vary`` flags make a full factorial. ``--data`` is corpus, mqar, distance or a UTF-8 .txt file. The run
folder gets ``summary.json`` (per cell and learning rate: the seeds' losses, mean and interval; LR sensitivity;
the paired differences against the base and their verdicts), besides the usual metrics and checkpoints.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..arch import variants as variants_mod
from ..arch.errors import ArchLabError
from . import statistics as st
from .ablation import AblationSpec, parse_list, plan, summarize, write_summary
from .recipe import PRESETS


def add_parser(sub) -> None:
    t = sub.add_parser("ablate", help="change one component of an architecture over learning rates and seeds")
    t.add_argument("--base", help="catalog key or config.json path of the base architecture")
    t.add_argument(
        "--vary",
        action="append",
        default=[],
        help="axis=v1,v2 (repeat for a factorial); axes: "
        + ", ".join(variants_mod.AXES)
        + ", any config field, or a per-run recipe field (warmup, weight_decay, z_loss...)",
    )
    t.add_argument("--lrs", default=None, help="learning-rate grid, e.g. 1e-3,3e-3,1e-2 (default 1e-3,3e-3,1e-2)")
    t.add_argument(
        "--seeds", default="0,1,2", help="seeds (default 0,1,2; fewer is a quick look, without verdicts for one seed)"
    )
    t.add_argument("--data", default="corpus", help="corpus, mqar, distance, or a UTF-8 .txt file")
    t.add_argument("--budget", help="per-variant budget, e.g. 1M (default: the preset's)")
    t.add_argument("--metric", default=None, choices=("active", "total", "flops"))
    t.add_argument("--tokens", help="training tokens per run, e.g. 10M")
    t.add_argument(
        "--preset", default=None, choices=sorted(PRESETS), help="base recipe (default: small on a GPU, tiny on the CPU)"
    )
    t.add_argument("--batch", type=int)
    t.add_argument("--seq-len", type=int)
    t.add_argument("--layers", type=int)
    t.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    t.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--runs-dir", default=None, help="where the run folder goes (default: ARCHLAB_RUNS_DIR or runs/)")
    t.add_argument("--spec", default=None, help="an ablation spec JSON (from --save-spec); the flags above are ignored")
    t.add_argument("--save-spec", default=None, help="write the ablation spec to this file and exit")
    t.add_argument("--dry-run", action="store_true", help="print the cells, runs and time estimate, train nothing")
    t.add_argument("--name", default="", help="a name for the ablation (kept in summary.json)")


def spec_from_args(a) -> tuple[AblationSpec, object]:
    """The ablation spec (and uploaded text data, if ``--data`` is a file) the flags describe."""
    from . import data as data_mod
    from .cli import _models, recipe_from_args

    if a.spec:
        path = Path(a.spec)
        if not path.is_file():
            raise ArchLabError(f"no such ablation spec: {a.spec}")
        return AblationSpec.from_json(path.read_bytes()), None
    if not a.base:
        raise ArchLabError("--base is required (a catalog key or a config.json path)")
    if not a.vary:
        raise ArchLabError("--vary axis=v1,v2 is required (axes: " + ", ".join(variants_mod.AXES) + ")")
    (base,) = _models(a.base)
    vary = tuple(variants_mod.parse_vary(v, base) for v in a.vary)
    recipe, upload = recipe_from_args(a, ("batch", "seq_len", "layers", "precision"))
    lrs = parse_list(a.lrs, float, "--lrs") if a.lrs else (1e-3, 3e-3, 1e-2)
    seeds = parse_list(a.seeds, int, "--seeds")
    spec = AblationSpec(base, vary, lrs, seeds, recipe, a.device, a.name).validate()
    if upload is not None:
        data_mod.check_enough(upload, recipe.tokens, recipe.seq_len)
    return spec, upload


def run(a) -> int:
    from .runner import TrainingRun

    spec, upload = spec_from_args(a)
    if a.save_spec:
        Path(a.save_spec).write_text(spec.to_json() + "\n")
        print(f"wrote {a.save_spec}")
        return 0
    if a.runs_dir:
        os.environ["ARCHLAB_RUNS_DIR"] = str(Path(a.runs_dir).resolve())
    p = plan(spec)
    r = spec.recipe
    print(
        f"ablation of {p.base_label}: {len(p.cells)} cell(s) × {len(spec.lrs)} learning rate(s) × "
        f"{len(spec.seeds)} seed(s) = {p.runs} runs of {r.tokens:,} tokens ({r.steps} steps of {r.batch} × "
        f"{r.seq_len}), data {r.data}, budget {r.budget:,.0f} {r.budget_metric}"
    )
    for c in p.cells:
        print(f"  {'*' if c.is_reference else ' '} {c.name}" + (f"  ({'; '.join(c.notes)})" if c.notes else ""))
    for name, why in p.refused:
        print(f"  ✗ {name}: {why}")
    if len(spec.seeds) < 3:
        print(
            f"quick look: {len(spec.seeds)} seed(s); "
            + ("no interval with one seed" if len(spec.seeds) < 2 else "intervals over 2 seeds are wide")
            + f"; a verdict needs {st.MIN_SEEDS} seeds"
        )
    if a.dry_run:
        return 0
    run_ = TrainingRun(p.run, upload=upload, sizer=p.sizer()).start()
    print(f"run {run_.id}: folder {run_.folder}", flush=True)
    last = 0.0
    try:
        while run_.running:
            run_.join(1.0)
            if time.monotonic() - last >= 10 or not run_.running:
                last = time.monotonic()
                v = run_.view()
                counts = {}
                for m in v.models:
                    counts[m.status] = counts.get(m.status, 0) + 1
                step = max((m.step for m in v.models), default=0)
                print(
                    f"  step {step}/{r.steps}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())), flush=True
                )
    except KeyboardInterrupt:
        print("stopping (checkpoints trained so far are kept)…", flush=True)
        run_.cancel()
        run_.join()
    v = run_.view()
    summary = summarize(p, v.results)
    path = write_summary(Path(v.folder), summary)
    for line in headline_lines(summary):
        print(line)
    print(f"{v.status}: {v.folder} (summary: {path})" + (f" ({v.message})" if v.message else ""))
    if v.status == "failed":
        raise ArchLabError(v.message or "the ablation failed")
    return 0


def headline_lines(summary: dict) -> list[str]:
    """The summary as text: per cell the best learning rate and loss, LR sensitivity, and the verdict."""

    def iv(d):
        if not d or d.get("mean") is None:
            return "—"
        if d.get("low") is None:
            return f"{d['mean']:.4f}"
        return f"{d['mean']:.4f} [{d['low']:.4f}, {d['high']:.4f}]"

    lines = [
        f"{'cell':34s} {'best lr':>8s}  {'loss at best lr (95% CI)':30s} {'LR sensitivity':28s} "
        f"{'Δ vs reference (95% CI)':34s} verdict"
    ]
    comp = {c["cell"]: c for c in summary["comparisons"]}
    for c in summary["cells"]:
        k = comp.get(c["name"], {})
        lr = f"{c['best_lr']:g}" if c["best_lr"] else "—"
        diff = "reference" if c["reference"] else iv(k.get("loss_difference"))
        lines.append(
            f"{c['name'][:34]:34s} {lr:>8s}  {iv(c['best']):30s} {iv(c['lr_sensitivity']):28s} "
            f"{diff:34s} {'' if c['reference'] else k.get('verdict', '')}"
        )
    if summary.get("note"):
        lines.append(summary["note"])
    return lines
