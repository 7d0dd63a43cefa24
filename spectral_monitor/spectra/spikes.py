"""Where a layer's spectrum leaves the random bulk: the Marchenko–Pastur edge of its entries,
a Tracy–Widom margin above it, spikes of the layer's own ESD and SETOL's ERG gap.

Conventions. Everything here is in the *raw* convention: eigenvalues of WᵀW for a (rows, cols)
matrix W, rows >= cols, not divided by rows (the report's ``normalize=True`` divides both the
eigenvalues and the edge by the same number, so counts and ratios do not depend on it).

An (rows, cols) matrix of iid entries of variance σ² has the largest eigenvalue of WᵀW at

    μ = σ² (√(rows − 1) + √cols)²,   fluctuating as  s = σ² (√(rows − 1) + √cols)
                                                          · (1/√(rows − 1) + 1/√cols)^(1/3)

times a Tracy–Widom (β = 1) variable (Johnstone 2001, Ann. Statist. 29:295; the centring with
rows − 1 keeps it accurate down to a few dozen rows). A spike is an eigenvalue above
``μ + TW_QUANTILE · s``: TW_QUANTILE = 3.2713 is the 99.9 % quantile of TW₁ (computed from the
Hastings–McLeod solution of Painlevé II: 90 % 0.4502, 95 % 0.9793, 99 % 2.0234, 99.9 % 3.2713),
so a random layer shows a spike in about 1 of 1,000 draws. The bulk edge itself (the ratio
``trap_excess`` is measured against) is the asymptotic λ+ = σ² (√rows + √cols)².

σ² is the variance of W's own entries about their mean: an element-wise shuffle keeps the
entries, so the shuffled matrix's bulk has exactly that scale (no fit needed, unlike
WeightWatcher's kernel-density fit of σ), and the mean becomes a rank-one term m·11ᵀ whose
eigenvalue m²·rows·cols leaves the bulk (BBP) once |m|·(rows·cols)^¼/σ > 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "TW_QUANTILE",
    "EntryStats",
    "detx_num",
    "entry_stats",
    "entry_stats_batch",
    "erg_gap",
    "mp_bulk_edge",
    "num_above",
    "spike_threshold",
]

#: The 99.9 % quantile of the Tracy–Widom β=1 law: the margin above the MP edge, in units of the
#: edge's fluctuation scale, that a random matrix's largest eigenvalue passes once in 1,000 draws.
TW_QUANTILE = 3.2713


def mp_bulk_edge(variance: float, rows: int, cols: int) -> float:
    """λ+ = σ²(√rows + √cols)²: the upper edge of the Marchenko–Pastur bulk of WᵀW for a
    (rows, cols) matrix of iid entries with variance σ² (raw convention, squared weight units)."""
    return variance * (math.sqrt(rows) + math.sqrt(cols)) ** 2


def spike_threshold(variance: float, rows: int, cols: int, quantile: float = TW_QUANTILE) -> float:
    """The level a random (rows, cols) matrix's largest eigenvalue of WᵀW exceeds with the
    Tracy–Widom tail probability of ``quantile``: Johnstone's centre μ plus ``quantile``·s (see
    the module docstring). Raw convention; NaN for a non-finite or negative variance."""
    if not (math.isfinite(variance) and variance >= 0):
        return math.nan
    a = math.sqrt(max(rows - 1, 1))
    b = math.sqrt(cols)
    centre = (a + b) ** 2
    scale = (a + b) * (1.0 / a + 1.0 / b) ** (1.0 / 3.0)
    return variance * (centre + quantile * scale)


@dataclass(frozen=True)
class EntryStats:
    """Statistics of one layer's entries (all matrices of its stack pooled), the cheap
    predictors of correlation traps.

    Attributes:
        mean: mean entry; std: standard deviation about it (population); both in weight units.
        mean_shift_ratio: |mean|·(rows·cols)^¼ / std: the rank-one mean of a shuffled matrix
            leaves the MP bulk (a trap) once this exceeds 1 (BBP threshold).
        max_ratio: max|w| / std. One entry x alone makes an eigenvalue ≈ x² that leaves the bulk
            once |x|/std ≳ (rows·cols)^¼, so compare it with that number.
        excess_kurtosis: E[(w − mean)⁴]/std⁴ − 3 (0 for Gaussian entries, −1.2 for uniform
            ones: PyTorch's default initialisation); large values mean heavy-tailed entries.
    """

    mean: float
    std: float
    mean_shift_ratio: float
    max_ratio: float
    excess_kurtosis: float

    @property
    def variance(self) -> float:
        return self.std * self.std


# Entries upcast at a time for the moments (16 MiB of float32): the statistics of a large bf16
# layer never hold a float32 copy of it.
_CHUNK = 1 << 22


def _moments(stack: torch.Tensor) -> torch.Tensor:
    """(mean, E(w − mean)², E(w − mean)⁴, max|w|) of every entry, as float64, on the stack's
    device. Two passes (mean first, so the central moments do not cancel) in float32 (float64
    for a float64 stack): torch's sums are pairwise, accurate to ~1e-6 relative here, and a
    float64 pass costs several times more (0.44 s against 0.05 s for a 3072×768 layer)."""
    w = stack.detach()
    w = (w.mT if (not w.is_contiguous() and w.mT.is_contiguous()) else w).reshape(-1)
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    n = w.numel()
    parts = [w[start : start + _CHUNK].to(dtype) for start in range(0, n, _CHUNK)]
    if len(parts) == 1:
        total, peak = parts[0].sum().to(torch.float64), parts[0].abs().max()
    else:  # keep one chunk alive at a time
        parts = []
        total = torch.zeros((), dtype=torch.float64, device=w.device)
        peak = torch.zeros((), dtype=dtype, device=w.device)
        for start in range(0, n, _CHUNK):
            part = w[start : start + _CHUNK].to(dtype)
            total += part.sum().to(torch.float64)
            peak = torch.maximum(peak, part.abs().max())
    mean = total / n
    m2 = torch.zeros((), dtype=torch.float64, device=w.device)
    m4 = torch.zeros((), dtype=torch.float64, device=w.device)
    for start in range(0, n, _CHUNK):
        part = (parts[0] if parts else w[start : start + _CHUNK].to(dtype)) - mean.to(dtype)
        part.mul_(part)
        m2 += part.sum().to(torch.float64)
        m4 += part.square_().sum().to(torch.float64)
    return torch.stack([mean, m2 / n, m4 / n, peak.to(torch.float64)])


def _stats(moments: list[float], rows: int, cols: int) -> EntryStats:
    mean_v, m2_v, m4_v, peak_v = moments
    std = math.sqrt(m2_v) if m2_v > 0 else 0.0
    if std > 0 and math.isfinite(std):
        shift = abs(mean_v) * (rows * cols) ** 0.25 / std
        ratio = peak_v / std
        kurt = m4_v / (m2_v * m2_v) - 3.0
    else:
        shift = ratio = kurt = math.nan
    return EntryStats(mean_v, std, shift, ratio, kurt)


def entry_stats(stack: torch.Tensor) -> EntryStats:
    """:class:`EntryStats` of a (count, rows, cols) stack (rows, cols of one matrix; the
    moments pool every entry). Computed in float64 on the stack's device, one host transfer."""
    return entry_stats_batch([stack])[0]


def entry_stats_batch(stacks: list[torch.Tensor]) -> list[EntryStats]:
    """:func:`entry_stats` of many stacks with one host transfer per device (on a GPU a
    transfer is a wait for the device: one for all layers, not one per layer)."""
    moments = [_moments(stack) for stack in stacks]
    by_device: dict[torch.device, list[int]] = {}
    for k, m in enumerate(moments):
        by_device.setdefault(m.device, []).append(k)
    host: list[list[float]] = [[]] * len(stacks)
    for members in by_device.values():
        values = torch.stack([moments[k] for k in members]).cpu().tolist()
        for k, row in zip(members, values, strict=True):
            host[k] = row
    return [
        _stats(row, stack.shape[-2], stack.shape[-1])
        for row, stack in zip(host, stacks, strict=True)
    ]


def num_above(evals: np.ndarray | torch.Tensor, threshold: float) -> int:
    """How many eigenvalues exceed ``threshold`` (0 for a NaN threshold: no evidence)."""
    if not math.isfinite(threshold):
        return 0
    if isinstance(evals, torch.Tensor):
        return int((evals > threshold).sum())
    return int(np.count_nonzero(np.asarray(evals) > threshold))


def detx_num(evals: np.ndarray) -> int:
    """SETOL's detX count (WeightWatcher 0.7.7 ``RMT_Util.detX_constraint``): rescale the
    eigenvalues to mean 1 (λ·n/Σλ), then the number k of largest ones at which their product
    first falls below 1, scanning k = 1 .. n−1 from the top; n if it never does.

    O(n) from a cumulative sum of logs (WeightWatcher recomputes the product for every k, O(n²)).
    Scale-free: the same in the raw and the normalised convention.

    Args:
        evals: (n,) eigenvalues >= 0, any order.

    Returns:
        The count; 0 (WeightWatcher's answer) for fewer than 2 eigenvalues or a flat spectrum.
    """
    x = np.sort(np.asarray(evals, dtype=np.float64))
    n = x.size
    if n < 2 or not x[0] < x[-1]:
        return 0
    total = float(x.sum())
    with np.errstate(divide="ignore"):  # a zero eigenvalue: log 0 = -inf, product 0 < 1
        logs = np.log(x[::-1] * (n / total))
    partial = np.cumsum(logs[: n - 1])  # log of the product of the k largest, k = 1..n-1
    below = np.flatnonzero(partial < 0.0)
    return int(below[0] + 1) if below.size else n


def erg_gap(evals: np.ndarray, n_tail: int) -> float:
    """SETOL's ERG gap (WeightWatcher's ``ERG_gap``): :func:`detx_num` minus the number of
    eigenvalues in the power-law tail (>= xmin, the fit's ``n_tail``). Near 0 where the detX
    condition and the power-law tail pick the same eigenvalues (SETOL's ideal layer); NaN when
    there is no tail."""
    if n_tail <= 0:
        return math.nan
    return float(detx_num(evals) - n_tail)
