"""Matplotlib figures: an ESD on log-log axes with its power-law fit, alpha per layer, alpha
trajectories, and the heatmap of alpha over layers and steps. Every function returns a
``Figure`` for the caller to save or log; none calls ``plt.show()``. The non-interactive Agg
canvas is used, so figures work without a display."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from spectral_monitor.sinks.raster import Canvas, rgb255, text_size
from spectral_monitor.spectra.metrics import OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE
from spectral_monitor.spectra.powerlaw_fit import PowerLawFit

__all__ = [
    "colour_bar_ticks",
    "figure_to_array",
    "heatmap_range",
    "layer_colours",
    "plot_alpha_by_layer",
    "plot_alpha_heatmap",
    "plot_alpha_trajectories",
    "plot_esd",
    "render_alpha_heatmap",
    "render_alpha_trajectories",
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


# --- Pictures drawn without a Figure (the ones logged during training) -----------------------
#
# A matplotlib Figure of the heatmap takes 0.3-0.5 s to build and draw, holding the GIL
# throughout, and the training thread waits for the GIL meanwhile. These two are drawn on a
# raster Canvas (spectral_monitor.sinks.raster) in milliseconds; the Figure versions above stay
# for files written outside training (the CLI, the docs).

_MEAN_COLOR = "black"
_GRID = "#e6e6e6"
_AXIS = "#4d4d4d"
_OVER_COLOR = "#c44e52"
_UNDER_COLOR = "#8172b2"
_HIDDEN = "#d9d9d9"
_HATCH = "#a6a6a6"
_NICE = [1, 2, 2.5, 5, 10]  # tick spacings (times a power of ten) that read as round


def layer_colours(count: int) -> list[tuple[float, float, float]]:
    """One colour per layer, in model order: ``tab10`` up to 10 layers, ``tab20`` up to 20
    (neighbouring pairs light/dark, so every other one is taken first), beyond that evenly along
    ``turbo`` (neighbouring layers get neighbouring hues: depth reads as colour)."""
    from matplotlib import colormaps

    if count <= 10:
        return [tuple(c[:3]) for c in colormaps["tab10"].colors[:count]]  # type: ignore[attr-defined]
    if count <= 20:
        tab20 = colormaps["tab20"].colors  # type: ignore[attr-defined]
        order = [*range(0, 20, 2), *range(1, 20, 2)]
        return [tuple(tab20[i][:3]) for i in order[:count]]
    return [tuple(c[:3]) for c in colormaps["turbo"](np.linspace(0.03, 0.97, count))]


def _two_slope(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Map alpha to 0..1 with alpha = 2 at 0.5 (matplotlib's TwoSlopeNorm, vectorised)."""
    centre = OVER_TRAINED_BELOW
    below = 0.5 * (values - vmin) / max(centre - vmin, 1e-12)
    above = 0.5 + 0.5 * (values - centre) / max(vmax - centre, 1e-12)
    return np.clip(np.where(values < centre, below, above), 0.0, 1.0)


def heatmap_range(values: np.ndarray) -> tuple[float, float]:
    """The colour scale of the heatmap: at least 1.5 .. 6.5 (so 2 and 6 are on it), wider to
    take every finite value in; never below 0."""
    finite = values[np.isfinite(values)]
    hi = max(UNDER_TRAINED_ABOVE + 0.5, float(finite.max()) if finite.size else 0.0)
    lo = min(OVER_TRAINED_BELOW - 0.5, float(finite.min()) if finite.size else 9.0)
    return max(lo, 0.0), hi


