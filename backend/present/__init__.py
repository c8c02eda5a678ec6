"""Presentation: tables, Plotly charts, block diagrams, colours, exports and the pages' view models
(what the Playground, Routing and Experiments pages draw). Plain data in, plain data out; no Streamlit.

May import ``backend.arch``, ``backend.live`` and ``backend.train``.
"""
