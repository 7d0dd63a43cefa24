"""Which fits can be trusted: alpha, tail size and interval width of random and trained layers.

Protocol (fixed before the results were looked at):
- random layers: ``nn.Linear(in, out)`` at PyTorch's default initialisation, for shapes from
  16×16 to 512×512 and classifier-head-like 10×256, 40 seeds each (20 for 512 wide);
- trained layers: every layer of an MLP 64-256-256-10 trained on scikit-learn's digits (Adam
  3e-3, batch 64, 30 epochs, test accuracy printed), 3 seeds, and every layer of a
  random-label run of the same MLP (over-fitting) — all real training on this CPU.
For each fit: number of positive eigenvalues, n_tail, alpha, the 90% analytic interval
[alpha_lo, alpha_hi]. A random layer "reads trained" when alpha is in [2, 6] (WeightWatcher's
well-trained band) — a false verdict. The table gives, per group, the median alpha, the fraction
that reads trained (or over-trained, alpha < 2), and how many fits each candidate rule marks
unreliable: fewer than 50 positive eigenvalues; n_tail < 20 / 30 / 50; relative width
(alpha_hi - alpha_lo) / (alpha - 1) > 1.

    python benchmarks/reliability_study.py          # ~3 min on 2 cores
"""

from __future__ import annotations

import statistics

import numpy as np
import torch
from bench_utils import markdown_table
from sklearn.datasets import load_digits
from torch import nn

from spectral_monitor.spectra.powerlaw_fit import fit_power_law

RANDOM_SHAPES = ((16, 16), (64, 64), (128, 128), (256, 256), (512, 512), (10, 256), (64, 256))
TAIL_RULES = (20, 30, 50)


def spectrum(weight: torch.Tensor) -> np.ndarray:
    """Eigenvalues of WᵀW / rows (the package's default convention), float64."""
    w = weight.detach().to(torch.float64)
    return (torch.linalg.svdvals(w) ** 2 / w.shape[0]).numpy()


def record(weight: torch.Tensor) -> dict[str, float]:
    evals = spectrum(weight)
    fit = fit_power_law(evals)
    return {
        "positive": float(np.count_nonzero(evals > 0)),
        "alpha": fit.alpha,
        "n_tail": float(fit.n_tail),
        "rel_width": (fit.alpha_hi - fit.alpha_lo) / (fit.alpha - 1.0),
    }


def train_mlp(seed: int, random_labels: bool) -> tuple[nn.Module, float]:
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    train, test = perm[:1400], perm[1400:]
    if random_labels:
        y = y.clone()
        y[train] = y[train][torch.randperm(len(train), generator=g)]
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30 if not random_labels else 120):
        order = train[torch.randperm(len(train), generator=g)]
        for k in range(0, len(order), 64):
            idx = order[k : k + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    return model, acc


def summarise(name: str, recs: list[dict[str, float]]) -> list[str]:
    alphas = [r["alpha"] for r in recs]
    trained = np.mean([2.0 <= a <= 6.0 for a in alphas])
    over = np.mean([a < 2.0 for a in alphas])
    cells = [name, str(len(recs)), f"{statistics.median(alphas):.2f}", f"{trained:.2f}"]
    cells += [f"{over:.2f}", f"{statistics.median(r['n_tail'] for r in recs):.0f}"]
    cells.append(f"{np.mean([r['positive'] < 50 for r in recs]):.2f}")
    cells += [f"{np.mean([r['n_tail'] < t for r in recs]):.2f}" for t in TAIL_RULES]
    cells.append(f"{np.mean([r['rel_width'] > 1.0 for r in recs]):.2f}")
    return cells


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for out_f, in_f in RANDOM_SHAPES:
        seeds = 20 if max(out_f, in_f) >= 512 else 40
        recs = []
        for seed in range(seeds):
            torch.manual_seed(seed)
            recs.append(record(nn.Linear(in_f, out_f).weight))
        rows.append(summarise(f"random {out_f}x{in_f}", recs))
        print(" | ".join(rows[-1]), flush=True)
    for random_labels in (False, True):
        by_layer: dict[str, list[dict[str, float]]] = {}
        for seed in range(3):
            model, acc = train_mlp(seed, random_labels)
            print(f"{'random-label' if random_labels else 'healthy'} seed {seed}: acc {acc:.3f}")
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear):
                    shape = "x".join(map(str, module.weight.shape))
                    by_layer.setdefault(f"{name} ({shape})", []).append(record(module.weight))
        for layer, recs in by_layer.items():
            label = "random-label" if random_labels else "trained"
            rows.append(summarise(f"{label} MLP layer {layer}", recs))
            print(" | ".join(rows[-1]), flush=True)
    header = ["layers", "fits", "median alpha", "alpha in [2,6]", "alpha < 2", "median n_tail"]
    header += ["< 50 positive evals"] + [f"n_tail < {t}" for t in TAIL_RULES]
    header.append("rel. width > 1")
    print()
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
