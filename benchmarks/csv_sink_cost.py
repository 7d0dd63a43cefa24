"""Benchmark: what the CSV sink costs the training thread per analysis as the history grows.

Protocol (fixed before looking at results): a synthetic history of a 48-layer model (every field
of ``LayerSpectrum`` filled, values from ``numpy.random.default_rng(0)``) grows one analysis at a
time up to ``--analyses`` (default 1000). At the checkpoints 10, 100, 500 and 1000 analyses it
measures, interleaved in the same run, the best of ``--repeat`` (default 5) wall times of:

- ``CsvSink.write_analysis`` of the new analysis on a sink that has written every earlier one
  (the normal case: it serialises the new analysis's rows, writes the whole file and the
  verdicts, then ``os.replace``) — one call, as in training (a repeat would find the rows
  already serialised);
- ``SpectralHistory.to_csv`` of the whole history, best of ``--repeat`` (what a sink that
  re-serialised everything at each analysis would pay; best-of favours it);

and prints the seconds per analysis, the file size and the ratio ``to_csv / write_analysis``.
The files go to a temporary directory. Run::

    python benchmarks/csv_sink_cost.py
    python benchmarks/csv_sink_cost.py --analyses 100 --repeat 3   # quick
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport
from spectral_monitor.sinks.csv_sink import CsvSink
from spectral_monitor.sinks.sink import Analysis

LAYERS = 48


def report(step: int, rng: np.random.Generator) -> SpectralReport:
    layers = []
    for i in range(LAYERS):
        alpha = float(rng.uniform(1.5, 6.0))
        layers.append(
            LayerSpectrum(
                name=f"blocks.{i // 4}.mlp.fc{i % 4}",
                kind="linear",
                shape=(768, 3072),
                Q=4.0,
                num_evals=768,
                lambda_max=float(rng.uniform(1, 50)),
                alpha=alpha,
                xmin=float(rng.uniform(0.1, 1)),
                D=float(rng.uniform(0.01, 0.1)),
                sigma=0.1,
                n_tail=int(rng.integers(30, 300)),
                alpha_lo=alpha - 0.2,
                alpha_hi=alpha + 0.2,
                reliable=bool(rng.random() < 0.8),
                unreliable_reason=None if rng.random() < 0.8 else "n_tail 20 < min_tail 30",
                alpha_weighted=1.0,
                log_spectral_norm=1.0,
                log_norm=2.0,
                log_alpha_norm=3.0,
                stable_rank=10.0,
                verdict="well-trained",
            )
        )
    return SpectralReport(layers, step=step)


def best(action, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--analyses", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    checkpoints = sorted({n for n in (10, 100, 500, 1000, args.analyses) if n <= args.analyses})
    rng = np.random.default_rng(0)
    history = SpectralHistory()
    print(f"{'analyses':>8} {'rows':>7} {'MB':>6} {'sink s':>8} {'to_csv s':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as directory:
        sink = CsvSink(directory)
        for n in range(1, args.analyses + 1):
            r = report(n * 100, rng)
            history.add(r)
            analysis = Analysis(r, n * 100, {}, history)
            if n not in checkpoints:
                sink.write_analysis(analysis)
                continue
            full = Path(directory) / "full.csv"
            sink_s = best(lambda a=analysis: sink.write_analysis(a), 1)
            csv_s = best(lambda f=full: history.to_csv(f), args.repeat)
            size = sink.history_path.stat().st_size / 2**20
            ratio = csv_s / sink_s if sink_s > 0 else math.nan
            print(f"{n:>8} {n * LAYERS:>7} {size:>6.1f} {sink_s:>8.4f} {csv_s:>9.4f} {ratio:>6.1f}")


if __name__ == "__main__":
    main()
