"""SpectralMonitor in real Lightning runs on CPU, with TensorBoard event files read back."""

from __future__ import annotations

import csv
import math
import signal
import threading
import time
from dataclasses import fields

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning_helpers import (
    TRUST_TINY,
    ConvNet,
    RandomLabelMLP,
    WeightRecorder,
    assert_analysed_steps,
    image_loader,
    random_label_loader,
    read_events,
    scalar_steps,
    trainer,
)

import spectral_monitor.live.worker as worker_module
from spectral_monitor import SpectralMonitor, analyze
from spectral_monitor.analysis.history import LAYER_KEYS
from spectral_monitor.analysis.report import LayerSpectrum

LAYERS = ["net.0", "net.2", "net.5", "net.7"]


def monitor_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("spectral-monitor")]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["thread", "sync"])
def test_sixty_steps_log_every_layer_at_the_right_steps(tmp_path, mode) -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(every_n_steps=10, mode=mode, log_figures_every=3, **TRUST_TINY)
    recorder = WeightRecorder(every=10)
    run = trainer(
        max_steps=60,
        callbacks=[recorder, monitor],
        logger=TensorBoardLogger(tmp_path, name="run"),
    )
    run.fit(ConvNet(), image_loader())
    expected_steps = list(range(0, 61, 10))
    assert_analysed_steps(monitor, expected_steps)
    expected_steps = monitor.history.steps  # thread mode may skip some (counted) under load
    assert not monitor_threads()

    events = read_events(tmp_path / "run")
    tags = events.Tags()
    for layer in LAYERS:
        assert scalar_steps(events, f"spectral/alpha/{layer}") == expected_steps
        assert scalar_steps(events, f"spectral/lambda_max/{layer}") == expected_steps
        assert len(events.Histograms(f"spectral/esd_log10/{layer}")) == len(expected_steps)
        # analyses 0, 3, 6 (by count of analyses done), and always the last one
        figured = {expected_steps[i] for i in range(0, len(expected_steps), 3)}
        figured.add(expected_steps[-1])
        images = events.Images(f"spectral/esd_fit/{layer}")
        assert [e.step for e in images] == sorted(figured)
    for key in ("alpha_mean", "alpha_hat", "alpha_min", "frac_alpha_below_2"):
        assert scalar_steps(events, f"spectral/{key}") == expected_steps
    for key in ("analysis_seconds", "analyses_skipped", "layers_skipped", "snapshot_mb"):
        assert scalar_steps(events, f"spectral_meta/{key}") == expected_steps
    # The heatmap every analysis (histogram_every=1), the last one covering every step.
    assert [e.step for e in events.Images("spectral/alpha_heatmap")] == expected_steps
    assert "custom_scalars__config__" in tags["tensors"]
    assert "spectral/verdicts/text_summary" in tags["tensors"]
    # The loss, logged with self.log, shares the step axis: steps 0..59, ours 0..60.
    assert set(scalar_steps(events, "train_loss")) == set(range(60))

    # Every logged value is what analyze() gives on the weights of that step.
    for step in expected_steps:
        report = analyze(recorder.models[step], **TRUST_TINY)
        for layer in LAYERS:
            logged = {e.step: e.value for e in events.Scalars(f"spectral/alpha/{layer}")}
            assert logged[step] == pytest.approx(report.layer(layer).alpha, rel=1e-5)
            lam = {e.step: e.value for e in events.Scalars(f"spectral/lambda_max/{layer}")}
            assert lam[step] == pytest.approx(report.layer(layer).lambda_max, rel=1e-5)
        means = {e.step: e.value for e in events.Scalars("spectral/alpha_mean")}
        assert means[step] == pytest.approx(report.alpha_mean, rel=1e-5)
    hist = events.Histograms("spectral/esd_log10/net.5")[-1]
    report = analyze(recorder.models[expected_steps[-1]], **TRUST_TINY)
    assert hist.histogram_value.num == report.layer("net.5").num_evals
    assert hist.histogram_value.max == pytest.approx(np.log10(report.layer("net.5").lambda_max))
    assert float(run.callback_metrics["spectral/alpha_mean"]) == pytest.approx(
        report.alpha_mean, rel=1e-5
    )