def colour_bar_ticks(vmin: float, vmax: float, min_gap: float = 0.06) -> list[float]:
    """Numbers for the heatmap's colour bar from ``vmin`` to ``vmax``: 2 and 6 always, then
    round values in both halves (the lower half, vmin .. 2, is drawn as tall as the upper one,
    2 .. vmax, and needs numbers of its own) wherever they keep ``min_gap`` of the bar's height
    from every number already kept, so none prints over another."""

    upper = MaxNLocator(nbins=5).tick_values(OVER_TRAINED_BELOW, vmax)
    lower = MaxNLocator(nbins=3).tick_values(vmin, OVER_TRAINED_BELOW)
    candidates = sorted(float(c) for c in (*upper, *lower) if vmin <= c <= vmax)
    kept = [t for t in (OVER_TRAINED_BELOW, UNDER_TRAINED_ABOVE) if vmin <= t <= vmax]
    values = kept + candidates
    position = dict(zip(values, _two_slope(np.array(values), vmin, vmax).tolist(), strict=True))
    for t in candidates:
        if all(abs(position[t] - position[k]) >= min_gap for k in kept):
            kept.append(t)
    return sorted(kept)


@functools.lru_cache(maxsize=8)
def _hatched(height: int, width: int) -> np.ndarray:
    """(height, width, 3) uint8 grey with diagonal lines: "no trusted alpha here" (cached: the
    same size recurs at every analysis; read only)."""
    yy, xx = np.mgrid[0:height, 0:width]
    stripe = (xx + yy) % 6 < 2
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[...] = rgb255(_HIDDEN).astype(np.uint8)
    out[stripe] = rgb255(_HATCH).astype(np.uint8)
    return out


def _tick_label(value: float) -> str:
    return f"{value:g}"


