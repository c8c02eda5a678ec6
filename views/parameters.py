"""Parameters & Memory: exact parameter counts, weight memory, KV cache, roofline speed (beside ArchLab's
measurements), memory from a checkpoint's metadata, training memory and a multi-GPU split; every figure
with the formula that produced it."""

from __future__ import annotations

from typing import Mapping

import streamlit as st

from backend.arch.memory import MAX_BATCH, MAX_CONTEXT
from backend.arch.roofline import KV_DTYPES, SPEED_DTYPES
from backend.arch.train_memory import MEASURED_FILE, OPTIMIZERS, PARALLEL, PARALLEL_LABELS, TRAIN_DTYPES
from backend.present import charts, estimates
from backend.present.tables import DTYPES, default_gpus
from backend.present.text import md
from views import _state, _ui
from views._state import choice as _choice
from views._state import float_in as _float_in
from views._state import int_in as _int_in
from views._state import parse_bool, setting

INT = st.column_config.NumberColumn(format="%,d")
GIB = st.column_config.NumberColumn(format="%,.2f")
KIB = st.column_config.NumberColumn(format="%,.1f")
MS = st.column_config.NumberColumn(format="%,.3f")
TOKS = st.column_config.NumberColumn(format="%,.1f")
RATIO = st.column_config.NumberColumn(format="%.2f")


# Spinners show only when a call takes over half a second: measured_table builds the measured shapes' meta models
# (1-3 s on a fresh server, PyTorch's import included when the warm-up has not done it yet).
@st.cache_data(show_spinner="Computing…", max_entries=256)
def _est(name: str, models: Mapping, **kwargs):
    """A backend.present.estimates function of the selected models, cached by its arguments."""
    return getattr(estimates, name)(dict(models), **kwargs)


@st.cache_data(show_spinner="Reading…", max_entries=64, ttl=60)  # a checkpoint's headers: many files
def _call(name: str, **kwargs):
    """A backend.present.estimates function of files (checkpoints, measurements), cached for a minute."""
    return getattr(estimates, name)(**kwargs)


def _how(workings: Mapping[str, str], title: str = "How this is computed") -> None:
    """An expander with each model's worked formula (text from the backend call that made the number)."""
    with st.expander(title):
        for i, (label, text) in enumerate(workings.items()):
            if i:
                st.divider()
            st.markdown(f"##### {md(label)}")
            if isinstance(text, tuple):
                for part in text:
                    st.markdown(part)
            else:
                st.markdown(text)


def _params(models, colors) -> None:
    st.header("Parameters", divider="gray")
    st.caption(
        "Exact counts from the model transformers builds from each config (on the meta device, so no "
        "memory is used). *Active per token* counts the routed experts a token actually runs "
        "(top-k of E) plus everything else; for dense models it equals the total."
    )
    df = _ui.table("params_table", models)
    cols = {c: INT for c in df.columns if df[c].dtype.kind in "iu"}
    cols["Active share"] = st.column_config.NumberColumn(format="percent")
    _ui.frame(
        df,
        "parameters",
        caption="Counts are exact integers; *Stated* is what the authors published "
        "(rounded); the last column explains any gap.",
        column_config=cols,
        width="stretch",
    )
    share = st.toggle("Components as shares of each model (%) instead of billions", key="component_share")
    left, right = st.columns(2)
    with left:
        _ui.chart(
            charts.active_bar(df, colors),
            "total vs active parameters",
            "Plain bars: all parameters stored; hatched: parameters used for each token. Log scale: "
            "one step up is 10× more.",
        )
    with right:
        _ui.chart(
            charts.components_bar(_ui.table("components_long", models), share=share),
            "parameters by component",
            "Where the parameters sit: embeddings and LM head (vocabulary × width), attention, dense "
            "MLPs, routed and shared experts, routers, norms.",
        )
    _how(_est("params_workings", models))


