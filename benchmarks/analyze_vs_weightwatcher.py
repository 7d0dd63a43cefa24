"""Benchmark: ``spectral_monitor.analyze()`` against WeightWatcher 0.7.7 and the bare eigensolver.

For three models built in code (fixed seeds) — (a) a VGG-11-style CNN for 32x32 inputs, (b) an MLP
of four 1024x1024 Linear layers, (c) twelve Linear layers alternating 768x3072 / 3072x768 — and for
each thread setting (one thread, then the default), it measures in the same run, interleaved, the
best of ``--repeat`` wall times of:

- ``WeightWatcher(model=m).analyze()`` (its logging and prints silenced);
- ``analyze(m, conv="slices", normalize=False)`` — WeightWatcher's convention ("ours slices");
- ``analyze(m)`` — our default (``conv="flatten"``, ``normalize=True``);
- the *floor*: float32 Gram ``WᵀW`` + the fastest eigensolver the machine has, on exactly the
  matrices ``analyze()`` builds (``weights.layers.weight_matrices``), one call per layer, in each
  of the two conv2d modes. Every candidate of ``spectra.solvers`` (torch's ``eigvalsh``, SciPy's
  LAPACK ``?syevd`` through ctypes) and ``scipy.linalg.eigh(eigvals_only=True)`` are timed on
  every layer (best of the rounds); the floor is the sum over layers of the fastest of them for
  that layer, so a solver choice that is wrong for some layer shows as ours/floor > 1.
  ``analyze()/floor`` is the cost of everything that is not the solver, plus any wrong choice.
  The old floor (torch's ``eigvalsh`` alone) is printed beside it, and ``solver`` is what
  ``analyze()`` chose (``report.solver``).

It also prints the largest relative alpha difference ``|Δalpha| / alpha_WW`` between the slices
mode and WeightWatcher over the layers with at least 20 eigenvalues (WeightWatcher switches to a
different estimator below 20), and ends with a Markdown table for README.md.

The torch thread count and, through threadpoolctl when installed, the OpenMP/BLAS pools (SciPy's
OpenBLAS, which WeightWatcher's SVD uses) are set to the same value for both tools.

Run (a full run takes about 1.5 minutes on an idle 2-core machine, longer under load)::

    python benchmarks/analyze_vs_weightwatcher.py                 # 1 thread, then the default
    python benchmarks/analyze_vs_weightwatcher.py --threads 1 --repeat 5
    python benchmarks/analyze_vs_weightwatcher.py --quick         # small models: a smoke test
    python benchmarks/analyze_vs_weightwatcher.py --large --threads default --repeat 1
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.linalg
import torch
from bench_utils import (
    add_threads_argument,
    markdown_table,
    parse_threads,
    thread_setting,
    threadpool_limits,
)
from torch import nn

from spectral_monitor import analyze
from spectral_monitor.spectra import solvers
from spectral_monitor.weights.layers import select_layers, weight_matrices

#: Layers with fewer eigenvalues are left out of the alpha comparison (WeightWatcher's fitter
#: switches to a small-sample estimator below 20 points).
MIN_EVALS_COMPARED = 20


def import_weightwatcher() -> ModuleType:
    """Import weightwatcher without its import-time warnings, and silence its logger.

    weightwatcher calls ``logging.basicConfig(level=INFO)`` on import; the root level is restored.
    """
    root_level = logging.getLogger().level
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        import weightwatcher as ww
    logging.getLogger().setLevel(root_level)
    logging.getLogger("weightwatcher").setLevel(logging.CRITICAL)
    return ww


# --------------------------------------------------------------------------------------- models


def vgg11(width: int = 64, seed: int = 0) -> nn.Module:
    """VGG-11 for 32x32x3 inputs: 8 3x3 convolutions with max-pools, then 3 Linear layers."""
    torch.manual_seed(seed)
    plan: list[int | str] = [1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M"]
    layers: list[nn.Module] = []
    channels = 3
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            out = int(item) * width
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU()]
            channels = out
    hidden = 8 * width
    classifier = nn.Sequential(
        nn.Linear(channels, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )
    return nn.Sequential(nn.Sequential(*layers), nn.Flatten(), classifier)


def mlp(width: int = 1024, depth: int = 4, seed: int = 0) -> nn.Module:
    """``depth`` square Linear layers of size ``width``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers)


