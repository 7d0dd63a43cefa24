"""Analyse a small CNN built in code and print its per-layer spectral table.

python examples/analyze_model.py [--conv slices] [--no-normalize] [--csv layers.csv]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from spectral_monitor import analyze


def build_model() -> nn.Module:
    """A VGG-style CNN for 32x32 RGB images, randomly initialised (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conv", choices=["flatten", "slices"], default="flatten")
    parser.add_argument("--no-normalize", action="store_true", help="keep sigma^2 (WeightWatcher)")
    parser.add_argument("--csv", help="also write the table as CSV to this path")
    args = parser.parse_args()
    report = analyze(build_model(), conv=args.conv, normalize=not args.no_normalize)
    print(report.format_table())
    print(f"analysis took {report.seconds:.3f} s")
    if args.csv:
        print(f"wrote {report.to_csv(args.csv)}")


if __name__ == "__main__":
    main()