def render_alpha_heatmap(
    layers: Sequence[str],
    steps: Sequence[int],
    alpha: np.ndarray,
    unreliable: np.ndarray | None = None,
    title: str = "alpha by layer and step",
) -> np.ndarray:
    """The picture of :func:`plot_alpha_heatmap` (same colours, scale, hatching and colour-bar
    numbers) drawn in milliseconds: layers (rows, model order) × analyses (columns, by step).

    Args:
        layers: row labels, ``len(layers) == alpha.shape[0]``.
        steps: column labels (training steps), ``len(steps) == alpha.shape[1]``.
        alpha: (num_layers, num_steps) float; NaN where there is no alpha.
        unreliable: (num_layers, num_steps) bool, True where the fit is not to be trusted; those
            cells and the NaN ones are grey and hatched.
        title: drawn above the map.

    Returns:
        (H, W, 3) uint8 RGB. Cells are 2..40 px wide (about 640 px in all) and 6..24 px tall.
    """
    from matplotlib import colormaps

    n_layers, n_steps = len(layers), len(steps)
    values = np.asarray(alpha, dtype=np.float64).reshape(n_layers, n_steps)
    hidden = ~np.isfinite(values)
    if unreliable is not None:
        hidden |= np.asarray(unreliable, dtype=bool).reshape(values.shape)
    vmin, vmax = heatmap_range(np.where(hidden, np.nan, values))

    cell_w = int(np.clip(640 // max(n_steps, 1), 2, 40))
    cell_h = int(np.clip(320 // max(n_layers, 1), 6, 24))
    label_size = 11 if cell_h >= 12 else 9
    row_every = max(1, int(np.ceil((label_size + 2) / cell_h)))  # labels must not touch
    label_w = max((text_size(name, label_size)[0] for name in layers), default=0)
    left = 12 + label_w + 6
    top = 46  # the title, then the colour bar's label above the bar
    grid_w, grid_h = cell_w * n_steps, cell_h * n_layers
    bar_h = max(grid_h, 160)
    bar_x = left + grid_w + 16
    caption = "step  (grey hatched: skipped or unreliable fit)"
    caption_w = text_size(caption, 11)[0]
    # Under the cells when it fits left of the colour bar, else under the colour bar.
    caption_y = top + grid_h + 30 if left + caption_w < bar_x - 8 else top + bar_h + 14
    width = max(bar_x + 18 + 60, left + caption_w + 12, left + text_size(title, 13, True)[0] + 12)
    height = max(top + max(grid_h, bar_h) + 20, caption_y + 28)
    canvas = Canvas(width, height)
    canvas.text(left, 14, title, size=13, bold=True)

    # The cells: colours looked up in RdBu for every cell, then blown up to pixels.
    lut = (colormaps["RdBu"](np.linspace(0.0, 1.0, 256))[:, :3] * 255 + 0.5).astype(np.uint8)
    index = (_two_slope(np.nan_to_num(values, nan=OVER_TRAINED_BELOW), vmin, vmax) * 255).round()
    cells = lut[index.astype(np.intp)]
    pixels = np.repeat(np.repeat(cells, cell_h, axis=0), cell_w, axis=1)
    hidden_px = np.repeat(np.repeat(hidden, cell_h, axis=0), cell_w, axis=1)
    if hidden_px.any():
        pixels[hidden_px] = _hatched(grid_h, grid_w)[hidden_px]
    canvas.image(left, top, pixels)
    canvas.rectangle(left - 1, top - 1, left + grid_w + 1, top + grid_h + 1, _AXIS)

    for i in range(0, n_layers, row_every):
        y = top + (i + 0.5) * cell_h
        canvas.text(left - 6, y, layers[i], color=_AXIS, size=label_size, align="right")
    # Step numbers under the columns, as many as fit without touching.
    widest = max((text_size(str(s), 10)[0] for s in steps), default=0)
    col_every = max(1, int(np.ceil((widest + 10) / cell_w)))
    for j in range(0, n_steps, col_every):
        x = left + (j + 0.5) * cell_w
        canvas.fill(x, top + grid_h + 1, x + 1, top + grid_h + 5, _AXIS)
        canvas.text(x, top + grid_h + 7, str(steps[j]), color=_AXIS, size=10, align="center",
                    valign="top")  # fmt: skip
    canvas.text(left, caption_y, caption, color=_AXIS, size=11, valign="top")

    # Colour bar: top is vmax; 2 (black) and 6 (purple) marked across it.
    positions = 1.0 - (np.arange(bar_h) + 0.5) / bar_h  # 0..1 bottom to top, per pixel row
    bar_values = np.interp(positions, [0.0, 0.5, 1.0], [vmin, OVER_TRAINED_BELOW, vmax])
    bar_index = (_two_slope(bar_values, vmin, vmax) * 255).round().astype(np.intp)
    canvas.image(bar_x, top, np.repeat(lut[bar_index][:, None, :], 18, axis=1))
    canvas.rectangle(bar_x - 1, top - 1, bar_x + 19, top + bar_h + 1, _AXIS)

    def bar_y(value: float) -> float:  # the scale is linear on each side of 2
        centre = OVER_TRAINED_BELOW
        if value < centre:
            height = 0.5 * (value - vmin) / (centre - vmin)
        else:
            height = 0.5 + 0.5 * (value - centre) / (vmax - centre)
        return top + (1.0 - height) * bar_h

    for level, color in ((OVER_TRAINED_BELOW, "black"), (UNDER_TRAINED_ABOVE, _UNDER_COLOR)):
        if vmin <= level <= vmax:
            y = bar_y(level)
            canvas.fill(bar_x - 1, y - 1, bar_x + 19, y + 1, color)
    for t in colour_bar_ticks(vmin, vmax):
        y = bar_y(t)
        canvas.fill(bar_x + 19, y, bar_x + 23, y + 1, _AXIS)
        canvas.text(bar_x + 26, y, _tick_label(t), color=_AXIS, size=10)
    canvas.text(bar_x + 9, top - 6, "alpha", color=_AXIS, size=10, align="center",
                valign="bottom")  # fmt: skip
    return canvas.to_array()


def render_alpha_trajectories(
    layers: Sequence[str],
    steps: Sequence[int],
    alpha: np.ndarray,
    reliable: np.ndarray | None = None,
    mean: Sequence[float] | None = None,
    title: str = "alpha per layer over training",
) -> np.ndarray:
    """alpha of every layer against the training step, drawn in milliseconds.

    One colour and one legend entry per layer (:func:`layer_colours`); a filled dot where the
    fit is reliable, a hollow ring where it is not (alpha shown, but not to be trusted); a NaN
    (skipped layer) breaks the line. ``mean`` (alpha_mean over the reliable layers) is the bold
    black line. Dotted guides at alpha = 2 (heavy-tailed below) and 6 (weak tail above)
    where they fall inside the range.

    Args:
        layers: the layers, in model order (legend order).
        steps: the analyses' training steps, ascending.
        alpha: (num_layers, num_steps) float; NaN where a layer has no alpha.
        reliable: (num_layers, num_steps): True/1.0 where the fit is reliable; None: all are.
        mean: (num_steps,) alpha_mean, NaN where no layer was reliable; None: not drawn.
        title: drawn above the chart.

    Returns:
        (H, W, 3) uint8 RGB, about 960 × 420 px (wider with many layers: legend columns).
    """
    n_layers, n_steps = len(layers), len(steps)
    values = np.asarray(alpha, dtype=np.float64).reshape(n_layers, n_steps)
    trusted = (
        np.ones(values.shape, dtype=bool)
        if reliable is None
        else np.asarray(reliable, dtype=np.float64).reshape(values.shape) == 1.0
    )
    mean_values = None if mean is None else np.asarray(mean, dtype=np.float64).reshape(n_steps)
    xs = np.asarray(steps, dtype=np.float64)

    # Ranges: every finite value, and always alpha = 2, the line that matters most.
    shown = [values[np.isfinite(values)]]
    if mean_values is not None:
        shown.append(mean_values[np.isfinite(mean_values)])
    finite = np.concatenate([*shown, [OVER_TRAINED_BELOW]])
    y_lo, y_hi = float(finite.min()), float(finite.max())
    pad = 0.06 * max(y_hi - y_lo, 0.5)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_lo, x_hi = (float(xs.min()), float(xs.max())) if n_steps else (0.0, 1.0)
    if x_hi <= x_lo:
        x_lo, x_hi = x_lo - 1.0, x_hi + 1.0
    x_pad = 0.02 * (x_hi - x_lo)
    x_lo, x_hi = x_lo - x_pad, x_hi + x_pad

    y_ticks = [
        t for t in MaxNLocator(nbins=7, steps=_NICE).tick_values(y_lo, y_hi) if y_lo <= t <= y_hi
    ]
    x_ticks = [
        t
        for t in MaxNLocator(nbins=8, steps=_NICE, integer=True).tick_values(x_lo, x_hi)
        if x_lo <= t <= x_hi
    ]
    tick_w = max((text_size(_tick_label(float(t)), 10)[0] for t in y_ticks), default=0)
    left, top, plot_w, plot_h = 30 + tick_w + 8, 40, 640, 320

    # Legend: layer entries in model order, then alpha_mean and the dot key, in columns of at
    # most `rows` entries beside the chart.
    colours = layer_colours(n_layers)
    entries: list[tuple[str, Any, bool]] = [
        (name, colour, False) for name, colour in zip(layers, colours, strict=True)
    ]
    if mean_values is not None:
        entries.append(("alpha_mean (reliable layers)", _MEAN_COLOR, True))
    row_h, rows = 17, plot_h // 17
    columns = max(1, int(np.ceil(len(entries) / rows)))
    if columns > 4:  # beyond 4 columns the picture grows too wide to read; say what is left out
        columns = 4
        cut = columns * rows - 1
        entries = [*entries[:cut], (f"… {len(entries) - cut} more", "white", False)]
    per_column = int(np.ceil(len(entries) / columns))
    entry_w = max(text_size(name, 11, bold)[0] for name, _, bold in entries) + 34
    legend_x = left + plot_w + 18
    width = legend_x + columns * entry_w + 10
    height = top + max(plot_h, per_column * row_h + 4 * row_h + 6) + 50
    canvas = Canvas(width, height)
    canvas.text(left, 18, title, size=13, bold=True)

    def px(x: np.ndarray | float) -> Any:
        return left + (np.asarray(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: np.ndarray | float) -> Any:
        return top + (1.0 - (np.asarray(y) - y_lo) / (y_hi - y_lo)) * plot_h

    # Grid, ticks, guides.
    for t in y_ticks:
        y = float(py(t))
        canvas.fill(left, y, left + plot_w, y + 1, _GRID)
        canvas.text(left - 6, y, _tick_label(float(t)), color=_AXIS, size=10, align="right")
    for t in x_ticks:
        x = float(px(t))
        canvas.fill(x, top, x + 1, top + plot_h, _GRID)
        canvas.text(x, top + plot_h + 6, _tick_label(float(t)), color=_AXIS, size=10,
                    align="center", valign="top")  # fmt: skip
    canvas.rectangle(left - 1, top - 1, left + plot_w + 1, top + plot_h + 1, _AXIS)
    canvas.text(left + plot_w / 2, top + plot_h + 26, "step", color=_AXIS, size=11,
                align="center", valign="top")  # fmt: skip
    canvas.text(10, top + plot_h / 2, "alpha", color=_AXIS, size=11, align="left",
                vertical=True)  # fmt: skip
    guides = ((OVER_TRAINED_BELOW, _OVER_COLOR, "alpha = 2: HT-SR's heavy-tail line"),
              (UNDER_TRAINED_ABOVE, _UNDER_COLOR, "alpha = 6: weak tail above"))  # fmt: skip
    for level, color, _ in guides:
        if y_lo < level < y_hi:
            y = float(py(level))
            canvas.polyline([left, left + plot_w], [y, y], color, 1.2, dashes=(2.0, 3.0))

    # Curves: every layer's line first, then the dots over them, then alpha_mean on top.
    for i in range(n_layers):
        canvas.polyline(px(xs), py(values[i]), colours[i], 1.6)
    # Dots shrink as analyses crowd the 640 px axis, so that they stay apart.
    radius = 3.2 if n_steps <= 40 else 2.4 if n_steps <= 100 else 1.8
    for i in range(n_layers):
        ok = trusted[i] & np.isfinite(values[i])
        canvas.markers(px(xs[ok]), py(values[i, ok]), colours[i], radius)
        doubt = ~trusted[i] & np.isfinite(values[i])
        canvas.markers(px(xs[doubt]), py(values[i, doubt]), colours[i], radius, fill="white")
    if mean_values is not None:
        canvas.polyline(px(xs), py(mean_values), _MEAN_COLOR, 3.4)

    # Legend.
    for k, (name, color, bold) in enumerate(entries):
        x = legend_x + (k // per_column) * entry_w
        y = top + 4 + (k % per_column) * row_h + row_h / 2
        if color != "white":
            canvas.polyline([x, x + 22], [y, y], color, 3.4 if bold else 1.6)
            if not bold:
                canvas.markers([x + 11], [y], color, 3.2)
        canvas.text(x + 28, y, name, size=11, bold=bold)
    y = top + 4 + per_column * row_h + row_h
    canvas.markers([legend_x + 6], [y], _AXIS, 3.2)
    w, _ = canvas.text(legend_x + 14, y, "reliable fit", color=_AXIS, size=10)
    canvas.markers([legend_x + 30 + w], [y], _AXIS, 3.2, fill="white")
    canvas.text(legend_x + 38 + w, y, "unreliable", color=_AXIS, size=10)
    # The guides' meaning here, not on the chart, where curves run along them.
    for level, color, label in guides:
        if y_lo < level < y_hi:
            y += row_h
            canvas.polyline([legend_x, legend_x + 22], [y, y], color, 1.2, dashes=(2.0, 3.0))
            canvas.text(legend_x + 28, y, label, color=color, size=10)
    return canvas.to_array()
