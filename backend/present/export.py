"""Figures to PNG / SVG (kaleido, server-side) and self-contained HTML; tables to CSV."""

from __future__ import annotations

import shutil
import threading
import warnings
from html import escape
from typing import TYPE_CHECKING, Optional

import plotly.graph_objects as go
import plotly.io as pio

from ..arch.errors import ArchLabError

if TYPE_CHECKING:  # pandas (0.4 s to import) is not needed to draw charts: a page's first charts go out without it
    import pandas as pd

#: Browser names kaleido (choreographer) looks for on PATH; we never download one.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
IMAGE_FORMATS = ("png", "svg")
_lock = threading.Lock()
_server_started = False


def browser_path() -> Optional[str]:
    """Path of a Chromium/Chrome on PATH, or None."""
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


def image_export_problem() -> Optional[str]:
    """Why PNG/SVG export cannot work here (one line), or None if it can."""
    if browser_path() is None:
        return (
            "PNG/SVG export needs Chromium on this server (e.g. `apt-get install -y chromium`); "
            "HTML and CSV downloads work without it."
        )
    return None


def _ensure_server() -> None:
    global _server_started
    if not _server_started:
        import kaleido

        kaleido.start_sync_server(silence_warnings=True)
        _server_started = True


def figure_image(
    fig: go.Figure | dict,
    fmt: str = "png",
    width: Optional[int] = None,
    height: Optional[int] = None,
    scale: float = 2.0,
) -> bytes:
    """PNG or SVG bytes of a figure, rendered by kaleido with the system Chromium."""
    if fmt not in IMAGE_FORMATS:
        raise ArchLabError(f"image format must be one of {', '.join(IMAGE_FORMATS)}, not {fmt!r}")
    problem = image_export_problem()
    if problem:
        raise ArchLabError(problem)
    fig = go.Figure(fig) if isinstance(fig, dict) else fig
    width = width or fig.layout.width or 900
    with _lock:  # one kaleido server, one render at a time
        try:
            _ensure_server()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return pio.to_image(
                    fig, format=fmt, width=width, height=height or fig.layout.height, scale=scale if fmt == "png" else 1
                )
        except ArchLabError:
            raise
        except Exception as e:  # kaleido/choreographer raise many types
            raise ArchLabError(
                f"{fmt.upper()} export failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            ) from None


def figure_html(fig: go.Figure | dict, title: str = "ArchLab figure") -> bytes:
    """A standalone HTML page with plotly.js embedded, so it opens offline."""
    fig = go.Figure(fig) if isinstance(fig, dict) else fig
    html = pio.to_html(fig, include_plotlyjs=True, full_html=True, config={"displaylogo": False})
    return html.replace("<head>", f"<head><title>{escape(title)}</title>", 1).encode("utf-8")


def table_csv(df: pd.DataFrame) -> bytes:
    """CSV bytes of a table, index included when it is named (e.g. Model, Feature)."""
    return df.to_csv(index=df.index.name is not None).encode("utf-8")
