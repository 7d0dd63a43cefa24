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
from lightning_helpers import TRUST_TINY, ConvNet, OpenGate, image_loader, trainer
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
    "spectral_monitor.analysis.history:SpectralHistory.__init__",
    "spectral_monitor.live.stopping:StopRule.update",
    "spectral_monitor.live.stopping:StopRule.should_stop",
    "spectral_monitor.live.stopping:StopRule.level",
    # logger and sink calls, figure hand-off (draw_figures runs on the drawing thread)
    "spectral_monitor.analysis.report:SpectralReport.scalars",
    "spectral_monitor.analysis.report:SpectralReport.aggregates",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.__init__",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_report",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_analysis",
    "spectral_monitor.sinks.sink:Analysis.__init__",
    "spectral_monitor.integrations.logger_sinks:media_of",
    "spectral_monitor.integrations.logger_sinks:not_sent_message",
    "spectral_monitor.integrations.logger_sinks:open_sink",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_images",
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

#: Called on the training thread only in settings these runs do not reach; their call sites are
#: guarded all the same (each runs inside a guarded hook or a guarded call).
NOT_REACHED = {
    "spectral_monitor.live.shard_plan:ShardPlan.merge": "only while sharded (DDP, FSDP)",
    "spectral_monitor.live.shard_plan:ShardPlan.drop": "only a failing sharded run",
    "spectral_monitor.analysis.history:SpectralHistory.drop_after": "a newer state than weights",
    "spectral_monitor.live.stopping:DropStopRule.level": "with stop_on='alpha_mean_drop'",
    "spectral_monitor.sinks.tensorboard_sink:TensorBoardSink.write_text": "when a stop rule fires",
}

MARKER = "injected fault"
OPTIONS: dict[str, Any] = {
    "every_n_steps": 2,
    "histogram_every": 100,  # figures (the alpha heatmap) for the first analysis and the last
    "stop_below": 1.01,  # a stop rule that is consulted but never fires (alpha > 1 always)
    "stop_on": "alpha_mean",
    "start_step": 100,
    **TRUST_TINY,
}


class Fault:
    """Makes one function raise; counts the calls that raised."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.calls = 0
        self.original: Any = None
        self.armed = False  # constructors (the test's own, before training) are not under test

    def call(self, *args: Any, **kwargs: Any) -> Any:
        if not self.armed:
            return self.original(*args, **kwargs)
        self.calls += 1
        raise RuntimeError(f"{MARKER} in {self.target}")

    @property
    def raiser(self) -> Any:
        """A plain function (so that, set on a class, it binds to the instance)."""

        def replacement(*args: Any, **kwargs: Any) -> Any:
            return self.call(*args, **kwargs)

        return replacement

    def inject(self, monkeypatch: pytest.MonkeyPatch) -> None:
        module_name, qualname = self.target.split(":")
        module = importlib.import_module(module_name)
        owner_name, _, attribute = qualname.rpartition(".")
        if not owner_name:  # a function: replace it wherever it was imported by name
            original = self.original = getattr(module, attribute)
            replacement = self.raiser
            for mod in list(sys.modules.values()):
                if getattr(mod, "__name__", "").startswith(("spectral_monitor", module_name)):
                    for name, value in list(vars(mod).items()):
                        if value is original:
                            monkeypatch.setattr(mod, name, replacement)
            return
        cls = getattr(module, owner_name)
        static = inspect.getattr_static(cls, attribute)
        if isinstance(static, property):
            self.original = static.fget
            monkeypatch.setattr(cls, attribute, property(self.raiser))
        elif isinstance(static, classmethod):
            self.original = static.__func__
            monkeypatch.setattr(cls, attribute, classmethod(self.raiser))
        else:
            self.original = static
            monkeypatch.setattr(cls, attribute, self.raiser)


class WithLeftOut(ConvNet):
    """ConvNet with a weight no layer kind covers (named in the once-per-run left-out warning)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(64, 64), requires_grad=False)


