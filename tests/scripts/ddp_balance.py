"""SpectralBalancer under Lightning's DDP: two CPU processes (gloo); each rank writes, per
optimizer step, the factors it applied, and its final per-layer learning rates.

    python tests/scripts/ddp_balance.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lightning_helpers import TRUST_TINY, RandomLabelMLP, random_label_loader

from spectral_monitor import SpectralBalancer, SpectralMonitor


class Trace(L.Callback):
    def __init__(self, out: Path, balancer: SpectralBalancer) -> None:
        self.out, self.balancer, self.trace = out, balancer, []

    def on_before_optimizer_step(self, trainer: L.Trainer, *args: Any) -> None:
        self.trace.append((trainer.global_step, dict(self.balancer.factors)))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        lrs = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups if "name" in g}
        data = {"trace": self.trace, "lrs": lrs}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(data))


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0, verbose=False)
    monitor = SpectralMonitor(every_n_steps=10, **TRUST_TINY)
    balancer = SpectralBalancer(skip_first_last=False, ramp_steps=3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=40,
        callbacks=[monitor, balancer, Trace(out, balancer)],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(RandomLabelMLP(lr=0.05), random_label_loader())


if __name__ == "__main__":
    main()
