"""Train a small character-level transformer (Linear layers only) on the Python standard
library's own source code, with SpectralMonitor attached.

    python examples/train_charlm.py --max-steps 300
"""

from __future__ import annotations

import argparse

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from spectral_monitor import SpectralMonitor
from spectral_monitor.demo import CharTransformer, StdlibTextDataModule
from spectral_monitor.sinks.tensorboard_sink import tensorboard_hint


def main(argv: list[str] | None = None) -> SpectralMonitor:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--every-n-steps", type=int, default=25)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    data = StdlibTextDataModule(seq_len=64, batch_size=32)
    model = CharTransformer(vocab_size=data.vocab_size, dim=args.dim, depth=args.depth)
    monitor = SpectralMonitor(every_n_steps=args.every_n_steps, exclude="embed")
    logger = TensorBoardLogger(args.logdir, name="charlm")
    trainer = L.Trainer(
        max_steps=args.max_steps,
        callbacks=[monitor],
        logger=logger,
        log_every_n_steps=10,
        limit_val_batches=10,
        val_check_interval=min(100, args.max_steps),
        enable_progress_bar=False,
    )
    trainer.fit(model, data)
    if monitor.latest is not None:
        print(f"\nspectral analysis at step {monitor.latest.step}:")
        print(monitor.latest.format_table())
    print(f"\nTensorBoard: {tensorboard_hint(args.logdir)}")
    return monitor


if __name__ == "__main__":
    main()
