"""Playground: one prompt, up to four models side by side, tokens streamed as they are generated."""

from __future__ import annotations

import streamlit as st

from backend.arch import libs
from backend.live import runtime
from backend.live.generation import MAX_NEW_TOKENS, GenerationSettings
from backend.live.runs import valid_id
from backend.present import playground
from backend.present.colors import model_colors
from backend.present.playground import LiveRun, SlotModel
from backend.present.text import md, swatch
from views import _live, _state, _ui
from views._state import choice, float_in, int_in, parse_bool, setting

MS = st.column_config.NumberColumn(format="%,.1f")
RUNS = "pg_train_runs"  # training run ids this session started or attached to (see _session_runs)
DEFAULT_PROMPT = "The king said"
MIB = st.column_config.NumberColumn(format="%,.3f")


@st.cache_data(ttl=60, show_spinner=False)
def _hardware() -> dict:
    return runtime.hardware()


def _session_runs() -> list[str]:
    """Training runs this session started or attached to: the Experiments page's current run (remembered
    here once seen), and a run named by ``?mode=run:<id>`` (a link is an attachment, as on that page)."""
    ss = st.session_state
    seen = ss.setdefault(RUNS, [])
    wanted = [ss.get("ex_run")]
    if "mode" not in ss:  # first use of the setting: the URL may name a run
        wanted.append(playground.run_mode(st.query_params.get("mode", "")))
    for run_id in wanted:
        if run_id and valid_id(run_id) and run_id not in seen:
            seen.append(run_id)
    return list(seen)


def _settings(hw: dict) -> dict:
    """The settings widgets; returns their values."""
    modes = playground.mode_options(st.session_state.get("checkpoint_path", ""), _session_runs())
    devices = playground.device_options(hw)
    c = st.columns(4)
    with c[0]:
        mode = setting(
            "mode",
            playground.TRAINED,
            st.selectbox,
            choice(modes),
            label="Model",
            options=modes,
            format_func=playground.mode_label,
            help="Trained miniature (the default): each architecture at a tiny width, trained on the "
            "shipped corpus (Shakespeare + King James Bible) with one recipe, so it writes corpus-style "
            "English. Random-weight miniatures keep the same architecture (attention kind, layer "
            "pattern, MoE shape) with untrained weights: gibberish, but their speed and routing "
            "mechanics are the architecture's. Full size builds the real shape with random weights, "
            "where memory allows. Full width, fewer layers builds the real shape with only its first k "
            "decoder layers, for models too large for this machine: the decode step is then timed at k "
            "and k − 1 layers and extrapolated to full depth. Pretrained loads the sidebar's checkpoint "
            "folder (safetensors). Trained miniatures (run …) load the checkpoints a training run of "
            "this session left (Experiments page).",
        )
        layers = playground.DEFAULT_LAYERS
        if mode == "layers":
            layers = setting(
                "layers",
                playground.DEFAULT_LAYERS,
                st.number_input,
                int_in(2, 1000),
                label="Layers run (k)",
                min_value=2,
                max_value=1000,
                step=1,
                help="The first k decoder layers at full width (a model with fewer runs whole). "
                "Pick k past any prefix of special layers (DeepSeek-V3 and Kimi K2: 3 and 1 dense "
                "layers first), so that layer k is like the layers it stands for.",
            )
    with c[1]:
        device = setting(
            "device",
            "auto",
            st.selectbox,
            choice(devices),
            label="Device",
            options=devices,
            format_func=playground.DEVICE_LABELS.get,
            help="Only what this server has. auto: one GPU if the model fits, else all GPUs, else CPU.",
        )
    with c[2]:
        max_new = setting(
            "tokens",
            48,
            st.number_input,
            int_in(1, MAX_NEW_TOKENS),
            label="Max new tokens",
            min_value=1,
            max_value=MAX_NEW_TOKENS,
            step=16,
        )
    with c[3]:
        compile_ = False
        if hw.get("gpus"):
            compile_ = setting(
                "compile",
                False,
                st.checkbox,
                parse_bool,
                label="Compile decode step",
                help="GPU fast path: torch.compile the decode step (slow first run, faster after).",
            )
    c = st.columns(4)
    with c[0]:
        temp = setting(
            "temp",
            0.0,
            st.number_input,
            float_in(0.0, 10.0),
            label="Temperature",
            min_value=0.0,
            max_value=10.0,
            step=0.1,
            help="0 = greedy (always the most likely token).",
        )
    with c[1]:
        top_p = setting(
            "topp",
            1.0,
            st.number_input,
            float_in(0.01, 1.0),
            label="Top-p",
            min_value=0.01,
            max_value=1.0,
            step=0.05,
            help="Sample from the smallest set of tokens holding this probability mass (with temperature > 0).",
        )
    with c[2]:
        seed = setting(
            "seed",
            0,
            st.number_input,
            int_in(0, 2**31 - 1),
            label="Seed",
            min_value=0,
            max_value=2**31 - 1,
            step=1,
            help="Seed of the sampler (temperature > 0).",
        )
    with c[3]:
        stop = setting(
            "stop",
            "",
            st.text_input,
            label="Stop strings",
            placeholder=r"e.g. \n, ###",
            help=r"Comma-separated; \n is a newline, \t a tab, \, a comma.",
        )
    return dict(
        mode=mode,
        device=device,
        max_new=max_new,
        temp=temp,
        top_p=top_p,
        seed=seed,
        stop=stop,
        compile=compile_,
        layers=int(layers),
    )


