"""Experiments: train architectures on equal footing (same data, budget and recipe) and watch them learn."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import streamlit as st

from backend.arch import catalog
from backend.arch.errors import ArchLabError
from backend.live import runs
from backend.present import ablation as ab
from backend.present import experiments as ex
from backend.present import findings as fd
from backend.present import training_charts as tc
from backend.present.text import md
from backend.train import data as data_mod
from backend.train.recipe import RunSpec
from backend.train.runner import TrainingRun, default_processes
from backend.train.store import read_run
from views import _ablation, _live, _state, _train_form, _ui

PARAM, KIND, KEY = "run", "train", "ex_run"
MODES = {"compare": "Compare architectures", "ablation": "Ablation: change one component"}
NUM, LOSS = _train_form.NUM, _train_form.LOSS


@st.cache_data(show_spinner=False, max_entries=256)
def _preview(models: tuple, recipe_json: str):
    import json

    from backend.train.recipe import Recipe

    return ex.preview(list(models), Recipe.from_dict(json.loads(recipe_json)))


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


def _mode() -> str:
    """The mode switch (compare architectures / ablation), mirrored to ``?mode=``."""
    ss = st.session_state
    wanted = st.query_params.get("mode")
    if wanted in MODES and wanted != ss.get("ex_mode_url"):
        ss["ex_mode"] = wanted  # a link (e.g. an ablation's ?mode=ablation&spec=...) picks the mode
    ss["ex_mode_url"] = wanted
    ss.setdefault("ex_mode", "compare")
    mode = (
        st.segmented_control(
            "Mode", list(MODES), format_func=MODES.get, key="ex_mode", required=True, label_visibility="collapsed"
        )
        or "compare"
    )
    if mode == "compare":
        st.query_params.pop("mode", None)
        for k in (_ablation.SPEC_PARAM, *fd.FINDING_PARAMS):
            st.query_params.pop(k, None)
    else:
        st.query_params["mode"] = mode
    ss["ex_mode_url"] = st.query_params.get("mode")
    return mode


def _setup() -> None:
    sidebar = [m for m in _state.selected()]
    options = list(dict.fromkeys([m.id for m in sidebar] + catalog.keys()))
    sources = {m.id: m.source for m in sidebar}
    default = [m.id for m in sidebar][:8] or ["llama3-8b", "qwen3-30b-a3b"]
    chosen = st.multiselect(
        "Architectures to train (2–8)",
        options,
        default=default,
        max_selections=8,
        format_func=_state.label_of,
        key="ex_models",
        help="Starts from the sidebar's selection; any catalog model can be added.",
    )
    try:
        form = _train_form.inputs("ex", per_run=True)
    except ArchLabError as e:
        st.error(md(e))
        return
    if form is None:
        return
    if len(chosen) < 1:
        st.info("Choose at least one architecture (two or more to compare).")
        return
    recipe = form.recipe
    models = tuple(sources.get(k, k) for k in chosen)
    import json

    with st.spinner("Sizing the miniatures to the budget…"):
        pv = _preview(models, json.dumps(recipe.as_dict(), sort_keys=True))
    st.subheader("The miniatures this budget gives")
    st.caption(
        f"{recipe.steps:,} steps of {recipe.batch} × {recipe.seq_len} tokens each; budget "
        f"{recipe.budget:,.0f} {_train_form.METRICS[recipe.budget_metric]} (±5 %). Exact counts from the "
        "model transformers builds."
    )
    bad = pv[pv["error"] != ""] if "error" in pv else pv.iloc[0:0]
    for _, row in bad.iterrows():
        st.error(f"{md(row['model'])}: {md(row['error'])}")
    shown = pv.drop(columns=["error"]).dropna(axis=1, how="all") if "error" in pv else pv
    _ui.frame(
        shown[pv["error"] == ""] if "error" in pv else shown,
        "experiment preview",
        hide_index=True,
        width="stretch",
        column_config=PARAM_COLUMNS,
    )
    ok = [m for m, e in zip(models, pv["error"]) if not e]
    if st.button("Train", type="primary", icon=":material/play_arrow:", disabled=not ok):
        _start(RunSpec(tuple(ok), recipe, form.device), form.upload)


#: how the sized parameters of a preview are shown
PARAM_COLUMNS = {
    c: NUM
    for c in (
        "total params",
        "active params",
        "non-embedding active",
        "non-embedding total",
        "budget value",
        "training FLOPs / token",
    )
} | {"off target (%)": st.column_config.NumberColumn(format="%+.1f")}


def _start(spec: RunSpec, upload, sizer=None, before=None) -> None:
    """Start a training run as this session's run (within its quota) and show it: ``sizer`` sizes the models
    together (an ablation's), ``before(run)`` is called before it starts (e.g. to record the ablation)."""
    with _ui.guard("starting the training run"):
        spec = spec.validate()
        if upload is not None:
            data_mod.check_enough(upload, spec.recipe.tokens, spec.recipe.seq_len)
        with runs.admit(_live.session_id(), KIND) as ticket:
            run = TrainingRun(
                spec,
                run_id=ticket.id,
                upload=upload,
                sizer=sizer,
                processes=default_processes(spec.device, len(spec.models)),
            )
            if before is not None:
                before(run)
            run.start()
            ticket.register(run)
        st.session_state[KEY] = ticket.id
        st.query_params[PARAM] = ticket.id
        st.rerun()


def _link(run_id: str) -> str:
    base = (st.context.url or "").split("?")[0].rstrip("/").removesuffix("/experiments")
    return f"{base}/experiments?{PARAM}={run_id}"


def _draw(f: ex.Frames, live: bool, tick: int, status: str, message: str, styles: Optional[ab.Styles] = None) -> None:
    """Status, progress, curves, stability and router charts of a run (charts without export buttons while live).
    ``styles``: an ablation's (one colour per cell, a dash per learning rate)."""
    if status == "failed":
        st.error(md(message))
    elif message:
        st.info(md(message))
    colors = styles.colors if styles else _colors(f)
    dashes, groups = (styles.dashes, styles.groups) if styles else (None, None)
    prog = ex.progress_table(f)
    if not prog.empty:
        st.dataframe(
            prog.drop(columns=[c for c in ("error", "device") if c in prog and not prog[c].astype(bool).any()]),
            hide_index=True,
            width="stretch",
            column_config={
                "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0),
                "tokens": NUM,
                "train loss": LOSS,
                "validation loss": LOSS,
                "tokens/s": NUM,
                "elapsed (s)": st.column_config.NumberColumn(format="%.0f"),
                "ETA (s)": st.column_config.NumberColumn(format="%.0f"),
                "peak GPU memory (MiB)": st.column_config.NumberColumn(format="%,.1f"),
            },
            key=f"ex_prog_{tick}" if live else "ex_prog",
        )
    if f.metrics.empty:
        st.caption("Waiting for the first steps…")
        return
    show = (
        _ui.chart
        if not live
        else (
            lambda fig, name, caption="": (
                st.plotly_chart(fig, width="stretch", config=_ui.PLOTLY_CONFIG, key=f"live_{tick}_{_ui._slug(name)}"),
                st.caption(caption),
            )
        )
    )
    same = (
        (
            "Runs of one seed read the same batches in the same order (see the hashes below). Colour: the cell "
            f"(lighter for later seeds); dash: the learning rate ({styles.legend()}); hover a line for its run. "
        )
        if styles
        else "Every model read the same batches in the same order (see the hashes below). "
    )
    show(
        tc.loss_curves(ex.smoothed(f.metrics), colors, f.labels, dashes=dashes, groups=groups),
        "learning curves",
        same + "Left: training loss per step (faint) and its moving average; right: loss on held-out text every few "
        "steps" + (" (the final point uses the whole held-out split)." if not live else "."),
    )
    if tc.has_stability(f.metrics):
        show(
            tc.stability_curves(f.metrics, colors, f.labels, dashes, groups),
            "stability while training",
            "What QK-Norm and norm placement are for: the gradient norm before clipping (every step, log scale), "
            "the largest attention logit over the layers and the mean log-partition log Z of the output logits "
            "(both sampled every few steps). Runs that blow up show here before their loss does.",
        )
    if not f.routing.empty:
        show(
            tc.router_curves(f.routing, colors, f.labels),
            "routers while training",
            "For each mixture-of-experts model: the most loaded expert over the mean load, the routers' normalized "
            "entropy, experts no token chose, and the balancing loss (routers that use an auxiliary loss). "
            "DeepSeek-style routers balance with a per-expert bias instead (aux-loss-free). Expert collapse shows "
            "as max/mean climbing and entropy falling.",
        )


def _colors(f: ex.Frames) -> dict:
    from backend.present.colors import model_colors

    keys = list(f.labels)
    base = model_colors([k.split("#")[0] for k in keys])
    return {k: base[k.split("#")[0]] for k in keys}


def _final(f: ex.Frames) -> None:
    res = ex.results_table(f)
    if not res.empty:
        st.subheader("Results")
        _ui.frame(
            res,
            "training results",
            hide_index=True,
            width="stretch",
            column_config={
                "validation loss": LOSS,
                "perplexity": st.column_config.NumberColumn(format="%.2f"),
                "tokens/s": NUM,
                "non-embedding active params": NUM,
                "active params": NUM,
                "total params": NUM,
                "tokens": NUM,
                "training time (s)": st.column_config.NumberColumn(format="%.1f"),
            },
            caption="Validation loss on the whole held-out split (the last 5 % of every document), perplexity "
            "= e^loss. Probe runs: mean accuracy over the settings below. Checkpoints are in the run folder "
            "and load in the Playground and Routing pages (Model size → trained miniature (run …)).",
        )
    grids = {f.labels.get(m, m): ex.probe_grid(f.probes, m) for m in f.labels} if not f.probes.empty else {}
    grids = {k: v for k, v in grids.items() if not v.empty}
    if grids:
        _ui.chart(
            tc.probe_heatmaps(grids, "Associative recall accuracy (held-out examples)"),
            "probe accuracy",
            "Accuracy on the answers only, per number of key-value pairs and sequence length (lengths up to "
            "the training sequence length).",
        )
        _ui.frame(f.probes, "probe accuracy", hide_index=True, width="stretch")
    if not f.probes.empty and f.probes["distance"].notna().any():
        _ui.chart(
            tc.distance_lines(f.probes, _colors(f), f.labels),
            "recall at a distance",
            "Accuracy by how far back the key was; a sliding-window or chunked layer sees only its window, but "
            "the full-attention layers of a hybrid can still reach further.",
        )


def _show(run) -> None:
    live = isinstance(run, TrainingRun)
    view = run.view() if live else None
    f = ex.frames(view) if live else ex.frames_from_record(run)
    run_id = run.id
    status = view.status if live else run.status.get("status", "finished")
    message = view.message if live else run.status.get("message", "")
    c1, c2 = st.columns([4, 1])
    with c1:
        st.caption(
            f":material/link: Link to this run: {md(_link(run_id))}",
            help="Opens this run from any tab while the server keeps it; the run goes on when this tab "
            "closes. Anyone with the link can watch and stop it.",
        )
    with c2:
        if st.button("New experiment", icon=":material/add:"):
            st.session_state.pop(KEY, None)
            st.query_params.pop(PARAM, None)
            st.rerun()
    if live and run.running:
        if st.button("Stop", icon=":material/stop:", help="Stops before the next step; checkpoints are kept."):
            run.cancel()
    found = ab.spec_of(Path(run.folder))  # an ablation's spec, or None
    styles = ab.run_styles(list(f.labels)) if found else None
    if found:
        _ablation.header(found[0], run_id, ab.finding_of(Path(run.folder)))
    holder = st.empty()
    if live and run.running:
        tick, seen = 0, -1
        while run.running:
            v = run.view()
            if v.version != seen:
                seen, tick = v.version, tick + 1
                with holder.container():
                    _draw(ex.frames(v), True, tick, v.status, v.message, styles)
            time.sleep(1.0)
        st.rerun()
    with holder.container():
        _draw(f, False, 0, status, message, styles)
    if found:
        _ablation.results(Path(run.folder), f, styles, ended=status in ("finished", "stopped", "failed"))
        with st.expander("Every run's final row"):
            _final(f)
    else:
        _final(f)
    st.subheader("Equal footing")
    st.caption(
        "What every model shared, as the run recorded it, and the SHA-256 of the batches each model "
        "actually consumed: equal hashes mean byte-identical batch streams."
    )
    shared = ex.recipe_table(view if live else run)
    if found:
        shared = ab.shared_table(shared, found[0])
    _ui.frame(shared, "shared recipe", hide_index=True, width="stretch", height=38 + 35 * len(shared))
    h = ab.seed_hashes(f.models) if found else ex.hash_table(f)
    if not h.empty:
        _ui.frame(h, "batch stream hashes", hide_index=True, width="stretch")


def _leaderboard() -> None:
    board = ex.leaderboard()
    if board.empty:
        st.info("No trained zoo is shipped here (assets/zoo). Build it with `python -m backend train --zoo` on a GPU.")
        return
    st.caption(
        "Every catalog architecture's miniature, trained on the shipped corpus under one recorded recipe (the "
        "table below): the same data, batches, optimizer, schedule, precision and a matched budget of "
        "non-embedding active parameters; each row's loss is on the held-out split, over the seeds that "
        "finished. Neighbours whose seed ranges overlap are marked *within noise*: this experiment does not "
        "tell them apart. MoE models hold more parameters in total at the same active budget."
    )
    _ui.chart(
        tc.leaderboard_chart(board),
        "zoo leaderboard",
        "Purple: mixture-of-experts miniatures; blue: dense. The bars span the best to the worst seed.",
    )
    _ui.frame(
        board,
        "zoo leaderboard",
        hide_index=True,
        width="stretch",
        column_config={
            "validation loss (mean)": LOSS,
            "validation loss (std over seeds)": LOSS,
            "best seed": LOSS,
            "worst seed": LOSS,
            "perplexity": st.column_config.NumberColumn(format="%.1f"),
            "MQAR accuracy (mean)": st.column_config.NumberColumn(format="percent"),
            "non-embedding active params": NUM,
            "active params": NUM,
            "total params": NUM,
        },
        caption="Sort by any column. MQAR accuracy: the same miniatures trained on multi-query associative "
        "recall with a third of the tokens (2 M). At that length no architecture learned the task: the best "
        f"reached {board['MQAR accuracy (mean)'].max():.1%} where guessing gives 0.1 %, so that column does not "
        "rank them. The task is learnable: a 1 M-parameter Llama 3 miniature reached 71–89 % after 49 M tokens "
        "at lr 3e-3 (docs/training.md; the Findings page tests architectures on it). Notes say where a miniature has fewer routed experts than the real model (the zoo caps "
        "each at 1.5 M parameters to ship within 40 MB).",
    )
    with st.expander("The zoo's recipe"):
        _ui.frame(ex.zoo_recipe_table(), "zoo recipe", hide_index=True, width="stretch")


st.title("Experiments")
st.caption(
    "Train several architectures on equal footing: the same data, the same order of batches, the same "
    "optimizer, schedule, batch, sequence length, token budget, precision and seed, each miniature sized to "
    "the same parameter or FLOP budget. Only the architecture differs. The runs folder keeps the curves, "
    "the final table and every checkpoint."
)

with _ui.guard("the experiments page"):
    attached = _attached()
    if attached is None:
        mode = _mode()
        if mode == "ablation":
            _ablation.setup(_start)
        else:
            train_tab, board_tab = st.tabs(["Train an experiment", "Leaderboard of the trained zoo"])
            with train_tab:
                _setup()
            with board_tab:
                _leaderboard()
    else:
        _show(attached)
