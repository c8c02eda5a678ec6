"""Training on equal footing: the shipped corpus and synthetic probes, miniatures sized to a matched
budget, the trainer that runs several architectures under one recipe, and the run store.

May import ``backend.arch`` and ``backend.live``; never ``present`` (and never Streamlit).
"""
