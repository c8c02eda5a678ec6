"""Architectures: block diagrams side by side with their differences from a baseline model (or between any)
highlighted, and the feature matrix marked the same way."""

from __future__ import annotations

import streamlit as st

from backend.arch.architecture import arch_spec, resolve
from backend.arch.variants import AXES, base_values
from backend.present import diagram
from backend.present.colors import HIGHLIGHT
from backend.present.text import md, swatch
from views import _state, _ui
from views._state import choice, setting

PER_ROW = 3
#: "Compare against" value meaning "mark what differs between any of the selected models"
ANY = "any"
SHADE = "background-color: #fdebd0"


# Shared by all sessions and not copied per rerun (cache_data would unpickle the figures every time);
# nothing mutates them (st.plotly_chart and the downloads read copies).
@st.cache_resource(show_spinner="Drawing the block diagrams…", max_entries=64)
def _figures(models: dict, colors: dict, baseline: str | None) -> tuple[dict, dict]:
    specs = {label: arch_spec(src) for label, src in models.items()}
    return diagram.comparison_figures(specs, colors, baseline), diagram.legend_items(list(specs.values()))


def _baseline(models: list[_state.Model], draw: bool = True) -> _state.Model | None:
    """The "Compare against" choice (URL ``?base=``, default the first selected model): the baseline model,
    or None for "differs from any" (and for a single model: nothing to compare). ``draw=False``: the choice
    that this run's box will show, before it is drawn."""
    ids = [m.id for m in models]
    if len(ids) < 2:
        return None
    options = ids + [ANY]
    ss = st.session_state
    if "base" in ss and ss["base"] not in options:  # the baseline was taken out of the selection
        ss["base"] = ss["_w_base"] = ids[0]
    if not draw:
        value = _state.restored("base", ids[0], choice(options))
        return None if value == ANY else next((m for m in models if m.id == value), models[0])
    labels = {m.id: m.label for m in models}
    value = setting(
        "base",
        ids[0],
        st.selectbox,
        choice(options),
        label="Compare against",
        options=options,
        format_func=lambda i: labels.get(i, "any of them (what differs between any)"),
        width=420,
        help="Mark what differs from this model (the baseline), or what differs between any of the "
        "selected models. Applies to the block diagrams and the feature matrix.",
    )
    if value.startswith((_state.CUSTOM, _state.LOCAL, _state.VARIANT)):  # a visitor's own model: not in links
        st.query_params.pop("base", None)
    return None if value == ANY else next(m for m in models if m.id == value)


def _variant_picker(models: list[_state.Model]) -> None:
    """Add a variant of a selected model: one component changed (an axis and its value, or any config field as
    key=value), drawn beside its base with the base as the baseline."""
    ss = st.session_state
    with st.expander("Add a variant: one component changed", expanded=bool(ss.get("variant_error"))):
        st.caption(
            "Start from a selected model and change one component; the variant is drawn beside it and "
            "marked where it differs. Components a model's transformers class lacks are added as small, "
            "named module patches (listed under *About each model*). The same variants train in an ablation."
        )
        labels = {m.id: m.label for m in models}
        if ss.get("variant_base") not in labels:
            ss["variant_base"] = models[0].id
        cols = st.columns([3, 2, 3])
        base_id = cols[0].selectbox("Model", list(labels), key="variant_base", format_func=labels.get)
        axis = cols[1].selectbox(
            "Component",
            list(AXES) + [_state.FREE],
            key="variant_axis",
            format_func=lambda a: "other field (key=value)" if a == _state.FREE else a,
        )
        base = next(m for m in models if m.id == base_id)
        if axis == _state.FREE:
            cols[2].text_input(
                "Field = value",
                key=f"variant_value_{axis}",
                placeholder="rms_norm_eps=1e-5",
                help="Any field of the model's config.json, with one value (read as JSON).",
            )
        else:
            a = AXES[axis]
            cols[2].selectbox(
                "Value",
                a.examples,
                key=f"variant_value_{axis}",
                accept_new_options=True,
                help=f"{a.description}. Values: {' | '.join(a.values)}. How: {a.applies}.",
            )
            with _ui.guard("the model's own value"):
                st.caption(f"{md(base.label)} has {axis}={md(base_values(base.source)[axis])}.")
        st.button("Add variant", on_click=_state.on_add_variant)
        if ss.get("variant_error"):
            st.error(md(ss["variant_error"]))


def _legend(items: dict[str, str]) -> None:
    chips = " ".join(
        f"<span style='display:inline-block;width:.9em;height:.9em;background:{c};"
        f"border:1px solid #999;vertical-align:middle'></span>&nbsp;{n}"
        for n, c in items.items()
    )
    st.markdown(f"<small>Layer strip: {chips}</small>", unsafe_allow_html=True)


