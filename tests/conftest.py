"""Shared fixtures: small models built in code (no downloads)."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings

import pytest
import torch
from hypothesis import settings
from torch import nn

# Property tests draw the same examples on every run, so a landing is never decided by chance;
# `HYPOTHESIS_PROFILE=explore pytest tests/test_powerlaw_fit.py` draws new ones to hunt for bugs
# (print_blob gives the line that reproduces a failure).
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

#: Environment variable (milliseconds) that slows every analysis run on a worker thread, to show
#: that no test depends on how fast the worker is; ``--slow-worker-ms`` overrides it.
WORKER_DELAY_VARIABLE = "SPECTRAL_MONITOR_TEST_WORKER_DELAY"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow-worker-ms",
        type=float,
        default=float(os.environ.get(WORKER_DELAY_VARIABLE, "0") or 0),
        help="delay every threaded analysis by this many milliseconds (default: "
        f"${WORKER_DELAY_VARIABLE} or 0): a worker slower than the training loop",
    )


@pytest.fixture(autouse=True)
def slow_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> float:
    """With ``--slow-worker-ms N``: each analysis on a worker thread first sleeps N ms (inline
    ``mode="sync"`` analyses are not slowed). Returns N."""
    delay_ms = float(request.config.getoption("--slow-worker-ms"))
    if delay_ms > 0:
        import spectral_monitor.live.worker as worker_module

        original = worker_module.analyze_snapshot

        def slowed(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread():
                time.sleep(delay_ms / 1000)
            return original(*args, **kwargs)

        monkeypatch.setattr(worker_module, "analyze_snapshot", slowed)
    return delay_ms


def small_cnn(seed: int = 0) -> nn.Module:
    """Three 3x3 convolutions and two Linear layers, for 12x12 single-channel inputs."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 24, 3),
        nn.ReLU(),
        nn.Conv2d(24, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 48, 3),
        nn.Flatten(),
        nn.Linear(48 * 6 * 6, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def small_mlp(seed: int = 0) -> nn.Module:
    """Linear layers of several aspect ratios."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(64, 200),
        nn.ReLU(),
        nn.Linear(200, 120),
        nn.ReLU(),
        nn.Linear(120, 120),
        nn.ReLU(),
        nn.Linear(120, 30),
    )


@pytest.fixture
def cnn() -> nn.Module:
    return small_cnn()


@pytest.fixture
def mlp() -> nn.Module:
    return small_mlp()


@pytest.fixture(scope="session")
def weightwatcher():
    """The weightwatcher module, quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import weightwatcher as ww
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    return ww
