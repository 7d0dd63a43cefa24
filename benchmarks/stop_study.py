"""Which stop rule never stops a healthy run: alpha rules replayed on recorded real runs.

Protocol (fixed before any result was looked at; not tuned afterwards):

Runs. Every configuration is trained once per seed with a plain PyTorch loop on this CPU, and
every ``CHECK_EVERY`` = 50 optimizer steps (and at step 0) it records one analysis
(``spectral_monitor.analyze`` with the package defaults: reliable layers only in the aggregates)
— alpha_mean, alpha_min, num_reliable, and per layer alpha, alpha_lo, alpha_hi, reliable — and the
validation loss and accuracy on clean labels. The raw records go to ``stop_study.json``; the
table and figure are made from that file alone, so every rule is evaluated offline on the same
runs (train once, replay the rules).

- healthy (sane settings, trained well past convergence): on scikit-learn digits (1,437 train /
  360 val, 8x8): MLP 64-256-256-10 Adam 3e-3 (the issue's small-head case), MLP 64-128-128-10
  Adam 1e-3, MLP 64-512-512-10 SGD 0.05 momentum 0.9, MLP 64-256-256-256-10 SGD 0.02 momentum
  0.9 weight decay 5e-4, MLP 64-256-256-10 AdamW 1e-3 weight decay 1e-2, CNN (conv 32, conv 64,
  fc 128, head) Adam 2e-3, CNN width 64 SGD 0.05 momentum 0.9; a char-level transformer (dim 64,
  2 blocks) AdamW 1e-3 on the standard library's source; an MLP 784-256-256-10 Adam 1e-3 on 10,000
  Fashion-MNIST images when Debian's files are present (skipped otherwise).
- over-regularising: MLP 64-256-256-10 on digits with random training labels (SGD 0.1, momentum
  0.9, batch 8), with 40 / 60 / 80 % of training labels replaced at random (Adam 3e-3, no weight
  decay, long), learning rate 20x too large (SGD 1.0 on the 64-512-512-10 MLP; Adam 0.05), and
  weight decay 0 with batch 8 for a long run.
- seeds: 0, 1, 2 (full); 0, 1 (``--quick``, which also drops the transformer and the CNN of width
  64 and halves the long runs).

Rules (all replayed on each run's readings; ``spectral_monitor.live.stopping`` implements them):
``today`` alpha_mean < 2, patience 1 (the shipped rule before this study, with the reliable-only
aggregates); ``mean_p3``, ``mean_p5``: alpha_mean < 2 for 3 / 5 consecutive analyses;
``min_p3``: alpha_min < 2 for 3; ``layer_p3``, ``layer_p5``: one reliable layer with alpha < 2 for
3 / 5 consecutive analyses; ``layer_hi_p3``: one reliable layer whose whole 90% interval is below
2 (alpha_hi < 2) for 3; ``drop_0.5``, ``drop_1.0``: alpha_mean below its minimum over the first
500 steps minus 0.5 / 1.0 for 3 consecutive analyses; for comparison Lightning's
``EarlyStopping(monitor="val_loss", patience=5)`` replayed on the same checks (``es_val_loss``).
Rules with a start step use 500 (``start_step``); the others count from step 0.

Added after the first results, to check README recipes (not candidates for the default): the
README's old ``EarlyStopping(monitor="spectral/alpha_mean", mode="max",
divergence_threshold=2.0)`` with its default patience 3 (``es_old_recipe``), and the new recipe,
``EarlyStopping(monitor="spectral/alpha_mean_drop", mode="min", divergence_threshold=1.0,
patience=sys.maxsize)`` (``es_drop_recipe``), both replayed at every analysis (Lightning checks
at epoch ends, which are fewer).

Selection: a rule qualifies only with **zero stops on healthy runs**. Among qualifying alpha
rules, the winner stops the most over-regularising runs; ties go to the smallest median accuracy
lost at the stop (peak validation accuracy minus accuracy at the stop step; a run that is not
stopped counts its final accuracy), then to the smallest median delay after the peak. If no alpha
rule qualifies, the README says so and the default stays "no stop" (``stop_below=None``), with
the rule with the fewest healthy stops named as the safest.

    python benchmarks/stop_study.py --quick   # <= 15 min on 2 loaded cores -> *_quick.*
    python benchmarks/stop_study.py           # full study -> benchmarks/stop_study.{json,md},
                                              #               docs/stop_study.png
    python benchmarks/stop_study.py --replay benchmarks/stop_study.json  # table + figure again
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spectral_monitor import analyze
from spectral_monitor.live.stopping import (
    DropStopRule,
    LayerReading,
    LayerStopRule,
    Reading,
    StopRule,
    ThresholdStopRule,
)

CHECK_EVERY = 50
#: Replayed for comparison, never candidates for the default.
COMPARISONS = ("es_val_loss", "es_old_recipe", "es_drop_recipe")
START_STEP = 500
ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# --- data -------------------------------------------------------------------------------------


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


def digits(seed: int, image: bool = False) -> Data:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images if image else d.data, dtype=torch.float32) / 16.0
    if image:
        x = x.unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = perm[:360], perm[360:]
    return Data(x[train], y[train], x[val], y[val])


def fashion(seed: int) -> Data | None:
    from spectral_monitor.demo.data import FASHION_MNIST_FILES, _find, read_idx

    found = {k: _find(FASHION_DIR, s) for k, s in FASHION_MNIST_FILES.items()}
    if any(v is None for v in found.values()):
        return None
    g = torch.Generator().manual_seed(seed)
    xt = torch.tensor(read_idx(found["train_images"]), dtype=torch.float32).flatten(1) / 255
    yt = torch.tensor(read_idx(found["train_labels"]), dtype=torch.long)
    xv = torch.tensor(read_idx(found["test_images"]), dtype=torch.float32).flatten(1) / 255
    yv = torch.tensor(read_idx(found["test_labels"]), dtype=torch.long)
    pick = torch.randperm(len(xt), generator=g)[:10_000]
    return Data(xt[pick], yt[pick], xv[:2000], yv[:2000])


def text(seed: int) -> Data:
    from spectral_monitor.demo.data import StdlibTextDataModule

    dm = StdlibTextDataModule(seq_len=64, max_chars=200_000)
    dm.setup()
    xt, yt = dm.train_set.tensors
    xv, yv = dm.val_set.tensors
    return Data(xt, yt, xv[:64], yv[:64])


def corrupt(y: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Replace ``fraction`` of the labels by uniformly random classes (0..9)."""
    g = torch.Generator().manual_seed(1000 + seed)
    y = y.clone()
    pick = torch.rand(len(y), generator=g) < fraction
    y[pick] = torch.randint(0, 10, (int(pick.sum()),), generator=g)
    return y


