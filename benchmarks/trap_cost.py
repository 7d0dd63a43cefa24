"""Benchmark: what correlation traps cost, against the analysis without them and against
WeightWatcher 0.7.7's ``analyze(randomize=True)``.

Protocol (fixed before any result was seen). For the models of
``benchmarks/analyze_vs_weightwatcher.py`` — (a) VGG-11, (b) MLP 4x1024, (c) 12x 768x3072
(``--quick``: their small versions) — built with fixed seeds, at one thread (torch and, through
threadpoolctl, the BLAS pools), it measures in the same run, interleaved round by round, the best
of ``--repeat`` wall times of:

- ``analyze(m, traps=False)`` ("off");
- ``analyze(m, traps=True)`` ("traps"): one more eigensolve per layer on the element-wise shuffled
  weights, plus the shuffle itself;
- ``WeightWatcher(model=m).analyze(randomize=True)`` ("WW randomize"), its prints silenced.

It prints traps/off (target <= 2.2: one more eigensolve per layer is the floor, 2.0) and
WW randomize/traps (target >= 10), and the number of traps each tool finds per model
(random initialisations: both should find none or nearly none). Ratios, not seconds, are the
result: the machine is shared. The targets decide whether ``traps`` is on by default.

Run::

    python benchmarks/trap_cost.py                # about 5 minutes on an idle 2-core machine
    python benchmarks/trap_cost.py --quick --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings
from collections.abc import Callable
from typing import Any

from analyze_vs_weightwatcher import build_models, import_weightwatcher
from bench_utils import markdown_table, thread_setting
from torch import nn

from spectral_monitor import analyze

TRAPS_OVER_OFF_TARGET = 2.2
WW_OVER_TRAPS_TARGET = 10.0


def run_ww_randomize(ww: Any, model: nn.Module) -> Any:
    """``WeightWatcher(model=m).analyze(randomize=True)`` with prints and warnings swallowed."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        return ww.WeightWatcher(model=model).analyze(randomize=True)


def best_of(tasks: dict[str, Callable[[], Any]], repeat: int) -> tuple[dict[str, float], dict]:
    """Min wall time per task over ``repeat`` interleaved rounds, and each task's last result."""
    best = {name: float("inf") for name in tasks}
    last: dict[str, Any] = {}
    for _ in range(repeat):
        for name, task in tasks.items():
            start = time.perf_counter()
            last[name] = task()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small models")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per model (best is kept)")
    args = parser.parse_args()
    ww = import_weightwatcher()
    rows = []
    with thread_setting(1) as threads:
        for name, model in build_models(args.quick).items():
            analyze(model, traps=True)  # warm-up (first-call costs)
            tasks = {
                "off": lambda m=model: analyze(m, traps=False),
                "traps": lambda m=model: analyze(m, traps=True),
                "ww": lambda m=model: run_ww_randomize(ww, m),
            }
            best, last = best_of(tasks, args.repeat)
            ours = int(sum(max(la.num_traps, 0) for la in last["traps"].layers))
            theirs = int(last["ww"]["rand_num_spikes"].clip(lower=0).sum())
            traps_ratio = best["traps"] / best["off"]
            ww_ratio = best["ww"] / best["traps"]
            print(
                f"{name}: off {best['off']:.3f} s, traps {best['traps']:.3f} s, WW randomize "
                f"{best['ww']:.3f} s; traps/off {traps_ratio:.2f}, WW/traps {ww_ratio:.1f}; "
                f"traps found: ours {ours}, WW {theirs}",
                flush=True,
            )
            rows.append(
                [
                    name,
                    threads,
                    f"{best['off']:.3f}",
                    f"{best['traps']:.3f}",
                    f"{best['ww']:.2f}",
                    f"{traps_ratio:.2f}",
                    f"{ww_ratio:.1f}",
                    f"{ours} / {theirs}",
                ]
            )
    header = [
        "model",
        "threads",
        "off (s)",
        "traps (s)",
        "WW randomize (s)",
        f"traps/off (<= {TRAPS_OVER_OFF_TARGET})",
        f"WW/traps (>= {WW_OVER_TRAPS_TARGET:.0f})",
        "traps ours / WW",
    ]
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
