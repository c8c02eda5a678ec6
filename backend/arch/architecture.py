"""A model resolved once: the object every other layer is handed.

``resolve(source)`` turns a catalog key or a config dict into an :class:`Architecture` at the boundary
(the CLI, a table, ``runtime.load``); counting, memory, miniatures, placement and the runtime then take
that object and read what they need from it, instead of canonicalising the source again. A config dict is
validated when the object is made (a catalog config on first use); the meta-device model, the spec and the
counts are built on first use and kept on the object.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable, Optional, Union

from . import catalog, configs
from .errors import ArchLabError

#: Architectures kept by ``resolve`` (least recently used dropped first).
MAX_RESOLVED = 256
#: Derived values (KV figures, device plans) kept per architecture.
MAX_MEMO = 1024


class _lazy:
    """A property computed once per object, under the object's lock, then kept as a plain attribute
    (later reads do not call anything)."""

    def __init__(self, make: Callable[["Architecture"], Any]):
        self.make, self.name, self.__doc__ = make, make.__name__, make.__doc__

    def __get__(self, obj: Optional["Architecture"], owner=None) -> Any:
        if obj is None:
            return self
        with obj._lock:
            if self.name not in obj.__dict__:
                obj.__dict__[self.name] = self.make(obj)
        return obj.__dict__[self.name]


class Architecture:
    """One model's canonical config, with its validated transformers config, meta model, ArchSpec and
    exact counts built lazily (once, thread-safely) and kept here."""

    def __init__(self, canon: str, label: str, key: Optional[str] = None):
        self.canon, self.label, self.key = canon, label, key
        self._lock = threading.RLock()
        self._memo: "OrderedDict[Hashable, Any]" = OrderedDict()

    def __repr__(self) -> str:
        return f"Architecture({self.key or self.label!r})"

    def memo(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """A value derived from this architecture, computed once per ``key`` (e.g. a KV figure at a context);
        the last ``MAX_MEMO`` are kept."""
        with self._lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
        value = make()
        with self._lock:
            self._memo[key] = value
            while len(self._memo) > MAX_MEMO:
                self._memo.popitem(last=False)
        return value

    def as_dict(self) -> dict[str, Any]:
        """The config as a fresh dict (safe to modify)."""
        return json.loads(self.canon)

    # ----- what the layers below read (each built on first use, then a plain attribute)
    @_lazy
    def config(self):
        """The validated ``PretrainedConfig`` (shared: do not mutate)."""
        return configs.build_config(self.canon)

    @_lazy
    def meta_model(self):
        """The full-size model on the meta device (shared: do not modify)."""
        from .meta import build_meta_model

        return build_meta_model(self.config)

    @_lazy
    def spec(self):
        """The normalized :class:`~backend.arch.spec.ArchSpec` (a catalog model's from ``assets/specs.json``
        when that file was built by this code: no torch needed; see :mod:`backend.arch.speccache`)."""
        from .spec import read_spec
        from .speccache import lookup

        return lookup(self.canon) or read_spec(self.config, self.meta_model)

    @_lazy
    def counts(self):
        """Exact parameters by component, summed over the meta model's tensors (a catalog model's from
        ``assets/specs.json`` when that file was built by this code)."""
        from .counting import count_tensors
        from .speccache import lookup_counts

        return lookup_counts(self.canon) or count_tensors(self.meta_model, self.spec)

    @_lazy
    def formula_counts(self):
        """The same components computed by formula from the spec alone."""
        from .counting import count_formula

        return count_formula(self.spec)

    @_lazy
    def entry(self) -> Optional[catalog.CatalogEntry]:
        """The catalog row, or None for a config that is not a catalog model."""
        return catalog.get(self.key) if self.key else None


#: A model as the layers above hand it in: a catalog key, a config dict, or one already resolved.
Source = Union[str, dict, Architecture]

_resolved: "OrderedDict[tuple, Architecture]" = OrderedDict()
_guard = threading.Lock()


def resolve(source: Source) -> Architecture:
    """The :class:`Architecture` of a source (the same object for the same config and name).

    An Architecture passes through unchanged. ArchLabError for an unknown key or a config dict that
    fails validation (checked here, before anything is built). A catalog model's shipped config (held valid
    by the tests) is built on first use, so resolving one imports nothing heavy.
    """
    if isinstance(source, Architecture):
        return source
    key = source if isinstance(source, str) else None
    if key is not None:
        entry = catalog.get(key)
        canon, name = json.dumps(catalog.raw_config(key), sort_keys=True), entry.name
    else:
        canon, name = configs.canonical(source), configs.label(source)
    ident = (key, canon)
    with _guard:
        hit = _resolved.get(ident)
        if hit is not None:
            _resolved.move_to_end(ident)
            return hit
    arch = Architecture(canon, name, key)
    if key is None:
        arch.config  # validate now: a bad config fails at the boundary, with one line
    with _guard:
        arch = _resolved.setdefault(ident, arch)
        while len(_resolved) > MAX_RESOLVED:
            _resolved.popitem(last=False)
    return arch


# Shorthands for callers holding a loose source (tests, one-off scripts).
def arch_spec(source: Source):
    """The ArchSpec of a source."""
    return resolve(source).spec


def load_config(source: Source):
    """The validated ``PretrainedConfig`` of a source (shared: do not mutate)."""
    return resolve(source).config


def meta_model(source: Source):
    """The full-size meta-device model of a source (shared: do not modify)."""
    return resolve(source).meta_model


def count_params(source: Source):
    """Exact total/active parameters by component, from the meta model's tensors."""
    return resolve(source).counts


def formula_params(source: Source):
    """Total/active/components by formula from the ArchSpec."""
    return resolve(source).formula_counts


def label(source: Source) -> str:
    """Display name of a source."""
    return source.label if isinstance(source, Architecture) else configs.label(source)


#: per-layer config lists that must be cut with the stack
_PER_LAYER_LISTS = ("layer_types", "no_rope_layers", "moe_layers", "mlp_only_layers")


def with_layers(source: Source, layers: int) -> dict[str, Any]:
    """The same architecture at full width with only the first ``layers`` decoder layers (a config dict).

    For models too large for the hardware: per-layer cost measured on a few layers extrapolates to
    full depth. Per-layer lists are cut to match (a config's layer_types is fixed when built).
    """
    arch = resolve(source)
    d = arch.as_dict()
    full = d.get("num_hidden_layers") or d.get("n_layer")
    if not isinstance(full, int) or isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= full:
        raise ArchLabError(f"layers must be an integer from 1 to {full}, got {layers!r}")
    d["num_hidden_layers" if "num_hidden_layers" in d else "n_layer"] = layers
    for k in _PER_LAYER_LISTS:
        v = d.get(k)
        if isinstance(v, list) and len(v) == full:
            d[k] = v[:layers]
        elif isinstance(v, list) and k in ("moe_layers", "mlp_only_layers"):
            d[k] = [i for i in v if isinstance(i, int) and i < layers]
    d["_name_or_path"] = f"{arch.label} [{layers} of {full} layers]" if layers < full else arch.label
    return d
