"""The Playground's run, shared by the Playground and Routing pages, by id.

A run lives in the server's run registry (``backend.live.runs``), not in a browser session: a session keeps
only its id (session-state key "pg_run"), and the pages mirror it to the URL as ``?run=ID``. Opening that
link in any tab, or reloading, re-attaches to the same run (same tokens, same routing) while the server
keeps it. A tab that follows a running run keeps it going; a run that no tab has followed for
``generation.IDLE_TIMEOUT_S`` seconds cancels itself (what it produced stays reachable by its link).
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from backend.arch.errors import ArchLabError
from backend.live import runs
from backend.live.generation import GenerationSettings
from backend.live.runtime import ModelRequest
from backend.present.playground import LiveRun, SlotModel, gpu_bytes
from backend.present.text import md

KEY = "pg_run"
PARAM = "run"
KIND = "generate"
#: seconds a replaced run of this session gets to end (it stops within one decode step) before the new
#: run is admitted, so it does not count against the visitor's quota
REPLACE_WAIT_S = 2.0


def session_id() -> str:
    """Streamlit's id of this browser session ("" outside a script run)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


def current() -> Optional[LiveRun]:
    """The run this page shows: the one named by ``?run=`` (any tab holding its link), else this session's
    last one; None when there is neither. A bad or expired link shows one line and is dropped."""
    ss = st.session_state
    wanted = st.query_params.get(PARAM)
    if wanted is not None and wanted != ss.get(KEY):
        try:
            runs.get(wanted, KIND)
        except ArchLabError as e:
            st.error(str(e), icon=":material/link_off:")
            del st.query_params[PARAM]
        else:
            ss[KEY] = wanted
    run_id = ss.get(KEY)
    if run_id is None:
        return None
    try:
        live = runs.job(run_id, KIND)
    except ArchLabError:  # this session's last run expired
        ss.pop(KEY, None)
        st.query_params.pop(PARAM, None)
        return None
    st.query_params[PARAM] = run_id
    return live


def current_id() -> Optional[str]:
    """Id of the run :func:`current` returned (None without one)."""
    return st.session_state.get(KEY)


def start(
    slots: Sequence[SlotModel], requests: Sequence[ModelRequest], prompt: str, settings: GenerationSettings
) -> LiveRun:
    """Start a run as this session's current one, within this visitor's quotas (ArchLabError says which
    limit). The session's previous run is stopped first if this session started it; a run it only watches
    through a link is left to its owner."""
    sid = session_id()
    old_id = st.session_state.get(KEY)
    try:
        old = runs.get(old_id, KIND) if old_id else None
    except ArchLabError:
        old = None
    if old is not None and old.session_id == sid and old.job.running:
        old.job.cancel()
        old.job.run.join(REPLACE_WAIT_S)
    with runs.admit(sid, KIND, gpu_bytes=gpu_bytes(requests)) as ticket:
        live = LiveRun.start(slots, requests, prompt, settings, sid)
        ticket.register(live)
    st.session_state[KEY] = ticket.id
    st.query_params[PARAM] = ticket.id
    return live


def link(run_id: str, page: str) -> str:
    """The absolute link of a run on ``page`` ("playground" or "routing")."""
    base = (st.context.url or "").split("?")[0].rstrip("/")
    for suffix in ("/playground", "/routing"):
        base = base.removesuffix(suffix)
    return f"{base}/{page}?{PARAM}={run_id}"


def show_link(live: LiveRun, page: str) -> None:
    """The run's prompt (it may be another visitor's run, opened by its link) and its link on ``page``."""
    prompt = live.run.prompt if len(live.run.prompt) <= 300 else live.run.prompt[:300] + "…"
    st.caption(f"Prompt of this run: {md(prompt)}")
    run_id = current_id()
    if run_id:
        st.caption(
            f":material/link: Link to this run: {md(link(run_id, page))}",
            help=f"Opens this run in any tab or browser, on the Playground and Routing pages, while the server "
            f"keeps it: until {runs.limits().ttl_s / 3600:g} h after it ends. Anyone with the link can watch "
            "it and stop it; nobody without it can find it.",
        )


def _milestones(live: LiveRun) -> tuple:
    """Per model: its status and whether it has a token yet (a change here is drawn at once)."""
    return tuple((s["status"], s["new_tokens"] > 0) for s in map(live.run.stats, range(len(live.slots))))


def follow(live: LiveRun, redraw: Callable[[], None], every_s: float = 0.0) -> None:
    """While the run goes on: drain its events and call ``redraw``: at once when a model starts, shows its
    first token or ends, otherwise at most once per ``every_s`` (the text streaming on); then rerun the page
    so it draws its final form. A click on any widget interrupts this loop (Streamlit stops the script at its
    next element call), so Stop and page switches stay live."""
    if live.done:
        return
    last, seen, marks = 0.0, live.version, _milestones(live)
    while not live.done:
        # wait for news, but with a change already waiting only until its redraw is due
        live.pump(0.1 if live.version == seen else max(0.0, min(0.1, last + every_s - time.monotonic())))
        if live.version == seen:  # another tab with the link may drain some events: any change counts
            continue
        now = _milestones(live)
        if now != marks or time.monotonic() - last >= every_s:
            seen, marks = live.version, now
            redraw()
            last = time.monotonic()
    st.rerun()


def wait_until(live: LiveRun, ready: Callable[[], bool]) -> None:
    """Drain events until ``ready()`` or the run ends, then rerun the page (e.g. a model has loaded)."""
    if ready() or live.done:
        return
    while not (ready() or live.done):
        live.pump(0.1)
    st.rerun()
