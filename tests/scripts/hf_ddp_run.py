"""A 2-process Hugging Face Trainer run on CPU (gloo) with SpectralTrainerCallback; each rank
writes what it saw. Start it with torchrun::

    python -m torch.distributed.run --nproc_per_node 2 tests/scripts/hf_ddp_run.py OUT_DIR \
        [--stop-below X]

Each rank writes OUT_DIR/rank{r}.json: its history, the steps of the spectral entries in its
``state.log_history``, its stop state, global_step and snapshot share; rank 0 also saves the final
weights (OUT_DIR/final.pt). HF's TensorBoard logs go to OUT_DIR/tb.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_helpers import TokenData, tiny_gpt2, training_args
from lightning_helpers import TRUST_TINY
from transformers import Trainer

from spectral_monitor import SpectralTrainerCallback


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop-below", type=float, default=None)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(args.out / "tb")
    callback = SpectralTrainerCallback(
        every_n_steps=5,
        **TRUST_TINY,
        stop_below=args.stop_below,
        stop_on="alpha_mean",
        stop_patience=2,
        start_step=0,
    )
    hf_args = training_args(
        args.out / "hf", max_steps=22, report_to=["tensorboard"], ddp_backend="gloo",
        per_device_train_batch_size=4,
    )  # fmt: skip
    trainer = Trainer(
        model=tiny_gpt2(), args=hf_args, train_dataset=TokenData(), callbacks=[callback]
    )
    trainer.train()
    rank = trainer.args.process_index
    model = trainer.model
    logged = [e["step"] for e in trainer.state.log_history if "spectral/alpha_mean" in e]
    data = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "history": callback.history.state_dict(),
        "logged_steps": logged,
        "stopped_step": callback.stopped_step,
        "snapshot_bytes": callback.tracker.last_snapshot_bytes,
        "skipped": callback.tracker.num_skipped,
    }
    (args.out / f"rank{rank}.json").write_text(json.dumps(data))
    if rank == 0:
        torch.save(model.state_dict(), args.out / "final.pt")


if __name__ == "__main__":
    main()
