"""Miniatures sized to a matched budget: equal non-embedding active parameters (default), equal
non-embedding total parameters, or equal training FLOPs per token, each within ``TOLERANCE`` of the target.

A training miniature keeps what defines its architecture (see ``live.miniature.shrink``): attention kind
and the exact query/KV head ratio, MLA with its rank ratios, routed experts (the real count unless a cap on
total parameters forces fewer), top-k and shared experts, the dense/MoE and attention-layer patterns
(windows scaled to the training context), norm placement, QK-Norm, tied or untied embeddings. Two knobs
move it onto the budget: the hidden size (coarse) and a multiplier on every MLP/expert width (fine).
"""

from __future__ import annotations

import copy
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Optional

from ..arch.architecture import Architecture, Source, resolve
from ..arch.errors import ArchLabError
from ..arch.spec import ArchSpec
from ..live.miniature import Knobs, attention_heads, check_miniature, shrink

METRICS = {
    "active": "non-embedding active parameters",
    "total": "non-embedding total parameters",
    "flops": "training FLOPs per token",
}
TOLERANCE = 0.05
#: hidden sizes tried, and the width multipliers the fine search may use
HIDDEN_RANGE = (48, 4096)
WIDTH_RANGE = (0.2, 5.0)
#: training-miniature shape rules: heads before GQA grouping, the head-width floor
BASE_HEADS, MIN_HEAD_DIM = 4, 16
#: windows of sliding/chunked layers are scaled as window × seq_len / REFERENCE_CONTEXT, within [16, seq_len/2]
REFERENCE_CONTEXT = 4096


def non_embedding(counts, which: str) -> int:
    """Active or total parameters without the token/position embeddings and the LM head."""
    base = counts.active if which == "active" else counts.total
    return base - counts.components.get("embeddings", 0) - counts.components.get("lm_head", 0)


def _mean_context(seq_len: int, window: Optional[int]) -> float:
    """Positions a causal query attends to, averaged over a sequence of ``seq_len`` (window-capped)."""
    w = window or seq_len
    return sum(min(t + 1, w) for t in range(seq_len)) / seq_len


def flops_per_token(arch: Architecture, seq_len: int) -> float:
    """Training FLOPs per token: 6 × (active non-embedding parameters + LM head) for the matrix products,
    plus attention scores and values (3 × 2 × 2 × heads × head width × mean attended positions per layer;
    windows cap the positions), plus linear-attention state updates (3 × 2 × 2 × value heads × key width ×
    value width per layer)."""
    s, c = arch.spec, arch.counts
    vocab_head = c.components.get("lm_head", 0) or s.vocab_size * s.hidden_size  # tied head still multiplies
    dense = 6.0 * (non_embedding(c, "active") + vocab_head)
    attn = 0.0
    for layer in s.layers:
        if layer.attention == "linear":
            la = s.linear
            attn += 12.0 * la.num_value_heads * la.key_head_dim * la.value_head_dim
        else:
            window = s.window if layer.attention in ("sliding", "chunked") else None
            attn += 6.0 * s.num_heads * (s.head_dim + s.v_head_dim) * _mean_context(seq_len, window)
    return dense + attn


def measure(arch: Architecture, metric: str, seq_len: int) -> float:
    """The budget ``metric`` of a (miniature) architecture."""
    if metric == "flops":
        return flops_per_token(arch, seq_len)
    return float(non_embedding(arch.counts, metric))


