"""Findings: the article's claims and the published results behind them, each with ArchLab's evidence (exact
figures from the catalog, controlled ablations) and a verdict computed from its intervals. Lays out what
``backend.present.findings`` returns; the shipped evidence needs no training and no PyTorch to show."""

from __future__ import annotations

import streamlit as st

from backend.present import findings as fd
from backend.present import findings_charts as fc
from backend.present.text import md
from backend.train import findings as F
from views import _ui


@st.cache_resource(show_spinner=False, max_entries=64)
def _trained(claim: str, mode: str, origin: str, stamp: tuple):
    """One claim's evidence, judged; read again when its files change (``stamp``). Shared and never mutated."""
    return fd.trained(claim, mode, origin)


def _evidence(claim: str) -> dict[str, fd.ModeEvidence]:
    return {
        m: fd.ModeEvidence(m, *(_trained(claim, m, o, fd.stamp(claim, m, o)) for o in (fd.SHIPPED, fd.RERUN)))
        for m in fd.MODES
    }


@st.cache_resource(show_spinner=False, max_entries=16)
def _static(claim: str):
    return fd.static_evidence(claim)


@st.cache_data(show_spinner=False, max_entries=4)
def _report(stamps: tuple) -> bytes:
    from backend.present import findings_report

    return findings_report.report_html()


def _badge(text: str) -> None:
    st.badge(text, color=fd.verdict_color(text))


def _summary(claims: list, evidence: dict) -> None:
    table = fd.summary_table(claims, evidence)

    def badge(text: str) -> str:
        return f":{fd.verdict_color(text)}-badge[{md(text)}]"

    def cell(r, mode: str) -> str:
        rerun = r[f"re-run ({mode})"]
        return badge(fd.short_verdict(r[f"verdict ({mode})"])) + (
            f" re-run: {badge(fd.short_verdict(rerun))}" if rerun else ""
        )

    lines = ["| claim | source | verdict (full recipe, one GPU) | verdict (quick recipe, CPU) |", "|---|---|---|---|"]
    lines += [
        f"| [{md(r['claim'])}](#{r['name']}) | {md(r['source'])} | {cell(r, 'full')} | {cell(r, 'quick')} |"
        for _, r in table.iterrows()
    ]
    st.markdown("\n".join(lines))
    stamps = tuple(
        (c.name, m, o, fd.stamp(c.name, m, o)) for c in claims for m in fd.MODES for o in (fd.SHIPPED, fd.RERUN)
    )
    with st.container(horizontal=True, gap="small"):
        st.download_button(
            "CSV",
            data=table.to_csv(index=False).encode(),
            file_name="findings-summary.csv",
            mime="text/csv",
            key="dl_findings_summary_csv",
            on_click="ignore",
            icon=":material/download:",
            help="The table above as CSV",
        )
        st.download_button(
            "HTML report",
            data=lambda: _report(stamps),
            file_name="archlab-findings.html",
            mime="text/html",
            key="dl_findings_report",
            on_click="ignore",
            icon=":material/download:",
            help="The whole page in one file that opens offline: every claim's text, tables and "
            "charts (plotly.js included once)",
        )


def _source(c: F.Claim) -> None:
    src = c.source
    st.markdown(f"**Claim.** {md(c.claim)}")
    st.markdown(f"**Source.** {md(src['label'])}: {md(src['cite'])}.")
    st.markdown(f"**What the source reports.** {md(src['reports'])}  \n**Direction.** {md(src['direction'])}")
    if c.article:
        st.caption(f"The article: “{md(c.article)}”")


def _static_section(c: F.Claim) -> None:
    s = _static(c.name)
    st.subheader("Static evidence (exact, from the catalog)", anchor=False)
    _ui.frame(
        s.table,
        f"{c.name} static figures",
        caption=s.caption,
        hide_index=True,
        width="stretch",
        column_config={col: _ui_num(col) for col in s.table.columns if _ui_num(col) is not None},
    )
    _ui.chart(fc.static_bars(s), f"{c.name} static figures chart")


def _ui_num(col: str):
    if "bytes" in col or "parameters" in col or "elements" in col:
        return st.column_config.NumberColumn(format="%,.0f")
    if col.startswith("share") or col.startswith("active share") or "÷" in col:
        return st.column_config.NumberColumn(format="%.4f")
    return None


