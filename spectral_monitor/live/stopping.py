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
from spectral_monitor.utilities.validation import check_choice, check_int, check_number

__all__ = [
    "BOUNDS",
    "DEFAULT_MARGIN",
    "DEFAULT_PATIENCE",
    "OVERFIT_GROWTH",
    "STOP_ON",
    "THRESHOLD_RULES",
    "Alarm",
    "AllOfStopRule",
    "DropStopRule",
    "LayerReading",
    "LayerSignalStopRule",
    "LayerStopRule",
    "Reading",
    "ReboundStopRule",
    "StopRule",
    "ThresholdStopRule",
    "TrapAlphaStopRule",
    "TrapStopRule",
    "make_stop_rule",
    "overfit_rule",
]

#: The rules that compare alpha with ``stop_below``: an aggregate over reliable layers, or any
#: single reliable layer.
THRESHOLD_RULES = ("alpha_mean", "alpha_min", "layer")
#: What ``stop_on`` may name: the over-fitting detector ``benchmarks/stop_study_v2.py`` chose,
#: the fall of alpha_mean from its level before ``start_step``, or a threshold rule.
STOP_ON = ("overfit", "alpha_mean_drop", *THRESHOLD_RULES)
#: ``stop_on="overfit"``: the largest lambda_max of any reliable layer at least this many times
#: its value at the layer's first analysis from ``start_step`` on, for ``DEFAULT_PATIENCE``
#: analyses (``lmax_growth 4 p3``, chosen by ``benchmarks/stop_study_v2.py`` on its development
#: runs: 0/18 healthy and 6/8 over-fitting runs stopped; held-out: 0/8 and 4/5).
OVERFIT_GROWTH = 4.0
#: What is compared with the threshold: the fitted alpha, or the upper end of its interval (the
#: whole interval below the threshold).
BOUNDS = ("alpha", "alpha_hi")
#: Consecutive analyses a rule needs when ``stop_patience`` is not given.
DEFAULT_PATIENCE = 3
#: How far alpha_mean must fall for ``"alpha_mean_drop"`` when ``stop_margin`` is not given.
DEFAULT_MARGIN = 1.0

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
    """One layer at one analysis: alpha, its interval, whether it is reliable, and the signals
    beyond alpha (NaN / None where the analysis did not compute them): ``lambda_max`` (the
    report's convention), ``num_traps`` and ``trap_excess`` (eigenvalues of the element-wise
    shuffled W above its Marchenko–Pastur edge, and the largest one's excess over the edge), and
    the entry statistics that predict traps: ``mean_shift`` (|mean|·(N·M)^¼/std), ``max_ratio``
    (max|w|/std), ``kurtosis`` (excess kurtosis)."""

    name: str
    alpha: float
    alpha_lo: float
    alpha_hi: float
    reliable: bool
    lambda_max: float = math.nan
    num_traps: int | None = None
    trap_excess: float = math.nan
    mean_shift: float = math.nan
    max_ratio: float = math.nan
    kurtosis: float = math.nan

    def describe(self) -> str:
        text = f"{self.name} alpha {self.alpha:.3f} [{self.alpha_lo:.3f}, {self.alpha_hi:.3f}]"
        if self.num_traps:
            text += f", {self.num_traps} trap(s)"
        return text


#: Where each :class:`LayerReading` signal is read from a report's layer row (attribute names).
REPORT_FIELDS = {
    "lambda_max": "lambda_max",
    "num_traps": "num_traps",
    "trap_excess": "trap_excess",
    "mean_shift": "mean_shift_ratio",
    "max_ratio": "max_entry_ratio",
    "kurtosis": "excess_kurtosis",
}


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
            LayerReading(
                la.name,
                la.alpha,
                la.alpha_lo,
                la.alpha_hi,
                bool(la.reliable),
                float(getattr(la, REPORT_FIELDS["lambda_max"], math.nan)),
                _optional_int(getattr(la, REPORT_FIELDS["num_traps"], None)),
                float(getattr(la, REPORT_FIELDS["trap_excess"], math.nan)),
                float(getattr(la, REPORT_FIELDS["mean_shift"], math.nan)),
                float(getattr(la, REPORT_FIELDS["max_ratio"], math.nan)),
                float(getattr(la, REPORT_FIELDS["kurtosis"], math.nan)),
            )
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

    @property
    def num_traps(self) -> int | None:
        """Traps summed over the reliable layers (None: no reliable layer, or traps not
        computed)."""
        counts = [la.num_traps for la in self.reliable]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)


def _optional_int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    # The report says "not computed" with -1 (traps off, a skipped layer).
    return int(number) if math.isfinite(number) and number >= 0 else None


@dataclass(frozen=True)
class Alarm:
    """Evidence weaker than a stop needs, at one analysis: its step and what was seen."""

    step: int
    message: str


