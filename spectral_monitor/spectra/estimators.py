"""The peers' tail estimators, as pure functions on one sorted spectrum.

The default fit (:mod:`.powerlaw_fit`, ``estimator="ks"``) searches every xmin
for the smallest Kolmogorov–Smirnov distance. The training-time peers use cheaper or more
constrained variants, and a user comparing numbers with them needs the same ones:

- ``"hill_median"``: xmin at a fixed position of the sorted spectrum (the median for
  ``xmin_position=2``) and the Hill/maximum-likelihood exponent of the tail above it —
  TempBalance, AlphaDecay, Model Balancing and LLR (``net_esd_estimator`` with
  ``fix_fingers="xmin_mid"``).
- ``"ks_peak"``: the KS search restricted to xmin in [0.95, 1.5] × the left edge of the most
  populated bin of the 100-bin histogram of log10 λ (WeightWatcher's and AlphaPruning's
  ``xmin_peak``).
- ``fingers="clip"``: WeightWatcher's ``clip_xmax`` — refit without the k = 2…9 largest
  eigenvalues and keep the first clipped fit whose alpha is more than 1.0 below the unclipped
  one (stop once a clipped alpha is <= 2): isolated outliers ("fingers") at the top of a
  spectrum otherwise inflate alpha.

Every function takes ascending positive float64 values (1-D, on any device) and returns tensors
on that device, so that the whole analysis can stay on the GPU until its single transfer.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "CLIP_FINGER_RANGE",
    "CLIP_FINGER_THRESHOLD",
    "CLIP_MIN_ALPHA",
    "ESTIMATORS",
    "FINGERS",
    "PEAK_BINS",
    "PEAK_RANGE",
    "choose_clipped",
    "hill_median",
    "peak_allowed",
]

ESTIMATORS = ("ks", "hill_median", "ks_peak")
FINGERS = (None, "clip")

#: Histogram bins of log10 λ whose fullest bin marks the ESD's peak (``ks_peak``).
PEAK_BINS = 100
#: xmin may range over [low, high] × the peak's value (``ks_peak``).
PEAK_RANGE = (0.95, 1.5)
#: ``fingers="clip"`` refits without the k largest values for k in this range (WeightWatcher
#: 0.7.7 loops ``range(2, max_fingers)`` with ``max_fingers=10``: k = 1 is never tried).
CLIP_FINGER_RANGE = range(2, 10)
#: A clipped fit wins when its alpha is more than this below the unclipped alpha.
CLIP_FINGER_THRESHOLD = 1.0
#: Clipping stops (keeping the unclipped fit) once a clipped alpha is at or below this.
CLIP_MIN_ALPHA = 2.0


def hill_median(
    x: torch.Tensor, xmin_position: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hill estimate with xmin at a fixed position of the spectrum.

    With ``N`` values and ``i = int(N / xmin_position)``: ``xmin = x[i]``, the tail is ``x[i:]``
    (``n = N - i`` values, ties with ``x[i]`` below position ``i`` left out, as in the peers'
    code) and ``alpha = 1 + n / (sum(ln x[i:]) - n ln x[i])``. ``D`` is the KS distance of that
    tail with our convention (fraction of the tail strictly below each value).

    Args:
        x: (N,) float64, ascending, positive, N >= 2.
        xmin_position: > 1; 2 puts xmin at the median, 1.5 (Model Balancing) at the lower third.

    Returns:
        alpha, xmin, D, sigma (0-d float64) and n_tail (0-d int64). alpha is inf when the tail
        is one repeated value (the caller reports that as a degenerate tail).
    """
    n_all = x.numel()
    i = min(int(n_all / xmin_position), n_all - 1)
    tail = x[i:]
    n = n_all - i
    logs = torch.log1p((tail - tail[0]) / tail[0])  # ln(x / xmin), exact for near-ties
    alpha = 1.0 + n / logs.sum()
    # E(x_j) = fraction of the tail strictly below x_j: the first index of x_j's run.
    idx = torch.arange(n, device=x.device)
    is_new = torch.ones(n, dtype=torch.bool, device=x.device)
    is_new[1:] = tail[1:] != tail[:-1]
    first = torch.cummax(torch.where(is_new, idx, torch.zeros_like(idx)), 0).values
    theory = 1.0 - torch.exp((1.0 - alpha) * logs)
    D = (first.to(torch.float64) / n - theory).abs().amax()
    sigma = (alpha - 1.0) / math.sqrt(n)
    return alpha, tail[0], D, sigma, torch.tensor(n, device=x.device)


def peak_allowed(x: torch.Tensor) -> torch.Tensor:
    """Positions of ``x`` that ``ks_peak`` allows as xmin: values in ``PEAK_RANGE`` × the
    left edge of the fullest of ``PEAK_BINS`` equal-width bins of log10 x over [min, max].

    The peers' code (WeightWatcher ``fit_powerlaw``, AlphaPruning ``esd_utils.py``) compares
    xmin with ``log10(0.95 * peak)`` as its lower bound — a mix of log and linear scales that in
    practice removes the lower bound; we apply the documented range, [0.95, 1.5] × peak.

    Args:
        x: (N,) float64, ascending, positive.

    Returns:
        (N,) bool.
    """
    logs = torch.log10(x)
    lo, span = logs[0], logs[-1] - logs[0]
    # torch.histc's binning, kept on the device (histc itself wants host floats for its range).
    scaled = (logs - lo) * (PEAK_BINS / torch.where(span > 0, span, torch.ones_like(span)))
    bins = scaled.long().clamp(0, PEAK_BINS - 1)
    fullest = torch.bincount(bins, minlength=PEAK_BINS).argmax()
    peak = 10.0 ** (lo + fullest.to(torch.float64) * (span / PEAK_BINS))
    return (x >= PEAK_RANGE[0] * peak) & (x <= PEAK_RANGE[1] * peak)


def choose_clipped(alphas: torch.Tensor) -> torch.Tensor:
    """Which fit ``fingers="clip"`` keeps, per spectrum.

    Args:
        alphas: (B, 1 + K) float64: column 0 the unclipped alpha, column j the alpha without the
            ``CLIP_FINGER_RANGE[j - 1]`` largest values (NaN where that fit failed).

    Returns:
        (B,) int64 column index: the first clipped fit with alpha < alpha_0 − 1.0, unless an
        earlier clipped alpha is <= 2 (then 0, the unclipped fit); 0 when none qualifies.
    """
    base = alphas[:, :1]
    clipped = alphas[:, 1:]
    wins = clipped + CLIP_FINGER_THRESHOLD < base
    stops = wins | (clipped <= CLIP_MIN_ALPHA)
    any_stop = stops.any(dim=1)
    first = torch.argmax(stops.to(torch.int8), dim=1)  # first True (0 when none)
    won = any_stop & wins.gather(1, first.unsqueeze(1)).squeeze(1)
    return torch.where(won, first + 1, torch.zeros_like(first))
