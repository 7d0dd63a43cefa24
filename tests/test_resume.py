"""Nothing is lost or doubled: mid-epoch and off-grid resumes, a changed interval, the final
weights, manual optimisation with two optimizers, pickling, and an old checkpoint's state key."""

from __future__ import annotations

import copy
import importlib.util
import io
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import (
    ConvNet,
    OpenGate,
    assert_analysed_steps,
    image_loader,
    read_events,
    scalar_steps,
    trainer,
)
from torch import nn

from spectral_monitor import SpectralMonitor, SpectralTracker, analyze
from spectral_monitor.cli import main as cli_main


class WithVal(ConvNet):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self.net(x), y))


def logged_steps(log_dir: Path, prefix: str = "spectral") -> dict[str, list[int]]:
    events = read_events(log_dir)
    return {
        tag: scalar_steps(events, tag)
        # Per-layer tags: alpha_mean needs a reliable fit, which these small layers never have.
        for tag in (f"{prefix}/alpha/net.5", f"{prefix}/lambda_max/net.0", f"{prefix}/num_reliable")
    }


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return cli_main(list(argv), out=out), out.getvalue()


def checkpoint_at(directory: Path, step: int) -> str:
    (path,) = directory.glob(f"*step={step}*.ckpt")
    return str(path)


def run_then_resume(
    tmp_path: Path,
    ckpt_kwargs: dict[str, Any],
    resume_step: int,
    every: int = 20,
    every_after: int | None = None,
    model: type[ConvNet] = ConvNet,
    **fit_kwargs: Any,
) -> tuple[SpectralMonitor, SpectralMonitor]:
    """Train 50 steps saving checkpoints, then resume from the one at ``resume_step`` into the
    same TensorBoard run up to step 60."""
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "ckpt"
    first = SpectralMonitor(every_n_steps=every, min_evals=5, mode="sync")
    val = image_loader(n=16) if model is WithVal else None
    trainer(
        max_steps=50,
        callbacks=[first, ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, **ckpt_kwargs)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        **fit_kwargs,
    ).fit(model(), image_loader(), val)
    second = SpectralMonitor(every_n_steps=every_after or every, min_evals=5, mode="sync")
    trainer(
        max_steps=60,
        callbacks=[second],
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
        **fit_kwargs,
    ).fit(model(), image_loader(), val, ckpt_path=checkpoint_at(ckpt_dir, resume_step))
    return first, second


@pytest.mark.parametrize(
    ("every_n_train_steps", "resume_step"),
    [(20, 20), (15, 30), (15, 45)],
    ids=["on-grid-20", "off-grid-30", "off-grid-45"],
)
def test_mid_epoch_checkpoint_resume_keeps_every_step_once(
    tmp_path, every_n_train_steps: int, resume_step: int
) -> None:
    first, second = run_then_resume(
        tmp_path, {"every_n_train_steps": every_n_train_steps}, resume_step
    )
    assert first.history.steps == [0, 20, 40, 50]  # 50: the final weights
    # Off-grid checkpoints add no point; the checkpoint's own analysis is not repeated.
    assert second.history.steps == [0, 20, 40, 60]
    kept = [s for s in first.history.steps if s <= resume_step]
    assert second.history.steps[: len(kept)] == kept
    assert second.history.layers["net.5"]["alpha"][: len(kept)] == pytest.approx(
        first.history.layers["net.5"]["alpha"][: len(kept)], rel=0
    )
    # TensorBoard: what the first run logged after the checkpoint is purged, once per step.
    for tag, steps in logged_steps(tmp_path / "run" / "version_0").items():
        assert steps == [0, 20, 40, 60], tag


def test_val_check_interval_checkpoint_resume(tmp_path) -> None:
    """ModelCheckpoint(monitor="val_loss") saves at validation inside the epoch."""
    _first, second = run_then_resume(
        tmp_path,
        {"monitor": "val_loss"},
        resume_step=30,
        model=WithVal,
        val_check_interval=10,
        limit_val_batches=1,
    )
    assert second.history.steps == [0, 20, 40, 60]
    for tag, steps in logged_steps(tmp_path / "run" / "version_0").items():
        assert steps == [0, 20, 40, 60], tag
    # The loss logged by the resumed run also lines up: no step twice.
    loss = scalar_steps(read_events(tmp_path / "run" / "version_0"), "train_loss")
    assert loss == sorted(set(loss))


def test_changed_interval_keeps_history_and_moves_to_the_new_grid(tmp_path) -> None:
    with pytest.warns(UserWarning, match="every 20 steps, this run every 15") as record:
        _first, second = run_then_resume(
            tmp_path, {"every_n_train_steps": 20}, resume_step=20, every_after=15
        )
    assert sum("every 15" in str(w.message) for w in record) == 1
    assert second.history.steps == [0, 20, 30, 45, 60]
    assert logged_steps(tmp_path / "run" / "version_0")["spectral/alpha/net.5"] == [
        0, 20, 30, 45, 60,
    ]  # fmt: skip


