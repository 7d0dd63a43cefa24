"""A 2-process run on CPU (gloo) with SpectralMonitor; each rank writes what it saw.

    python tests/scripts/ddp_run.py OUT_DIR [--stop-below X] [--strategy S] [--slow-rank R]

``--strategy``: ``ddp`` is Lightning's DDP; ``ddp_spawn`` the same with the ranks started by
``torch.multiprocessing.spawn`` (the callbacks are pickled into them; the main process then also
writes OUT_DIR/main.json with the metric Lightning brings back); ``fsdp2`` is Lightning's
ModelParallelStrategy with every layer sharded by ``fully_shard``, so the weights are DTensors.
``--slow-rank R`` makes rank R sleep after every batch, so the ranks reach each collective at
different times. Lightning's launcher re-runs this script for rank 1. Each rank writes
OUT_DIR/rank{r}.json with its history, stop state and callback metric; rank 0 also saves the
final (full) weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ModelParallelStrategy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_helpers import (
    TRUST_TINY,
    ConvNet,
    RandomLabelMLP,
    ShardedConvNet,
    image_loader,
    random_label_loader,
)

from spectral_monitor import SpectralMonitor


class Dump(L.Callback):
    def __init__(self, out: Path, monitor: SpectralMonitor, slow_rank: int | None) -> None:
        self.out, self.monitor, self.slow_rank = out, monitor, slow_rank

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_rank == self.slow_rank:
            time.sleep(0.02)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.monitor.on_train_end(trainer, pl_module)  # make sure everything is taken in
        metric = trainer.callback_metrics.get("spectral/alpha_mean")
        layers = [
            m for m in pl_module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
        ]
        data = {
            "rank": trainer.global_rank,
            "global_step": trainer.global_step,
            "history": self.monitor.history.state_dict(),
            "stopped_step": self.monitor.stopped_step,
            "should_stop": bool(trainer.should_stop),
            "alpha_mean_metric": None if metric is None else float(metric),
            "snapshot_bytes": self.monitor.tracker.last_snapshot_bytes,
            "weight_bytes": sum(4 * m.weight.numel() for m in layers),
            "sharded": any(hasattr(m.weight, "full_tensor") for m in layers),
            "skipped": self.monitor.tracker.num_skipped,
        }
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(data))
        # A DTensor's full value is a collective: every rank gathers, rank 0 saves.
        state = {
            k: v.full_tensor() if hasattr(v, "full_tensor") else v
            for k, v in pl_module.state_dict().items()
        }
        if trainer.global_rank == 0:
            torch.save(state, self.out / "final.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-below", type=float, default=None)
    parser.add_argument("--strategy", choices=("ddp", "ddp_spawn", "fsdp2"), default="ddp")
    parser.add_argument("--slow-rank", type=int, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, verbose=False)
    model: L.LightningModule
    if args.stop_below is None:
        model = ShardedConvNet() if args.strategy == "fsdp2" else ConvNet()
        loader, max_steps = image_loader(), 30
    else:
        model, loader, max_steps = RandomLabelMLP(lr=0.2), random_label_loader(), 400
    strategy: Any = args.strategy
    if args.strategy == "fsdp2":
        strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    # A threshold rule takes stop_below and needs it: without one the run has no stop rule.
    stop: dict[str, Any] = {}
    if args.stop_below is not None:
        stop = {"stop_below": args.stop_below, "stop_on": "alpha_mean", "stop_patience": 2}
    monitor = SpectralMonitor(every_n_steps=10, **TRUST_TINY, **stop, start_step=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=max_steps,
        callbacks=[monitor, Dump(args.out, monitor, args.slow_rank)],
        logger=TensorBoardLogger(args.out, name="tb", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(model, loader)
    if args.strategy == "ddp_spawn":
        metric = trainer.callback_metrics.get("spectral/alpha_mean")
        (args.out / "main.json").write_text(
            json.dumps({"alpha_mean_metric": None if metric is None else float(metric)})
        )


if __name__ == "__main__":
    main()
