"""What the Experiments page shows of a training run: the sized preview, progress, curves, routers, results.

Plain data in, plain data out (no Streamlit). A run is read as a :class:`~backend.train.runner.RunView`
(live) or a :class:`~backend.train.store.RunRecord` (from disk); :func:`frames` turns either into the same
DataFrames, so a finished run looks the same whether its worker is still in memory or not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from ..arch.architecture import resolve
from ..arch.errors import ArchLabError
from ..train import budget
from ..train.recipe import Recipe
from ..train.runner import RunView
from ..train.store import METRIC_COLUMNS

#: numeric columns of metrics.csv besides the step counters: losses, learning rate and the stability metrics
NUMERIC_METRICS = ("train_loss", "val_loss", "lr", "grad_norm", "max_attn_logit", "log_z")


def _vocab(recipe: Recipe) -> tuple[int, int, int]:
    if recipe.data in ("mqar", "distance"):
        return recipe.probe_vocab, 0, 0
    from ..live.tokenizer import load_offline

    tok = load_offline()
    return len(tok), tok.eos_token_id, tok.pad_token_id


def sizing_args(recipe: Recipe) -> dict:
    """The shape every miniature of a run under ``recipe`` is sized with (as the run sizes them)."""
    vocab, eos, pad = _vocab(recipe)
    return dict(
        seq_len=recipe.seq_len,
        vocab=vocab,
        eos=eos,
        pad=pad,
        max_positions=max(1024, recipe.seq_len),
        max_total=recipe.max_total,
        layers=recipe.layers,
        min_head_dim=recipe.min_head_dim,
    )


def sized_columns(s: budget.Sized, recipe: Recipe) -> dict:
    """A sized miniature's exact parameters and shape, as one table row's columns."""
    sp, c = s.arch.spec, s.arch.counts
    return {
        "total params": c.total,
        "active params": c.active,
        "non-embedding active": budget.non_embedding(c, "active"),
        "non-embedding total": budget.non_embedding(c, "total"),
        "budget value": s.value,
        "off target (%)": s.deviation * 100,
        "training FLOPs / token": budget.flops_per_token(s.arch, recipe.seq_len),
        "layers": sp.num_layers,
        "hidden": sp.hidden_size,
        "heads (q/kv)": f"{sp.num_heads}/{sp.num_kv_heads}",
        "head dim": sp.head_dim,
        "attention": sp.attention_kind,
        "window": sp.window or None,
        "experts (kept / real)": "" if s.experts is None else f"{s.experts} / {s.real_experts}",
        "top-k": sp.moe.top_k if sp.moe else None,
        "shared experts": sp.moe.num_shared if sp.moe else None,
        "notes": "; ".join(s.notes),
    }


def _sized_row(source, recipe: Recipe) -> dict:
    label = resolve(source).label
    try:
        s = budget.size_to_budget(source, recipe.budget, recipe.budget_metric, **sizing_args(recipe))
    except ArchLabError as e:
        return {"model": label, "error": str(e)}
    return {"model": label, "error": "", **sized_columns(s, recipe)}


def preview(models: Sequence, recipe: Recipe) -> pd.DataFrame:
    """One row per model: the miniature the budget gives it (exact parameters, shape) or why there is none.
    The sizing is remembered per process (``budget.size_to_budget``), so every visitor and the run that Train
    starts reuse it."""
    recipe = recipe.validate()
    return pd.DataFrame([_sized_row(m, recipe) for m in models])


# ----------------------------------------------------------------- a run's frames


@dataclass(frozen=True)
class Frames:
    """A run as tables: per-step metrics, router snapshots, probe accuracy, final results, model status."""

    metrics: pd.DataFrame
    routing: pd.DataFrame
    probes: pd.DataFrame
    results: pd.DataFrame
    models: pd.DataFrame
    labels: dict  # model key -> label


def frames(view: RunView) -> Frames:
    """DataFrames of a live run's state."""
    num = lambda df, cols: df.assign(**{c: pd.to_numeric(df[c], errors="coerce") for c in cols if c in df})
    metrics = num(pd.DataFrame(view.metrics, columns=list(METRIC_COLUMNS)), NUMERIC_METRICS)
    routing = num(
        pd.DataFrame(
            view.routing,
            columns=[
                "model",
                "step",
                "tokens",
                "layer",
                "max_over_mean",
                "entropy",
                "never_chosen",
                "aux_loss",
                "load",
            ],
        ),
        ["aux_loss"],
    )
    probes = num(
        pd.DataFrame(view.probes, columns=["model", "probe", "kv_pairs", "seq_len", "distance", "accuracy"]),
        ["kv_pairs", "distance", "accuracy"],
    )
    models = pd.DataFrame([m.__dict__ for m in view.models])
    labels = {m.key: m.label for m in view.models}
    return Frames(metrics, routing, probes, pd.DataFrame(view.results), models, labels)


