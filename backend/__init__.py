"""ArchLab's backend: a plain library (no Streamlit), grouped by role.

- ``arch``: static architecture analysis (catalog, configs, ArchSpec, counts, memory). Imports nothing of ours.
- ``live``: runnable models, streaming generation, routing capture. May import ``arch``.
- ``train``: equal-footing training of miniatures (data, budgets, trainer, run store). May import ``arch``, ``live``.
- ``present``: tables, charts, diagrams, exports and page view models. May import all of the above.
The pages in ``views/`` import ``backend`` only; ``python -m backend`` is the command line.
"""
