"""Trap counts: ours against WeightWatcher 0.7.7 on the same shuffled matrices.

Protocol (fixed before the results were read). For each kind of 500x250 matrix below, five draws
(numpy seed 0, drawn in this order): shuffle the entries once with our seeded shuffle
(``shuffle_entries``, seed = draw index), take the float64 eigenvalues of WᵀW of the shuffled
matrix, and count traps twice on those same eigenvalues: ours (``trap_signals``: MP edge from
W's entry variance, Tracy–Widom 99.9 % margin) and WeightWatcher's ``mp_fit(randomize=True)``
(σ fitted by brute force to a kernel density of the rescaled ESD, threshold λ+ + sqrt(TW)).
Prints one line per kind with the (ours, WeightWatcher) pairs.

Kinds: iid Gaussian; iid uniform; Gaussian plus a mean shift of r·std·(N·M)^-¼ for r = 0.8,
1.2, 2, 4 (BBP threshold at r = 1); Student t with 2, 3, 5 degrees of freedom; Gaussian with
one entry of 4·(N·M)^¼; Gaussian plus a rank-one signal of strength 3 (which a shuffle destroys).

Run::

    python benchmarks/trap_agreement.py
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from analyze_vs_weightwatcher import import_weightwatcher

from spectral_monitor.spectra.eigen import eigenvalues
from spectral_monitor.spectra.spikes import entry_stats
from spectral_monitor.spectra.traps import shuffle_entries, trap_signals

N, M = 500, 250
KINDS = ["gauss", "uniform", "mean0.8", "mean1.2", "mean2", "mean4", "t2", "t3", "t5"]
KINDS += ["onebig", "lowrank"]


def make(kind: str, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((N, M))
    if kind == "uniform":
        return rng.uniform(-1, 1, (N, M))
    if kind.startswith("mean"):
        return g + float(kind[4:]) * (N * M) ** -0.25
    if kind.startswith("t"):
        return rng.standard_t(float(kind[1:]), (N, M))
    if kind == "onebig":
        g[3, 4] = 4.0 * (N * M) ** 0.25
        return g
    if kind == "lowrank":
        return g + 3 * np.outer(rng.standard_normal(N), rng.standard_normal(M)) / np.sqrt(M)
    return g


def main() -> None:
    ww = import_weightwatcher()
    watcher = ww.WeightWatcher()
    rng = np.random.default_rng(0)
    for kind in KINDS:
        pairs = []
        for draw in range(5):
            stack = torch.tensor(make(kind, rng))[None]
            evals = np.sort(eigenvalues(shuffle_entries(stack, draw), "float64").numpy().ravel())
            ours = trap_signals(evals, entry_stats(stack).variance, N, M).num_traps
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                theirs = watcher.mp_fit(
                    evals, N, M, 1, kind, 0, 0, False, False, ".", "b", 0.5, True, evals,
                    randomize=True,
                )[0]  # fmt: skip
            pairs.append((ours, int(theirs)))
        print(kind, pairs, flush=True)


if __name__ == "__main__":
    main()
