"""Experiments: train architectures on equal footing (same data, budget and recipe) and watch them learn."""
from __future__ import annotations

import time

import streamlit as st

from backend.arch import catalog
from backend.arch.errors import ArchLabError
from backend.live import runs
from backend.present import experiments as ex
from backend.present import training_charts as tc
from backend.present.text import md
from backend.train import data as data_mod
from backend.train.recipe import PRESETS, RunSpec, parse_amount, preset
from backend.train.runner import TrainingRun, default_processes
from backend.train.store import read_run
from views import _live, _state, _ui

PARAM, KIND, KEY = "run", "train", "ex_run"
DATA = {"corpus": "Shakespeare + King James Bible (shipped, public domain)", "upload": "your own .txt file",
        "mqar": "MQAR: multi-query associative recall (synthetic)", "distance": "recall at a distance (synthetic)"}
METRICS = {"active": "non-embedding active parameters", "total": "non-embedding total parameters",
           "flops": "training FLOPs per token"}
NUM = st.column_config.NumberColumn(format="%,.0f")
LOSS = st.column_config.NumberColumn(format="%.4f")


@st.cache_data(show_spinner=False, max_entries=8)
def _upload(data: bytes, name: str):
    return data_mod.text_data(data, name)


@st.cache_data(show_spinner=False, max_entries=256)
def _preview(models: tuple, recipe_json: str):
    import json

    from backend.train.recipe import Recipe

    return ex.preview(list(models), Recipe.from_dict(json.loads(recipe_json)))


@st.cache_data(ttl=60, show_spinner=False)
def _gpus() -> int:
    from backend.live.runtime import hardware

    return len(hardware()["gpus"])


def _attached():
    """The run of ``?run=`` or of this session: a live TrainingRun, a RunRecord from disk, or None."""
    ss = st.session_state
    wanted = st.query_params.get(PARAM)
    if wanted and wanted != ss.get(KEY):
        try:
            runs.get(wanted, KIND)
            ss[KEY] = wanted
        except ArchLabError:
            try:
                read_run(wanted)
                ss[KEY] = wanted
            except ArchLabError as e:
                try:
                    runs.get(wanted, "generate")  # a Playground run's link carried over: not ours, say nothing
                except ArchLabError:
                    st.error(str(e), icon=":material/link_off:")
                del st.query_params[PARAM]
    run_id = ss.get(KEY)
    if not run_id:
        return None
    st.query_params[PARAM] = run_id
    try:
        return runs.job(run_id, KIND)
    except ArchLabError:
        try:
            return read_run(run_id)
        except ArchLabError:
            ss.pop(KEY, None)
            st.query_params.pop(PARAM, None)
            return None


