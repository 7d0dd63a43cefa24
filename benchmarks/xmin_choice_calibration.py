"""How much the data-chosen xmin widens the sampling spread of alpha: the calibration of the
analytic interval's ``XMIN_CHOICE_INFLATION`` (spectra/intervals.py), then its check on
data it was not calibrated on.

Given xmin, ``(alpha - 1) * S`` with ``S = sum(ln(x / xmin))`` over the tail is Gamma(n_tail - 1,
1)-distributed (xmin is itself a tail point and adds nothing to S), so the pivot's position
``u = P(Gamma(n_tail - 1) <= (alpha_true - 1) * S)`` is uniform and its normal score
``z = Phi^-1(u)`` is standard normal. The KS fit chooses xmin from the same data, and ``z``
spreads wider. The inflation is the 90% quantile of ``|z|`` over the calibration grid divided by
the normal's (1.645): with it, the analytic interval takes the Gamma quantiles at
``Phi(-+ inflation * z_(1+confidence)/2)``.

Protocol (fixed before any result was looked at):

- Calibration: a Pareto(alpha, xmin = 1) tail of n_tail values over a bulk of n_tail values uniform
  on [0.05, 1); alpha in {1.5, 2, 2.5, 3, 4, 5}, n_tail in {30, 100, 300, 1000}; 1000 seeds a
  cell (300 at 1000). The first run had 200 (100) seeds, and its per-cell values (0.99-1.36) were
  mostly noise; only the seed counts changed. The inflation is pooled over the grid and printed
  per cell, to show whether it depends on alpha or n_tail.
- Check, with other seeds and other data: the same uniform bulk at n_tail 5000 (50 seeds) and at
  alpha 1.75 and 3.5; and a Marchenko-Pastur bulk (aspect ratio 0.5, its upper edge at 0.95) of
  4 × n_tail values, the shape of a random weight matrix's ESD, at n_tail 50, 200 and 1000.
  Coverage of the 80%, 90% and 95% intervals with the calibrated inflation, and with none.

    python benchmarks/xmin_choice_calibration.py           # about 10 min on one core
    python benchmarks/xmin_choice_calibration.py --quick   # a reduced grid, a few minutes
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from bench_utils import markdown_table
from interval_coverage import pareto_tail
from scipy.special import gammainc, ndtri

from spectral_monitor.spectra.intervals import XMIN_CHOICE_INFLATION
from spectral_monitor.spectra.powerlaw_fit import fit_power_law

Z90 = float(ndtri(0.95))


def uniform_bulk(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.05, 1.0, n)


def mp_bulk(n: int, rng: np.random.Generator, ratio: float = 0.5, edge: float = 0.95) -> np.ndarray:
    """n values from the Marchenko-Pastur law of aspect ratio ``ratio``, scaled so that its upper
    edge is ``edge`` (inverse CDF on a fine grid)."""
    a, b = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2
    grid = np.linspace(a, b, 20001)
    density = np.sqrt(np.clip((b - grid) * (grid - a), 0.0, None)) / grid
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    cdf /= cdf[-1]
    return np.interp(rng.random(n), cdf, grid) * (edge / b)


def scores(alpha: float, n_tail: int, seeds: int, bulk: str, seed: int) -> np.ndarray:
    """Normal scores of the true alpha in the conditional pivot, one per seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(seeds):
        if bulk == "uniform":
            x = np.concatenate([uniform_bulk(n_tail, rng), pareto_tail(alpha, n_tail, rng)])
        else:
            x = np.concatenate([mp_bulk(4 * n_tail, rng), pareto_tail(alpha, n_tail, rng)])
        fit = fit_power_law(x)
        total = fit.n_tail / (fit.alpha - 1.0)  # S, the sum of ln(x / xmin) over the tail
        u = gammainc(fit.n_tail - 1, (alpha - 1.0) * total)
        out.append(float(ndtri(min(max(u, 1e-300), 1 - 1e-16))))
    return np.asarray(out)


def coverage(z: np.ndarray, confidence: float, inflation: float) -> float:
    half = inflation * float(ndtri((1 + confidence) / 2))
    return float(np.mean(np.abs(z) <= half))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid and seed counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    alphas = (1.5, 3.0, 5.0) if args.quick else (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
    tails = (30, 300) if args.quick else (30, 100, 300, 1000)
    pooled, rows = [], []
    for n_tail in tails:
        for alpha in alphas:
            seeds = (60 if args.quick else 1000) if n_tail <= 300 else (40 if args.quick else 300)
            z = scores(alpha, n_tail, seeds, "uniform", 7919 * n_tail + int(100 * alpha))
            pooled.append(z)
            cell = np.quantile(np.abs(z), 0.9) / Z90
            rows.append([str(n_tail), f"{alpha:g}", str(seeds), f"{cell:.2f}"])
            print(" | ".join(rows[-1]), flush=True)
    inflation = float(np.quantile(np.abs(np.concatenate(pooled)), 0.9) / Z90)
    print("\nCalibration (uniform bulk), per cell: q90(|z|) / 1.645\n")
    print(markdown_table(["n_tail", "alpha", "seeds", "inflation"], rows))
    print(f"\npooled inflation: {inflation:.3f} (intervals.py uses {XMIN_CHOICE_INFLATION})\n")

    checks = [("uniform", 5000, 1.75, 50), ("uniform", 5000, 3.5, 50)]
    if args.quick:
        checks = [("uniform", 1000, 1.75, 40), ("mp", 200, 2.5, 60)]
    else:
        checks += [("mp", n, a, 150 if n <= 200 else 60) for n in (50, 200, 1000) for a in (2, 3.5)]
    rows = []
    for bulk, n_tail, alpha, seeds in checks:
        z = scores(alpha, n_tail, seeds, bulk, 104729 + n_tail + int(100 * alpha))
        cells = [bulk, str(n_tail), f"{alpha:g}", str(seeds)]
        for confidence in (0.8, 0.9, 0.95):
            cells.append(
                f"{coverage(z, confidence, 1.0):.2f} / "
                f"{coverage(z, confidence, XMIN_CHOICE_INFLATION):.2f}"
            )
        rows.append(cells)
        print(" | ".join(cells), flush=True)
    print("\nCheck: coverage without / with the inflation\n")
    header = ["bulk", "n_tail", "alpha", "seeds", "80%", "90%", "95%"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
