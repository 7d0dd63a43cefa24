"""Stop rules: unit behaviour on readings, argument checks, and real Trainer runs (README
"Stopping")."""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import RandomLabelMLP, random_label_loader, read_events, trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spectral_monitor import SpectralMonitor, SpectralTracker
from spectral_monitor.live.stopping import (
    OVERFIT_GROWTH,
    AllOfStopRule,
    DropStopRule,
    LayerReading,
    LayerSignalStopRule,
    LayerStopRule,
    Reading,
    ReboundStopRule,
    ThresholdStopRule,
    TrapAlphaStopRule,
    TrapStopRule,
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
    with pytest.raises(ValueError, match=r"stop_on='alpha_hat' is refused: .*eigenvalue scale"):
        SpectralMonitor(stop_below=0.0, stop_on="alpha_hat")


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"stop_on": "layer", "stop_below": 2.0, "stop_bound": "alpha_lo"}, ["stop_bound"]),
        ({"stop_on": "alpha_mean_drop", "stop_margin": -0.1}, ["stop_margin"]),
        ({"stop_on": "alpha_mean_drop", "stop_margin": math.inf}, ["stop_margin"]),
        ({"stop_on": "loss"}, ["stop_on"]),
        # a value no rule uses is refused, naming the value and the rule
        ({"stop_below": 2.0}, ["stop_below", "stop_on=None"]),
        ({"stop_patience": 3}, ["stop_patience", "stop_on=None"]),
        ({"stop_on": "alpha_mean_drop", "stop_below": 2.0}, ["stop_below", "alpha_mean_drop"]),
        ({"stop_on": "overfit", "stop_below": 2.0}, ["stop_below", "overfit"]),
        ({"stop_on": "overfit", "stop_margin": 1.0}, ["stop_margin", "overfit"]),
        ({"stop_on": "alpha_mean", "stop_bound": "alpha_hi", "stop_below": 2.0}, ["stop_bound"]),
        ({"stop_on": "layer", "stop_below": 2.0, "stop_margin": 0.5}, ["stop_margin", "layer"]),
        # a threshold rule without its threshold, or with one it can never reach (alpha > 1)
        ({"stop_on": "alpha_mean"}, ["alpha_mean", "stop_below"]),
        ({"stop_on": "layer"}, ["layer", "stop_below"]),
        ({"stop_on": "alpha_min", "stop_below": -1}, ["stop_below"]),
        ({"stop_on": "alpha_min", "stop_below": 1.0}, ["stop_below"]),
    ],
)
def test_stop_arguments_are_validated(kwargs: dict, names: list[str]) -> None:
    with pytest.raises(ValueError) as error:
        SpectralTracker(**kwargs)
    for name in names:
        assert name in str(error.value)


def test_no_stopping_by_default_and_each_rule_uses_its_values() -> None:
    assert SpectralTracker().stop_rule is None and not SpectralTracker().should_stop
    drop = SpectralTracker(stop_on="alpha_mean_drop", stop_margin=0.5, start_step=200)
    assert isinstance(drop.stop_rule, DropStopRule) and drop.stop_rule is drop.drop
    assert drop.stop_rule.margin == 0.5 and drop.stop_rule.start_step == 200
    layer = SpectralTracker(stop_on="layer", stop_below=1.8, stop_bound="alpha_hi")
    assert isinstance(layer.stop_rule, LayerStopRule)
    assert (layer.stop_rule.threshold, layer.stop_rule.bound) == (1.8, "alpha_hi")
    mean = SpectralTracker(stop_on="alpha_mean", stop_below=2.0, stop_patience=5)
    assert isinstance(mean.stop_rule, ThresholdStopRule) and mean.stop_rule.patience == 5
    overfit = SpectralTracker(stop_on="overfit", stop_patience=4, start_step=300).stop_rule
    assert isinstance(overfit, LayerSignalStopRule) and overfit.growth
    assert (overfit.signal, overfit.threshold) == ("lambda_max", OVERFIT_GROWTH)
    assert (overfit.patience, overfit.start_step) == (4, 300)


def test_rebound_rule_follows_the_running_minimum_from_start_step() -> None:
    rule = ReboundStopRule(0.2, patience=2, start_step=100)
    for step, mean in ((0, 1.0), (100, 2.0), (110, 1.8), (120, 1.7)):
        assert not rule.update(_reading(step, ("a", mean, True)))  # the 1.0 before 100 is ignored
    assert rule.minimum == pytest.approx(1.7) and rule.level == pytest.approx(1.9)
    assert not rule.update(_reading(130, ("a", 1.95, True)))
    assert rule.alarm is not None and "1 of the 2" in rule.alarm  # weaker evidence
    assert not rule.update(_reading(140, ("a", math.nan, False)))  # no value: no count, no reset
    assert rule.update(_reading(150, ("a", 2.0, True)))
    assert "rebounded >= 0.2" in rule.reason and "(1.700)" in rule.reason
    floor = ReboundStopRule(0.2, patience=1, floor=1.5)
    assert not floor.update(_reading(0, ("a", 1.7, True))) and not floor.update(
        _reading(10, ("a", 2.5, True))
    )  # the minimum 1.7 is not below the floor


