"""Paired differences over seeds and their 95 % confidence interval (hand-worked values)."""
from __future__ import annotations

import pytest

from kd_depth_core.eval.stats import paired_difference, t975


def test_the_paired_interval_is_the_t_interval_of_the_differences():
    # differences 1, 1, 2: mean 4/3, sd sqrt(1/3), se 1/3, t(2) = 4.303 -> 4/3 -/+ 1.4343
    result = paired_difference([1.0, 2.0, 3.0], [0.0, 1.0, 1.0])
    assert result["n"] == 3 and result["mean"] == pytest.approx(4 / 3)
    assert result["std"] == pytest.approx(0.57735, rel=1e-5)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx((-0.10100, 2.76767), abs=1e-4)


def test_pairing_matters_and_a_constant_gap_has_no_width():
    # the same gap of -0.01 in every seed: the interval is the point, however noisy the seeds are
    plain = [0.25, 0.21, 0.30, 0.19, 0.27]
    result = paired_difference([p - 0.01 for p in plain], plain)
    assert result["mean"] == pytest.approx(-0.01) and result["ci_high"] == pytest.approx(-0.01)


def test_quantiles_and_bad_input():
    assert t975(1) == 12.706 and t975(4) == 2.776 and t975(100) == 1.96
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_difference([0.1], [0.2])
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([0.1, 0.2], [0.2])