def _weights(models, colors) -> None:
    st.header("Weight memory", divider="gray")
    st.caption(
        "Memory to hold the weights alone: parameters × bytes per parameter (fp32 4, bf16/fp16 2, "
        "fp8 1, int4 ½ — int4 without quantization scales). 1 GiB = 2³⁰ bytes."
    )
    df = _ui.table("weights_by_dtype", models)
    _ui.frame(df, "weights by dtype", column_config={c: GIB for c in df.columns}, width="stretch")
    _ui.chart(charts.weights_bar(df, colors), "weights by dtype", "Log scale; one bar per model and dtype.")
    _how({f"{label} · {d}": text for d in DTYPES for label, text in _est("weights_workings", models, dtype=d).items()})


def _kv(models, colors) -> None:
    st.header("KV cache", divider="gray")
    st.caption(
        "While generating, each attention layer keeps keys and values of past tokens: memory grows with "
        "context length × batch. Sliding-window and chunked layers stop growing at their window; "
        "linear-attention layers keep a fixed state; MLA caches a compressed latent."
    )
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        ctx = setting(
            "ctx",
            32768,
            st.number_input,
            _int_in(1, MAX_CONTEXT),
            label="Context length (tokens)",
            min_value=1,
            max_value=MAX_CONTEXT,
            step=1024,
        )
    with c2:
        batch = setting(
            "batch",
            1,
            st.number_input,
            _int_in(1, MAX_BATCH),
            label="Batch (sequences)",
            min_value=1,
            max_value=MAX_BATCH,
            step=1,
        )
    with c3:
        kv_dtype = setting(
            "kvdtype", "bf16", st.selectbox, _choice(DTYPES[:4]), label="KV cache dtype", options=DTYPES[:4]
        )
    with c4:
        mla = setting(
            "mla",
            "latent",
            st.radio,
            _choice(("latent", "expanded")),
            label="MLA cache layout",
            options=("latent", "expanded"),
            horizontal=True,
            help="latent: what MLA-aware engines cache (512 + 64 per layer for DeepSeek V3). "
            "expanded: full keys and values after decompression (transformers' eager cache).",
        )
    df = _ui.table("kv_table", models, context=int(ctx), batch=int(batch), dtype=kv_dtype, mla_layout=mla)
    cfg = {c: (KIB if "KiB" in c else GIB) for c in df.columns if "GiB" in c or "KiB" in c}
    _ui.frame(
        df,
        "kv cache",
        caption=f"At {int(ctx):,} tokens × {int(batch)} sequence(s) in {kv_dtype}. "
        "*Per token, no window* is the cost of one token across all layers; *at this context* averages "
        "over the context (lower when windows cap some layers). *Within max context* is false where the "
        "model was not trained for this length.",
        column_config=cfg,
        width="stretch",
    )
    t1, t2, _ = st.columns([1, 1, 4])
    with t1:
        log_x = setting("logx", True, st.toggle, parse_bool, label="Log x axis")
    with t2:
        log_y = setting("logy", True, st.toggle, parse_bool, label="Log y axis")
    curve = _ui.table("kv_curve", models, batch=int(batch), dtype=kv_dtype, mla_layout=mla)
    _ui.chart(
        charts.kv_curve_chart(curve, colors, log_x, log_y, int(ctx)),
        "kv cache vs context",
        "Each line stops at the model's maximum context. A straight line on log-log axes means the cache "
        "grows in proportion to the context; a bend shows windowed or linear layers taking over.",
    )
    _how(_est("kv_workings", models, context=int(ctx), batch=int(batch), dtype=kv_dtype, mla_layout=mla))


