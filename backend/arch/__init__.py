"""Static architecture analysis: catalog, config validation, the normalized ArchSpec, exact parameter
counts and memory figures, all from a config on PyTorch's meta device (no weights).

A source (catalog key or config dict) is resolved once into an :class:`Architecture`
(``architecture.resolve``), which the other layers are handed. Imports nothing of ArchLab's above it
(no ``live``, ``train`` or ``present``).
"""

from .architecture import (  # noqa: F401
    Architecture,
    Source,
    arch_spec,
    count_params,
    formula_params,
    load_config,
    meta_model,
    resolve,
    with_layers,
)
