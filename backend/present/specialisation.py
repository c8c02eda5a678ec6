"""What the trained zoo's routers learned, for the Routing page: per expert the tokens it takes, how much the
token decides the expert (trained beside the same architecture untrained), and load balance by router kind.

Every model is run over the same text: ``WINDOWS`` windows of the zoo recipe's sequence length, evenly spaced
over the held-out corpus split (``backend.train.data.corpus_data().validation``), so Shakespeare and the King
James Bible both appear. The untrained twin of a trained miniature is its config (``config.json`` of the
shipped folder) with weights initialised as the trainer initialises them (``torch.manual_seed`` then
``from_config``) at the seed of the shipped checkpoints (:func:`untrained_seed`), so the twin holds the weights
their training started from. Routing records are cached in memory and on disk under the runs
directory (``cache/routing/``), keyed by the weights' bytes, the config, the seed and the text, so a server
computes each model once (``live.specialisation`` holds the estimator).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..arch.architecture import resolve
from ..arch.errors import ArchLabError
from ..live import zoo
from ..live.roots import runs_dir
from ..live.specialisation import TextRouting, load_balance, route_text, specialisation, token_expert_shares, top_tokens

#: windows of the validation split routed (× the recipe's sequence length = tokens)
WINDOWS = 64
TRAINED, UNTRAINED = "trained", "untrained"
AUX, AUX_FREE, NONE = "auxiliary loss", "aux-loss-free (bias-corrected)", "no balancing term"
_VERSION = "routing-v1"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class ZooMoE:
    """A distinct MoE miniature of the shipped zoo."""

    key: str  # its first catalog key (the folder's representative)
    label: str  # names of every catalog architecture sharing it
    folder: Path
    config: dict
    router: str  # AUX / AUX_FREE / NONE
    aux_coef: float
    num_experts: int
    top_k: int
    layers: tuple[int, ...]


def router_kind(config: dict) -> tuple[str, float]:
    """How this config's routers are balanced in training (read from the ArchSpec and the config, as the
    trainer decides): DeepSeek's bias-corrected aux-loss-free update, else the auxiliary loss when its
    coefficient is positive."""
    spec = resolve(config).spec
    if spec.moe is None:
        raise ArchLabError("a dense model has no router")
    coef = float(config.get("router_aux_loss_coef") or 0.0)
    if spec.moe.bias_corrected:
        return AUX_FREE, 0.0
    return (AUX, coef) if coef > 0 else (NONE, 0.0)


def zoo_version() -> str:
    """Changes when the shipped zoo does (its index file and modification time): a key for caches."""
    path = zoo.zoo_dir() / zoo.INDEX
    return f"{path}@{path.stat().st_mtime_ns}" if path.is_file() else f"{path}@none"


def zoo_moe() -> list[ZooMoE]:
    """The zoo's MoE miniatures, one per folder, in catalog order (empty without a zoo)."""
    return list(_zoo_moe(zoo_version()))


@lru_cache(maxsize=4)
def _zoo_moe(version: str) -> tuple[ZooMoE, ...]:
    out: dict[Path, ZooMoE] = {}
    names: dict[Path, list[str]] = {}
    for m in zoo.models():
        names.setdefault(m.folder, []).append(m.label)
        if m.folder in out:
            continue
        config = json.loads((m.folder / "config.json").read_text())
        spec = resolve(config).spec
        if spec.moe is None:
            continue
        kind, coef = router_kind(config)
        out[m.folder] = ZooMoE(
            m.key, m.label, m.folder, config, kind, coef, spec.moe.num_experts, spec.moe.top_k, tuple(spec.moe.layers)
        )
    return tuple(replace(z, label=" / ".join(names[f])) for f, z in out.items())


def zoo_model(key: str) -> ZooMoE:
    """The zoo MoE miniature serving catalog ``key`` (ArchLabError: none shipped, or a dense one)."""
    m = zoo.get(key)
    for z in zoo_moe():
        if z.folder == m.folder:
            return z
    raise ArchLabError(f"{m.label} is a dense model: it has no router, so no routing to measure")


# ----------------------------------------------------------------- the text


def untrained_seed() -> int:
    """The seed the shipped checkpoints were trained from (the zoo's first seed; 0 without a record)."""
    seeds = zoo.index().get("seeds") or [zoo.recipe().get("seed", 0)]
    return int(seeds[0])


