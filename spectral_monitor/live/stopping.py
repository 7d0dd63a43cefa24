"""Stop rules: when the spectra say a run over-regularises, and which layers say so.

A stop rule reads one analysis at a time (a :class:`Reading`: the step, the aggregates over
reliable layers, and every layer's alpha with its interval) and says whether to stop. Three kinds,
all evaluated on the same recorded runs by ``benchmarks/stop_study.py`` (README "Stopping"):

- :class:`ThresholdStopRule`: an aggregate (``alpha_mean`` or ``alpha_min``, reliable layers
  only) below a threshold for ``patience`` consecutive analyses;
- :class:`LayerStopRule`: one reliable layer's alpha (or the upper end of its interval) below a
  threshold for ``patience`` consecutive analyses — the HT-SR "a layer fell under 2" heuristic;
- :class:`DropStopRule`: ``alpha_mean`` below its minimum before ``start_step`` minus a margin for
  ``patience`` consecutive analyses — a trend, with no absolute threshold.

Lightning's ``EarlyStopping`` keeps counting ``patience`` even with ``stopping_threshold``, so a
plateau above the threshold can stop a run; these rules look at their own signal alone. An
analysis with no value (no reliable layer) neither counts nor resets a count. Every rule keeps the
:class:`Reading` that fired it, and its ``reason`` names the layers that drove the decision with
their alphas and intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from spectral_monitor.analysis.report import SpectralReport

__all__ = [
    "BOUNDS",
    "STOP_ON",
    "DropStopRule",
    "LayerReading",
    "LayerStopRule",
    "Reading",
    "StopRule",
    "ThresholdStopRule",
    "make_stop_rule",
]

#: What ``stop_on`` may name: an aggregate over reliable layers, any single reliable layer, or the
#: fall of alpha_mean from its level before ``start_step``.
STOP_ON = ("alpha_mean", "alpha_min", "layer", "alpha_mean_drop")
#: What is compared with the threshold: the fitted alpha, or the upper end of its interval (the
#: whole interval below the threshold).
BOUNDS = ("alpha", "alpha_hi")

#: Why ``stop_on="alpha_hat"`` is refused (README "Stopping").
ALPHA_HAT_REFUSAL = (
    "stop_on='alpha_hat' is refused: alpha_hat = mean of alpha * ln(lambda_max) depends on the "
    "eigenvalue scale, not on the shape of the spectrum. With normalize=True lambda_max < 1 at "
    "initialisation, so alpha_hat starts negative (median -7 to -58 on small MLPs) and any fixed "
    "threshold stops every run at its first analysis; with normalize=False it moves with the "
    "initialisation scale and width. Watch alpha_hat in TensorBoard, and stop on 'alpha_mean', "
    "'alpha_min', 'layer' or 'alpha_mean_drop'."
)


@dataclass(frozen=True)
class LayerReading:
    """One layer's alpha at one analysis: the estimate, its interval, whether it is reliable."""

    name: str
    alpha: float
    alpha_lo: float
    alpha_hi: float
    reliable: bool

    def describe(self) -> str:
        return f"{self.name} alpha {self.alpha:.3f} [{self.alpha_lo:.3f}, {self.alpha_hi:.3f}]"


@dataclass(frozen=True)
class Reading:
    """What a stop rule sees of one analysis (aggregates over reliable layers; NaN: none)."""

    step: int
    alpha_mean: float
    alpha_min: float
    layers: tuple[LayerReading, ...] = ()

    @classmethod
    def from_report(cls, report: SpectralReport) -> Reading:
        agg = report.aggregates
        layers = tuple(
            LayerReading(la.name, la.alpha, la.alpha_lo, la.alpha_hi, bool(la.reliable))
            for la in report.fitted
        )
        step = -1 if report.step is None else int(report.step)
        return cls(step, float(agg["alpha_mean"]), float(agg["alpha_min"]), layers)

    @property
    def reliable(self) -> list[LayerReading]:
        return [la for la in self.layers if la.reliable and math.isfinite(la.alpha)]

    def lowest(self, count: int = 3) -> list[LayerReading]:
        """The reliable layers with the lowest alpha, lowest first."""
        return sorted(self.reliable, key=lambda la: la.alpha)[:count]


def _as_reading(observed: SpectralReport | Reading) -> Reading:
    return observed if isinstance(observed, Reading) else Reading.from_report(observed)