def _devices(models, colors) -> None:
    st.header("Splitting the weights over GPUs", divider="gray")
    n_default, gib_default = default_gpus()
    st.caption(
        "Where `accelerate.infer_auto_device_map` would place each block if you loaded the model over "
        "the GPUs below, keeping every decoder layer whole. Weights only: leave room for the KV cache "
        f"and activations. Defaults: {n_default} × {gib_default:g} GiB"
        + (" (the GPUs of this machine)." if n_default and gib_default != 80.0 else ".")
    )
    c1, c2, c3 = st.columns(3)
    with c1:
        n = setting("gpus", n_default, st.number_input, _int_in(1, 64), label="GPUs", min_value=1, max_value=64, step=1)
    with c2:
        gib = setting(
            "gpugib",
            gib_default,
            st.number_input,
            _float_in(1.0, 4096.0),
            label="Memory per GPU (GiB)",
            min_value=1.0,
            max_value=4096.0,
            step=8.0,
        )
    with c3:
        dtype = setting(
            "wdtype",
            "bf16",
            st.selectbox,
            _choice(("bf16", "fp16", "fp32", "fp8")),
            label="Weights dtype",
            options=("bf16", "fp16", "fp32", "fp8"),
        )
    df = _ui.table("device_table", models, gpu_gib=(float(gib),) * int(n), dtype=dtype)
    _ui.frame(
        df,
        "device plan",
        caption="One row per model and device: weights placed (GiB) and whole "
        "decoder layers. *does not fit* collects what would spill off the GPUs.",
        column_config={
            "model": "Model",
            "device": "Device",
            "layers": "Decoder layers",
            "weights_gib": st.column_config.NumberColumn("Weights (GiB)", format="%,.2f"),
            "fits_on_gpus": "Whole model fits on the GPUs",
        },
        width="stretch",
        hide_index=True,
    )
    _ui.chart(
        charts.device_bar(df, float(gib), colors),
        "weights per device",
        "One bar per model and device; the dashed line is the memory of one GPU. Hover a bar for its decoder layers.",
    )
    with st.expander("How this is computed"):
        st.markdown(
            "Each module's bytes are `accelerate.utils.compute_module_sizes` of the meta-device model at "
            f"{dtype} (parameters × bytes per parameter). `accelerate.infer_auto_device_map` then fills GPU 0, "
            f"GPU 1, … in module order up to {float(gib):g} GiB each, never splitting a decoder layer; what "
            "does not fit goes to the CPU, then to disk. A device's bar is the sum of the module sizes placed "
            "on it."
        )


