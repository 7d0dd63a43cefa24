"""Clauset–Shalizi–Newman power-law fit of an eigenvalue spectrum, vectorised and batched in torch.

For sorted positive values ``x`` the fit tries every distinct value except the largest as ``xmin``;
for each it takes the tail ``x >= xmin`` (``n_tail`` points), the maximum-likelihood exponent
``alpha = 1 + n_tail / sum(ln(x / xmin))`` (no upper bound), and the Kolmogorov–Smirnov distance
``D = max |E(x) - T(x)|`` over the tail's values, where ``E(x)`` is the fraction of the tail
strictly below ``x`` and ``T(x) = 1 - (x / xmin) ** (1 - alpha)``. The ``xmin`` with the
smallest ``D`` wins (the first one on ties) and ``sigma = (alpha - 1) / sqrt(n_tail)``.

These are the semantics of ``powerlaw`` 1.x and of WeightWatcher's own fitter (DESIGN.md §4). The
KS distance of every candidate is computed at once as an (candidates × tail) tile, chunked so that
memory stays bounded, on whatever device the values live on. Logs, suffix sums and alpha are kept in
float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from spectral_monitor.spectra.estimators import (
    CLIP_FINGER_RANGE,
    ESTIMATORS,
    FINGERS,
    choose_clipped,
    hill_median,
    peak_allowed,
)
from spectral_monitor.spectra.intervals import (
    INTERVALS,
    analytic_interval,
    bootstrap_samples,
    percentile_interval,
)
from spectral_monitor.utilities.validation import check_choice, check_int, check_number

__all__ = [
    "FitOptions",
    "FitTable",
    "PowerLawFit",
    "fit_power_law",
    "fit_power_law_batched",
    "fit_power_law_table",
    "fit_work_bytes",
]

# Elements of one (batch × candidates × tail) KS tile. On a CPU 2**16 float64 values (512 KiB) stay
# in cache, and a fresh multi-MiB buffer per operation costs more in page faults than in math; on a
# GPU a large tile (128 MiB) keeps the kernels busy.
_TILE_ELEMENTS_CPU = 1 << 16
_TILE_ELEMENTS_GPU = 1 << 24
# Candidate pruning for one spectrum: lower bounds from this many + 1 points per tail, the exact D
# of this many best-bounded candidates as the upper bound, and a margin for an ulp of exp.
_PROBE_POINTS = 32
_PROBES = 4
_PRUNE_MARGIN = 1e-12
# ln(x_j / x_i) is read off prefix sums of log-gaps as L_j - L_i, which carries an absolute error
# of a few ulps of L_max = ln(x_max / x_0); T's error is then about |1 - alpha| * L_max * 1e-16.
# A candidate where that product exceeds this bound (an enormous alpha over near-tied values far
# from x_0, never a real spectrum) gets its log differences summed from its own start instead.
_ILL_CONDITIONED = 1e4


@dataclass(frozen=True)
class PowerLawFit:
    """Result of one power-law fit.

    Attributes:
        alpha: fitted exponent of ``p(x) ~ x**-alpha`` (dimensionless); NaN when there is no fit.
        xmin: start of the power-law tail, in the units of the input values; NaN when no fit.
        D: Kolmogorov–Smirnov distance between tail and fitted law, in [0, 1]; NaN if no fit.
        sigma: standard error of alpha, ``(alpha - 1) / sqrt(n_tail)``; NaN when there is no fit.
        n_tail: number of values ``>= xmin`` used for alpha; 0 when there is no fit.
        num_values: number of positive values that entered the fit (zeros are ignored).
        reason: ``None`` for a valid fit, otherwise why there is none.
        alpha_lo, alpha_hi: two-sided confidence interval of alpha (see
            :mod:`spectral_monitor.spectra.intervals`); NaN when there is no fit or no interval.
        num_fingers: top values left out by ``fingers="clip"`` (0 otherwise).
    """

    alpha: float
    xmin: float
    D: float
    sigma: float
    n_tail: int
    num_values: int
    reason: str | None = None
    alpha_lo: float = math.nan
    alpha_hi: float = math.nan
    num_fingers: int = 0

    @property
    def ok(self) -> bool:
        """True when the fit is valid (``reason is None``)."""
        return self.reason is None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return asdict(self)

    @classmethod
    def failed(cls, reason: str, num_values: int = 0) -> PowerLawFit:
        """A result with NaN fields that says why there is no fit."""
        nan = math.nan
        return cls(nan, nan, nan, nan, 0, num_values, reason)


def _as_float64_tensor(values: Any) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().reshape(-1).to(torch.float64)
    return torch.as_tensor(np.asarray(values, dtype=np.float64).reshape(-1))


def _prepare(values: Sequence[Any], device: torch.device) -> list[tuple[torch.Tensor, str | None]]:
    """Sorted positive float64 values of each input on ``device``, or the reason it cannot be
    fitted (then the tensor is empty, or holds the positive values when there are < 2 distinct).

    Zeros are dropped: a rank-deficient matrix has exact zero eigenvalues that carry no tail
    information. Negative, NaN or infinite values mean the input is not a spectrum: no fit.
    The checks of all inputs come to the host in one transfer.
    """
    xs = [torch.sort(_as_float64_tensor(v).to(device)).values for v in values]
    full = [k for k, x in enumerate(xs) if x.numel() > 0]
    stats = torch.zeros((len(xs), 4), dtype=torch.float64)
    if full:
        rows = []
        for k in full:
            x = xs[k]
            positive = x > 0
            smallest = torch.where(positive, x, torch.full_like(x, math.inf)).amin()
            rows.append(
                torch.stack(
                    [(~torch.isfinite(x)).any(), (x < 0).any(), positive.sum(), x[-1] > smallest]
                ).to(torch.float64)
            )
        stats[full] = torch.stack(rows).cpu()
    out: list[tuple[torch.Tensor, str | None]] = []
    for x, (nonfinite, negative, count, distinct) in zip(xs, stats.tolist(), strict=True):
        if x.numel() == 0:
            out.append((x, "no values"))
        elif nonfinite:
            out.append((x[:0], "non-finite values (NaN or Inf)"))
        elif negative:
            out.append((x[:0], "negative values"))
        else:
            x = x[x.numel() - int(count) :]
            out.append((x, None if distinct else "fewer than 2 distinct positive values"))
    return out


def _fit_padded(
    x: torch.Tensor,
    lengths: torch.Tensor,
    prune: bool = True,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fit every row of a padded batch.

    Args:
        x: (B, n) float64, each row sorted ascending and positive in its first ``lengths[b]``
            entries; entries past that are padding, equal to the row's largest value.
        lengths: (B,) int64, number of valid entries per row, each with >= 2 distinct values.
        prune: for a single row, compute exact distances only for candidates that can win (see
            :func:`_pruned_distances`); a batch always uses the full tile.
        allowed: (B, n) bool, positions that may be xmin (``estimator="ks_peak"`` restricts the
            search to a range of values); None: every distinct value but the largest. A row with
            no allowed candidate gets alpha = NaN and n_tail = 0.

    Returns:
        alpha, xmin, D, sigma (each (B,) float64) and n_tail ((B,) int64), on ``x``'s device.
    """
    batch, n = x.shape
    device = x.device
    idx = torch.arange(n, device=device)
    valid = idx.unsqueeze(0) < lengths.unsqueeze(1)  # (B, n)

    # Everything is built from the log-gaps g_k = ln(x_{k+1} / x_k) >= 0, computed as log1p of
    # the relative gap: values a few ulps apart keep a tiny positive gap (ln(x) - ln(x_i) would
    # round it to 0 and give alpha = inf), ties give exactly 0, and the sums below add only
    # non-negative terms, so they do not cancel.
    gaps = torch.zeros_like(x)
    gaps[:, :-1] = torch.log1p((x[:, 1:] - x[:, :-1]) / x[:, :-1])
    logs = torch.cumsum(gaps, 1) - gaps  # ln(x_j / x_0), exclusive prefix sums
    n_tail = (lengths.unsqueeze(1) - idx.unsqueeze(0)).clamp(min=1)  # (B, n) int64
    n_tail_f = n_tail.to(torch.float64)
    # sum_{j >= i} ln(x_j / x_i) = sum_{k >= i} g_k * (number of j > k in the tail); padding
    # repeats the largest value, so its gaps are 0 and it adds nothing.
    weighted = gaps * (lengths.unsqueeze(1) - 1 - idx.unsqueeze(0)).clamp(min=0)
    denom = torch.flip(torch.cumsum(torch.flip(weighted, [1]), 1), [1])
    alpha = 1.0 + n_tail_f / denom  # inf where the tail is one repeated value (not a candidate)

    # First index of each value's run: E(x_j) = (first_j - i) / n_tail_i counts x < x_j in tail i.
    is_new = torch.ones_like(valid)
    is_new[:, 1:] = x[:, 1:] != x[:, :-1]
    first = torch.cummax(torch.where(is_new, idx.unsqueeze(0), torch.zeros_like(idx)), 1).values
    row_max = x.gather(1, (lengths - 1).unsqueeze(1))
    candidate = valid & is_new & (x < row_max)
    if allowed is not None:
        candidate = candidate & allowed
    # A non-candidate's exponent is irrelevant; a finite one keeps NaN out of the tile.
    slope = torch.where(candidate, 1.0 - alpha, torch.zeros_like(alpha))
    inv_tail = 1.0 / n_tail_f
    offset = idx.unsqueeze(0) * inv_tail  # i / n_tail_i
    first_f = first.to(torch.float64)

    log_range = logs.gather(1, (lengths - 1).unsqueeze(1))  # (B, 1) ln(x_max / x_0)
    ill = candidate & (slope.abs() * log_range > _ILL_CONDITIONED)

    terms = (logs, slope, first_f, inv_tail, offset, gaps)
    if batch == 1 and prune:
        D = _pruned_distances(tuple(t[0] for t in terms), candidate[0], ill[0]).unsqueeze(0)
    else:
        D = _all_distances(*terms[:5])
        for b in torch.nonzero(ill.any(dim=1)).squeeze(1).tolist():
            rows = torch.nonzero(ill[b]).squeeze(1)
            D[b, rows] = _exact_distances(tuple(t[b] for t in terms), rows, summed=True)
    # A NaN distance must never win the argmin (torch.argmin takes NaN as the smallest).
    D = torch.where(candidate & ~torch.isnan(D), D, torch.full_like(D, math.inf))

    best = torch.argmin(D, dim=1, keepdim=True)  # first minimum on ties
    none = ~candidate.any(dim=1)
    alpha_b = alpha.gather(1, best).squeeze(1).masked_fill(none, math.nan)
    n_tail_b = n_tail.gather(1, best).squeeze(1).masked_fill(none, 0)
    sigma_b = (alpha_b - 1.0) / torch.sqrt(n_tail_b.to(torch.float64))
    return alpha_b, x.gather(1, best).squeeze(1), D.gather(1, best).squeeze(1), sigma_b, n_tail_b


