"""Static architecture analysis: catalog, config validation, the normalized ArchSpec, exact parameter
counts and memory figures, all from a config on PyTorch's meta device (no weights).

Imports nothing of ArchLab's above it (no ``live``, ``train`` or ``present``).
"""