# --- models -----------------------------------------------------------------------------------


def mlp(*widths: int) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def cnn(width: int) -> nn.Module:
    from spectral_monitor.demo.models import ImageClassifier

    return ImageClassifier(width=width).net


def transformer() -> nn.Module:
    from spectral_monitor.demo.models import CharTransformer

    return CharTransformer(dim=64, depth=2, heads=4, max_len=64)


# --- configurations ---------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    group: str  # "healthy" or "overreg"
    data: Callable[[int], Data | None]
    model: Callable[[], nn.Module]
    optimizer: str  # "adam", "adamw", "sgd"
    lr: float
    steps: int
    batch: int = 32
    weight_decay: float = 0.0
    label_noise: float = 0.0
    quick: bool = True


def configs() -> list[Config]:
    img = lambda s: digits(s, image=True)  # noqa: E731
    return [
        Config("mlp256_adam", "healthy", digits, lambda: mlp(64, 256, 256, 10), "adam", 3e-3, 3000),
        Config("mlp128_adam", "healthy", digits, lambda: mlp(64, 128, 128, 10), "adam", 1e-3, 3000),
        Config("mlp512_sgd", "healthy", digits, lambda: mlp(64, 512, 512, 10), "sgd", 0.05, 3000),
        Config(
            "mlp256x3_sgd_wd",
            "healthy",
            digits,
            lambda: mlp(64, 256, 256, 256, 10),
            "sgd",
            0.02,
            3000,
            weight_decay=5e-4,
        ),
        Config(
            "mlp256_adamw",
            "healthy",
            digits,
            lambda: mlp(64, 256, 256, 10),
            "adamw",
            1e-3,
            3000,
            weight_decay=1e-2,
        ),
        Config("cnn32_adam", "healthy", img, lambda: cnn(32), "adam", 2e-3, 2000),
        Config("cnn64_sgd", "healthy", img, lambda: cnn(64), "sgd", 0.05, 2000, quick=False),
        Config("char_transformer", "healthy", text, transformer, "adamw", 1e-3, 1500, quick=False),
        Config(
            "fashion_mlp256", "healthy", fashion, lambda: mlp(784, 256, 256, 10), "adam", 1e-3, 3000
        ),
        Config(
            "random_labels",
            "overreg",
            digits,
            lambda: mlp(64, 256, 256, 10),
            "sgd",
            0.1,
            3000,
            batch=8,
            label_noise=1.0,
        ),
        *(
            Config(
                f"noise{int(p * 100)}",
                "overreg",
                digits,
                lambda: mlp(64, 256, 256, 10),
                "adam",
                3e-3,
                4000,
                label_noise=p,
            )
            for p in (0.4, 0.6, 0.8)
        ),
        Config("lr20x_sgd", "overreg", digits, lambda: mlp(64, 512, 512, 10), "sgd", 1.0, 3000),
        Config("lr17x_adam", "overreg", digits, lambda: mlp(64, 256, 256, 10), "adam", 0.05, 3000),
        Config(
            "wd0_long_b8",
            "overreg",
            digits,
            lambda: mlp(64, 256, 256, 10),
            "adam",
            3e-3,
            6000,
            batch=8,
        ),
    ]


