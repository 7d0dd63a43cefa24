"""Writing one report to a TensorBoard ``SummaryWriter``: scalars, the custom-scalars layout,
histograms of log10 λ, ESD figures with their fits, and a text table of verdicts.

Facts this module respects: ``add_scalars`` makes one run directory per curve, so all layers share
a chart through a custom-scalars layout (regex over tags) instead. TensorBoard re-bins histograms
into 30 linear bins, which crushes a heavy-tailed ESD into one bin, so the histogram is of log10 λ.
``add_histogram`` does not drop NaN/Inf itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from spectral_monitor.plots import plot_esd
from spectral_monitor.report import SpectralReport

__all__ = [
    "custom_scalar_layout",
    "verdict_table",
    "write_layout",
    "write_report_extras",
    "write_scalars",
]


def custom_scalar_layout(prefix: str = "spectral") -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: one multiline chart for all layers' alpha, one for λmax, one
    for the aggregates."""
    p = re.escape(prefix)
    return {
        prefix: {
            "alpha (all layers)": ["Multiline", [rf"^{p}/alpha/.*"]],
            "lambda_max (all layers)": ["Multiline", [rf"^{p}/lambda_max/.*"]],
            "alpha aggregates": [
                "Multiline",
                [rf"^{p}/alpha_mean$", rf"^{p}/alpha_min$", rf"^{p}/alpha_hat$"],
            ],
        }
    }


def write_layout(writer: Any, prefix: str = "spectral") -> None:
    """Write :func:`custom_scalar_layout` (once per run directory is enough)."""
    writer.add_custom_scalars(custom_scalar_layout(prefix))


def write_scalars(writer: Any, scalars: Mapping[str, float], step: int) -> None:
    """One ``add_scalar`` per entry, at ``step``."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)


def verdict_table(report: SpectralReport) -> str:
    """A Markdown table of the layers (TensorBoard's text plugin renders Markdown)."""
    lines = ["| layer | shape | alpha | λmax | verdict |", "|---|---|---|---|---|"]
    for la in report.layers:
        shape = "x".join(str(s) for s in la.shape)
        if la.skipped is not None:
            lines.append(f"| {la.name} | {shape} | – | – | skipped: {la.skipped} |")
        else:
            lines.append(
                f"| {la.name} | {shape} | {la.alpha:.3f} | {la.lambda_max:.4g} | {la.verdict} |"
            )
    agg = report.aggregates
    lines.append("")
    lines.append(
        f"alpha_mean = {agg['alpha_mean']:.3f}, alpha_hat = {agg['alpha_hat']:.3f}, "
        f"fraction of layers with alpha < 2 = {agg['frac_alpha_below_2']:.2f}"
    )
    return "\n".join(lines)


def write_report_extras(
    writer: Any,
    report: SpectralReport,
    step: int,
    prefix: str = "spectral",
    histograms: bool = True,
    figures: bool = False,
    text: bool = True,
) -> None:
    """Histograms of log10 λ per layer, ESD figures with the fit, and the verdict table."""
    for la in report.layers:
        if la.evals is None:
            continue
        values = la.evals[np.isfinite(la.evals) & (la.evals > 0)]
        if histograms and values.size:
            writer.add_histogram(f"{prefix}/esd_log10/{la.name}", np.log10(values), step)
        if figures and values.size:
            title = f"{la.name} @ step {step}"
            writer.add_figure(
                f"{prefix}/esd_fit/{la.name}", plot_esd(la.evals, la.fit, title), step
            )
    if text:
        writer.add_text(f"{prefix}/verdicts", verdict_table(report), step)
