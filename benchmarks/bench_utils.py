"""Pieces the benchmark scripts share: thread control and a per-step timer.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import lightning as L
import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - threadpoolctl is optional
    threadpool_limits = None

__all__ = ["StepTimer", "thread_setting", "threadpool_limits"]


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
