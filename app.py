"""ArchLab: compare LLM architectures side by side. Run: streamlit run app.py"""

from __future__ import annotations

import os
from pathlib import Path

# Before torch is first imported (never by Streamlit itself): idle OpenMP threads sleep instead of spinning.
# A shared server's cores also run sessions, workers and browsers; spinning threads of a 2-thread team then
# wait on each other for whole time slices (a small miniature's first token: ~100 ms instead of ~10 ms).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import streamlit as st  # noqa: E402

from backend.arch import catalog, libs
from backend.present import warmup
from views import _state

ROOT = Path(__file__).resolve().parent
#: (file, title, icon, url path); pages whose file does not exist yet are left out of the menu.
#: The folder is views/, not pages/: a pages/ folder switches Streamlit to its old multipage mode
#: (AppTest and a fresh server's first request would run a page without this script and its sidebar).
PAGES = (
    ("views/architectures.py", "Architectures", ":material/account_tree:", "architectures"),
    ("views/parameters.py", "Parameters & Memory", ":material/memory:", "parameters"),
    ("views/playground.py", "Playground", ":material/chat:", "playground"),
    ("views/routing.py", "Routing", ":material/alt_route:", "routing"),
    ("views/experiments.py", "Experiments", ":material/science:", "experiments"),
    ("views/findings.py", "Findings", ":material/fact_check:", "findings"),
)
#: pages whose modules import torch (the runtime, training): on a fresh server they wait for it under a spinner
NEEDS_TORCH = ("playground", "routing", "experiments")
#: seconds between the end of a fresh server's first page and the start of its warm-up
WARMUP_DELAY_S = 3.0

st.set_page_config(page_title="ArchLab", page_icon=":material/account_tree:", layout="wide")
pages = [
    st.Page(str(ROOT / f), title=t, icon=i, url_path=u, default=n == 0)
    for n, (f, t, i, u) in enumerate(PAGES)
    if (ROOT / f).is_file()
]
nav = st.navigation(pages)


def _sidebar() -> None:
    st.sidebar.title("ArchLab")
    st.sidebar.caption(
        "Compare LLM architectures side by side: exact parameters, memory and block diagrams "
        "from the published configs."
    )
    _state.sidebar()


# The sidebar's widgets go out after the page's content: a browser fetches a widget's code the first time it shows
# one (the model picker and the uploader: ~35 small files over its 6 connections), and on a first visit those
# requests queued before the page's own, Plotly's 4.7 MB bundle among them. The page reads the selection restored
# here. A page that first waits for PyTorch gets its sidebar at once.
_state.restore_selection()
sidebar_first = nav.url_path in NEEDS_TORCH and not libs.loaded()
if sidebar_first:
    _sidebar()
    with st.spinner("Loading PyTorch and transformers (once after the server starts, a few seconds)…"):
        libs.load()
try:
    nav.run()
finally:
    if not sidebar_first:
        _sidebar()
    # Once this first page is sent, warm up what the next pages need (once per server), after a pause or at the
    # next run, whichever comes first: the browser is still fetching the page's code and drawing it, and the
    # warm-up's imports hold the GIL that the server's event loop needs to send those files.
    warmup.start(
        [m.id for m in _state.selected() if m.id in catalog.keys()] or _state.DEFAULT_MODELS, delay=WARMUP_DELAY_S
    )
