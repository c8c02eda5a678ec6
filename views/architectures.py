"""Architectures: block diagrams side by side with their differences highlighted, and the feature matrix."""
from __future__ import annotations

import streamlit as st

from backend.arch.architecture import arch_spec
from backend.present import diagram
from backend.present.colors import HIGHLIGHT
from backend.present.text import md, swatch
from backend.present.tables import entry
from views import _state, _ui

PER_ROW = 3


@st.cache_data(show_spinner=False, max_entries=64)
def _figures(models: dict, colors: dict) -> dict:
    specs = {label: arch_spec(src) for label, src in models.items()}
    return diagram.comparison_figures(specs, colors), diagram.legend_items(list(specs.values()))


def _legend(items: dict[str, str]) -> None:
    chips = " ".join(f"<span style='display:inline-block;width:.9em;height:.9em;background:{c};"
                     f"border:1px solid #999;vertical-align:middle'></span>&nbsp;{n}" for n, c in items.items())
    st.markdown(f"<small>Layer strip: {chips}</small>", unsafe_allow_html=True)


def _diagrams(models: list[_state.Model]) -> None:
    st.subheader("Block diagrams")
    st.caption("Each column is one model, read top to bottom: tokens are embedded, pass through one decoder "
               "block repeated N times (the dashed frame; lines on the right are residual connections, ⊕ adds "
               "them back), then a final norm and the LM head that scores every vocabulary entry. All diagrams "
               "share one scale and rows line up. "
               + (f"Boxes outlined in <span style='color:{HIGHLIGHT}'><b>orange with a ≠ badge</b></span> differ "
                  "between the selected models; the differing lines are written in orange."
                  if len(models) > 1 else "Select two or more models to see their differences highlighted."),
               unsafe_allow_html=True)
    figs, legend = _figures({m.label: m.source for m in models}, {m.label: m.color for m in models})
    _legend(legend)
    for start in range(0, len(models), PER_ROW):
        row = models[start:start + PER_ROW]
        for col, m in zip(st.columns(PER_ROW), row):
            with col:
                _ui.chart(figs[m.label], f"diagram {m.label}")


def _matrix(models: list[_state.Model]) -> None:
    st.subheader("Feature matrix")
    st.caption("One row per architectural choice, one column per model. Rows where the models differ are "
               "shaded and marked ≠.")
    df = _ui.table("feature_matrix", {m.label: m.source for m in models})
    only = st.toggle("Only rows that differ", value=False, disabled=len(models) < 2)
    view = df[df["differs"]] if only else df
    shown = view.drop(columns="differs")
    shown.insert(0, "≠", view["differs"].map({True: "≠", False: ""}))
    styled = shown.style.apply(lambda row: ["background-color: #fdebd0" if row["≠"] else "" for _ in row], axis=1)
    _ui.frame(styled, "feature matrix", csv=view, height=min(38 + 35 * len(shown), 950), width="stretch",
              column_config={"_index": st.column_config.Column("Feature", width="large"),
                             "≠": st.column_config.Column(width=40)})


def _notes(models: list[_state.Model]) -> None:
    st.subheader("About each model")
    for m in models:
        e = entry(m.source)
        with st.container(border=True):
            with st.container(horizontal=True, gap="small"):  # the label may be a visitor's text: never in HTML
                st.markdown(swatch(m.color), unsafe_allow_html=True, width="content")
                st.markdown(f"**{md(m.label)}**")
            if e is None:
                st.caption("Custom model from your config.json; no catalog note.")
                continue
            st.markdown(e.note)
            if e.count_note:
                st.caption(f"Parameter count: {e.count_note}")
            st.caption(f"{e.org}, {e.year} · stated {e.stated_total} total / {e.stated_active} active · "
                       f"[official config.json]({e.source})")


st.title("Architectures")
st.caption("What the selected models are made of, drawn from their published config.json files "
           "(no weights are downloaded).")
models = _state.selected()
if _ui.need_models(models):
    with _ui.guard("the block diagrams"):
        _diagrams(models)
    with _ui.guard("the feature matrix"):
        _matrix(models)
    with _ui.guard("the model notes"):
        _notes(models)
