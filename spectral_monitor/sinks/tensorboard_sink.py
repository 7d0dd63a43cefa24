"""Writing a monitor's results to a TensorBoard ``SummaryWriter``: the one sink behind both the
Lightning callback and the plain-loop tracker.

What goes where (README "TensorBoard" has the table of tags): model curves and pictures under
``<prefix>/``, housekeeping under ``<prefix>_meta/`` so TensorBoard's Time Series tab, which groups
cards by the part of the tag before the first ``/``, shows them apart.

Facts this module respects:

- ``add_scalars`` makes one run directory per curve, so the all-layers charts are a custom-scalars
  layout (regexes over tags) instead.
- TensorBoard's custom-scalars plugin reads one layout per run directory, the last one written;
  several monitors (prefixes) writing into one directory must therefore each write the *merged*
  layout of every prefix seen there (:func:`register_layout`).
- TensorBoard re-bins histograms into 30 linear bins, which crushes a heavy-tailed ESD into one
  bin, so the histogram is of log10 λ; ``add_histogram`` does not drop NaN/Inf itself.
- Figures arrive already drawn (RGB arrays from the worker thread, see :func:`draw_figures`):
  writing them here costs a PNG encode, not a matplotlib render.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.sinks.plots import figure_to_array, plot_alpha_heatmap, plot_esd
from spectral_monitor.weights.module_types import alpha_by_type

__all__ = [
    "LayoutEntry",
    "TensorBoardSink",
    "custom_scalar_layout",
    "draw_figures",
    "register_layout",
    "verdict_table",
]

#: Layouts written per run directory: ``{log_dir: {prefix: entry}}``.
_LAYOUTS: dict[str, dict[str, LayoutEntry]] = {}
_LAYOUTS_LOCK = threading.Lock()


@dataclass(frozen=True)
class LayoutEntry:
    """What one prefix's charts need: the stop threshold (None: no stop rule), whether
    ``<prefix>/alpha_by_type/`` curves exist (an empty chart would only puzzle), and the layer
    names (one interval chart each)."""

    stop_threshold: float | None = None
    by_type: bool = False
    layers: tuple[str, ...] = ()


def custom_scalar_layout(
    prefixes: Mapping[str, LayoutEntry] | str = "spectral",
) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one category per prefix, each with the charts "alpha — all
    layers", "λmax — all layers", "alpha_mean and alpha_min" (with ``<prefix>/stop_threshold``
    when a threshold is set), "alpha_hat" alone (its scale, alpha · ln λmax, differs), the
    chart "spikes and traps — all layers" (docs/guide/signals.md), the
    margin chart "alpha_mean ± std over layers", and "alpha by module type" when there are types.

    Args:
        prefixes: ``{prefix: LayoutEntry}``, or one prefix.
    """
    if isinstance(prefixes, str):
        prefixes = {prefixes: LayoutEntry()}
    layout: dict[str, dict[str, list[Any]]] = {}
    for prefix, entry in prefixes.items():
        threshold = entry.stop_threshold
        p = re.escape(prefix)
        lower = [rf"^{p}/alpha_mean$", rf"^{p}/alpha_min$"]
        if threshold is not None:
            lower.append(rf"^{p}/stop_threshold$")
        # Listed in the order the tab shows them: all line charts first, then the margin charts
        # (see _shown_in_order).
        charts: dict[str, list[Any]] = {
            "alpha — all layers": ["Multiline", [rf"^{p}/alpha/"]],
            "λmax — all layers": ["Multiline", [rf"^{p}/lambda_max/"]],
            "alpha_mean and alpha_min": ["Multiline", lower],
            "alpha_hat": ["Multiline", [rf"^{p}/alpha_hat$"]],
            # Signals beyond alpha (docs/guide/signals.md), one curve per layer.
            # One regex: traps are logged only when the analysis counts them, spikes always.
            "spikes and traps — all layers": ["Multiline", [rf"^{p}/num_(spikes|traps)/"]],
        }
        if entry.by_type:
            charts["alpha by module type"] = ["Multiline", [rf"^{p}/alpha_by_type/"]]
        charts["alpha_mean ± std over layers"] = [
            "Margin",
            [
                f"{prefix}/alpha_mean",
                f"{prefix}/alpha_mean_minus_std",
                f"{prefix}/alpha_mean_plus_std",
            ],
        ]
        layout[prefix] = charts
        if entry.layers:
            # One margin chart per layer: alpha inside its confidence interval. Margin charts
            # take exact tags, not regexes, so they are listed by layer, in their own category.
            layout[f"{prefix} — alpha with its interval"] = _shown_in_order(
                {
                    f"alpha — {name}": [
                        "Margin",
                        [f"{prefix}/{key}/{name}" for key in ("alpha", "alpha_lo", "alpha_hi")],
                    ]
                    for name in entry.layers
                }
            )
    return layout


