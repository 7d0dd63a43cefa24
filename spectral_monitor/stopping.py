"""The stop rule: stop when an aggregate stays under a threshold for ``patience`` analyses.

Lightning's ``EarlyStopping`` keeps counting ``patience`` even with ``stopping_threshold``, so a
plateau above the threshold can stop a run; this rule looks at the threshold alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from spectral_monitor.report import SpectralReport

__all__ = ["STOP_ON", "ThresholdStopRule"]

#: Aggregates the rule can watch.
STOP_ON = ("alpha_mean", "alpha_hat", "alpha_min")


@dataclass
class ThresholdStopRule:
    """Counts consecutive analyses at or after ``start_step`` whose ``on`` aggregate is below
    ``threshold``; ``should_stop`` once the count reaches ``patience``.

    An analysis with no value (no layer could be fitted) neither counts nor resets the count.
    """

    threshold: float
    on: str = "alpha_mean"
    patience: int = 1
    start_step: int = 0
    consecutive: int = 0
    reason: str | None = None

    def update(self, report: SpectralReport) -> bool:
        """Feed one analysis; returns whether the run should stop (locally, before reduction)."""
        if report.step is None or report.step < self.start_step:
            return self.should_stop
        value = float(report.aggregates[self.on])
        if math.isnan(value):
            return self.should_stop
        if value < self.threshold:
            self.consecutive += 1
        else:
            self.consecutive = 0
        if self.should_stop and self.reason is None:
            self.reason = (
                f"{self.on} = {value:.4f} < stop_below = {self.threshold} for "
                f"{self.consecutive} consecutive analyses (last at step {report.step})"
            )
        return self.should_stop

    @property
    def should_stop(self) -> bool:
        return self.consecutive >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"consecutive": self.consecutive, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.reason = state.get("reason")
