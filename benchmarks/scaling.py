"""How analysis time scales with layer size and with the number of layers, against the bare
eigensolver on the same matrices (the floor the analysis chases).

    python benchmarks/scaling.py                    # sizes 256..2048, 1..32 layers
    python benchmarks/scaling.py --threads 1 --device cuda

Prints two tables: square Linear layers of growing size (one layer), and a growing number of
768x3072 layers; each row has analyze() seconds, floor seconds and their ratio.
"""

from __future__ import annotations

import argparse

import torch
from bench_utils import median_seconds, thread_setting
from torch import nn

from spectral_monitor import analyze
from spectral_monitor.spectra.eigen import batched_eigenvalues
from spectral_monitor.weights.layers import select_layers, weight_matrices


def measure(model: nn.Module, repeat: int, device: str) -> tuple[float, float]:
    model = model.to(device)
    stacks = [weight_matrices(s.weight().detach()) for s in select_layers(model).specs]
    analyze(model)  # warm-up
    ours = median_seconds(lambda: analyze(model), repeat, device == "cuda")
    floor = median_seconds(lambda: batched_eigenvalues(stacks), repeat, device == "cuda")
    return ours, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    with thread_setting(args.threads) as label:
        print(f"device {args.device}, threads {label}, median of {args.repeat}")
        print("\n| square layer | analyze s | floor s | ratio |\n|---|---|---|---|")
        for size in args.sizes:
            ours, floor = measure(nn.Linear(size, size), args.repeat, args.device)
            print(f"| {size}x{size} | {ours:.4f} | {floor:.4f} | {ours / floor:.2f} |")
        print("\n| 768x3072 layers | analyze s | floor s | ratio |\n|---|---|---|---|")
        for count in args.counts:
            model = nn.Sequential(*[nn.Linear(768, 3072) for _ in range(count)])
            ours, floor = measure(model, args.repeat, args.device)
            print(f"| {count} | {ours:.4f} | {floor:.4f} | {ours / floor:.2f} |")


if __name__ == "__main__":
    main()