def _mode_note(models: list[_state.Model], mode: str) -> None:
    """One line on what the chosen mode runs, where it is not simply the selected models as chosen."""
    if mode == playground.TRAINED:
        note = playground.fallback_note([(m.id, m.source) for m in models], [md(m.label) for m in models])
        if note:
            st.info(note, icon=":material/info:")
    elif playground.run_mode(mode) is not None:
        st.caption("Runs this training run's trained checkpoints (up to four), whatever the sidebar selects.")


def _start(models: list[_state.Model], prompt: str, s: dict) -> None:
    """Validate the settings and start a run (errors shown by the caller's guard)."""
    checkpoint = st.session_state.get("checkpoint_path", "")
    runs = playground.requests_for(
        [(m.id, m.source) for m in models], s["mode"], s["device"], bool(s["compile"]), checkpoint, s["layers"]
    )
    colors = model_colors([m.id for m in models] + [i for i, _, _ in runs])
    slots = [
        SlotModel(
            i,
            playground.model_label(i) or _state.label_of(i),
            colors[i],
            not playground.is_dense(src),
            playground.full_depth(src) if s["mode"] == "layers" else None,
        )
        for i, src, _ in runs
    ]
    settings = GenerationSettings(
        max_new_tokens=int(s["max_new"]),
        temperature=float(s["temp"]),
        top_p=float(s["top_p"]),
        stop=playground.parse_stop(s["stop"]),
        seed=int(s["seed"]),
    )
    _live.start(slots, [r for _, _, r in runs], prompt, settings)


def _column(live: LiveRun, slot: int, v: playground.SlotView) -> None:
    """One model's column: name, progress, timings, device, streamed text."""
    with st.container(horizontal=True, gap="small"):  # the label is a visitor's text: never inside HTML
        st.markdown(swatch(live.slots[slot].color), unsafe_allow_html=True, width="content")
        st.markdown(f"**{md(playground.display_label(live, slot))}**")
    if v.status == "failed":
        st.error(md(v.error))
        return
    st.progress(v.progress, text=v.progress_text)
    facts = " · ".join(p for p in (v.summary, f"on `{v.device}`" if v.device else "") if p)
    if facts or v.fast_path:
        with st.container(horizontal=True, gap="small"):
            if facts:
                st.markdown(facts)
            if v.fast_path:
                st.badge("GPU fast path", icon=":material/bolt:", color="green")
    st.code(v.text or " ", language=None, wrap_lines=True, height=260)


def _empty_columns(models: list[_state.Model], mode: str) -> None:
    """Before the first run: the columns the selected models will stream into (also has the browser load its
    code-block component now, not on the first token: 0.4 s measured in bench/ui.py)."""
    if mode == "pretrained" or playground.run_mode(mode) is not None:
        return
    for m, col in zip(models, st.columns(min(len(models), playground.MAX_COLUMNS) or 1, border=True)):
        runs_as = mode if mode != playground.TRAINED or playground.has_trained(m.source) else playground.FALLBACK_SIZE
        with col:
            with st.container(horizontal=True, gap="small"):  # the label is a visitor's text: never inside HTML
                st.markdown(swatch(m.color), unsafe_allow_html=True, width="content")
                st.markdown(f"**{md(m.label)}** ({playground.mode_label(runs_as)})")
            st.code(" ", language=None, wrap_lines=True, height=80)


def _depth(live: LiveRun) -> None:
    """Full width, fewer layers: time one layer more and one less, show the extrapolation."""
    if playground.depth_pending(live):
        with st.spinner("Timing the decode step at k and k − 1 layers…"):
            playground.measure_depth(live)
        st.rerun()  # the columns show the extrapolated speed too
    table = playground.depth_table(live)
    if table.empty:
        return
    st.subheader("Extrapolated to full depth")
    _ui.frame(
        table,
        "playground depth extrapolation",
        hide_index=True,
        width="stretch",
        column_config={c: MS for c in table.columns if "(ms)" in c or "tok/s" in c},
        caption="Each model ran at full width with its first k decoder layers (random weights). Its decode "
        "step was then timed alone at k layers and at k − 1 (a view sharing the same weights), as it "
        "decodes here (CUDA graph on a GPU). Full depth ≈ step(k) + (layers − k) × (step(k) − step(k − 1)). "
        "An estimate, not a measurement: it holds when the layers past k are like layer k.",
    )