def test_checkpoint_with_the_old_state_key_is_read(tmp_path) -> None:
    ckpt_dir = tmp_path / "ckpt"
    first = SpectralMonitor(every_n_steps=5, min_evals=5, mode="sync")
    trainer(
        max_steps=10,
        callbacks=[first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        enable_checkpointing=True,
    ).fit(ConvNet(), image_loader())
    checkpoint = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    state = checkpoint["callbacks"].pop(first.state_key)
    checkpoint["callbacks"]["SpectralMonitor{'every_n_steps': 5, 'prefix': 'spectral'}"] = state
    torch.save(checkpoint, tmp_path / "old.ckpt")
    second = SpectralMonitor(every_n_steps=5, min_evals=5, mode="sync")
    trainer(max_steps=15, callbacks=[second]).fit(
        ConvNet(), image_loader(), ckpt_path=str(tmp_path / "old.ckpt")
    )
    assert second.history.steps == [0, 5, 10, 15]


def test_final_weights_are_analysed_and_logged_at_the_final_step(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=20, min_evals=5)
    model = ConvNet()
    trainer(max_steps=55, callbacks=[monitor], logger=TensorBoardLogger(tmp_path, name="tb")).fit(
        model, image_loader()
    )
    assert monitor.history.steps[-1] == 55 and monitor.latest is not None
    assert monitor.latest.step == 55
    final = analyze(model, min_evals=5).layer("net.5")
    assert monitor.latest.layer("net.5").alpha == pytest.approx(final.alpha)
    assert logged_steps(tmp_path / "tb")["spectral/alpha/net.5"] == monitor.history.steps
    on_grid = SpectralMonitor(every_n_steps=20, min_evals=5, mode="sync")
    trainer(max_steps=40, callbacks=[on_grid]).fit(ConvNet(), image_loader())
    assert on_grid.history.steps == [0, 20, 40]  # nothing added when the grid ends there


def test_tracker_close_analyses_the_final_weights(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = SpectralTracker(every_n_steps=10, mode="sync", log_dir=tmp_path / "tb")
    for step in range(1, 26):
        loss = model(torch.randn(8, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step(model, step)
    tracker.close()
    assert tracker.history.steps == [1, 10, 20, 25]
    assert tracker.latest is not None and tracker.latest.step == 25
    assert tracker.latest.layer("0").alpha == pytest.approx(analyze(model).layer("0").alpha)
    assert scalar_steps(read_events(tmp_path / "tb"), "spectral/alpha/0") == [1, 10, 20, 25]
    tracker.close()  # a second close adds nothing
    assert tracker.history.steps == [1, 10, 20, 25]


class TwoOptimizers(ConvNet):
    """Manual optimisation: the convolutions and the Linear layers step separately, so
    ``global_step`` advances by two per batch."""

    def __init__(self) -> None:
        super().__init__(lr=0.5)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        for opt in self.optimizers():
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in self.optimizers():
            opt.step()
        return loss

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        convs = [p for m in self.net[:4] for p in m.parameters()]
        linears = [p for m in self.net[4:] for p in m.parameters()]
        return [torch.optim.SGD(convs, lr=self.lr), torch.optim.SGD(linears, lr=self.lr)]


def test_manual_optimisation_with_two_optimizers_uses_one_step_axis(tmp_path) -> None:
    # Reliability thresholds lowered so that these small layers give an alpha_mean to stop on.
    monitor = SpectralMonitor(
        every_n_steps=10,
        min_evals=5,
        min_tail=2,
        max_relative_width=None,
        mode="sync",
        stop_below=100.0,
        stop_on="alpha_mean",
        stop_patience=1,
        start_step=20,
    )
    run = trainer(max_steps=100, callbacks=[monitor], logger=TensorBoardLogger(tmp_path, name="tb"))
    run.fit(TwoOptimizers(), image_loader())
    # Stopped at the first analysis at or after start_step, on the same axis as the loss.
    assert run.global_step == 2 * 20
    assert monitor.history.steps == [0, 10, 20]
    assert monitor.stopped_step == 20
    assert "(last at step 20)" in monitor.stop_reason
    events = read_events(tmp_path / "tb")
    assert scalar_steps(events, "spectral/alpha_mean") == [0, 10, 20]
    assert max(scalar_steps(events, "train_loss")) == 19  # the loss's step axis


def test_monitor_and_tracker_pickle_and_deepcopy_before_and_after_fit(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=5, min_evals=5)
    pickle.loads(pickle.dumps(monitor))
    trainer(max_steps=10, callbacks=[monitor]).fit(ConvNet(), image_loader())
    clone = copy.deepcopy(monitor)
    restored = pickle.loads(pickle.dumps(monitor))
    assert_analysed_steps(monitor, [0, 5, 10])  # step 5 may be skipped by a busy worker
    assert clone.history.steps == restored.history.steps == monitor.history.steps
    # The copy works on its own: its worker thread is made on demand.
    trainer(max_steps=15, callbacks=[restored]).fit(ConvNet(), image_loader())
    assert_analysed_steps(restored, [0, 5, 10, 15])  # a fresh Trainer: a new history
    tracker = SpectralTracker(every_n_steps=2, log_dir=str(tmp_path / "tb"))
    model = nn.Sequential(nn.Linear(32, 32))
    tracker.step(model, 1)
    copied = pickle.loads(pickle.dumps(tracker))
    copied.step(model, 2)
    copied.close()
    tracker.close()
    assert copied.history.steps == [1, 2]


KILL_SCRIPT = Path(__file__).resolve().parent / "scripts" / "kill_resume_run.py"


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_in_a_new_process(tmp_path) -> None:
    """A real kill -9 between checkpoints: the resumed process continues the history, and the
    TensorBoard run holds every analysed step exactly once (what the killed process logged after
    its checkpoint is purged)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "WORLD_SIZE"))}
    command = [sys.executable, str(KILL_SCRIPT), str(tmp_path)]
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    try:
        assert victim.stdout is not None
        # Past the step-20 checkpoint and the analysis at 25, short of the next checkpoint (30).
        for line in victim.stdout:
            if line.strip() == "step 27" or time.monotonic() > deadline:
                break
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    checkpoint = checkpoint_at(tmp_path / "ckpt", 20)
    before = read_events(tmp_path / "tb" / "version_0")
    assert 25 in scalar_steps(before, "spectral/alpha/net.5")  # logged after the checkpoint
    # The resumed run: another process (this one), the same log directory.
    spec = importlib.util.spec_from_file_location("kill_resume_run", KILL_SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monitor = script.fit(tmp_path, resume=checkpoint)
    expected = list(range(0, 41, 5))
    assert monitor.history.steps == expected
    assert monitor.history.layers["net.5"]["step"] == expected
    steps = logged_steps(tmp_path / "tb" / "version_0")
    for tag, logged in steps.items():
        assert logged == expected, tag
    code, text = run_cli("history", str(tmp_path / "tb"))
    assert code == 0 and f"{len(expected)} analyses, steps 0..40" in text


def test_thread_mode_resume_redoes_the_checkpoint_step_a_slow_worker_skipped(
    tmp_path, monkeypatch
) -> None:
    """The worker is slower than training: the analysis of step 10 (or 20) runs until training
    is past step 30, so the analysis due at 30 is skipped (back-pressure) and the checkpoint,
    written at the end of the epoch, holds no analysis at 30; the final analysis at 30 comes after
    it.
    Resumed from that checkpoint, step 30 is analysed again: every step once, in the history and
    in TensorBoard. (Before: the checkpoint counted 30 as done and the purge hid what the first
    run logged there, so 30 was missing.)"""
    import spectral_monitor.live.worker as worker_module

    gate = threading.Event()
    original = worker_module.analyze_snapshot

    def held(snapshot, config, step):
        if 10 <= step < 30:  # the first analysis after step 0 holds the worker until then
            assert gate.wait(timeout=120), "the gate never opened"
        return original(snapshot, config, step)

    monkeypatch.setattr(worker_module, "analyze_snapshot", held)
    ckpt_dir = tmp_path / "ckpt"
    first = SpectralMonitor(every_n_steps=10, min_evals=5, mode="thread")
    trainer(
        max_steps=30,
        callbacks=[first, OpenGate(gate, after=30), ModelCheckpoint(ckpt_dir, save_last=True)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
    ).fit(ConvNet(), image_loader())
    assert first.tracker.num_skipped >= 1  # the analysis due at 30 (10 may be skipped too)
    assert first.history.steps[-1] == 30  # the final analysis, after the checkpoint
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)["callbacks"][first.state_key]
    assert 30 not in saved["history"]["aggregates"]["step"]

    second = SpectralMonitor(every_n_steps=10, min_evals=5, mode="thread")
    trainer(
        max_steps=60, callbacks=[second], logger=TensorBoardLogger(tmp_path, name="run", version=0)
    ).fit(ConvNet(), image_loader(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    steps = second.history.steps
    assert steps == sorted(set(steps))
    assert [s for s in steps if s <= 30] == [s for s in first.history.steps if s <= 30]
    assert 30 in steps and steps[-1] == 60
    assert set(steps) <= {0, 10, 20, 30, 40, 50, 60}  # 40, 50 may be skipped: counted
    for tag, logged in logged_steps(tmp_path / "run" / "version_0").items():
        assert logged == steps, tag
