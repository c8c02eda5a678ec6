"""The Experiments page's Ablation mode: the form (pre-filled from ``?mode=ablation&spec=…``), the preview of the
cells, and a finished ablation's results. Lays out what ``backend.present.ablation`` returns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import streamlit as st

from backend.arch import catalog
from backend.arch.errors import ArchLabError
from backend.arch.variants import AXES, RECIPE_FIELDS, base_values
from backend.present import ablation as ab
from backend.present import ablation_charts as abc
from backend.present import experiments as ex
from backend.present import findings as fd
from backend.present.text import md
from backend.train.ablation import MAX_RUNS, RECIPE_AXES, AblationSpec
from views import _state, _train_form, _ui

PREFIX = "abl"
SPEC_PARAM = "spec"
CUSTOM = "custom…"
LR_CHOICES = [ab.values_text(g) for g in ab.LR_PRESETS] + [CUSTOM]
NUM, LOSS = _train_form.NUM, _train_form.LOSS


@st.cache_data(show_spinner=False, max_entries=32)
def _prepare(spec_json: str):
    """(plan, preview) of a spec: built, sized and estimated once per spec (seconds on the CPU)."""
    return ab.prepare(AblationSpec.from_json(spec_json))


@st.cache_data(show_spinner=False, max_entries=64)
def _own(base: str) -> dict:
    return base_values(base)


def _values_key(base: str, axis: str) -> str:
    return f"{PREFIX}_vals_{base}_{axis}"


def _apply_link() -> None:
    """Fill the form from ``?spec=`` when the link brings a spec this session has not applied yet."""
    ss = st.session_state
    raw = st.query_params.get(SPEC_PARAM)
    if not raw or raw == ss.get(f"{PREFIX}_applied"):
        return
    ss[f"{PREFIX}_applied"] = raw
    try:
        form = ab.form_of(ab.decode_spec(raw))
    except ArchLabError as e:
        st.error(md(e), icon=":material/link_off:")
        del st.query_params[SPEC_PARAM]
        return
    ss[f"{PREFIX}_base"] = form.base
    ss[f"{PREFIX}_axes"] = [a for a, _ in form.axes]
    for axis, values in form.axes:
        ss[_values_key(form.base, axis)] = list(values)
    ss[f"{PREFIX}_free"] = form.free
    ss[f"{PREFIX}_lr_choice"] = form.lrs if form.lrs in LR_CHOICES else CUSTOM
    ss[f"{PREFIX}_lrs"] = form.lrs
    ss[f"{PREFIX}_seeds"] = form.seeds
    ss[f"{PREFIX}_name"] = form.name
    _train_form.prefill(PREFIX, form.recipe, form.device)


def _finding() -> Optional[dict]:
    """The claim of the Findings page this link re-runs (``?claim=&ablation=&fmode=``), said on the page; None."""
    try:
        tag = fd.finding_tag({k: st.query_params.get(k) for k in fd.FINDING_PARAMS})
    except ArchLabError as e:
        st.error(md(e), icon=":material/link_off:")
        for k in fd.FINDING_PARAMS:
            st.query_params.pop(k, None)
        return None
    if tag is not None:
        _finding_note(
            tag,
            "When it ends, its evidence is saved in this server's runs folder and the Findings page "
            "draws it beside the shipped one.",
        )
    return tag


def _finding_note(tag: dict, what: str) -> None:
    from backend.train.findings import claim

    st.info(
        f"A re-run of the finding **{md(claim(tag['claim']).title)}** (ablation {md(tag['ablation'])}, "
        f"{md(fd.MODE_LABELS[tag['mode']])}). {what}",
        icon=":material/fact_check:",
    )
    st.page_link("views/findings.py", label="The Findings page", icon=":material/fact_check:")


def _axis_values(base: str, axis: str, own: str) -> list[str]:
    a = AXES[axis]
    key = _values_key(base, axis)
    other = next((x for x in a.examples if x != own), own)
    st.session_state.setdefault(key, list(dict.fromkeys([own, other])))
    options = list(dict.fromkeys([own, *a.examples, *st.session_state[key]]))
    return st.multiselect(
        f"{axis} values",
        options,
        key=key,
        accept_new_options=True,
        format_func=lambda v: f"{v} (the base's)" if v == own else v,
        help=f"{a.description}. Syntax: {' | '.join(a.values)}. Type a value that is not listed "
        "(e.g. gqa:4, nope:3, moe:16:2:1, 3:1:window=64) and press Enter.",
    )


def _form() -> Optional[tuple[AblationSpec, _train_form.Chosen]]:
    """Draw the form; the spec it describes (None after showing one error line per problem)."""
    ss = st.session_state
    keys = catalog.keys()
    ss.setdefault(f"{PREFIX}_base", "olmo2-7b" if "olmo2-7b" in keys else keys[0])
    ss.setdefault(f"{PREFIX}_axes", ["qk_norm"])
    ss.setdefault(f"{PREFIX}_free", "")
    ss.setdefault(f"{PREFIX}_lr_choice", LR_CHOICES[0])
    ss.setdefault(f"{PREFIX}_lrs", LR_CHOICES[0])
    ss.setdefault(f"{PREFIX}_seeds", "0, 1, 2")
    ss.setdefault(f"{PREFIX}_name", "")
    c1, c2 = st.columns([1, 2])
    with c1:
        base = st.selectbox(
            "Base architecture",
            keys,
            key=f"{PREFIX}_base",
            format_func=_state.label_of,
            help="Every cell is this catalog model with the components below changed, sized to the "
            "same budget with the base's heads, head width and depth.",
        )
    with c2:
        axes = st.multiselect(
            "Components to change (two or more make a full factorial)",
            list(AXES),
            key=f"{PREFIX}_axes",
            help="Each component's values are tried in every combination with the others'.",
        )
    own = _own(base)
    st.caption("The base's own values: " + " · ".join(f"{a} **{md(v)}**" for a, v in own.items()))
    chosen = []
    for row in range(0, len(axes), 3):
        cols = st.columns(3)
        for col, axis in zip(cols, axes[row : row + 3]):
            with col:
                chosen.append((axis, _axis_values(base, axis, own[axis])))
    free = st.text_area(
        "Other fields to vary, one `key=v1,v2` per line (optional)",
        key=f"{PREFIX}_free",
        height=68,
        placeholder="rms_norm_eps=1e-6,1e-5\nwarmup=0.01,0.1",
        help="Any field of the base's config (values read as JSON), or a per-run recipe field: "
        + ", ".join(RECIPE_AXES)
        + ". Every line is one more factor of the factorial.",
    )
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
    with c1:
        choice = st.selectbox(
            "Learning-rate grid (log-spaced)",
            LR_CHOICES,
            key=f"{PREFIX}_lr_choice",
            help="Every cell trains at each peak learning rate: the results give each cell's best "
            "learning rate, the loss there and its LR sensitivity (Wortsman et al. 2023).",
        )
    with c2:
        if choice == CUSTOM:
            lrs = st.text_input("Learning rates", key=f"{PREFIX}_lrs", help="Comma-separated, e.g. 1e-3, 1e-2, 1e-1")
        else:
            lrs = choice
            st.text_input("Learning rates", value=choice, disabled=True)
    with c3:
        seeds = st.text_input(
            "Seeds",
            key=f"{PREFIX}_seeds",
            help="Three by default: each seed gives every cell the same batches and its own "
            "initialisation. Fewer is a quick look without verdicts (one seed gives no interval).",
        )
    with c4:
        name = st.text_input("Name (optional)", key=f"{PREFIX}_name")
    try:
        recipe = _train_form.inputs(PREFIX, per_run=False)
    except ArchLabError as e:
        st.error(md(e))
        return None
    if recipe is None:
        return None
    spec, errors = ab.build_spec(base, chosen, free, lrs, seeds, recipe.recipe, recipe.device, name)
    for e in errors:
        st.error(md(e))
    if spec is None:
        return None
    encoded = ab.encode_spec(spec)
    ss[f"{PREFIX}_applied"] = encoded  # the link now describes the form
    st.query_params[SPEC_PARAM] = encoded
    return spec, recipe


PARAMS = {
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


def setup(start: Callable[..., None]) -> None:
    """The Ablation mode before training: the form, the preview and the Train button (``start(run spec, upload,
    sizer=…, before=…)`` starts the run)."""
    st.caption(
        "Change one component of a catalog architecture, hold everything else (data, batches, recipe, "
        "budget, depth, heads), and train every combination over a grid of learning rates and seeds: the "
        "results say whether the change mattered, with the noise shown."
    )
    _apply_link()
    tag = _finding()
    made = _form()
    with st.expander("The components (axes) and their values"):
        _ui.frame(
            ab.axes_table(),
            "ablation axes",
            hide_index=True,
            width="stretch",
            caption="Recipe fields that may vary too (as key=v1,v2 lines): "
            + ", ".join(f for f in RECIPE_FIELDS if f in RECIPE_AXES)
            + ".",
        )
    if made is None:
        return
    spec, chosen = made
    problem = fd.tag_problem(spec, tag) if tag else ""
    if problem:
        st.warning(md(problem[0].upper() + problem[1:]) + ".", icon=":material/link_off:")
    finding = tag if tag and not problem else None
    try:
        with st.spinner("Building the variants and sizing them to the budget…"):
            plan, pv = _prepare(spec.to_json())
    except ArchLabError as e:
        st.error(md(e))
        return
    r = spec.recipe
    st.subheader("The cells this ablation trains")
    st.caption(
        f"{len(pv.cells)} cell(s) × {len(spec.lrs)} learning rate(s) × {len(spec.seeds)} seed(s) = "
        f"**{pv.runs} runs** (at most {MAX_RUNS}), each {r.steps:,} steps of {r.batch} × {r.seq_len} tokens; "
        f"budget {r.budget:,.0f} {_train_form.METRICS[r.budget_metric]} (±5 %). Exact counts from the model "
        "transformers builds; the reference cell (the base) is the one every other is compared against."
    )
    if pv.quick_look:
        st.info(pv.quick_look, icon=":material/bolt:")
    for cell, why in pv.left_out:
        st.error(f"Left out {md(cell)}: {md(why)}")
    _ui.frame(pv.cells, "ablation preview", hide_index=True, width="stretch", column_config=PARAMS)
    est = pv.estimate
    st.caption(
        f":material/schedule: Estimated training time: **{ab.duration(est['seconds'])}** on the "
        f"{est['device'].upper()} ({md(est['basis'])}; an estimate, not a promise)."
    )
    if pv.problem:
        st.error(md(pv.problem))
    if st.button("Train the ablation", type="primary", icon=":material/play_arrow:", disabled=bool(pv.problem)):
        start(plan.run, chosen.upload, sizer=plan.sizer(), before=lambda run: ab.record(run.folder, plan, finding))


def _page_url() -> str:
    return (st.context.url or "").split("?")[0].rstrip("/").removesuffix("/experiments") + "/experiments"


def header(spec: AblationSpec, run_id: str, finding: Optional[dict] = None) -> None:
    """What an attached ablation varies, the claim it re-runs (``finding``), and the link that re-opens its form."""
    vary = " × ".join(f"{a} = {ab.values_text(v)}" for a, v in spec.vary)
    st.markdown(
        f"**Ablation of {md(_state.label_of(spec.base) if isinstance(spec.base, str) else 'a config')}**: "
        f"{md(vary)}; learning rates {md(ab.values_text(spec.lrs))}; seeds {md(ab.values_text(spec.seeds))}."
    )
    if finding is not None:
        with _ui.guard("the finding this run re-runs"):
            _finding_note(finding, "Once it ends, the Findings page draws its result beside the shipped one.")
    st.link_button(
        "Re-open this ablation's form",
        _page_url() + "?" + ab.spec_query(spec),
        icon=":material/edit:",
        help="Opens the Ablation mode with every field of this ablation filled in (in a new tab), to run it "
        "again or change it.",
    )


def results(folder: Path, f: ex.Frames, styles: ab.Styles, ended: bool) -> None:
    """An ablation's results: the headline table, loss against learning rate, the grid, and the stability scores.
    The summary is read from ``summary.json``, else computed from the final rows and, once the run has ``ended``,
    written there."""
    with st.spinner("Judging the ablation…"):
        summary = ab.summary_of(folder, f.results, finished=ended)
    if summary is None:
        return
    st.subheader("Ablation results")
    if summary.get("note"):
        st.info(md(summary["note"][0].upper() + summary["note"][1:]) + ".", icon=":material/bolt:")
    for x in summary.get("refused", []):
        st.caption(f":material/block: Left out {md(x['cell'])}: {md(x['reason'])}")
    table = ab.headline(summary)
    _ui.frame(
        ab.headline_display(table),
        "ablation headline",
        csv=table,
        hide_index=True,
        width="stretch",
        caption="Per cell at its best learning rate: the final validation loss, mean over seeds with its 95 % "
        "Student-t interval; LR sensitivity (the mean over the grid of min(loss, loss at initialisation) minus "
        "the best loss); and against the reference cell the paired difference over seeds (the same seed gives "
        "both the same batches) with its interval. The verdict is read off the interval: lower or higher "
        "when it excludes zero, within noise when it holds it, no interval with one seed, too few seeds under 3. The CSV has every "
        "bound as a number.",
    )
    colors = {c["name"]: styles.cells.get(c["name"], "#444") for c in summary["cells"]}
    _ui.chart(
        abc.loss_vs_lr(summary, colors),
        "loss against learning rate",
        "Each cell's seeds (dots), their mean (line) and 95 % interval (band) at every learning rate; the star "
        "is its best learning rate. Runs that diverged (NaN, inf or above the initial loss) or are missing "
        "are crosses at the initial loss, counted, not dropped; a learning rate with one is never a cell's best. "
        "The axis spans the points: a band wider than that (two seeds give wide intervals) is cut at its edge.",
    )
    _ui.frame(
        ab.grid_table(summary),
        "ablation grid",
        hide_index=True,
        width="stretch",
        column_config={
            "mean loss": LOSS,
            "CI low": LOSS,
            "CI high": LOSS,
            "lr": st.column_config.NumberColumn(format="%g"),
        },
        caption="Every cell and learning rate: the seeds' final validation losses, their mean and interval, "
        "and the stability scores (means over seeds).",
    )
    _ui.chart(
        abc.score_heatmaps(summary),
        "stability per cell",
        "Spike scores as OLMo 2 defines them (the share of steps at least 7 standard deviations from the rolling "
        "mean of the steps before, the window scaled to the run's length; blank when the run is too short for "
        "one) and the largest attention logit seen in any layer.",
    )
    st.download_button(
        "summary.json",
        data=json.dumps(summary, indent=1),
        file_name="summary.json",
        mime="application/json",
        icon=":material/download:",
        on_click="ignore",
        help="The whole summary, as python -m backend ablate writes it",
    )
