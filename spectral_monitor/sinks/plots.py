"""Matplotlib figures: an ESD on log-log axes with its power-law fit, alpha per layer, alpha
trajectories, and the heatmap of alpha over layers and steps. Every function returns a
``Figure`` for the caller to save or log; none calls ``plt.show()``. The non-interactive Agg
canvas is used, so figures work without a display."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spectral_monitor.spectra.metrics import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE
from spectral_monitor.spectra.powerlaw_fit import PowerLawFit

__all__ = [
    "figure_to_array",
    "plot_alpha_by_layer",
    "plot_alpha_heatmap",
    "plot_alpha_trajectories",
    "plot_esd",
]


def _figure(width: float = 6.4, height: float = 4.4) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_esd(evals: np.ndarray, fit: PowerLawFit | None = None, title: str = "ESD") -> Figure:
    """Histogram of the positive eigenvalues on log-log axes (density per unit λ), with the
    fitted power law ``p(λ) ∝ λ^-alpha`` over the tail and ``xmin`` marked.

    Args:
        evals: eigenvalues, any order; non-positive values are left out of the histogram.
        fit: the fit to draw, or None for the histogram alone.
        title: axes title.
    """
    fig = _figure()
    ax = fig.add_subplot()
    x = np.asarray(evals, dtype=np.float64)
    x = x[np.isfinite(x) & (x > 0)]
    if x.size:
        lo, hi = x.min(), x.max()
        bins: Any = np.logspace(math.log10(lo), math.log10(hi) + 1e-9, 40) if hi > lo else 10
        ax.hist(
            x,
            bins=bins,
            density=True,
            color="#4c72b0",
            alpha=0.7,
            label=f"ESD ({x.size} eigenvalues)",
        )
        if fit is not None and fit.ok:
            tail = np.logspace(math.log10(fit.xmin), math.log10(hi), 50)
            frac = fit.n_tail / x.size  # the law describes the tail's share of the density
            pdf = frac * (fit.alpha - 1) / fit.xmin * (tail / fit.xmin) ** (-fit.alpha)
            ax.plot(tail, pdf, color="#c44e52", lw=2, ls="--", label=f"power law α={fit.alpha:.2f}")
            ax.axvline(fit.xmin, color="#55a868", lw=1.5, label=f"xmin={fit.xmin:.3g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(loc="lower left", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no positive eigenvalues", ha="center", transform=ax.transAxes)
    ax.set_xlabel("eigenvalue λ (log scale)")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title)
    return fig


def plot_alpha_by_layer(
    names: Sequence[str], alphas: Sequence[float], title: str = "alpha by layer"
) -> Figure:
    """Bar chart of alpha per layer with the over-trained (< 2) and under-trained (> 6) bands."""
    fig = _figure(max(6.4, 0.35 * len(names) + 2), 4.4)
    ax = fig.add_subplot()
    values = np.asarray(alphas, dtype=np.float64)
    positions = np.arange(len(names))
    colors = [
        "#c44e52" if a < OVER_TRAINED_BELOW else "#8172b2" if a > UNDER_TRAINED_ABOVE else "#55a868"
        for a in values
    ]
    ax.bar(positions, np.nan_to_num(values, nan=0.0), color=colors)
    top = max(UNDER_TRAINED_ABOVE + 1, float(np.nanmax(values)) + 1 if values.size else 7.0)
    ax.axhspan(0, OVER_TRAINED_BELOW, color="#c44e52", alpha=0.08, label="over-trained (α<2)")
    ax.axhspan(UNDER_TRAINED_ABOVE, top, color="#8172b2", alpha=0.08, label="under-trained (α>6)")
    ax.set_ylim(0, top)
    ax.set_xticks(positions, list(names), rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("alpha")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_alpha_trajectories(
    trajectories: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    title: str = "alpha over training",
) -> Figure:
    """alpha against training step, one line per layer; ``trajectories[name] = (steps, alphas)``."""
    fig = _figure(7.2, 4.4)
    ax = fig.add_subplot()
    for name, (steps, alphas) in trajectories.items():
        ax.plot(steps, alphas, marker=".", label=name)
    ax.axhline(OVER_TRAINED_BELOW, color="#c44e52", ls=":", lw=1)
    ax.axhline(UNDER_TRAINED_ABOVE, color="#8172b2", ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("alpha")
    ax.set_title(title)
    if 0 < len(trajectories) <= 12:
        ax.legend(fontsize=7, ncol=2)
    return fig


def plot_alpha_heatmap(
    layers: Sequence[str],
    steps: Sequence[int],
    alpha: np.ndarray,
    unreliable: np.ndarray | None = None,
    title: str = "alpha by layer and step",
) -> Figure:
    """Layers (rows, in model order) × analyses (columns, by step) coloured by alpha.

    The colour map diverges at alpha = 2 (red below: over-trained, blue above), and alpha = 6
    (under-trained above) is a line on the colour bar; cells with no alpha (skipped layer, no
    analysis) or an unreliable fit are left grey and hatched.

    Args:
        layers: row labels, ``len(layers) == alpha.shape[0]``.
        steps: column labels (training steps), ``len(steps) == alpha.shape[1]``.
        alpha: (num_layers, num_steps) float; NaN where there is no alpha.
        unreliable: (num_layers, num_steps) bool, True where the fit is not to be trusted.
        title: axes title.
    """
    values = np.asarray(alpha, dtype=np.float64).reshape(len(layers), len(steps))
    hidden = ~np.isfinite(values)
    if unreliable is not None:
        hidden |= np.asarray(unreliable, dtype=bool).reshape(values.shape)
    shown = np.ma.masked_array(values, mask=hidden)
    fig = _figure(min(14.0, 4.5 + 0.12 * len(steps)), min(14.0, 2.2 + 0.22 * len(layers)))
    ax = fig.add_subplot()
    ax.set_facecolor("#d9d9d9")
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor("#a6a6a6")
    finite = values[~hidden]
    hi = max(UNDER_TRAINED_ABOVE + 0.5, float(finite.max()) if finite.size else 0.0)
    lo = min(OVER_TRAINED_BELOW - 0.5, float(finite.min()) if finite.size else 9.0)
    norm = TwoSlopeNorm(vcenter=OVER_TRAINED_BELOW, vmin=max(lo, 0.0), vmax=hi)
    edges_x = np.arange(len(steps) + 1) - 0.5
    edges_y = np.arange(len(layers) + 1) - 0.5
    mesh = ax.pcolormesh(edges_x, edges_y, shown, cmap="RdBu", norm=norm)
    ax.set_xlim(edges_x[0], edges_x[-1])
    ax.set_ylim(edges_y[-1], edges_y[0])  # first layer on top, as in the model
    every = max(1, len(steps) // 12)
    ticks = list(range(0, len(steps), every))
    ax.set_xticks(ticks, [str(steps[i]) for i in ticks], fontsize=8)
    row_every = max(1, len(layers) // 40)
    rows = list(range(0, len(layers), row_every))
    ax.set_yticks(rows, [layers[i] for i in rows], fontsize=7)
    ax.set_xlabel("step  (grey hatched: skipped or unreliable fit)")
    ax.set_title(title)
    bar = fig.colorbar(mesh, ax=ax, fraction=0.05, pad=0.02)
    bar.set_label("alpha (2 and 6 marked)")
    for level, color in ((OVER_TRAINED_BELOW, "black"), (UNDER_TRAINED_ABOVE, "#8172b2")):
        bar.ax.axhline(level, color=color, lw=2)
    lo, hi = float(norm.vmin or 0.0), float(norm.vmax or 0.0)  # set by the mesh by now
    # The default ticks are spaced for the longer upper half (2 .. 6+), which leaves the lower
    # half, drawn as tall as the upper, without a number: it gets ticks of its own. 2 and 6
    # always show; a tick closer to one already kept than 6 % of the bar would print over it.
    below = MaxNLocator(nbins=3).tick_values(lo, OVER_TRAINED_BELOW)
    candidates = [float(t) for t in (*bar.get_ticks(), *below)]
    bar_ticks = [t for t in (OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE) if lo <= t <= hi]
    for t in sorted(c for c in candidates if lo <= c <= hi):
        if all(abs(float(norm(t)) - float(norm(k))) >= 0.06 for k in bar_ticks):
            bar_ticks.append(t)
    bar_ticks.sort()
    bar.set_ticks(bar_ticks, labels=[f"{t:g}" for t in bar_ticks])
    return fig


def figure_to_array(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Render ``fig`` to an (height, width, 3) uint8 RGB array (what ``add_image`` takes)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