def scaled_window(spec: ArchSpec, seq_len: int) -> int:
    """The training window of sliding/chunked layers: the real window scaled to the training context."""
    if not spec.window:
        return seq_len
    w = int(round(spec.window * seq_len / REFERENCE_CONTEXT / 8)) * 8
    return max(16, min(w, seq_len // 2))


@dataclass(frozen=True)
class Sized:
    """A miniature sized to a budget."""

    source_label: str
    config: dict
    arch: Architecture
    metric: str
    target: float
    value: float
    total: int
    active: int
    experts: Optional[int] = None  # routed experts kept (None: dense)
    real_experts: Optional[int] = None
    notes: tuple[str, ...] = field(default=())
    width: float = 1.0  # the multiplier on every MLP/expert width (1: the real width ratio)

    @property
    def deviation(self) -> float:
        return self.value / self.target - 1.0


@dataclass(frozen=True)
class Shape:
    """What every miniature of a run shares besides the budget: training context, vocabulary and special
    tokens, learned-position table length, target depth, the head-width floor, the query heads before GQA
    grouping and, for the variants of one ablation, an exact head width."""

    seq_len: int = 256
    vocab: int = 2048
    eos: int = 0
    pad: int = 1
    max_positions: int = 1024
    layers: int = 8
    min_head_dim: int = MIN_HEAD_DIM
    heads: int = BASE_HEADS
    head_dim: Optional[int] = None

    align: int = 8  # hidden sizes and widths in multiples of this (8: bf16 GEMM-friendly rows)

    def knobs(self, spec: ArchSpec, hidden: int, width: float, experts: Optional[int], name: str = "") -> Knobs:
        return Knobs(
            hidden=hidden,
            heads=self.heads,
            layers=self.layers,
            experts=experts,
            window=scaled_window(spec, self.seq_len),
            width_mult=width,
            gqa_ratio=True,
            min_head_dim=self.min_head_dim,
            vocab=self.vocab,
            eos=self.eos,
            pad=self.pad,
            max_positions=self.max_positions,
            keep_top_k=True,
            width_step=self.align,
            head_dim=self.head_dim,
            name=name,
        )


#: sizings done in this process, by their arguments (a search builds ~50 meta models; the Experiments page's
#: preview and the run it starts, or a zoo rebuild after a run, ask for the same ones)
_sized: "OrderedDict[str, Sized | ArchLabError]" = OrderedDict()
_sized_lock = threading.Lock()
_SIZED_MAX = 256


def size_to_budget(
    source: Source,
    target: float,
    metric: str = "active",
    *,
    seq_len: int = 256,
    vocab: int,
    eos: int = 0,
    pad: int = 1,
    max_positions: int = 1024,
    max_total: Optional[int] = None,
    layers: int = 8,
    min_head_dim: int = MIN_HEAD_DIM,
    heads: int = BASE_HEADS,
    head_dim: Optional[int] = None,
    prefer: Optional[tuple[int, float]] = None,
) -> Sized:
    """The miniature of ``source`` whose ``metric`` is within ``TOLERANCE`` of ``target``.

    ``layers``: the target depth (whole periods of the layer pattern are kept, see ``layer_plan``).
    ``heads``: query heads before GQA grouping; ``head_dim``: an exact head width (None: derived from the hidden
    size); ``prefer``: a (hidden size, width multiplier) tried first, then the width alone at that hidden size,
    before the usual search (the variants of one ablation start from their base's).
    ``max_total``: a cap on total parameters (embeddings included), e.g. for shipping checkpoints; routed
    experts are then reduced (halved, keeping top-k and groups valid) until the miniature fits.
    ArchLabError (one line) when no miniature of this architecture can meet the budget.
    Remembered per process (results and refusals); each caller gets its own copy of the config dict.
    """
    args = dict(
        target=target,
        metric=metric,
        seq_len=seq_len,
        vocab=vocab,
        eos=eos,
        pad=pad,
        max_positions=max_positions,
        max_total=max_total,
        layers=layers,
        min_head_dim=min_head_dim,
        heads=heads,
        head_dim=head_dim,
        prefer=prefer,
    )
    key = None if isinstance(source, Architecture) else json.dumps([source, args], sort_keys=True, default=repr)
    with _sized_lock:
        hit = _sized.get(key) if key else None
        if hit is not None:
            _sized.move_to_end(key)
    if hit is None:
        try:
            hit = _size(source, **args)
        except ArchLabError as e:
            hit = e
        if key:
            with _sized_lock:
                _sized[key] = hit
                while len(_sized) > _SIZED_MAX:
                    _sized.popitem(last=False)
    if isinstance(hit, ArchLabError):
        raise ArchLabError(str(hit))
    return replace(hit, config=copy.deepcopy(hit.config))


def _size(
    source: Source,
    target: float,
    metric: str,
    *,
    seq_len: int,
    vocab: int,
    eos: int,
    pad: int,
    max_positions: int,
    max_total: Optional[int],
    layers: int,
    min_head_dim: int,
    heads: int,
    head_dim: Optional[int],
    prefer: Optional[tuple[int, float]],
) -> Sized:
    if metric not in METRICS:
        raise ArchLabError(f"unknown budget {metric!r}; choose one of {', '.join(METRICS)}")
    if not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ArchLabError(f"the budget must be a positive number, got {target!r}")
    full = source if isinstance(source, Architecture) else resolve(source)
    spec = full.spec
    real = spec.moe.num_experts if spec.moe else None
    experts = real
    notes: list[str] = []
    shape = Shape(seq_len, vocab, eos, pad, max_positions, layers, min_head_dim, heads, head_dim)
    fine = replace(shape, align=4)  # finer steps where whole multiples of 8 jump over the tolerance band
    # the preferred hidden size first (coarse, then fine width steps), then the full search (coarse, then fine)
    tries = ([(shape, prefer), (fine, prefer)] if prefer else []) + [(shape, None), (fine, None)]
    while True:
        found = next(
            (f for sh, pref in tries if (f := _search(full, target, metric, experts, sh, max_total, pref)) is not None),
            None,
        )
        if found is not None:
            break
        smaller = _fewer_experts(spec, experts)
        if smaller is None:
            if max_total is not None and _search(full, target, metric, experts, fine) is not None:
                raise ArchLabError(
                    f"{full.label}: even with {experts} routed experts no miniature meets the budget "
                    f"under the cap of {max_total:,} parameters"
                )
            raise ArchLabError(_why_not(full, target, metric, experts, shape))
        experts = smaller
    mini, width = found
    lost = check_miniature(spec, mini.spec, "small")
    lost = [x for x in lost if not x.startswith("layer pattern")]  # depth differs from the presets by design
    if lost:
        raise ArchLabError(f"{full.label}: the sized miniature would lose {'; '.join(lost)}")
    if experts != real:
        why = f"the cap of {max_total:,} parameters" if max_total is not None else "the budget"
        notes.append(
            f"{experts} of the real {real} routed experts, top-{mini.spec.moe.top_k} "
            f"(real top-{spec.moe.top_k}), to fit {why}"
        )
    return Sized(
        full.label,
        mini.as_dict(),
        mini,
        metric,
        float(target),
        measure(mini, metric, seq_len),
        mini.counts.total,
        mini.counts.active,
        mini.spec.moe.num_experts if mini.spec.moe else None,
        real,
        tuple(notes),
        width,
    )


def _fmt(x: float) -> str:
    return f"{x / 1e9:.3g}G" if x >= 1e9 else f"{x / 1e6:.3g}M" if x >= 1e6 else f"{x / 1e3:.3g}k"


def _fewer_experts(spec: ArchSpec, experts: Optional[int]) -> Optional[int]:
    """Half the routed experts, still at least 2 × top-k and divisible by the expert groups; None if impossible."""
    if spec.moe is None or experts is None:
        return None
    m = spec.moe
    n = experts // 2
    while n >= max(2 * m.top_k, 2) and m.n_group > 1 and n % m.n_group:
        n -= 1
    return n if n >= max(2 * m.top_k, 2) else None


def _build(full: Architecture, hidden: int, width: float, experts, shape: Shape) -> Optional[Architecture]:
    d = shrink(full, shape.knobs(full.spec, hidden, width, experts, f"{full.label} (trained miniature)"))
    try:
        arch = resolve(d)
        arch.counts
    except ArchLabError:
        return None
    if shape.head_dim and arch.spec.v_head_dim != shape.head_dim:
        return None  # the class derives its head width from the hidden size: only some hidden sizes keep it
    return arch


def _why_not(full: Architecture, target: float, metric: str, experts, shape: Shape) -> str:
    """Why no miniature meets the budget, in one line: the smallest is too large, or the largest too small."""
    what = f"{_fmt(target)} {METRICS[metric]}"
    for hidden, width, word in (
        (HIDDEN_RANGE[0], WIDTH_RANGE[0], "smallest"),
        (HIDDEN_RANGE[1], WIDTH_RANGE[1], "largest"),
    ):
        arch = _build(full, hidden, width, experts, shape)
        if arch is None:
            continue
        v = measure(arch, metric, shape.seq_len)
        if (word == "smallest" and v > target * (1 + TOLERANCE)) or (
            word == "largest" and v < target * (1 - TOLERANCE)
        ):
            advice = "a larger budget or fewer layers" if word == "smallest" else "a smaller budget"
            return (
                f"{full.label}: the {word} miniature at {shape.layers} layers has {_fmt(v)} {METRICS[metric]}, "
                f"so it cannot meet {what} within ±{TOLERANCE:.0%}; try {advice}"
            )
    return f"{full.label}: no miniature meets {what} within ±{TOLERANCE:.0%}"


def _search(
    full: Architecture,
    target: float,
    metric: str,
    experts,
    shape: Shape,
    max_total: Optional[int] = None,
    prefer: Optional[tuple[int, float]] = None,
) -> Optional[tuple[Architecture, float]]:
    """The miniature (and its width multiplier) closest to the real width ratio that meets the target (and the
    cap on total parameters).

    With ``prefer`` (hidden, width): that miniature, else the width multiplier alone at that hidden size, else
    None. Otherwise the hidden size is found by bisection with the widths at the real ratio; if neither hidden size around the
    target is within tolerance (and under the cap), the width multiplier is bisected at each, then at larger
    hidden sizes with narrower widths (fewer parameters outside the active path) until one fits.
    """

    def at(hidden: int, width: float):
        arch = _build(full, hidden, width, experts, shape)
        return arch, (measure(arch, metric, shape.seq_len) if arch is not None else None)

    def fits(arch, v) -> bool:
        return (
            v is not None and abs(v / target - 1) <= TOLERANCE and (max_total is None or arch.counts.total <= max_total)
        )

    if prefer is not None:
        arch, v = at(*prefer)
        if fits(arch, v):
            return arch, prefer[1]
        found = _bisect_width(at, fits, target, prefer[0])
        return found[1:] if found is not None else None
    heads, _ = attention_heads(full.spec, shape.knobs(full.spec, 64, 1.0, experts))
    step = math.lcm(shape.align, heads)  # transformers validates hidden % heads for some model types
    lo, hi = -(-HIDDEN_RANGE[0] // step), HIDDEN_RANGE[1] // step
    while lo < hi:  # smallest hidden whose metric reaches the target
        mid = (lo + hi) // 2
        _, v = at(mid * step, 1.0)
        if v is not None and v >= target:
            hi = mid
        else:
            lo = mid + 1
    near = sorted({max(step * -(-HIDDEN_RANGE[0] // step), (lo - 1) * step), lo * step})
    plain = [(abs(v / target - 1), arch) for arch, v in (at(h, 1.0) for h in near) if fits(arch, v)]
    if plain:
        return min(plain, key=lambda c: c[0])[1], 1.0
    best = None
    wider = [h for h in range(lo * step + step, HIDDEN_RANGE[1] + 1, step)] if max_total is not None else []
    for hidden in near + wider:
        if hidden in wider:
            _, floor_v = at(hidden, WIDTH_RANGE[0])
            if floor_v is not None and floor_v > target * (1 + TOLERANCE):
                break  # from here on even the narrowest widths overshoot
        found = _bisect_width(at, fits, target, hidden)
        if found is None:
            continue  # widths round to whole units: the band can fall between two of them
        if best is None or found[0] < best[0]:
            best = found
        if hidden in wider:
            break  # total falls as the hidden size grows: the first larger one that fits is the least distorted
    return best[1:] if best else None


def _bisect_width(at, fits, target: float, hidden: int):
    """(score, miniature, width) of the width multiplier bisected at ``hidden`` until the metric is within half the
    tolerance (the score prefers widths near the real ratio), or None when the result does not fit."""
    a, b = WIDTH_RANGE
    arch = v = None
    width = 1.0
    for _ in range(16):
        width = math.sqrt(a * b)
        arch, v = at(hidden, width)
        if v is None or abs(v / target - 1) <= TOLERANCE / 2:
            break
        a, b = (width, b) if v < target else (a, width)
    if not fits(arch, v):
        return None
    return (abs(math.log(width)), abs(v / target - 1)), arch, width


def _common_heads(base_heads: int, specs: list[ArchSpec]) -> int:
    """The fewest query heads, at least ``base_heads``, that every GQA variant groups into two or more KV heads
    (a multiple of each one's query/KV ratio) and no variant has fewer of at full size."""
    groups = [s.num_heads // s.num_kv_heads for s in specs if s.attention_kind == "GQA"]
    h = base_heads
    while any(h % g or h // g < 2 for g in groups):
        h += 1
    return min([h] + [s.num_heads for s in specs])


def size_variants(
    base: Source,
    variants: list,
    target: float,
    metric: str = "active",
    *,
    seq_len: int = 256,
    vocab: int,
    eos: int = 0,
    pad: int = 1,
    max_positions: int = 1024,
    max_total: Optional[int] = None,
    layers: int = 8,
    min_head_dim: int = MIN_HEAD_DIM,
) -> list:
    """Each variant (a :class:`~backend.arch.variants.Variant` or a config dict) of ``base`` sized to the same budget
    as its base, keeping the base miniature's query heads, head width and depth so that only the changed component
    differs: ``[Sized | ArchLabError, ...]`` in order (a variant that cannot meet the budget is its one-line error).

    The base is sized as :func:`size_to_budget` sizes it; its query heads are raised when a GQA variant needs more
    for two or more KV heads (the base is then re-sized with them, noted). Every variant starts from the base's
    hidden size and width multiplier, then moves the width alone, then the hidden size (noted); a variant whose
    layer pattern's period does not fit the base's depth keeps whole periods (noted). A variant equal to the base
    is the base's sizing.
    """
    common = dict(
        seq_len=seq_len,
        vocab=vocab,
        eos=eos,
        pad=pad,
        max_positions=max_positions,
        max_total=max_total,
        min_head_dim=min_head_dim,
    )
    first = size_to_budget(base, target, metric, layers=layers, **common)
    mini = first.arch.spec
    configs = [getattr(v, "config", v) for v in variants]
    specs = [resolve(c).spec for c in configs]
    heads = _common_heads(mini.num_heads, specs)
    pins = dict(heads=heads, head_dim=mini.v_head_dim, layers=mini.num_layers)
    ref = size_to_budget(base, target, metric, prefer=(mini.hidden_size, first.width), **pins, **common)
    base_notes = []
    if heads != mini.num_heads:
        base_notes.append(
            f"{heads} query heads (not {mini.num_heads}) so that every GQA variant keeps two or more KV heads"
        )
    out: list = []
    for v, config, _spec in zip(variants, configs, specs):
        if getattr(v, "is_base", False):
            out.append(
                replace(
                    ref,
                    source_label=config.get("_name_or_path") or ref.source_label,
                    notes=ref.notes + tuple(base_notes),
                )
            )
            continue
        try:
            s = size_to_budget(config, target, metric, prefer=(ref.arch.spec.hidden_size, ref.width), **pins, **common)
        except ArchLabError as e:
            out.append(e)
            continue
        got, notes = s.arch.spec, list(base_notes)
        if got.num_layers != mini.num_layers:
            notes.append(
                f"{got.num_layers} layers, not the base's {mini.num_layers}: whole periods of its layer "
                "pattern are kept"
            )
        if got.num_heads != heads:
            notes.append(f"{got.num_heads} query heads, not {heads}")
        if got.hidden_size != ref.arch.spec.hidden_size:
            notes.append(
                f"hidden size {got.hidden_size}, not the base's {ref.arch.spec.hidden_size}: the MLP width "
                "alone could not meet the budget"
            )
        out.append(replace(s, notes=s.notes + tuple(notes)))
    return out
