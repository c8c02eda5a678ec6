"""Exports: CSV and offline HTML always; PNG/SVG through kaleido when Chromium is installed."""

import io
import shutil
import xml.etree.ElementTree as ET

import pandas as pd
import plotly.graph_objects as go
import pytest

from backend.arch.errors import ArchLabError
from backend.present import export

# PNG/SVG go through kaleido, which drives Debian's chromium: the conftest fixture installs it if missing.
needs_chromium = pytest.mark.usefixtures("chromium")


@pytest.fixture(scope="module")
def fig():
    return go.Figure(go.Bar(x=["a", "b"], y=[1, 3]), layout=dict(title="test figure", height=300))


def test_csv_round_trip():
    df = pd.DataFrame(
        {"Total": [124_439_808, 30_532_122_624], "GiB": [0.25, 56.87]}, index=pd.Index(["GPT-2", "Qwen3"], name="Model")
    )
    back = pd.read_csv(io.BytesIO(export.table_csv(df)), index_col="Model")
    assert back.loc["Qwen3", "Total"] == 30_532_122_624 and back.loc["GPT-2", "GiB"] == 0.25
    long = pd.DataFrame({"model": ["a"], "x": [1]})
    assert export.table_csv(long).decode().splitlines()[0] == "model,x"  # unnamed index left out


def test_html_is_self_contained(fig):
    html = export.figure_html(fig, "my chart").decode()
    assert html.lower().startswith("<!doctype html>") and "<title>my chart</title>" in html
    assert 'src="https://cdn.plot.ly' not in html and "Plotly.newPlot" in html
    assert len(html) > 1_000_000  # plotly.js itself is embedded


@needs_chromium
def test_png(fig):
    png = export.figure_image(fig, "png")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


@needs_chromium
def test_svg(fig):
    svg = export.figure_image(fig, "svg")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and b"test figure" in svg


@needs_chromium
def test_diagrams_render_through_one_kaleido_server(monkeypatch):
    """The Chromium behind PNG/SVG starts once per process, not per figure (what makes an export quick after
    the first; its time is in bench/ui.py, not here)."""
    import kaleido

    from backend.arch.architecture import arch_spec
    from backend.present import diagram

    starts = []
    orig = kaleido.start_sync_server

    def start(*a, **k):
        starts.append(1)
        return orig(*a, **k)

    monkeypatch.setattr(kaleido, "start_sync_server", start)
    was_started = export._server_started
    for key in ("gpt2", "deepseek-v3"):
        png = export.figure_image(diagram.block_figure(arch_spec(key), key), "png")
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert len(starts) == (0 if was_started else 1)


def test_missing_chromium_is_a_clear_error(fig, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert export.image_export_problem() and "chromium" in export.image_export_problem().lower()
    with pytest.raises(ArchLabError, match="Chromium"):
        export.figure_image(fig, "png")
    assert export.figure_html(fig)  # HTML and CSV do not need a browser


def test_bad_format(fig):
    with pytest.raises(ArchLabError, match="format"):
        export.figure_image(fig, "pdf")