def transformer_mlps(d_model: int = 768, depth: int = 12, seed: int = 0) -> nn.Module:
    """``depth`` Linear layers alternating d→4d and 4d→d (the MLP blocks of a BERT-base-sized
    transformer): weights 3072x768 and 768x3072 for d = 768."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for k in range(depth):
        fan_in, fan_out = (d_model, 4 * d_model) if k % 2 == 0 else (4 * d_model, d_model)
        layers += [nn.Linear(fan_in, fan_out), nn.GELU()]
    return nn.Sequential(*layers)


def llm_mlp(d_model: int = 4096, hidden: int = 11008) -> nn.Module:
    """A LLaMA-7B-sized MLP: gate and up projections d_model->hidden, down hidden->d_model."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(d_model, hidden, bias=False),
        nn.Linear(d_model, hidden, bias=False),
        nn.Linear(hidden, d_model, bias=False),
    )


def build_models(quick: bool, large: bool = False) -> dict[str, nn.Module]:
    """The three benchmark models (smaller versions with ``quick``), and with ``large`` a
    LLaMA-7B MLP block (three 4096x11008 matrices)."""
    if large:
        hidden = 2752 if quick else 11008
        return {f"(d) 3x 4096x{hidden}": llm_mlp(hidden=hidden)}
    if quick:
        return {
            "(a) VGG-11 w/16": vgg11(width=16),
            "(b) MLP 4x256": mlp(width=256),
            "(c) 4x 192x768": transformer_mlps(d_model=192, depth=4),
        }
    return {
        "(a) VGG-11": vgg11(),
        "(b) MLP 4x1024": mlp(),
        "(c) 12x 768x3072": transformer_mlps(),
    }


# ---------------------------------------------------------------------------------------- tools


def run_weightwatcher(ww: ModuleType, model: nn.Module) -> Any:
    """``WeightWatcher(model=m).analyze()`` with its prints and warnings swallowed."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        return ww.WeightWatcher(model=model).analyze()


def run_ours_slices(model: nn.Module) -> Any:
    """Our analysis in WeightWatcher's convention."""
    return analyze(model, conv="slices", normalize=False)


def run_ours_default(model: nn.Module) -> Any:
    """Our analysis with default arguments."""
    return analyze(model)


def layer_stacks(model: nn.Module, conv2d: str) -> list[torch.Tensor]:
    """The float32 (count, rows, cols) matrices ``analyze()`` builds, one stack per layer."""
    with torch.no_grad():
        return [
            weight_matrices(spec.weight().detach().float(), conv2d)  # type: ignore[arg-type]
            for spec in select_layers(model).specs
        ]


def _scipy_eigh(gram: torch.Tensor) -> torch.Tensor:
    """``scipy.linalg.eigh(eigvals_only=True)`` on each matrix (it holds the GIL)."""
    return torch.from_numpy(
        np.stack(
            [scipy.linalg.eigh(g, eigvals_only=True, check_finite=False) for g in gram.numpy()]
        )
    )


