"""Training-time overhead of SpectralMonitor: the same model trained with and without the monitor
in one run, interleaved, on CPU or CUDA.

Prints, per configuration, the median wall-clock time of ``trainer.fit`` over the repeats, the
median and p99 training step time (batch start to batch end, measured by a callback), and the
overhead ratio monitored / baseline.

    python benchmarks/training_overhead.py                       # CPU, every_n_steps=50
    python benchmarks/training_overhead.py --steps 600 --repeat 5 --every 50 100
    python benchmarks/training_overhead.py --device cuda --steps 2000 --every 100
    python benchmarks/training_overhead.py --figures --repeat 5    # cost of drawing the heatmap
    python benchmarks/training_overhead.py --figures --every 100 25 --skip-esd --threads 1
    python benchmarks/training_overhead.py --model fast-mlp --every 25 100 --repeat 7

``--model fast-mlp`` is the fast loop where a CPU analysis costs the most: a 64->512->512->10 MLP
(a few ms a step on a 2-core CPU), ``SpectralMonitor(every_n_steps=25)``, no logger. Targets:
<= 1.03x fit time at every_n_steps=25, <= 1.01x at the default cadence (100).

``--figures`` compares, all with a TensorBoard logger (the monitor draws figures only when one
is attached): no monitor; then for each ``--every`` the monitor drawing the pictures (alpha
heatmap and alpha trajectories) at the first analysis and at the end only (``histogram_every``
huge) and at every analysis (``histogram_every=1``, the default); and, at the first ``--every``,
those plus an ESD figure per layer every analysis (``log_figures_every=1``). Drawing runs on a
worker thread, but Python code holds the GIL while it draws, so it can still slow the steps that
overlap it: the mean step time and p99 show that where the median may not. Below the table, the
cost of the pictures: per repeat, (fit with pictures every analysis - fit with first+last only)
/ fit without monitor, all three from the same repeat; the median over repeats and the range;
the same for the process's CPU time (all threads: less sensitive to other work on the machine,
and an upper bound, since drawing on a free core costs the training thread only the GIL); and
the time to draw the pictures of a whole run against matplotlib figures of the same, times the
number of analyses, as a share of the fit without monitor.

Target: under 5% on this 2-core CPU at every_n_steps=50 for the small CNN; under 1% on a GPU at
every_n_steps=100.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from bench_utils import p99, timed_fit
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class SmallCNN(L.LightningModule):
    """A 28x28 grayscale classifier: two convolutions, two Linear layers (~1.2 M weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


class FastMLP(L.LightningModule):
    """64 -> 512 -> 512 -> 10 MLP on 64 features (~0.3 M weights): a step of a few ms on a CPU,
    so an analysis every 25 steps competes with training for the cores and the GIL."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.02, momentum=0.9)


#: ``--model`` choices: the module and the shape of one input.
MODELS: dict[str, tuple[type[L.LightningModule], tuple[int, ...]]] = {
    "cnn": (SmallCNN, (1, 28, 28)),
    "fast-mlp": (FastMLP, (64,)),
}


@dataclass(frozen=True)
class Arm:
    """One configuration: the monitor's ``every_n_steps`` (None: no monitor), whether a
    TensorBoard logger is attached, and further ``SpectralMonitor`` arguments."""

    label: str
    every: int | None
    tensorboard: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def arms(every: list[int], figures: bool, esd: bool = True) -> list[Arm]:
    """The default comparison (no logger: the monitor's analysis alone), or with ``figures``
    the cost of drawing the pictures at each ``every`` (and with ``esd`` of ESD figures too, at
    the first)."""
    if not figures:
        return [Arm("off", None), *(Arm(f"every_n_steps={e}", e) for e in every)]
    out = [Arm("no monitor (TB logger)", None, True)]
    for e in every:
        out += [
            Arm(f"every_n_steps={e}, {_FEW}", e, True, {"histogram_every": 10**9}),
            Arm(f"every_n_steps={e}, {_ALL}", e, True, {"histogram_every": 1}),
        ]
    if esd:
        e = every[0]
        out.append(
            Arm(
                f"every_n_steps={e}, pictures + ESD figures every analysis",
                e,
                True,
                {"histogram_every": 1, "log_figures_every": 1},
            )
        )
    return out


_FEW = "pictures first+last only"
_ALL = "pictures every analysis"


def picture_costs(
    every: list[int], results: dict[str, list[dict[str, float]]], base: str
) -> list[str]:
    """Per ``every``: the pictures' cost as a share of the fit without monitor, paired within
    each repeat (machine load drifts between repeats, less within one)."""
    lines = []
    for e in every:
        few, all_ = results[f"every_n_steps={e}, {_FEW}"], results[f"every_n_steps={e}, {_ALL}"]
        for key, what in (("total", "fit time"), ("cpu", "the fit's CPU time")):
            shares = [
                (a[key] - f[key]) / b[key] for a, f, b in zip(all_, few, results[base], strict=True)
            ]
            lines.append(
                f"pictures every analysis at every_n_steps={e}: "
                f"{100 * statistics.median(shares):+.2f}% of {what} (median of {len(shares)} "
                f"repeats; range {100 * min(shares):+.2f}% .. {100 * max(shares):+.2f}%)"
            )
    return lines


def drawing_times(
    steps: int, device: str, every: int, batch_size: int, repeat: int
) -> tuple[float, float, int, int]:
    """Milliseconds to draw the pictures of a whole run's history (``draw_figures``: heatmap
    and trajectories, PNG-encoded) and, for comparison, the same two as matplotlib figures
    (``plot_alpha_heatmap``/``plot_alpha_trajectories``, rendered to arrays); medians of
    ``repeat`` interleaved calls on the history of one fit at ``every``. Also returns the
    number of analyses and of layers."""
    from spectral_monitor.sinks.plots import (
        figure_to_array,
        plot_alpha_heatmap,
        plot_alpha_trajectories,
    )
    from spectral_monitor.sinks.tensorboard_sink import draw_figures

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(batch_size * 64, 1, 28, 28, generator=g),
        torch.randint(0, 10, (batch_size * 64,), generator=g),
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    history = timed_fit(SmallCNN(), loader, steps, device, every).monitor.history
    layers, at, alpha = history.alpha_matrix()
    unreliable = history.layer_matrix("reliable")[2] == 0.0
    curves = {name: history.alpha(name) for name in layers}

    def figures() -> None:
        figure_to_array(plot_alpha_heatmap(layers, at, alpha, unreliable))
        figure_to_array(plot_alpha_trajectories(curves))

    fast, slow = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        draw_figures(None, history)
        fast.append(time.perf_counter() - start)
        start = time.perf_counter()
        figures()
        slow.append(time.perf_counter() - start)
    return 1e3 * statistics.median(fast), 1e3 * statistics.median(slow), len(at), len(layers)


def run_once(
    steps: int, device: str, arm: Arm, batch_size: int, model: str = "cnn"
) -> dict[str, float]:
    module_class, input_shape = MODELS[model]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(batch_size * 64, *input_shape, generator=g),
        torch.randint(0, 10, (batch_size * 64,), generator=g),
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    cpu = time.process_time()  # every thread of this process: training, analysis, drawing
    with tempfile.TemporaryDirectory() as log_dir:
        run = timed_fit(
            module_class(),
            loader,
            steps,
            device,
            arm.every,
            log_dir if arm.tensorboard else None,
            arm.options,
        )
    cpu = time.process_time() - cpu
    step_times = run.step_times[5:]  # the first steps include warm-up
    return {
        "total": run.total,
        "cpu": cpu,
        "median_step": statistics.median(step_times),
        "mean_step": statistics.fmean(step_times),
        "p99_step": p99(step_times),
        "analyses": float(len(run.monitor.history)) if run.monitor else 0.0,
        "skipped": float(run.monitor.tracker.num_skipped) if run.monitor else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=[50])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--figures", action="store_true", help="measure drawing the heatmap and ESD figures"
    )
    parser.add_argument(
        "--skip-esd", action="store_true", help="with --figures: leave out the ESD-figures arm"
    )
    parser.add_argument(
        "--model", choices=sorted(MODELS), default="cnn", help="the model trained (default cnn)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()}"
    )
    print(
        f"model: {args.model}; device: {name}; steps: {args.steps}; batch: {args.batch_size}; "
        f"repeats: {args.repeat}"
    )
    # Imports, kernels, and the monitor's first analysis (its solver probe) before timing.
    run_once(20, args.device, Arm("warm-up", 10), args.batch_size, args.model)
    configs = arms(args.every, args.figures, esd=not args.skip_esd)
    results: dict[str, list[dict[str, float]]] = {a.label: [] for a in configs}
    for _ in range(args.repeat):  # interleaved, so drifts in machine load hit every config
        for arm in configs:
            results[arm.label].append(
                run_once(args.steps, args.device, arm, args.batch_size, args.model)
            )

    def med(arm: Arm, key: str) -> float:
        return statistics.median(r[key] for r in results[arm.label])

    def spread(arm: Arm, key: str) -> str:
        values = [1e3 * r[key] for r in results[arm.label]]
        return f"{min(values):.2f}–{max(values):.2f}"

    base = configs[0]
    base_total, base_step = med(base, "total"), med(base, "median_step")
    base_mean = med(base, "mean_step")
    print(
        "\n| monitor | fit s (median) | overhead | median step ms (range) | step ratio | "
        "mean step ms | mean ratio | p99 step ms | analyses | skipped |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arm in configs:
        total = med(arm, "total")
        print(
            f"| {arm.label} | {total:.3f} | {100 * (total / base_total - 1):+.1f}% | "
            f"{1e3 * med(arm, 'median_step'):.2f} ({spread(arm, 'median_step')}) | "
            f"{med(arm, 'median_step') / base_step:.3f} | {1e3 * med(arm, 'mean_step'):.2f} | "
            f"{med(arm, 'mean_step') / base_mean:.3f} | {1e3 * med(arm, 'p99_step'):.2f} | "
            f"{med(arm, 'analyses'):.0f} | {med(arm, 'skipped'):.0f} |"
        )
    print(f"\nbaseline median step {1e3 * base_step:.2f} ms")
    # Ratios of runs made side by side (same repeat), so a slow phase of the machine cancels.
    print("fit-time ratio to the first arm, paired by repeat: median (min-max)")
    for arm in configs[1:]:
        ratios = [
            r["total"] / b["total"]
            for r, b in zip(results[arm.label], results[base.label], strict=True)
        ]
        print(
            f"  {arm.label}: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
        )
    if args.figures:
        print("\n".join(["", *picture_costs(args.every, results, base.label)]))
        for e in args.every:
            fast, slow, draws, layers = drawing_times(
                args.steps, args.device, e, args.batch_size, 5 * args.repeat
            )
            print(
                f"drawing at every_n_steps={e} ({draws} analyses, {layers} layers): "
                f"{fast:.1f} ms per analysis (matplotlib figures: {slow:.1f} ms, "
                f"{slow / fast:.0f}x); x {draws} analyses = "
                f"{100 * draws * fast / 1e3 / base_total:.2f}% of the fit without monitor"
            )


if __name__ == "__main__":
    main()
