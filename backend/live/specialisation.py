"""Routing that learned: which tokens each expert takes, how much the token decides the expert, and how
evenly the load spreads, measured by running a model over a fixed text with its routers hooked.

Estimator (``specialisation``): per MoE layer, the plug-in mutual information I(X; Y) in bits between the
token id X at a position and the router's first choice Y there (rank 0 of its top-k, the expert the heatmaps
colour by), from the joint counts over every position of the text: I = H(Y) − H(Y | X). With a vocabulary of
thousands of ids and tens of thousands of positions the plug-in estimate is biased upwards (token ids seen
once fix their expert by chance), so the same estimate is also taken with the experts shuffled across
positions (marginals kept, any link to the token removed), averaged over a few fixed-seed shuffles: that is
what chance alone gives. The specialisation is the excess over chance, in bits, and divided by log2(E), the
most an expert choice among E experts can carry (0: the token says nothing about the expert; 1: the token
decides the expert and the experts are used evenly). Dividing by log2(E) rather than by H(Y) keeps a collapsed
router (nearly every token to one expert, H(Y) near 0) at near 0 instead of an unstable ratio of two tiny
numbers, and keeps models with different expert counts on one scale.

No Streamlit; the text comes in as token windows (``backend.train.data`` holds the corpus).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch.errors import ArchLabError
from ..arch.spec import ArchSpec
from .routing import RoutingRecorder, balance

#: positions run through the model at once (windows are batched up to this many tokens)
BATCH_TOKENS = 8192
#: shuffles averaged for the chance level of the plug-in estimate
CHANCE_ROUNDS = 5


@dataclass(frozen=True)
class TextRouting:
    """Every routing choice of one model over one text."""

    token_ids: np.ndarray  # [N] the routed tokens, windows concatenated
    layers: tuple[int, ...]  # MoE layer indices (rows of ``choices``)
    choices: np.ndarray  # [L, N, k] expert indices in the router's own order (rank 0 = its first choice)
    num_experts: int

    @property
    def top_k(self) -> int:
        return int(self.choices.shape[-1])

    def row(self, layer: int) -> int:
        if layer not in self.layers:
            raise ArchLabError(f"layer {layer} is not a MoE layer (MoE layers: {', '.join(map(str, self.layers))})")
        return self.layers.index(layer)


def route_text(model, spec: ArchSpec, windows: np.ndarray, batch_tokens: int = BATCH_TOKENS) -> TextRouting:
    """Run ``windows`` ([n, T] token ids) through ``model`` (no cache, no gradients), recording every
    router's choice for every position."""
    import torch

    if spec.moe is None:
        raise ArchLabError(f"{spec.model_type} has no mixture-of-experts layers: there is no routing to measure")
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.size == 0:
        raise ArchLabError("the text to route must be a non-empty [windows, tokens] array of token ids")
    if int(windows.max()) >= spec.vocab_size or int(windows.min()) < 0:
        raise ArchLabError(f"token ids outside the model's vocabulary of {spec.vocab_size:,}")
    per = max(1, batch_tokens // windows.shape[1])
    device = next(model.parameters()).device
    body = getattr(model, "base_model", model)  # the decoder without the LM head: no logits needed
    parts: dict[int, list[np.ndarray]] = {}
    with RoutingRecorder(model, spec) as rec, torch.inference_mode():
        for i in range(0, len(windows), per):
            x = torch.from_numpy(windows[i : i + per].astype(np.int64)).to(device)
            body(input_ids=x, use_cache=False)
            for layer, (idx, _w) in rec.take().items():
                parts.setdefault(layer, []).append(
                    np.asarray(idx, dtype=np.int16 if spec.moe.num_experts < 32768 else np.int32)
                )
    layers = tuple(sorted(parts))
    if not layers:
        raise ArchLabError("the routers recorded nothing for this text")
    choices = np.stack([np.concatenate(parts[layer]) for layer in layers])
    return TextRouting(windows.reshape(-1).copy(), layers, choices, spec.moe.num_experts)


# ----------------------------------------------------------------- statistics


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(float)
    p = c / c.sum()
    return float(-(p * np.log2(p)).sum())


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Plug-in I(X; Y) in bits of two equally long integer sequences (joint counts → H(Y) − H(Y | X))."""
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    if len(x) != len(y) or len(x) == 0:
        raise ArchLabError("mutual information needs two non-empty sequences of the same length")
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    ny = int(yi.max()) + 1
    joint = np.bincount(xi * ny + yi).astype(float)
    joint = joint[joint > 0]
    n = float(len(x))
    h_xy = -(joint / n * np.log2(joint / n)).sum()
    return float(_entropy_bits(np.bincount(xi)) + _entropy_bits(np.bincount(yi)) - h_xy)


def chance_information(x: np.ndarray, y: np.ndarray, rounds: int = CHANCE_ROUNDS, seed: int = 0) -> float:
    """Mean plug-in I(X; Y) with ``y`` shuffled (fixed seed): what the estimator gives for no link at all."""
    rng = np.random.default_rng(seed)
    return float(np.mean([mutual_information(x, rng.permutation(y)) for _ in range(rounds)]))


def specialisation(tr: TextRouting, rounds: int = CHANCE_ROUNDS, seed: int = 0) -> list[dict]:
    """Per MoE layer: layer, tokens, H(expert) in bits, plug-in MI(token; first-choice expert) in bits, its
    chance level, the excess over chance, and that excess ÷ log2(E) (see the module docstring)."""
    rows = []
    for r, layer in enumerate(tr.layers):
        y = tr.choices[r, :, 0]
        h = _entropy_bits(np.bincount(y, minlength=tr.num_experts))
        mi = mutual_information(tr.token_ids, y)
        chance = chance_information(tr.token_ids, y, rounds, seed)
        rows.append(
            {
                "layer": layer,
                "tokens": int(len(y)),
                "expert entropy (bits)": h,
                "MI (bits)": mi,
                "chance MI (bits)": chance,
                "MI above chance (bits)": mi - chance,
                "specialisation": (mi - chance) / np.log2(tr.num_experts),
            }
        )
    return rows


def expert_load(tr: TextRouting) -> np.ndarray:
    """[layers, E] selections of each expert (every rank of the top-k counts)."""
    return np.stack(
        [np.bincount(tr.choices[r].ravel(), minlength=tr.num_experts)[: tr.num_experts] for r in range(len(tr.layers))]
    )


def load_balance(tr: TextRouting) -> list[dict]:
    """Per MoE layer: coefficient of variation, max/mean and normalised entropy of the expert load (all k
    choices of every position), and the experts never chosen."""
    load = expert_load(tr)
    b = balance(load)
    return [
        {
            "layer": layer,
            "cv": float(b["cv"][r]),
            "max_over_mean": float(b["max_over_mean"][r]),
            "entropy": float(b["entropy"][r]),
            "never_chosen": int((load[r] == 0).sum()),
        }
        for r, layer in enumerate(tr.layers)
    ]


def token_expert_counts(tr: TextRouting, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts [E, V'], token ids [V']): how often each expert took each token id present in the text
    (any rank of the top-k), columns the distinct ids in increasing order."""
    r = tr.row(layer)
    ids, inverse = np.unique(tr.token_ids, return_inverse=True)
    k = tr.top_k
    experts = tr.choices[r].astype(np.int64).ravel()  # [N * k]
    cols = np.repeat(inverse, k)
    counts = np.bincount(experts * len(ids) + cols, minlength=tr.num_experts * len(ids))
    return counts.reshape(tr.num_experts, len(ids)), ids


def top_tokens(tr: TextRouting, layer: int, n: int = 8) -> list[dict]:
    """Per expert of ``layer``: its selections, its share of the layer's selections, and the ``n`` token ids
    it took most often, each with its count and the share of that token's occurrences sent to this expert
    (ties: the smaller id first)."""
    if n < 1:
        raise ArchLabError(f"the number of top tokens must be at least 1, got {n!r}")
    counts, ids = token_expert_counts(tr, layer)
    occurrences = np.bincount(np.searchsorted(ids, tr.token_ids), minlength=len(ids))
    total = counts.sum()
    out = []
    for e in range(tr.num_experts):
        row = counts[e]
        order = np.lexsort((ids, -row))[:n]
        order = order[row[order] > 0]
        out.append(
            {
                "expert": e,
                "selections": int(row.sum()),
                "load share": float(row.sum() / total) if total else 0.0,
                "tokens": [(int(ids[j]), int(row[j]), float(row[j] / occurrences[j])) for j in order],
            }
        )
    return out


def token_expert_shares(tr: TextRouting, layer: int, tokens: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """(P(first-choice expert | token) [tokens, E], token ids): for the ``tokens`` most frequent ids of the
    text, the share of each one's occurrences whose first choice was each expert."""
    r = tr.row(layer)
    ids, inverse, freq = np.unique(tr.token_ids, return_inverse=True, return_counts=True)
    keep = np.lexsort((ids, -freq))[:tokens]
    where = np.full(len(ids), -1)
    where[keep] = np.arange(len(keep))
    rows = where[inverse]
    mask = rows >= 0
    shares = np.zeros((len(keep), tr.num_experts))
    np.add.at(shares, (rows[mask], tr.choices[r, mask, 0].astype(np.int64)), 1.0)
    return shares / freq[keep][:, None], ids[keep]
