"""What every destination of a monitor's results implements, and what it is handed.

Scalars do not pass through here: under Lightning they reach every logger through its own
``log_metrics``. A sink takes the rest — histograms, figures, the verdict table, history files —
as far as its destination can hold them, and says which in :attr:`Sink.takes`; the caller warns
once about what a destination cannot take (:func:`not_taken`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.report import ROW_FIELDS, SpectralReport

__all__ = ["MEDIA", "Analysis", "Sink", "not_taken", "verdict_rows"]

#: What a sink may take beyond the scalars, with the words a warning uses for it.
MEDIA: dict[str, str] = {
    "histograms": "the histograms of log10 λ per layer",
    "images": "the figures (alpha heatmap, ESD fits)",
    "table": "the verdict table",
}

#: The verdict table's first columns; every other field of ``LayerSpectrum`` follows.
_FIRST_COLUMNS = (
    "name",
    "verdict",
    "reliable",
    "unreliable_reason",
    "alpha",
    "alpha_lo",
    "alpha_hi",
    "n_tail",
    "D",
    "lambda_max",
)


@dataclass(frozen=True)
class Analysis:
    """One finished analysis as the sinks receive it.

    Attributes:
        report: the analysis.
        step: the training step to log it at (the step of the weights analysed).
        scalars: its scalars (a sink writes them only where no logger already does).
        history: the whole history so far, this analysis included.
        histograms: the histograms of log10 λ are due at this analysis.
        table: the verdict table is due at this analysis.
    """

    report: SpectralReport
    step: int
    scalars: Mapping[str, float]
    history: SpectralHistory
    histograms: bool = True
    table: bool = True


class Sink(Protocol):
    """One destination (a TensorBoard writer, a W&B run, an MLflow run, a CSV folder)."""

    #: The keys of :data:`MEDIA` this destination takes.
    takes: frozenset[str]

    def write_analysis(self, analysis: Analysis) -> None:
        """Write what this destination takes of one analysis."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Figures drawn on the worker, ``{name: (H, W, 3) uint8}``, names relative to the
        prefix; a sink without ``"images"`` in :attr:`takes` ignores them."""

    def write_text(self, name: str, text: str, step: int) -> None:
        """A short text, e.g. ``stop_reason``."""

    def flush(self) -> None:
        """Put what was written on disk (or on its way to the server)."""


def not_taken(takes: frozenset[str]) -> list[str]:
    """The words for what a destination taking ``takes`` does not receive (for its warning)."""
    return [words for key, words in MEDIA.items() if key not in takes]


def _cell(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def verdict_rows(report: SpectralReport) -> tuple[list[str], list[list[Any]]]:
    """The verdict table as ``(columns, rows)``: one row per layer, the layer (its ``name``),
    verdict, reliability and its reason, alpha with its interval, n_tail, D and λmax first, then
    every other field of ``LayerSpectrum`` (new fields included); NaN as None."""
    fields = [*_FIRST_COLUMNS, *(f for f in ROW_FIELDS if f not in _FIRST_COLUMNS)]
    rows = []
    for la in report.layers:
        row = la.to_row()
        rows.append([_cell(row.get(field)) for field in fields])
    return ["layer" if f == "name" else f for f in fields], rows
