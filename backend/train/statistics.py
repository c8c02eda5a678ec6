"""The statistics behind ablation results and findings: intervals over seeds, paired differences, verdicts,
learning-rate sensitivity and spike scores.

- Intervals are Student-t 95 % confidence intervals of a mean over seeds (``scipy.stats.t``); with one seed there
  is no interval. A verdict needs at least :data:`MIN_SEEDS` pairs: with two, the interval is drawn but rests on
  one degree of freedom (its t factor is 12.7, against 4.3 with three), so no verdict is read off it.
- Two variants are compared by the paired difference of their losses seed by seed (the same seed gives both the
  same batches), so the noise that batch order and initialisation share cancels.
- A verdict is read off the interval alone: ``lower`` when it lies below zero, ``higher`` when above, ``within
  noise`` when it holds zero. No threshold is picked by hand.
- LR sensitivity is Wortsman et al. 2023's (§2.2): the mean over the learning-rate grid of
  ``min(loss(η), loss at initialisation)`` minus the best loss on the grid; a run that diverged counts as the
  loss at initialisation.
- A spike score is OLMo 2's (§3.2): the share of values at least 7 standard deviations from the rolling mean of
  the values before them; the window is scaled to the run's length (:func:`spike_window`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3  # pairs a verdict needs (the project's rule: seeds >= 3 on every trained number)
SPIKE_SIGMAS = 7.0


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` values with its confidence interval (None with fewer than two values)."""

    mean: float
    low: Optional[float]
    high: Optional[float]
    n: int
    sd: Optional[float]

    def as_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n, "sd": self.sd}


def interval(values: Iterable[float], confidence: float = CONFIDENCE) -> Interval:
    """Student-t interval of the mean of finite ``values``; ``mean`` is NaN when there are none."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return Interval(float("nan"), None, None, 0, None)
    mean = float(v.mean())
    if len(v) < 2:
        return Interval(mean, None, None, 1, None)
    sd = float(v.std(ddof=1))
    if sd == 0.0:
        return Interval(mean, mean, mean, len(v), 0.0)
    low, high = stats.t.interval(confidence, len(v) - 1, loc=mean, scale=sd / math.sqrt(len(v)))
    return Interval(mean, float(low), float(high), len(v), sd)


def paired_difference(
    a: Sequence[Optional[float]], b: Sequence[Optional[float]], confidence: float = CONFIDENCE
) -> Interval:
    """Interval of ``a[i] - b[i]`` over the pairs where both are finite (``a`` and ``b`` in seed order)."""
    if len(a) != len(b):
        raise ValueError("paired values need the same seeds on both sides")
    return interval(
        [x - y for x, y in zip(a, b) if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)],
        confidence,
    )


def verdict(diff: Interval) -> str:
    """``lower`` / ``higher`` when the interval lies below / above zero, ``within noise`` when it holds zero,
    ``no interval`` with fewer than two pairs, ``too few seeds`` with fewer than :data:`MIN_SEEDS`."""
    if diff.low is None or diff.high is None:
        return "no interval"
    if diff.n < MIN_SEEDS:
        return "too few seeds"
    if diff.high < 0:
        return "lower"
    if diff.low > 0:
        return "higher"
    return "within noise"


def finding(diff: Interval, expected: str) -> str:
    """A published claim's verdict from ArchLab's interval: ``supports`` when the measured direction is the
    expected one (``lower``/``higher``), ``contradicts`` when it is the opposite, else ``inconclusive``."""
    v = verdict(diff)
    if v == expected:
        return "supports"
    if v in ("lower", "higher"):
        return "contradicts"
    return "inconclusive"


def no_difference(diff: Interval, spread: Optional[float]) -> str:
    """A claim of *no difference* read off the interval: ``contradicts`` when the interval excludes zero;
    ``supports`` when it lies inside ``± spread`` (the reference's seed-to-seed standard deviation: any difference
    left is smaller than re-running with another seed); else ``inconclusive`` (an interval that holds zero but is
    too wide to rule out a difference larger than that)."""
    v = verdict(diff)
    if v in ("lower", "higher"):
        return "contradicts"
    if v != "within noise" or spread is None or not math.isfinite(spread):
        return "inconclusive"
    return "supports" if -spread < diff.low and diff.high < spread else "inconclusive"


def lr_sensitivity(losses: Sequence[Optional[float]], initial: float) -> float:
    """Wortsman et al.'s LR sensitivity of one curve (a loss per learning rate of the grid)."""
    capped = [initial if x is None or not math.isfinite(x) else min(x, initial) for x in losses]
    if not capped:
        return float("nan")
    return float(np.mean(capped) - min(capped))


def diverged(loss: Optional[float], initial: float) -> bool:
    """NaN, inf, or above the loss at initialisation."""
    return loss is None or not math.isfinite(loss) or loss > initial


def spike_window(steps: int) -> int:
    """The rolling window of a run of ``steps``: OLMo 2 used the last 1,000 values of runs of hundreds of
    thousands of steps; here a tenth of the run, at least 20 and at most 1,000 values."""
    return int(min(1000, max(20, round(steps / 10))))


def spike_score(values: Sequence[float], window: Optional[int] = None, sigmas: float = SPIKE_SIGMAS) -> float:
    """Share of the values (after the first ``window``) at least ``sigmas`` standard deviations from the mean of
    the ``window`` values before them; NaN for a series no longer than its window. Non-finite values count as
    spikes."""
    v = np.asarray(values, dtype=float)
    w = window or spike_window(len(v))
    if len(v) <= w:
        return float("nan")
    spikes = 0
    for i in range(w, len(v)):
        past = v[i - w : i]
        past = past[np.isfinite(past)]
        if not math.isfinite(v[i]):
            spikes += 1
            continue
        if len(past) < 2:
            continue
        sd = past.std()
        if sd > 0 and abs(v[i] - past.mean()) >= sigmas * sd:
            spikes += 1
    return spikes / (len(v) - w)
