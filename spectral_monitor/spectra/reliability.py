"""When a fitted alpha can be trusted, and when a spectrum has no exponent at all.

A power-law fit always returns a number. Whether that number says anything depends on how many
eigenvalues stand behind it. The rules below were chosen by measurement
(``python benchmarks/reliability_study.py``, table in README.md "What reliable means"):

- **degenerate tail** (no alpha at all): every tail value within ``DEGENERATE_RTOL`` of xmin —
  an orthogonal, identity-like or low-rank weight whose eigenvalues are equal up to rounding.
  Any exponent fitted there exceeds 1 + 1 / ln(1 + 1e-3) ≈ 1000 and is rounding noise
  (float32 and float64 solvers disagree on it by a factor).
- **unreliable** (alpha reported, but no verdict and left out of every aggregate):
  fewer than ``min_evals`` (default 50, TempBalance's and WeightWatcher's threshold) positive
  eigenvalues; a tail of fewer than ``MIN_TAIL`` (30) values; or an interval wider than
  ``MAX_RELATIVE_WIDTH`` × (alpha − 1), i.e. the tail's decay rate alpha − 1 is not known to
  within a factor of about two.
"""

from __future__ import annotations

import math

__all__ = [
    "DEGENERATE_RTOL",
    "MAX_RELATIVE_WIDTH",
    "MIN_TAIL",
    "degenerate_reason",
    "unreliable_reason",
]

#: A tail whose largest value is within this relative distance of xmin is degenerate.
DEGENERATE_RTOL = 1e-3
#: Fewer tail values than this make a fit unreliable. At 30, random 64×64 layers (alpha ≈ 4,
#: "well-trained" at initialisation) are all flagged, 75% of random 128×128 ones, and none of
#: the layers of a trained MLP (n_tail 40–128); 50 would flag the trained 256×64 input layer.
MIN_TAIL = 30
#: An interval wider than this times (alpha - 1) makes a fit unreliable.
MAX_RELATIVE_WIDTH = 1.0


def degenerate_reason(lambda_max: float, xmin: float) -> str | None:
    """Why the tail [xmin, lambda_max] has no exponent (equal values up to rounding), or None.

    Args:
        lambda_max: the largest eigenvalue, > 0.
        xmin: the fitted tail's start, in the same units.
    """
    spread = lambda_max / xmin - 1.0
    if spread >= DEGENERATE_RTOL:
        return None
    return (
        f"degenerate tail: lambda_max / xmin - 1 = {spread:.2g} < {DEGENERATE_RTOL:g} "
        "(equal eigenvalues up to rounding: orthogonal, identity-like or low-rank weight)"
    )


def unreliable_reason(
    num_positive: int,
    n_tail: int,
    alpha: float,
    alpha_lo: float,
    alpha_hi: float,
    min_evals: int,
    min_tail: int = MIN_TAIL,
    max_relative_width: float | None = MAX_RELATIVE_WIDTH,
) -> str | None:
    """Why a fit cannot be trusted, or None when it can.

    Args:
        num_positive: positive eigenvalues that entered the fit.
        n_tail: values in the fitted tail.
        alpha, alpha_lo, alpha_hi: the exponent and its interval (NaN interval: no width rule).
        min_evals: the least number of positive eigenvalues for a reliable fit.
        min_tail: the least tail size (``MIN_TAIL`` by default).
        max_relative_width: the widest interval, as a multiple of alpha − 1
            (``MAX_RELATIVE_WIDTH`` by default); None: no width rule.
    """
    if num_positive < min_evals:
        return f"{num_positive} positive eigenvalues < min_evals={min_evals}"
    if n_tail < min_tail:
        return f"tail of {n_tail} eigenvalues < min_tail={min_tail}"
    width = alpha_hi - alpha_lo
    if max_relative_width is None or not math.isfinite(width):
        return None
    limit = max_relative_width * (alpha - 1.0)
    if width > limit:
        return (
            f"interval [{alpha_lo:.3g}, {alpha_hi:.3g}] wider than "
            f"max_relative_width={max_relative_width:g} × (alpha - 1) = {limit:.3g}"
        )
    return None
