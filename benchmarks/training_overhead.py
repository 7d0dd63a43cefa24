"""Training-time overhead of SpectralMonitor: the same model trained with and without the monitor
in one run, interleaved, on CPU or CUDA.

Prints, per configuration, the median wall-clock time of ``trainer.fit`` over the repeats, the
median and p99 training step time (batch start to batch end, measured by a callback), and the
overhead ratio monitored / baseline.

    python benchmarks/training_overhead.py                       # CPU, every_n_steps=50
    python benchmarks/training_overhead.py --steps 600 --repeat 5 --every 50 100
    python benchmarks/training_overhead.py --device cuda --steps 2000 --every 100

Target: under 5% on this 2-core CPU at every_n_steps=50 for the small CNN; under 1% on a GPU at
every_n_steps=100.
"""

from __future__ import annotations

import argparse
import statistics
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


def run_once(steps: int, device: str, every: int | None, batch_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(batch_size * 64, 1, 28, 28, generator=g),
        torch.randint(0, 10, (batch_size * 64,), generator=g),
    )
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=g)
    run = timed_fit(SmallCNN(), loader, steps, device, every)
    step_times = run.step_times[5:]  # the first steps include warm-up
    return {
        "total": run.total,
        "median_step": statistics.median(step_times),
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()}"
    )
    print(f"device: {name}; steps: {args.steps}; batch: {args.batch_size}; repeats: {args.repeat}")
    run_once(20, args.device, None, args.batch_size)  # warm-up: kernels, allocator, imports
    configs: list[int | None] = [None, *args.every]
    results: dict[int | None, list[dict[str, float]]] = {c: [] for c in configs}
    for _ in range(args.repeat):  # interleaved, so drifts in machine load hit every config
        for every in configs:
            results[every].append(run_once(args.steps, args.device, every, args.batch_size))

    def med(every: int | None, key: str) -> float:
        return statistics.median(r[key] for r in results[every])

    base_total, base_step = med(None, "total"), med(None, "median_step")
    header = "| monitor | fit s (median) | overhead | median step ms | p99 step ms | analyses |"
    print(f"\n{header} skipped |")
    print("|---|---|---|---|---|---|---|")
    for every in configs:
        label = "off" if every is None else f"every_n_steps={every}"
        total = med(every, "total")
        print(
            f"| {label} | {total:.3f} | {100 * (total / base_total - 1):+.1f}% | "
            f"{1e3 * med(every, 'median_step'):.2f} | {1e3 * med(every, 'p99_step'):.2f} | "
            f"{med(every, 'analyses'):.0f} | {med(every, 'skipped'):.0f} |"
        )
    print(f"\nbaseline median step {1e3 * base_step:.2f} ms")


if __name__ == "__main__":
    main()
