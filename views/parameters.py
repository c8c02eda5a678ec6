"""Parameters & Memory: exact parameter counts, weight memory, KV cache and a multi-GPU split."""
from __future__ import annotations

import streamlit as st

from backend.arch.memory import MAX_BATCH, MAX_CONTEXT
from backend.present import charts
from backend.present.tables import DTYPES, default_gpus
from views import _state, _ui
from views._state import choice as _choice
from views._state import float_in as _float_in
from views._state import int_in as _int_in
from views._state import parse_bool, setting

INT = st.column_config.NumberColumn(format="%,d")
GIB = st.column_config.NumberColumn(format="%,.2f")
KIB = st.column_config.NumberColumn(format="%,.1f")


def _params(models, colors) -> None:
    st.header("Parameters", divider="gray")
    st.caption("Exact counts from the model transformers builds from each config (on the meta device, so no "
               "memory is used). *Active per token* counts the routed experts a token actually runs "
               "(top-k of E) plus everything else; for dense models it equals the total.")
    df = _ui.table("params_table", models)
    cols = {c: INT for c in df.columns if df[c].dtype.kind in "iu"}
    cols["Active share"] = st.column_config.NumberColumn(format="percent")
    _ui.frame(df, "parameters", caption="Counts are exact integers; *Stated* is what the authors published "
              "(rounded); the last column explains any gap.", column_config=cols, width="stretch")
    share = st.toggle("Components as shares of each model (%) instead of billions", key="component_share")
    left, right = st.columns(2)
    with left:
        _ui.chart(charts.active_bar(df, colors), "total vs active parameters",
                  "Plain bars: all parameters stored; hatched: parameters used for each token. Log scale: "
                  "one step up is 10× more.")
    with right:
        _ui.chart(charts.components_bar(_ui.table("components_long", models), share=share),
                  "parameters by component",
                  "Where the parameters sit: embeddings and LM head (vocabulary × width), attention, dense "
                  "MLPs, routed and shared experts, routers, norms.")


def _weights(models, colors) -> None:
    st.header("Weight memory", divider="gray")
    st.caption("Memory to hold the weights alone: parameters × bytes per parameter (fp32 4, bf16/fp16 2, "
               "fp8 1, int4 ½ — int4 without quantization scales). 1 GiB = 2³⁰ bytes.")
    df = _ui.table("weights_by_dtype", models)
    _ui.frame(df, "weights by dtype", column_config={c: GIB for c in df.columns}, width="stretch")
    _ui.chart(charts.weights_bar(df, colors), "weights by dtype", "Log scale; one bar per model and dtype.")


def _kv(models, colors) -> None:
    st.header("KV cache", divider="gray")
    st.caption("While generating, each attention layer keeps keys and values of past tokens: memory grows with "
               "context length × batch. Sliding-window and chunked layers stop growing at their window; "
               "linear-attention layers keep a fixed state; MLA caches a compressed latent.")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        ctx = setting("ctx", 32768, st.number_input, _int_in(1, MAX_CONTEXT), label="Context length (tokens)",
                      min_value=1, max_value=MAX_CONTEXT, step=1024)
    with c2:
        batch = setting("batch", 1, st.number_input, _int_in(1, MAX_BATCH), label="Batch (sequences)",
                        min_value=1, max_value=MAX_BATCH, step=1)
    with c3:
        kv_dtype = setting("kvdtype", "bf16", st.selectbox, _choice(DTYPES[:4]), label="KV cache dtype",
                           options=DTYPES[:4])
    with c4:
        mla = setting("mla", "latent", st.radio, _choice(("latent", "expanded")), label="MLA cache layout",
                      options=("latent", "expanded"), horizontal=True,
                      help="latent: what MLA-aware engines cache (512 + 64 per layer for DeepSeek V3). "
                      "expanded: full keys and values after decompression (transformers' eager cache).")
    df = _ui.table("kv_table", models, context=int(ctx), batch=int(batch), dtype=kv_dtype, mla_layout=mla)
    cfg = {c: (KIB if "KiB" in c else GIB) for c in df.columns if "GiB" in c or "KiB" in c}
    _ui.frame(df, "kv cache", caption=f"At {int(ctx):,} tokens × {int(batch)} sequence(s) in {kv_dtype}. "
              "*Per token, no window* is the cost of one token across all layers; *at this context* averages "
              "over the context (lower when windows cap some layers). *Within max context* is false where the "
              "model was not trained for this length.", column_config=cfg, width="stretch")
    t1, t2, _ = st.columns([1, 1, 4])
    with t1:
        log_x = setting("logx", True, st.toggle, parse_bool, label="Log x axis")
    with t2:
        log_y = setting("logy", True, st.toggle, parse_bool, label="Log y axis")
    curve = _ui.table("kv_curve", models, batch=int(batch), dtype=kv_dtype, mla_layout=mla)
    _ui.chart(charts.kv_curve_chart(curve, colors, log_x, log_y, int(ctx)), "kv cache vs context",
              "Each line stops at the model's maximum context. A straight line on log-log axes means the cache "
              "grows in proportion to the context; a bend shows windowed or linear layers taking over.")


def _devices(models, colors) -> None:
    st.header("Splitting the weights over GPUs", divider="gray")
    n_default, gib_default = default_gpus()
    st.caption("Where `accelerate.infer_auto_device_map` would place each block if you loaded the model over "
               "the GPUs below, keeping every decoder layer whole. Weights only: leave room for the KV cache "
               f"and activations. Defaults: {n_default} × {gib_default:g} GiB"
               + (" (the GPUs of this machine)." if n_default and gib_default != 80.0 else "."))
    c1, c2, c3 = st.columns(3)
    with c1:
        n = setting("gpus", n_default, st.number_input, _int_in(1, 64), label="GPUs", min_value=1,
                    max_value=64, step=1)
    with c2:
        gib = setting("gpugib", gib_default, st.number_input, _float_in(1.0, 4096.0), label="Memory per GPU (GiB)",
                      min_value=1.0, max_value=4096.0, step=8.0)
    with c3:
        dtype = setting("wdtype", "bf16", st.selectbox, _choice(("bf16", "fp16", "fp32", "fp8")),
                        label="Weights dtype", options=("bf16", "fp16", "fp32", "fp8"))
    df = _ui.table("device_table", models, gpu_gib=(float(gib),) * int(n), dtype=dtype)
    _ui.frame(df, "device plan", caption="One row per model and device: weights placed (GiB) and whole "
              "decoder layers. *does not fit* collects what would spill off the GPUs.",
              column_config={"model": "Model", "device": "Device", "layers": "Decoder layers",
                             "weights_gib": st.column_config.NumberColumn("Weights (GiB)", format="%,.2f"),
                             "fits_on_gpus": "Whole model fits on the GPUs"},
              width="stretch", hide_index=True)
    _ui.chart(charts.device_bar(df, float(gib), colors), "weights per device",
              "One bar per model and device; the dashed line is the memory of one GPU. Hover a bar for its "
              "decoder layers.")


st.title("Parameters & Memory")
st.caption("How big the selected models are and how much memory they need: parameters, weights in each data "
           "type, the KV cache at a context length, and a split over GPUs. Every number comes from the "
           "published config.json.")
selected = _state.selected()
if _ui.need_models(selected):
    models = {m.label: m.source for m in selected}
    colors = {m.label: m.color for m in selected}
    for section, name in ((_params, "the parameter counts"), (_weights, "the weight memory"),
                          (_kv, "the KV cache"), (_devices, "the device plan")):
        with _ui.guard(name):
            section(models, colors)
