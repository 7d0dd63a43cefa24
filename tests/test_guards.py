"""The monitor is never the reason a run dies: every call it makes on the training thread is
guarded (``spectral_monitor/live/guard.py``). Each function in :data:`FAULTS` is made to raise in
turn; every run must reach ``max_steps``, with one warning (and its traceback) for the fault.

A function that the tracker or the Lightning callback calls on the training thread must be listed
in :data:`FAULTS`: ``test_every_training_thread_call_is_in_the_fault_list`` records those calls in
real runs and fails, naming them, for any that is missing."""

from __future__ import annotations

import importlib
import inspect
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, trainer
from torch import nn

from spectral_monitor import SpectralMonitor, SpectralTracker

#: The modules whose calls are guarded at their call sites; calls from them into any other
#: module (of this package, or a logger) are the training thread's calls under test.
OWNERS = {"spectral_monitor.live.tracker", "spectral_monitor.integrations.lightning_callback"}
#: Frames that only pass a call through (the guard itself).
TRANSPARENT = {"spectral_monitor.live.guard"}

#: Every function the tracker and the callback call on the training thread, as
#: ``module:qualname`` (properties by their getter).
FAULTS = [
    # layer selection (which calls the user's register_layer functions) and snapshots
    "spectral_monitor.analysis.snapshot:select",
    "spectral_monitor.weights.layers:select_layers",
    "spectral_monitor.weights.layers:left_out_message",
    "spectral_monitor.analysis.snapshot:take_snapshot",
    "spectral_monitor.analysis.snapshot:_snapshot_layer",
    "spectral_monitor.analysis.snapshot:LayerSnapshot.nbytes",
    # scheduling, the hand-off to the worker, taking results in
    "spectral_monitor.live.shard_plan:ShardPlan.create",
    "spectral_monitor.live.shard_plan:ShardPlan.sharded",
    "spectral_monitor.live.shard_plan:ShardPlan.may_skip",
    "spectral_monitor.live.shard_plan:ShardPlan.snapshot",
    "spectral_monitor.live.shard_plan:ShardPlan.merge",
    "spectral_monitor.live.shard_plan:ShardPlan.drop",
    "spectral_monitor.live.worker:AnalysisWorker.busy",
    "spectral_monitor.live.worker:AnalysisWorker.submit",
    "spectral_monitor.live.worker:AnalysisWorker.poll",
    "spectral_monitor.live.worker:AnalysisWorker.wait",
    "spectral_monitor.live.worker:AnalysisWorker.close",
    "spectral_monitor.live.worker:AnalysisWorker.render",
    "spectral_monitor.live.worker:AnalysisWorker.poll_renders",
    "spectral_monitor.integrations.lightning_callback:_logging_step",
    "spectral_monitor.integrations.lightning_callback:_is_last_batch",
    # history and stop rules
    "spectral_monitor.analysis.history:SpectralHistory.add",
    "spectral_monitor.analysis.history:SpectralHistory.__contains__",
    "spectral_monitor.analysis.history:SpectralHistory.__len__",
    "spectral_monitor.analysis.history:SpectralHistory.steps",
    "spectral_monitor.analysis.history:SpectralHistory.drop_after",
    "spectral_monitor.analysis.history:SpectralHistory.__init__",
    "spectral_monitor.live.stopping:StopRule.update",
    "spectral_monitor.live.stopping:StopRule.should_stop",
    "spectral_monitor.live.stopping:StopRule.level",
    "spectral_monitor.live.stopping:DropStopRule.level",
    # logger and sink calls, figure hand-off (draw_figures runs on the drawing thread)
    "spectral_monitor.analysis.report:SpectralReport.scalars",
    "spectral_monitor.analysis.report:SpectralReport.aggregates",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.__init__",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_report",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_images",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_text",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.flush",
    "spectral_monitor.sinks.tensorboard_sink:draw_figures",
    "spectral_monitor.integrations.lightning_callback:_purge_events_from",
    # checkpoint hooks
    "spectral_monitor.analysis.history:SpectralHistory.state_dict",
    "spectral_monitor.analysis.history:SpectralHistory.load_state_dict",
    "spectral_monitor.live.stopping:StopRule.state_dict",
    "spectral_monitor.live.stopping:StopRule.load_state_dict",
    "spectral_monitor.live.stopping:DropStopRule.state_dict",
    "spectral_monitor.live.stopping:DropStopRule.load_state_dict",
]

MARKER = "injected fault"
OPTIONS: dict[str, Any] = {
    "every_n_steps": 2,
    "histogram_every": 100,  # figures (the alpha heatmap) for the first analysis and the last
    "stop_below": 0.5,  # a stop rule that is consulted but never fires
    "stop_on": "alpha_mean",
    "start_step": 100,
    **TRUST_TINY,
}