def _speed(models, colors) -> None:
    st.header("Speed estimates (roofline)", divider="gray")
    st.caption(
        "What the hardware allows at best: each operation of a step moves bytes through memory and does "
        "arithmetic, and takes the longer of bytes ÷ bandwidth and FLOPs ÷ peak FLOP/s (published figures, "
        "dense). No kernel-launch, host or communication overhead: real engines reach a fraction of this "
        "(see *Estimate vs measured* below). MLA models appear twice: as an engine runs them (latent cache, "
        "absorbed projections) and as transformers does (latent re-expanded every step)."
    )
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    with c1:
        gpu = setting(
            "sgpu",
            "h100",
            st.selectbox,
            _choice(estimates.GPU_CHOICES),
            label="GPU",
            options=estimates.GPU_CHOICES,
            format_func=_gpu_name,
        )
    with c2:
        batch = setting(
            "sbatch",
            1,
            st.number_input,
            _int_in(1, MAX_BATCH),
            label="Batch (sequences)",
            min_value=1,
            max_value=MAX_BATCH,
            step=1,
        )
    with c3:
        ctx = setting(
            "sctx",
            2048,
            st.number_input,
            _int_in(1, MAX_CONTEXT),
            label="Context (tokens)",
            min_value=1,
            max_value=MAX_CONTEXT,
            step=1024,
            help="Tokens each sequence attends to in the decode step (prompt + generated so far).",
        )
    with c4:
        prompt = setting(
            "sprompt",
            512,
            st.number_input,
            _int_in(1, MAX_CONTEXT),
            label="Prompt (tokens)",
            min_value=1,
            max_value=MAX_CONTEXT,
            step=256,
        )
    with c5:
        dtype = setting(
            "sdtype",
            "bf16",
            st.selectbox,
            _choice(tuple(SPEED_DTYPES)),
            label="Weights dtype",
            options=tuple(SPEED_DTYPES),
            help="int4 is weight-only (arithmetic in bf16), payload only.",
        )
    with c6:
        kv_opts = ("as weights",) + KV_DTYPES
        kv = setting("skv", "as weights", st.selectbox, _choice(kv_opts), label="KV cache dtype", options=kv_opts)
    custom = None
    if gpu == "custom":
        k1, k2, k3 = st.columns(3)
        with k1:
            bw = setting(
                "cbw",
                3.35,
                st.number_input,
                _float_in(0.01, 1000.0),
                label="Bandwidth (TB/s)",
                min_value=0.01,
                max_value=1000.0,
                step=0.1,
            )
        with k2:
            bf = setting(
                "cbf16",
                989.4,
                st.number_input,
                _float_in(0.1, 1_000_000.0),
                label="bf16 TFLOP/s (dense)",
                min_value=0.1,
                max_value=1_000_000.0,
                step=10.0,
            )
        with k3:
            f8 = setting(
                "cfp8",
                0.0,
                st.number_input,
                _float_in(0.0, 1_000_000.0),
                label="fp8 TFLOP/s (0: none)",
                min_value=0.0,
                max_value=1_000_000.0,
                step=10.0,
            )
        custom = (float(bw), float(bf), float(f8) or None)
    kw = dict(
        gpu=gpu,
        custom=custom,
        batch=int(batch),
        context=int(ctx),
        prompt=int(prompt),
        dtype=dtype,
        kv_dtype=None if kv == "as weights" else kv,
    )
    df = _est("speed_table", models, **kw)
    cfg = {c: MS for c in df.columns if "(ms)" in c}
    cfg.update({c: TOKS for c in df.columns if "tok/s" in c})
    cfg["Experts touched per MoE layer"] = st.column_config.NumberColumn(format="%,.2f")
    cfg["Bytes per step (GiB)"] = GIB
    _ui.frame(
        df,
        "speed estimates",
        caption="*Prefill*: time to process the prompt of every sequence (≈ time to "
        "first token). *Decode step*: one new token for every sequence at this context. *Experts touched*: "
        "expected distinct routed experts a MoE layer reads in one decode step, E·(1 − (1 − k/E)^B). "
        "*Within max context* is false where the model was not trained for this length.",
        column_config=cfg,
        width="stretch",
    )
    long = _est("speed_components", models, **kw)
    left, right = st.columns(2)
    with left:
        _ui.chart(
            charts.speed_components_bar(long, "decode step"),
            "decode step by component",
            "Where a decode step's time goes (roofline). Hatched segments are compute-bound; the rest wait on memory.",
        )
    with right:
        _ui.chart(
            charts.speed_components_bar(long, "prefill"),
            "prefill by component",
            "The same for the prefill (hatched: compute-bound): long prompts make the projections and MLPs "
            "compute-bound.",
        )
    across = _est(
        "speed_across_gpus",
        models,
        batch=int(batch),
        context=int(ctx),
        prompt=int(prompt),
        dtype=dtype,
        kv_dtype=kw["kv_dtype"],
        custom=custom,
    )
    _ui.chart(
        charts.speed_gpu_bar(across, colors),
        "decode speed per gpu",
        "Every model on every GPU of the table (MLA as an engine runs it). Crossed bars: the model's weights "
        "in this dtype do not fit in one GPU's memory, so it would need several (and this single-GPU figure "
        "is a bound, not a plan).",
    )
    _how(_est("speed_workings", models, **kw), "How this is computed (decode step, then prefill)")
    with st.expander("GPU table (published peak figures)"):
        _ui.frame(
            _call("gpus_frame"),
            "gpu table",
            caption="Dense tensor-core peaks (without 2:4 sparsity) and "
            "peak memory bandwidth from the vendors' datasheets (*Source*). A100 has no fp8 tensor cores: fp8 "
            "there means weights stored in fp8, arithmetic in bf16.",
            width="stretch",
        )


