"""``analyze()``: one spectral analysis of a model, and the pure half the callback reuses.

An analysis has two halves. :func:`spectral_monitor.analysis.snapshot.take_snapshot` reads the live
parameters (it must run where the model is trained, and copies the weights when training goes on).
:func:`analyze_snapshot` is pure: matrices → eigenvalues (batched by shape) → power-law fits
(batched) → metrics → one :class:`~.report.SpectralReport`. It can run on a worker
thread.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_monitor.analysis.config import (
    DEFAULT_MAX_RELATIVE_WIDTH,
    DEFAULT_MIN_EVALS,
    DEFAULT_MIN_TAIL,
    AnalysisConfig,
)
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport
from spectral_monitor.analysis.snapshot import (
    LayerSnapshot,
    select,
    snapshot_dtype,
    snapshot_state_dict,
    subtract_base,
    take_snapshot,
)
from spectral_monitor.spectra.eigen import EigenError, batched_eigenvalues, peak_work_bytes
from spectral_monitor.spectra.metrics import layer_metrics, verdict
from spectral_monitor.spectra.powerlaw_fit import PowerLawFit, fit_power_law_table, fit_work_bytes
from spectral_monitor.spectra.reliability import degenerate_reason, unreliable_reason
from spectral_monitor.spectra.spikes import (
    EntryStats,
    entry_stats_batch,
    erg_gap,
    num_above,
    spike_threshold,
)
from spectral_monitor.spectra.traps import (
    Traps,
    layer_seed,
    shuffled_eigenvalues,
    trap_signals,
    trap_work_bytes,
)
from spectral_monitor.weights.layers import (
    LayerFilter,
    left_out_message,
    matrix_shape,
    weight_matrices,
)

__all__ = [
    "DEFAULT_MIN_EVALS",
    "AnalysisConfig",
    "LayerSnapshot",
    "analyze",
    "analyze_snapshot",
    "snapshot_dtype",
    "snapshot_state_dict",
    "take_snapshot",
]


def _weight_problems(spectra: list[torch.Tensor | EigenError]) -> list[str | None]:
    """Why each layer's weight cannot be analysed, read off its eigenvalues (NaN: NaN or Inf
    weights, see :func:`~..spectra.eigen.eigenvalues`; all zero: all-zero weights), or
    None (also for a solver failure, which is its own reason); one host transfer per device for
    all layers, not one per layer."""
    out: list[str | None] = [None] * len(spectra)
    solved = {k: evals for k, evals in enumerate(spectra) if isinstance(evals, torch.Tensor)}
    by_device: dict[torch.device, list[int]] = {}
    for k, evals in solved.items():
        by_device.setdefault(evals.device, []).append(k)
    for members in by_device.values():
        tops = torch.stack([solved[k].amax() for k in members])  # NaN propagates into amax
        for k, top in zip(members, tops.cpu().tolist(), strict=True):
            if not math.isfinite(top):
                out[k] = "non-finite weights (NaN or Inf), or a Gram matrix beyond float range"
            elif top == 0.0:
                out[k] = "all-zero weights"
    return out


def _check_sizes(snapshot: list[LayerSnapshot], config: AnalysisConfig) -> list[LayerSpectrum]:
    """One row per snapshot layer, ``skipped`` set where the weight is missing or has fewer than
    2 eigenvalues (nothing to fit); smaller than ``min_evals`` is judged after the fit."""
    rows = []
    for snap in snapshot:
        row = LayerSpectrum(name=snap.name, kind=snap.kind, shape=snap.shape, skipped=snap.skipped)
        if row.skipped is None:
            count, _rows, cols = matrix_shape(snap.shape, config.conv2d)
            if count * cols < 2:
                row.skipped = f"{count * cols} eigenvalue(s): nothing to fit"
        rows.append(row)
    return rows


@dataclass(frozen=True)
class _Solved:
    """One layer whose eigenvalues were computed: its row index, sorted eigenvalues in the
    report's convention (on the compute device), the matrix stack they came from and the factor
    that took raw eigenvalues of WᵀW to the report's convention."""

    index: int
    evals: torch.Tensor
    stack: torch.Tensor
    scale: float


