"""Paired comparisons over seeds: the mean difference and its Student-t 95 % confidence interval.

A claim that method A beats method B is made on runs paired by seed (same data, initialisation and
batch order); the interval of the mean paired difference says whether the gap is larger than the
seed noise. No SciPy: the two-sided 97.5 % quantiles of Student's t are tabulated.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

# two-sided 95 % (upper 97.5 %) quantiles of Student's t for 1..30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t975(dof: int) -> float:
    """Upper 97.5 % quantile of Student's t with `dof` >= 1 degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        raise ValueError(f"degrees of freedom: expected >= 1, got {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of a[i] - b[i] over the pairs and its 95 % confidence interval (Student t, n - 1 dof).

    Returns {'mean', 'ci_low', 'ci_high', 'std', 'n'}; needs at least 2 pairs of equal length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values against {len(b)}; pairs need equal lengths")
    n = len(a)
    if n < 2:
        raise ValueError(f"paired_difference: expected at least 2 pairs (seeds), got {n}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean = sum(diffs) / n
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "std": std, "n": n}