def _gpu_name(key: str) -> str:
    return "custom…" if key == "custom" else estimates.gpu_of(key).name


def _measured(models, colors) -> None:
    st.header("Estimate vs measured", divider="gray")
    df = _est("measured_table", models)
    if df.empty:
        st.info(
            "ArchLab has GPU decode measurements (bench/results/gpu-*.json) of "
            + ", ".join(_call("measured_models"))
            + "; select one of them to see its estimate beside what was "
            "measured."
        )
        return
    st.caption(
        "ArchLab's own decode measurements (bench/gpu.py: random bf16 weights, batch 1, a 32-token prompt, "
        "static cache and CUDA graph, steady rate) beside the roofline estimate for the same shape on the same "
        "GPU, with MLA run as transformers runs it (as measured). The ratio is shown as it is: nothing is "
        "fitted to it."
    )
    _ui.frame(
        df,
        "estimate vs measured",
        caption="*Estimate at measured copy bandwidth*: the same roofline with "
        "the device-to-device copy bandwidth measured in that run instead of the datasheet's (shown only where "
        "every operation is memory-bound, so time scales with bandwidth).",
        column_config={
            "Estimate (tok/s)": TOKS,
            "Measured (tok/s)": TOKS,
            "Measured / estimate": RATIO,
            "Measured + torch.compile (tok/s)": TOKS,
            "Copy bandwidth measured (TB/s)": RATIO,
            "Estimate at measured copy bandwidth (tok/s)": TOKS,
        },
        width="stretch",
        hide_index=True,
    )
    _ui.chart(
        charts.estimate_vs_measured_bar(df),
        "estimate vs measured",
        "Grey: roofline at the datasheet bandwidth; red: measured, one pair per run (named by its result "
        "file). Log scale. Hover a red bar for the ratio.",
    )
    _how(_est("measured_workings", models), "How the estimates are computed")


