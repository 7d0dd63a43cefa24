"""A 2-process DDP run on CPU (gloo) with SpectralMonitor; each rank writes what it saw.

    python tests/scripts/ddp_run.py OUT_DIR [stop_below]

Lightning's DDP launcher re-runs this script for rank 1. Each rank writes OUT_DIR/rank{r}.json
with its history, stop state and callback metric; rank 0 also saves the final weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_helpers import ConvNet, RandomLabelMLP, image_loader, random_label_loader

from spectral_monitor import SpectralMonitor


class Dump(L.Callback):
    def __init__(self, out: Path, monitor: SpectralMonitor) -> None:
        self.out, self.monitor = out, monitor

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor.on_train_end(trainer, pl_module)  # make sure everything is taken in
        metric = trainer.callback_metrics.get("spectral/alpha_mean")
        data = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "history": self.monitor.history.state_dict(),
            "stopped_step": self.monitor.stopped_step,
            "should_stop": bool(trainer.should_stop),
            "alpha_mean_metric": None if metric is None else float(metric),
            "snapshot_bytes": self.monitor.tracker.last_snapshot_bytes,
            "weight_bytes": sum(
                4 * m.weight.numel()
                for m in pl_module.modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
            ),
            "skipped": self.monitor.tracker.num_skipped,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(data))
        if trainer.global_rank == 0:
            torch.save(pl_module.state_dict(), self.out / "final.pt")


def main() -> None:
    out = Path(sys.argv[1])
    stop_below = float(sys.argv[2]) if len(sys.argv) > 2 else None
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, verbose=False)
    if stop_below is None:
        model, loader, max_steps = ConvNet(), image_loader(), 30
    else:
        model, loader, max_steps = RandomLabelMLP(lr=0.2), random_label_loader(), 400
    monitor = SpectralMonitor(every_n_steps=10, min_evals=5, stop_below=stop_below, stop_patience=2)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=max_steps,
        callbacks=[monitor, Dump(out, monitor)],
        logger=TensorBoardLogger(out, name="tb", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, loader)


if __name__ == "__main__":
    main()