def _tile_budget(device: torch.device) -> int:
    """Elements of one KS tile on ``device`` (see ``_TILE_ELEMENTS_*``)."""
    return _TILE_ELEMENTS_CPU if device.type == "cpu" else _TILE_ELEMENTS_GPU


def _largest_tile(batch: int, n: int, device: torch.device) -> int:
    """Elements of the largest tile :func:`_all_distances` makes for a (batch, n) padded batch:
    the budget, but at least one candidate row of every spectrum and at most the whole square."""
    return min(batch * n * n, max(_tile_budget(device), batch * n))


def _padded_groups(lengths: Sequence[int], batch: bool) -> list[list[int]]:
    """The spectra (indices into ``lengths``) fitted together as one padded batch: all of them
    (``batch``, the GPU path), or else the short ones (<= ``_CPU_BATCH_MAX_VALUES`` values)
    together and each longer one alone, with candidate pruning."""
    if batch:
        return [list(range(len(lengths)))]
    groups = [[k] for k, n in enumerate(lengths) if n > _CPU_BATCH_MAX_VALUES]
    short = [k for k, n in enumerate(lengths) if n <= _CPU_BATCH_MAX_VALUES]
    return [*groups, short] if short else groups


def _all_distances(
    logs: torch.Tensor,
    slope: torch.Tensor,
    first_f: torch.Tensor,
    inv_tail: torch.Tensor,
    offset: torch.Tensor,
) -> torch.Tensor:
    """KS distance of every position as xmin, (B, n), by one chunked (B, chunk, n) tile.

    ``E - T = (first_j - i) / n_tail_i - 1 + exp((1 - alpha_i) (L_j - L_i))`` for j >= i, with
    ``L = ln(x / x_0)``; the inputs are those terms, each (B, n).
    """
    batch, n = logs.shape
    device = logs.device
    D = torch.empty((batch, n), dtype=torch.float64, device=device)
    budget = _tile_budget(device)
    # The tail of candidate i starts at i, so the chunk from i0 needs n - i0 columns; the rows
    # per chunk grow as the columns shrink, keeping each tile near the budget (half the chunks,
    # and the per-operation overhead, of a fixed row count).
    buffer = torch.empty(_largest_tile(batch, n, device), dtype=torch.float64, device=device)
    idx = torch.arange(n, device=device)
    i0 = 0
    while i0 < n:
        cols = n - i0
        rows = max(1, min(cols, budget // (batch * cols)))
        i1 = i0 + rows
        t = buffer[: batch * rows * cols].view(batch, rows, cols)
        # t = E - T = (first_j - i) / n_tail_i - 1 + (x_j / x_i) ** (1 - alpha_i), in place.
        torch.sub(logs[:, i0:].unsqueeze(1), logs[:, i0:i1].unsqueeze(2), out=t)
        t.mul_(slope[:, i0:i1].unsqueeze(2)).exp_()
        t.addcmul_(first_f[:, i0:].unsqueeze(1), inv_tail[:, i0:i1].unsqueeze(2))
        t.sub_((offset[:, i0:i1] + 1.0).unsqueeze(2)).abs_()
        # Padding repeats the row's largest value, so padded points reproduce that point's gap
        # and need no mask; only j < i is masked (the same pattern in every row of the batch).
        t.masked_fill_(idx[:rows].unsqueeze(1) > idx[:cols].unsqueeze(0), 0.0)
        torch.amax(t, dim=2, out=D[:, i0:i1])
        i0 = i1
    return D


def _gaps_at(
    terms: tuple[torch.Tensor, ...],
    rows: torch.Tensor,
    cols: torch.Tensor,
    summed: bool = False,
) -> torch.Tensor:
    """max over ``cols`` of |E - T| for each candidate in ``rows`` (one spectrum).

    Args:
        terms: (logs, slope, first_f, inv_tail, offset, gaps), each (n,).
        rows: (k,) candidate positions.
        cols: (k, c) positions per candidate, or (c,) shared; those below the row are ignored.
        summed: take ``ln(x_j / x_i)`` as the sum of the gaps from ``i`` (accurate to a few ulps
            of itself) rather than as ``L_j - L_i`` (a few ulps of ``L_max``); needs ``cols``
            to be every position, shared.
    """
    logs, slope, first_f, inv_tail, offset, gaps = terms
    if cols.dim() == 1:
        cols = cols.unsqueeze(0).expand(rows.numel(), -1)
    if summed:
        # sum_{k=i}^{j-1} g_k: an inclusive cumsum of the gaps from i, shifted by one column.
        own = torch.where(cols >= rows.unsqueeze(1), gaps[cols], torch.zeros((), dtype=gaps.dtype))
        t = torch.zeros_like(own)
        torch.cumsum(own[:, :-1], 1, out=t[:, 1:])
    else:
        t = logs[cols] - logs[rows].unsqueeze(1)
    t.mul_(slope[rows].unsqueeze(1)).exp_()
    t.addcmul_(first_f[cols], inv_tail[rows].unsqueeze(1))
    t.sub_((offset[rows] + 1.0).unsqueeze(1)).abs_()
    t.masked_fill_(cols < rows.unsqueeze(1), 0.0)
    return t.amax(dim=1)


def _exact_distances(
    terms: tuple[torch.Tensor, ...], rows: torch.Tensor, summed: bool = False
) -> torch.Tensor:
    """Exact KS distance of each candidate in ``rows`` (one spectrum), (k,), in bounded chunks."""
    n = terms[0].numel()
    idx = torch.arange(n, device=rows.device)
    out = torch.empty(rows.numel(), dtype=torch.float64, device=rows.device)
    step = max(1, _TILE_ELEMENTS_CPU // n)
    for r0 in range(0, rows.numel(), step):
        out[r0 : r0 + step] = _gaps_at(terms, rows[r0 : r0 + step], idx, summed)
    return out


def _pruned_distances(
    terms: tuple[torch.Tensor, ...], candidate: torch.Tensor, ill: torch.Tensor
) -> torch.Tensor:
    """KS distances of one spectrum, (n,), exact for every candidate that can win and +inf for
    the others, which are ruled out by exact lower bounds.

    A candidate's |E - T| at any subset of its tail is a lower bound of its D. The bound at
    ``_PROBE_POINTS + 1`` points spread over each tail is cheap; the exact D of the few
    candidates with the lowest bounds is an upper bound of the minimum; only candidates whose
    bound does not exceed it (plus a margin for an ulp of vectorised ``exp``) can win, and only
    those get their exact D. The argmin over the result is that of the full computation.

    Ill-conditioned candidates (``ill``, see ``_ILL_CONDITIONED``) are never pruned: their D is
    always computed, from summed gaps, and also bounds the minimum.

    Args:
        terms: (logs, slope, first_f, inv_tail, offset, gaps), each (n,).
        candidate: (n,) bool, positions that may be xmin.
        ill: (n,) bool, candidates whose log differences must be summed.
    """
    logs, inv_tail = terms[0], terms[3]
    n = logs.numel()
    D = torch.full((n,), math.inf, dtype=torch.float64, device=logs.device)
    bound = torch.tensor(math.inf, dtype=torch.float64, device=logs.device)
    if bool(ill.any()):
        rows = torch.nonzero(ill).squeeze(1)
        D[rows] = _exact_distances(terms, rows, summed=True)
        bound = D[rows].min()
        candidate = candidate & ~ill
    cand = torch.nonzero(candidate).squeeze(1)
    if cand.numel() == 0:
        return D
    n_tail = torch.round(1.0 / inv_tail[cand])  # (padding past the row's end is not counted)
    frac = torch.linspace(0.0, 1.0, _PROBE_POINTS + 1, dtype=torch.float64, device=logs.device)
    grid = cand.unsqueeze(1) + ((n_tail - 1).unsqueeze(1) * frac).long()
    lower = _gaps_at(terms, cand, grid)

    probes = torch.topk(lower, min(_PROBES, cand.numel()), largest=False).indices
    bound = torch.minimum(bound, _exact_distances(terms, cand[probes]).min())
    if torch.isfinite(bound):
        keep = torch.nonzero(lower <= bound + _PRUNE_MARGIN).squeeze(1)
    else:  # nothing to prune against: compute every candidate
        keep = torch.arange(cand.numel(), device=logs.device)
    D[cand[keep]] = _exact_distances(terms, cand[keep])
    return D


@dataclass(frozen=True)
class FitOptions:
    """How a spectrum's tail is fitted; validated by :meth:`create`.

    Attributes:
        estimator: ``"ks"`` (exact Clauset–Shalizi–Newman search, the default), ``"hill_median"``
            or ``"ks_peak"`` (see :mod:`spectral_monitor.spectra.estimators`).
        xmin_position: ``hill_median`` puts xmin at index ``int(N / xmin_position)``.
        fingers: None, or ``"clip"`` (WeightWatcher's ``clip_xmax``).
        interval: ``"analytic"`` or ``"bootstrap"`` (see :mod:`spectral_monitor.spectra.intervals`).
        confidence: level of the two-sided interval, in (0, 1).
        n_boot: resamples for ``interval="bootstrap"``.
        seed: seed of the bootstrap's generator (an analysis is reproducible).
    """

    estimator: str = "ks"
    xmin_position: float = 2.0
    fingers: str | None = None
    interval: str = "analytic"
    confidence: float = 0.9
    n_boot: int = 100
    seed: int = 0

    @classmethod
    def create(
        cls,
        estimator: str = "ks",
        xmin_position: float = 2.0,
        fingers: str | None = None,
        interval: str = "analytic",
        confidence: float = 0.9,
        n_boot: int = 100,
        seed: int = 0,
    ) -> FitOptions:
        """Validate user arguments.

        Raises:
            ValueError: an argument has the wrong type or value; the message names it.
        """
        check_choice("estimator", estimator, ESTIMATORS)
        check_choice("fingers", fingers, FINGERS)
        check_choice("interval", interval, INTERVALS)
        position = check_number("xmin_position", xmin_position, above=1.0)
        level = check_number("confidence", confidence, above=0.0, below=1.0)
        check_int("n_boot", n_boot, 10)
        check_int("seed", seed, 0)
        return cls(estimator, position, fingers, interval, level, n_boot, seed)


# On a CPU, spectra up to this long (and bootstrap resamples of them) are fitted as one padded
# batch: without pruning, but with one call's overhead for all (measured, one thread: 11 VGG-11
# spectra of 10-512 values 8 ms against 12.6 ms one by one; bootstrap of 100 values 20×).
_CPU_BATCH_MAX_VALUES = 512

# Columns of a fit table.
_ALPHA, _XMIN, _D, _SIGMA, _NTAIL, _LO, _HI, _FINGERS = range(8)
_NUM_COLUMNS = 8


@dataclass(frozen=True)
class FitTable:
    """Fits of several spectra as one device tensor, for callers that bring results to the host
    together with other data in a single transfer (see :meth:`results`).

    Attributes:
        table: (count, 8) float64 on the compute device, columns alpha, xmin, D, sigma, n_tail,
            alpha_lo, alpha_hi (bootstrap only; the analytic interval is computed on the host
            in :meth:`results`) and num_fingers; NaN rows (and n_tail 0) where there is no fit.
        num_values: per input, the number of positive values that entered the fit.
        reasons: per input, None or why there is no fit.
        options: how the spectra were fitted.
    """

    table: torch.Tensor
    num_values: list[int]
    reasons: list[str | None]
    options: FitOptions = field(default_factory=FitOptions)

    def results(self, host_table: torch.Tensor | None = None) -> list[PowerLawFit]:
        """One :class:`PowerLawFit` per input, from ``table`` or its copy already on the host."""
        rows = (self.table.cpu() if host_table is None else host_table).numpy()
        if self.options.interval == "analytic":
            lo, hi = analytic_interval(rows[:, _ALPHA], rows[:, _NTAIL], self.options.confidence)
            rows = rows.copy()
            rows[:, _LO], rows[:, _HI] = lo, hi
        out = []
        for row, count, reason in zip(rows.tolist(), self.num_values, self.reasons, strict=True):
            alpha, xmin, D, sigma, n_tail, lo, hi, fingers = row
            if reason is None and math.isnan(alpha):
                reason = "no xmin candidate in the estimator's range"
            if reason is not None:
                out.append(PowerLawFit.failed(reason, count))
                continue
            out.append(
                PowerLawFit(
                    alpha,
                    xmin,
                    D,
                    sigma,
                    int(n_tail),
                    count,
                    alpha_lo=lo,
                    alpha_hi=hi,
                    num_fingers=int(fingers),
                )
            )
        return out


def _ks_rows(
    xs: Sequence[torch.Tensor], batch: bool, allowed: Sequence[torch.Tensor] | None = None
) -> torch.Tensor:
    """The KS fit of each sorted spectrum, (len(xs), 5): alpha, xmin, D, sigma, n_tail; in one
    padded batch (``batch``), or else the short spectra (<= ``_CPU_BATCH_MAX_VALUES`` values)
    in one padded batch and each longer one alone with candidate pruning."""
    device = xs[0].device
    out = torch.empty((len(xs), 5), dtype=torch.float64, device=device)
    for group in _padded_groups([x.numel() for x in xs], batch):
        sizes = [xs[k].numel() for k in group]
        lengths = torch.tensor(sizes, device=device)
        padded = torch.empty((len(group), max(sizes)), dtype=torch.float64, device=device)
        mask = None
        if allowed is not None:
            mask = torch.zeros(padded.shape, dtype=torch.bool, device=device)
        for row, k in enumerate(group):
            x = xs[k]
            padded[row, : x.numel()] = x
            padded[row, x.numel() :] = x[-1]
            if mask is not None and allowed is not None:
                mask[row, : x.numel()] = allowed[k]
        fitted = _fit_padded(padded, lengths, allowed=mask)
        out[group] = torch.stack([t.to(torch.float64) for t in fitted], dim=1)
    return out


def _estimate(xs: Sequence[torch.Tensor], options: FitOptions, batch: bool) -> torch.Tensor:
    """``options.estimator`` on each sorted spectrum, (len(xs), 5) as :func:`_ks_rows`."""
    if options.estimator == "hill_median":
        return torch.stack(
            [torch.stack(hill_median(x, options.xmin_position)).to(torch.float64) for x in xs]
        )
    allowed = [peak_allowed(x) for x in xs] if options.estimator == "ks_peak" else None
    return _ks_rows(xs, batch, allowed)


def _clip_fingers(
    xs: Sequence[torch.Tensor], options: FitOptions, batch: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fits with ``fingers="clip"``: (len(xs), 5) as :func:`_estimate`, and the number of top
    values each kept fit left out, (len(xs),) int64."""
    device = xs[0].device
    ks = list(CLIP_FINGER_RANGE)
    variants: list[torch.Tensor] = []
    where: list[tuple[int, int]] = []  # (spectrum, column) of each variant
    for b, x in enumerate(xs):
        variants.append(x)
        where.append((b, 0))
        for j, k in enumerate(ks, start=1):
            if x.numel() - k >= 2 and x[-k - 1] > x[0]:  # >= 2 distinct values left
                variants.append(x[:-k])
                where.append((b, j))
    fitted = _estimate(variants, options, batch)
    grid = torch.full((len(xs), 1 + len(ks), 5), math.nan, dtype=torch.float64, device=device)
    rows = torch.tensor([b for b, _ in where], device=device)
    cols = torch.tensor([j for _, j in where], device=device)
    grid[rows, cols] = fitted
    choice = choose_clipped(grid[:, :, _ALPHA])
    chosen = grid[torch.arange(len(xs), device=device), choice]
    dropped = torch.tensor([0, *ks], device=device)[choice]
    return chosen, dropped


def _bootstrap_alphas(xs: Sequence[torch.Tensor], options: FitOptions, batch: bool) -> torch.Tensor:
    """(len(xs), n_boot) float64: ``options.n_boot`` resamples of each sorted spectrum, refitted
    with the same estimator (xmin chosen again), all as one list of fits — one padded batch
    (``batch``, the GPU path), or on a CPU the short resamples in one padded batch and the long
    ones one by one with pruning (see ``_CPU_BATCH_MAX_VALUES``)."""
    generator = torch.Generator(device=xs[0].device).manual_seed(options.seed)
    rows = [row for x in xs for row in bootstrap_samples(x, options.n_boot, generator)]
    return _estimate(rows, options, batch)[:, _ALPHA].reshape(len(xs), options.n_boot)


def fit_power_law_table(
    values: Sequence[Any],
    device: torch.device | str | None = None,
    batch: bool | None = None,
    options: FitOptions | None = None,
) -> FitTable:
    """:func:`fit_power_law_batched`, with the results left on the compute device.

    Args:
        values: 1-D arrays or tensors, as for :func:`fit_power_law_batched`.
        device: where to compute, as for :func:`fit_power_law_batched`.
        batch: fit all spectra in one padded batch (one launch sequence, the default off the
            CPU), or one at a time with candidate pruning (the default on a CPU, where the
            single-row tile stays in cache and nothing is spent on padding). Same results.
        options: estimator, fingers and interval (default :class:`FitOptions`()).

    There is one small transfer to the host for the input checks of all spectra (and, with
    ``fingers="clip"`` and ``interval="bootstrap"`` together, one for the clipped lengths); the
    results stay on the device.
    """
    options = options if options is not None else FitOptions()
    if device is None:
        first_tensor = next((v for v in values if isinstance(v, torch.Tensor)), None)
        device = first_tensor.device if first_tensor is not None else torch.device("cpu")
    device = torch.device(device)
    if batch is None:
        batch = device.type != "cpu"
    prepared = _prepare(values, device)
    table = torch.full((len(prepared), _NUM_COLUMNS), math.nan, dtype=torch.float64, device=device)
    table[:, _NTAIL] = 0.0
    todo = [k for k, (_, reason) in enumerate(prepared) if reason is None]
    if todo:
        xs = [prepared[k][0] for k in todo]
        index = torch.tensor(todo, device=device)
        if options.fingers == "clip":
            fitted, dropped = _clip_fingers(xs, options, batch)
            table[index, _FINGERS] = dropped.to(torch.float64)
            if options.interval == "bootstrap":
                xs = [x[: x.numel() - k] for x, k in zip(xs, dropped.tolist(), strict=True)]
        else:
            fitted = _estimate(xs, options, batch)
            table[index, _FINGERS] = 0.0
        table[index, :5] = fitted
        if options.interval == "bootstrap":
            alphas = _bootstrap_alphas(xs, options, batch)
            lo, hi = percentile_interval(alphas, options.confidence)
            table[index, _LO], table[index, _HI] = lo, hi
    return FitTable(
        table=table,
        num_values=[int(x.numel()) for x, _ in prepared],
        reasons=[reason for _, reason in prepared],
        options=options,
    )


def fit_work_bytes(
    lengths: Sequence[int], device: torch.device | str = "cpu", options: FitOptions | None = None
) -> int:
    """Bytes the fit of spectra of these lengths holds at most: its KS tile (bounded by
    ``_TILE_ELEMENTS_*``) and a dozen (rows × n) float64 work arrays (rows: the spectra, or their
    bootstrap resamples, fitted as one padded batch: all of them on a GPU, the short ones on a
    CPU)."""
    if not lengths:
        return 0
    device = torch.device(device)
    per_length = 1
    if options is not None and options.interval == "bootstrap":
        per_length = options.n_boot
    work = 0
    for group in _padded_groups(lengths, device.type != "cpu"):
        n = max(lengths[k] for k in group)
        # Resamples keep their spectrum's length: short ones join its batch, long ones are each
        # fitted alone.
        alone = device.type == "cpu" and n > _CPU_BATCH_MAX_VALUES
        batch = 1 if alone else len(group) * per_length
        work = max(work, 8 * (_largest_tile(batch, n, device) + 12 * batch * n))
    return work


def fit_power_law_batched(
    values: Sequence[Any],
    device: torch.device | str | None = None,
    options: FitOptions | None = None,
) -> list[PowerLawFit]:
    """Fit many spectra in one vectorised call.

    Args:
        values: a sequence of 1-D arrays or tensors (any lengths), e.g. the ESDs of several layers.
        device: where to compute; default: the device of the first tensor input, else CPU.
        options: estimator, fingers and interval (default :class:`FitOptions`()).

    Returns:
        One :class:`PowerLawFit` per input, in order. Inputs that cannot be fitted (see
        :func:`fit_power_law`) get NaN fields and a reason; they never raise.
    """
    return fit_power_law_table(values, device, options=options).results()


def fit_power_law(
    values: Any,
    *,
    estimator: str = "ks",
    interval: str = "analytic",
    confidence: float = 0.9,
    n_boot: int = 100,
    fingers: str | None = None,
    xmin_position: float = 2.0,
    seed: int = 0,
) -> PowerLawFit:
    """Fit a power law to the tail of one spectrum (Clauset, Shalizi & Newman 2009).

    Args:
        values: 1-D array-like or tensor of eigenvalues (any units, any order). Zeros are ignored,
            as for a rank-deficient matrix.
        estimator: ``"ks"`` (default: every xmin tried, smallest KS distance wins),
            ``"hill_median"`` (xmin at index ``int(N / xmin_position)``, TempBalance's) or
            ``"ks_peak"`` (KS search with xmin in [0.95, 1.5] × the ESD's peak, WeightWatcher's
            ``xmin_peak``); see :mod:`spectral_monitor.spectra.estimators`.
        interval: ``"analytic"`` (default, exact given xmin) or ``"bootstrap"`` (``n_boot``
            resamples, xmin chosen again each time); see :mod:`spectral_monitor.spectra.intervals`.
        confidence: level of the interval ``[alpha_lo, alpha_hi]``.
        n_boot: resamples for the bootstrap.
        fingers: ``"clip"`` drops top outliers as WeightWatcher's ``clip_xmax``; None keeps all.
        xmin_position: see ``estimator="hill_median"``.
        seed: the bootstrap generator's seed.

    Returns:
        A :class:`PowerLawFit`. When there is no valid fit — no values, NaN or Inf, negative
        values, fewer than 2 distinct positive values — all float fields are NaN and ``reason``
        says why. It never raises for bad data.

    Raises:
        ValueError: an option is invalid (the message names it).

    Ties: the KS distance compares the fitted law with the empirical CDF just below each distinct
    tail value (``powerlaw`` 1.x's and WeightWatcher's convention). Clauset's own ``plfit``
    counts tied points one by one and reproduces the published CSN 2009 values for data with
    ties (earthquakes, surnames); eigenvalue spectra rarely tie, so the two agree on them.
    """
    options = FitOptions.create(
        estimator, xmin_position, fingers, interval, confidence, n_boot, seed
    )
    return fit_power_law_batched([values], options=options)[0]
