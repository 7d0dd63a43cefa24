"""MLflow: the figures as step-indexed images and the verdict table as CSV artifacts of a run.

MLflow has no histogram type, so the histograms of log10 λ are not sent (the caller warns once).
Under Lightning the client and run are the ``MLFlowLogger``'s (``logger.experiment``,
``logger.run_id``); its scalars reach MLflow through the logger's own ``log_metrics``.

Artifacts of a run:

- ``images/<prefix>~<name>+step+<step>+...png``: each figure through ``MlflowClient.log_image``
  with ``key="<prefix>/<name>"`` and the step, which MLflow's UI shows with a step slider;
- ``<prefix>/verdicts/step_<step:08d>.csv``: the verdict table of each analysis it is due at;
- ``<prefix>/<name>.txt`` and the tag ``<prefix>/<name>`` for a text such as ``stop_reason``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from spectral_monitor.sinks.sink import Analysis, verdict_rows

__all__ = ["MlflowSink", "image_key"]


def image_key(prefix: str, name: str) -> str:
    """``<prefix>/<name>`` with the characters MLflow refuses in an image key (anything but
    letters, digits, ``_ - . /`` and space) replaced by ``_``."""
    return re.sub(r"[^a-zA-Z0-9_\-./ ]", "_", f"{prefix}/{name}")


class MlflowSink:
    """Writes what MLflow takes of a monitor's results beyond the scalars.

    Args:
        client: an ``mlflow.MlflowClient``.
        run_id: the run to write into.
        prefix: the monitor's tag prefix.
    """

    takes = frozenset({"images", "table"})

    def __init__(self, client: Any, run_id: str, prefix: str = "spectral") -> None:
        self.client = client
        self.run_id = run_id
        self.prefix = prefix

    def write_analysis(self, analysis: Analysis) -> None:
        """The verdict table, when due, as ``<prefix>/verdicts/step_<step:08d>.csv``."""
        if not analysis.table:
            return
        columns, rows = verdict_rows(analysis.report)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        writer.writerows(rows)
        artifact = f"{self.prefix}/verdicts/step_{analysis.step:08d}.csv"
        self.client.log_text(self.run_id, buffer.getvalue(), artifact)

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Each figure as an image of the run at ``step``."""
        for name, image in images.items():
            key = image_key(self.prefix, name)
            self.client.log_image(self.run_id, image, key=key, step=step)

    def write_text(self, name: str, text: str, step: int) -> None:
        """The tag ``<prefix>/<name>`` and the artifact ``<prefix>/<name>.txt``."""
        self.client.set_tag(self.run_id, f"{self.prefix}/{name}", text)
        self.client.log_text(self.run_id, f"step {step}: {text}\n", f"{self.prefix}/{name}.txt")

    def flush(self) -> None:
        """Each call above is sent before it returns."""
