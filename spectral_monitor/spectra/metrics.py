"""Per-layer metrics from an ESD and its power-law fit; model aggregates; HT-SR verdicts.

All functions are pure and work on float64 NumPy arrays on the host: by the time metrics are
computed the spectrum has been copied off the device once, and these sums are cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spectral_monitor.spectra.powerlaw_fit import PowerLawFit

__all__ = [
    "OVER_TRAINED_BELOW",
    "UNDER_TRAINED_ABOVE",
    "VERDICTS",
    "LayerMetrics",
    "aggregate_metrics",
    "layer_metrics",
    "verdict",
]

#: WeightWatcher's thresholds on alpha (Martin & Mahoney): below 2 very heavy-tailed (their
#: "over-trained"), above 6 close to random (their "under-trained"). Here a threshold alone is
#: never a verdict: see :func:`verdict`.
OVER_TRAINED_BELOW = 2.0
UNDER_TRAINED_ABOVE = 6.0

#: Every label :func:`verdict` gives.
VERDICTS = (
    "random-like",
    "over-trained",
    "heavy-tailed",
    "well-trained",
    "under-trained",
    "unreliable",
    "no fit",
)


def verdict(
    alpha: float,
    reliable: bool = True,
    *,
    alpha_lo: float = math.nan,
    alpha_hi: float = math.nan,
    num_spikes: int = -1,
    num_traps: int = -1,
    enough_evals: bool = True,
) -> str:
    """The layer's label, from evidence, checked in this order:

    1. ``"random-like"``: no eigenvalue of the layer's own ESD above its Marchenko–Pastur edge
       plus the Tracy–Widom 99.9 % margin (``num_spikes == 0``, :mod:`.spikes`), no
       correlation trap, and enough eigenvalues to tell (``enough_evals``: at least
       ``min_evals``; a 10×10 matrix has no room for a spike to stand out). Its spectrum is
       what iid entries of its variance give, whatever alpha a fit reads off it (random
       256×256 layers read alpha ≈ 6.8, 64×64 ≈ 4.2).
    2. ``"no fit"`` (NaN alpha), ``"unreliable"`` (the fit cannot be trusted, see
       :mod:`.reliability`).
    3. alpha < 2: ``"over-trained"`` only with the whole interval below 2 (``alpha_hi`` < 2)
       *and* at least one correlation trap (``num_traps`` >= 1), the two signs that herald
       anti-grokking (arXiv 2506.04434); otherwise ``"heavy-tailed"`` (healthy small nets hold
       layers at alpha ≈ 1.8–1.9 for thousands of steps).
    4. alpha > 6: ``"under-trained"`` (spikes have left the bulk, but the tail is weak).
    5. otherwise ``"well-trained"``.

    ``num_spikes``/``num_traps`` of -1 mean "not computed" (traps off): no evidence either way,
    so such a layer can be neither random-like (spikes unknown) nor over-trained (traps unknown).
    ``alpha_lo`` is accepted for symmetry and not used by any rule yet.
    """
    del alpha_lo  # no rule uses it (see the docstring)
    if num_spikes == 0 and num_traps <= 0 and enough_evals:
        return "random-like"
    if not math.isfinite(alpha):
        return "no fit"
    if not reliable:
        return "unreliable"
    if alpha < OVER_TRAINED_BELOW:
        confident = math.isfinite(alpha_hi) and alpha_hi < OVER_TRAINED_BELOW
        return "over-trained" if confident and num_traps >= 1 else "heavy-tailed"
    if alpha > UNDER_TRAINED_ABOVE:
        return "under-trained"
    return "well-trained"


@dataclass(frozen=True)
class LayerMetrics:
    """Scalar metrics of one layer: the fit's fields and the norms of its spectrum.

    Eigenvalue-valued fields are in the units of the spectrum they came from; NaN where undefined.
    """

    alpha: float
    xmin: float
    D: float
    sigma: float
    n_tail: int
    alpha_lo: float
    alpha_hi: float
    num_fingers: int
    lambda_max: float
    log_spectral_norm: float
    log_norm: float
    log_alpha_norm: float
    stable_rank: float
    alpha_weighted: float


def layer_metrics(evals: np.ndarray, fit: PowerLawFit) -> LayerMetrics:
    """Scalar metrics of one layer.

    Args:
        evals: the layer's eigenvalues, (num_evals,) float64 >= 0, any order.
        fit: the power-law fit of the positive ones.

    Returns:
        ``lambda_max`` (largest eigenvalue), ``log_spectral_norm`` (log10 λmax), ``log_norm``
        (log10 Σλ, the squared Frobenius norm), ``log_alpha_norm`` (log10 Σλ^alpha),
        ``stable_rank`` (Σλ / λmax), ``alpha_weighted`` (alpha · log10 λmax) and the fit's
        ``alpha``, ``xmin``, ``D``, ``sigma``, ``n_tail``, ``alpha_lo``, ``alpha_hi``,
        ``num_fingers``.
    """
    evals = np.asarray(evals, dtype=np.float64)
    lambda_max = float(evals.max()) if evals.size else math.nan
    total = float(evals.sum()) if evals.size else math.nan
    positive = lambda_max > 0
    log_max = math.log10(lambda_max) if positive else math.nan
    alpha = fit.alpha
    if fit.ok and positive:
        # Σ λ^alpha computed as λmax^alpha · Σ (λ/λmax)^alpha so large alphas do not overflow.
        scaled = float(np.sum((evals / lambda_max) ** alpha))
        log_alpha_norm = alpha * log_max + math.log10(scaled)
    else:
        log_alpha_norm = math.nan
    return LayerMetrics(
        alpha=alpha,
        xmin=fit.xmin,
        D=fit.D,
        sigma=fit.sigma,
        n_tail=fit.n_tail,
        alpha_lo=fit.alpha_lo,
        alpha_hi=fit.alpha_hi,
        num_fingers=fit.num_fingers,
        lambda_max=lambda_max,
        log_spectral_norm=log_max,
        log_norm=math.log10(total) if total > 0 else math.nan,
        log_alpha_norm=log_alpha_norm,
        stable_rank=total / lambda_max if positive else math.nan,
        alpha_weighted=alpha * log_max,
    )


def aggregate_metrics(alphas: Sequence[float], lambda_maxes: Sequence[float]) -> dict[str, float]:
    """Model-level aggregates over the given layers (the caller passes the reliable ones).

    Args:
        alphas: alpha per layer (NaN for layers without a fit, which are left out).
        lambda_maxes: λmax per layer, same order.

    Returns:
        ``alpha_mean``; ``alpha_hat`` = mean of alpha · ln λmax (natural log: the seed's
        universal metric, Martin, Peng & Mahoney 2021); ``alpha_min`` (the most heavy-tailed
        layer); ``frac_alpha_below_2``; and ``num_fitted`` (layers that entered). NaN
        aggregates when no layer entered.
    """
    a = np.asarray(alphas, dtype=np.float64)
    lam = np.asarray(lambda_maxes, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(lam) & (lam > 0)
    if not keep.any():
        nan = math.nan
        return {
            "alpha_mean": nan,
            "alpha_hat": nan,
            "alpha_min": nan,
            "frac_alpha_below_2": nan,
            "num_fitted": 0,
        }
    a, lam = a[keep], lam[keep]
    return {
        "alpha_mean": float(a.mean()),
        "alpha_hat": float(np.mean(a * np.log(lam))),
        "alpha_min": float(a.min()),
        "frac_alpha_below_2": float(np.mean(a < OVER_TRAINED_BELOW)),
        "num_fitted": int(keep.sum()),
    }