def _spectra(
    todo: list[tuple[int, LayerSnapshot]], config: AnalysisConfig, rows: list[LayerSpectrum]
) -> tuple[list[_Solved], list[torch.Tensor]]:
    """Sorted eigenvalues per layer in the report's convention (on the compute device), and the
    matrix stacks they came from (for the memory account); solver failures mark rows skipped."""
    stacks = [weight_matrices(snap.weight, config.conv2d) for _, snap in todo]  # type: ignore[arg-type]
    spectra = batched_eigenvalues(stacks, config.precision)
    problems = _weight_problems(spectra)
    good: list[_Solved] = []
    for (k, snap), stack, evals, problem in zip(todo, stacks, spectra, problems, strict=True):
        if isinstance(evals, EigenError):
            rows[k].skipped = f"eigensolver failed: {evals}"
            continue
        if problem is not None:
            rows[k].skipped = problem
            continue
        scale = 0.5 if (config.conv2d == "slices" and snap.kind == "conv2d") else 1.0
        if config.normalize:
            scale /= snap.shape[0]
        rows[k].Q = stack.shape[1] / stack.shape[2]
        good.append(_Solved(k, torch.sort(evals.reshape(-1) * scale).values, stack, scale))
    return good, stacks


def _traps(
    good: list[_Solved], stats: list[EntryStats], rows: list[LayerSpectrum], config: AnalysisConfig
) -> list[Traps]:
    """Correlation traps per solved layer (:mod:`~..spectra.traps`), or
    :meth:`Traps.none` for all when ``config.traps`` is off. Each layer's shuffle is seeded from
    ``config.trap_seed`` and its name; the shuffled eigenvalues come to the host in one
    transfer."""
    if not config.traps or not good:
        return [Traps.none() for _ in good]
    seeds = [layer_seed(config.trap_seed, rows[s.index].name) for s in good]
    solved = shuffled_eigenvalues([s.stack for s in good], seeds, config.precision)
    found = [e for e in solved if isinstance(e, torch.Tensor)]
    device = found[0].device if found else torch.device("cpu")
    host = torch.cat([e.to(device).reshape(-1) for e in found]).cpu() if found else None
    out: list[Traps] = []
    start = 0
    for s, st, evals in zip(good, stats, solved, strict=True):
        if not isinstance(evals, torch.Tensor) or host is None:
            out.append(Traps.none())
            continue
        part = host[start : start + evals.numel()].numpy()
        start += evals.numel()
        out.append(trap_signals(part, st.variance, s.stack.shape[1], s.stack.shape[2]))
    return out


def _fit_on_host(
    spectra: list[torch.Tensor], config: AnalysisConfig
) -> tuple[list[np.ndarray], list[PowerLawFit], int]:
    """Fit every spectrum, then bring every eigenvalue and every fit to the host in one transfer
    (spectra of layers on another device, rare, first join the first one's: they are small).
    Also returns the fit's working memory in bytes."""
    device = spectra[0].device if spectra else torch.device("cpu")
    on_device = [evals.to(device) for evals in spectra]
    fits = fit_power_law_table(on_device, device, options=config.fit)
    host = torch.cat([*on_device, fits.table.reshape(-1)]).cpu()
    sizes = [evals.numel() for evals in on_device]
    *evals_host, table = torch.split(host, [*sizes, fits.table.numel()])
    results = fits.results(table.reshape(fits.table.shape))
    work = fit_work_bytes(sizes, device, config.fit)
    return [e.numpy() for e in evals_host], results, work


def _finish_row(
    row: LayerSpectrum,
    evals: np.ndarray,
    fit: PowerLawFit,
    config: AnalysisConfig,
    solved: _Solved,
    stats: EntryStats,
    traps: Traps,
) -> LayerSpectrum:
    """The row with its spectrum, metrics, signals beyond alpha, reliability and verdict."""
    reason: str | None
    if not fit.ok:
        reason = f"no power-law fit: {fit.reason}"
    else:
        reason = degenerate_reason(float(evals.max()), fit.xmin)
    if reason is not None:  # a skipped layer has no alpha, never a fake one
        fit = PowerLawFit.failed(reason, fit.num_values)
    row = replace(row, **asdict(layer_metrics(evals, fit)), evals=evals, num_evals=evals.size)
    # The spike threshold is in raw units (WᵀW); the eigenvalues here carry the report's scale,
    # so the threshold is brought to the same convention before counting.
    _count, rows, cols = solved.stack.shape
    threshold = spike_threshold(stats.variance, rows, cols) * solved.scale
    row.num_spikes = num_above(evals, threshold) if math.isfinite(threshold) else -1
    row.num_traps = traps.num_traps
    row.trap_excess = traps.trap_excess
    row.mean_shift_ratio = stats.mean_shift_ratio
    row.max_entry_ratio = stats.max_ratio
    row.excess_kurtosis = stats.excess_kurtosis
    if reason is not None:
        row.skipped = reason
        return row
    row.erg_gap = erg_gap(evals, row.n_tail)
    row.unreliable_reason = unreliable_reason(
        fit.num_values,
        row.n_tail,
        row.alpha,
        row.alpha_lo,
        row.alpha_hi,
        config.min_evals,
        config.min_tail,
        config.max_relative_width,
    )
    row.reliable = row.unreliable_reason is None
    row.verdict = verdict(
        row.alpha,
        row.reliable,
        alpha_lo=row.alpha_lo,
        alpha_hi=row.alpha_hi,
        num_spikes=row.num_spikes,
        num_traps=row.num_traps,
        enough_evals=fit.num_values >= config.min_evals,
    )
    return row