# --- training and recording ------------------------------------------------------------------


def evaluate(model: nn.Module, data: Data) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(data.x_val)
        if logits.dim() == 3:  # sequence model: (batch, time, vocab)
            logits, target = logits.flatten(0, 1), data.y_val.flatten()
        else:
            target = data.y_val
        loss = nn.functional.cross_entropy(logits, target).item()
        acc = (logits.argmax(-1) == target).float().mean().item()
    model.train()
    return loss, acc


def reading_record(model: nn.Module, step: int) -> dict[str, Any]:
    report = analyze(model)
    agg = report.aggregates
    return {
        "step": step,
        "alpha_mean": float(agg["alpha_mean"]),
        "alpha_min": float(agg["alpha_min"]),
        "num_reliable": int(agg["num_reliable"]),
        "layers": [
            [la.name, la.alpha, la.alpha_lo, la.alpha_hi, bool(la.reliable)] for la in report.fitted
        ],
    }


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """The configuration's optimizer over ``model``'s parameters (SGD with momentum 0.9)."""
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def train(config: Config, seed: int, steps: int) -> dict[str, Any] | None:
    data = config.data(seed)
    if data is None:
        return None
    torch.manual_seed(seed)
    model = config.model()
    y_train = data.y_train
    if config.label_noise:
        y_train = corrupt(data.y_train, config.label_noise, seed)
    opt = make_optimizer(config, model)
    g = torch.Generator().manual_seed(seed)
    checks: list[dict[str, Any]] = []
    start = time.perf_counter()
    order = torch.randperm(len(data.x_train), generator=g)
    cursor = 0
    for step in range(steps + 1):
        if step % CHECK_EVERY == 0:
            loss, acc = evaluate(model, data)
            checks.append({**reading_record(model, step), "val_loss": loss, "val_acc": acc})
        if step == steps:
            break
        if cursor + config.batch > len(order):
            order, cursor = torch.randperm(len(data.x_train), generator=g), 0
        idx = order[cursor : cursor + config.batch]
        cursor += config.batch
        logits = model(data.x_train[idx])
        target = y_train[idx]
        if logits.dim() == 3:
            logits, target = logits.flatten(0, 1), target.flatten()
        loss = nn.functional.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {
        "config": config.name,
        "group": config.group,
        "seed": seed,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "checks": checks,
    }


# --- rules, replayed --------------------------------------------------------------------------


def candidate_rules() -> dict[str, Callable[[], StopRule]]:
    return {
        "today": lambda: ThresholdStopRule(2.0, 1, 0, on="alpha_mean"),
        "mean_p3": lambda: ThresholdStopRule(2.0, 3, 0, on="alpha_mean"),
        "mean_p5": lambda: ThresholdStopRule(2.0, 5, 0, on="alpha_mean"),
        "min_p3": lambda: ThresholdStopRule(2.0, 3, 0, on="alpha_min"),
        "layer_p3": lambda: LayerStopRule(2.0, 3, 0),
        "layer_p5": lambda: LayerStopRule(2.0, 5, 0),
        "layer_hi_p3": lambda: LayerStopRule(2.0, 3, 0, bound="alpha_hi"),
        "drop_0.5": lambda: DropStopRule(2.0, 3, START_STEP, margin=0.5),
        "drop_1.0": lambda: DropStopRule(2.0, 3, START_STEP, margin=1.0),
    }


def to_reading(check: dict[str, Any]) -> Reading:
    layers = tuple(LayerReading(n, a, lo, hi, r) for n, a, lo, hi, r in check["layers"])
    return Reading(check["step"], check["alpha_mean"], check["alpha_min"], layers)