def lightning_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Any, SpectralMonitor, int]]:
    """A run with TensorBoard, figures, a stop rule and a checkpoint, then its resume: the
    trainer, its monitor and the max_steps each must reach. The first run's analysis of step 0
    is held until training has passed step 2, so that step 2 meets a busy worker (back-pressure)
    however fast the machine is."""
    import spectral_monitor.live.worker as worker_module

    gate = threading.Event()
    analyze_snapshot = worker_module.analyze_snapshot

    def held(snapshot: Any, config: Any, step: int) -> Any:
        if step == 0 and threading.current_thread() is not threading.main_thread():
            gate.wait(timeout=120)
        return analyze_snapshot(snapshot, config, step)

    monkeypatch.setattr(worker_module, "analyze_snapshot", held)
    first, second = SpectralMonitor(**OPTIONS), SpectralMonitor(**OPTIONS)
    logger = {"save_dir": tmp_path, "name": "run", "version": 0}
    one = trainer(
        max_steps=2,
        callbacks=[
            first,
            OpenGate(gate, after=2),
            ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True),
        ],
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
    for number, (run, monitor, max_steps) in enumerate(lightning_runs(tmp_path, monkeypatch)):
        before = fault.calls
        model = WithLeftOut()
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            ckpt = None if number == 0 else str(tmp_path / "ckpt" / "last.ckpt")
            fault.armed = True
            try:
                run.fit(model, image_loader(n=64), ckpt_path=ckpt)
            finally:
                fault.armed = False
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
        fault.armed = True
        assert plain_loop(tracker, model, range(1, 5)) == 4
        state = tracker.state_dict()
        tracker.close()
        fault.armed = False
    assert count_marked(record) <= 1, target
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        clone = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")
        fault.armed = True
        clone.load_state_dict(state)
        assert plain_loop(clone, model, range(5, 7)) == 6
        clone.close()
        fault.armed = False
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


def test_every_training_thread_call_is_in_the_fault_list(tmp_path, monkeypatch) -> None:
    runs = lightning_runs(tmp_path, monkeypatch)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    tracker = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")
    clone = SpectralTracker(**OPTIONS, log_dir=tmp_path / "plain")

    def everything() -> None:
        runs[0][0].fit(WithLeftOut(), image_loader(n=64))
        ckpt = str(tmp_path / "ckpt/last.ckpt")
        runs[1][0].fit(WithLeftOut(), image_loader(n=64), ckpt_path=ckpt)
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


# --- the named cases of the guarantee ----------------------------------------------------------


class Factored(nn.Module):
    """A layer of the user's own, taught to the analysis with register_layer."""

    def __init__(self) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(48, 16))
        self.v = nn.Parameter(torch.randn(16, 40))


