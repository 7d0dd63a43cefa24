"""Coverage of the confidence intervals of alpha on synthetic power laws with a known exponent.

Protocol (fixed before the results were looked at): a pure Pareto tail of ``n_tail`` values with
xmin = 1 and exponent alpha, under a non-power-law bulk of ``n_tail`` values uniform on
[0.05, 1); the whole procedure (xmin chosen by the fit, then the interval) runs on the union.
A seed covers when alpha_lo <= alpha <= alpha_hi. The 90% interval should cover in >= 85% of
seeds. Also printed: the median width of the interval and the median time of one fit with its
interval (one thread), i.e. the cost of ``interval="bootstrap"`` against ``"analytic"``.

    python benchmarks/interval_coverage.py          # the README table (about 2 h on a
                                                    # loaded 2-core machine: n_tail 5000)
    python benchmarks/interval_coverage.py --quick  # a reduced grid (a few minutes)
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from bench_utils import markdown_table

from spectral_monitor.spectra.powerlaw_fit import fit_power_law


def pareto_tail(alpha: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """n values of a Pareto law with exponent alpha above xmin = 1 (inverse CDF)."""
    return (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))


def sample(alpha: float, n_tail: int, rng: np.random.Generator) -> np.ndarray:
    """A Pareto(alpha, xmin=1) tail of n_tail values over a uniform bulk of n_tail values."""
    tail = pareto_tail(alpha, n_tail, rng)
    bulk = rng.uniform(0.05, 1.0, size=n_tail)
    return np.concatenate([bulk, tail])


def coverage(
    alpha: float, n_tail: int, interval: str, seeds: int, confidence: float
) -> tuple[float, float, float]:
    """Fraction of seeds covering alpha, median width, median seconds per fit."""
    rng = np.random.default_rng(1000 * n_tail + int(10 * alpha))
    hits, widths, times = 0, [], []
    for _ in range(seeds):
        x = sample(alpha, n_tail, rng)
        start = time.perf_counter()
        fit = fit_power_law(x, interval=interval, confidence=confidence)
        times.append(time.perf_counter() - start)
        hits += int(fit.alpha_lo <= alpha <= fit.alpha_hi)
        widths.append(fit.alpha_hi - fit.alpha_lo)
    return hits / seeds, statistics.median(widths), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid and seed counts")
    parser.add_argument("--confidence", type=float, default=0.9)
    parser.add_argument("--tails", type=int, nargs="+", help="only these tail sizes")
    parser.add_argument(
        "--boot-seeds", type=int, help="bootstrap seeds per cell (default 100; 25 at n_tail 5000)"
    )
    parser.add_argument("--no-analytic", action="store_true", help="the bootstrap column only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    alphas = (1.5, 2.5, 4.0) if args.quick else (1.5, 2.0, 3.0, 4.0)
    tails = (50, 500) if args.quick else (50, 500, 5000)
    tails = tuple(args.tails) if args.tails else tails
    rows = []
    for n_tail in tails:
        for alpha in alphas:
            cells = [str(n_tail), f"{alpha:g}"]
            for interval in ("analytic", "bootstrap"):
                if interval == "analytic" and args.no_analytic:
                    cells += ["-", "-", "-"]
                    continue
                if interval == "bootstrap" and args.boot_seeds:
                    seeds = args.boot_seeds
                elif interval == "analytic":
                    seeds = 100 if args.quick else 400
                else:
                    seeds = 20 if args.quick else (100 if n_tail <= 500 else 25)
                cov, width, seconds = coverage(alpha, n_tail, interval, seeds, args.confidence)
                cells += [f"{cov:.2f} ({seeds})", f"{width:.3f}", f"{1000 * seconds:.1f}"]
            rows.append(cells)
            print(" | ".join(cells), flush=True)
    header = [
        "n_tail",
        "alpha",
        "analytic coverage (seeds)",
        "analytic width",
        "analytic ms/fit",
        "bootstrap coverage (seeds)",
        "bootstrap width",
        "bootstrap ms/fit",
    ]
    print()
    print(f"Coverage of the {args.confidence:.0%} interval (1 thread):")
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
