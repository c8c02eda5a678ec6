"""The Findings page as one self-contained HTML report: every claim's text, its static and trained evidence as tables,
and its charts as Plotly divs, with plotly.js included once (the file opens offline)."""

from __future__ import annotations

from html import escape
from typing import Mapping, Optional, Sequence

import pandas as pd
import plotly.io as pio
import plotly.offline

from ..train import findings as F
from . import findings as fd
from . import findings_charts as fc

COLORS = {"green": "#1a7f37", "red": "#cf222e", "violet": "#8250df", "orange": "#bc4c00", "gray": "#57606a"}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#1f2328;line-height:1.45}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:13px}th,td{border:1px solid #d0d7de;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f6f8fa}.v{font-weight:600;padding:1px 7px;border-radius:4px;display:inline-block;
color:#fff}.cap{color:#57606a;font-size:13px}code{background:#f6f8fa;padding:1px 4px;border-radius:4px}
section{border-top:2px solid #d0d7de;margin-top:2em}blockquote{color:#57606a;border-left:3px solid #d0d7de;
margin-left:0;padding-left:1em}
"""


def _table(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return ""
    return df.to_html(index=False, escape=True, border=0, na_rep="—")


def _figure(fig) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, config={"displaylogo": False})


def _verdict(text: str) -> str:
    return f"<span class='v' style='background:{COLORS[fd.verdict_color(text)]}'>{escape(text)}</span>"


def _cap(text: str) -> str:
    return f"<p class='cap'>{escape(text)}</p>"


def _mode(c: F.Claim, e: fd.ModeEvidence) -> list[str]:
    out = [f"<h3>{escape(fd.sentence(fd.MODE_LABELS[e.mode]))}</h3>"]
    cli = f"<code>{escape(fd.cli_line(c, e.mode))}</code>"
    if not e.runs:
        return out + [f"<p>Not run. Run it with {cli}.</p>"]
    for t in e.runs:
        out.append(f"<p>{escape(fd.sentence(t.label))}: {_verdict(fd.verdict_text(t))}</p>")
    out += [
        "<h4>Sanity checks</h4>",
        _table(fd.sanity_table(c, e.runs)),
        _cap(fd.CAPTIONS["sanity"]),
        "<h4>Comparisons</h4>",
        _table(fd.comparisons_display(fd.comparisons_table(e.runs))),
        _cap(fd.CAPTIONS["comparisons"]),
    ]
    for a in c.ablations:
        name = a["name"]
        out.append(f"<h4>Ablation {escape(name)}</h4>")
        here = [t for t in e.runs if name in t.evidence]
        if not here:
            out.append(f"<p>Not run under this recipe. Run it with {cli}.</p>")
            continue
        for t in here:
            changes = fd.recipe_changes(t, name)
            if changes:
                out.append(_cap(f"The {t.label} differs from the claim's recipe: {'; '.join(changes)}."))
        shown, _ = fd.cells_table(here, name)
        out += [
            _table(shown),
            _cap(fd.CAPTIONS["cells"]),
            _figure(fc.loss_vs_lr(here, name, fd.chart_title(c, e.mode, name))),
            _cap(fd.CAPTIONS["loss_vs_lr"]),
        ]
        if fd.uses_stability(c, name):
            out += [_figure(fc.stability(t, name, fd.chart_title(c, e.mode, name, "stability"))) for t in here]
            out.append(_cap(fd.CAPTIONS["stability"]))
        out += [_table(fd.recipe_table(here, name)), _cap(fd.CAPTIONS["recipe"])]
    out.append(f"<p>Re-run every ablation of this claim: {cli}</p>")
    return out


def _claim(c: F.Claim, evidence: Mapping[str, fd.ModeEvidence]) -> list[str]:
    src = c.source
    out = [
        f"<section id='{escape(c.name)}'><h2>{escape(c.title)}</h2>",
        f"<p><b>Claim.</b> {escape(c.claim)}</p>",
        f"<p><b>Source.</b> {escape(src['label'])}: {escape(src['cite'])}.</p>",
        f"<p><b>What the source reports.</b> {escape(src['reports'])}</p>",
        f"<p><b>Direction.</b> {escape(src['direction'])}</p>",
    ]
    if c.article:
        out.append(f"<blockquote>The article: “{escape(c.article)}”</blockquote>")
    static = fd.static_evidence(c.name)
    if static is not None:
        out += [
            "<h3>Static evidence (exact, from the catalog)</h3>",
            _table(static.table),
            _cap(static.caption),
            _figure(fc.static_bars(static)),
        ]
    for mode in fd.MODES:
        out += _mode(c, evidence[mode])
    return out + ["</section>"]


def report_html(
    claims: Optional[Sequence[F.Claim]] = None, evidence: Optional[Mapping[str, Mapping[str, fd.ModeEvidence]]] = None
) -> bytes:
    """Every claim (default: all of claims.json) with its evidence (default: what is on disk now) as one HTML file."""
    claims = list(claims) if claims is not None else F.claims()
    evidence = evidence or {c.name: {m: fd.mode_evidence(c.name, m) for m in fd.MODES} for c in claims}
    summary = fd.summary_table(claims, evidence)
    rows = "".join(
        f"<tr><td><a href='#{escape(r['name'])}'>{escape(r['claim'])}</a></td><td>{escape(r['source'])}</td>"
        + "".join(
            f"<td>{_verdict(r[f'verdict ({m})'])}"
            + (f"<br>re-run: {_verdict(r[f're-run ({m})'])}" if r[f"re-run ({m})"] else "")
            + "</td>"
            for m in fd.MODES
        )
        + "</tr>"
        for _, r in summary.iterrows()
    )
    head = "".join(f"<th>verdict ({escape(fd.MODE_LABELS[m])})</th>" for m in fd.MODES)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ArchLab findings</title>",
        f"<style>{STYLE}</style>",
        f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script></head><body>",
        "<h1>ArchLab findings</h1>",
        _cap(fd.INTRO),
        f"<table><tr><th>claim</th><th>source</th>{head}</tr>{rows}</table>",
    ]
    for c in claims:
        parts += _claim(c, evidence[c.name])
    parts.append("</body></html>")
    return "\n".join(parts).encode("utf-8")
