"""The peers' estimators against their reference code, ported into this file, on the same
eigenvalues: median-xmin Hill (TempBalance / AlphaPruning ``net_esd_estimator``,
``fix_fingers="xmin_mid"``), the peak-restricted KS search (``fix_fingers="xmin_peak"``), and
WeightWatcher's ``clip_xmax`` finger clipping (WeightWatcher 0.7.7 itself, installed)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from spectral_monitor import analyze
from spectral_monitor.spectra.powerlaw_fit import FitOptions, fit_power_law, fit_power_law_batched


def spectra(count: int = 24) -> list[np.ndarray]:
    """ESDs of random and heavy-tailed matrices, ascending, float64."""
    rng = np.random.default_rng(7)
    out = []
    for k in range(count):
        n, m = int(rng.integers(40, 300)), int(rng.integers(40, 300))
        w = rng.standard_normal((n, m)) if k % 2 else rng.standard_t(2.5 + k % 3, (n, m))
        out.append(np.sort(np.linalg.svd(w / math.sqrt(n), compute_uv=False) ** 2))
    return out


# --- reference: haiquanlu/AlphaPruning, lib/esd_utils.py, net_esd_estimator (commit 08659df);
# --- the same code is TempBalance's (YefanZhou/TempBalance) with fix_fingers="xmin_mid".


def reference_xmin_mid(eigs: np.ndarray, xmin_pos: float = 2) -> tuple[float, float]:
    nz_eigs = torch.tensor(eigs, dtype=torch.float64)
    N = len(nz_eigs)
    log_nz_eigs = torch.log(nz_eigs)
    i = int(len(nz_eigs) / xmin_pos)
    xmin = nz_eigs[i]
    n = float(N - i)
    final_alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
    return float(final_alpha), float(xmin)


def reference_xmin_peak(eigs: np.ndarray, bins: int = 100) -> tuple[float, float]:
    """The reference loop, with the lower bound as documented (0.95 × peak): the published code
    compares xmin with ``log10(0.95 * xmin2)``, which mixes scales (see estimators.py)."""
    nz_eigs = torch.tensor(eigs, dtype=torch.float64)
    N = len(nz_eigs)
    log_nz_eigs = torch.log(nz_eigs)
    alphas = torch.zeros(N - 1, dtype=torch.float64)
    Ds = torch.ones(N - 1, dtype=torch.float64)
    hist_nz_eigs = torch.log10(nz_eigs)
    min_e, max_e = hist_nz_eigs.min(), hist_nz_eigs.max()
    counts = torch.histc(hist_nz_eigs, bins, min=float(min_e), max=float(max_e))
    boundaries = torch.linspace(float(min_e), float(max_e), bins + 1, dtype=torch.float64)
    ih = torch.argmax(counts)
    xmin2 = 10 ** boundaries[ih]
    xmin_min = 0.95 * xmin2
    xmin_max = 1.5 * xmin2
    for i, xmin in enumerate(nz_eigs[:-1]):
        if xmin < xmin_min:
            continue
        if xmin > xmin_max:
            break
        n = float(N - i)
        seq = torch.arange(n, dtype=torch.float64)
        alpha = 1 + n / (torch.sum(log_nz_eigs[i:]) - n * log_nz_eigs[i])
        alphas[i] = alpha
        if alpha > 1:
            Ds[i] = torch.max(torch.abs(1 - (nz_eigs[i:] / xmin) ** (-alpha + 1) - seq / n))
    best = torch.argmin(Ds)
    return float(alphas[best]), float(nz_eigs[best])


@pytest.mark.parametrize("position", [2.0, 1.5])
def test_hill_median_equals_the_reference(position: float) -> None:
    for x in spectra():
        fit = fit_power_law(x, estimator="hill_median", xmin_position=position)
        alpha, xmin = reference_xmin_mid(x, position)
        assert fit.ok and fit.xmin == xmin
        assert fit.alpha == pytest.approx(alpha, rel=1e-9)
        assert fit.n_tail == len(x) - int(len(x) / position)


def test_ks_peak_equals_the_reference() -> None:
    compared = 0
    for x in spectra():
        fit = fit_power_law(x, estimator="ks_peak")
        alpha, xmin = reference_xmin_peak(x)
        assert fit.ok
        # The reference's D uses i/n for E (no ties in these spectra: the same) and its argmin
        # over positions; both pick the same xmin.
        assert fit.xmin == xmin
        assert fit.alpha == pytest.approx(alpha, rel=1e-9)
        compared += 1
    assert compared == len(spectra())


def test_ks_peak_searches_only_the_peak_range() -> None:
    x = spectra()[1]
    full, peak = fit_power_law(x), fit_power_law(x, estimator="ks_peak")
    assert peak.alpha != full.alpha or peak.xmin == full.xmin
    logs = np.log10(x)
    counts, edges = np.histogram(logs, bins=100)
    top = 10 ** edges[np.argmax(counts)]
    assert 0.95 * top * (1 - 1e-12) <= peak.xmin <= 1.5 * top * (1 + 1e-12)


def test_clip_fingers_equals_weightwatcher(weightwatcher) -> None:
    from weightwatcher.RMT_Util import fit_clipped_powerlaw

    rng = np.random.default_rng(3)
    logger = logging.getLogger("test_clip")
    logger.setLevel(logging.WARNING)
    checked = clipped = 0
    for k in range(12):
        # A Marchenko-Pastur bulk with a few near-equal spikes on top: the fingers clip_xmax
        # is for (a tail fitted on the spikes alone reads a large alpha).
        w = rng.standard_normal((200, 300)) / math.sqrt(200)
        bulk = np.linalg.svd(w, compute_uv=False) ** 2
        spikes = bulk.max() * (1.5 + 0.01 * rng.random(1 + k % 5))
        x = np.sort(np.concatenate([bulk, spikes]))
        ours = fit_power_law(x, fingers="clip")
        theirs, num_fingers, _raw = fit_clipped_powerlaw(x, logger=logger)
        assert ours.alpha == pytest.approx(theirs.alpha, rel=1e-9)
        assert ours.xmin == pytest.approx(theirs.xmin, rel=1e-12)
        # WeightWatcher reports num_fingers = k - 1 for k clipped values; we report k.
        assert ours.num_fingers == (0 if num_fingers == 0 else num_fingers + 1)
        checked += 1
        clipped += ours.num_fingers > 0
    assert checked == 12 and clipped >= 3  # the rule fired on several inputs


def test_estimators_run_batched_and_in_analyze() -> None:
    xs = spectra(6)
    for estimator in ("ks", "hill_median", "ks_peak"):
        options = FitOptions.create(estimator=estimator)
        one_by_one = [fit_power_law(x, estimator=estimator) for x in xs]
        batched = fit_power_law_batched(xs, options=options)
        assert [f.alpha for f in batched] == pytest.approx([f.alpha for f in one_by_one])
    model = torch.nn.Sequential(torch.nn.Linear(120, 200), torch.nn.Linear(200, 90))
    report = analyze(model, estimator="hill_median", xmin_position=1.5)
    for layer in report.layers:
        evals = np.sort(layer.evals[layer.evals > 0])
        assert layer.alpha == pytest.approx(reference_xmin_mid(evals, 1.5)[0], rel=1e-9)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"estimator": "hill"}, "estimator"),
        ({"interval": "exact"}, "interval"),
        ({"fingers": "cut"}, "fingers"),
        ({"confidence": 1.0}, "confidence"),
        ({"n_boot": 5}, "n_boot"),
        ({"xmin_position": 1.0}, "xmin_position"),
    ],
)
def test_bad_fit_options_name_the_argument(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        fit_power_law([1.0, 2.0, 3.0], **kwargs)
    with pytest.raises(ValueError, match=name):
        analyze(torch.nn.Linear(4, 4), **kwargs)
