"""Helpers every page uses: error guard, cached backend calls, charts and tables with downloads."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from functools import lru_cache
from typing import TYPE_CHECKING, Iterator, Mapping

import plotly.graph_objects as go
import streamlit as st

from backend.arch.configs import ModelSource
from backend.arch.errors import ArchLabError
from backend.present import export
from backend.present.text import md

if TYPE_CHECKING:  # pandas takes 0.4 s to import on a fresh server: tables import it when first drawn, so a
    import pandas as pd  # page's first charts reach the browser (which then loads Plotly) without waiting

log = logging.getLogger("archlab.pages")
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@contextlib.contextmanager
def guard(what: str = "this section") -> Iterator[None]:
    """Show user errors with st.error (no traceback); log anything unexpected and say so in one line."""
    try:
        yield
    except ArchLabError as e:
        st.error(
            f"{md(e)}  \nChange the selection or the settings above and try again."
        )  # messages may quote visitors' text
    except Exception as e:  # never a traceback on the page
        log.exception("unexpected error in %s", what)
        st.error(
            f"Unexpected error in {what}: {type(e).__name__}: {md(str(e)[:200])}. "
            "The other sections still work; please report this."
        )


# The spinner shows only when a table is computed and that takes over half a second (the first one after a
# server start may wait for PyTorch to load).
@st.cache_data(show_spinner="Computing… (the first table after a server start also loads PyTorch)", max_entries=256)
def table(name: str, models: Mapping[str, ModelSource], **kwargs) -> pd.DataFrame:
    """A backend.present.tables function, cached by its arguments (model configs included)."""
    from backend.present import tables

    return getattr(tables, name)(dict(models), **kwargs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "figure"


@lru_cache(maxsize=128)
def _image(fig_json: str, fmt: str) -> bytes:
    return export.figure_image(json.loads(fig_json), fmt)


@lru_cache(maxsize=64)
def _html(fig_json: str, title: str) -> bytes:
    return export.figure_html(json.loads(fig_json), title)


def download_figure(fig: go.Figure, name: str) -> None:
    """PNG / SVG / HTML download buttons for a figure; files are made only when clicked (then cached)."""
    fig_json = fig.to_json()
    slug = _slug(name)
    problem = export.image_export_problem()
    with st.container(horizontal=True, gap="small"):
        for fmt, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
            st.download_button(
                fmt.upper(),
                data=(lambda f=fmt: _image(fig_json, f)),
                file_name=f"{slug}.{fmt}",
                mime=mime,
                key=f"dl_{slug}_{fmt}",
                on_click="ignore",
                disabled=problem is not None,
                help=problem or f"Download this chart as {fmt.upper()}",
                icon=":material/download:",
            )
        st.download_button(
            "HTML",
            data=lambda: _html(fig_json, name),
            file_name=f"{slug}.html",
            mime="text/html",
            key=f"dl_{slug}_html",
            on_click="ignore",
            icon=":material/download:",
            help="Interactive chart in one file that opens offline",
        )


def chart(fig: go.Figure, name: str, caption: str = "") -> None:
    """A Plotly chart, its caption and its download buttons."""
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=f"chart_{_slug(name)}")
    if caption:
        st.caption(caption)
    download_figure(fig, name)


def frame(
    df: pd.DataFrame | "pd.io.formats.style.Styler",
    name: str,
    caption: str = "",
    csv: pd.DataFrame | None = None,
    **kwargs,
) -> None:
    """A table, its caption and a CSV download button (of ``csv`` if given, else of the table shown)."""
    import pandas as pd

    data = csv if csv is not None else (df if isinstance(df, pd.DataFrame) else df.data)
    st.dataframe(df, **kwargs)
    if caption:
        st.caption(caption)
    st.download_button(
        "CSV",
        data=export.table_csv(data),
        file_name=f"{_slug(name)}.csv",
        mime="text/csv",
        key=f"dl_{_slug(name)}_csv",
        on_click="ignore",
        icon=":material/download:",
        help="Download this table as CSV (exact numbers)",
    )


def need_models(models: list) -> bool:
    """Tell the visitor to pick models; True when there is something to show."""
    if not models:
        st.info("Pick one or more models in the sidebar (**Models to compare**) to fill this page.")
        return False
    return True
