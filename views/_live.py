"""The Playground's run, shared by the Playground and Routing pages.

Session-state key: "pg_live" -> backend.present.playground.LiveRun (the current or last run; kept after it
ends so both pages can rebuild their final view from it).
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from backend.live.generation import cancel_session
from backend.present.playground import LiveRun

KEY = "pg_live"
#: url paths of the pages that follow a run; opening any other page cancels it
WATCHERS = ("playground", "routing")


def session_id() -> Optional[str]:
    """Streamlit's id of this browser session (None outside a script run)."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else None


def leave(url_path: str) -> None:
    """Cancel this session's runs when the page shown is not one that follows them."""
    sid = session_id()
    if url_path not in WATCHERS and sid is not None:
        cancel_session(sid)


def current() -> Optional[LiveRun]:
    """The current or last run of this session, or None."""
    return st.session_state.get(KEY)


def replace(live: LiveRun) -> None:
    """Make ``live`` the session's run, cancelling the one before it."""
    old = current()
    st.session_state[KEY] = live
    if old is not None and old is not live:
        old.cancel()


def follow(live: LiveRun, redraw: Callable[[], None], every_s: float = 0.0) -> None:
    """While the run goes on: drain its events and call ``redraw`` (at most once per ``every_s``);
    then rerun the page so it draws its final form. A click on any widget interrupts this loop
    (Streamlit stops the script at its next element call), so Stop and page switches stay live."""
    if live.done:
        return
    last = 0.0
    while not live.done:
        if live.pump(0.1) and time.monotonic() - last >= every_s:
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