def _setup() -> None:
    gpus = _gpus()
    sidebar = [m for m in _state.selected()]
    options = list(dict.fromkeys([m.id for m in sidebar] + catalog.keys()))
    sources = {m.id: m.source for m in sidebar}
    default = [m.id for m in sidebar][:8] or ["llama3-8b", "qwen3-30b-a3b"]
    chosen = st.multiselect("Architectures to train (2–8)", options, default=default, max_selections=8,
                            format_func=_state.label_of, key="ex_models",
                            help="Starts from the sidebar's selection; any catalog model can be added.")
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        kind = st.radio("Data", list(DATA), format_func=DATA.get, key="ex_data")
    with c2:
        names = list(PRESETS)
        base = st.selectbox("Recipe preset", names, index=names.index("small" if gpus else "tiny"), key="ex_preset",
                            help="tiny: for the CPU, a comparison in minutes. small: one GPU, about 5 M active "
                            "parameters and 20 M tokens each. zoo: the recipe of the shipped trained miniatures.")
    r0 = preset(base)
    with c3:
        metric = st.selectbox("Matched budget", list(METRICS), format_func=METRICS.get, key="ex_metric",
                              help="Every miniature is sized to this budget within ±5 % (hidden size, then the "
                              "MLP/expert widths), keeping what defines its architecture.")
    c1, c2, c3 = st.columns(3)
    with c1:
        budget_text = st.text_input("Budget per model", value=f"{r0.budget / 1e6:g}M", key=f"ex_budget_{base}",
                                    help="e.g. 250k, 1M, 5M (FLOPs per token: e.g. 30M)")
    with c2:
        tokens_text = st.text_input("Training tokens per model", value=f"{r0.tokens / 1e6:g}M", key=f"ex_tokens_{base}")
    with c3:
        device = st.selectbox("Device", ["auto", "cpu"] + (["cuda"] if gpus else []), key="ex_device",
                              help="auto: the GPU when there is one; with several GPUs, one model per GPU in worker processes, "
                              "at the same time. Otherwise the models take turns, step by step, on one device.")
    with st.expander("Recipe details (shared by every model)"):
        d1, d2, d3, d4 = st.columns(4)
        batch = d1.number_input("Batch (sequences)", 1, 4096, r0.batch, key=f"ex_batch_{base}")
        seq = d2.number_input("Sequence length", 16, 8192, r0.seq_len, step=16, key=f"ex_seq_{base}")
        layers = d3.number_input("Target depth (layers)", 1, 64, r0.layers, key=f"ex_layers_{base}",
                                 help="Whole periods of each model's layer pattern are kept (Gemma 3: 6).")
        seed = d4.number_input("Seed", 0, 2**31 - 1, r0.seed, key="ex_seed")
        e1, e2, e3, _ = st.columns(4)
        lr = e1.number_input("Peak learning rate", 1e-5, 1.0, r0.lr, format="%.4f", key=f"ex_lr_{base}")
        warmup = e2.number_input("Warm-up (share of steps)", 0.0, 0.5, r0.warmup, key=f"ex_warm_{base}")
        precision = e3.selectbox("Precision", ["auto", "fp32", "bf16"], key="ex_precision",
                                 help="auto: bf16 autocast on a GPU, fp32 on the CPU")
    upload = None
    if kind == "upload":
        f = st.file_uploader("UTF-8 text (.txt)", type=["txt"], key="ex_file",
                             help=f"{data_mod.MIN_UPLOAD_CHARS:,} characters to {data_mod.MAX_UPLOAD_BYTES / 1e6:g} MB; "
                             "the last 5 % of its lines is held out for validation.")
        if f is None:
            st.info("Upload a .txt file to train on it.")
            return
        with st.spinner("Tokenizing the upload…"):
            upload = _upload(f.getvalue(), f.name)
        st.caption(md(upload.describe()))
    if len(chosen) < 1:
        st.info("Choose at least one architecture (two or more to compare).")
        return
    recipe = preset(base, data=kind, budget=parse_amount(budget_text), budget_metric=metric,
                    tokens=int(parse_amount(tokens_text)), batch=int(batch), seq_len=int(seq), layers=int(layers),
                    seed=int(seed), lr=float(lr), warmup=float(warmup), precision=precision)
    models = tuple(sources.get(k, k) for k in chosen)
    import json

    with st.spinner("Sizing the miniatures to the budget…"):
        pv = _preview(models, json.dumps(recipe.as_dict(), sort_keys=True))
    st.subheader("The miniatures this budget gives")
    st.caption(f"{recipe.steps:,} steps of {recipe.batch} × {recipe.seq_len} tokens each; budget "
               f"{recipe.budget:,.0f} {METRICS[metric]} (±5 %). Exact counts from the model transformers builds.")
    bad = pv[pv["error"] != ""] if "error" in pv else pv.iloc[0:0]
    for _, row in bad.iterrows():
        st.error(f"{md(row['model'])}: {md(row['error'])}")
    shown = pv.drop(columns=["error"]).dropna(axis=1, how="all") if "error" in pv else pv
    _ui.frame(shown[pv["error"] == ""] if "error" in pv else shown, "experiment preview", hide_index=True,
              width="stretch", column_config={c: NUM for c in ("total params", "active params", "non-embedding active",
                                                               "non-embedding total", "budget value",
                                                               "training FLOPs / token")}
              | {"off target (%)": st.column_config.NumberColumn(format="%+.1f")})
    ok = [m for m, e in zip(models, pv["error"]) if not e]
    if st.button("Train", type="primary", icon=":material/play_arrow:", disabled=not ok):
        with _ui.guard("starting the training run"):
            spec = RunSpec(tuple(ok), recipe, device).validate()
            if upload is not None:
                data_mod.check_enough(upload, recipe.tokens, recipe.seq_len)
            with runs.admit(_live.session_id(), KIND) as ticket:
                run = TrainingRun(spec, run_id=ticket.id, upload=upload,
                                  processes=default_processes(device, len(ok))).start()
                ticket.register(run)
            st.session_state[KEY] = ticket.id
            st.query_params[PARAM] = ticket.id
            st.rerun()


