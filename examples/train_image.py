"""Train a small CNN with SpectralMonitor attached and watch alpha in TensorBoard.

    python examples/train_image.py                                   # scikit-learn's digits
    python examples/train_image.py --data fashion-mnist --data-dir /usr/share/datasets/fashion-mnist
    python examples/train_image.py --max-steps 20                    # a quick smoke run

At the end it prints the per-layer table of the last analysis and the command that opens
TensorBoard on the run.
"""

from __future__ import annotations

import argparse

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from spectral_monitor import SpectralMonitor
from spectral_monitor.demo import DigitsDataModule, FashionMNISTDataModule, ImageClassifier
from spectral_monitor.sinks.tensorboard_sink import tensorboard_hint


def main(argv: list[str] | None = None) -> SpectralMonitor:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "fashion-mnist"], default="digits")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--max-epochs", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps")
    parser.add_argument("--every-n-steps", type=int, default=10, help="analysis interval")
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    if args.data == "digits":
        data: L.LightningDataModule = DigitsDataModule(batch_size=32)
        model = ImageClassifier(in_channels=1, image_size=8, width=32)
    else:
        data = FashionMNISTDataModule(args.data_dir, batch_size=64)
        model = ImageClassifier(in_channels=1, image_size=28, width=32)
    monitor = SpectralMonitor(every_n_steps=args.every_n_steps, log_figures_every=5, min_evals=8)
    logger = TensorBoardLogger(args.logdir, name=args.data.replace("-", "_"))
    trainer = L.Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        callbacks=[monitor],
        logger=logger,
        log_every_n_steps=5,
        enable_progress_bar=False,
    )
    trainer.fit(model, data)
    if monitor.latest is not None:
        print(f"\nspectral analysis at step {monitor.latest.step}:")
        print(monitor.latest.format_table())
    print(f"\nTensorBoard: {tensorboard_hint(args.logdir)}")
    print(f"event files in {logger.log_dir}")
    return monitor


if __name__ == "__main__":
    main()