def _checkpoint(models, colors) -> None:
    st.header("Memory from a checkpoint", divider="gray")
    st.caption(
        "Exact bytes of a real checkpoint from its metadata only: every tensor's dtype and shape from the "
        "safetensors headers (or a GGUF file's tensor table), no weights read. fp8 weights with their block "
        "scales, packed int4 (GPTQ/AWQ), MXFP4 experts (gpt-oss) and GGUF quantizations are counted at their "
        "true size. The KV-cache dtype comes from config.json's quantization_config when it names one. "
        "Only this server's model folders are read (its Hugging Face cache, its runs folder and the folders "
        "in ARCHLAB_MODEL_DIRS)."
    )
    default = st.session_state.get("checkpoint_path", "") or ""
    c1, c2 = st.columns([3, 1])
    with c1:
        path = setting(
            "ckpt",
            "",
            st.text_input,
            str,
            url=False,
            label="Checkpoint",
            placeholder="/path/to/model, /path/to/model.gguf, or org/name in the Hugging Face cache",
            help="A folder holding *.safetensors (and config.json), one .safetensors or .gguf file, or "
            "a repo id already in the local Hugging Face cache, inside this server's model folders. "
            "Nothing is downloaded.",
        )
    with c2:
        ctx = setting(
            "ckctx",
            32768,
            st.number_input,
            _int_in(1, MAX_CONTEXT),
            label="KV context (tokens)",
            min_value=1,
            max_value=MAX_CONTEXT,
            step=1024,
        )
    path = str(path).strip()
    if not path and default:
        path = default
        st.caption(f"Using the sidebar's checkpoint folder {md(default)}.")
    if not path:
        st.info("Enter a checkpoint above (the sidebar's local checkpoint folder is used when set).")
        return
    info = _call("checkpoint_summary", path=_confined(path), context=int(ctx))
    m1, m2, m3, m4 = st.columns(4)
    hb = estimates.human_bytes
    m1.metric("Tensor bytes", hb(info["tensor_bytes"]), help=f"{info['tensor_bytes']:,} bytes")
    m2.metric(
        "Files on disk",
        hb(info["file_bytes"]),
        help=f"{info['file_bytes']:,} bytes in {info['files']} file(s), headers included",
    )
    m3.metric("Parameters", f"{info['params']:,}")
    m4.metric("Bits per parameter", f"{info['bits_per_param']:.2f}")
    st.caption(
        f"Format: {info['format']}"
        + (f", quantization: {md(info['quant_method'])}" if info["quant_method"] else "")
        + (
            f". The config builds a model of {info['config_params']:,} parameters: "
            f"{hb(info['config_bf16_bytes'])} in bf16."
            if info["config_params"]
            else "."
        )
    )
    left, right = st.columns(2)
    with left:
        _ui.frame(
            info["kinds"],
            "checkpoint by storage format",
            column_config={"Bytes": INT, "GiB": GIB, "Parameters": INT, "Bits per parameter": RATIO},
            width="stretch",
        )
    with right:
        _ui.frame(
            info["components"],
            "checkpoint by component",
            column_config={"Bytes": INT, "GiB": GIB, "Parameters": INT},
            width="stretch",
        )
    _ui.chart(
        charts.checkpoint_bar(info["kinds"]),
        "checkpoint bytes by format",
        "Scales, zero points and index tensors hold bytes but no parameters.",
    )
    if info["kv_working"]:
        st.markdown(
            f"**KV cache** in **{md(info['kv_dtype'])}** ({md(info['kv_dtype_source'])}): "
            f"{hb(info['kv_per_token'])} per token, {hb(info['kv_total'])} at {int(ctx):,} tokens."
        )
    elif info["kv_problem"]:
        st.caption(f"No KV-cache figure: {md(info['kv_problem'])}")
    else:
        st.caption("No KV-cache figure: no config.json beside the weights (GGUF files carry no transformers config).")
    _how({"weights": info["working"], **({"KV cache": info["kv_working"]} if info["kv_working"] else {})})


def _confined(raw: str) -> str:
    """A checkpoint a visitor named, resolved inside the server's model folders (``backend.live.roots``: its
    Hugging Face cache, runs folder and ARCHLAB_MODEL_DIRS); anything else is refused with one line."""
    from backend.arch.checkpoint_meta import hub_snapshot
    from backend.live.roots import confine

    snapshot = hub_snapshot(raw)
    return str(confine(snapshot if snapshot is not None else raw))