def _link(run_id: str) -> str:
    base = (st.context.url or "").split("?")[0].rstrip("/").removesuffix("/experiments")
    return f"{base}/experiments?{PARAM}={run_id}"


def _draw(f: ex.Frames, live: bool, tick: int, status: str, message: str) -> None:
    """Status, progress, curves and router charts of a run (charts without export buttons while live)."""
    if status == "failed":
        st.error(md(message))
    elif message:
        st.info(md(message))
    colors = _colors(f)
    prog = ex.progress_table(f)
    if not prog.empty:
        st.dataframe(prog.drop(columns=[c for c in ("error", "device") if c in prog and not prog[c].astype(bool).any()]),
                     hide_index=True,
                     width="stretch", column_config={
                         "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                         "tokens": NUM, "train loss": LOSS, "validation loss": LOSS, "tokens/s": NUM,
                         "elapsed (s)": st.column_config.NumberColumn(format="%.0f"),
                         "ETA (s)": st.column_config.NumberColumn(format="%.0f"),
                         "peak GPU memory (MiB)": st.column_config.NumberColumn(format="%,.1f")},
                     key=f"ex_prog_{tick}" if live else "ex_prog")
    if f.metrics.empty:
        st.caption("Waiting for the first steps…")
        return
    show = _ui.chart if not live else (lambda fig, name, caption="": (
        st.plotly_chart(fig, width="stretch", config=_ui.PLOTLY_CONFIG, key=f"live_{tick}_{_ui._slug(name)}"),
        st.caption(caption)))
    show(tc.loss_curves(ex.smoothed(f.metrics), colors, f.labels), "learning curves",
         "Every model read the same batches in the same order (see the hashes below). Left: training loss per "
         "step (faint) and its moving average; right: loss on held-out text every few steps"
         + (" (the final point uses the whole held-out split)." if not live else "."))
    if not f.routing.empty:
        show(tc.router_curves(f.routing, colors, f.labels), "routers while training",
             "For each mixture-of-experts model: the most loaded expert over the mean load, the routers' normalized "
             "entropy, experts no token chose, and the balancing loss (routers that use an auxiliary loss). "
             "DeepSeek-style routers balance with a per-expert bias instead (aux-loss-free). Expert collapse shows "
             "as max/mean climbing and entropy falling.")


def _colors(f: ex.Frames) -> dict:
    from backend.present.colors import model_colors

    keys = list(f.labels)
    base = model_colors([k.split("#")[0] for k in keys])
    return {k: base[k.split("#")[0]] for k in keys}


def _final(f: ex.Frames) -> None:
    res = ex.results_table(f)
    if not res.empty:
        st.subheader("Results")
        _ui.frame(res, "training results", hide_index=True, width="stretch",
                  column_config={"validation loss": LOSS, "perplexity": st.column_config.NumberColumn(format="%.2f"),
                                 "tokens/s": NUM, "non-embedding active params": NUM, "active params": NUM,
                                 "total params": NUM, "tokens": NUM,
                                 "training time (s)": st.column_config.NumberColumn(format="%.1f")},
                  caption="Validation loss on the whole held-out split (the last 5 % of every document), perplexity "
                  "= e^loss. Probe runs: mean accuracy over the settings below. Checkpoints are in the run folder "
                  "and load in the Playground and Routing pages (Model size → trained miniature (run …)).")
    grids = {f.labels.get(m, m): ex.probe_grid(f.probes, m) for m in f.labels} if not f.probes.empty else {}
    grids = {k: v for k, v in grids.items() if not v.empty}
    if grids:
        _ui.chart(tc.probe_heatmaps(grids, "Associative recall accuracy (held-out examples)"), "probe accuracy",
                  "Accuracy on the answers only, per number of key-value pairs and sequence length (lengths up to "
                  "the training sequence length).")
        _ui.frame(f.probes, "probe accuracy", hide_index=True, width="stretch")
    if not f.probes.empty and f.probes["distance"].notna().any():
        _ui.chart(tc.distance_lines(f.probes, _colors(f), f.labels), "recall at a distance",
                  "Accuracy by how far back the key was; a sliding-window or chunked layer sees only its window, but "
                  "the full-attention layers of a hybrid can still reach further.")


