"""Shared fixtures: small models built in code (no downloads)."""

from __future__ import annotations

import logging
import os
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
