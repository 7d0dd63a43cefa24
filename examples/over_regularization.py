"""Drive a network into over-regularisation and let SpectralMonitor stop it.

An MLP memorises random labels with SGD at a large learning rate (0.2, momentum 0.9) on batches
of 4. Its layers' spectra grow heavy tails: mean alpha falls from ~6 at initialisation to under 2
within about 50 steps, and a threshold rule (``stop_below=2.0, stop_on="alpha_mean"``) ends the
run, saying why. (By default nothing stops a run; ``stop_on="overfit"`` is the detector the stop
study chose, see docs/guide/stopping.md.)

    python examples/over_regularization.py
"""

from __future__ import annotations

import argparse

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from spectral_monitor import SpectralMonitor
from spectral_monitor.demo import RandomLabelDataModule, RandomLabelMLP


def main(argv: list[str] | None = None) -> SpectralMonitor:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.2)
    parser.add_argument("--stop-below", type=float, default=2.0)
    parser.add_argument("--logdir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    monitor = SpectralMonitor(
        every_n_steps=10,
        stop_on="alpha_mean",  # a threshold rule: it takes stop_below as its threshold
        stop_below=args.stop_below,
        stop_patience=2,
        start_step=0,
    )
    trainer = L.Trainer(
        max_steps=args.max_steps,
        callbacks=[monitor],
        logger=TensorBoardLogger(args.logdir, name="over_regularization"),
        log_every_n_steps=10,
        enable_progress_bar=False,
    )
    trainer.fit(RandomLabelMLP(lr=args.lr), RandomLabelDataModule(batch_size=4))
    steps, means = monitor.history.steps, monitor.history.aggregates["alpha_mean"]
    print("\nstep  alpha_mean")
    for step, mean in zip(steps, means, strict=True):
        print(f"{step:>4}  {mean:7.3f}")
    if monitor.stop_reason:
        print(f"\nstopped at step {monitor.stopped_step}: {monitor.stop_reason}")
    else:
        print(f"\nnot stopped: mean alpha stayed at or above {args.stop_below}")
    return monitor


if __name__ == "__main__":
    main()
