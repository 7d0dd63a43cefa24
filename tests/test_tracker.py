"""SpectralTracker in a plain PyTorch loop, the stop rule, and the history's state."""

from __future__ import annotations

import math
import threading

import pytest
import torch
from conftest import small_mlp
from lightning_helpers import TRUST_TINY, assert_analysed_steps, read_events, scalar_steps
from torch import nn

from spectral_monitor import SpectralHistory, SpectralTracker, analyze
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.live.stopping import ThresholdStopRule


def train(tracker: SpectralTracker, model: nn.Module, steps: int, lr: float = 0.05) -> list[int]:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    x, y = torch.randn(256, 64), torch.randint(0, 30, (256,))
    stopped_at = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, 256, (8,))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step(model, step)
        if tracker.should_stop:
            stopped_at.append(step)
            break
    tracker.close()
    return stopped_at


@pytest.mark.parametrize("mode", ["thread", "sync"])
def test_plain_loop_writes_tensorboard_and_history(tmp_path, mode) -> None:
    tracker = SpectralTracker(
        every_n_steps=10, mode=mode, log_dir=str(tmp_path / "run"), **TRUST_TINY
    )
    model = small_mlp()
    train(tracker, model, 40)
    assert_analysed_steps(tracker, [1, 10, 20, 30, 40])
    steps = tracker.history.steps
    events = read_events(tmp_path / "run")
    assert scalar_steps(events, "spectral/alpha_mean") == steps
    assert scalar_steps(events, "spectral/alpha/0") == steps
    assert len(events.Histograms("spectral/esd_log10/6")) == len(steps)
    assert "custom_scalars__config__" in events.Tags()["tensors"]
    # The final weights are analysed by close() whatever the worker skipped before.
    assert tracker.latest is not None and tracker.latest.step == 40
    assert tracker.latest.alpha_mean == pytest.approx(
        analyze(model, **TRUST_TINY).alpha_mean, rel=1e-6
    )
    assert not [t for t in threading.enumerate() if t.name.startswith("spectral-monitor")]


def test_tracker_state_dict_round_trip() -> None:
    tracker = SpectralTracker(every_n_steps=5, mode="sync", stop_on="alpha_mean_drop")
    train(tracker, small_mlp(), 12)
    state = tracker.state_dict()
    clone = SpectralTracker(every_n_steps=5, mode="sync", stop_on="alpha_mean_drop")
    clone.load_state_dict(state)
    assert clone.history.steps == tracker.history.steps == [1, 5, 10, 12]  # 12: close()
    assert clone.history.layers == tracker.history.layers
    assert not clone.due(14) and clone.due(15)


def _report(step: int, alpha: float) -> SpectralReport:
    from spectral_monitor.analysis.report import LayerSpectrum

    layer = LayerSpectrum(
        "x", "linear", (4, 4), alpha=alpha, lambda_max=2.0, verdict="ok", reliable=True
    )
    return SpectralReport([layer], step=step)


def test_stop_rule_needs_consecutive_analyses_after_start_step() -> None:
    rule = ThresholdStopRule(2.0, on="alpha_mean", patience=2, start_step=10)
    assert not rule.update(_report(0, 1.5))  # before start_step: ignored
    assert not rule.update(_report(10, 1.5))
    assert not rule.update(_report(20, 2.5))  # above: the count restarts
    assert not rule.update(_report(30, 1.9))
    assert rule.update(_report(40, 1.8))
    assert "alpha_mean = 1.8000 < stop_below = 2.0" in rule.reason
    nan_rule = ThresholdStopRule(2.0, patience=1)
    assert not nan_rule.update(_report(0, math.nan))


def test_history_ignores_duplicate_steps_and_restores_missing_keys() -> None:
    history = SpectralHistory()
    assert history.add(_report(5, 3.0))
    assert not history.add(_report(5, 9.0))
    assert history.steps == [5] and history.layers["x"]["alpha"] == [3.0]
    state = history.state_dict()
    del state["aggregates"]["alpha_min"]
    restored = SpectralHistory()
    restored.load_state_dict(state)
    assert math.isnan(restored.aggregates["alpha_min"][0])
    with pytest.raises(ValueError, match="step"):
        history.add(SpectralReport([]))


def test_every_wrong_argument_of_the_monitor_and_tracker_is_a_value_error_naming_it() -> None:
    """Each argument, given values of every wrong kind: a ValueError that names it (or the value
    is accepted), never a TypeError from deep inside."""
    import inspect

    from spectral_monitor import SpectralMonitor

    wrong = [3, 2.5, "x", None, [1], {}, object(), True, -1, float("nan")]
    for cls in (SpectralMonitor, SpectralTracker):
        for name in list(inspect.signature(cls.__init__).parameters)[1:]:
            refused = []
            for value in wrong:
                try:
                    cls(**{name: value})
                except ValueError as error:
                    refused.append((value, str(error)))
            # Every argument refuses some of these values, and every refusal names it.
            assert refused, (cls.__name__, name, "accepted every wrong value")
            unnamed = [(value, message) for value, message in refused if name not in message]
            assert not unnamed, (cls.__name__, name, unnamed)


def test_thread_mode_state_dict_holds_the_analysis_in_flight(monkeypatch) -> None:
    """A plain loop checkpoints right after ``tracker.step`` started an analysis on the worker:
    the state must hold that analysis (the worker is held until someone waits for it, so without
    the wait the analysis is still running, however fast the machine)."""
    import spectral_monitor.live.worker as worker_module

    gate = threading.Event()
    analyze_snapshot, wait = worker_module.analyze_snapshot, worker_module.AnalysisWorker.wait

    def held(*args, **kwargs):
        assert gate.wait(timeout=120), "nobody waited for the analysis"
        return analyze_snapshot(*args, **kwargs)

    def waiting(self):
        gate.set()
        return wait(self)

    monkeypatch.setattr(worker_module, "analyze_snapshot", held)
    monkeypatch.setattr(worker_module.AnalysisWorker, "wait", waiting)
    tracker = SpectralTracker(every_n_steps=10, mode="thread", **TRUST_TINY)
    model = small_mlp()
    try:
        tracker.step(model, 10)
        state = tracker.state_dict()
    finally:
        gate.set()  # never leave the worker held
        tracker.close()
    assert state["history"]["aggregates"]["step"] == [10]