def _trap_reading(step: int, *layers: tuple[str, float, int], mean: float = 2.0) -> Reading:
    items = tuple(LayerReading(n, a, a - 0.1, a + 0.1, True, num_traps=t) for n, a, t in layers)
    return Reading(step, mean, min(la.alpha for la in items), items)


def test_trap_rules_count_traps_of_reliable_layers() -> None:
    rule = TrapStopRule(2, patience=2)
    assert not rule.update(_trap_reading(0, ("a", 2.5, 1), ("b", 3.0, 0)))
    assert not rule.update(_trap_reading(10, ("a", 2.5, 1), ("b", 3.0, 1)))
    assert rule.update(_trap_reading(20, ("a", 2.5, 2), ("b", 3.0, 0)))
    assert "a alpha 2.500 [2.400, 2.600], 2 trap(s)" in rule.reason
    # Traps not computed (None) are no value: the reading neither counts nor resets.
    unknown = TrapStopRule(1, patience=1)
    assert not unknown.update(_reading(0, ("a", 2.5, True)))
    assert unknown.consecutive == 0
    new = TrapStopRule(1, patience=1, new=True)
    assert not new.update(_trap_reading(0, ("a", 2.5, 3)))  # 3 traps at the start: reference
    assert new.update(_trap_reading(10, ("a", 2.5, 4)))
    signature = TrapAlphaStopRule(2.0, patience=1)
    assert not signature.update(_trap_reading(0, ("a", 2.5, 1), ("b", 1.8, 0)))
    assert signature.update(_trap_reading(10, ("a", 1.9, 1), ("b", 1.8, 0)))
    assert "a alpha 1.900" in signature.reason and "b alpha" not in signature.reason


def test_all_of_needs_every_part_at_once_and_alarms_on_one() -> None:
    rule = AllOfStopRule(
        math.nan,
        parts=(TrapStopRule(1, patience=1), ReboundStopRule(0.2, patience=1)),
    )
    assert not rule.update(_trap_reading(0, ("a", 2.0, 1), mean=2.0))
    assert rule.alarm is not None and "correlation traps" in rule.alarm  # traps alone
    assert not rule.update(_trap_reading(10, ("a", 2.0, 0), mean=1.7))
    assert not rule.update(_trap_reading(20, ("a", 2.0, 0), mean=2.0))  # rebound alone
    assert "rebounded" in rule.alarm
    assert rule.update(_trap_reading(30, ("a", 2.0, 1), mean=2.0))
    assert "correlation traps" in rule.reason and "rebounded" in rule.reason
    restored = AllOfStopRule(
        math.nan, parts=(TrapStopRule(1, patience=1), ReboundStopRule(0.2, patience=1))
    )
    restored.load_state_dict(rule.state_dict())
    assert restored.should_stop and restored.parts[1].minimum == pytest.approx(1.7)
    restored.load_state_dict({})  # a new run: every part forgets too
    assert not restored.should_stop and math.isnan(restored.parts[1].minimum)


def test_lambda_max_growth_is_relative_to_each_layers_first_value() -> None:
    rule = LayerSignalStopRule(2.0, patience=1, signal="lambda_max", growth=True)
    first = Reading(0, 2.0, 2.0, (LayerReading("a", 2.0, 1.9, 2.1, True, lambda_max=3.0),))
    assert not rule.update(first)
    later = Reading(10, 2.0, 2.0, (LayerReading("a", 2.0, 1.9, 2.1, True, lambda_max=6.5),))
    assert rule.update(later) and "lambda_max growth over reliable layers (layer a: 2.17)" in (
        rule.reason
    )


def test_start_step_beyond_max_steps_warns_once() -> None:
    monitor = SpectralMonitor(every_n_steps=5, mode="sync", stop_on="alpha_mean_drop")
    with pytest.warns(UserWarning, match="start_step=500 >= the Trainer's max_steps=10") as got:
        trainer(max_steps=10, callbacks=[monitor]).fit(DigitsMLP(), digits_loader(batch_size=32))
    assert sum("can never fire" in str(w.message) for w in got) == 1


# --- real runs ----------------------------------------------------------------------------------