def _results(live: LiveRun) -> None:
    if live.done:
        _depth(live)
    st.subheader("Timings")
    _ui.frame(
        playground.stats_table(live),
        "playground timings",
        hide_index=True,
        width="stretch",
        caption="TTFT: prompt tokenization + prefill + first token. tok/s: decode speed after the first "
        "token (tokens after the first ÷ time after the first). Reason: length (max tokens), stop "
        "(a stop string), eos, cancelled — or why the model failed. The models run at the same time and share "
        "this server's cores, so each slows the others: run one model alone to time it.",
        column_config={"TTFT (ms)": MS, "tok/s": MS, "total (s)": st.column_config.NumberColumn(format="%.3f")},
    )
    mem = playground.memory_table(live)
    if mem.empty:
        return
    st.subheader("Memory of the loaded models")
    shown = mem.drop(columns=["predicted_bytes", "measured_bytes"])
    _ui.frame(
        shown,
        "playground memory",
        csv=mem,
        hide_index=True,
        width="stretch",
        column_config={c: MIB for c in shown.columns if "MiB" in c},
        caption="Predicted from the config (parameters × bytes of the dtype; the GPU fast path's static KV "
        "cache) beside what the tensors and the GPU allocator report. 1 MiB = 2²⁰ bytes; the CSV has bytes.",
    )
    place = playground.placement_table(live)
    if not place.empty:
        st.subheader("Device map vs where the weights are")
        shown = place.drop(columns=["planned_bytes", "actual_bytes"])
        _ui.frame(
            shown,
            "playground placement",
            csv=place,
            hide_index=True,
            width="stretch",
            column_config={c: MIB for c in shown.columns if "MiB" in c},
            caption="The device map the model was loaded with (one device, or accelerate's split over all "
            "GPUs) beside the bytes of the parameters actually on each device. Misplaced: parameters found "
            "on another device than their module's entry in the map.",
        )


def _page() -> None:
    hw = _hardware()
    models = _state.selected()
    prompt = setting(
        "pg_prompt",
        DEFAULT_PROMPT,
        st.text_area,
        url=False,
        label="Prompt",
        height=100,
        help="Kept while you switch pages. Every model gets the same prompt.",
    )
    s = _settings(hw)
    _mode_note(models, s["mode"])
    if not libs.models_loaded():  # before Generate is drawn: a first click would wait for this import
        with st.spinner("Loading transformers' model code (once after the server starts)…"):
            libs.load_models()
    if s["mode"] == playground.TRAINED and models:  # load them while the visitor reads: Generate finds them ready
        runs = playground.requests_for([(m.id, m.source) for m in models], s["mode"], s["device"], bool(s["compile"]))
        playground.prefetch([r for _, _, r in runs], hw)
    _run(models, prompt, s)


@st.fragment  # a click on Generate or Stop reruns this part only: the run starts, and shows, sooner
def _run(models: list[_state.Model], prompt: str, s: dict) -> None:
    """Generate, Stop and the run: its columns, then its tables."""
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        generate = st.button("Generate", type="primary", icon=":material/play_arrow:")
        stop_slot = st.empty()  # drawn after a new run starts, so Stop is live during it
        st.page_link(
            "views/routing.py", label="Watch the experts live on the Routing page", icon=":material/alt_route:"
        )
    if len(models) > playground.MAX_COLUMNS and s["mode"] != "pretrained" and playground.run_mode(s["mode"]) is None:
        st.caption(f"Runs the first {playground.MAX_COLUMNS} selected models.")
    if generate:
        with _ui.guard("starting the run"):
            _start(models, prompt, s)
    live = _live.current()
    if stop_slot.button("Stop", icon=":material/stop:", disabled=live is None or live.done) and live is not None:
        live.cancel()
    live = _live.current()
    if live is None:
        st.info("Type a prompt and press **Generate**.")
        _empty_columns(models, s["mode"])
        return
    _live.show_link(live, "playground")
    holders = [col.empty() for col in st.columns(len(live.slots), border=True)]

    drawn: dict[int, playground.SlotView] = {}

    def redraw() -> None:  # only the columns that changed
        for slot, holder in enumerate(holders):
            view = playground.slot_view(live, slot)
            if drawn.get(slot) != view:
                drawn[slot] = view
                with holder.container():
                    _column(live, slot, view)

    redraw()
    _live.follow(live, redraw, every_s=0.25)
    _results(live)


st.title("Playground")
st.caption(
    "One prompt, up to four models side by side, each streaming its own tokens. By default each model is "
    "its **trained miniature**: the architecture at a tiny width, trained on the shipped corpus "
    "(Shakespeare + King James Bible), so it answers in corpus-style English. Under **Model** you can pick "
    "the random-weight miniatures or full-size shapes instead: their text is gibberish by design, but they "
    "show each architecture's speed (time to first token, tokens per second) and, for mixture-of-experts "
    "models, which experts every token goes to. Load a pretrained checkpoint folder (sidebar) for a real "
    "model's text."
)
if _ui.need_models(_state.selected()) or st.session_state.get("checkpoint_path") or _session_runs():
    with _ui.guard("the playground"):
        _page()
