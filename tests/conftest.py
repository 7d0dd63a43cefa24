"""Shared fixtures: small models built in code (no downloads)."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch import nn


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