def replay(rule: StopRule, checks: list[dict[str, Any]]) -> int | None:
    """The step at which ``rule`` stops the recorded run, or None."""
    for check in checks:
        if rule.update(to_reading(check)):
            return int(check["step"])
    return None


def replay_early_stopping(checks: list[dict[str, Any]], patience: int = 5) -> int | None:
    """Lightning's EarlyStopping(monitor="val_loss", mode="min", patience, min_delta=0)."""
    best, wait = math.inf, 0
    for check in checks:
        if check["val_loss"] < best:
            best, wait = check["val_loss"], 0
        else:
            wait += 1
            if wait >= patience:
                return int(check["step"])
    return None


def replay_es_on_alpha(checks: list[dict[str, Any]], drop: bool) -> int | None:
    """Lightning's EarlyStopping on a spectral scalar, at every analysis; an analysis without the
    scalar (no reliable layer; before start_step for the drop) is a missing metric (strict=False).
    ``drop``: the new recipe (alpha_mean_drop > 1.0); else the old one (alpha_mean, mode="max",
    divergence_threshold=2.0, patience=3)."""
    best, wait, reference = -math.inf, 0, math.inf
    for check in checks:
        value = check["alpha_mean"]
        if math.isnan(value):
            continue
        if drop:
            if check["step"] < START_STEP:
                reference = min(reference, value)
            elif math.isfinite(reference) and reference - value > 1.0:
                return int(check["step"])
            continue
        if value < 2.0:
            return int(check["step"])
        if value > best:
            best, wait = value, 0
        else:
            wait += 1
            if wait >= 3:
                return int(check["step"])
    return None


def evaluate_run(run: dict[str, Any]) -> dict[str, Any]:
    checks = run["checks"]
    accs = [c["val_acc"] for c in checks]
    peak = int(np.argmax(accs))
    by_step = {c["step"]: c["val_acc"] for c in checks}
    stops = {name: replay(make(), checks) for name, make in candidate_rules().items()}
    stops["es_val_loss"] = replay_early_stopping(checks)
    stops["es_old_recipe"] = replay_es_on_alpha(checks, drop=False)
    stops["es_drop_recipe"] = replay_es_on_alpha(checks, drop=True)
    return {
        "config": run["config"],
        "group": run["group"],
        "seed": run["seed"],
        "peak_step": checks[peak]["step"],
        "peak_acc": accs[peak],
        "final_acc": accs[-1],
        "stops": stops,
        "acc_at_stop": {k: (by_step[s] if s is not None else accs[-1]) for k, s in stops.items()},
    }