def seq_len() -> int:
    return int(zoo.recipe().get("seq_len") or 256)


@lru_cache(maxsize=4)
def routing_text(windows: int = WINDOWS, length: Optional[int] = None) -> np.ndarray:
    """[windows, length] token ids: windows evenly spaced over the corpus validation split."""
    from ..train.data import corpus_data

    length = length or seq_len()
    val = corpus_data().validation
    n = len(val) // length
    if n < 1 or windows < 1:
        raise ArchLabError(f"the validation split ({len(val):,} tokens) holds no window of {length} tokens")
    starts = np.unique(np.linspace(0, n - 1, min(windows, n)).round().astype(int)) * length
    out = np.stack([val[s : s + length] for s in starts]).astype(np.int64)
    out.setflags(write=False)
    return out


def describe_text(text: np.ndarray) -> str:
    return (
        f"{text.size:,} tokens: {text.shape[0]} windows of {text.shape[1]} evenly spaced over the held-out "
        "corpus split (Shakespeare + King James Bible)"
    )


# ----------------------------------------------------------------- routing records, cached

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_memory: dict[str, TextRouting] = {}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:32]


@lru_cache(maxsize=64)
def _file_digest(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


def _file(path: Path) -> bytes:
    st = path.stat()
    return _file_digest(str(path), st.st_mtime_ns, st.st_size)


def _cache_key(z: ZooMoE, which: str, text: np.ndarray) -> str:
    weights = _file(z.folder / "model.safetensors") if which == TRAINED else str(untrained_seed()).encode()
    return _digest(
        _VERSION.encode(),
        which.encode(),
        _file(z.folder / "config.json"),
        weights,
        np.ascontiguousarray(text).tobytes(),
    )


def _cache_file(key: str) -> Path:
    return runs_dir() / "cache" / "routing" / f"{key}.npz"


def _read(path: Path) -> Optional[TextRouting]:
    try:
        with np.load(path) as f:
            return TextRouting(f["token_ids"], tuple(int(x) for x in f["layers"]), f["choices"], int(f["num_experts"]))
    except (OSError, KeyError, ValueError):
        return None


def _write(path: Path, tr: TextRouting) -> None:
    import os

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npz")
        np.savez_compressed(
            tmp, token_ids=tr.token_ids, layers=np.array(tr.layers), choices=tr.choices, num_experts=tr.num_experts
        )
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only runs dir: the memory cache still holds it


def _model(z: ZooMoE, which: str):
    import torch
    from transformers import AutoConfig

    from ..arch import libs, patches

    libs.load()
    if which == TRAINED:
        return patches.from_pretrained(
            str(z.folder), dtype=torch.float32, local_files_only=True, use_safetensors=True
        ).eval()
    config = AutoConfig.from_pretrained(str(z.folder), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(untrained_seed())
        model = patches.from_config(config, dtype=torch.float32)
    return model.eval()


def routing_of(
    key: str, which: str = TRAINED, text: Optional[np.ndarray] = None, progress: Optional[Progress] = None
) -> TextRouting:
    """Every routing choice of the zoo's miniature of ``key`` (``which``: TRAINED, or UNTRAINED: the same config
    with fresh weights) over ``text`` (default :func:`routing_text`); computed once per server and disk cache."""
    if which not in (TRAINED, UNTRAINED):
        raise ArchLabError(f"which must be {TRAINED!r} or {UNTRAINED!r}, got {which!r}")
    z = zoo_model(key)
    text = routing_text() if text is None else text
    ck = _cache_key(z, which, text)
    with _locks_guard:
        lock = _locks.setdefault(ck, threading.Lock())
    with lock:
        if ck in _memory:
            return _memory[ck]
        tr = _read(_cache_file(ck))
        if tr is None:
            if progress:
                progress(f"routing {text.size:,} tokens through the {which} {z.label} miniature")
            model = _model(z, which)
            tr = route_text(model, resolve(z.config).spec, text)
            del model
            _write(_cache_file(ck), tr)
        _memory[ck] = tr
        return tr


def is_cached(key: str, which: str = TRAINED, text: Optional[np.ndarray] = None) -> bool:
    """The routing of ``key`` is in memory or on disk already (no model to run)."""
    z = zoo_model(key)
    ck = _cache_key(z, which, routing_text() if text is None else text)
    return ck in _memory or _cache_file(ck).is_file()


# ----------------------------------------------------------------- tables


def specialisation_table(
    keys: list[str], text: Optional[np.ndarray] = None, progress: Optional[Progress] = None
) -> pd.DataFrame:
    """Per zoo MoE model, weights (trained / untrained) and MoE layer: the specialisation measure and its parts."""
    rows = []
    for key in keys:
        z = zoo_model(key)
        for which in (TRAINED, UNTRAINED):
            for r in specialisation(routing_of(key, which, text, progress)):
                rows.append({"model": z.label, "key": z.key, "weights": which, **r})
    return pd.DataFrame(rows)


def specialisation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean over MoE layers of the specialisation, trained beside untrained."""
    if table.empty:
        return table
    s = table.pivot_table(index="model", columns="weights", values="specialisation", aggfunc="mean", sort=False)
    s = s.reindex(columns=[TRAINED, UNTRAINED]).reset_index()
    s.columns = ["model", "specialisation, trained", "specialisation, untrained"]
    return s


def token_text(ids) -> list[str]:
    """Display text of token ids (shipped tokenizer; whitespace made visible)."""
    from ..live.tokenizer import load_offline
    from .playground import token_label

    tok = load_offline()
    return [token_label(tok.decode([int(i)])) for i in ids]


def top_tokens_table(
    key: str,
    layer: int,
    which: str = TRAINED,
    n: int = 8,
    text: Optional[np.ndarray] = None,
    progress: Optional[Progress] = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(shown, long): per expert of ``layer``, its load and its ``n`` most frequent tokens as one line each
    ("token ×count (share of that token's occurrences)"); the long form has one row per expert and token."""
    tr = routing_of(key, which, text, progress)
    per = top_tokens(tr, layer, n)
    ids = sorted({t for row in per for t, _, _ in row["tokens"]})
    name = dict(zip(ids, token_text(ids)))
    shown, long = [], []
    for row in per:
        shown.append(
            {
                "expert": row["expert"],
                "selections": row["selections"],
                "load (%)": 100 * row["load share"],
                "tokens it takes most (count, % of that token)": "  ".join(
                    f"{name[t]} ×{c:,} ({100 * s:.0f}%)" for t, c, s in row["tokens"]
                ),
            }
        )
        for rank, (t, c, s) in enumerate(row["tokens"]):
            long.append(
                {
                    "layer": layer,
                    "expert": row["expert"],
                    "rank": rank,
                    "token_id": t,
                    "token": name[t],
                    "count": c,
                    "share_of_token": s,
                    "expert_selections": row["selections"],
                }
            )
    return pd.DataFrame(shown), pd.DataFrame(long)


def shares(
    key: str, layer: int, tokens: int = 24, text: Optional[np.ndarray] = None, progress: Optional[Progress] = None
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """TRAINED / UNTRAINED -> (P(first-choice expert | token) [tokens, E], token labels) for the ``tokens``
    most frequent tokens of the text (the same tokens for both)."""
    out = {}
    for which in (TRAINED, UNTRAINED):
        p, ids = token_expert_shares(routing_of(key, which, text, progress), layer, tokens)
        out[which] = (p, token_text(ids))
    return out


def balance_table(
    models: Optional[list[ZooMoE]] = None, text: Optional[np.ndarray] = None, progress: Optional[Progress] = None
) -> pd.DataFrame:
    """Per zoo MoE model (trained and untrained) and MoE layer: router kind, CV, max/mean and normalised entropy
    of the expert load over the text, experts never chosen."""
    rows = []
    for z in zoo_moe() if models is None else models:
        for which in (TRAINED, UNTRAINED):
            for r in load_balance(routing_of(z.key, which, text, progress)):
                rows.append(
                    {
                        "model": z.label,
                        "key": z.key,
                        "router": z.router,
                        "aux loss coefficient": z.aux_coef,
                        "experts": z.num_experts,
                        "top-k": z.top_k,
                        "weights": which,
                        **r,
                    }
                )
    return pd.DataFrame(rows)


def balance_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over models and layers per router kind and weights: CV, max/mean, entropy; models counted."""
    if table.empty:
        return table
    g = table.groupby(["router", "weights"], sort=False)
    out = g[["cv", "max_over_mean", "entropy"]].mean()
    out["models"] = g["key"].nunique()
    out["layers"] = g.size()
    return out.reset_index()
