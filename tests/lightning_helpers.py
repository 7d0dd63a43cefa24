"""Tiny LightningModules and data for callback tests, plus a TensorBoard event reader."""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from tensorboard.backend.event_processing.event_accumulator import (
    HISTOGRAMS,
    IMAGES,
    SCALARS,
    TENSORS,
    EventAccumulator,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spectral_monitor.demo import RandomLabelMLP

__all__ = ["TRUST_TINY", "RandomLabelMLP"]  # RandomLabelMLP: the demo's over-regularising MLP

#: Reliability thresholds that let the tiny test models' layers (a few dozen eigenvalues) count
#: as reliable, for tests of the plumbing (aggregates, stop rule, logging) rather than of trust.
TRUST_TINY: dict[str, Any] = {"min_evals": 2, "min_tail": 2, "max_relative_width": None}


class ConvNet(L.LightningModule):
    """Two Conv2d and two Linear layers on 8x8 single-channel inputs."""

    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 48),
            nn.ReLU(),
            nn.Linear(48, 10),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class ShardedConvNet(ConvNet):
    """:class:`ConvNet` sharded with FSDP2: every layer, then the whole, goes through
    ``fully_shard`` (for Lightning's ``ModelParallelStrategy``), so its weights are DTensors."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        for module in self.net:
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fully_shard(module)
        fully_shard(self)


def image_loader(n: int = 480, batch_size: int = 8, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    )
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def random_label_loader(n: int = 512, batch_size: int = 4, seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(n, 64, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)


def trainer(**kwargs: Any) -> L.Trainer:
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "logger": False,
        "log_every_n_steps": 1,
    }
    defaults.update(kwargs)
    return L.Trainer(**defaults)


class OpenGate(L.Callback):
    """Opens ``gate`` once training has finished step ``after`` (placed after the monitor, so the
    monitor's own hook at that step still finds the worker busy). With a worker made to wait on
    the gate, a test gets back-pressure at a chosen step however fast the machine is."""

    def __init__(self, gate: threading.Event, after: int) -> None:
        self.gate, self.after = gate, after

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.after:
            self.gate.set()


class WeightRecorder(L.Callback):
    """Keeps a copy of the model at train start and after every ``every`` optimizer steps, keyed
    by step, to recompute what the monitor should have reported."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.models: dict[int, nn.Module] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.models[trainer.global_step] = copy.deepcopy(pl_module).cpu()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            self.models[trainer.global_step] = copy.deepcopy(pl_module).cpu()


def read_events(log_dir: str | Path) -> EventAccumulator:
    """All scalars, histograms, tensors and images of the event files under ``log_dir``."""
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    acc = EventAccumulator(
        str(files[0].parent), size_guidance={SCALARS: 0, HISTOGRAMS: 0, TENSORS: 0, IMAGES: 0}
    )
    acc.Reload()
    return acc


def scalar_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def assert_analysed_steps(monitor: Any, expected: list[int]) -> None:
    """The monitor analysed exactly ``expected``, except for analyses skipped by back-pressure
    (a worker thread slower than training may skip some; each skip is counted)."""
    tracker = getattr(monitor, "tracker", monitor)
    steps = tracker.history.steps
    assert steps == sorted(set(steps)), f"duplicate or unordered steps {steps}"
    assert set(steps) <= set(expected), f"{steps} not within {expected}"
    assert steps[0] == expected[0], f"the first analysis is missing: {steps}"
    # The final weights are analysed even when their scheduled analysis was skipped.
    assert steps[-1] == expected[-1], f"the final analysis is missing: {steps}"
    counted = len(steps) + tracker.num_skipped
    assert len(expected) <= counted <= len(expected) + 1, (steps, tracker.num_skipped)
    if tracker.mode == "sync":
        assert steps == expected
