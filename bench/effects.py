"""Two known effects, measured on equal footing over several seeds (issue 11's evidence; not tuned to them).

    python bench/effects.py                          # on a GPU: both effects, seeds 0,1,2
    python bench/effects.py --effect window --seeds 0 --tokens 4M --tag pilot

- **window**: recall at a distance (``data=distance``: keys queried at uniform gaps, accuracy by how far back
  the key was). Full attention (Llama 3) against sliding-window hybrids (Gemma 3: 5 sliding : 1 full; gpt-oss:
  1 : 1) and an ablation with every layer sliding (Gemma 3's config with ``layer_types`` all sliding). Windows
  are the trainer's usual scaling of the real window to the training context (``budget.scaled_window``).
- **state**: multi-query associative recall (``data=mqar``) as the number of key-value pairs grows. Full
  attention (Llama 3) against the linear-attention hybrid (Qwen3-Next: 3 gated-delta-net : 1 full) and an
  ablation with every layer linear (fixed state). Zoology reports fixed-state models losing recall as pairs grow.

Every model of an effect is trained in one run per seed (same batches, recipe and matched budget of
non-embedding active parameters). Prints mean and range over the seeds per model and setting and writes
bench/results/effects-<device>[-tag].json with every run's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"


def _ablation(key: str, layer_type: str, name: str) -> dict:
    """A catalog config with every layer of one type (data, not code: the same model class builds it)."""
    from backend.arch import catalog

    d = catalog.raw_config(key)
    d["layer_types"] = [layer_type] * int(d["num_hidden_layers"])
    d["_name_or_path"] = name
    return d


def models(effect: str) -> tuple:
    if effect == "window":
        return (
            "llama3-8b",
            "gemma3-27b",
            "gpt-oss-20b",
            _ablation("gemma3-27b", "sliding_attention", "Gemma 3, every layer sliding"),
        )
    return (
        "llama3-8b",
        "qwen3-next-80b-a3b",
        _ablation("qwen3-next-80b-a3b", "linear_attention", "Qwen3-Next, every layer linear"),
    )


def _label(m) -> str:
    return m if isinstance(m, str) else m["_name_or_path"]


def summarise(effect: str, runs: list) -> dict:
    """Per model: accuracy per setting (distance bucket or KV pairs) as mean, min, max and n over the seeds."""
    table: dict = {}
    for r in runs:
        v = r.view()
        labels = {m.key: m.label for m in v.models}
        for row in v.probes:
            if effect == "window" and row["distance"] != "":
                setting = f"distance <= {row['distance']}"
            elif effect == "state" and row["distance"] == "" and int(row["seq_len"]) == v.spec.recipe.seq_len:
                setting = f"{row['kv_pairs']} KV pairs"
            else:
                continue
            table.setdefault(labels[row["model"]], {}).setdefault(setting, []).append(float(row["accuracy"]))
        for res in v.results:
            table.setdefault(labels[res["model"]], {}).setdefault("validation loss", []).append(float(res["val_loss"]))
    return {
        m: {
            s: {"mean": statistics.fmean(x), "min": min(x), "max": max(x), "n": len(x), "values": x}
            for s, x in settings.items()
        }
        for m, settings in table.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--effect", default="window,state")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--budget", default="1M", help="non-embedding active parameters per model")
    ap.add_argument("--tokens", default="12M", help="training tokens per model")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--probe-vocab", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=6, help="runs at a time")
    ap.add_argument("--processes", type=int, default=4, help="worker processes per run")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    import torch

    from backend.train.recipe import RunSpec, parse_amount, preset
    from backend.train.zoo import _run_all

    base = preset(
        "small",
        budget=parse_amount(a.budget),
        tokens=int(parse_amount(a.tokens)),
        layers=a.layers,
        seq_len=a.seq_len,
        batch=a.batch,
        lr=a.lr,
        probe_vocab=a.probe_vocab,
        eval_every=0,
    )
    seeds = [int(s) for s in a.seeds.split(",")]
    effects = [e for e in a.effect.split(",") if e]
    specs, which = [], []
    for effect in effects:
        data = "distance" if effect == "window" else "mqar"
        for seed in seeds:
            specs.append(
                RunSpec(
                    models(effect), replace(base, data=data, seed=seed, name=f"effects-{effect}"), a.device
                ).validate()
            )
            which.append(effect)
    device = (
        torch.cuda.get_device_name(0).replace(" ", "_") + f"x{torch.cuda.device_count()}"
        if torch.cuda.is_available()
        else f"cpu{os.cpu_count()}"
    )
    t0 = time.perf_counter()
    runs = _run_all(specs, Path(tempfile.mkdtemp()), a.processes, a.parallel, lambda s: print(s, flush=True))
    wall = time.perf_counter() - t0
    by_id = {id(r.spec): r for r in runs}
    out = {
        "device": device,
        "torch": torch.__version__,
        "recipe": base.as_dict(),
        "seeds": seeds,
        "wall_s": wall,
        "effects": {},
    }
    for effect in effects:
        rs = [by_id[id(s)] for s, e in zip(specs, which) if e == effect]
        summary = summarise(effect, rs)
        out["effects"][effect] = {
            "models": [_label(m) for m in models(effect)],
            "summary": summary,
            "runs": [
                {
                    "seed": r.spec.recipe.seed,
                    "status": r.view().status,
                    "message": r.view().message,
                    "models": [
                        {
                            "key": m.key,
                            "label": m.label,
                            "status": m.status,
                            "error": m.error,
                            "nonemb_active": m.nonemb_active,
                            "total": m.total,
                            "tok_s": m.tok_s,
                            "stream_sha256": m.stream_sha256,
                        }
                        for m in r.view().models
                    ],
                    "probes": r.view().probes,
                    "results": r.view().results,
                }
                for r in rs
            ],
        }
        print(f"\n{effect}: accuracy over seeds {seeds} (mean [min–max])")
        settings = sorted(
            {s for m in summary.values() for s in m if s != "validation loss"},
            key=lambda s: int(s.split()[-1]) if s.startswith("distance") else int(s.split()[0]),
        )
        for label, row in summary.items():
            cells = "  ".join(
                f"{s}: {row[s]['mean']:.3f} [{row[s]['min']:.3f}–{row[s]['max']:.3f}]" for s in settings if s in row
            )
            print(f"  {label:34s} {cells}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"effects-{device}{'-' + a.tag if a.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], path.name).write_text(path.read_text())
    print(f"wrote {path} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
