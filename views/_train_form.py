"""The recipe part of the Experiments page's forms (both modes): data, preset, budget, tokens, device, details.

Widgets keep their values in session state under ``<prefix>_…`` keys (budget-like fields per preset, so choosing
another preset starts from its values); :func:`prefill` sets those keys from a recipe before the widgets are drawn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import streamlit as st

from backend.present.text import amount, md
from backend.train import data as data_mod
from backend.train.recipe import PRESETS, Recipe, parse_amount, preset

DATA = {
    "corpus": "Shakespeare + King James Bible (shipped, public domain)",
    "upload": "your own .txt file",
    "mqar": "MQAR: multi-query associative recall (synthetic)",
    "distance": "recall at a distance (synthetic)",
}
METRICS = {
    "active": "non-embedding active parameters",
    "total": "non-embedding total parameters",
    "flops": "training FLOPs per token",
}
NUM = st.column_config.NumberColumn(format="%,.0f")
LOSS = st.column_config.NumberColumn(format="%.4f")


@st.cache_data(show_spinner=False, max_entries=8)
def _upload(data: bytes, name: str):
    return data_mod.text_data(data, name)


@st.cache_data(ttl=60, show_spinner=False)
def gpus() -> int:
    from backend.live.runtime import hardware

    return len(hardware()["gpus"])


@dataclass(frozen=True)
class Chosen:
    """What the recipe widgets chose."""

    recipe: Recipe
    device: str
    upload: Optional[data_mod.TokenData]


def _keys(prefix: str, name: str) -> dict[str, str]:
    return {
        field: f"{prefix}_{field}_{name}"
        for field in ("budget", "tokens", "batch", "seq", "layers", "lr", "warm", "wd", "z")
    }


def _defaults(prefix: str, name: str, r: Recipe) -> dict[str, object]:
    k = _keys(prefix, name)
    return {
        k["budget"]: amount(r.budget),
        k["tokens"]: amount(r.tokens),
        k["batch"]: r.batch,
        k["seq"]: r.seq_len,
        k["layers"]: r.layers,
        k["lr"]: r.lr,
        k["warm"]: r.warmup,
        k["wd"]: r.weight_decay,
        k["z"]: r.z_loss,
    }


def prefill(prefix: str, recipe: Recipe, device: str) -> None:
    """Set the widgets' values to ``recipe`` and ``device`` (before they are drawn). A recipe whose name is no
    preset is filled in over the tiny preset; fields the form does not show are kept from ``recipe``."""
    ss = st.session_state
    name = recipe.name if recipe.name in PRESETS else "tiny"
    ss[f"{prefix}_preset"] = name
    ss[f"{prefix}_data"] = recipe.data
    ss[f"{prefix}_metric"] = recipe.budget_metric
    ss[f"{prefix}_device"] = device
    ss[f"{prefix}_precision"] = recipe.precision
    ss.update(_defaults(prefix, name, recipe))
    ss[f"{prefix}_hidden"] = (name, recipe)  # the fields the form does not show


def inputs(prefix: str, per_run: bool) -> Optional[Chosen]:
    """Draw the recipe widgets; None while an upload is awaited. ``per_run``: offer the learning rate and seed
    (an ablation sets them as its grid instead). ArchLabError (one line) for an amount that does not parse."""
    ss = st.session_state
    n_gpus = gpus()
    devices = ["auto", "cpu"] + (["cuda"] if n_gpus else [])
    ss.setdefault(f"{prefix}_data", "corpus")
    ss.setdefault(f"{prefix}_preset", "small" if n_gpus else "tiny")
    ss.setdefault(f"{prefix}_metric", "active")
    ss.setdefault(f"{prefix}_precision", "auto")
    if ss.get(f"{prefix}_device") not in devices:
        ss[f"{prefix}_device"] = "auto"
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        kind = st.radio("Data", list(DATA), format_func=DATA.get, key=f"{prefix}_data")
    with c2:
        name = st.selectbox(
            "Recipe preset",
            list(PRESETS),
            key=f"{prefix}_preset",
            help="tiny: for the CPU, a comparison in minutes. small: one GPU, about 5 M active "
            "parameters and 20 M tokens each. zoo: the recipe of the shipped trained miniatures.",
        )
    hidden_name, hidden = ss.get(f"{prefix}_hidden", (None, None))
    r0 = hidden if hidden_name == name else preset(name)
    for key, value in _defaults(prefix, name, r0).items():
        ss.setdefault(key, value)
    k = _keys(prefix, name)
    with c3:
        metric = st.selectbox(
            "Matched budget",
            list(METRICS),
            format_func=METRICS.get,
            key=f"{prefix}_metric",
            help="Every miniature is sized to this budget within ±5 % (hidden size, then the "
            "MLP/expert widths), keeping what defines its architecture.",
        )
    c1, c2, c3 = st.columns(3)
    with c1:
        budget_text = st.text_input(
            "Budget per model", key=k["budget"], help="e.g. 250k, 1M, 5M (FLOPs per token: e.g. 30M)"
        )
    with c2:
        tokens_text = st.text_input("Training tokens per model", key=k["tokens"])
    with c3:
        device = st.selectbox(
            "Device",
            devices,
            key=f"{prefix}_device",
            help="auto: the GPU when there is one; with several GPUs, one model per GPU in worker "
            "processes, at the same time. Otherwise the models take turns, step by step, on one "
            "device.",
        )
    over = {}
    with st.expander("Recipe details (shared by every model)"):
        d1, d2, d3, d4 = st.columns(4)
        over["batch"] = int(d1.number_input("Batch (sequences)", 1, 4096, key=k["batch"]))
        over["seq_len"] = int(d2.number_input("Sequence length", 16, 8192, step=16, key=k["seq"]))
        over["layers"] = int(
            d3.number_input(
                "Target depth (layers)",
                1,
                64,
                key=k["layers"],
                help="Whole periods of each model's layer pattern are kept (Gemma 3: 6).",
            )
        )
        if per_run:
            ss.setdefault(f"{prefix}_seed", r0.seed)
            over["seed"] = int(d4.number_input("Seed", 0, 2**31 - 1, key=f"{prefix}_seed"))
        else:
            over["z_loss"] = float(
                d4.number_input(
                    "z-loss coefficient",
                    0.0,
                    1.0,
                    step=1e-4,
                    format="%.1e",
                    key=k["z"],
                    help="z × mean(log² Z) of the output logits; 0: off (OLMo 2: 1e-4)",
                )
            )
        e1, e2, e3, e4 = st.columns(4)
        if per_run:
            over["lr"] = float(e1.number_input("Peak learning rate", 1e-5, 1.0, format="%.4f", key=k["lr"]))
        else:
            over["weight_decay"] = float(e1.number_input("Weight decay", 0.0, 10.0, key=k["wd"]))
        over["warmup"] = float(e2.number_input("Warm-up (share of steps)", 0.0, 0.5, key=k["warm"]))
        over["precision"] = e3.selectbox(
            "Precision",
            ["auto", "fp32", "bf16"],
            key=f"{prefix}_precision",
            help="auto: bf16 autocast on a GPU, fp32 on the CPU",
        )
    upload = None
    if kind == "upload":
        f = st.file_uploader(
            "UTF-8 text (.txt)",
            type=["txt"],
            key=f"{prefix}_file",
            help=f"{data_mod.MIN_UPLOAD_CHARS:,} characters to "
            f"{data_mod.MAX_UPLOAD_BYTES / 1e6:g} MB; the last 5 % of its lines is held out for "
            "validation.",
        )
        if f is None:
            st.info("Upload a .txt file to train on it.")
            return None
        with st.spinner("Tokenizing the upload…"):
            upload = _upload(f.getvalue(), f.name)
        st.caption(md(upload.describe()))
    from dataclasses import replace

    recipe = replace(
        r0,
        data=kind,
        budget=parse_amount(budget_text),
        budget_metric=metric,
        tokens=int(parse_amount(tokens_text)),
        **over,
    ).validate()
    return Chosen(recipe, device, upload)
