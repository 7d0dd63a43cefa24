"""``LayerSpectrum`` and ``SpectralReport``: the result of one analysis, as rows, CSV, JSON or a
DataFrame, and as a printable table."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from spectral_monitor.spectra.metrics import aggregate_metrics
from spectral_monitor.spectra.powerlaw_fit import PowerLawFit
from spectral_monitor.weights.module_types import alpha_by_type

__all__ = ["ROW_FIELDS", "SIGNAL_SCALARS", "LayerSpectrum", "SpectralReport"]

#: Per-layer signals beyond alpha logged as scalars (``{prefix}/<signal>/<layer>``).
SIGNAL_SCALARS = ("num_spikes", "num_traps", "trap_excess", "erg_gap")


@dataclass
class LayerSpectrum:
    """The spectrum of one layer and everything measured on it.

    Eigenvalue-valued fields (``lambda_max``, ``xmin``) are in the convention of the report that
    holds the layer (``SpectralReport.normalize`` and ``.conv2d``). Float fields are NaN, never a
    made-up number, when the layer is skipped or has no fit; ``skipped`` then says why.

    ``alpha_lo``/``alpha_hi`` bound alpha at the analysis' confidence level. ``reliable`` says
    whether the fit can be trusted (:mod:`spectral_monitor.spectra.reliability`); when it is False,
    ``unreliable_reason`` says why (for a skipped layer, the skip reason), ``verdict`` is
    ``"unreliable"`` and the layer enters no aggregate. Its alpha is still reported: it is data.

    Signals beyond alpha (docs/guide/signals.md): ``num_spikes`` (eigenvalues above the
    Marchenko–Pastur edge of the entries' variance plus a Tracy–Widom margin), ``num_traps`` and
    ``trap_excess`` (the same for the element-wise shuffled weight; -1/NaN when traps are off),
    the entry statistics that predict traps (``mean_shift_ratio`` = |mean|·(rows·cols)^¼/std,
    ``max_entry_ratio`` = max|w|/std, ``excess_kurtosis``) and SETOL's ``erg_gap``. Integer
    signals are -1 when not computed.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    Q: float = math.nan
    num_evals: int = 0
    lambda_max: float = math.nan
    alpha: float = math.nan
    xmin: float = math.nan
    D: float = math.nan
    sigma: float = math.nan
    n_tail: int = 0
    alpha_lo: float = math.nan
    alpha_hi: float = math.nan
    num_fingers: int = 0
    reliable: bool = False
    unreliable_reason: str | None = None
    alpha_weighted: float = math.nan
    log_spectral_norm: float = math.nan
    log_norm: float = math.nan
    log_alpha_norm: float = math.nan
    stable_rank: float = math.nan
    num_spikes: int = -1
    num_traps: int = -1
    trap_excess: float = math.nan
    mean_shift_ratio: float = math.nan
    max_entry_ratio: float = math.nan
    excess_kurtosis: float = math.nan
    erg_gap: float = math.nan
    verdict: str = "skipped"
    skipped: str | None = None
    evals: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def fit(self) -> PowerLawFit:
        """The layer's power-law fit as a :class:`PowerLawFit` (failed when skipped)."""
        if self.skipped is not None or not math.isfinite(self.alpha):
            return PowerLawFit.failed(self.skipped or "no fit")
        return PowerLawFit(
            self.alpha,
            self.xmin,
            self.D,
            self.sigma,
            self.n_tail,
            self.num_evals,
            alpha_lo=self.alpha_lo,
            alpha_hi=self.alpha_hi,
            num_fingers=self.num_fingers,
        )

    def to_row(self) -> dict[str, Any]:
        """The scalar fields as a dict (``shape`` as ``"a x b"``, no eigenvalues)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "evals"}
        row["shape"] = "x".join(str(s) for s in self.shape)
        return row


ROW_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LayerSpectrum) if f.name != "evals")


@dataclass
class SpectralReport:
    """One analysis of one model at one moment.

    Attributes:
        layers: one :class:`LayerSpectrum` per selected layer, in ``named_modules()`` order.
        conv2d: ``"flatten"`` or ``"slices"``, how Conv2d weights became matrices.
        normalize: True if eigenvalues were divided by the weight's number of rows.
        precision: compute precision of the eigensolver.
        step: the training step of the weights (None outside training).
        seconds: wall-clock seconds the analysis took.
        memory_bytes: the most memory the analysis held beyond the model, in bytes, on the
            compute device: the weight snapshot, the largest solver call's Grams and workspace,
            the upcast chunk and the fit's tile (an account of what it allocates; on CUDA
            ``benchmarks/gpu_check.py`` compares it with the allocator's peak). 0 if unknown.
    """

    layers: list[LayerSpectrum]
    conv2d: str = "flatten"
    normalize: bool = True
    precision: str = "float32"
    step: int | None = None
    seconds: float = math.nan
    memory_bytes: int = 0

    @property
    def fitted(self) -> list[LayerSpectrum]:
        """Layers with a valid fit."""
        return [la for la in self.layers if la.skipped is None and math.isfinite(la.alpha)]

    @property
    def reliable(self) -> list[LayerSpectrum]:
        """Layers whose fit can be trusted: the only ones that enter aggregates and verdicts."""
        return [la for la in self.fitted if la.reliable]

    @property
    def skipped(self) -> list[LayerSpectrum]:
        """Layers without a fit (each with its reason)."""
        return [la for la in self.layers if la.skipped is not None]

    @property
    def aggregates(self) -> dict[str, float]:
        """Over the reliable layers: ``alpha_mean``, ``alpha_hat``, ``alpha_min``,
        ``frac_alpha_below_2`` (see :func:`spectral_monitor.spectra.metrics.aggregate_metrics`); and
        ``num_reliable``, ``num_fitted`` (layers with a fit, reliable or not), ``num_layers``,
        ``num_skipped``."""
        reliable = self.reliable
        agg: dict[str, float] = aggregate_metrics(
            [la.alpha for la in reliable], [la.lambda_max for la in reliable]
        )
        agg["num_reliable"] = agg.pop("num_fitted")
        agg["num_fitted"] = len(self.fitted)
        agg["num_layers"] = len(self.layers)
        agg["num_skipped"] = len(self.skipped)
        return agg

    @property
    def alpha_mean(self) -> float:
        return self.aggregates["alpha_mean"]

    @property
    def alpha_hat(self) -> float:
        return self.aggregates["alpha_hat"]

    def scalars(self, prefix: str = "spectral") -> dict[str, float]:
        """Scalars to log, model curves under ``{prefix}/`` and housekeeping under
        ``{prefix}_meta/`` (README "TensorBoard" lists every tag):

        - ``{prefix}/alpha/<layer>``, ``{prefix}/alpha_lo/<layer>``, ``{prefix}/alpha_hi/<layer>``
          (the interval) and ``{prefix}/lambda_max/<layer>`` for every fitted layer, reliable or
          not (its alpha is data);
        - ``{prefix}/num_spikes/<layer>``, ``num_traps``, ``trap_excess``, ``erg_gap`` for every
          layer where they were computed (:data:`SIGNAL_SCALARS`);
        - over reliable layers only: ``{prefix}/alpha_mean``, ``alpha_min``, ``alpha_hat``,
          ``frac_alpha_below_2``, and ``{prefix}/num_reliable``;
        - ``{prefix}/alpha_mean_minus_std``, ``alpha_mean_plus_std``: alpha_mean ± the standard
          deviation of alpha over the reliable layers (a margin chart draws the band);
        - ``{prefix}/alpha_by_type/<type>``: mean alpha of the reliable layers per module type
          shared by >= 2 layers (see :mod:`spectral_monitor.weights.module_types`);
        - ``{prefix}_meta/layers_skipped``, ``analysis_seconds``, ``analysis_memory_mb``.

        NaN values are left out (loggers draw them as gaps or reject them)."""
        meta = f"{prefix}_meta"
        out: dict[str, float] = {}
        for la in self.fitted:
            out[f"{prefix}/alpha/{la.name}"] = float(la.alpha)
            out[f"{prefix}/alpha_lo/{la.name}"] = float(la.alpha_lo)
            out[f"{prefix}/alpha_hi/{la.name}"] = float(la.alpha_hi)
            out[f"{prefix}/lambda_max/{la.name}"] = float(la.lambda_max)
        for la in self.layers:
            for key in SIGNAL_SCALARS:
                value = float(getattr(la, key))
                if not (key in ("num_spikes", "num_traps") and value < 0):
                    out[f"{prefix}/{key}/{la.name}"] = value
        agg = self.aggregates
        for key in ("alpha_mean", "alpha_min", "alpha_hat", "frac_alpha_below_2", "num_reliable"):
            out[f"{prefix}/{key}"] = float(agg[key])
        reliable = self.reliable
        alphas = np.array([la.alpha for la in reliable], dtype=np.float64)
        if alphas.size:
            spread = float(alphas.std())
            out[f"{prefix}/alpha_mean_minus_std"] = float(agg["alpha_mean"]) - spread
            out[f"{prefix}/alpha_mean_plus_std"] = float(agg["alpha_mean"]) + spread
        trusted = {la.name for la in reliable}
        by_type = alpha_by_type(
            [la.name for la in self.layers],
            [la.alpha if la.name in trusted else math.nan for la in self.layers],
        )
        for kind, mean in by_type.items():
            out[f"{prefix}/alpha_by_type/{kind}"] = mean
        out[f"{meta}/layers_skipped"] = float(agg["num_skipped"])
        out[f"{meta}/analysis_seconds"] = float(self.seconds)
        if self.memory_bytes:
            out[f"{meta}/analysis_memory_mb"] = self.memory_bytes / 2**20
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def layer(self, name: str) -> LayerSpectrum:
        """The layer called ``name``; KeyError if there is none."""
        for la in self.layers:
            if la.name == name:
                return la
        raise KeyError(name)

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per layer, with the report's step and conventions in every row."""
        extra = {"step": self.step, "conv2d": self.conv2d, "normalize": self.normalize}
        return [{**la.to_row(), **extra} for la in self.layers]

    def to_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_rows` as CSV (header always written); returns the path."""
        path = Path(path)
        columns = [*ROW_FIELDS, "step", "conv2d", "normalize"]
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.to_rows())
        return path

    def to_dict(self) -> dict[str, Any]:
        """Rows and aggregates as a JSON-ready dict (NaN becomes None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return {
            "step": self.step,
            "conv2d": self.conv2d,
            "normalize": self.normalize,
            "precision": self.precision,
            "seconds": clean(self.seconds),
            "memory_bytes": self.memory_bytes,
            "aggregates": {k: clean(v) for k, v in self.aggregates.items()},
            "layers": [{k: clean(v) for k, v in row.items()} for row in self.to_rows()],
        }

    def to_json(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    def to_dataframe(self) -> Any:
        """A pandas DataFrame of :meth:`to_rows`. Raises ImportError if pandas is missing."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_dataframe() needs pandas: pip install pandas") from error
        return pd.DataFrame(self.to_rows())

    def format_table(self, width: int = 100) -> str:
        """An aligned text table of the layers and the aggregates, at most ``width`` columns."""
        # spk/trp: eigenvalues above the MP edge (spikes) and traps of the shuffled weight.
        header = f"{'layer':<22} {'shape':>11} {'alpha':>6} {'interval':>13}"
        header += f" {'lambda_max':>9} {'tail':>5} {'D':>5} {'spk':>3} {'trp':>3}  verdict"
        lines = [header, "-" * min(width, len(header) + 13)]
        for la in self.layers:
            name = la.name if len(la.name) <= 22 else "…" + la.name[-21:]
            shape = "x".join(str(s) for s in la.shape)
            if la.skipped is not None:
                lines.append(f"{name:<22} {shape:>11}  skipped ({la.kind}): {la.skipped}")
                continue
            interval = f"[{la.alpha_lo:.2f}, {la.alpha_hi:.2f}]"
            lines.append(
                f"{name:<22} {shape:>11} {la.alpha:>6.3g} {interval:>13}"
                f" {la.lambda_max:>9.3g} {la.n_tail:>5d} {la.D:>5.3f}"
                f" {_count(la.num_spikes):>3} {_count(la.num_traps):>3}  {la.verdict}"
            )
        agg = self.aggregates
        lines.append(
            f"alpha_mean={agg['alpha_mean']:.3f}  alpha_hat={agg['alpha_hat']:.3f}  "
            f"frac_alpha<2={agg['frac_alpha_below_2']:.2f}  layers={agg['num_layers']} "
            f"(reliable {agg['num_reliable']}, skipped {agg['num_skipped']})"
        )
        return "\n".join(line[:width] for line in lines)

    def __str__(self) -> str:
        return self.format_table()


def _count(value: int) -> str:
    """A count for the table: "–" when it was not computed (-1)."""
    return "–" if value < 0 else str(value)
