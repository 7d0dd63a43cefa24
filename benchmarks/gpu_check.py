"""One prepared check for a GPU session: correctness of the CUDA path, analysis speed, and the
training step-time overhead of SpectralMonitor, printed as one table.

    python benchmarks/gpu_check.py                 # ~3-5 minutes on an H100
    python benchmarks/gpu_check.py --quick         # smaller, for a smoke run

1. Correctness: a GPT-2-small-sized stack of Linear layers (12 blocks of 768x2304, 768x768,
   768x3072, 3072x768 = 48 matrices) analysed on CUDA (float32 Gram + eigvalsh, batched fit)
   against the CPU in float64; max relative |Δalpha| (target <= 1e-3), identical skip reasons.
2. Speed: the full analysis of that model on the GPU, warm, median of 5 (target < 0.5 s), next to
   the bare batched eigensolver on the same matrices.
3. Host syncs: synchronising CUDA calls in one analysis (``set_sync_debug_mode``) of 8 and of 48
   layers, which must be equal; and large layers: a bf16 32000x4096 embedding-sized and
   4096x11008 matrix, the allocator's peak extra memory against ``report.memory_bytes``.
4. Overhead: the same small transformer trained with and without the monitor
   (every_n_steps=100), interleaved; median and p99 step time (target: overhead < 1 %), and the
   step times of the steps right after each snapshot, which would show a stalled training stream.

It needs CUDA; on a machine without it, it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Any

import lightning as L
import torch
from bench_utils import median_seconds, p99, timed_fit
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spectral_monitor import analyze
from spectral_monitor.spectra.eigen import batched_eigenvalues
from spectral_monitor.weights.layers import select_layers, weight_matrices


def gpt2_small_linears(blocks: int = 12, dim: int = 768) -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(blocks):
        layers += [
            nn.Linear(dim, 3 * dim),
            nn.Linear(dim, dim),
            nn.Linear(dim, 4 * dim),
            nn.Linear(4 * dim, dim),
        ]
    return nn.Sequential(*layers)


def check_correctness(model: nn.Module) -> dict[str, float]:
    gpu = analyze(model.cuda())
    cpu = analyze(model.cpu(), precision="float64")
    worst = 0.0
    for a, b in zip(gpu.layers, cpu.layers, strict=True):
        assert a.skipped == b.skipped, (a.name, a.skipped, b.skipped)
        if a.skipped is None:
            worst = max(worst, abs(a.alpha - b.alpha) / abs(b.alpha))
    return {"layers": float(len(cpu.fitted)), "max_rel_dalpha": worst}


def time_analysis(model: nn.Module, repeat: int) -> dict[str, float]:
    model = model.cuda()
    analyze(model)  # warm-up: kernels, cuSOLVER handles
    stacks = [weight_matrices(s.weight().detach()) for s in select_layers(model).specs]
    return {
        "analysis_s": median_seconds(lambda: analyze(model), repeat, cuda=True),
        "eigensolver_s": median_seconds(lambda: batched_eigenvalues(stacks), repeat, cuda=True),
    }


def count_host_syncs(blocks: int) -> int:
    """Synchronising CUDA calls during one analysis of ``blocks`` GPT-2-small blocks, counted by
    ``torch.cuda.set_sync_debug_mode``; the count must not grow with the number of layers."""
    model = gpt2_small_linears(blocks=blocks).cuda()
    analyze(model)  # warm-up
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            analyze(model)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def large_layer_memory(precision: str) -> dict[str, float]:
    """A LLaMA-sized embedding (32000x4096) and MLP projection (4096x11008) in bf16: the CUDA
    allocator's peak during analyze() over the memory held before, next to report.memory_bytes,
    and the analysis time."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4096, 32000, bias=False), nn.Linear(4096, 11008, bias=False)
    ).to("cuda", torch.bfloat16)
    analyze(model, precision=precision)  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    report = analyze(model, precision=precision)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() - base
    del model
    torch.cuda.empty_cache()
    return {
        "peak_mib": peak / 2**20,
        "account_mib": report.memory_bytes / 2**20,
        "seconds": seconds,
        "fitted": float(len(report.fitted)),
    }


class TinyGPT(L.LightningModule):
    def __init__(self, dim: int = 512, depth: int = 4, vocab: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(dim, 8, 4 * dim, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(dim, vocab)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
        logits = self.head(self.body(self.embed(x), mask=mask, is_causal=True))
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-4)


def train(steps: int, every: int | None) -> dict[str, float]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randint(0, 256, (4096, 128)), torch.randint(0, 256, (4096, 128)))
    loader = DataLoader(data, batch_size=32, shuffle=True)
    run = timed_fit(TinyGPT(), loader, steps, "cuda", every)
    times = run.step_times[10:]
    after = [
        t for k, t in enumerate(run.step_times) if every and k >= 10 and (k + 1) % every in (1, 2)
    ]
    return {
        "total": run.total,
        "median": statistics.median(times),
        "p99": p99(times),
        "after_snapshot": statistics.median(after) if after else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: CUDA is not available on this machine", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    model = gpt2_small_linears(blocks=2 if args.quick else 12)
    rows = []
    correct = check_correctness(model)
    rows.append(
        ("CUDA vs CPU float64: max rel Δalpha", f"{correct['max_rel_dalpha']:.2e}", "<= 1e-3")
    )
    speed = time_analysis(model, repeat=5)
    rows.append(("full analysis, GPT-2-small Linears (s)", f"{speed['analysis_s']:.3f}", "< 0.5"))
    rows.append(("bare batched eigensolver (s)", f"{speed['eigensolver_s']:.3f}", ""))
    syncs = {blocks: count_host_syncs(blocks) for blocks in (2, 12)}
    rows.append(
        (
            "host syncs per analysis, 8 / 48 layers",
            f"{syncs[2]} / {syncs[12]}",
            "equal (independent of layer count)",
        )
    )
    for precision in ("float32", "float64"):
        mem = large_layer_memory(precision)
        rows.append(
            (
                f"bf16 32000x4096 + 4096x11008, {precision}: peak extra MiB / account / s",
                f"{mem['peak_mib']:.0f} / {mem['account_mib']:.0f} / {mem['seconds']:.2f}",
                "peak <= account",
            )
        )
    steps = 200 if args.quick else args.steps
    runs: dict[int | None, list[dict[str, float]]] = {None: [], 100: []}
    train(30, None)  # warm-up
    for _ in range(args.repeat):
        for every in (None, 100):
            runs[every].append(train(steps, every))

    def med(every: int | None, key: str) -> float:
        return statistics.median(r[key] for r in runs[every])

    overhead = med(100, "total") / med(None, "total") - 1
    rows.append(
        ("training wall-clock overhead, every_n_steps=100", f"{100 * overhead:+.2f}%", "< 1%")
    )
    rows.append(
        (
            "median step ms, off / on",
            f"{1e3 * med(None, 'median'):.2f} / {1e3 * med(100, 'median'):.2f}",
            "",
        )
    )
    rows.append(
        ("p99 step ms, off / on", f"{1e3 * med(None, 'p99'):.2f} / {1e3 * med(100, 'p99'):.2f}", "")
    )
    rows.append(
        (
            "median step ms right after a snapshot",
            f"{1e3 * med(100, 'after_snapshot'):.2f}",
            "≈ median",
        )
    )
    print("\n| check | measured | target |\n|---|---|---|")
    for name, value, target in rows:
        print(f"| {name} | {value} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