def floor_solvers() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Every eigensolver the floor takes the fastest of, by name."""
    out: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        s.name: s.solve for s in solvers.available_solvers("cpu")
    }
    out["scipy.eigh"] = _scipy_eigh
    return out


def run_floor(stacks: list[torch.Tensor]) -> None:
    """The bare torch eigensolver: float32 Gram matrix and ``eigvalsh``, one call per layer."""
    with torch.no_grad():
        for mats in stacks:
            torch.linalg.eigvalsh(mats.mT @ mats)


def floor_tasks(stacks: list[torch.Tensor], tag: str) -> dict[str, Callable[[], object]]:
    """One timed task per (layer, solver): Gram + solve, for the per-layer fastest solver."""
    tasks: dict[str, Callable[[], object]] = {}
    for name, solve in floor_solvers().items():
        for k, mats in enumerate(stacks):

            def task(
                mats: torch.Tensor = mats, solve: Callable[[torch.Tensor], torch.Tensor] = solve
            ) -> object:
                with torch.no_grad():
                    return solve(mats.mT @ mats)

            tasks[f"floor:{tag}:{name}:{k}"] = task
    return tasks


def per_layer_floor(times: dict[str, float], tag: str, layers: int) -> tuple[float, float]:
    """(sum over layers of the fastest solver's time, torch's own sum) from :func:`floor_tasks`
    timings."""
    best = [math.inf] * layers
    torch_sum = 0.0
    for key, seconds in times.items():
        if not key.startswith(f"floor:{tag}:"):
            continue
        _, _, name, k = key.split(":")
        best[int(k)] = min(best[int(k)], seconds)
        if name == "torch":
            torch_sum += seconds
    return sum(best), torch_sum


def best_times(
    tasks: dict[str, Callable[[], object]], repeat: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Min wall time of each task over ``repeat`` rounds, and each task's last result.

    Tasks are interleaved in each round, and the order rotates from round to round so that slow
    phases of the machine hit every task.
    """
    names = list(tasks)
    best = dict.fromkeys(names, math.inf)
    results: dict[str, Any] = {}
    for r in range(repeat):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            results[name] = tasks[name]()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


# ------------------------------------------------------------------------------------ comparison


def max_relative_alpha_difference(ww_frame: Any, report: Any) -> tuple[float, int]:
    """max |alpha - alpha_WW| / alpha_WW over layers with >= MIN_EVALS_COMPARED eigenvalues.

    Layers are matched by module name (WeightWatcher's ``longname``). Returns the maximum and the
    number of layers compared.
    """
    ours = {layer.name: layer for layer in report.layers}
    worst, compared = 0.0, 0
    for _, row in ww_frame.iterrows():
        layer = ours.get(str(row["longname"]))
        if layer is None or int(row["num_evals"]) < MIN_EVALS_COMPARED:
            continue
        if layer.num_evals != int(row["num_evals"]):
            raise AssertionError(
                f"{layer.name}: {layer.num_evals} eigenvalues, WeightWatcher {row['num_evals']}"
            )
        worst = max(worst, abs(layer.alpha - float(row["alpha"])) / abs(float(row["alpha"])))
        compared += 1
    return worst, compared


@dataclass
class Row:
    """One line of the results table."""

    model: str
    threads: str
    layers: int
    ww: float
    ours_slices: float
    ours_default: float
    floor_slices: float
    floor_default: float
    dalpha: float
    compared: int
    torch_floor_slices: float = math.nan
    torch_floor_default: float = math.nan
    solver: str = ""

    @property
    def speedup(self) -> float:
        return self.ww / self.ours_slices

    @property
    def over_floor_slices(self) -> float:
        return self.ours_slices / self.floor_slices

    @property
    def over_floor_default(self) -> float:
        return self.ours_default / self.floor_default


HEADER = (
    "model",
    "threads",
    "WW s",
    "ours slices s",
    "WW/ours",
    "max rel dalpha",
    "floor slices s",
    "ours/floor",
    "ours default s",
    "floor default s",
    "ours/floor (default)",
    "torch-only floor slices / default s",
    "solver (slices)",
)


