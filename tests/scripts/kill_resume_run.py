"""The training run of the SIGKILL test: SpectralMonitor and step checkpoints into OUT_DIR.

    python tests/scripts/kill_resume_run.py OUT_DIR

trains slowly (a short sleep after each batch, whose step it prints) so that the test can kill it
with SIGKILL between checkpoints; the test then resumes with :func:`fit` in its own process.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_helpers import ConvNet, image_loader, trainer

from spectral_monitor import SpectralMonitor

EVERY = 5  # analyses
CHECKPOINT_EVERY = 10  # checkpoints


class Progress(L.Callback):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        print(f"step {trainer.global_step}", flush=True)
        time.sleep(self.delay)


def fit(out: Path, resume: str | None = None, max_steps: int = 40) -> SpectralMonitor:
    """Train to ``max_steps`` (from the checkpoint ``resume``, if given); returns the monitor."""
    monitor = SpectralMonitor(every_n_steps=EVERY, min_evals=5, mode="sync")
    checkpoints = ModelCheckpoint(
        dirpath=out / "ckpt", every_n_train_steps=CHECKPOINT_EVERY, save_top_k=-1
    )
    run = trainer(
        max_steps=max_steps,
        callbacks=[monitor, checkpoints, Progress(0.0 if resume else 0.05)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(out, name="tb", version=0),
    )
    run.fit(ConvNet(), image_loader(), ckpt_path=resume)
    return monitor


if __name__ == "__main__":
    fit(Path(sys.argv[1]))
