"""Confidence intervals for a fitted power-law exponent.

Two methods (``interval=`` wherever the fit is configured):

- ``"analytic"``: the exact pivot for a Pareto tail above a given xmin, widened for the choice of
  xmin. The maximum-likelihood estimate is ``alpha_hat - 1 = n / S`` with ``S = sum(ln(x / xmin))``
  over the ``n`` tail values; xmin is itself a tail value (it adds ``ln 1 = 0``), so
  ``(alpha - 1) * S`` is Gamma(n - 1, 1)-distributed and ``alpha - 1`` lies in
  ``(alpha_hat - 1) * [G_lo, G_hi] / n`` with ``G`` the Gamma(n - 1, 1) quantiles. To first order
  this is ``alpha_hat ± z * sigma`` with ``sigma = (alpha_hat - 1) / sqrt(n)``; unlike that, it is
  exact at small n and asymmetric (alpha is skewed upward). But the fit chooses xmin from the same
  data, which spreads alpha_hat about 1.2× wider than the pivot given xmin says (and an interval
  exact given xmin covers a 90% target in only 79–86% of cases). So the quantiles are taken at
  ``Phi(∓ XMIN_CHOICE_INFLATION * z)`` instead of ``Phi(∓ z)``, ``z`` the normal quantile of the
  level: a constant calibrated by simulation on Pareto tails over a non-power-law bulk and checked
  on other tails, bulks and levels (``benchmarks/xmin_choice_calibration.py``), in the way
  Lilliefors' tables calibrate the KS test for estimated parameters. Free: a few scalar
  functions on the host.
- ``"bootstrap"``: resample the spectrum with replacement ``n_boot`` times and refit the whole
  procedure, xmin included; the interval is the percentile interval of the refitted alphas. The
  resamples are fitted as one batch (one padded batch on a GPU). The percentile interval was
  kept over the pivotal one on ``log(alpha - 1)`` (exact for a known xmin) and the
  bias-corrected one, by their coverage on the same resamples
  (``benchmarks/bootstrap_interval_methods.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import gammaincinv, ndtr, ndtri

__all__ = [
    "INTERVALS",
    "XMIN_CHOICE_INFLATION",
    "analytic_interval",
    "bootstrap_samples",
    "percentile_interval",
]

INTERVALS = ("analytic", "bootstrap")

# How much wider than the pivot given xmin the normal score of alpha spreads when xmin is chosen by
# the KS fit: the pooled 90% quantile of |z| / 1.645 (benchmarks/xmin_choice_calibration.py).
XMIN_CHOICE_INFLATION = 1.19


def analytic_interval(
    alpha: np.ndarray,
    n_tail: np.ndarray,
    confidence: float,
    inflation: float = XMIN_CHOICE_INFLATION,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided interval for alpha from the Gamma pivot (see the module docstring).

    Args:
        alpha: (k,) fitted exponents (NaN where there is no fit).
        n_tail: (k,) tail sizes, xmin included (0 where there is no fit).
        confidence: level in (0, 1), e.g. 0.9.
        inflation: how much wider than the pivot given xmin, in normal scores; 1.0 gives the
            interval that is exact when xmin is known in advance.

    Returns:
        alpha_lo, alpha_hi, each (k,) float64, NaN where alpha is not finite or n_tail < 2.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    n = np.asarray(n_tail, dtype=np.float64)
    ok = np.isfinite(alpha) & (n >= 2)
    n_safe = np.where(ok, n, 2.0)
    tail = float(ndtr(inflation * ndtri((1.0 - confidence) / 2.0)))
    lo = 1.0 + (alpha - 1.0) * gammaincinv(n_safe - 1.0, tail) / n_safe
    hi = 1.0 + (alpha - 1.0) * gammaincinv(n_safe - 1.0, 1.0 - tail) / n_safe
    nan = np.full_like(alpha, math.nan)
    return np.where(ok, lo, nan), np.where(ok, hi, nan)


def bootstrap_samples(x: torch.Tensor, n_boot: int, generator: torch.Generator) -> torch.Tensor:
    """``n_boot`` resamples of ``x`` with replacement, each sorted ascending.

    Args:
        x: (N,) values on any device.
        n_boot: number of resamples.
        generator: a generator on ``x``'s device (seeded by the caller, so that an analysis is
            reproducible).

    Returns:
        (n_boot, N) tensor on ``x``'s device.
    """
    picks = torch.randint(0, x.numel(), (n_boot, x.numel()), generator=generator, device=x.device)
    return torch.sort(x[picks], dim=1).values


def percentile_interval(
    alphas: torch.Tensor, confidence: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Percentile interval of bootstrap exponents.

    Args:
        alphas: (B, n_boot) float64; non-finite entries (failed resamples) are left out.
        confidence: level in (0, 1).

    Returns:
        alpha_lo, alpha_hi, each (B,) float64; NaN for a row with fewer than 2 finite entries.
    """
    tail = (1.0 - confidence) / 2.0
    finite = torch.isfinite(alphas)
    # nanquantile ignores NaN; inf must become NaN first.
    clean = torch.where(finite, alphas, torch.full_like(alphas, math.nan))
    q = torch.tensor([tail, 1.0 - tail], dtype=torch.float64, device=alphas.device)
    lo, hi = torch.nanquantile(clean, q, dim=1)
    few = finite.sum(dim=1) < 2
    nan = torch.full_like(lo, math.nan)
    return torch.where(few, nan, lo), torch.where(few, nan, hi)