def _training(models, colors) -> None:
    st.header("Training memory", divider="gray")
    st.caption(
        "Memory on each GPU while training: weights, gradients, optimizer states (and an fp32 master copy "
        "in mixed precision), activations kept for the backward pass (all of them, or with activation "
        "checkpointing only each layer's input plus one layer being recomputed) and the loss's logits. "
        "*Batch* is the micro-batch of one data-parallel replica."
    )
    c1, c2, c3, c4, c5, c6 = st.columns(6)
    with c1:
        batch = setting(
            "tbatch",
            8,
            st.number_input,
            _int_in(1, 65536),
            label="Micro-batch (sequences)",
            min_value=1,
            max_value=65536,
            step=1,
        )
    with c2:
        seq = setting(
            "tseq",
            2048,
            st.number_input,
            _int_in(1, 1 << 20),
            label="Sequence length",
            min_value=1,
            max_value=1 << 20,
            step=512,
        )
    with c3:
        dtype = setting(
            "tdtype",
            "bf16",
            st.selectbox,
            _choice(tuple(TRAIN_DTYPES)),
            label="Weights dtype",
            options=tuple(TRAIN_DTYPES),
        )
    with c4:
        opt = setting(
            "topt",
            "adamw",
            st.selectbox,
            _choice(tuple(OPTIMIZERS)),
            label="Optimizer",
            options=tuple(OPTIMIZERS),
            format_func=lambda o: {"adamw": "AdamW", "sgd": "SGD + momentum"}[o],
        )
    with c5:
        par = setting(
            "tpar",
            "none",
            st.selectbox,
            _choice(PARALLEL),
            label="Split over GPUs",
            options=PARALLEL,
            format_func=lambda p: PARALLEL_LABELS[p],
        )
    with c6:
        n = setting(
            "tgpus",
            8,
            st.number_input,
            _int_in(1, 4096),
            label="GPUs",
            min_value=1,
            max_value=4096,
            step=1,
            disabled=par == "none",
        )
    t1, t2, t3 = st.columns(3)
    with t1:
        master = setting(
            "tmaster",
            True,
            st.toggle,
            parse_bool,
            label="fp32 master weights + fp32 optimizer states",
            help="Mixed precision: the optimizer keeps fp32 weights and states (16 bytes a parameter "
            "with AdamW and bf16 weights); off: states in the weights' dtype.",
        )
    with t2:
        ckpt = setting("tckpt", False, st.toggle, parse_bool, label="Activation checkpointing")
    with t3:
        gpu_gib = setting(
            "tgib",
            80.0,
            st.number_input,
            _float_in(1.0, 4096.0),
            label="Memory of one GPU (GiB)",
            min_value=1.0,
            max_value=4096.0,
            step=8.0,
        )
    kw = dict(
        batch=int(batch),
        seq_len=int(seq),
        dtype=dtype,
        master_fp32=bool(master),
        checkpointing=bool(ckpt),
        optimizer=opt,
        parallel=par,
        gpus=int(n) if par != "none" else 1,
    )
    df = _est("training_table", models, **kw)
    cfg = {c: GIB for c in df.columns if "(GiB)" in c}
    cfg.update({c: KIB for c in df.columns if "(KiB)" in c})
    _ui.frame(
        df,
        "training memory",
        caption="Per GPU (the busiest one under pipeline parallelism). Not counted: "
        "CUDA context, kernel workspaces, allocator fragmentation and communication buffers.",
        column_config=cfg,
        width="stretch",
    )
    _ui.chart(
        charts.training_bar(_est("training_long", models, **kw), float(gpu_gib)),
        "training memory per gpu",
        "Stacked by part; the dashed line is one GPU's memory.",
    )
    _how(_est("training_workings", models, **kw))
    measured = _call("training_measured", path=str(MEASURED_FILE))
    if measured is None:
        st.caption(
            "Measured peaks: none yet. When the trainer's benchmark writes bench/results/train-memory.json "
            "(format in backend/arch/train_memory.py), its measured peak GPU memory appears here beside "
            "the estimate for the same settings."
        )
    else:
        _ui.frame(
            measured,
            "training memory measured",
            caption="Measured peak GPU memory "
            "(torch.cuda.max_memory_allocated) of trained miniatures beside this estimate for the same "
            "settings on one GPU.",
            column_config={"Estimate (GiB)": GIB, "Measured peak (GiB)": GIB, "Measured / estimate": RATIO},
            width="stretch",
            hide_index=True,
        )


st.title("Parameters & Memory")
st.caption(
    "How big the selected models are, how much memory they need and how fast they can run: parameters, "
    "weights in each data type, the KV cache at a context length, roofline speed on common GPUs beside "
    "ArchLab's measurements, a real checkpoint's bytes, training memory and a split over GPUs. Every number "
    "comes from the published config.json, and each has a *How this is computed* expander with its formula."
)
selected = _state.selected()
if _ui.need_models(selected):
    models = {m.label: m.source for m in selected}
    colors = {m.label: m.color for m in selected}
    for section, name in (
        (_params, "the parameter counts"),
        (_weights, "the weight memory"),
        (_kv, "the KV cache"),
        (_speed, "the speed estimates"),
        (_measured, "estimate vs measured"),
        (_checkpoint, "the checkpoint memory"),
        (_training, "the training memory"),
        (_devices, "the device plan"),
    ):
        with _ui.guard(name):
            section(models, colors)
