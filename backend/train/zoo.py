"""Build the trained zoo: every catalog architecture's miniature trained under one recorded recipe.

``python -m backend train --zoo`` (on a GPU) sizes each catalog architecture to the zoo recipe
(``recipe.PRESETS["zoo"]``), groups the catalog keys whose miniatures come out identical, trains each group on
the shipped corpus with ``SEEDS`` seeds and on MQAR with the same seeds, and writes ``assets/zoo/``:
the seed-0 corpus checkpoint of each group in bf16 (what ``live.zoo`` serves), ``index.json`` (recipe, per
catalog key: folder, shipped validation loss, batch-stream hash, expert notes) and ``leaderboard.csv``
(per architecture: validation loss and perplexity, MQAR accuracy, parameters, and the spread over the seeds).
Runs go through ``TrainingRun`` in worker processes, several groups at once.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..arch import catalog
from ..arch.errors import ArchLabError
from ..live import zoo as live_zoo
from . import budget
from .recipe import Recipe, RunSpec, preset
from .runner import FINAL_WINDOWS, TrainingRun

SEEDS = (0, 1, 2)
#: MQAR part of the leaderboard: the zoo's miniatures trained on the probe, with shorter sequences and a third
#: of the corpus runs' tokens
MQAR = {"data": "mqar", "seq_len": 128}
MQAR_SHARE = 3


def _identity(arch) -> str:
    """What makes two miniatures the same model: their spec and every parameter's name and shape."""
    shapes = sorted((n, tuple(p.shape)) for n, p in arch.meta_model.named_parameters())
    return json.dumps([repr(arch.spec), shapes])


def groups(recipe: Recipe, keys: Optional[list[str]] = None) -> list[dict]:
    """Catalog keys grouped by identical sized miniature: [{"keys": [...], "sized": Sized}] in catalog order."""
    from ..live.tokenizer import load_offline

    tok = load_offline()
    out: dict[str, dict] = {}
    for key in keys or catalog.keys():
        s = budget.size_to_budget(
            key,
            recipe.budget,
            recipe.budget_metric,
            seq_len=recipe.seq_len,
            vocab=len(tok),
            eos=tok.eos_token_id,
            pad=tok.pad_token_id,
            max_positions=max(1024, recipe.seq_len),
            max_total=recipe.max_total,
            layers=recipe.layers,
            min_head_dim=recipe.min_head_dim,
        )
        g = out.setdefault(_identity(s.arch), {"keys": [], "sized": s, "by_key": {}})
        g["keys"].append(key)
        g["by_key"][key] = s  # same miniature, but each key's own real expert count and notes
    return list(out.values())


def _cost(sized, recipe: Recipe) -> float:
    """Relative training time: tokens, times more for routed experts and for linear-attention layers (their
    kernels dominate a small model's step)."""
    spec = sized.arch.spec
    return recipe.tokens * (3.0 if spec.moe else 1.0) * (4.0 if spec.linear else 1.0)


def seeds_spec(key: str, recipe: Recipe, seeds) -> RunSpec:
    """One architecture's runs of ``recipe`` over ``seeds`` in one run: they share shapes, so they train as one
    stack (``sweep.py``)."""
    return RunSpec(
        (key,), recipe, "auto", tuple({"model": 0, "key": f"{key} · seed {s}", "recipe": {"seed": s}} for s in seeds)
    )


def run_rows(r: TrainingRun) -> list[dict]:
    """A zoo run's final rows, one per seed, keyed by the architecture (``model``), its data and its seed."""
    seed_of = {k: rec.seed for _, k, rec in r.spec.runs()}
    return [
        {
            **row,
            "model": r.spec.models[0],
            "seed": seed_of.get(row["model"], r.spec.recipe.seed),
            "data": r.spec.recipe.data,
            "run_id": r.id,
        }
        for row in r.view().results
    ]