def _shown_in_order(margin_charts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """``margin_charts`` listed so that the Custom Scalars tab shows them in the given order.

    TensorBoard's tab (checked with 2.21 in headless Chromium, ``docs/make_figures.py``) shows a
    category's line charts in layout order and then its margin charts in *reverse* layout order;
    listed as given, the per-layer interval charts of a 48-layer model would read from the last
    layer to the first.
    """
    return dict(reversed(list(margin_charts.items())))


def _log_dir(writer: Any) -> str:
    for name in ("log_dir", "logdir"):
        value = getattr(writer, name, None)
        if isinstance(value, str):
            return value
    getter = getattr(writer, "get_logdir", None)
    return str(getter()) if callable(getter) else f"writer-{id(writer)}"


def register_layout(writer: Any, prefix: str, entry: LayoutEntry) -> None:
    """Add ``prefix`` to the layout of ``writer``'s run directory and write the merged layout of
    every prefix registered there in this process (the last layout written is the one shown)."""
    key = _log_dir(writer)
    with _LAYOUTS_LOCK:
        prefixes = _LAYOUTS.setdefault(key, {})
        if prefixes.get(prefix) == entry:
            return  # this very layout is already the last one written there
        prefixes[prefix] = entry
        writer.add_custom_scalars(custom_scalar_layout(dict(prefixes)))


def _fmt(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "–"


def verdict_table(report: SpectralReport) -> str:
    """A Markdown table of the layers (TensorBoard's text plugin renders Markdown): alpha with
    its interval, whether the fit is reliable (else why not), the number of eigenvalues in the
    fitted tail, the KS distance D, λmax and the verdict."""
    lines = [
        "| layer | shape | alpha | interval | reliable | n_tail | D | λmax | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for la in report.layers:
        shape = "x".join(str(s) for s in la.shape)
        if la.skipped is not None:
            lines.append(
                f"| {la.name} | {shape} | – | – | no | – | – | {_fmt(la.lambda_max, '.4g')} "
                f"| skipped: {la.skipped} |"
            )
            continue
        interval = f"[{_fmt(la.alpha_lo, '.2f')}, {_fmt(la.alpha_hi, '.2f')}]"
        trust = "yes" if la.reliable else f"no: {la.unreliable_reason}"
        lines.append(
            f"| {la.name} | {shape} | {_fmt(la.alpha, '.3f')} | {interval} | {trust} | "
            f"{la.n_tail} | {_fmt(la.D, '.3f')} | {_fmt(la.lambda_max, '.4g')} | {la.verdict} |"
        )
    agg = report.aggregates
    lines.append("")
    lines.append(
        f"Over the {agg['num_reliable']} reliable layers: "
        f"alpha_mean = {_fmt(agg['alpha_mean'], '.3f')}, "
        f"alpha_hat = {_fmt(agg['alpha_hat'], '.3f')}, "
        f"fraction of layers with alpha < 2 = {_fmt(agg['frac_alpha_below_2'], '.2f')}"
    )
    return "\n".join(lines)


def draw_figures(
    report: SpectralReport | None,
    history: SpectralHistory | None,
) -> dict[str, np.ndarray]:
    """Draw the figures of one step as RGB arrays (meant for the worker thread).

    Args:
        report: draw its ESD with the fit per layer (``esd_fit/<layer>``), or None for none.
        history: draw its heatmap of alpha (``alpha_heatmap``), or None for none.

    Returns:
        ``{name: (H, W, 3) uint8}``; names are relative to the prefix.
    """
    images: dict[str, np.ndarray] = {}
    if report is not None:
        for la in report.layers:
            if la.evals is None or not np.any(np.isfinite(la.evals) & (la.evals > 0)):
                continue
            figure = plot_esd(la.evals, la.fit, f"{la.name} @ step {report.step}")
            images[f"esd_fit/{la.name}"] = figure_to_array(figure)
    if history is not None and len(history):
        layers, steps, alpha = history.alpha_matrix()
        if layers:
            title = f"alpha by layer, steps {steps[0]}..{steps[-1]}"
            unreliable = history.layer_matrix("reliable")[2] == 0.0  # NaN (unknown) is not
            images["alpha_heatmap"] = figure_to_array(
                plot_alpha_heatmap(layers, steps, alpha, unreliable, title=title)
            )
    return images


class TensorBoardSink:
    """Writes one monitor's results to one ``SummaryWriter``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with its ``add_*``).
        prefix: the monitor's tag prefix; housekeeping goes under ``<prefix>_meta/``.
        stop_threshold: the stop rule's threshold, drawn with alpha_mean/alpha_min; None: none.
        scalars: write the scalars too (False when another path, e.g. Lightning's
            ``log_metrics``, already writes them to this writer).
    """

    def __init__(
        self,
        writer: Any,
        prefix: str = "spectral",
        stop_threshold: float | None = None,
        scalars: bool = True,
    ) -> None:
        self.writer = writer
        self.prefix = prefix
        self.scalars = scalars
        self.stop_threshold = stop_threshold
        self._layout: LayoutEntry | None = None

    def write_report(
        self,
        report: SpectralReport,
        step: int,
        scalars: Mapping[str, float],
        histograms: bool = True,
        text: bool = True,
    ) -> None:
        """The scalars (if this sink writes them), histograms of log10 λ per layer, and the
        verdict table, at ``step``; the layout with the first report (which tells whether there
        are module types)."""
        if self._layout is None:
            # From the layer names, not the scalars: a type's mean exists only once its layers'
            # fits are reliable, but its chart belongs in the layout from the start.
            names = [la.name for la in report.layers]
            by_type = bool(alpha_by_type(names, [0.0] * len(names)))
            self._layout = LayoutEntry(self.stop_threshold, by_type, tuple(names))
            register_layout(self.writer, self.prefix, self._layout)
        if self.scalars:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)
        if histograms:
            for la in report.layers:
                if la.evals is None:
                    continue
                values = la.evals[np.isfinite(la.evals) & (la.evals > 0)]
                if values.size:
                    tag = f"{self.prefix}/esd_log10/{la.name}"
                    self.writer.add_histogram(tag, np.log10(values), step)
        if text:
            self.writer.add_text(f"{self.prefix}/verdicts", verdict_table(report), step)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Figures drawn by :func:`draw_figures`, as ``<prefix>/<name>`` at ``step``."""
        for name, image in images.items():
            self.writer.add_image(f"{self.prefix}/{name}", image, step, dataformats="HWC")

    def write_text(self, name: str, text: str, step: int) -> None:
        """A text entry ``<prefix>/<name>`` (e.g. ``stop_reason``)."""
        self.writer.add_text(f"{self.prefix}/{name}", text, step)

    def flush(self) -> None:
        self.writer.flush()
