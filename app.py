"""ArchLab: compare LLM architectures side by side. Run: streamlit run app.py"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

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
)

st.set_page_config(page_title="ArchLab", page_icon=":material/account_tree:", layout="wide")
pages = [st.Page(str(ROOT / f), title=t, icon=i, url_path=u, default=n == 0)
         for n, (f, t, i, u) in enumerate(PAGES) if (ROOT / f).is_file()]
nav = st.navigation(pages)
st.sidebar.title("ArchLab")
st.sidebar.caption("Compare LLM architectures side by side: exact parameters, memory and block diagrams "
                   "from the published configs.")
_state.sidebar()
nav.run()
