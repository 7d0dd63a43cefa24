"""``SpectralHistory``: the trajectories of a training run — per layer (step, alpha, λmax) and the
model aggregates per analysis — kept in memory, checkpointable, exportable as rows or CSV."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectral_monitor.analysis.report import SpectralReport

__all__ = ["AGGREGATE_KEYS", "SpectralHistory"]

#: Aggregates kept per analysis (see SpectralReport.aggregates).
AGGREGATE_KEYS = ("alpha_mean", "alpha_hat", "alpha_min", "frac_alpha_below_2", "num_reliable")
#: Per-layer series kept per analysis.
LAYER_KEYS = ("alpha", "alpha_lo", "alpha_hi", "reliable", "lambda_max")


@dataclass
class SpectralHistory:
    """Trajectories over training.

    Attributes:
        layers: ``{layer: {"step": [...], "alpha": [...], "alpha_lo": [...], "alpha_hi": [...],
            "reliable": [...] (1.0/0.0), "lambda_max": [...]}}``; a skipped layer's alpha is
            NaN at that step.
        aggregates: ``{"step": [...], "alpha_mean": [...], ...}`` one entry per analysis.
    """

    layers: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    aggregates: dict[str, list[float]] = field(
        default_factory=lambda: {"step": [], **{k: [] for k in AGGREGATE_KEYS}}
    )

    @property
    def steps(self) -> list[int]:
        """Steps with an analysis, in order."""
        return [int(s) for s in self.aggregates["step"]]

    def __len__(self) -> int:
        return len(self.aggregates["step"])

    def __contains__(self, step: object) -> bool:
        return step in self.aggregates["step"]

    def add(self, report: SpectralReport) -> bool:
        """Append one report (its ``step`` must be set). Returns False, adding nothing, for a step
        already present — a resumed run re-analysing its checkpoint step adds no duplicate."""
        if report.step is None:
            raise ValueError("history needs reports with a step")
        if report.step in self:
            return False
        agg = report.aggregates
        self.aggregates["step"].append(report.step)
        for key in AGGREGATE_KEYS:
            self.aggregates[key].append(float(agg[key]))
        for layer in report.layers:
            track = self.layers.setdefault(layer.name, {"step": []})
            for key in LAYER_KEYS:  # a history restored from before a key existed gets NaN
                track.setdefault(key, [math.nan] * len(track["step"]))
            track["step"].append(report.step)
            for key in LAYER_KEYS:
                track[key].append(float(getattr(layer, key)))
        return True

    def drop_after(self, step: int) -> None:
        """Forget the analyses after ``step`` (a state saved later than the weights that training
        resumes with)."""
        keep = [i for i, s in enumerate(self.aggregates["step"]) if s <= step]
        self.aggregates = {k: [v[i] for i in keep] for k, v in self.aggregates.items()}
        for track in self.layers.values():
            keep = [i for i, s in enumerate(track["step"]) if s <= step]
            for key, values in track.items():
                track[key] = [values[i] for i in keep]
        self.layers = {name: track for name, track in self.layers.items() if track["step"]}

    def alpha(self, layer: str) -> tuple[list[int], list[float]]:
        """(steps, alphas) of one layer."""
        track = self.layers[layer]
        return [int(s) for s in track["step"]], list(track["alpha"])

    def alpha_matrix(self) -> tuple[list[str], list[int], np.ndarray]:
        """alpha of every layer at every analysis: (layers in model order, steps,
        (num_layers, num_steps) float64 array, NaN where a layer has no alpha at a step)."""
        return self.layer_matrix("alpha")

    def layer_matrix(self, key: str) -> tuple[list[str], list[int], np.ndarray]:
        """One per-layer series (``LAYER_KEYS``: ``"alpha"``, ``"reliable"`` (1.0/0.0), …) of
        every layer at every analysis, as :meth:`alpha_matrix`; NaN where it is missing."""
        steps = self.steps
        column = {step: j for j, step in enumerate(steps)}
        names = list(self.layers)
        matrix = np.full((len(names), len(steps)), np.nan)
        for i, name in enumerate(names):
            track = self.layers[name]
            for step, value in zip(track["step"], track.get(key, []), strict=False):
                if int(step) in column:
                    matrix[i, column[int(step)]] = value
        return names, steps, matrix

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (step, layer): step, layer, alpha, lambda_max."""
        rows: list[dict[str, Any]] = []
        for name, track in self.layers.items():
            for step, alpha, lam in zip(
                track["step"], track["alpha"], track["lambda_max"], strict=True
            ):
                rows.append({"step": int(step), "layer": name, "alpha": alpha, "lambda_max": lam})
        rows.sort(key=lambda r: int(r["step"]))
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` as CSV; returns the path."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["step", "layer", "alpha", "lambda_max"])
            writer.writeheader()
            writer.writerows(self.to_rows())
        return path

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and dicts (checkpoint-safe)."""
        return {
            "layers": {k: {kk: list(vv) for kk, vv in v.items()} for k, v in self.layers.items()},
            "aggregates": {k: list(v) for k, v in self.aggregates.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.layers = {
            k: {kk: list(vv) for kk, vv in v.items()} for k, v in state["layers"].items()
        }
        aggregates: dict[str, list[float]] = {"step": [], **{k: [] for k in AGGREGATE_KEYS}}
        aggregates.update({k: list(v) for k, v in state["aggregates"].items()})
        count = len(aggregates["step"])
        for key in AGGREGATE_KEYS:  # a history saved before a key existed gets NaN for it
            if len(aggregates[key]) != count:
                aggregates[key] = [math.nan] * count
        self.aggregates = aggregates
