"""Where a training thread waits for a CPU analysis: a profile of the fast-MLP set-up.

The set-up of ``training_overhead.py --model fast-mlp``: a 64->512->512->10 MLP,
``SpectralMonitor(every_n_steps=25)``, no logger. Three measurements, each printed as a table:

1. **Training-thread hooks.** The monitor's ``on_train_batch_end`` timed on the training thread
   (a subclass times ``super()``), split into plain steps, scheduled steps (snapshot: clone of
   the weights, hand-over to the worker) and the drain at epoch end (waiting for a running
   analysis). Wall time of the hook, medians and sums over one fit; one fit with Python's
   default GIL switch interval during analyses, one with the worker's (0.5 ms).
2. **The worker's analysis.** ``analyze_snapshot`` on the model's snapshot, on a thread: its wall
   time, its thread CPU time (``time.thread_time``), and a cProfile split of that time into torch
   operators (which release the GIL) and Python (which holds it).
3. **GIL waits.** The main thread runs a loop of tiny torch operators (each releases and retakes
   the GIL, as a training step does) while a second thread runs analyses back to back; the excess
   of the loop's time over the same loop alone is what the analysis cost it, per analysis, for
   Python's default switch interval (5 ms) and for 0.5 ms, interleaved.

4. **Fit time.** ``trainer.fit`` without the monitor, with it at the default switch interval and
   with it at 0.5 ms, interleaved; ratios to the run without the monitor of the same round.

Protocol fixed before looking: one fit of 500 steps for (1); 10 analyses for (2); for (3) 7
rounds per switch interval, alternating, each round 0.4 s of loop, median and range over rounds;
for (4) ``--rounds`` rounds of ``--steps`` steps.
CPU times are reported beside wall times because on a shared machine wall time mostly measures
the other processes.

    python benchmarks/training_thread_profile.py
    python benchmarks/training_thread_profile.py --threads 1
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import threading
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from training_overhead import Arm, FastMLP, run_once

from spectral_monitor import SpectralMonitor
from spectral_monitor.analysis.analyze import analyze_snapshot
from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.snapshot import take_snapshot
from spectral_monitor.live import worker


class TimedMonitor(SpectralMonitor):
    """The monitor with its batch-end and epoch-end hooks timed (wall seconds per call)."""

    def __init__(self, every: int) -> None:
        super().__init__(every_n_steps=every, log_histograms=False)
        self.every = every
        self.batch_end: list[tuple[bool, float]] = []
        self.epoch_end: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(trainer, pl_module, *args)
        seconds = time.perf_counter() - start
        # After the optimizer step global_step counts this batch: the schedule's step.
        self.batch_end.append((trainer.global_step % self.every == 0, seconds))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        start = time.perf_counter()
        super().on_train_epoch_end(trainer, pl_module)
        self.epoch_end.append(time.perf_counter() - start)


def hooks(steps: int, every: int, interval: float | None) -> None:
    worker._SWITCH_INTERVAL = interval
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64 * 64, 64, generator=g), torch.randint(0, 10, (64 * 64,)))
    monitor = TimedMonitor(every)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(FastMLP(), DataLoader(data, batch_size=64, shuffle=True, generator=g))
    plain = [s for sched, s in monitor.batch_end if not sched]
    sched = [s for sched, s in monitor.batch_end if sched]
    label = "unchanged (5 ms)" if interval is None else f"{1e3 * interval:g} ms"
    print(f"\n1. training-thread hooks (wall ms), GIL switch interval during analyses: {label}")
    print("| hook | calls | median | sum |")
    print("|---|---|---|---|")
    for label, values in (
        ("on_train_batch_end, plain step", plain),
        ("on_train_batch_end, snapshot step", sched),
        ("on_train_epoch_end (drain)", monitor.epoch_end),
    ):
        if values:
            print(
                f"| {label} | {len(values)} | {1e3 * statistics.median(values):.3f} | "
                f"{1e3 * sum(values):.1f} |"
            )
    print(f"analyses: {len(monitor.history)}, skipped: {monitor.tracker.num_skipped}")


def worker_split(repeat: int) -> None:
    model = FastMLP()
    config = AnalysisConfig.from_options({})
    result: dict[str, Any] = {}

    def run() -> None:
        analyze_snapshot(take_snapshot(model, config), config)  # warm-up, solver probe
        walls, cpus = [], []
        profile = cProfile.Profile()
        for _ in range(repeat):
            snapshot = take_snapshot(model, config)
            start, cpu = time.perf_counter(), time.thread_time()
            profile.enable()
            analyze_snapshot(snapshot, config)
            profile.disable()
            walls.append(time.perf_counter() - start)
            cpus.append(time.thread_time() - cpu)
        result.update(walls=walls, cpus=cpus, profile=profile)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    stats = pstats.Stats(result["profile"])
    torch_ops = python = 0.0
    top_python: list[tuple[float, str]] = []
    for (filename, line, name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        released = filename == "~" and any(k in name for k in ("torch", "Tensor", "linalg"))
        # scipy-lapack's ctypes call releases the GIL for the whole LAPACK routine.
        if released or (filename.endswith("solvers.py") and name == "_call"):
            torch_ops += tottime
        else:
            python += tottime
            top_python.append((tottime, f"{filename.split('/')[-1]}:{line}({name})"))
    total = torch_ops + python
    print("\n2. the worker's analysis (per analysis)")
    print(
        f"wall {1e3 * statistics.median(result['walls']):.1f} ms, thread CPU "
        f"{1e3 * statistics.median(result['cpus']):.1f} ms; of the profiled time "
        f"{100 * torch_ops / total:.0f}% in torch operators and ctypes LAPACK "
        f"(GIL released), "
        f"{100 * python / total:.0f}% Python (GIL held) = "
        f"{1e3 * python / repeat:.1f} ms per analysis (profiled, so inflated)"
    )
    print("largest Python items (ms per analysis):")
    for tottime, where in sorted(top_python, reverse=True)[:8]:
        print(f"  {1e3 * tottime / repeat:6.2f}  {where}")


def gil_waits(rounds: int) -> None:
    model = FastMLP()
    config = AnalysisConfig.from_options({})
    x = torch.randn(64, 64)
    w = torch.randn(64, 64)

    def loop(seconds: float) -> tuple[int, float]:
        count, start = 0, time.perf_counter()
        cpu = time.thread_time()
        while time.perf_counter() - start < seconds:
            for _ in range(50):
                torch.mm(x, w)  # releases and retakes the GIL, like a training step's ops
            count += 50
        return count, time.thread_time() - cpu

    def rate_with_analyses(interval: float | None) -> tuple[float, int]:
        stop = threading.Event()
        done = [0]

        def analyses() -> None:
            while not stop.is_set():
                analyze_snapshot(take_snapshot(model, config), config)
                done[0] += 1

        default = sys.getswitchinterval()
        if interval is not None:
            sys.setswitchinterval(interval)
        thread = threading.Thread(target=analyses) if interval is not None else None
        try:
            if thread is not None:
                thread.start()
            count, _cpu = loop(0.4)
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            sys.setswitchinterval(default)
        return count / 0.4, done[0]

    analyze_snapshot(take_snapshot(model, config), config)
    rows: dict[str, list[float]] = {"alone": [], "5 ms": [], "0.5 ms": []}
    per_analysis: dict[str, list[float]] = {"5 ms": [], "0.5 ms": []}
    for _ in range(rounds):
        alone, _ = rate_with_analyses(None)
        rows["alone"].append(alone)
        for label, interval in (("5 ms", 0.005), ("0.5 ms", 0.0005)):
            rate, done = rate_with_analyses(interval)
            rows[label].append(rate / alone)
            # Ops the loop lost, in the loop's own time, per analysis run beside it.
            per_analysis[label].append((alone - rate) * 0.4 / alone / max(done, 1))
    print("\n3. GIL waits: a loop of tiny torch ops beside back-to-back analyses")
    print("| switch interval | loop rate vs alone, median (range) | loop time lost per analysis |")
    print("|---|---|---|")
    for label in ("5 ms", "0.5 ms"):
        ratios = rows[label]
        lost = per_analysis[label]
        print(
            f"| {label} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
            f"{1e3 * statistics.median(lost):.1f} ms |"
        )


def fits(rounds: int, steps: int, every: int) -> None:
    """Fit time of the fast MLP without the monitor, with it at Python's default switch
    interval, and with it at the worker's 0.5 ms: interleaved, ratios paired by round."""
    arms = {"off": (None, None), "5 ms": (every, None), "0.5 ms": (every, 0.0005)}
    totals: dict[str, list[float]] = {label: [] for label in arms}
    run_once(20, "cpu", Arm("warm-up", 10), 64, "fast-mlp")
    for _ in range(rounds):
        for label, (arm_every, interval) in arms.items():
            worker._SWITCH_INTERVAL = interval
            totals[label].append(
                run_once(steps, "cpu", Arm(label, arm_every), 64, "fast-mlp")["total"]
            )
    worker._SWITCH_INTERVAL = 0.0005
    print(f"\n4. fit time, {steps} steps, every_n_steps={every}, no logger, {rounds} rounds")
    print("| GIL switch interval during analyses | fit s (median) | ratio to off, median (range) |")
    print("|---|---|---|")
    for label, values in totals.items():
        ratios = [v / o for v, o in zip(values, totals["off"], strict=True)]
        print(
            f"| {label if label != 'off' else 'no monitor'} | {statistics.median(values):.2f} | "
            f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of section 4 (0: skip)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}")
    worker_split(10)
    gil_waits(7)
    for interval in (None, 0.0005):  # Python's default, then the worker's setting
        hooks(args.steps, args.every, interval)
    if args.rounds:
        fits(args.rounds, args.steps, args.every)


if __name__ == "__main__":
    main()
