"""Weights & Biases: histograms of log10 λ per layer, the figures and the verdict table as a
``wandb.Table``, logged at the step of the analysis.

The sink is handed a ``log(data, step)`` function rather than a run: under Lightning it is the
``WandbLogger``'s ``log_metrics``, which stamps ``trainer/global_step`` (the x axis its scalars
use) instead of W&B's own step counter, so figures drawn later on the worker still land at the
step of their analysis. For a plain ``wandb`` run pass
``lambda data, step: run.log(data, step=step)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from spectral_monitor.sinks.sink import Analysis, verdict_rows

__all__ = ["WandbSink"]


class WandbSink:
    """Writes what W&B takes of a monitor's results beyond the scalars.

    Args:
        log: ``log(data, step)`` — logs ``{key: value}`` (W&B media objects) at ``step``.
        prefix: the monitor's tag prefix.
    """

    takes = frozenset({"histograms", "images", "table"})

    def __init__(
        self, log: Callable[[dict[str, Any], int], None], prefix: str = "spectral"
    ) -> None:
        self._log = log
        self.prefix = prefix

    def write_analysis(self, analysis: Analysis) -> None:
        """``<prefix>/esd_log10/<layer>`` histograms (when due) and ``<prefix>/verdicts`` (when
        due), in one ``log`` call."""
        import wandb

        data: dict[str, Any] = {}
        if analysis.histograms:
            for la in analysis.report.layers:
                if la.evals is None:
                    continue
                values = la.evals[np.isfinite(la.evals) & (la.evals > 0)]
                if values.size:
                    data[f"{self.prefix}/esd_log10/{la.name}"] = wandb.Histogram(np.log10(values))
        if analysis.table:
            columns, rows = verdict_rows(analysis.report)
            header: list[Any] = list(columns)
            data[f"{self.prefix}/verdicts"] = wandb.Table(columns=header, data=rows)
        if data:
            self._log(data, analysis.step)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Each figure as a ``wandb.Image`` under ``<prefix>/<name>``."""
        import wandb

        if images:
            self._log({f"{self.prefix}/{k}": wandb.Image(v) for k, v in images.items()}, step)

    def write_text(self, name: str, text: str, step: int) -> None:
        """A one-row ``wandb.Table`` (step, text) under ``<prefix>/<name>``."""
        import wandb

        table = wandb.Table(columns=["step", name], data=[[step, text]])
        self._log({f"{self.prefix}/{name}": table}, step)

    def flush(self) -> None:
        """W&B sends in the background; nothing to do."""