class WithFactored(ConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.factored = Factored()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        extra = (self.factored.u @ self.factored.v).sum()
        return super().training_step(batch, batch_idx) + 0 * extra


@pytest.fixture
def registered_layers():
    """Restores the registry of user layer classes after the test."""
    from spectral_monitor.weights import layers

    saved = list(layers._REGISTERED)
    yield
    layers._REGISTERED[:] = saved


def test_a_register_layer_function_that_raises_skips_analyses_not_the_run(
    registered_layers,
) -> None:
    from spectral_monitor import register_layer

    def broken(module: Factored) -> dict[str, torch.Tensor]:
        scale = len(module.u) // 0  # a user's bug: ZeroDivisionError at every call
        return {"": module.u @ module.v * scale}

    register_layer(Factored, broken)
    monitor = SpectralMonitor(every_n_steps=2, **TRUST_TINY)
    run = trainer(max_steps=6, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run.fit(WithFactored(), image_loader(n=64))
    assert run.global_step == 6
    failures = [str(w.message) for w in record if "ZeroDivisionError" in str(w.message)]
    assert len(failures) == 1 and "Traceback" in failures[0], failures
    assert "selecting the layers" in failures[0] or "analysis at step 0" in failures[0]
    # Steps 0, 2, 4, 6 each failed (the selection raises every time) and were counted.
    assert monitor.tracker.num_failed == 4 and len(monitor.history) == 0


def test_a_layer_whose_weight_cannot_be_read_is_skipped_with_its_reason(monkeypatch) -> None:
    """A snapshot of one layer raising (a LoRA or attention slice, a failing copy) skips that
    layer, with the reason in the report; the other layers are analysed."""
    import spectral_monitor.analysis.snapshot as snapshot_module

    original = snapshot_module._snapshot_layer

    def flaky(spec, full, config, copy):
        if spec.name == "net.5":
            raise MemoryError("no room for net.5")
        return original(spec, full, config, copy)

    monkeypatch.setattr(snapshot_module, "_snapshot_layer", flaky)
    monitor = SpectralMonitor(every_n_steps=2, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=4, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run.fit(ConvNet(), image_loader(n=64))
    assert run.global_step == 4 and monitor.history.steps == [0, 2, 4]
    layer = monitor.latest.layer("net.5")
    assert layer.skipped == "reading its weight failed (MemoryError: no room for net.5)"
    assert all(monitor.latest.layer(n).skipped is None for n in ("net.0", "net.2", "net.7"))
    warned = [str(w.message) for w in record if "no room for net.5" in str(w.message)]
    assert len(warned) == 1 and "layer 'net.5'" in warned[0] and "Traceback" in warned[0]
    assert monitor.tracker.guard.failures["layer"] == 3


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "mps", "xpu", "meta"])
def test_a_device_this_machine_lacks_is_refused_where_the_monitor_is_built(device) -> None:
    from spectral_monitor import analyze
    from spectral_monitor.utilities.devices import available_devices

    if device in available_devices() or (device == "cuda" and "cuda:0" in available_devices()):
        pytest.skip(f"this machine has {device}")
    for build in (SpectralMonitor, SpectralTracker, lambda **k: analyze(nn.Linear(4, 4), **k)):
        with pytest.raises(ValueError, match="device") as error:
            build(device=device)
        if device != "meta":
            assert "available: cpu" in str(error.value)


def test_cpu_device_is_accepted_and_used() -> None:
    monitor = SpectralMonitor(every_n_steps=2, device="cpu", mode="sync", **TRUST_TINY)
    trainer(max_steps=2, callbacks=[monitor]).fit(ConvNet(), image_loader(n=64))
    assert monitor.history.steps == [0, 2]


def test_tracker_log_dir_is_checked_where_the_tracker_is_built(tmp_path) -> None:
    with pytest.raises(ValueError, match="log_dir"):
        SpectralTracker(log_dir="/proc/nope/runs")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="log_dir"):
        SpectralTracker(log_dir=a_file / "runs")
    with pytest.raises(ValueError, match="log_dir"):
        SpectralTracker(log_dir=a_file)
    SpectralTracker(log_dir=tmp_path / "new" / "runs")  # created
    assert (tmp_path / "new" / "runs").is_dir()


class TurnsNaN(ConvNet):
    """net.5 becomes NaN before step ``at``'s batch."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.global_step == self.at:
            with torch.no_grad():
                self.net[5].weight[0, 0] = float("nan")


def test_a_layer_turning_non_finite_is_warned_once_with_layer_and_step() -> None:
    monitor = SpectralMonitor(every_n_steps=2, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=8, callbacks=[monitor])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        run.fit(TurnsNaN(at=3), image_loader(n=64))
    assert run.global_step == 8
    # The optimizer spreads the NaN to the layers it feeds; net.5 is among them, first at step 4.
    warned = [str(w.message) for w in record if "non-finite weights" in str(w.message)]
    about = [m for m in warned if "'net.5'" in m]
    assert len(about) == 1 and "at step 4" in about[0], warned
    assert len(warned) == len({m.split("'")[1] for m in warned})  # once per layer
    assert "non-finite" in monitor.latest.layer("net.5").skipped