def _as_reading(observed: SpectralReport | Reading) -> Reading:
    return observed if isinstance(observed, Reading) else Reading.from_report(observed)


@dataclass
class StopRule:
    """Common state: ``patience`` consecutive analyses at or after ``start_step`` must satisfy
    :meth:`_holds`; then ``should_stop`` is True for good and ``reason`` says why.

    ``threshold`` is the level the rule's signal is compared with (NaN where the level is the
    run's own, as for the drop rule). ``alarm`` is set, for the one update that raised it, when
    the condition starts to hold but has not yet held for ``patience`` analyses: evidence weaker
    than a stop needs."""

    threshold: float
    patience: int = 1
    start_step: int = 0
    bound: str = "alpha"
    consecutive: int = 0
    reason: str | None = None
    stop_step: int | None = None
    alarm: str | None = field(default=None, compare=False)

    def update(self, observed: SpectralReport | Reading) -> bool:
        """Feed one analysis; returns whether the run should stop (locally, before reduction)."""
        self.alarm = None
        if self.should_stop:
            return True
        reading = _as_reading(observed)
        before = self.consecutive
        if not self._observe(reading):
            return False
        if self.should_stop:
            self.stop_step = reading.step
            self.reason = self._explain(reading)
        elif before == 0 and self.consecutive > 0:
            self.alarm = (
                f"{self._explain(reading)} — 1 of the {self.patience} consecutive analyses a "
                "stop needs"
            )
        return self.should_stop

    def _observe(self, reading: Reading) -> bool:
        """Update the count; False when the analysis does not count (too early, no value)."""
        if reading.step < self.start_step:
            return False
        holds = self._holds(reading)
        if holds is None:
            return False
        self.consecutive = self.consecutive + 1 if holds else 0
        return True

    def _holds(self, reading: Reading) -> bool | None:
        """Whether the condition holds at this analysis (None: no value, the analysis does not
        count)."""
        raise NotImplementedError

    def _explain(self, reading: Reading) -> str:
        raise NotImplementedError

    def _layers_text(self, layers: list[LayerReading]) -> str:
        return "; ".join(la.describe() for la in layers) if layers else "no reliable layer"

    @property
    def needs_traps(self) -> bool:
        """Whether the rule reads correlation traps (the analysis must compute them)."""
        return False

    @property
    def satisfied(self) -> bool:
        """The condition has held for ``patience`` consecutive analyses up to the last one."""
        return self.consecutive >= self.patience

    @property
    def should_stop(self) -> bool:
        return self.satisfied

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

    def _holds(self, reading: Reading) -> bool | None:
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
        drivers = drivers or [la for la in reading.reliable if la.name in self.counts]
        what = "alpha" if self.bound == "alpha" else "the whole interval (alpha_hi)"
        return (
            f"{what} of {len(drivers)} reliable layer(s) < stop_below = {self.threshold} for "
            f"{self.consecutive} consecutive analyses up to step {reading.step}: "
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
    ``patience`` consecutive analyses. ``threshold`` is unused (NaN: the level is the run's own);
    without an analysis before ``start_step`` the first one after it sets the reference."""

    margin: float = 1.0
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


@dataclass
class ReboundStopRule(StopRule):
    """``alpha_mean`` at least ``threshold`` above its running minimum (over the analyses from
    ``start_step`` on) for ``patience`` consecutive analyses, with that minimum below ``floor``
    (``inf``: any). Label-noise runs bottom out and climb back while held-out accuracy falls
    (``benchmarks/stop_study.py``)."""

    floor: float = math.inf
    minimum: float = math.nan

    def _holds(self, reading: Reading) -> bool | None:
        value = reading.alpha_mean
        if math.isnan(value):
            return None
        self.minimum = value if math.isnan(self.minimum) else min(self.minimum, value)
        return value - self.minimum >= self.threshold and self.minimum < self.floor

    @property
    def level(self) -> float:
        return self.minimum + self.threshold

    def _explain(self, reading: Reading) -> str:
        floor = "" if math.isinf(self.floor) else f" (a minimum below {self.floor})"
        return (
            f"alpha_mean = {reading.alpha_mean:.3f} rebounded >= {self.threshold} above its "
            f"minimum since step {self.start_step} ({self.minimum:.3f}){floor} for "
            f"{self.consecutive} consecutive analyses up to step {reading.step}; lowest reliable "
            f"layers: {self._layers_text(reading.lowest())}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "minimum": self.minimum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.minimum = float(state.get("minimum", math.nan))


@dataclass
class TrapStopRule(StopRule):
    """Correlation traps summed over reliable layers >= ``threshold`` for ``patience``
    consecutive analyses; with ``new``: traps beyond their count at the first analysis from
    ``start_step`` on (traps that appeared during training)."""

    new: bool = False
    reference: float = math.nan

    @property
    def needs_traps(self) -> bool:
        return True

    def _count(self, reading: Reading) -> float | None:
        total = reading.num_traps
        if total is None:
            return None
        if not self.new:
            return float(total)
        if math.isnan(self.reference):
            self.reference = float(total)
        return total - self.reference

    def _holds(self, reading: Reading) -> bool | None:
        count = self._count(reading)
        return None if count is None else count >= self.threshold

    def _explain(self, reading: Reading) -> str:
        layers = [la for la in reading.reliable if la.num_traps]
        what = "new correlation traps" if self.new else "correlation traps"
        return (
            f"{what} in reliable layers >= {self.threshold:g} for {self.consecutive} "
            f"consecutive analyses up to step {reading.step}: {self._layers_text(layers)}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "reference": self.reference}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reference = float(state.get("reference", math.nan))


@dataclass
class LayerSignalStopRule(StopRule):
    """The largest ``signal`` (a :class:`LayerReading` field, e.g. ``"trap_excess"``) over
    reliable layers >= ``threshold`` for ``patience`` consecutive analyses; with ``growth``, the
    largest ratio of a layer's value to its value at its first reliable analysis from
    ``start_step`` on (e.g. lambda_max growth)."""

    signal: str = "trap_excess"
    growth: bool = False
    references: dict[str, float] = field(default_factory=dict)

    @property
    def needs_traps(self) -> bool:
        return self.signal == "trap_excess"

    top: tuple[str, float] | None = field(default=None, compare=False)

    def _value(self, reading: Reading) -> float | None:
        values = []
        for la in reading.reliable:
            value = float(getattr(la, self.signal))
            if not math.isfinite(value):
                continue
            if self.growth:
                reference = self.references.setdefault(la.name, value)
                if reference <= 0:
                    continue
                value = value / reference
            values.append((value, la.name))
        self.top = None if not values else (max(values)[1], max(values)[0])
        return self.top[1] if self.top else None

    def _holds(self, reading: Reading) -> bool | None:
        value = self._value(reading)
        return None if value is None else value >= self.threshold

    def _explain(self, reading: Reading) -> str:
        what = f"{self.signal} growth" if self.growth else self.signal
        top = "" if self.top is None else f" (layer {self.top[0]}: {self.top[1]:.2f})"
        return (
            f"the largest {what} over reliable layers{top} >= {self.threshold:g} for "
            f"{self.consecutive} consecutive analyses up to step {reading.step}; lowest reliable "
            f"layers: {self._layers_text(reading.lowest())}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "references": dict(self.references)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.references = {str(k): float(v) for k, v in state.get("references", {}).items()}


@dataclass
class TrapAlphaStopRule(StopRule):
    """One reliable layer with a correlation trap and alpha < ``threshold`` for ``patience``
    consecutive analyses (the anti-grokking signature of arXiv 2506.04434)."""

    @property
    def needs_traps(self) -> bool:
        return True

    def _holds(self, reading: Reading) -> bool | None:
        layers = reading.reliable
        if not layers or any(la.num_traps is None for la in layers):
            return None
        return any((la.num_traps or 0) > 0 and la.alpha < self.threshold for la in layers)

    def _explain(self, reading: Reading) -> str:
        layers = [la for la in reading.reliable if la.num_traps and la.alpha < self.threshold]
        return (
            f"reliable layer(s) with a correlation trap and alpha < {self.threshold:g} for "
            f"{self.consecutive} consecutive analyses up to step {reading.step}: "
            f"{self._layers_text(layers)}"
        )


@dataclass
class AllOfStopRule(StopRule):
    """Every rule in ``parts`` satisfied (each for its own patience) at the same analysis, for
    ``patience`` consecutive analyses. ``threshold`` is unused (NaN). Each part counts from its
    own ``start_step``."""

    parts: tuple[StopRule, ...] = ()

    @property
    def needs_traps(self) -> bool:
        return any(part.needs_traps for part in self.parts)

    def _observe(self, reading: Reading) -> bool:
        if reading.step < self.start_step:
            for part in self.parts:
                part._observe(reading)
            return False
        for part in self.parts:
            part._observe(reading)
        self.consecutive = self.consecutive + 1 if all(p.satisfied for p in self.parts) else 0
        return True

    def update(self, observed: SpectralReport | Reading) -> bool:
        self.alarm = None
        if self.should_stop:
            return True
        reading = _as_reading(observed)
        held = [p.satisfied for p in self.parts]
        if not self._observe(reading):
            return False
        if self.should_stop:
            self.stop_step = reading.step
            self.reason = self._explain(reading)
        else:
            # Weaker evidence: a part became satisfied while the others are not.
            raised = [p for p, was in zip(self.parts, held, strict=True) if p.satisfied and not was]
            if raised:
                self.alarm = (
                    "; ".join(p._explain(reading) for p in raised)
                    + " — without the other condition(s) a stop needs"
                )
        return self.should_stop

    def _explain(self, reading: Reading) -> str:
        return " and ".join(part._explain(reading) for part in self.parts)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        states = list(state.get("parts", []))
        for k, part in enumerate(self.parts):
            part.load_state_dict(states[k] if k < len(states) else {})


def make_stop_rule(
    stop_on: str | None,
    stop_below: float | None = None,
    stop_patience: int | None = None,
    start_step: int = 500,
    stop_bound: str | None = None,
    stop_margin: float | None = None,
) -> StopRule | None:
    """The rule the stop options name, checked: None (no stopping) when ``stop_on`` is None.

    Every value given is used, or refused: ``stop_below`` is the threshold of the threshold rules
    (:data:`THRESHOLD_RULES`) and required there, and a ValueError names both arguments when it
    comes with any other rule; ``stop_bound`` belongs to ``"layer"``, ``stop_margin`` to
    ``"alpha_mean_drop"``; without a rule, none of them nor ``stop_patience`` may be set.

    Raises:
        ValueError: an argument is invalid or unused (the message names it and ``stop_on``).
    """
    check_int("start_step", start_step, 0)
    check_int("stop_patience", stop_patience, 1, allow_none=True)
    given = {
        "stop_below": stop_below,
        "stop_patience": stop_patience,
        "stop_bound": stop_bound,
        "stop_margin": stop_margin,
    }
    if stop_on is None:
        for name, value in given.items():
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is set but stop_on=None (no stop rule) would ignore it: "
                    f"name a rule, e.g. stop_on='overfit', or "
                    f"stop_on='alpha_mean' with stop_below=2.0"
                )
        return None
    if stop_on == "alpha_hat":
        raise ValueError(ALPHA_HAT_REFUSAL)
    check_choice("stop_on", stop_on, STOP_ON)
    if stop_on in THRESHOLD_RULES:
        if stop_below is None:
            raise ValueError(
                f"stop_on={stop_on!r} is a threshold rule and needs stop_below (the alpha under "
                "which it stops, e.g. 2.0); got stop_below=None"
            )
        # alpha > 1 always: a threshold at or under 1 could never fire.
        check_number("stop_below", stop_below, above=1.0)
    elif stop_below is not None:
        raise ValueError(
            f"stop_below={stop_below!r} is not used by stop_on={stop_on!r} (only the threshold "
            f"rules {THRESHOLD_RULES} take a threshold): drop stop_below or pick one of those"
        )
    if stop_bound is not None:
        if stop_on != "layer":
            raise ValueError(
                f"stop_bound={stop_bound!r} is used only by stop_on='layer', not by "
                f"stop_on={stop_on!r}"
            )
        check_choice("stop_bound", stop_bound, BOUNDS)
    if stop_margin is not None:
        if stop_on != "alpha_mean_drop":
            raise ValueError(
                f"stop_margin={stop_margin!r} is used only by stop_on='alpha_mean_drop', not by "
                f"stop_on={stop_on!r}"
            )
        check_number("stop_margin", stop_margin, above=0.0)
    patience = DEFAULT_PATIENCE if stop_patience is None else stop_patience
    if stop_on == "overfit":
        return overfit_rule(patience, start_step)
    if stop_on == "alpha_mean_drop":
        margin = DEFAULT_MARGIN if stop_margin is None else float(stop_margin)
        return DropStopRule(math.nan, patience, start_step, margin=margin)
    threshold = float(stop_below)  # type: ignore[arg-type]
    if stop_on == "layer":
        return LayerStopRule(threshold, patience, start_step, stop_bound or "alpha")
    return ThresholdStopRule(threshold, patience, start_step, on=stop_on)


def overfit_rule(patience: int = DEFAULT_PATIENCE, start_step: int = 500) -> StopRule:
    """``stop_on="overfit"``: stop once some reliable layer's lambda_max has grown to
    :data:`OVERFIT_GROWTH` times its value at that layer's first analysis from ``start_step`` on,
    at ``patience`` consecutive analyses.

    Chosen by ``benchmarks/stop_study_v2.py`` (analyses every 50 steps, ``start_step`` 500) on
    its development runs, then measured on held-out runs (docs/guide/stopping.md): it stopped no
    healthy run of either set and most label-noise runs, but late — long after held-out accuracy
    had peaked. It catches memorisation that keeps growing the top of a spectrum; it misses
    over-fitting that starts before ``start_step`` and shows little lambda_max growth.
    """
    return LayerSignalStopRule(
        OVERFIT_GROWTH, patience, start_step, signal="lambda_max", growth=True
    )
