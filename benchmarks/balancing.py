"""Uniform learning rate vs SpectralBalancer (lr, TempBalance's map) vs SpectralBalancer
(weight decay, AlphaDecay's map), on a task that fits a 2-core CPU.

Protocol (fixed before any result was looked at):

- Data: scikit-learn's ``load_digits`` (1,797 8×8 images, shipped in the package), one fixed
  split: 1,437 training and 360 test images (split seed 0), pixels / 16.
- Model: an MLP 64 → 256 → 256 → 256 → 256 → 10 (ReLU), so that the hidden layers have 64–256
  eigenvalues (reliable fits) and three layers lie between the first and the last.
- Training: SGD, momentum 0.9, lr 0.05, weight decay 5e-4, batch 32, cosine annealing to 0 over
  the run (stepped every optimizer step), ``--epochs`` epochs (45 steps each).
- Monitor, the same in all three arms (the uniform arm only watches): TempBalance's setting,
  ``SpectralMonitor(every_n_steps=45 (one epoch), estimator="hill_median", mode="sync")``,
  default reliability rules. ``mode="sync"`` so that a report reaches the balancer at the same
  step in every run: with the worker thread, when it arrives depends on the machine's load and
  the same seed gives different results.
- Arms: ``uniform``; ``lr`` = ``SpectralBalancer(target="lr")`` (linear map onto [0.5, 1.5],
  first and last layers left out); ``wd`` = ``SpectralBalancer(target="weight_decay")``
  (linear map onto [0.667, 3]).
- Seeds: ``--seeds`` (model initialisation and batch order); every arm runs every seed.
- Reported: test accuracy and test cross-entropy after the last step, mean ± sample std over
  seeds; the mean difference to ``uniform`` with its paired std; the wall-clock time of
  ``trainer.fit`` relative to ``uniform`` (median over seeds); the number of layers whose factor
  was not 1 at the end. One torch thread per run.

Modes:

    python benchmarks/balancing.py --quick     # 3 seeds x 20 epochs: ≤ 15 min on 2 busy cores
    python benchmarks/balancing.py             # 10 seeds x 60 epochs: ~10 min on 2 idle cores
                                               # (estimated from short runs, not measured)
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spectral_monitor import SpectralBalancer, SpectralMonitor

STEPS_PER_EPOCH = 45  # ceil(1437 / 32)
ARMS = ("uniform", "lr", "wd")


class DigitsMLP(L.LightningModule):
    """The benchmark's MLP with SGD + cosine annealing over ``total_steps``."""

    def __init__(self, total_steps: int) -> None:
        super().__init__()
        self.total_steps = total_steps
        widths = [64, 256, 256, 256, 256]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 10))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def digits() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    test, train = order[:360], order[360:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[test], y[test])


def run(arm: str, seed: int, epochs: int) -> dict[str, float]:
    train, test = digits()
    L.seed_everything(seed, verbose=False)
    model = DigitsMLP(epochs * STEPS_PER_EPOCH)
    monitor = SpectralMonitor(
        every_n_steps=STEPS_PER_EPOCH, estimator="hill_median", log_histograms=False, mode="sync"
    )
    callbacks: list[L.Callback] = [monitor]
    balancer = None
    if arm != "uniform":
        balancer = SpectralBalancer(target="lr" if arm == "lr" else "weight_decay")
        callbacks.append(balancer)
    loader = DataLoader(
        train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=epochs,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, loader)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        logits = model.net(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(-1) == y).float().mean())
    moved = 0 if balancer is None else sum(abs(f - 1.0) > 1e-9 for f in balancer.factors.values())
    return {"acc": acc, "loss": loss, "seconds": seconds, "balanced": moved}


def mean_std(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds x 20 epochs")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 10)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 60)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 10)
    epochs = args.epochs or (20 if args.quick else 60)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results: dict[str, list[dict[str, float]]] = {arm: [] for arm in ARMS}
    wall = time.perf_counter()
    for seed in range(seeds):
        for arm in ARMS:
            results[arm].append(run(arm, seed, epochs))
            r = results[arm][-1]
            print(
                f"seed {seed} {arm:<8} acc {r['acc']:.4f} loss {r['loss']:.4f} "
                f"{r['seconds']:.1f} s balanced layers {r['balanced']}",
                flush=True,
            )
    print(f"\n{seeds} seeds x {epochs} epochs ({epochs * STEPS_PER_EPOCH} steps), "
          f"total {time.perf_counter() - wall:.0f} s\n")  # fmt: skip
    print("| arm | test accuracy | Δ acc vs uniform | test loss | Δ loss vs uniform "
          "| time / uniform | layers with factor ≠ 1 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    base = results["uniform"]
    for arm in ARMS:
        rows = results[arm]
        d_acc = [r["acc"] - b["acc"] for r, b in zip(rows, base, strict=True)]
        d_loss = [r["loss"] - b["loss"] for r, b in zip(rows, base, strict=True)]
        pairs = zip(rows, base, strict=True)
        ratio = statistics.median(r["seconds"] / b["seconds"] for r, b in pairs)
        delta = arm != "uniform"
        print(
            f"| {arm} | {mean_std([r['acc'] for r in rows])} "
            f"| {mean_std(d_acc) if delta else '—'} | {mean_std([r['loss'] for r in rows])} "
            f"| {mean_std(d_loss) if delta else '—'} | {ratio:.3f} "
            f"| {statistics.mean(r['balanced'] for r in rows):.1f} |"
        )


if __name__ == "__main__":
    main()