def test_gradient_accumulation_counts_optimizer_steps(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=20, accumulate_grad_batches=2, callbacks=[monitor])
    run.fit(ConvNet(), image_loader())
    assert run.global_step == 20
    assert monitor.history.steps == [0, 5, 10, 15, 20]


@pytest.mark.slow
def test_stop_below_stops_an_over_regularising_run() -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(
        every_n_steps=10, stop_below=2.0, stop_on="alpha_mean", stop_patience=2, start_step=0
    )
    run = trainer(max_steps=400, callbacks=[monitor])
    run.fit(RandomLabelMLP(lr=0.2), random_label_loader())
    assert run.global_step < 400
    assert monitor.stopped_step == run.global_step
    assert "alpha_mean" in monitor.stop_reason and "stop_below = 2.0" in monitor.stop_reason
    tail = monitor.history.aggregates["alpha_mean"][-2:]
    assert all(a < 2.0 for a in tail)
    # At random initialisation no layer's fit is reliable: no alpha_mean, never a false reading.
    assert math.isnan(monitor.history.aggregates["alpha_mean"][0])
    assert monitor.history.aggregates["num_reliable"][0] == 0


@pytest.mark.slow
def test_lightning_early_stopping_on_alpha_mean() -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(every_n_steps=10)
    stopper = EarlyStopping(
        monitor="spectral/alpha_mean",
        mode="max",
        divergence_threshold=2.0,
        patience=1000,
        check_on_train_epoch_end=True,
        strict=False,  # alpha_mean exists only once a layer's fit is reliable
    )
    # EarlyStopping first in the list: the monitor still drains before it reads.
    run = trainer(max_steps=400, limit_train_batches=20, callbacks=[stopper, monitor])
    run.fit(RandomLabelMLP(lr=0.2), random_label_loader())
    assert run.global_step < 400
    assert stopper.stopped_epoch > 0
    assert float(run.callback_metrics["spectral/alpha_mean"]) < 2.0


@pytest.mark.slow
def test_run_above_threshold_is_not_stopped() -> None:
    torch.manual_seed(0)
    monitor = SpectralMonitor(every_n_steps=10, stop_below=2.0, stop_on="alpha_mean", start_step=0)
    run = trainer(max_steps=80, callbacks=[monitor])
    run.fit(RandomLabelMLP(lr=0.005), random_label_loader())
    assert run.global_step == 80
    assert monitor.stopped_step is None and monitor.stop_reason is None
    assert all(a > 2.0 for a in monitor.history.aggregates["alpha_mean"] if math.isfinite(a))


