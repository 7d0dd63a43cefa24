"""Which interval to read off the bootstrap resamples: percentile, pivotal or bias-corrected,
compared on the very same resamples.

The bootstrap refits ``n_boot`` (100) resamples of each spectrum, xmin chosen again each time;
three standard ways turn the resampled exponents ``a_b`` (quantiles ``q``) into a 90% interval:

- percentile: ``[q_0.05, q_0.95]``;
- pivotal on ``log(alpha - 1)`` (the basic bootstrap on the log scale):
  ``1 + (alpha_hat - 1)**2 / (q_0.95 - 1, q_0.05 - 1)``; exact for a known xmin;
- bias-corrected percentile (Efron's BC, BCa without the acceleration): ``z0 = Phi^-1(share of
  a_b below alpha_hat)``, the quantiles at ``Phi(2 z0 -+ 1.645)``.

Protocol (fixed before any result of this script was looked at): the samples, grid, seeds and
resamples of ``benchmarks/interval_coverage.py`` (a Pareto tail of n_tail values with xmin = 1
over a uniform bulk of as many values on [0.05, 1); n_tail 50, 500, 5000 × alpha 1.5, 2, 3, 4;
100 samples a cell, 25 at n_tail 5000 unless ``--seeds-5000``; the product's resamples, seed 0).
The method kept is the one with the most cells covering >= 0.85, then the smallest mean
|coverage - 0.90|.

    python benchmarks/bootstrap_interval_methods.py     # about 20 min on one idle core
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from bench_utils import markdown_table
from interval_coverage import sample
from scipy.special import ndtr, ndtri

from spectral_monitor.spectra.powerlaw_fit import (
    FitOptions,
    _bootstrap_alphas,
    _prepare,
    fit_power_law,
)

METHODS = ("percentile", "pivotal", "bias-corrected")


def intervals(
    alphas: np.ndarray, alpha: float, confidence: float
) -> dict[str, tuple[float, float]]:
    """The three intervals from one spectrum's resampled exponents ``alphas`` (n_boot,)."""
    a = alphas[np.isfinite(alphas)]
    tail = (1.0 - confidence) / 2.0
    q_lo, q_hi = np.quantile(a, [tail, 1.0 - tail])
    share = (np.sum(a < alpha) + 0.5 * np.sum(a == alpha)) / a.size
    share = min(max(share, 0.5 / a.size), 1.0 - 0.5 / a.size)
    z0, z = float(ndtri(share)), float(ndtri(1.0 - tail))
    b_lo, b_hi = np.quantile(a, [ndtr(2 * z0 - z), ndtr(2 * z0 + z)])
    scale = (alpha - 1.0) ** 2
    return {
        "percentile": (q_lo, q_hi),
        "pivotal": (1.0 + scale / (q_hi - 1.0), 1.0 + scale / (q_lo - 1.0)),
        "bias-corrected": (b_lo, b_hi),
    }


def cell(alpha: float, n_tail: int, seeds: int, confidence: float) -> dict[str, float]:
    """Coverage of each method over ``seeds`` samples (interval_coverage's generator)."""
    rng = np.random.default_rng(1000 * n_tail + int(10 * alpha))
    options = FitOptions.create(interval="bootstrap", confidence=confidence)
    hits = dict.fromkeys(METHODS, 0)
    for _ in range(seeds):
        x = sample(alpha, n_tail, rng)
        fitted = fit_power_law(x).alpha
        ((values, _reason),) = _prepare([x], torch.device("cpu"))
        alphas = _bootstrap_alphas([values], options, batch=False)[0].numpy()
        for method, (lo, hi) in intervals(alphas, fitted, confidence).items():
            hits[method] += int(lo <= alpha <= hi)
    return {method: hits[method] / seeds for method in METHODS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--seeds-5000", type=int, default=25)
    parser.add_argument("--tails", type=int, nargs="+", default=[50, 500, 5000])
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, table = [], {m: [] for m in METHODS}
    for n_tail in args.tails:
        for alpha in (1.5, 2.0, 3.0, 4.0):
            seeds = 100 if n_tail <= 500 else args.seeds_5000
            got = cell(alpha, n_tail, seeds, args.confidence)
            for method in METHODS:
                table[method].append(got[method])
            rows.append(
                [str(n_tail), f"{alpha:g}", str(seeds)] + [f"{got[m]:.2f}" for m in METHODS]
            )
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(markdown_table(["n_tail", "alpha", "seeds", *METHODS], rows))
    print()
    for method in METHODS:
        cov = np.asarray(table[method])
        print(
            f"{method}: {int(np.sum(cov >= 0.85))}/{cov.size} cells >= 0.85, mean |coverage - "
            f"{args.confidence:.2f}| = {np.mean(np.abs(cov - args.confidence)):.3f}, "
            f"min {cov.min():.2f}"
        )


if __name__ == "__main__":
    main()
