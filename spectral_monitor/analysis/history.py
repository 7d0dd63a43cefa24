"""``SpectralHistory``: the trajectories of a training run — per layer every field of
:class:`~spectral_monitor.analysis.report.LayerSpectrum` at every analysis, and the model
aggregates per analysis — kept in memory, checkpointable, exportable as rows or CSV.

The per-layer fields are taken from the dataclass itself (:data:`LAYER_KEYS`), so a field added to
``LayerSpectrum`` is kept, checkpointed and exported without an edit here."""

from __future__ import annotations

import csv
import math
from collections.abc import Collection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from spectral_monitor.analysis.report import ROW_FIELDS, LayerSpectrum, SpectralReport

__all__ = [
    "AGGREGATE_KEYS",
    "LAYER_KEYS",
    "SIGNAL_KEYS",
    "SpectralHistory",
    "log_growth",
    "rebound",
    "typed_value",
]

#: Aggregates kept per analysis (see SpectralReport.aggregates).
AGGREGATE_KEYS = ("alpha_mean", "alpha_hat", "alpha_min", "frac_alpha_below_2", "num_reliable")
#: Per-layer series kept per analysis: every scalar field of ``LayerSpectrum`` but its name
#: (``shape`` as ``"a x b"`` text, as in ``LayerSpectrum.to_row``).
LAYER_KEYS: tuple[str, ...] = tuple(key for key in ROW_FIELDS if key != "name")
#: The declared type of each field, as text (``"float"``, ``"str | None"``, ...).
_FIELD_TYPES = {f.name: str(f.type).replace(" | None", "") for f in fields(LayerSpectrum)}
_NUMERIC = ("float", "int", "bool")


def _stored(value: Any) -> float | str | None:
    """How the history keeps a field's value: numbers and flags as float (so that a series is a
    float array, ``reliable`` 1.0/0.0), text and None as they are, a shape as ``"a x b"``."""
    if isinstance(value, (bool, int, float, np.number)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value)
    return str(value)


def _missing(key: str) -> float | None:
    """The value of a field not known at a step (a history saved before the field existed)."""
    return math.nan if _FIELD_TYPES.get(key, "float") in _NUMERIC else None


def typed_value(key: str, value: Any) -> Any:
    """A kept value (float, text or None) or a value read from CSV text, as the field ``key`` of
    ``LayerSpectrum`` holds it: ``float`` fields as float (NaN when empty), ``int`` and ``bool``
    fields as int and bool (None when unknown), text fields as text or None. A key that is no
    field of this version's ``LayerSpectrum`` (a file written by a newer one) comes back as a
    float when it reads as a number, else as given.

    Raises:
        ValueError: a numeric field holds text that is not a number.
    """
    kind = _FIELD_TYPES.get(key)
    if value is None or value == "":
        return math.nan if kind == "float" else None
    if kind in _NUMERIC:
        number = float(value == "True") if value in ("True", "False") else float(value)
        if kind == "float":
            return number
        if not math.isfinite(number):
            return None
        return bool(number) if kind == "bool" else int(number)
    if kind is not None:
        return value if isinstance(value, str) else _stored(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


#: Per-layer signals beyond alpha kept per analysis (see docs/guide/signals.md).
SIGNAL_KEYS = ("num_spikes", "num_traps", "trap_excess", "erg_gap")


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
        layers: ``{layer: {"step": [...], key: [...] for key in LAYER_KEYS}}`` — ``"alpha"``,
            ``"alpha_lo"``, ``"alpha_hi"``, ``"reliable"`` (1.0/0.0), ``"lambda_max"``,
            ``"unreliable_reason"``, ... every scalar field of ``LayerSpectrum``; numbers as
            float, text as text; a skipped layer's alpha is NaN at that step.
        aggregates: ``{"step": [...], "alpha_mean": [...], ...}`` one entry per analysis.
    """

    layers: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
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
                track.setdefault(key, [_missing(key)] * len(track["step"]))
            track["step"].append(report.step)
            for key in LAYER_KEYS:
                track[key].append(_stored(getattr(layer, key)))
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
                if int(step) in column and isinstance(value, float):
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

    @property
    def columns(self) -> list[str]:
        """The columns of :meth:`to_rows`: ``step``, ``layer``, every key of :data:`LAYER_KEYS`,
        then any other series a restored state holds."""
        extra = {k: None for t in self.layers.values() for k in t if k not in LAYER_KEYS}
        extra.pop("step", None)
        return ["step", "layer", *LAYER_KEYS, *extra]

    def to_rows(self, steps: Collection[int] | None = None) -> list[dict[str, Any]]:
        """One row per (step, layer), ordered by step and then model order: ``step``, ``layer``
        and every per-layer field (:attr:`columns`), typed as in ``LayerSpectrum.to_row``
        (``reliable`` a bool, ``n_tail`` an int, ``unreliable_reason`` text or None).

        Args:
            steps: only the rows of these steps (None: all).
        """
        columns = self.columns[2:]
        wanted = None if steps is None else set(steps)
        rows: list[dict[str, Any]] = []
        for name, track in self.layers.items():
            for i, step in enumerate(track["step"]):
                if wanted is not None and step not in wanted:
                    continue
                row: dict[str, Any] = {"step": int(step), "layer": name}
                for key in columns:
                    series = track.get(key)
                    row[key] = typed_value(key, series[i] if series is not None else None)
                rows.append(row)
        rows.sort(key=lambda r: int(r["step"]))  # stable: model order within a step
        return rows

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` as CSV (header :attr:`columns`; NaN as ``nan``, None empty);
        returns the path. ``spectral_monitor.analysis.history_files.read_history_csv`` reads
        it back."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            self.write_csv(handle)
        return path

    def write_csv(self, handle: Any) -> None:
        """Write :meth:`to_rows` as CSV to an open text ``handle`` (opened with
        ``newline=""``)."""
        writer = csv.DictWriter(handle, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(self.to_rows())

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