def summarise(evals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary = {}
    for rule in [*candidate_rules(), *COMPARISONS]:
        healthy = [e for e in evals if e["group"] == "healthy"]
        over = [e for e in evals if e["group"] == "overreg"]
        stopped_over = [e for e in over if e["stops"][rule] is not None]
        lost = [e["peak_acc"] - e["acc_at_stop"][rule] for e in over]
        delay = [e["stops"][rule] - e["peak_step"] for e in stopped_over]
        summary[rule] = {
            "healthy_stops": sum(e["stops"][rule] is not None for e in healthy),
            "healthy_runs": len(healthy),
            "over_stops": len(stopped_over),
            "over_runs": len(over),
            "median_lost": statistics.median(lost) if lost else math.nan,
            "median_delay": statistics.median(delay) if delay else math.nan,
            "before_peak": sum(d < 0 for d in delay),
        }
    return summary


def winner(summary: dict[str, dict[str, Any]]) -> tuple[str | None, str]:
    alpha_rules = [r for r in summary if r not in COMPARISONS]
    qualifying = [r for r in alpha_rules if summary[r]["healthy_stops"] == 0]
    if not qualifying:
        safest = min(alpha_rules, key=lambda r: summary[r]["healthy_stops"])
        return None, safest

    def key(r: str) -> tuple[float, float, float]:
        s = summary[r]
        return (-s["over_stops"], s["median_lost"], _nan_last(s["median_delay"]))

    best = min(qualifying, key=key)
    return best, best


def _nan_last(x: float) -> float:
    return math.inf if math.isnan(x) else x


# --- output -----------------------------------------------------------------------------------


def fmt(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.3f}"
    return str(x)


def tables(evals: list[dict[str, Any]], summary: dict[str, dict[str, Any]]) -> str:
    rules = list(summary)
    lines = [
        "| rule | healthy runs stopped | over-reg. runs stopped | median acc. lost "
        "(over-reg.) | median steps after peak | stops before peak |",
        "|---|---|---|---|---|---|",
    ]
    for r in rules:
        s = summary[r]
        lines.append(
            f"| `{r}` | {s['healthy_stops']}/{s['healthy_runs']} | {s['over_stops']}/"
            f"{s['over_runs']} | {fmt(s['median_lost'])} | {fmt(s['median_delay'])} | "
            f"{s['before_peak']} |"
        )
    lines += ["", "Per run: validation peak (step, accuracy), final accuracy, stop steps:", ""]
    lines.append("| run | group | peak | final | " + " | ".join(f"`{r}`" for r in rules) + " |")
    lines.append("|---" * (4 + len(rules)) + "|")
    for e in evals:
        cells = [
            f"{e['config']} s{e['seed']}",
            e["group"],
            f"{e['peak_step']} ({e['peak_acc']:.3f})",
            f"{e['final_acc']:.3f}",
            *(fmt(e["stops"][r]) for r in rules),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex="col")
    for col, group in enumerate(("healthy", "overreg")):
        ax_a, ax_v = axes[0, col], axes[1, col]
        for run in (r for r in runs if r["group"] == group):
            steps = [c["step"] for c in run["checks"]]
            means = [c["alpha_mean"] for c in run["checks"]]
            lows = [
                min((a for _, a, _, _, rel in c["layers"] if rel), default=math.nan)
                for c in run["checks"]
            ]
            (line,) = ax_a.plot(steps, means, lw=1, label=f"{run['config']} s{run['seed']}")
            ax_a.plot(steps, lows, lw=0.6, ls=":", color=line.get_color())
            ax_v.plot(steps, [c["val_acc"] for c in run["checks"]], lw=1, color=line.get_color())
        ax_a.axhline(2.0, color="k", lw=0.8, ls="--")
        ax_a.set_title(f"{group}: alpha_mean (solid), lowest reliable layer (dotted)")
        ax_a.set_ylabel("alpha")
        ax_v.set_ylabel("validation accuracy (clean labels)")
        ax_v.set_xlabel("optimizer step")
        ax_a.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced set (<= 15 min)")
    parser.add_argument("--out", help="raw per-run records (JSON)")
    parser.add_argument("--replay", help="skip training; table and figure from this JSON")
    parser.add_argument("--markdown", help="table output")
    parser.add_argument("--figure", help="figure output (PNG)")
    parser.add_argument("--only", help="train only configurations whose name contains this")
    args = parser.parse_args(argv)
    # The full study writes the files README shows; --quick writes beside them, never over them.
    if args.quick:
        stem = ROOT / "benchmarks" / "stop_study_quick"
        figure_path = stem.with_suffix(".png")
    else:
        stem, figure_path = ROOT / "benchmarks" / "stop_study", ROOT / "docs" / "stop_study.png"
    args.out = args.out or str(stem.with_suffix(".json"))
    args.markdown = args.markdown or str(stem.with_suffix(".md"))
    args.figure = args.figure or str(figure_path)
    torch.set_num_threads(1)
    if args.replay:
        runs = json.loads(Path(args.replay).read_text())["runs"]
    else:
        seeds = (0, 1) if args.quick else (0, 1, 2)
        runs = []
        for config in configs():
            if args.only and args.only not in config.name:
                continue
            if args.quick and not config.quick:
                continue
            steps = config.steps // 2 if args.quick and config.steps > 3000 else config.steps
            for seed in seeds:
                run = train(config, seed, steps)
                if run is None:
                    print(f"{config.name}: data absent, skipped", file=sys.stderr)
                    break
                runs.append(run)
                print(
                    f"{config.name} s{seed}: {run['seconds']:.1f} s, peak acc "
                    f"{max(c['val_acc'] for c in run['checks']):.3f}",
                    file=sys.stderr,
                    flush=True,
                )
                Path(args.out).write_text(json.dumps({"quick": args.quick, "runs": runs}))
    evals = [evaluate_run(r) for r in runs]
    summary = summarise(evals)
    best, safest = winner(summary)
    verdict = (
        f"winner: `{best}` (zero healthy stops, then most over-regularising runs stopped)"
        if best
        else f"no alpha rule has zero healthy stops; safest: `{safest}`"
    )
    text_out = tables(evals, summary) + "\n\n" + verdict + "\n"
    Path(args.markdown).write_text(text_out)
    figure(runs, Path(args.figure))
    print(text_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
