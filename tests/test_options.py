"""The options are defined once: SpectralMonitor and SpectralTracker take the same arguments,
and LightningCLI (jsonargparse) sees them as plain typed arguments with their help."""

from __future__ import annotations

import inspect

import pytest
from jsonargparse import ArgumentParser

from spectral_monitor import SpectralMonitor, SpectralTracker
from spectral_monitor.analysis.options import OPTIONS


def test_monitor_and_tracker_signatures_agree() -> None:
    monitor = inspect.signature(SpectralMonitor)
    tracker = inspect.signature(SpectralTracker)
    assert list(monitor.parameters.values()) == list(OPTIONS.parameters.values())
    assert list(tracker.parameters.values())[:-1] == list(monitor.parameters.values())
    assert list(tracker.parameters)[-1] == "log_dir"
    for name in OPTIONS.parameters:
        for cls in (SpectralMonitor, SpectralTracker):
            assert f"    {name}: " in cls.__doc__, (cls, name)
    assert "log_dir: " in SpectralTracker.__doc__ and "log_dir" not in SpectralMonitor.__doc__


def test_arguments_reach_the_tracker_and_misspellings_fail() -> None:
    monitor = SpectralMonitor(7, stop_on="alpha_min", stop_below=2.5, prefix="p", mode="sync")
    assert monitor.tracker.every_n_steps == 7 and monitor.tracker.prefix == "p"
    assert monitor.tracker.stop_rule is not None and monitor.tracker.stop_rule.threshold == 2.5
    with pytest.raises(TypeError, match="stop_belo"):
        SpectralMonitor(stop_belo=2.0)
    with pytest.raises(TypeError):
        SpectralMonitor(10, 20)  # only every_n_steps is positional
    with pytest.raises(ValueError, match="histogram_every"):
        SpectralMonitor(histogram_every=0)


def test_lightning_cli_sees_plain_arguments() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SpectralMonitor, "monitor")
    config = parser.parse_args(
        [
            "--monitor.every_n_steps=5",
            "--monitor.stop_on=alpha_mean",
            "--monitor.stop_below=2.0",
            "--monitor.layers=net.*",
        ]
    )
    assert config.monitor.every_n_steps == 5 and config.monitor.stop_below == 2.0
    assert "analyse every this many steps" in parser.format_help()
    monitor = parser.instantiate_classes(config).monitor
    assert isinstance(monitor, SpectralMonitor)
    assert monitor.tracker.stop_rule.threshold == 2.0
    assert monitor.tracker.config.layers == ("net.*",)
