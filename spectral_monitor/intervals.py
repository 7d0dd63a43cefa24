"""Confidence intervals for a fitted power-law exponent.

Two methods (``interval=`` wherever the fit is configured):

- ``"analytic"``: exact for a Pareto tail above a known xmin. The maximum-likelihood estimate is
  ``alpha_hat - 1 = n / S`` with ``S = sum(ln(x / xmin))``, and ``(alpha - 1) * S`` is
  Gamma(n, 1)-distributed, so ``alpha - 1`` lies in ``(alpha_hat - 1) * [G_lo, G_hi] / n`` with
  ``G`` the Gamma(n, 1) quantiles at ``(1 ∓ confidence) / 2``. To first order this is
  ``alpha_hat ± z * sigma`` with the usual standard error ``sigma = (alpha_hat - 1) / sqrt(n)``;
  unlike that, it is exact at small n and asymmetric (alpha is skewed upward). It ignores the
  uncertainty of choosing xmin from the data (see the coverage table in README.md).
- ``"bootstrap"``: resample the spectrum with replacement ``n_boot`` times and refit the whole
  procedure, xmin included; the interval is the percentile interval of the refitted alphas.
  The resamples are fitted as one batch (one padded batch on a GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import gammaincinv

__all__ = ["INTERVALS", "analytic_interval", "bootstrap_samples", "percentile_interval"]

INTERVALS = ("analytic", "bootstrap")


def analytic_interval(
    alpha: np.ndarray, n_tail: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided interval for alpha given the tail size (see the module docstring).

    Args:
        alpha: (k,) fitted exponents (NaN where there is no fit).
        n_tail: (k,) tail sizes (0 where there is no fit).
        confidence: level in (0, 1), e.g. 0.9.

    Returns:
        alpha_lo, alpha_hi, each (k,) float64, NaN where alpha is not finite or n_tail < 1.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    n = np.asarray(n_tail, dtype=np.float64)
    ok = np.isfinite(alpha) & (n >= 1)
    n_safe = np.where(ok, n, 1.0)
    tail = (1.0 - confidence) / 2.0
    lo = 1.0 + (alpha - 1.0) * gammaincinv(n_safe, tail) / n_safe
    hi = 1.0 + (alpha - 1.0) * gammaincinv(n_safe, 1.0 - tail) / n_safe
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