def frames_from_record(record) -> Frames:
    """The same tables from a run folder read back by ``store.read_run``."""
    models = pd.DataFrame(record.status.get("models", []))
    labels = dict(zip(models["key"], models["label"])) if not models.empty else {}
    metrics = record.metrics.assign(
        **{
            c: pd.to_numeric(record.metrics[c], errors="coerce") if c in record.metrics else np.nan
            for c in NUMERIC_METRICS
        }
    )
    return Frames(metrics, record.routing, record.probes, record.results, models, labels)


def progress_table(f: Frames) -> pd.DataFrame:
    """One row per model: status, step of steps, tokens, losses, tokens/s, elapsed, ETA, peak memory."""
    if f.models.empty:
        return pd.DataFrame()
    m = f.models
    out = pd.DataFrame(
        {
            "model": [f.labels.get(k, k) for k in m["key"]],
            "status": m["status"],
            "progress": [min(1.0, s / n) if n else 0.0 for s, n in zip(m["step"], m["steps"])],
            "step": [f"{s:,} / {n:,}" for s, n in zip(m["step"], m["steps"])],
            "tokens": m["tokens"],
            "train loss": m["train_loss"],
            "validation loss": m["val_loss"],
            "tokens/s": m["tok_s"],
            "elapsed (s)": m["elapsed_s"],
            "ETA (s)": m["eta_s"],
            "peak GPU memory (MiB)": [
                None if b is None or (isinstance(b, float) and math.isnan(b)) else b / 2**20 for b in m["peak_bytes"]
            ],
            "device": m.get("device", ""),
            "error": m["error"],
        }
    )
    return out.dropna(axis=1, how="all")


def results_table(f: Frames) -> pd.DataFrame:
    """The final table: validation loss and perplexity, probe accuracy, parameters, speed, memory, time."""
    if f.results.empty:
        return pd.DataFrame()
    r = f.results
    cols = {
        "label": "model",
        "status": "status",
        "val_loss": "validation loss",
        "perplexity": "perplexity",
        "probe_accuracy": "probe accuracy (mean)",
        "nonemb_active_params": "non-embedding active params",
        "active_params": "active params",
        "total_params": "total params",
        "experts": "routed experts",
        "tok_s": "tokens/s",
        "peak_bytes": "peak GPU memory (bytes)",
        "train_seconds": "training time (s)",
        "tokens": "tokens",
        "stream_sha256": "batch stream SHA-256",
    }
    out = r[[c for c in cols if c in r]].rename(columns=cols)
    return out.dropna(axis=1, how="all").sort_values("validation loss" if "validation loss" in out else out.columns[0])


def recipe_table(view_or_record) -> pd.DataFrame:
    """What every model shared (one row per item), as the run recorded it."""
    shared = view_or_record.shared if isinstance(view_or_record, RunView) else view_or_record.recipe.get("shared", {})
    return pd.DataFrame([{"shared by every model": k.replace("_", " "), "value": str(v)} for k, v in shared.items()])


def hash_table(f: Frames) -> pd.DataFrame:
    """The SHA-256 of the batches each model consumed, and whether all models saw the same stream."""
    if f.models.empty:
        return pd.DataFrame()
    m = f.models[f.models["stream_sha256"].astype(str) != ""]
    if m.empty:
        return pd.DataFrame()
    full = m[m["batches"] == m["batches"].max()]
    same = full["stream_sha256"].nunique() == 1
    return pd.DataFrame(
        {
            "model": [f.labels.get(k, k) for k in m["key"]],
            "batches consumed": m["batches"],
            "SHA-256 of the batch stream": m["stream_sha256"],
            "same as the others": [(h == full["stream_sha256"].iloc[0]) if same else False for h in m["stream_sha256"]],
        }
    )