def _run_all(
    specs: list[RunSpec],
    root: Path,
    processes: int,
    parallel: int,
    log: Callable[[str], None],
    on_done: Optional[Callable[[TrainingRun], None]] = None,
) -> list[TrainingRun]:
    """Run ``specs`` (each in ``processes`` worker processes), ``parallel`` runs at a time; ``on_done(run)`` is
    called (one at a time) as each run ends."""
    runs, lock, pending = [], threading.Lock(), list(specs)

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                spec = pending.pop(0)
            r = TrainingRun(spec, root=root, processes=min(processes, len(spec.models))).start()
            with lock:
                runs.append(r)
            r.join()
            v = r.view()
            log(
                f"  run {r.id[:6]} ({spec.recipe.data}, {len(v.models)} seed(s)): {v.status} {v.message} "
                + ", ".join(f"{m.key} {m.status}" for m in v.models)
            )
            if on_done is not None:
                with lock:
                    on_done(r)

    threads = [threading.Thread(target=worker) for _ in range(max(1, parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def build(
    out: Optional[Path] = None,
    recipe: Optional[Recipe] = None,
    seeds=SEEDS,
    keys: Optional[list[str]] = None,
    processes: int = 1,
    parallel: int = 16,
    root: Optional[Path] = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Train the zoo and write it to ``out`` (default ``assets/zoo``); returns ``out``."""
    recipe = (recipe or preset("zoo")).validate()
    out = Path(out or live_zoo.zoo_dir())
    root = Path(root or tempfile.mkdtemp(prefix="archlab-zoo-"))
    t0 = time.time()
    gs = groups(recipe, keys)
    log(
        f"zoo: {sum(len(g['keys']) for g in gs)} catalog architectures → {len(gs)} distinct miniatures; "
        f"{len(seeds)} seeds; corpus {recipe.tokens:,} tokens and MQAR {recipe.tokens // MQAR_SHARE:,} tokens each"
    )
    probe = replace(recipe, **MQAR, tokens=recipe.tokens // MQAR_SHARE).validate()
    # One run per (architecture, data), its seeds trained as one stack, each run in its own worker process,
    # ``parallel`` at a time, the costliest first (longest-processing-time order keeps the last runs short).
    jobs = [(g["keys"][0], r, _cost(g["sized"], r)) for g in gs for r in (recipe, probe)]
    jobs.sort(key=lambda j: -j[2])
    from .data import corpus_data

    corpus_data()  # tokenized once here, cached on disk for the workers
    runs = _run_all([seeds_spec(key, r, seeds) for key, r, _ in jobs], root, 1, parallel, log)
    res = pd.DataFrame([row for r in runs for row in run_rows(r)])
    if res.empty:
        raise ArchLabError("the zoo runs produced no trained model")
    _write(out, gs, recipe, probe, res, seeds)
    log(f"zoo written to {out} in {(time.time() - t0) / 60:.1f} min")
    return out


#: validation windows of the quick check recorded for every shipped checkpoint (tests reload each against it)
CHECK_WINDOWS = 32


def _shipped_val_loss(folder: Path, recipe: Recipe, windows: Optional[int] = FINAL_WINDOWS) -> float:
    """Validation loss of the shipped (bf16) checkpoint as the app loads it: fp32 weights on the CPU, over the
    first ``windows`` validation sequences (``FINAL_WINDOWS``: what training reports)."""
    import torch
    import torch.nn.functional as F

    from ..arch import patches
    from .data import corpus_data, validation_windows

    model = patches.from_pretrained(str(folder), dtype=torch.float32, local_files_only=True).eval()
    windows = validation_windows(corpus_data().validation, recipe.seq_len, windows)
    total = n = 0.0
    with torch.no_grad():
        for i in range(0, len(windows), 64):
            w = torch.from_numpy(windows[i : i + 64].astype(np.int64))
            logits = model(input_ids=w[:, :-1], use_cache=False).logits
            total += float(
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), w[:, 1:].reshape(-1), reduction="sum")
            )
            n += w[:, 1:].numel()
    return total / n


def _write(out: Path, gs: list[dict], recipe: Recipe, probe: Recipe, res: pd.DataFrame, seeds) -> None:
    import torch

    from ..arch import patches

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = {
        "built_with": "python -m backend train --zoo",
        "recipe": recipe.as_dict(),
        "mqar_recipe": probe.as_dict(),
        "seeds": list(seeds),
        "tokenizer": "assets/tokenizer",
        "models": {},
    }
    for g in gs:
        rep = g["keys"][0]
        corpus = res[(res["model"] == rep) & (res["data"] == "corpus")]
        first = corpus[(corpus["seed"] == seeds[0]) & (corpus["status"] == "finished")]
        folder_name = rep
        shipped = None
        if not first.empty:
            src = Path(first.iloc[0]["checkpoint"])
            model = patches.from_pretrained(str(src), dtype=torch.float32, local_files_only=True)
            model.to(torch.bfloat16).save_pretrained(str(out / folder_name))
            info = json.loads((src / "training.json").read_text())
            shipped = _shipped_val_loss(out / folder_name, recipe)
            info.update(
                {
                    "val_loss_fp32_training": info.get("val_loss"),
                    "val_loss": shipped,
                    "shipped_dtype": "bf16",
                    "catalog_keys": g["keys"],
                }
            )
            (out / folder_name / "training.json").write_text(json.dumps(info, indent=1) + "\n")
        for key in g["keys"]:
            if shipped is None:
                continue
            own = g["by_key"][key]
            index["models"][key] = {
                "folder": folder_name,
                "label": catalog.get(key).name,
                "val_loss": shipped,
                "stream_sha256": first.iloc[0]["stream_sha256"],
                "experts": own.experts,
                "real_experts": own.real_experts,
                "notes": list(own.notes),
            }
    (out / live_zoo.INDEX).write_text(json.dumps(index, indent=1) + "\n")
    leaderboard(gs, res).to_csv(out / live_zoo.LEADERBOARD, index=False)
    res.drop(columns=["checkpoint"], errors="ignore").to_csv(out / "runs.csv", index=False)
    record_checks(out)


def latest_runs(res: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, one per (model, data, seed): the last one recorded (a rebuild replaces an earlier run)."""
    done = res[res["status"] == "finished"] if "status" in res else res
    return done.drop_duplicates(["model", "data", "seed"], keep="last")


def missing_runs(gs: list[dict], res: pd.DataFrame, seeds) -> list[tuple[str, str, int]]:
    """(representative key, data, seed) of every corpus or MQAR run of ``seeds`` without a finished row."""
    have = set(map(tuple, latest_runs(res)[["model", "data", "seed"]].astype({"seed": int}).values.tolist()))
    return [
        (g["keys"][0], data, s)
        for g in gs
        for data in ("corpus", "mqar")
        for s in seeds
        if (g["keys"][0], data, s) not in have
    ]


def fill(
    out: Optional[Path] = None,
    seeds=SEEDS,
    parallel: int = 16,
    root: Optional[Path] = None,
    log: Callable[[str], None] = print,
) -> list[tuple[str, str, int]]:
    """Train the runs of ``seeds`` that a shipped zoo lacks (e.g. runs that ran out of memory while it was built),
    with its recorded recipes, and rebuild its ``runs.csv`` and ``leaderboard.csv``; the shipped checkpoints stay
    as they are. Returns the runs it trained."""
    out = Path(out or live_zoo.zoo_dir())
    index = json.loads((out / live_zoo.INDEX).read_text())
    recipe, probe = Recipe.from_dict(index["recipe"]), Recipe.from_dict(index["mqar_recipe"])
    res = pd.read_csv(out / "runs.csv")
    gs = groups(recipe, list(index["models"]))
    todo = missing_runs(gs, res, seeds)
    log(f"zoo fill: {len(todo)} run(s) missing: " + ", ".join(f"{k} {d} seed {s}" for k, d, s in todo))
    if not todo:
        return []
    from .data import corpus_data

    corpus_data()
    wanted: dict = {}
    for key, data, seed in todo:
        wanted.setdefault((key, data), []).append(seed)
    specs = [seeds_spec(key, recipe if data == "corpus" else probe, missing) for (key, data), missing in wanted.items()]
    table = {"res": res}

    def record(r: TrainingRun) -> None:  # written as each run ends: a run cut short keeps the others
        rows = run_rows(r)
        if rows:
            table["res"] = pd.concat(
                [table["res"], pd.DataFrame(rows).drop(columns=["checkpoint"], errors="ignore")], ignore_index=True
            )
            table["res"].to_csv(out / "runs.csv", index=False)
            leaderboard(gs, table["res"]).to_csv(out / live_zoo.LEADERBOARD, index=False)

    _run_all(specs, Path(root or tempfile.mkdtemp(prefix="archlab-zoo-")), 1, parallel, log, record)
    return todo


def leaderboard(gs: list[dict], res: pd.DataFrame) -> pd.DataFrame:
    """Per architecture: validation loss (mean, spread and range over seeds), perplexity, MQAR accuracy,
    parameters and shape, from every finished run's row (``res``: model, data, seed, val_loss, probe_accuracy;
    the last row of a repeated (model, data, seed))."""
    res = latest_runs(res)
    board = []
    for g in gs:
        rep, s = g["keys"][0], g["sized"]
        corpus = res[(res["model"] == rep) & (res["data"] == "corpus")]
        mqar = res[(res["model"] == rep) & (res["data"] == "mqar")]
        sp = s.arch.spec
        vl = corpus["val_loss"].astype(float)
        acc = mqar["probe_accuracy"].astype(float)
        board.append(
            {
                "architecture": " / ".join(catalog.get(k).name for k in g["keys"]),
                "keys": " ".join(g["keys"]),
                "val_loss_mean": vl.mean(),
                "val_loss_std": vl.std(ddof=1) if len(vl) > 1 else float("nan"),
                "val_loss_min": vl.min(),
                "val_loss_max": vl.max(),
                "perplexity": math.exp(vl.mean()) if len(vl) else None,
                "mqar_accuracy_mean": acc.mean(),
                "mqar_accuracy_std": acc.std(ddof=1) if len(acc) > 1 else float("nan"),
                "seeds": int(len(vl)),
                "mqar_seeds": int(len(acc)),
                "total_params": s.total,
                "active_params": s.active,
                "nonemb_active_params": int(s.value),
                "layers": sp.num_layers,
                "hidden": sp.hidden_size,
                "attention": sp.attention_kind,
                "experts": s.experts,
                "real_experts": s.real_experts,
                "top_k": sp.moe.top_k if sp.moe else None,
                "notes": "; ".join(s.notes),
            }
        )
    return pd.DataFrame(board)


def record_checks(out: Path) -> None:
    """Record, for every shipped checkpoint, its loss on the first ``CHECK_WINDOWS`` validation sequences
    (a fast reload check beside the full validation loss)."""
    path = Path(out) / live_zoo.INDEX
    index = json.loads(path.read_text())
    recipe = Recipe.from_dict(index["recipe"])
    done: dict[str, float] = {}
    for row in index["models"].values():
        if row["folder"] not in done:
            done[row["folder"]] = _shipped_val_loss(Path(out) / row["folder"], recipe, CHECK_WINDOWS)
        row["check"] = {"windows": CHECK_WINDOWS, "val_loss": done[row["folder"]]}
    path.write_text(json.dumps(index, indent=1) + "\n")


def merge(parts: list[Path], out: Path, recipe: Optional[Recipe] = None) -> Path:
    """One zoo from several builds of the same recipe (e.g. a rebuild of the architectures whose runs failed):
    each catalog key's shipped checkpoint from the last part that has it, the leaderboard over every run."""
    indexes = [json.loads((Path(p) / live_zoo.INDEX).read_text()) for p in parts]
    if any(i["recipe"] != indexes[0]["recipe"] for i in indexes):
        raise ArchLabError("the zoo parts were trained with different recipes")
    recipe = recipe or Recipe.from_dict(indexes[0]["recipe"])
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    index = {**indexes[0], "models": {}, "seeds": sorted({s for i in indexes for s in i["seeds"]})}
    for part, idx in zip(parts, indexes):
        for key, row in idx["models"].items():
            index["models"][key] = row
            if not (out / row["folder"]).exists():
                shutil.copytree(Path(part) / row["folder"], out / row["folder"])
    for key, row in list(index["models"].items()):  # a folder replaced by a later part: take that part's copy
        src = next(Path(p) / row["folder"] for p, i in reversed(list(zip(parts, indexes))) if key in i["models"])
        if (src / "training.json").read_bytes() != (out / row["folder"] / "training.json").read_bytes():
            shutil.rmtree(out / row["folder"])
            shutil.copytree(src, out / row["folder"])
    order = catalog.keys()
    index["models"] = dict(sorted(index["models"].items(), key=lambda kv: order.index(kv[0])))
    gs = groups(recipe, list(index["models"]))
    for g in gs:  # each key's own expert notes (parts built before keys carried their own)
        for key, own in g["by_key"].items():
            index["models"][key].update(experts=own.experts, real_experts=own.real_experts, notes=list(own.notes))
    res = pd.concat([pd.read_csv(Path(p) / "runs.csv") for p in parts], ignore_index=True)
    (out / live_zoo.INDEX).write_text(json.dumps(index, indent=1) + "\n")
    leaderboard(gs, res).to_csv(out / live_zoo.LEADERBOARD, index=False)
    res.to_csv(out / "runs.csv", index=False)
    record_checks(out)
    return out
