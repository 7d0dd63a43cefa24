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

__all__ = [
    "AGGREGATE_KEYS",
    "LAYER_KEYS",
    "SIGNAL_KEYS",
    "SpectralHistory",
    "log_growth",
    "rebound",
]

#: Aggregates kept per analysis (see SpectralReport.aggregates).
AGGREGATE_KEYS = ("alpha_mean", "alpha_hat", "alpha_min", "frac_alpha_below_2", "num_reliable")
#: Per-layer signals beyond alpha kept per analysis (see docs/guide/signals.md).
SIGNAL_KEYS = ("num_spikes", "num_traps", "trap_excess", "erg_gap")
#: Per-layer series kept per analysis.
LAYER_KEYS = ("alpha", "alpha_lo", "alpha_hi", "reliable", "lambda_max", *SIGNAL_KEYS)
#: Columns of :meth:`SpectralHistory.to_rows` / ``to_csv``.
ROW_KEYS = ("step", "layer", "alpha", "lambda_max", *SIGNAL_KEYS)


def rebound(values: np.ndarray | list[float]) -> np.ndarray:
    """How far a series stands above its running minimum: r_t = x_t − min_{s<=t} x_s.

    The trajectory signal of label-noise runs: their alpha_mean falls to a minimum and climbs
    back while held-out accuracy falls (README "Stopping"). NaN entries (a layer without an
    alpha at that analysis) stay NaN and do not enter the minimum; before the first finite value
    the result is NaN.

    Args:
        values: (num_steps,) one value per analysis, in step order (alpha of one layer,
            ``alpha_mean``, ...).

    Returns:
        (num_steps,) float64, >= 0 where finite, in the units of ``values``.
    """
    x = np.asarray(values, dtype=np.float64)
    running = np.fmin.accumulate(np.where(np.isfinite(x), x, np.nan)) if x.size else x
    return x - running


def log_growth(values: np.ndarray | list[float]) -> np.ndarray:
    """ln(x_t / x_first): growth of a positive series (λmax of a layer) since its first finite
    positive value, scale-free (the same in every eigenvalue convention). NaN before that value
    and where x_t is not finite and positive.

    Args:
        values: (num_steps,) one value per analysis, in step order.

    Returns:
        (num_steps,) float64; ln 2 ≈ 0.69 where λmax has doubled.
    """
    x = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(x) & (x > 0)
    out = np.full(x.shape, np.nan)
    if not ok.any():
        return out
    first = int(np.flatnonzero(ok)[0])
    out[ok] = np.log(x[ok] / x[first])
    out[:first] = np.nan
    return out


@dataclass
class SpectralHistory:
    """Trajectories over training.

    Attributes:
        layers: ``{layer: {"step": [...], "alpha": [...], "alpha_lo": [...], "alpha_hi": [...],
            "reliable": [...] (1.0/0.0), "lambda_max": [...], "num_spikes": [...],
            "num_traps": [...], "trap_excess": [...], "erg_gap": [...]}}``; a skipped layer's
            alpha is NaN at that step; a count not computed is -1.
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

    def rebound(self, layer: str | None = None) -> tuple[list[int], np.ndarray]:
        """(steps, :func:`rebound` of ``alpha_mean``), or of one layer's alpha."""
        if layer is None:
            return self.steps, rebound(self.aggregates["alpha_mean"])
        track = self.layers[layer]
        return [int(s) for s in track["step"]], rebound(track["alpha"])

    def lambda_max_growth(self, layer: str) -> tuple[list[int], np.ndarray]:
        """(steps, :func:`log_growth` of the layer's λmax): ln(λmax_t / λmax_first)."""
        track = self.layers[layer]
        return [int(s) for s in track["step"]], log_growth(track["lambda_max"])

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per (step, layer): :data:`ROW_KEYS` (step, layer, alpha, lambda_max and the
        signals; NaN for a signal a history restored from before it existed lacks)."""
        rows: list[dict[str, Any]] = []
        for name, track in self.layers.items():
            count = len(track["step"])
            series = {key: track.get(key, [math.nan] * count) for key in ROW_KEYS[2:]}
            for i, step in enumerate(track["step"]):
                row: dict[str, Any] = {"step": int(step), "layer": name}
                row.update({key: values[i] for key, values in series.items()})
                rows.append(row)
        rows.sort(key=lambda r: int(r["step"]))
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` as CSV; returns the path."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(ROW_KEYS))
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