def smoothed(metrics: pd.DataFrame, window: int = 20) -> pd.DataFrame:
    """Training loss smoothed per model (a centred moving average over ``window`` steps), beside the raw one."""
    if metrics.empty:
        return metrics.assign(train_smooth=[])
    parts = []
    for _, g in metrics.sort_values("step").groupby("model", sort=False):
        g = g.copy()
        g["train_smooth"] = g["train_loss"].rolling(window, min_periods=1, center=True).mean()
        parts.append(g)
    return pd.concat(parts)


def load_matrix(routing: pd.DataFrame, model: str, step: Optional[int] = None) -> tuple[list[int], np.ndarray, int]:
    """(MoE layers, [layers × experts] share of selections, step) of a model's router snapshot at ``step``
    (default: the last)."""
    r = routing[routing["model"] == model]
    if r.empty:
        raise ArchLabError("no router statistics for this model yet")
    step = int(r["step"].max()) if step is None else step
    r = r[r["step"] == step].sort_values("layer")
    load = np.stack([np.array([int(x) for x in str(v).split()], dtype=float) for v in r["load"]])
    share = load / load.sum(axis=1, keepdims=True).clip(min=1)
    return r["layer"].astype(int).tolist(), share, step


def probe_grid(probes: pd.DataFrame, model: str) -> pd.DataFrame:
    """Accuracy of one model: rows = KV pairs, columns = sequence length."""
    p = probes[(probes["model"] == model) & probes["kv_pairs"].notna() & (probes["probe"] != "distance")]
    if p.empty:
        return pd.DataFrame()
    return p.pivot_table(index="kv_pairs", columns="seq_len", values="accuracy")


# ----------------------------------------------------------------- the zoo's leaderboard


def leaderboard() -> pd.DataFrame:
    """The shipped zoo's table at equal budget, best validation loss first, with a "within noise" mark: two
    neighbours whose seed ranges (min–max validation loss) overlap are not told apart by this experiment."""
    from ..live import zoo

    path = zoo.zoo_dir() / zoo.LEADERBOARD
    if not path.is_file():
        return pd.DataFrame()
    b = pd.read_csv(path).sort_values("val_loss_mean").reset_index(drop=True)
    marks = []
    for i, row in b.iterrows():
        if row["seeds"] < 2:
            marks.append(f"{int(row['seeds'])} seed: spread not measured")
            continue
        near = [
            b.loc[j, "architecture"]
            for j in (i - 1, i + 1)
            if 0 <= j < len(b)
            and b.loc[j, "seeds"] >= 2
            and b.loc[j, "val_loss_min"] <= row["val_loss_max"]
            and row["val_loss_min"] <= b.loc[j, "val_loss_max"]
        ]
        marks.append("within noise of " + ", ".join(near) if near else "")
    b["rank"] = range(1, len(b) + 1)
    b["within noise"] = marks
    return b[
        [
            "rank",
            "architecture",
            "val_loss_mean",
            "val_loss_std",
            "val_loss_min",
            "val_loss_max",
            "seeds",
            "perplexity",
            "mqar_accuracy_mean",
            "mqar_seeds",
            "nonemb_active_params",
            "active_params",
            "total_params",
            "experts",
            "real_experts",
            "top_k",
            "layers",
            "hidden",
            "attention",
            "within noise",
            "notes",
            "keys",
        ]
    ].rename(
        columns={
            "architecture": "architecture",
            "val_loss_mean": "validation loss (mean)",
            "val_loss_std": "validation loss (std over seeds)",
            "val_loss_min": "best seed",
            "val_loss_max": "worst seed",
            "mqar_accuracy_mean": "MQAR accuracy (mean)",
            "mqar_seeds": "MQAR seeds",
            "nonemb_active_params": "non-embedding active params",
            "active_params": "active params",
            "total_params": "total params",
            "real_experts": "real experts",
            "top_k": "top-k",
        }
    )


def zoo_recipe_table() -> pd.DataFrame:
    """The recipe the zoo was trained with, one row per item."""
    from ..live import zoo

    r = zoo.recipe()
    return pd.DataFrame([{"recipe": k.replace("_", " "), "value": str(v)} for k, v in r.items()])
