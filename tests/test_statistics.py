"""Intervals, paired differences, verdicts, LR sensitivity and spike scores, against hand-computed cases."""

import math

import pytest

from backend.train import statistics as st


def test_interval_is_the_student_t_interval_worked_by_hand():
    # three seeds: mean 2.0, sd 0.1, t(0.975, 2) = 4.302652729911275 (a t table), half-width 4.3027 × 0.1 / √3
    iv = st.interval([1.9, 2.0, 2.1])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)
    assert iv.mean == pytest.approx(2.0)
    assert iv.sd == pytest.approx(0.1)
    assert iv.low == pytest.approx(2.0 - half) and iv.high == pytest.approx(2.0 + half)
    assert iv.n == 3


def test_one_value_has_no_interval_and_no_verdict():
    iv = st.interval([2.5])
    assert iv.mean == 2.5 and iv.low is None and iv.high is None
    assert st.verdict(st.paired_difference([2.5], [2.4])) == "no interval"


def test_two_seeds_give_an_interval_but_no_verdict():
    two = st.paired_difference([3.00, 3.10], [3.50, 3.61])  # far apart, yet one degree of freedom
    assert two.high < 0 and two.n == 2
    assert st.verdict(two) == "too few seeds" and st.finding(two, "lower") == "inconclusive"


def test_non_finite_values_are_left_out_of_an_interval():
    iv = st.interval([1.0, float("nan"), 3.0, None, float("inf")])
    assert iv.n == 2 and iv.mean == 2.0


def test_paired_difference_pairs_by_seed_and_the_verdict_follows_the_interval():
    a = [3.00, 3.10, 2.95]  # variant, seeds 0, 1, 2
    b = [3.05, 3.16, 3.01]  # reference
    d = st.paired_difference(a, b)  # -0.05, -0.06, -0.06: tight, below zero
    assert d.mean == pytest.approx(-0.056666, abs=1e-5)
    assert d.high < 0 and st.verdict(d) == "lower"
    assert st.verdict(st.paired_difference(b, a)) == "higher"
    noisy = st.paired_difference([3.0, 3.2, 2.9], [3.1, 3.0, 3.0])  # -0.1, +0.2, -0.1: the interval holds zero
    assert noisy.low < 0 < noisy.high and st.verdict(noisy) == "within noise"
    # an unpaired comparison of the same numbers would be far wider: pairing is what makes the first verdict
    assert st.interval(a).high > st.interval(b).low


def test_a_finding_is_supports_contradicts_or_inconclusive_from_the_interval():
    lower = st.paired_difference([1.0, 1.1, 1.05], [1.2, 1.3, 1.26])
    assert st.finding(lower, "lower") == "supports"
    assert st.finding(lower, "higher") == "contradicts"
    noisy = st.paired_difference([1.0, 1.3, 1.1], [1.1, 1.1, 1.2])
    assert st.finding(noisy, "lower") == "inconclusive"
    assert st.finding(st.paired_difference([1.0], [2.0]), "lower") == "inconclusive"


def test_lr_sensitivity_is_wortsmans_definition_worked_by_hand():
    # grid losses 3.0, 2.5, 2.8, diverged (NaN), above init (9.0); loss at init 8.0
    # capped: 3.0, 2.5, 2.8, 8.0, 8.0 → mean 4.86; best 2.5 → sensitivity 2.36
    assert st.lr_sensitivity([3.0, 2.5, 2.8, float("nan"), 9.0], 8.0) == pytest.approx(2.36)
    assert st.lr_sensitivity([2.0, 2.0], 8.0) == 0.0


def test_diverged_runs_are_marked():
    assert st.diverged(float("nan"), 7.6) and st.diverged(float("inf"), 7.6) and st.diverged(None, 7.6)
    assert st.diverged(7.7, 7.6)  # above the loss at initialisation
    assert not st.diverged(3.1, 7.6)


def test_spike_score_counts_values_seven_sigmas_from_the_rolling_mean():
    calm = [1.0 + 0.01 * ((i * 7) % 5) for i in range(200)]  # bounded wiggle, sd ≈ 0.014
    assert st.spike_score(calm, 20) == 0.0
    spiky = list(calm)
    spiky[100] = 5.0  # one spike, far beyond 7 sd
    spiky[150] = float("nan")  # a non-finite value counts as a spike
    assert st.spike_score(spiky, 20) == pytest.approx(2 / 180)
    assert math.isnan(st.spike_score(calm[:10], 20))


def test_spike_window_scales_with_the_run():
    assert st.spike_window(100) == 20 and st.spike_window(5000) == 500 and st.spike_window(10**6) == 1000