def analyze_snapshot(
    snapshot: list[LayerSnapshot], config: AnalysisConfig, step: int | None = None
) -> SpectralReport:
    """Spectra, fits and metrics for a snapshot. Pure: reads only the snapshot.

    Steps: size check → eigenvalues (batched by shape) → weight check on them (NaN/Inf, all
    zeros) → entry statistics and, with ``config.traps``, eigenvalues of the shuffled weights →
    fits and one transfer to the host → metrics, spikes, traps, ERG gap, reliability and
    verdict per layer. A
    layer that cannot be analysed (no eigenvalue to fit, NaN/Inf or all-zero weights, solver
    failure, no valid fit, a degenerate tail) is kept in the report with ``skipped`` set to the
    reason; a fitted layer that cannot be trusted is kept with ``reliable=False`` and its reason.

    On a GPU the host waits for the device a few times, not once per layer: the solver's
    convergence check (once per solver call: per shape, unless same-shape Grams pass
    ``eigen._GROUP_BYTES``), the weight checks, the fit's input checks and its look for
    ill-conditioned candidates, and one transfer that brings every eigenvalue and every fit to
    the host together.
    """
    start = time.perf_counter()
    rows = _check_sizes(snapshot, config)
    todo = [(k, snap) for k, snap in enumerate(snapshot) if rows[k].skipped is None]
    good, stacks = _spectra(todo, config, rows)
    stats = entry_stats_batch([s.stack for s in good])
    traps = _traps(good, stats, rows, config)
    evals_host, fits, fit_bytes = _fit_on_host([s.evals for s in good], config)
    for solved, evals, fit, st, tr in zip(good, evals_host, fits, stats, traps, strict=True):
        rows[solved.index] = _finish_row(rows[solved.index], evals, fit, config, solved, st, tr)
    for row in rows:  # every skipped layer, whichever step skipped it, says why it is untrusted
        if row.skipped is not None:
            row.unreliable_reason = row.skipped
    solver_bytes = peak_work_bytes(stacks, config.precision)
    if config.traps:  # shuffled copies are held while their eigenvalues are solved
        solver_bytes += trap_work_bytes([s.stack for s in good])
    memory = sum(snap.nbytes for snap in snapshot) + max(solver_bytes, fit_bytes)
    return SpectralReport(
        layers=rows,
        conv2d=config.conv2d,
        normalize=config.normalize,
        precision=config.precision,
        step=step,
        seconds=time.perf_counter() - start,
        memory_bytes=memory,
    )


