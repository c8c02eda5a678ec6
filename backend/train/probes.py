"""Synthetic probes: multi-query associative recall (MQAR) and recall at a distance.

MQAR as Zoology defines it (HazyResearch/zoology, ``zoology/data/multiquery_ar.py``): keys from the lower
half of the vocabulary, values from the upper half, all key-value pairs first, then each key queried once at
a gap drawn from a power law (``p(gap) ∝ gap^(a-1)``, a = 0.01 favours short gaps), loss and accuracy only
on the answers, the other positions filled with random tokens. Recall at a distance is the same task with
uniform gaps (a = 1), scored by how far each query is from its key, so that a gap can exceed a sliding
window or an attention chunk. Everything is drawn from a seed: the same seed gives the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch.errors import ArchLabError

IGNORE = -100
#: the grid probe accuracy is reported on (KV pairs × sequence length; pairs must fit: 4 × pairs ≤ length)
KV_PAIRS = (4, 8, 16, 32, 64)
SEQ_LENS = (64, 128, 256, 512)
#: distance buckets (tokens between a key and its query) for recall at a distance
DISTANCES = (8, 16, 32, 64, 128, 256, 384)
EVAL_SEED_OFFSET = 1_000_003  # evaluation examples never share a seed with training batches


@dataclass(frozen=True)
class ProbeBatch:
    inputs: np.ndarray  # [n, seq_len] token ids
    labels: np.ndarray  # [n, seq_len] answer ids at answer positions, IGNORE elsewhere
    distance: np.ndarray  # [n, seq_len] tokens from the key to the query at answer positions, 0 elsewhere


def fits(kv_pairs: int, seq_len: int) -> bool:
    return kv_pairs >= 1 and 4 * kv_pairs <= seq_len


def mqar(
    rng: np.random.Generator, n: int, seq_len: int, kv_pairs: int, vocab: int, power_a: float = 0.01
) -> ProbeBatch:
    """``n`` MQAR examples of ``seq_len`` tokens with ``kv_pairs`` pairs (vectorised Zoology semantics)."""
    if seq_len % 2 or not fits(kv_pairs, seq_len):
        raise ArchLabError(
            f"MQAR needs an even sequence length of at least 4 × KV pairs, got {seq_len} for {kv_pairs} pairs"
        )
    if vocab <= seq_len or vocab // 2 - 1 < kv_pairs:
        raise ArchLabError(
            f"MQAR needs a vocabulary larger than the sequence ({seq_len}) with room for {kv_pairs} keys"
        )
    half = vocab // 2
    context = 2 * kv_pairs
    keys = 1 + np.argsort(rng.random((n, half - 1)), axis=1)[:, :kv_pairs]  # distinct, from [1, half)
    values = half + np.argsort(rng.random((n, vocab - half)), axis=1)[:, :kv_pairs]  # distinct, from [half, vocab)
    space = (seq_len - context) // 2
    p = power_a * np.arange(1, space + 1, dtype=float) ** (power_a - 1)
    # gaps without replacement, weighted by p (Gumbel top-k = sequential weighted sampling without replacement)
    gumbel = np.log(p / p.sum()) - np.log(-np.log(rng.random((n, space))))
    gaps = np.argsort(-gumbel, axis=1)[:, :kv_pairs]
    seq = np.zeros((n, seq_len + 1), dtype=np.int64)
    seq[:, 0:context:2], seq[:, 1:context:2] = keys, values
    rows = np.arange(n)[:, None]
    seq[rows, context + 2 * gaps] = keys
    labels = np.full((n, seq_len + 1), IGNORE, dtype=np.int64)
    labels[rows, context + 2 * gaps + 1] = values
    distance = np.zeros((n, seq_len + 1), dtype=np.int64)
    distance[rows, context + 2 * gaps + 1] = context + 2 * gaps - 2 * np.arange(kv_pairs)[None, :]
    inputs, labels, distance = seq[:, :-1], labels[:, 1:], distance[:, 1:]
    filler = rng.integers(0, vocab, size=inputs.shape)
    inputs = np.where(inputs == 0, filler, inputs)
    return ProbeBatch(inputs, labels, distance)


@dataclass(frozen=True)
class ProbeTask:
    """A probe's training mix: each batch picks its KV-pair count from ``kv_pairs`` by the step's seed."""

    name: str  # "mqar" | "distance"
    vocab: int
    seq_len: int
    kv_pairs: tuple[int, ...]
    power_a: float

    def batch(self, seed: int, step: int, n: int) -> ProbeBatch:
        rng = np.random.default_rng([seed, step])
        usable = [k for k in self.kv_pairs if fits(k, self.seq_len)] or [max(1, self.seq_len // 4)]
        return mqar(rng, n, self.seq_len, usable[rng.integers(len(usable))], self.vocab, self.power_a)

    def settings(self) -> list[tuple[int, int]]:
        """(KV pairs, sequence length) the accuracy is reported on."""
        if self.name == "distance":
            return [(k, self.seq_len) for k in self.kv_pairs if fits(k, self.seq_len)]
        return [(k, t) for t in SEQ_LENS for k in KV_PAIRS if fits(k, t)]

    def eval_batch(self, kv_pairs: int, seq_len: int, n: int, seed: int = 0) -> ProbeBatch:
        rng = np.random.default_rng([seed + EVAL_SEED_OFFSET, kv_pairs, seq_len])
        return mqar(rng, n, seq_len, kv_pairs, self.vocab, self.power_a)


def probe_task(name: str, vocab: int, seq_len: int) -> ProbeTask:
    """The MQAR training mix (Zoology's pairs 4–64, short gaps favoured) or recall at a distance (uniform gaps)."""
    if name == "mqar":
        return ProbeTask("mqar", vocab, seq_len, KV_PAIRS, 0.01)
    if name == "distance":
        return ProbeTask("distance", vocab, seq_len, (4, 8), 1.0)
    raise ArchLabError(f"unknown probe {name!r}; choose mqar or distance")


def accuracy(predictions: np.ndarray, batch: ProbeBatch) -> float:
    """Share of answer positions predicted exactly."""
    mask = batch.labels != IGNORE
    return float((predictions[mask] == batch.labels[mask]).mean()) if mask.any() else float("nan")


def accuracy_by_distance(predictions: np.ndarray, batch: ProbeBatch, edges=DISTANCES) -> dict[int, float]:
    """Accuracy of the answers whose key is at most each edge tokens back (and more than the edge before)."""
    mask = batch.labels != IGNORE
    hit = predictions == batch.labels
    out, lo = {}, 0
    for edge in edges:
        sel = mask & (batch.distance > lo) & (batch.distance <= edge)
        if sel.any():
            out[edge] = float(hit[sel].mean())
        lo = edge
    return out