def _rerun(c: F.Claim) -> None:
    """The re-run links (quick recipe by default) and the command line."""
    st.subheader("Re-run it", anchor=False)
    mode = (
        st.segmented_control(
            "Re-run with the",
            list(fd.MODES),
            default="quick",
            key=f"rerun_mode_{c.name}",
            format_func=fd.MODE_LABELS.get,
            required=True,
        )
        or "quick"
    )
    with st.container(horizontal=True, gap="small"):
        for a in c.ablations:
            st.page_link(
                "views/experiments.py",
                label=f"Re-run {a['name']} ({mode}) on the Experiments page",
                icon=":material/replay:",
                query_params=fd.rerun_params(c, a["name"], mode),
                help="Opens the Ablation mode with this recipe filled in; when the run ends, its result is "
                "drawn here beside the shipped one.",
            )
    st.code(fd.cli_line(c, mode), language="bash")


def _mode(c: F.Claim, e: fd.ModeEvidence) -> None:
    if not e.runs:
        st.info(
            f"Not run under the {fd.MODE_LABELS[e.mode]} yet: no shipped evidence and no re-run in this server's "
            f"runs folder. Run it with `{fd.cli_line(c, e.mode)}`, or with a re-run link below.",
            icon=":material/hourglass_empty:",
        )
        return
    with st.container(horizontal=True, gap="small", vertical_alignment="center"):
        for t in e.runs:
            st.markdown(f"**{fd.sentence(t.label)}:**")
            _badge(fd.verdict_text(t))
    key = f"{c.name} {e.mode}"
    _ui.frame(
        fd.sanity_table(c, e.runs), f"{key} sanity", caption=fd.CAPTIONS["sanity"], hide_index=True, width="stretch"
    )
    comps = fd.comparisons_table(e.runs)
    _ui.frame(
        fd.comparisons_display(comps),
        f"{key} comparisons",
        csv=fd.comparisons_csv(comps),
        caption=fd.CAPTIONS["comparisons"],
        hide_index=True,
        width="stretch",
    )
    for a in c.ablations:
        name = a["name"]
        here = [t for t in e.runs if name in t.evidence]
        st.markdown(
            f"##### Ablation `{name}`: "
            + " × ".join(f"{md(ax)} = {md(', '.join(v))}" for ax, v in a["vary"])
            + f" on {md(a['base'])}, data {md(a['data'])}"
        )
        if not here:
            st.info(
                f"Not run under the {fd.MODE_LABELS[e.mode]}: `{fd.cli_line(c, e.mode)}`.",
                icon=":material/hourglass_empty:",
            )
            continue
        for t in here:
            changes = fd.recipe_changes(t, name)
            if changes:
                st.warning(
                    f"The {t.label} differs from the claim's recipe: {md('; '.join(changes))}.", icon=":material/tune:"
                )
        shown, exact = fd.cells_table(here, name)
        _ui.frame(
            shown, f"{key} {name} cells", csv=exact, caption=fd.CAPTIONS["cells"], hide_index=True, width="stretch"
        )
        _ui.chart(
            fc.loss_vs_lr(here, name, fd.chart_title(c, e.mode, name)),
            fd.chart_title(c, e.mode, name),
            fd.CAPTIONS["loss_vs_lr"],
        )
        if fd.uses_stability(c, name):
            for t in here:
                title = fd.chart_title(c, e.mode, name, "stability")
                _ui.chart(fc.stability(t, name, title), f"{title} {t.origin}")
            st.caption(fd.CAPTIONS["stability"])
        recipe = fd.recipe_table(here, name)
        _ui.frame(
            recipe,
            f"{key} {name} recipe",
            caption=fd.CAPTIONS["recipe"],
            hide_index=True,
            width="stretch",
            height=38 + 35 * len(recipe),
        )


def _claim(c: F.Claim, evidence: dict, slots: list) -> None:
    st.header(c.title, anchor=c.name, divider="gray")
    _source(c)
    if c.static:
        slot = st.empty()
        slot.caption(":material/hourglass_top: Computing the exact figures from the catalog configs…")
        slots.append((c, slot))
    st.subheader("Trained evidence", anchor=False)
    tabs = st.tabs(
        [fd.sentence(fd.MODE_LABELS[m]) + (" · with a re-run" if evidence[m].rerun else "") for m in fd.MODES]
    )
    for tab, mode in zip(tabs, fd.MODES):
        with tab:
            _mode(c, evidence[mode])
    _rerun(c)


st.title("Findings")
st.caption(fd.INTRO)
claims = F.claims()
slots: list = []
with _ui.guard("the findings"):
    evidence = {c.name: _evidence(c.name) for c in claims}
    _summary(claims, evidence)
    for c in claims:
        with _ui.guard(c.title):
            _claim(c, evidence[c.name], slots)
# Static figures build variants on the meta device (PyTorch): drawn last, so the page shows first.
for c, slot in slots:
    with slot.container(), _ui.guard(f"{c.title}: static evidence"):
        _static_section(c)
