"""Factor ramp: the per-layer factors a balancer applies, moved from the last report's values
to the next report's values over ``ramp_steps`` optimizer steps.

A small stateful record with its own ``state_dict`` (the model is ``ThresholdStopRule``): the
balancer asks it for the factors at a step and writes them into the optimizer; the ramp itself
knows nothing of optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["FactorRamp"]


@dataclass
class FactorRamp:
    """Factors per analysed layer name, ramped linearly toward a goal.

    Args:
        ramp_steps: optimizer steps over which a new goal is reached (0: at once).
    """

    ramp_steps: int = 0
    #: The factor now applied, per analysed layer name.
    factors: dict[str, float] = field(default_factory=dict)
    start: dict[str, float] = field(default_factory=dict)  # factors when the goal was set
    goal: dict[str, float] = field(default_factory=dict)  # factors the last report asks for
    ramp_from: int = 0  # optimizer step at which the ramp started
    report_step: int | None = None  # step of the report the goal comes from

    def reset(self, names: list[str]) -> None:
        """A new run: every layer starts at factor 1."""
        self.factors, self.start, self.goal = {}, {}, {}
        self.report_step, self.ramp_from = None, 0
        self.add(names)

    def add(self, names: list[str]) -> None:
        """Layers without a factor yet start at 1 (a resumed run keeps its own)."""
        for name in names:
            self.factors.setdefault(name, 1.0)

    def set_goal(self, goal: dict[str, float], report_step: int, step: int) -> None:
        """A new report asks for ``goal``; the ramp starts from today's factors at ``step``."""
        self.report_step = report_step
        self.goal = dict(goal)
        self.start = {name: self.factors.get(name, 1.0) for name in goal}
        self.ramp_from = step

    def advance(self, step: int) -> bool:
        """Move the factors to where the ramp is at optimizer step ``step``; True if they moved."""
        if not self.goal:
            return False
        done = step - self.ramp_from
        share = 1.0 if self.ramp_steps == 0 else min(1.0, done / self.ramp_steps)
        factors = {
            name: self.start.get(name, 1.0) + (goal - self.start.get(name, 1.0)) * share
            for name, goal in self.goal.items()
        }
        if factors == {k: self.factors.get(k) for k in factors}:
            return False
        self.factors.update(factors)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "factors": dict(self.factors),
            "start": dict(self.start),
            "goal": dict(self.goal),
            "ramp_from": self.ramp_from,
            "report_step": self.report_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.factors = dict(state_dict["factors"])
        self.start = dict(state_dict.get("start", {}))
        self.goal = dict(state_dict.get("goal", {}))
        self.ramp_from = int(state_dict.get("ramp_from", 0))
        self.report_step = state_dict.get("report_step")
