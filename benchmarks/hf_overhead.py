"""Training-time overhead of SpectralTrainerCallback under a Hugging Face ``Trainer``: the same
randomly initialised GPT-2 trained with and without the callback in one run, interleaved.

Protocol (fixed before looking at results): GPT-2 with ``--layers`` layers (default 4) of width
``--width`` (default 256), 4 heads, vocabulary 2000, sequences of 64 random tokens, batch 8,
AdamW at 1e-4, ``--steps`` optimizer steps on CPU, ``report_to=["tensorboard"]`` and
``logging_steps=50`` in every configuration (HF's own logging is part of the baseline).
Configurations: no callback; the callback at ``every_n_steps`` = each value of ``--every``. Each
configuration runs ``--repeat`` times, the configurations interleaved (A B C A B C ...) so that a
drift in machine load hits all of them; the reported number is the median of the wall-clock time
of ``trainer.train()`` and its ratio to the baseline's median. The analyses taken and skipped
(back-pressure) are printed beside each.

    python benchmarks/hf_overhead.py                          # 300 steps, every 100 and 25
    python benchmarks/hf_overhead.py --steps 100 --layers 2 --width 128   # a busy 2-core machine
    python benchmarks/hf_overhead.py --steps 600 --repeat 5 --every 100 25
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from spectral_monitor import SpectralTrainerCallback


def train_once(
    steps: int, every: int | None, out: str, layers: int = 4, width: int = 256
) -> tuple[float, int, int]:
    """Seconds of ``trainer.train()``, analyses taken in, analyses skipped."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=2000, n_positions=64, n_embd=width, n_layer=layers, n_head=4,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, 2000, (256, 64), generator=torch.Generator().manual_seed(0))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    callbacks = [] if every is None else [SpectralTrainerCallback(every_n_steps=every)]
    args = TrainingArguments(
        out, max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-4,
        logging_steps=50, save_strategy="no", report_to=["tensorboard"], use_cpu=True,
        disable_tqdm=True, seed=0,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    if every is None:
        return seconds, 0, 0
    tracker = callbacks[0].tracker
    return seconds, tracker.num_analyses, tracker.num_skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--every", type=int, nargs="+", default=[100, 25])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    configs: list[int | None] = [None, *args.every]
    times: dict[int | None, list[float]] = {c: [] for c in configs}
    counts: dict[int | None, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as out:  # warm-up: imports, allocator, thread pools
        train_once(10, None, out, args.layers, args.width)
    # (each configuration below runs in a fresh output folder): imports, allocator, thread pools
    for _ in range(args.repeat):
        for config in configs:
            with tempfile.TemporaryDirectory() as out:
                seconds, analyses, skipped = train_once(
                    args.steps, config, out, args.layers, args.width
                )
            times[config].append(seconds)
            counts[config] = (analyses, skipped)
            print(f"  {config}: {seconds:.2f} s", flush=True)
    base = statistics.median(times[None])
    print(
        f"GPT-2 {args.layers} layers x {args.width}, torch threads {torch.get_num_threads()}, "
        f"{args.steps} steps, {args.repeat} repeats"
    )
    print(f"{'configuration':<24}{'median s':>10}{'ratio':>8}{'analyses':>10}{'skipped':>9}")
    for config in configs:
        median = statistics.median(times[config])
        name = "no callback" if config is None else f"every_n_steps={config}"
        analyses, skipped = counts.get(config, (0, 0))
        print(f"{name:<24}{median:>10.2f}{median / base:>8.3f}{analyses:>10}{skipped:>9}")


if __name__ == "__main__":
    main()
