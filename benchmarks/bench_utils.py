"""Pieces the benchmark scripts share: thread control, timing, a timed training run, tables.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from spectral_monitor import SpectralMonitor

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is optional
    threadpool_limits = None

__all__ = [
    "StepTimer",
    "TimedFit",
    "add_threads_argument",
    "markdown_table",
    "median_seconds",
    "p99",
    "parse_threads",
    "thread_setting",
    "threadpool_limits",
    "timed_fit",
]


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads 1 default``: the thread settings to run, integers or ``default``."""
    parser.add_argument(
        "--threads",
        nargs="+",
        default=["1", "default"],
        help='thread settings to run, integers or "default" (default: 1 default)',
    )


def parse_threads(parser: argparse.ArgumentParser, values: list[str]) -> list[int | None]:
    """``["1", "default"]`` -> ``[1, None]``; anything else is a usage error of ``parser``."""
    try:
        return [None if value == "default" else int(value) for value in values]
    except ValueError:
        parser.error('--threads takes integers or "default"')


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def median_seconds(task: Callable[[], Any], repeat: int, cuda: bool = False) -> float:
    """Median wall time of ``repeat`` calls (with ``cuda``, synchronised before and after)."""
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        task()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def p99(values: Sequence[float]) -> float:
    """The 99th percentile (nearest rank below)."""
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


@contextlib.contextmanager
def thread_setting(threads: int | None) -> Iterator[str]:
    """Set torch's and (via threadpoolctl) the OpenMP/BLAS thread counts; None keeps defaults.

    Yields a label for the table, e.g. ``"1"`` or ``"default (2)"``.
    """
    default = torch.get_num_threads()
    if threads is None:
        yield f"default ({default})"
        return
    torch.set_num_threads(threads)
    limiter = threadpool_limits(limits=threads) if threadpool_limits else contextlib.nullcontext()
    try:
        with limiter:
            yield str(threads)
    finally:
        torch.set_num_threads(default)


class StepTimer(L.Callback):
    """Wall-clock time of every training step, batch start to batch end (synchronised on CUDA)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)


@dataclass
class TimedFit:
    """One timed ``Trainer.fit``: wall seconds, every step's seconds, the monitor (if any)."""

    total: float
    step_times: list[float]
    monitor: SpectralMonitor | None


def timed_fit(
    module: L.LightningModule,
    loader: DataLoader,
    steps: int,
    accelerator: str,
    every: int | None,
    log_dir: str | None = None,
    monitor_options: dict[str, Any] | None = None,
) -> TimedFit:
    """Train ``module`` for ``steps`` steps on one device, with ``SpectralMonitor(every_n_steps=
    every, log_histograms=False)`` or (``every=None``) without it; no checkpoint or progress
    bar, warnings silenced, so only training and the monitor are timed.

    Args:
        log_dir: None (default): no logger. Else a ``TensorBoardLogger`` writing there, which
            also makes the monitor draw its figures (the heatmap, ESD figures) and log them.
        monitor_options: more ``SpectralMonitor`` arguments (override ``log_histograms``).
    """
    timer = StepTimer()
    callbacks: list[L.Callback] = [timer]
    monitor = None
    if every is not None:
        options = {"log_histograms": False, **(monitor_options or {})}
        monitor = SpectralMonitor(every_n_steps=every, **options)
        callbacks.append(monitor)
    logger: TensorBoardLogger | bool = False
    if log_dir is not None:
        logger = TensorBoardLogger(log_dir, name="", version="")
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=logger,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return TimedFit(time.perf_counter() - start, timer.times, monitor)