def _diagrams(models: list[_state.Model], base: _state.Model | None) -> None:
    st.subheader("Block diagrams")
    st.caption(
        "Each column is one model, read top to bottom: tokens are embedded, pass through one decoder "
        "block repeated N times (the dashed frame; lines on the right are residual connections, ⊕ adds "
        "them back), then a final norm and the LM head that scores every vocabulary entry. All diagrams "
        "share one scale and rows line up."
    )
    if len(models) < 2:
        st.caption("Select two or more models to see their differences highlighted.")
    else:  # no model name in this HTML (a name may be a visitor's text): the baseline's diagram says which
        badge = "≠ baseline" if base else "≠ differs"
        st.caption(
            f"Boxes outlined in <span style='color:{HIGHLIGHT}'><b>orange with a {badge} badge</b></span>, "
            "and the lines written in orange, "
            + (
                "differ from the baseline chosen under <i>Compare against</i> (its diagram is titled "
                "<i>baseline</i> and marks nothing)."
                if base
                else "differ between the selected models: a box is marked in every diagram when any two of them "
                "differ there."
            ),
            unsafe_allow_html=True,
        )
    figs, legend = _figures(
        {m.label: m.source for m in models}, {m.label: m.color for m in models}, base.label if base else None
    )
    _legend(legend)
    for start in range(0, len(models), PER_ROW):
        row = models[start : start + PER_ROW]
        for col, m in zip(st.columns(PER_ROW), row):
            with col:
                _ui.chart(figs[m.label], f"diagram {m.label}")


def _matrix(models: list[_state.Model], base: _state.Model | None) -> None:
    st.subheader("Feature matrix")
    baseline = base.label if base else None
    st.caption(
        "One row per architectural choice, one column per model. "
        + (
            f"Cells that differ from **{md(base.label)}** (the baseline, chosen under *Compare against* "
            "above) are shaded; rows with any such cell are marked ≠."
            if baseline
            else "Rows where the models differ are shaded and marked ≠."
        )
    )
    from backend.present import tables  # pandas: imported once the diagrams are out (first visit)

    df = _ui.table("feature_matrix", {m.label: m.source for m in models})
    marks = tables.feature_marks(df, baseline)
    rows = marks.any(axis=1)
    only = st.toggle(
        "Only rows that differ" + (" from the baseline" if baseline else ""), value=False, disabled=len(models) < 2
    )
    keep = rows[rows].index if only else df.index
    shown = df.loc[keep].drop(columns="differs")
    shown.insert(0, "≠", rows[keep].map({True: "≠", False: ""}))
    shade = marks.loc[keep].map(lambda hit: SHADE if hit else "")  # cells marked, and the ≠ column of their rows
    shade.insert(0, "≠", rows[keep].map({True: SHADE, False: ""}))
    styled = shown.style.apply(lambda _: shade, axis=None)
    csv = df.loc[keep].drop(columns="differs")
    csv["differs"] = rows[keep]
    if baseline:  # which models differ from the baseline in each row
        csv[f"differs from {baseline}"] = marks.loc[keep].apply(
            lambda r: ", ".join(c for c, hit in r.items() if hit), axis=1
        )
    config = {"_index": st.column_config.Column("Feature", width="medium"), "≠": st.column_config.Column(width=40)}
    if baseline:
        config[baseline] = st.column_config.Column(f"{baseline} (baseline)")
    _ui.frame(
        styled, "feature matrix", csv=csv, height=min(38 + 35 * len(shown), 950), width="stretch", column_config=config
    )


def _notes(models: list[_state.Model]) -> None:
    st.subheader("About each model")
    for m in models:
        e = resolve(m.source).entry
        with st.container(border=True):
            with st.container(horizontal=True, gap="small"):  # the label may be a visitor's text: never in HTML
                st.markdown(swatch(m.color), unsafe_allow_html=True, width="content")
                st.markdown(f"**{md(m.label)}**")
            info = st.session_state.get("variant_info", {}).get(m.id)
            if info is not None:
                st.markdown(f"Variant of **{md(info['base'])}**: {md(info['changes'])}.")
                if info["patches"]:
                    st.caption(
                        "Module patches (the class has no such component): "
                        + ", ".join(f"`{p}`" for p in info["patches"])
                    )
                for note in info["notes"]:
                    st.caption(md(note))
                continue
            if e is None:
                st.caption("Custom model from your config.json; no catalog note.")
                continue
            st.markdown(e.note)
            if e.count_note:
                st.caption(f"Parameter count: {e.count_note}")
            if e.trained_note:
                st.caption(e.trained_note)
            st.caption(
                f"{e.org}, {e.year} · stated {e.stated_total} total / {e.stated_active} active · "
                f"[official config.json]({e.source})"
            )


st.title("Architectures")
st.caption(
    "What the selected models are made of, drawn from their published config.json files (no weights are downloaded)."
)
models = _state.selected()
if _ui.need_models(models):
    # The diagrams go out before the "Compare against" box above them: a first visit's browser fetches the
    # box's code (two dozen small files) when it first shows one, and Plotly's bundle would queue behind them.
    picker = st.container() if len(models) > 1 else None
    base = _baseline(models, draw=False)
    with _ui.guard("the block diagrams"):
        _diagrams(models, base)
    if picker is not None:
        with picker:
            if _baseline(models) != base:  # the box shows the value read above; should it not, draw again
                st.rerun()
    with _ui.guard("the variant picker"):
        _variant_picker(models)
    with _ui.guard("the feature matrix"):
        _matrix(models, base)
    with _ui.guard("the model notes"):
        _notes(models)
