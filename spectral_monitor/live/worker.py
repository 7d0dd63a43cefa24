"""Running analyses off the training thread.

The training thread hands over a snapshot (float32 copies of the weights, already taken) and goes
on. A single worker thread runs :func:`~..analysis.analyze.analyze_snapshot` on it. On CUDA
the worker computes on its own stream, which first waits on an event recorded on the training
stream right after the copies were enqueued, so the copies are complete before they are read and
the training stream never waits for the analysis. ``torch.linalg`` decompositions synchronise the
host with the device; on the worker thread that stalls only the worker.

Figures are drawn on a second worker thread (:meth:`AnalysisWorker.render`): matplotlib takes tens
of milliseconds per figure, which the training thread must not pay, and drawing on the analysis
thread would delay the next analysis into a back-pressure skip.

Back-pressure: one analysis at a time. :meth:`AnalysisWorker.submit` refuses a new one while the
previous is running, and the caller counts the skip, so at most one snapshot is held.

A worker pickles (and deep-copies) without its thread, lock and streams, which belong to the
process that started them (``ddp_spawn`` pickles the callbacks into each new process); the copy
holds the finished results, the running analysis's included.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from spectral_monitor.analysis.analyze import analyze_snapshot
from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import LayerSnapshot

__all__ = ["WORKER_MODES", "AnalysisResult", "AnalysisWorker", "RenderResult"]

WORKER_MODES = ("thread", "sync")
WorkerMode = Literal["thread", "sync"]

# A CPU analysis on the worker thread competes with training for the cores and for the GIL.
# While one runs, Python's GIL switch interval is ``_SWITCH_INTERVAL`` seconds (None: unchanged):
# each torch operator of the training step releases the GIL, the worker takes it, and the
# training thread then waits until the worker's Python lets go — up to one interval, 5 ms by
# default, which is two steps of a fast CPU loop. Measured in
# ``benchmarks/training_thread_profile.py`` (fast MLP, a loaded 2-core machine): the monitor's
# hook on a snapshot step took a median 31 ms at 5 ms and 21 ms at 0.5 ms, its plain steps 500 ms
# and 128 ms summed over a fit (docs/guide/performance.md). ``_CPU_WORKER_THREADS`` caps the
# worker's torch threads (None: as torch is set); it stays off because ``torch.set_num_threads``
# also sets MKL's process-wide count, which the training thread's matrix products read.
_CPU_WORKER_THREADS: int | None = None
_SWITCH_INTERVAL: float | None = 0.0005


@dataclass
class AnalysisResult:
    """What came back from one analysis: a report, or the traceback of the failure."""

    step: int
    report: SpectralReport | None
    error: str | None = None


@dataclass
class RenderResult:
    """Figures drawn for one step: ``images[name]`` is an (H, W, 3) uint8 RGB array; or the
    traceback of the failure."""

    step: int
    images: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None


#: Draws figures; returns ``{name: (H, W, 3) uint8 array}``.
Draw = Callable[[], dict[str, np.ndarray]]


class AnalysisWorker:
    """Runs one analysis at a time, inline (``"sync"``) or on a worker thread (``"thread"``).

    Args:
        mode: ``"thread"`` (default) or ``"sync"`` (inline, for debugging and CUDA-graph capture).
    """

    def __init__(self, mode: WorkerMode = "thread") -> None:
        if mode not in WORKER_MODES:
            raise ValueError(f"mode must be one of {WORKER_MODES}, got {mode!r}")
        self.mode: WorkerMode = mode
        self._idle()

    def _idle(self) -> None:
        """No thread, nothing in flight: the state of a new worker."""
        self._executor: ThreadPoolExecutor | None = None
        self._futures: list[Future[AnalysisResult]] = []
        self._done: list[AnalysisResult] = []
        self._drawer: ThreadPoolExecutor | None = None
        self._renders: list[Future[RenderResult]] = []
        self._rendered: list[RenderResult] = []
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        # Threads, locks, CUDA streams and futures cannot cross a process boundary: a copy starts
        # with none and creates its own on first use. It does get the results, the running
        # analysis's too (waited for), so it takes in what the original will.
        if self._futures:
            wait_futures(list(self._futures))
        return {"mode": self.mode, "done": self._done + [f.result() for f in self._futures]}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.mode = state["mode"]
        self._idle()
        self._done = list(state.get("done", []))

    @property
    def busy(self) -> bool:
        """True while an analysis is running."""
        return any(not f.done() for f in self._futures)

    def submit(self, snapshot: list[LayerSnapshot], config: AnalysisConfig, step: int) -> bool:
        """Start analysing ``snapshot``; False (nothing started) while the previous one runs."""
        if self.busy:
            return False
        ready: dict[torch.device, torch.cuda.Event] = {}
        for snap in snapshot:
            w = snap.weight
            if w is not None and w.is_cuda and w.device not in ready:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(w.device))
                ready[w.device] = event
        if self.mode == "sync":
            self._done.append(self._run(snapshot, config, step, ready))
            return True
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="spectral-monitor")
        self._futures.append(self._executor.submit(self._run, snapshot, config, step, ready))
        return True

    def render(self, step: int, draw: Draw) -> None:
        """Run ``draw`` on the drawing thread, after the drawings already asked for (inline in
        ``"sync"`` mode); its result comes back from :meth:`poll_renders`. Never refused: a
        drawing holds a report, not a snapshot."""
        if self.mode == "sync":
            self._rendered.append(_draw(step, draw))
            return
        if self._drawer is None:
            self._drawer = ThreadPoolExecutor(1, thread_name_prefix="spectral-monitor-draw")
        self._renders.append(self._drawer.submit(_draw, step, draw))

    def poll_renders(self, block: bool = False) -> list[RenderResult]:
        """Figures finished since the last call, in the order they were asked for; ``block``
        waits for all of them."""
        if block and self._renders:
            wait_futures(list(self._renders))
        finished = [f for f in self._renders if f.done()]
        self._renders = [f for f in self._renders if not f.done()]
        results, self._rendered = self._rendered + [f.result() for f in finished], []
        return results

    def _stream(self, device: torch.device) -> torch.cuda.Stream:
        with self._lock:
            if device not in self._streams:
                self._streams[device] = torch.cuda.Stream(device=device)
            return self._streams[device]

    def _run(
        self,
        snapshot: list[LayerSnapshot],
        config: AnalysisConfig,
        step: int,
        ready: dict[torch.device, torch.cuda.Event],
    ) -> AnalysisResult:
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                for device, event in ready.items():
                    stream = self._stream(device)
                    stream.wait_event(event)
                    stack.enter_context(torch.cuda.stream(stream))
                    for snap in snapshot:
                        # The copies were allocated on the training stream; tell the caching
                        # allocator they are in use on ours until our work is done.
                        if snap.weight is not None and snap.weight.device == device:
                            snap.weight.record_stream(stream)
                if not ready and self.mode == "thread":
                    stack.enter_context(_cpu_worker_settings())
                report = analyze_snapshot(snapshot, config, step)
            return AnalysisResult(step, report)
        except Exception:
            return AnalysisResult(step, None, traceback.format_exc())
        finally:
            snapshot.clear()  # free the weight copies as soon as they are read

    def poll(self) -> list[AnalysisResult]:
        """Results finished since the last call, oldest first; never blocks."""
        finished = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        results, self._done = self._done + [f.result() for f in finished], []
        return sorted(results, key=lambda r: r.step)

    def wait(self) -> list[AnalysisResult]:
        """Block until the running analysis (if any) has finished; then :meth:`poll`."""
        if self._futures:
            wait_futures(list(self._futures))
        return self.poll()

    def close(self) -> list[AnalysisResult]:
        """Finish outstanding work, join the worker thread, and return what was still unread.
        The worker can be used again afterwards (a new thread starts on the next submit)."""
        results = self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._drawer is not None:  # unread drawings stay for poll_renders
            self._drawer.shutdown(wait=True)
            self._drawer = None
        return results


@contextlib.contextmanager
def _cpu_worker_settings() -> Iterator[None]:
    """The worker thread's torch threads and the GIL switch interval for one CPU analysis,
    restored afterwards (see ``_CPU_WORKER_THREADS`` and ``_SWITCH_INTERVAL``)."""
    threads, interval = torch.get_num_threads(), sys.getswitchinterval()
    limit_threads = _CPU_WORKER_THREADS is not None and threads > _CPU_WORKER_THREADS
    if limit_threads:
        torch.set_num_threads(_CPU_WORKER_THREADS)  # type: ignore[arg-type]
    if _SWITCH_INTERVAL is not None:
        sys.setswitchinterval(_SWITCH_INTERVAL)
    try:
        yield
    finally:
        if _SWITCH_INTERVAL is not None:
            sys.setswitchinterval(interval)
        if limit_threads:
            torch.set_num_threads(threads)


def _draw(step: int, draw: Draw) -> RenderResult:
    try:
        return RenderResult(step, draw())
    except Exception:
        return RenderResult(step, error=traceback.format_exc())