@dataclass
class StopRule:
    """Common state: ``patience`` consecutive analyses at or after ``start_step`` must satisfy
    :meth:`_below`; then ``should_stop`` is True for good and ``reason`` says why."""

    threshold: float
    patience: int = 1
    start_step: int = 0
    bound: str = "alpha"
    consecutive: int = 0
    reason: str | None = None
    stop_step: int | None = None

    def update(self, observed: SpectralReport | Reading) -> bool:
        """Feed one analysis; returns whether the run should stop (locally, before reduction)."""
        if self.should_stop:
            return True
        reading = _as_reading(observed)
        if not self._observe(reading):
            return False
        if self.should_stop:
            self.stop_step = reading.step
            self.reason = self._explain(reading)
        return self.should_stop

    def _observe(self, reading: Reading) -> bool:
        """Update the count; False when the analysis does not count (too early, no value)."""
        if reading.step < self.start_step:
            return False
        below = self._below(reading)
        if below is None:
            return False
        self.consecutive = self.consecutive + 1 if below else 0
        return True

    def _below(self, reading: Reading) -> bool | None:
        raise NotImplementedError

    def _explain(self, reading: Reading) -> str:
        raise NotImplementedError

    def _layers_text(self, layers: list[LayerReading]) -> str:
        return "; ".join(la.describe() for la in layers) if layers else "no reliable layer"

    @property
    def should_stop(self) -> bool:
        return self.consecutive >= self.patience

    @property
    def level(self) -> float:
        """The value the signal is compared with now (NaN while not yet known)."""
        return self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "reason": self.reason, "stop_step": self.stop_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.reason = state.get("reason")
        self.stop_step = state.get("stop_step")


@dataclass
class ThresholdStopRule(StopRule):
    """``on`` (``"alpha_mean"`` or ``"alpha_min"``, over reliable layers) below ``threshold`` for
    ``patience`` consecutive analyses."""

    on: str = "alpha_mean"

    def _below(self, reading: Reading) -> bool | None:
        value = getattr(reading, self.on)
        return None if math.isnan(value) else value < self.threshold

    def _explain(self, reading: Reading) -> str:
        value = getattr(reading, self.on)
        return (
            f"{self.on} = {value:.4f} < stop_below = {self.threshold} for {self.consecutive} "
            f"consecutive analyses (last at step {reading.step}); lowest reliable layers: "
            f"{self._layers_text(reading.lowest())}"
        )


@dataclass
class LayerStopRule(StopRule):
    """One reliable layer's ``bound`` (its alpha, or ``alpha_hi``: its whole interval) below
    ``threshold`` at ``patience`` consecutive analyses of that layer. A layer that is unreliable
    at an analysis starts its count again."""

    counts: dict[str, int] = field(default_factory=dict)

    def _observe(self, reading: Reading) -> bool:
        if reading.step < self.start_step:
            return False
        counts = {}
        for la in reading.reliable:
            if getattr(la, self.bound) < self.threshold:
                counts[la.name] = self.counts.get(la.name, 0) + 1
        self.counts = counts
        self.consecutive = max(counts.values(), default=0)
        return True

    def _explain(self, reading: Reading) -> str:
        drivers = [la for la in reading.reliable if self.counts.get(la.name, 0) >= self.patience]
        what = "alpha" if self.bound == "alpha" else "the whole interval (alpha_hi)"
        return (
            f"{what} of {len(drivers)} reliable layer(s) < stop_below = {self.threshold} for "
            f"{self.patience} consecutive analyses up to step {reading.step}: "
            f"{self._layers_text(drivers)}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.counts = {str(k): int(v) for k, v in state.get("counts", {}).items()}


@dataclass
class DropStopRule(StopRule):
    """``alpha_mean`` below (its minimum over the analyses before ``start_step``) − ``margin`` for
    ``patience`` consecutive analyses. ``threshold`` is unused (the level is the run's own);
    without an analysis before ``start_step`` the first one after it sets the reference."""

    margin: float = 0.5
    reference: float = math.nan

    def _observe(self, reading: Reading) -> bool:
        value = reading.alpha_mean
        if math.isnan(value):
            return False
        if reading.step < self.start_step or math.isnan(self.reference):
            self.reference = value if math.isnan(self.reference) else min(self.reference, value)
            return False
        self.consecutive = self.consecutive + 1 if value < self.reference - self.margin else 0
        return True

    @property
    def level(self) -> float:
        return self.reference - self.margin

    def _explain(self, reading: Reading) -> str:
        return (
            f"alpha_mean = {reading.alpha_mean:.3f} fell below its level before step "
            f"{self.start_step} ({self.reference:.3f}) minus stop_margin = {self.margin} for "
            f"{self.consecutive} consecutive analyses up to step {reading.step}; lowest reliable "
            f"layers: {self._layers_text(reading.lowest())}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reference = float(state.get("reference", math.nan))


def make_stop_rule(
    stop_below: float,
    stop_on: str = "alpha_mean",
    patience: int = 1,
    start_step: int = 0,
    bound: str = "alpha",
    margin: float = 0.5,
) -> StopRule:
    """The rule named by ``stop_on`` (see :data:`STOP_ON`); arguments are checked by the caller."""
    if stop_on == "layer":
        return LayerStopRule(stop_below, patience, start_step, bound)
    if stop_on == "alpha_mean_drop":
        return DropStopRule(stop_below, patience, start_step, bound, margin=margin)
    return ThresholdStopRule(stop_below, patience, start_step, bound, on=stop_on)