@pytest.mark.parametrize("mode", ["sync", "thread"])
def test_resume_from_checkpoint_continues_history_without_duplicates(tmp_path, mode) -> None:
    torch.manual_seed(0)
    ckpt_dir = tmp_path / "ckpt"
    first = SpectralMonitor(every_n_steps=10, **TRUST_TINY, mode=mode)
    run = trainer(
        max_steps=30,
        callbacks=[first, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
    )
    run.fit(ConvNet(), image_loader())
    assert_analysed_steps(first, [0, 10, 20, 30])

    second = SpectralMonitor(every_n_steps=10, **TRUST_TINY, mode=mode)
    resumed = trainer(
        max_steps=60,
        callbacks=[second],
        logger=TensorBoardLogger(tmp_path, name="run", version=0),
    )
    resumed.fit(ConvNet(), image_loader(), ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert_analysed_steps(second, [0, 10, 20, 30, 40, 50, 60])
    before = len(first.history)
    assert second.history.steps[:before] == first.history.steps
    assert (
        second.history.layers["net.5"]["alpha"][:before] == first.history.layers["net.5"]["alpha"]
    )
    events = read_events(tmp_path / "run" / "version_0")
    assert scalar_steps(events, "spectral/alpha_mean") == second.history.steps


def test_no_logger_warns_once_and_still_works() -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    with pytest.warns(UserWarning, match="no logger") as record:
        trainer(max_steps=10, callbacks=[monitor]).fit(ConvNet(), image_loader())
    assert sum("no logger" in str(w.message) for w in record) == 1
    assert monitor.history.steps == [0, 5, 10]


def test_csv_logger_and_two_loggers_at_once(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    loggers = [TensorBoardLogger(tmp_path, name="tb"), CSVLogger(tmp_path, name="csv")]
    trainer(max_steps=10, callbacks=[monitor], logger=loggers).fit(ConvNet(), image_loader())
    with open(loggers[1].log_dir + "/metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    steps = sorted({int(r["step"]) for r in rows if r.get("spectral/alpha_mean")})
    assert steps == [0, 5, 10]
    events = read_events(tmp_path / "tb")
    assert scalar_steps(events, "spectral/alpha_mean") == [0, 5, 10]


def test_two_monitors_on_one_trainer_keep_separate_state(tmp_path) -> None:
    a = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    b = SpectralMonitor(
        every_n_steps=5, **TRUST_TINY, conv="slices", prefix="spectral_ww", mode="sync"
    )
    assert a.state_key != b.state_key
    run = trainer(max_steps=10, callbacks=[a, b], logger=TensorBoardLogger(tmp_path, name="tb"))
    run.fit(ConvNet(), image_loader())
    events = read_events(tmp_path / "tb")
    assert scalar_steps(events, "spectral_ww/alpha_mean") == [0, 5, 10]
    assert scalar_steps(events, "spectral/alpha_mean") == [0, 5, 10]
    assert "spectral_ww/alpha_mean" in run.callback_metrics


def test_backpressure_skips_and_counts(monkeypatch) -> None:
    original = worker_module.analyze_snapshot

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(worker_module, "analyze_snapshot", slow)
    monitor = SpectralMonitor(every_n_steps=1, **TRUST_TINY)
    trainer(max_steps=12, callbacks=[monitor]).fit(ConvNet(), image_loader())
    assert monitor.tracker.num_skipped > 0
    steps = monitor.history.steps
    assert steps == sorted(set(steps)) and steps[-1] == 12  # the final weights, never skipped
    # Steps 0..12 each analysed or skipped (13), plus step 12 analysed at the end if skipped.
    assert len(steps) + monitor.tracker.num_skipped in (13, 14)
    assert not monitor_threads()


def test_sharded_weights_wait_instead_of_skipping(monkeypatch) -> None:
    """With sharded weights (gathering them is a collective) a busy worker makes the rank wait:
    a rank that skipped a snapshot would leave the others hanging in the gather."""
    import spectral_monitor.live.shard_plan as shard_plan_module

    original = worker_module.analyze_snapshot

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return original(*args, **kwargs)

    monkeypatch.setattr(worker_module, "analyze_snapshot", slow)
    monkeypatch.setattr(shard_plan_module, "needs_collectives", lambda model, root=None: True)
    monitor = SpectralMonitor(every_n_steps=1, **TRUST_TINY)
    trainer(max_steps=6, callbacks=[monitor]).fit(ConvNet(), image_loader())
    assert monitor.tracker.num_skipped == 0
    assert monitor.history.steps == list(range(7))  # steps 0..6, none skipped
    assert not monitor_threads()


def test_needs_collectives_is_false_for_plain_modules() -> None:
    from spectral_monitor.weights.sharded_weights import needs_collectives

    assert not needs_collectives(ConvNet())


def test_worker_crash_is_one_warning_with_traceback_and_training_goes_on(monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("boom in the analysis")

    monkeypatch.setattr(worker_module, "analyze_snapshot", broken)
    monitor = SpectralMonitor(every_n_steps=2, **TRUST_TINY)
    run = trainer(max_steps=10, callbacks=[monitor])
    with pytest.warns(UserWarning, match="analysis at step 0 failed") as record:
        run.fit(ConvNet(), image_loader())
    failures = [w for w in record if "failed" in str(w.message)]
    assert len(failures) == 1 and "boom in the analysis" in str(failures[0].message)
    assert "Traceback" in str(failures[0].message)
    assert run.global_step == 10
    # Steps 0, 2, ..., 10: each analysis failed and was counted, or (when the thread had not yet
    # run the previous one) was skipped for back-pressure and counted; none is lost. A skipped
    # step 10 is tried once more by the final analysis at the end of fit, and fails again.
    tracker = monitor.tracker
    assert tracker.num_failed >= 1
    assert tracker.num_failed + tracker.num_skipped in (6, 7)
    assert len(monitor.history) == 0


class ExplodingLogger(CSVLogger):
    def log_metrics(self, metrics, step=None):
        if any(k.startswith("spectral/") for k in metrics):
            raise OSError("disk full")
        super().log_metrics(metrics, step)


def test_exception_in_a_logger_does_not_stop_training(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=10, callbacks=[monitor], logger=ExplodingLogger(tmp_path))
    with pytest.warns(UserWarning, match="logger failed"):
        run.fit(ConvNet(), image_loader())
    assert run.global_step == 10 and monitor.history.steps == [0, 5, 10]


class FailingModule(ConvNet):
    def __init__(self, fail_at: int, error: type[BaseException]) -> None:
        super().__init__()
        self.fail_at, self.error = fail_at, error

    def training_step(self, batch, batch_idx):
        if self.global_step == self.fail_at:
            time.sleep(0.05)  # let the analysis started at the last step be in flight
            raise self.error("stop here")
        return super().training_step(batch, batch_idx)


def test_exception_in_training_step_joins_worker(monkeypatch) -> None:
    original = worker_module.analyze_snapshot
    monkeypatch.setattr(
        worker_module, "analyze_snapshot", lambda *a, **k: (time.sleep(0.5), original(*a, **k))[1]
    )
    monitor = SpectralMonitor(every_n_steps=3, **TRUST_TINY)
    with pytest.raises(ValueError, match="stop here"):
        trainer(max_steps=20, callbacks=[monitor]).fit(FailingModule(4, ValueError), image_loader())
    assert not monitor_threads()


def test_keyboard_interrupt_joins_worker() -> None:
    monitor = SpectralMonitor(every_n_steps=3, **TRUST_TINY)
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning exits after a graceful shutdown
            trainer(max_steps=20, callbacks=[monitor]).fit(
                FailingModule(4, KeyboardInterrupt), image_loader()
            )
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not monitor_threads()
    assert monitor.history.steps[0] == 0


def test_fit_twice_with_the_same_callback() -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    model = ConvNet()
    trainer(max_steps=10, callbacks=[monitor]).fit(model, image_loader())
    first_end = monitor.history.alpha("net.5")[1][-1]
    trainer(max_steps=20, callbacks=[monitor]).fit(model, image_loader())
    # A fresh Trainer starts at step 0 again: a new history, not one interleaved with the first.
    assert monitor.history.steps == [0, 5, 10, 15, 20]
    assert monitor.history.alpha("net.5")[1][0] == pytest.approx(first_end, rel=1e-6)
    assert not monitor_threads()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),
        ({"conv2d": "fft"}, "conv2d"),
        ({"normalize": 1}, "normalize"),
        ({"min_evals": 0}, "min_evals"),
        ({"precision": "half"}, "precision"),
        ({"log_histograms": "yes"}, "log_histograms"),
        ({"histogram_every": 0}, "histogram_every"),
        ({"log_figures_every": 0}, "log_figures_every"),
        ({"stop_below": "2"}, "stop_below"),
        ({"stop_below": float("nan")}, "stop_below"),
        ({"stop_on": "loss"}, "stop_on"),
        ({"stop_patience": 0}, "stop_patience"),
        ({"start_step": -1}, "start_step"),
        ({"mode": "async"}, "mode"),
        ({"max_snapshot_bytes": 0}, "max_snapshot_bytes"),
        ({"prefix": ""}, "prefix"),
        ({"layers": [1.5]}, "layers"),
        ({"layers": 3}, "layers"),
        ({"exclude": 2.5}, "exclude"),
        ({"exclude": object()}, "exclude"),
        ({"device": "nonsense"}, "device"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        SpectralMonitor(**kwargs)


def test_snapshot_budget_skips_layers_with_reason() -> None:
    monitor = SpectralMonitor(
        every_n_steps=5, **TRUST_TINY, max_snapshot_bytes=16 * 16 * 9 * 4 + 600
    )
    trainer(max_steps=5, callbacks=[monitor]).fit(ConvNet(), image_loader())
    report = monitor.latest
    assert report is not None
    assert report.layer("net.0").skipped is None and report.layer("net.2").skipped is None
    assert "max_snapshot_bytes" in report.layer("net.5").skipped
    assert monitor.tracker.last_snapshot_bytes <= 16 * 16 * 9 * 4 + 600


def test_history_rows_and_csv(tmp_path) -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    trainer(max_steps=10, callbacks=[monitor]).fit(ConvNet(), image_loader())
    rows = monitor.history.to_rows()
    assert len(rows) == 3 * 4 and {r["step"] for r in rows} == {0, 5, 10}
    text = monitor.history.to_csv(tmp_path / "h.csv").read_text().splitlines()
    assert text[0] == ",".join(["step", "layer", *LAYER_KEYS]) and len(text) == 13
    # Every field of LayerSpectrum but the eigenvalues, whatever fields it has.
    assert set(rows[0]) == {"step", "layer"} | {f.name for f in fields(LayerSpectrum)} - {
        "name",
        "evals",
    }
    latest = monitor.latest
    assert latest is not None
    for layer in latest.layers:
        (row,) = [r for r in rows if r["step"] == 10 and r["layer"] == layer.name]
        expected = {k: v for k, v in layer.to_row().items() if k != "name"}
        got = {k: v for k, v in row.items() if k not in ("step", "layer")}
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            nan = isinstance(value, float) and math.isnan(value)
            assert math.isnan(got[key]) if nan else got[key] == value, (key, got[key], value)
            assert type(got[key]) is type(value), key
    steps, alphas = monitor.history.alpha("net.7")
    assert steps == [0, 5, 10] and all(a > 1 for a in alphas)


def test_trainer_validate_and_predict_do_not_analyse() -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY)

    class WithVal(ConvNet):
        def validation_step(self, batch, batch_idx):
            return None

        def predict_step(self, batch, batch_idx):
            return self.net(batch[0])

    model = WithVal()
    run = trainer(callbacks=[monitor])
    run.validate(model, image_loader(n=32))
    run.predict(model, image_loader(n=32))
    assert len(monitor.history) == 0 and not monitor_threads()


def test_validation_loop_and_fast_dev_run() -> None:
    class WithVal(ConvNet):
        def validation_step(self, batch, batch_idx):
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    monitor = SpectralMonitor(every_n_steps=4, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=12, val_check_interval=5, limit_val_batches=2, callbacks=[monitor])
    run.fit(WithVal(), image_loader(), image_loader(n=32))
    assert monitor.history.steps == [0, 4, 8, 12]
    fast = SpectralMonitor(every_n_steps=50, **TRUST_TINY)
    L.Trainer(fast_dev_run=True, callbacks=[fast], enable_progress_bar=False).fit(
        WithVal(), image_loader(), image_loader(n=32)
    )
    assert fast.history.steps == [0, 1]  # the start and the final weights