class DigitsMLP(L.LightningModule):
    """MLP 64-256-256-10 on scikit-learn digits (the issue's small-head healthy run, where the
    10-eigenvalue head once flipped alpha_mean under 2), optionally on random labels."""

    def __init__(self, lr: float = 3e-3, sgd: bool = False) -> None:
        super().__init__()
        self.lr, self.sgd = lr, sgd
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, 10),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.sgd:
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits_loader(
    batch_size: int, random_labels: bool = False, seed: int = 0, noise: float = 0.0
) -> DataLoader:
    """Digits with all labels random, or a fraction ``noise`` of them replaced at random."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    if random_labels:
        y = torch.randint(0, 10, y.shape, generator=g)
    if noise:
        pick = torch.rand(len(y), generator=g) < noise
        y[pick] = torch.randint(0, 10, (int(pick.sum()),), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)


def readme_early_stopping() -> EarlyStopping:
    """README "Stopping": Lightning's EarlyStopping on the fall of alpha_mean."""
    return EarlyStopping(
        monitor="spectral/alpha_mean_drop",  # reference (before start_step) minus alpha_mean
        mode="min",
        divergence_threshold=1.0,  # stop once alpha_mean fell more than 1.0
        patience=sys.maxsize,  # never stop because the value stopped "improving"
        check_finite=False,
        strict=False,  # the scalar exists only after start_step, with a reliable layer
        check_on_train_epoch_end=True,
    )


@pytest.mark.slow
def test_healthy_small_head_run_is_stopped_neither_by_the_rule_nor_the_recipe() -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(every_n_steps=50, stop_on="alpha_mean_drop")
    stopper = readme_early_stopping()
    run = trainer(max_steps=1000, callbacks=[stopper, monitor])
    run.fit(DigitsMLP(), digits_loader(batch_size=32))
    assert run.global_step == 1000 and stopper.stopped_epoch == 0
    assert monitor.stopped_step is None and monitor.stop_reason is None
    # The run is one where the old rule cried wolf: alpha_mean went under 2 (the 10-eigenvalue
    # head is unreliable and no longer in the mean; the hidden layers themselves go there).
    history = monitor.history.aggregates
    assert min(a for a in history["alpha_mean"] if math.isfinite(a)) < 2.0
    old = ThresholdStopRule(2.0, patience=1, on="alpha_mean")
    fired = [old.update(r) for r in _readings(monitor)]
    assert any(fired)
    assert "spectral/alpha_mean_drop" in run.callback_metrics


def _readings(monitor: SpectralMonitor) -> list[Reading]:
    """The history as readings (aggregates only)."""
    agg = monitor.history.aggregates
    return [
        Reading(int(s), m, lo)
        for s, m, lo in zip(agg["step"], agg["alpha_mean"], agg["alpha_min"], strict=True)
    ]


@pytest.mark.slow
def test_random_label_run_is_stopped_and_the_reason_names_the_layers(tmp_path) -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(
        every_n_steps=10, stop_on="layer", stop_below=2.0, stop_patience=3, start_step=0
    )
    logger = TensorBoardLogger(str(tmp_path), name="run")
    run = trainer(max_steps=400, callbacks=[monitor], logger=logger)
    run.fit(RandomLabelMLP(lr=0.2), random_label_loader())
    assert run.global_step < 400 and monitor.stopped_step == run.global_step
    reason = monitor.stop_reason
    assert reason is not None and "for 3 consecutive analyses up to step" in reason
    # The layers named are those of the deciding analysis (later ones may follow before the
    # run ends), with their alpha and interval at that step, each below the threshold.
    step = monitor.tracker.stop_rule.stop_step
    assert f"up to step {step}:" in reason
    named = [name for name in monitor.history.layers if f"{name} alpha " in reason]
    assert named, reason
    for name in named:
        track = monitor.history.layers[name]
        i = [int(s) for s in track["step"]].index(step)
        alpha, lo, hi = track["alpha"][i], track["alpha_lo"][i], track["alpha_hi"][i]
        assert f"{name} alpha {alpha:.3f} [{lo:.3f}, {hi:.3f}]" in reason
        assert alpha < 2.0 and track["reliable"][i] == 1.0
    texts = read_events(logger.log_dir).Tensors("spectral/stop_reason/text_summary")
    assert reason in texts[-1].tensor_proto.string_val[0].decode()


@pytest.mark.slow
def test_overfit_stops_a_label_noise_run_and_not_its_clean_twin() -> None:
    """The study's label-noise configuration in a real Trainer: 60 % of the digits labels
    replaced at random (Adam 3e-3, batch 32), against the same run on clean labels. The chosen
    rule fires late (1,800-2,150 steps in the study), so both runs get 3,000 steps."""
    stopped: dict[float, SpectralMonitor] = {}
    for noise in (0.0, 0.6):
        torch.manual_seed(0)
        monitor = SpectralMonitor(every_n_steps=50, mode="sync", stop_on="overfit")
        run = trainer(max_steps=3000, callbacks=[monitor])
        run.fit(DigitsMLP(), digits_loader(batch_size=32, noise=noise))
        stopped[noise] = monitor
    clean, noisy = stopped[0.0], stopped[0.6]
    assert clean.stopped_step is None and clean.stop_reason is None
    assert noisy.stopped_step is not None and noisy.stopped_step < 3000
    assert "lambda_max growth" in noisy.stop_reason