def analyze(
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    layers: LayerFilter = None,
    exclude: LayerFilter = None,
    conv2d: str | None = None,
    normalize: bool = True,
    min_evals: int = DEFAULT_MIN_EVALS,
    min_tail: int = DEFAULT_MIN_TAIL,
    max_relative_width: float | None = DEFAULT_MAX_RELATIVE_WIDTH,
    precision: str = "float32",
    device: torch.device | str | None = None,
    estimator: str = "ks",
    interval: str = "analytic",
    confidence: float = 0.9,
    n_boot: int = 100,
    fingers: str | None = None,
    xmin_position: float = 2.0,
    conv: str = "flatten",
    kinds: str | Sequence[str] | None = None,
    lora: str = "effective",
    base: nn.Module | Mapping[str, torch.Tensor] | None = None,
    traps: bool = False,
    trap_seed: int = 0,
) -> SpectralReport:
    """Analyse every layer of a model (Linear, attention, convolutions, RNNs; see README
    "Layer kinds"): ESD, power-law fit and HT-SR metrics.

    Args:
        model: any ``torch.nn.Module``; or a bare state dict, when the model class is not at
            hand: layers are then recognised by key and shape
            (:func:`spectral_monitor.weights.layers.select_state_dict`), with the same names.
        layers: keep only layers whose name matches one of these glob patterns
            (``"encoder.*"``) or whose module is one of these types; None keeps all.
        exclude: drop layers matching any of these patterns or types.
        conv2d: deprecated name of ``conv``.
        normalize: divide eigenvalues by the weight's number of rows (default, the seed's
            convention); False gives WeightWatcher's σ².
        min_evals: fits on fewer positive eigenvalues (default 50) are reported but marked
            unreliable: no verdict, left out of the aggregates.
        min_tail: fits with fewer tail values (default 30) are unreliable.
        max_relative_width: fits whose interval is wider than this times (alpha - 1) (default
            1.0) are unreliable; None: no width rule.
        precision: ``"float32"`` (default; alpha within 1e-3 of a float64 SVD) or ``"float64"``.
        device: compute device; None uses each weight's device.
        estimator: ``"ks"`` (default), ``"hill_median"`` or ``"ks_peak"``; see
            :func:`spectral_monitor.fit_power_law`.
        interval: ``"analytic"`` (default) or ``"bootstrap"``: how ``alpha_lo``/``alpha_hi``
            are computed.
        confidence: level of the interval (default 0.9).
        n_boot: resamples of ``interval="bootstrap"``.
        fingers: ``"clip"`` drops top outliers before the fit (WeightWatcher's ``clip_xmax``).
        xmin_position: ``estimator="hill_median"`` puts xmin at index ``int(N / xmin_position)``.
        conv: every convolution ``"flatten"``ed (default) or cut in ``"slices"``
            (WeightWatcher's convention).
        kinds: the layer kinds to analyse (``"linear"``, ``"attention"``, ``"conv1d"``,
            ``"conv2d"``, ``"conv3d"``, ``"rnn"``, ``"embedding"``, or ``"all"``); None: every
            kind but embeddings.
        lora: a peft LoRA layer is analysed under its base layer's name as its
            ``"effective"`` weight W + scale·B·A (default), its ``"adapter"`` scale·B·A, or its
            frozen ``"base"`` W.
        base: a base model (module or state dict): analyse each layer's change W − W_base
            (the fine-tuning delta), matched by layer name.
        traps: also count correlation traps: eigenvalues of each layer's element-wise shuffled
            weight above its Marchenko–Pastur edge (one more eigensolve per layer; see
            docs/guide/signals.md). False: ``num_traps`` is -1 and ``trap_excess`` NaN.
        trap_seed: seed of the shuffles (each layer's is derived from it and the layer's name).

    Weights with >= 2 dims and >= 4,096 elements that no layer kind covers are named in one
    warning.

    Returns:
        A :class:`SpectralReport`; ``report.layers`` has one :class:`LayerSpectrum` per layer.

    Raises:
        ValueError: an argument is invalid (the message names it).

    Example::

        >>> import torch
        >>> from spectral_monitor import analyze
        >>> report = analyze(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()))
        >>> [layer.name for layer in report.layers]
        ['0']
    """
    config = AnalysisConfig.from_options(locals())
    snapshot, what, left_out = _snapshot_of(model, config, "model")
    if base is not None:
        snapshot = subtract_base(snapshot, _snapshot_of(base, config, "base")[0])
    if left_out:
        warnings.warn(f"analyze(): {left_out_message(left_out)}", UserWarning, stacklevel=2)
    if not snapshot:
        warnings.warn(
            f"analyze(): {what} to analyse"
            + (" after the layers/exclude filters" if layers or exclude else ""),
            UserWarning,
            stacklevel=2,
        )
    return analyze_snapshot(snapshot, config)


def _snapshot_of(
    model: Any, config: AnalysisConfig, argument: str
) -> tuple[list[LayerSnapshot], str, list[Any]]:
    """A one-off snapshot of a module or a state dict, what to say if it is empty, and the
    weights no layer kind covers (one selection serves both)."""
    if isinstance(model, nn.Module):
        selection = select(model, config)
        with torch.no_grad():
            what = f"{type(model).__name__} has no layer of the selected kinds"
            snapshot = take_snapshot(model, config, copy=False, selection=selection)
        return snapshot, what, list(selection.left_out)
    if isinstance(model, Mapping):
        selection = select(model, config)
        what = "the state dict has no floating-point weight tensor of a known layer kind"
        return snapshot_state_dict(model, config, selection), what, list(selection.left_out)
    raise ValueError(f"{argument} must be an nn.Module or a state dict, got {type(model).__name__}")