class Fault:
    """Makes one function raise; counts the calls that raised."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0

    def raiser(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise RuntimeError(f"{MARKER} in {self.target}")

    def inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        module_name, qualname = self.target.split(":")
        module = importlib.import_module(module_name)
        owner_name, _, attribute = qualname.rpartition(".")
        if not owner_name:  # a function: replace it wherever it was imported by name
            original = getattr(module, attribute)
            for mod in list(sys.modules.values()):
                if getattr(mod, "__name__", "").startswith(("spectral_monitor", module_name)):
                    for name, value in list(vars(mod).items()):
                        if value is original:
                            monkeypatch.setattr(mod, name, self.raiser)
            return
        cls = getattr(module, owner_name)
        static = inspect.getattr_static(cls, attribute)
        if isinstance(static, property):
            monkeypatch.setattr(cls, attribute, property(self.raiser))
        elif isinstance(static, classmethod):
            monkeypatch.setattr(cls, attribute, classmethod(self.raiser))
        else:
            monkeypatch.setattr(cls, attribute, self.raiser)


def lightning_runs(tmp_path: Path) -> list[tuple[Any, SpectralMonitor, int]]:
    """A run with TensorBoard, figures, a stop rule and a checkpoint, then its resume: the
    trainer, its monitor and the max_steps each must reach."""
    first, second = SpectralMonitor(**OPTIONS), SpectralMonitor(**OPTIONS)
    logger = {"save_dir": tmp_path, "name": "run", "version": 0}
    one = trainer(
        max_steps=2,
        callbacks=[first, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(**logger),
    )
    two = trainer(max_steps=3, callbacks=[second], logger=TensorBoardLogger(**logger))
    return [(one, first, 2), (two, second, 3)]


def plain_loop(tracker: SpectralTracker, model: nn.Module, steps: range) -> int:
    """A plain PyTorch loop with the tracker; returns the last step it reached."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    done = 0
    for step in steps:
        loss = model(torch.randn(8, 64)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step(model, step)
        if tracker.should_stop:
            break
        done = step
    return done


def count_marked(record: list[warnings.WarningMessage]) -> int:
    return sum(MARKER in str(w.message) for w in record)


@pytest.mark.slow
@pytest.mark.parametrize("target", FAULTS)
def test_a_failing_training_thread_call_never_stops_training(tmp_path, monkeypatch, target) -> None:
    fault = Fault(target)
    fault.inject(monkeypatch)
    # Lightning: a run that saves a checkpoint, and its resume.
    for number, (run, monitor, max_steps) in enumerate(lightning_runs(tmp_path)):
        before = fault.calls
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ckpt = None if number == 0 else str(tmp_path / "ckpt" / "last.ckpt")
            run.fit(ConvNet(), image_loader(n=64), ckpt_path=ckpt)
        assert run.global_step == max_steps, target
        hit = fault.calls > before
        assert count_marked(record) == int(hit), (target, [str(w.message) for w in record])
        if hit:
            assert "Traceback" in next(str(w.message) for w in record if MARKER in str(w.message))
            assert sum(monitor.tracker.guard.failures.values()) >= 1  # counted
    # A plain loop with a log_dir, its state saved and loaded into a second tracker.
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tracker = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")
        assert plain_loop(tracker, model, range(1, 5)) == 4
        state = tracker.state_dict()
        tracker.close()
    assert count_marked(record) <= 1, target
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clone = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")
        clone.load_state_dict(state)
        assert plain_loop(clone, model, range(5, 7)) == 6
        clone.close()
    assert count_marked(record) <= 1, target
    assert fault.calls > 0, f"{target} was never called: remove it from FAULTS"


def _record_calls(run: Any) -> dict[str, str]:
    """The calls made from OWNERS to other modules on this thread while ``run()`` runs:
    ``{"module:qualname": calling function}``."""
    calls: dict[str, str] = {}
    thread = threading.get_ident()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call" or threading.get_ident() != thread:
            return
        module = frame.f_globals.get("__name__", "")
        if module in OWNERS or module in TRANSPARENT:
            return
        caller = frame.f_back
        while caller is not None and caller.f_globals.get("__name__") in TRANSPARENT:
            caller = caller.f_back
        if caller is not None and caller.f_globals.get("__name__") in OWNERS:
            qualname = frame.f_code.co_qualname
            if frame.f_code.co_name == "__init__" and "self" in frame.f_locals:
                cls = type(frame.f_locals["self"])  # a dataclass's generated __init__
                module, qualname = cls.__module__, f"{cls.__qualname__}.__init__"
            calls[f"{module}:{qualname}"] = caller.f_code.co_qualname

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls


# Built-in helpers that cannot fail on their own (dataclass machinery, typing, weakref).
IGNORED_MODULES = ("typing", "weakref", "functools", "abc", "dataclasses", "contextlib")


def test_every_training_thread_call_is_in_the_fault_list(tmp_path) -> None:
    runs = lightning_runs(tmp_path)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    tracker = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")
    clone = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")

    def everything() -> None:
        runs[0][0].fit(ConvNet(), image_loader(n=64))
        runs[1][0].fit(ConvNet(), image_loader(n=64), ckpt_path=str(tmp_path / "ckpt/last.ckpt"))
        plain_loop(tracker, model, range(1, 5))
        state = tracker.state_dict()
        tracker.close()
        clone.load_state_dict(state)
        plain_loop(clone, model, range(5, 7))
        clone.close()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calls = _record_calls(everything)
    assert calls, "the profile recorded nothing"
    ours = {k: v for k, v in calls.items() if k.startswith("spectral_monitor.")}
    missing = sorted(k for k in ours if k not in FAULTS)
    assert not missing, (
        "called on the training thread but not in tests/test_guards.py FAULTS (add each, and "
        f"guard its call site): {[(k, ours[k]) for k in missing]}"
    )