def _show(run) -> None:
    live = isinstance(run, TrainingRun)
    view = run.view() if live else None
    f = ex.frames(view) if live else ex.frames_from_record(run)
    run_id = run.id
    status = view.status if live else run.status.get("status", "finished")
    message = view.message if live else run.status.get("message", "")
    c1, c2 = st.columns([4, 1])
    with c1:
        st.caption(f":material/link: Link to this run: {md(_link(run_id))}",
                   help="Opens this run from any tab while the server keeps it; the run goes on when this tab "
                   "closes. Anyone with the link can watch and stop it.")
    with c2:
        if st.button("New experiment", icon=":material/add:"):
            st.session_state.pop(KEY, None)
            st.query_params.pop(PARAM, None)
            st.rerun()
    if live and run.running:
        if st.button("Stop", icon=":material/stop:", help="Stops before the next step; checkpoints are kept."):
            run.cancel()
    holder = st.empty()
    if live and run.running:
        tick, seen = 0, -1
        while run.running:
            v = run.view()
            if v.version != seen:
                seen, tick = v.version, tick + 1
                with holder.container():
                    _draw(ex.frames(v), True, tick, v.status, v.message)
            time.sleep(1.0)
        st.rerun()
    with holder.container():
        _draw(f, False, 0, status, message)
    _final(f)
    st.subheader("Equal footing")
    st.caption("What every model shared, as the run recorded it, and the SHA-256 of the batches each model "
               "actually consumed: equal hashes mean byte-identical batch streams.")
    shared = ex.recipe_table(view if live else run)
    _ui.frame(shared, "shared recipe", hide_index=True, width="stretch", height=38 + 35 * len(shared))
    h = ex.hash_table(f)
    if not h.empty:
        _ui.frame(h, "batch stream hashes", hide_index=True, width="stretch")


def _leaderboard() -> None:
    board = ex.leaderboard()
    if board.empty:
        st.info("No trained zoo is shipped here (assets/zoo). Build it with `python -m backend train --zoo` on a GPU.")
        return
    st.caption("Every catalog architecture's miniature, trained on the shipped corpus under one recorded recipe (the "
               "table below): the same data, batches, optimizer, schedule, precision and a matched budget of "
               "non-embedding active parameters; each row's loss is on the held-out split, over the seeds that "
               "finished. Neighbours whose seed ranges overlap are marked *within noise*: this experiment does not "
               "tell them apart. MoE models hold more parameters in total at the same active budget.")
    _ui.chart(tc.leaderboard_chart(board), "zoo leaderboard",
              "Purple: mixture-of-experts miniatures; blue: dense. The bars span the best to the worst seed.")
    _ui.frame(board, "zoo leaderboard", hide_index=True, width="stretch",
              column_config={"validation loss (mean)": LOSS, "validation loss (std over seeds)": LOSS,
                             "best seed": LOSS, "worst seed": LOSS,
                             "perplexity": st.column_config.NumberColumn(format="%.1f"),
                             "MQAR accuracy (mean)": st.column_config.NumberColumn(format="percent"),
                             "non-embedding active params": NUM, "active params": NUM, "total params": NUM},
              caption="Sort by any column. MQAR accuracy: the same miniatures trained on multi-query associative "
              "recall with a third of the tokens. At this size and length no architecture learned the task: the best "
              f"reached {board['MQAR accuracy (mean)'].max():.1%} where guessing gives 0.1 %, so that column does not "
              "rank them. Notes say where a miniature has fewer routed experts than the real model (the zoo caps "
              "each at 1.5 M parameters to ship within 40 MB).")
    with st.expander("The zoo's recipe"):
        _ui.frame(ex.zoo_recipe_table(), "zoo recipe", hide_index=True, width="stretch")


st.title("Experiments")
st.caption("Train several architectures on equal footing: the same data, the same order of batches, the same "
           "optimizer, schedule, batch, sequence length, token budget, precision and seed, each miniature sized to "
           "the same parameter or FLOP budget. Only the architecture differs. The runs folder keeps the curves, "
           "the final table and every checkpoint.")

with _ui.guard("the experiments page"):
    attached = _attached()
    if attached is None:
        train_tab, board_tab = st.tabs(["Train an experiment", "Leaderboard of the trained zoo"])
        with train_tab:
            _setup()
        with board_tab:
            _leaderboard()
    else:
        _show(attached)