def cells(row: Row) -> list[str]:
    """Formatted cells of a row, in HEADER order."""
    return [
        row.model,
        row.threads,
        f"{row.ww:.3f}",
        f"{row.ours_slices:.3f}",
        f"{row.speedup:.1f}x",
        f"{row.dalpha:.1e} ({row.compared})",
        f"{row.floor_slices:.3f}",
        f"{row.over_floor_slices:.2f}",
        f"{row.ours_default:.3f}",
        f"{row.floor_default:.3f}",
        f"{row.over_floor_default:.2f}",
        f"{row.torch_floor_slices:.3f} / {row.torch_floor_default:.3f}",
        row.solver,
    ]


def benchmark_model(ww: ModuleType, name: str, model: nn.Module, threads: str, repeat: int) -> Row:
    """Time the tools on one model under the current thread setting and compare alphas."""
    model.eval()
    stacks_slices = layer_stacks(model, "slices")
    stacks_default = layer_stacks(model, "flatten")
    # Warm-up of our code paths (first torch calls allocate); WeightWatcher's first call is
    # timed like the others, as the best of the rounds is kept anyway.
    # (the warm-up also runs the solver probe for this thread setting, once per process).
    run_ours_slices(model)
    run_ours_default(model)
    run_floor(stacks_slices)
    times, results = best_times(
        {
            "ww": lambda: run_weightwatcher(ww, model),
            "ours_slices": lambda: run_ours_slices(model),
            "ours_default": lambda: run_ours_default(model),
            **floor_tasks(stacks_slices, "slices"),
            **floor_tasks(stacks_default, "default"),
        },
        repeat,
    )
    report = results["ours_slices"]
    dalpha, compared = max_relative_alpha_difference(results["ww"], report)
    floor_slices, torch_slices = per_layer_floor(times, "slices", len(stacks_slices))
    floor_default, torch_default = per_layer_floor(times, "default", len(stacks_default))
    return Row(
        model=name,
        threads=threads,
        layers=len(report.layers),
        ww=times["ww"],
        ours_slices=times["ours_slices"],
        ours_default=times["ours_default"],
        floor_slices=floor_slices,
        floor_default=floor_default,
        dalpha=dalpha,
        compared=compared,
        torch_floor_slices=torch_slices,
        torch_floor_default=torch_default,
        solver=report.solver,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_threads_argument(parser)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds; the best is kept")
    parser.add_argument("--quick", action="store_true", help="small models (smoke test)")
    parser.add_argument(
        "--large",
        action="store_true",
        help="only a LLaMA-7B MLP block, 3x 4096x11008 (minutes per round on a small CPU)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    settings = parse_threads(parser, args.threads)

    ww = import_weightwatcher()
    # Load SciPy's LAPACK now, so that threadpoolctl's limits below reach its OpenBLAS too.
    solvers.available_solvers("cpu")
    models = build_models(args.quick, args.large)
    print(
        f"torch {torch.__version__}, weightwatcher {getattr(ww, '__version__', '?')}, "
        f"default torch threads {torch.get_num_threads()}, "
        f"threadpoolctl {'yes' if threadpool_limits else 'no (torch threads only)'}, "
        f"best of {args.repeat}"
    )
    rows: list[Row] = []
    start = time.perf_counter()
    for setting in settings:
        with thread_setting(setting) as label:
            for name, model in models.items():
                row = benchmark_model(ww, name, model, label, args.repeat)
                rows.append(row)
                print(
                    f"{name:>18} threads={label:<11} WW {row.ww:7.3f} s | ours slices "
                    f"{row.ours_slices:6.3f} s ({row.speedup:4.1f}x faster) | floor "
                    f"{row.floor_slices:6.3f} s (ours/floor {row.over_floor_slices:4.2f}) | "
                    f"ours default {row.ours_default:6.3f} s (/floor {row.over_floor_default:4.2f})"
                    f" | max rel dalpha {row.dalpha:.1e} over {row.compared} layers"
                    f" | torch-only floor {row.torch_floor_slices:6.3f} s | solver {row.solver}",
                    flush=True,
                )
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    print(markdown_table(HEADER, [cells(row) for row in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
