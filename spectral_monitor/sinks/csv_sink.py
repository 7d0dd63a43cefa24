"""Files in a folder (Lightning's ``CSVLogger``): the full history and the latest verdicts.

At each analysis, in the folder (the ``CSVLogger``'s ``log_dir``, beside its ``metrics.csv``):

- ``<prefix>_history.csv``: one row per (step, layer) with every per-layer field
  (:meth:`SpectralHistory.to_rows`), read back by ``spectral-monitor history`` and
  :func:`spectral_monitor.analysis.history_files.read_history_csv`;
- ``<prefix>_verdicts.csv`` and ``<prefix>_verdicts.json``: the latest analysis, one row per layer
  (JSON: also its step, conventions and aggregates).

Each file is written whole to a temporary file in the same folder and moved over the old one
(``os.replace``), so a reader, or a process killed mid-write, never sees half a file. Text
(``stop_reason``) goes to ``<prefix>_<name>.txt``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

import numpy as np

from spectral_monitor.analysis.history_files import history_csv_name
from spectral_monitor.sinks.sink import Analysis, verdict_rows

__all__ = ["CsvSink", "write_atomically"]


def write_atomically(path: Path, write: Callable[[TextIO], object]) -> None:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, then move it
    over ``path`` in one step."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            write(handle)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


class CsvSink:
    """Writes a monitor's history and latest verdicts as files into ``directory``.

    Args:
        directory: the folder (created when missing).
        prefix: the monitor's prefix, the start of every file name.
    """

    takes = frozenset({"table"})

    def __init__(self, directory: str | os.PathLike[str], prefix: str = "spectral") -> None:
        self.directory = Path(directory)
        self.prefix = prefix
        # The history's CSV lines written so far, by step: each analysis serialises its own rows
        # only (the file is still written whole, for atomicity).
        self._head = ""
        self._lines: dict[int, str] = {}

    @property
    def history_path(self) -> Path:
        return self.directory / history_csv_name(self.prefix)

    def _path(self, suffix: str) -> Path:
        return self.directory / f"{self.prefix}_{suffix}"

    def write_analysis(self, analysis: Analysis) -> None:
        """The whole history and the latest verdicts, each file replaced in one step."""
        self.directory.mkdir(parents=True, exist_ok=True)
        history = analysis.history
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=history.columns)
        writer.writeheader()
        head = buffer.getvalue()
        steps = history.steps
        if head != self._head or not set(self._lines) <= set(steps):
            self._head, self._lines = head, {}  # other columns, or a history cut on resume
        new = [s for s in steps if s not in self._lines]
        rows = history.to_rows(steps=new) if new else []
        for step in new:
            buffer.seek(0)
            buffer.truncate()
            writer.writerows(r for r in rows if r["step"] == step)
            self._lines[step] = buffer.getvalue()
        text = head + "".join(self._lines[s] for s in steps)
        write_atomically(self.history_path, lambda handle: handle.write(text))

        report = analysis.report
        columns, table = verdict_rows(report)

        def verdicts(handle: TextIO) -> None:
            writer = csv.writer(handle)
            writer.writerow(["step", *columns])
            writer.writerows([analysis.step, *row] for row in table)

        write_atomically(self._path("verdicts.csv"), verdicts)
        document = {**report.to_dict(), "step": analysis.step}
        write_atomically(
            self._path("verdicts.json"), lambda handle: json.dump(document, handle, indent=2)
        )

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Not taken: a CSV folder holds no pictures."""

    def write_text(self, name: str, text: str, step: int) -> None:
        """``<prefix>_<name>.txt``: ``step <step>: <text>``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self._path(f"{name}.txt"), lambda h: h.write(f"step {step}: {text}\n"))

    def flush(self) -> None:
        """Every file is complete on disk once written."""

    def __repr__(self) -> str:
        return f"CsvSink({str(self.directory)!r}, prefix={self.prefix!r})"
