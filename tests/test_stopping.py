"""Stop rules: unit behaviour on readings, argument checks, and real Trainer runs (README
"Stopping")."""

from __future__ import annotations

import math

import pytest

from spectral_monitor import SpectralMonitor, SpectralTracker
from spectral_monitor.stopping import (
    DropStopRule,
    LayerReading,
    LayerStopRule,
    Reading,
    ThresholdStopRule,
)


def _reading(step: int, *layers: tuple[str, float, bool], mean: float | None = None) -> Reading:
    """A reading whose layers have intervals alpha ± 0.1."""
    items = tuple(LayerReading(n, a, a - 0.1, a + 0.1, r) for n, a, r in layers)
    reliable = [la.alpha for la in items if la.reliable]
    value = (sum(reliable) / len(reliable) if reliable else math.nan) if mean is None else mean
    return Reading(step, value, min(reliable, default=math.nan), items)


def test_layer_rule_needs_the_same_reliable_layer_for_patience_analyses() -> None:
    rule = LayerStopRule(2.0, patience=3)
    assert not rule.update(_reading(0, ("a", 1.8, True), ("b", 3.0, True)))
    # another layer below does not continue a's count; a above restarts it
    assert not rule.update(_reading(10, ("a", 2.5, True), ("b", 1.9, True)))
    assert not rule.update(_reading(20, ("a", 1.8, True), ("b", 1.9, True)))
    # an unreliable reading of b restarts b's count
    assert not rule.update(_reading(30, ("a", 1.8, True), ("b", 1.9, False)))
    assert rule.update(_reading(40, ("a", 1.7, True), ("b", 1.9, True)))
    assert rule.stop_step == 40
    assert "a alpha 1.700 [1.600, 1.800]" in rule.reason and "b alpha" not in rule.reason
    assert "up to step 40" in rule.reason


def test_layer_rule_on_alpha_hi_needs_the_whole_interval_below() -> None:
    rule = LayerStopRule(2.0, patience=1, bound="alpha_hi")
    assert not rule.update(_reading(0, ("a", 1.95, True)))  # interval [1.85, 2.05] straddles 2
    assert rule.update(_reading(10, ("a", 1.85, True)))
    assert "whole interval" in rule.reason


def test_drop_rule_compares_with_the_level_before_start_step() -> None:
    rule = DropStopRule(2.0, patience=2, start_step=100, margin=0.5)
    for step, mean in ((0, math.nan), (50, 4.0), (90, 3.0)):
        assert not rule.update(_reading(step, ("a", mean, True), mean=mean))
    assert rule.level == pytest.approx(2.5)
    assert not rule.update(_reading(100, ("a", 2.4, True)))
    assert not rule.update(_reading(110, ("a", 2.6, True)))  # back above: the count restarts
    assert not rule.update(_reading(120, ("a", 2.4, True)))
    assert rule.update(_reading(130, ("a", 2.3, True)))
    assert "before step 100 (3.000)" in rule.reason and "a alpha 2.300" in rule.reason
    restored = DropStopRule(2.0, patience=2, start_step=100, margin=0.5)
    restored.load_state_dict(rule.state_dict())
    assert restored.should_stop and restored.level == pytest.approx(2.5)


def test_threshold_rule_names_the_lowest_layers() -> None:
    rule = ThresholdStopRule(2.0, patience=1, on="alpha_min")
    assert rule.update(_reading(5, ("a", 1.5, True), ("b", 2.5, True), ("c", 1.0, False)))
    assert "alpha_min = 1.5000" in rule.reason and "a alpha 1.500 [1.400, 1.600]" in rule.reason
    assert "c alpha" not in rule.reason  # unreliable layers drive nothing


def test_alpha_hat_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="stop_on='alpha_hat' is refused: .*eigenvalue scale"):
        SpectralMonitor(stop_below=0.0, stop_on="alpha_hat")


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"stop_bound": "alpha_lo"}, "stop_bound"),
        ({"stop_margin": -0.1}, "stop_margin"),
        ({"stop_margin": math.inf}, "stop_margin"),
        ({"stop_on": "loss"}, "stop_on"),
    ],
)
def test_stop_arguments_are_validated(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        SpectralTracker(stop_below=2.0, **kwargs)
