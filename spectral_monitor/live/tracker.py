"""``SpectralTracker``: the schedule, the worker, the history and the stop rule, with no
dependency on a Trainer — usable from a plain PyTorch loop, and the engine inside the Lightning
callback.

Plain loop::

    tracker = SpectralTracker(every_n_steps=100, log_dir="runs/exp1")
    for step, batch in enumerate(loader, 1):
        ...; optimizer.step()
        tracker.step(model, step)
        if tracker.should_stop:
            break
    tracker.close()  # also analyses the final weights if the last analysis was earlier

One step axis: ``step`` is whatever the caller counts (the Lightning callback passes the step that
``self.log`` uses: batches that stepped the optimizer). The schedule, the history, ``start_step``
and the stop rule all use it.

A tracker pickles and deep-copies (its worker thread, lock and writer are left behind and made
again on first use), so it can travel with a callback into ``ddp_spawn`` processes.
"""

from __future__ import annotations

import inspect
import math
import os
import tempfile
import traceback
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.options import bind_options, with_options
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import select
from spectral_monitor.live.distributed import Gather
from spectral_monitor.live.guard import Guard
from spectral_monitor.live.shard_plan import ShardPlan
from spectral_monitor.live.stopping import (
    DEFAULT_MARGIN,
    DEFAULT_PATIENCE,
    Alarm,
    DropStopRule,
    StopRule,
    make_stop_rule,
)
from spectral_monitor.live.worker import AnalysisResult, AnalysisWorker
from spectral_monitor.sinks.tensorboard_sink import TensorBoardSink, draw_figures
from spectral_monitor.utilities.validation import check_choice, check_int
from spectral_monitor.weights.layers import left_out_message

__all__ = ["MODES", "SpectralTracker"]

MODES = ("auto", "thread", "sync")

#: A sink receives each finished report and the step to log it at.
ReportSink = Callable[[SpectralReport, int], None]
#: An image sink receives figures drawn on the worker: the step, ``{name: (H, W, 3) uint8}``.
ImageSink = Callable[[int, dict[str, np.ndarray]], None]


@with_options(
    inspect.Parameter(
        "log_dir",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=str | os.PathLike | None,
    ),
    extra_doc="""log_dir: for plain loops: write TensorBoard events here (scalars, layout,
    histograms, figures); None: no writer. Created, and checked to be writable, where the
    tracker is built. After :meth:`load_state_dict`, events a killed run
    wrote there after the restored history's last analysis are hidden (TensorBoard's
    ``purge_step``), so no step shows twice.""",
)
class SpectralTracker:
    """Schedules spectral analyses of a model over training and keeps their results.

    {options}

    Raises:
        ValueError: an argument is invalid (the message names it).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The signature is OPTIONS + log_dir (see analysis/options.py), set by with_options.
        options = bind_options(SpectralTracker, args, kwargs)
        every_n_steps, mode = options["every_n_steps"], options["mode"]
        max_snapshot_bytes, prefix = options["max_snapshot_bytes"], options["prefix"]
        stop_below, stop_on = options["stop_below"], options["stop_on"]
        stop_patience, start_step = options["stop_patience"], options["start_step"]
        stop_bound, stop_margin = options["stop_bound"], options["stop_margin"]
        log_dir, log_histograms = options["log_dir"], options["log_histograms"]
        histogram_every, log_figures_every = (
            options["histogram_every"],
            options["log_figures_every"],
        )
        check_int("every_n_steps", every_n_steps, 1)
        check_int("max_snapshot_bytes", max_snapshot_bytes, 1, allow_none=True)
        check_int("histogram_every", histogram_every, 1)
        check_int("log_figures_every", log_figures_every, 1, allow_none=True)
        check_choice("mode", mode, MODES)
        self.stop_rule: StopRule | None = make_stop_rule(
            stop_on, stop_below, stop_patience, start_step, stop_bound, stop_margin
        )
        if not isinstance(log_histograms, bool):
            raise ValueError(f"log_histograms must be a bool, got {log_histograms!r}")
        if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
            raise ValueError(
                f"prefix must be a non-empty string without trailing '/', got {prefix!r}"
            )
        if log_dir is not None:
            _check_log_dir(log_dir)
        if self.stop_rule is not None and self.stop_rule.needs_traps:
            options = {**options, "traps": True}  # the rule reads them: the analysis counts them
        self.config = AnalysisConfig.from_options(options)
        self.every_n_steps = every_n_steps
        self.mode = "thread" if mode == "auto" else mode
        self.max_snapshot_bytes = max_snapshot_bytes
        self.prefix = prefix
        self.log_histograms = log_histograms
        self.histogram_every = histogram_every
        self.log_figures_every = log_figures_every
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        #: The fall of alpha_mean from its level before start_step, logged whatever the rule
        #: (so Lightning's EarlyStopping can watch it); with stop_on="alpha_mean_drop" it is the
        #: stop rule itself, so that one object holds the reference.
        self.drop = (
            self.stop_rule
            if isinstance(self.stop_rule, DropStopRule)
            else DropStopRule(math.nan, DEFAULT_PATIENCE, start_step, margin=DEFAULT_MARGIN)
        )
        #: Evidence weaker than a stop needs (the stop rule's condition began to hold, not yet for
        #: its patience), in order: each also went to the console and to TensorBoard text.
        self.alarms: list[Alarm] = []
        self.history = SpectralHistory()
        self.latest: SpectralReport | None = None
        self.sinks: list[ReportSink] = []
        #: Figures are drawn (on the worker) only while some image sink wants them.
        self.image_sinks: list[ImageSink] = []
        self.num_analyses = 0
        self.num_skipped = 0
        self.num_failed = 0
        self.last_snapshot_bytes = 0
        self._last_attempt: int | None = None
        self._last_submitted: int | None = None  # excludes analyses skipped for back-pressure
        self._worker = AnalysisWorker(self.mode)  # type: ignore[arg-type]
        self._writer: Any = None
        self._tensorboard: TensorBoardSink | None = None
        self._purge_step: int | None = None  # first step to write after a restore
        self._restored = False  # a state was loaded and training has not (re)started since
        self._model: weakref.ref[nn.Module] | None = None  # what step() saw last, for close()
        self._step: int | None = None
        #: Everything this tracker runs on the training thread goes through it (see live/guard.py).
        self.guard = Guard()
        self._non_finite: set[str] = set()  # layers warned about for non-finite weights
        self._drawn: dict[str, int | None] = {"esd": None, "heatmap": None}
        self._plan = ShardPlan()
        self._warned_left_out = False

    # --- distribution ----------------------------------------------------------------------

    def shard(self, rank: int, world_size: int, gather: Gather | None) -> None:
        """Split every analysis across ``world_size`` ranks (None/1: no split).

        Each rank analyses its share of the layers (assigned by cost), and ``gather`` merges the
        parts into the report every rank takes in; :class:`~.shard_plan.ShardPlan`
        owns these rules. Then :meth:`submit` and ``collect(block=True)`` are
        collectives: every rank must call them at the same points, and nothing is skipped for
        back-pressure (a rank waits for its previous part instead), so the ranks stay in step.
        ``collect(block=False)`` takes in nothing while sharded.
        """
        self._plan = ShardPlan.create(rank, world_size, gather)

    # --- schedule -------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether an analysis is due at ``step``: the step crossed a multiple of
        ``every_n_steps`` since the last attempt (analysed or skipped)."""
        if self._last_attempt is None:
            return True
        return step // self.every_n_steps > self._last_attempt // self.every_n_steps

    def start(self, step: int) -> bool:
        """Training starts, or resumes, with the weights of ``step``; returns whether those
        weights need an analysis now.

        With a state restored by :meth:`load_state_dict` the history continues: the restored
        step is analysed only if it is on the schedule and not analysed already (a checkpoint
        saved off the grid adds no point). Without one, a step before the last analysed step
        means a new run (a second ``fit()`` with a fresh Trainer): the history starts afresh.
        """
        restored, self._restored = self._restored, False
        steps = self.history.steps
        if restored:
            if steps and steps[-1] > step:  # a state saved after the weights it is resumed with
                self.history.drop_after(step)
            if self._last_attempt == step and step not in self.history:
                # A step counts as done only when its result is in the checkpoint: the attempt
                # at these very weights was skipped (back-pressure), failed, or finished after
                # the checkpoint was written (the final analysis in on_train_end). Redo it.
                self._step = step
                return True
        elif steps and step < steps[-1]:
            rank_zero_info("SpectralMonitor: training restarted at an earlier step; new history.")
            self.reset()
        self._step = step
        return step not in self.history and self.due(step)

    def submit(
        self,
        model: nn.Module,
        step: int,
        report_step: int | None = None,
        root: nn.Module | None = None,
    ) -> bool:
        """Snapshot ``model`` now and start its analysis. Returns False, and counts a skip, when
        the previous analysis is still running (back-pressure).

        Args:
            model: the model being trained.
            step: the schedule's step (optimizer steps so far).
            report_step: the step the report is stamped and logged with, if it differs from
                ``step`` (Lightning's logging step counts batches, not optimizer steps).
            root: the module that owns ``model``'s sharded parameters when it wraps ``model``
                (an FSDP wrapper); see :func:`~spectral_monitor.analysis.snapshot.take_snapshot`.
        """
        self._last_attempt = step
        self._step = step if self._step is None else max(self._step, step)
        # Selection (the user's register_layer functions too), snapshot and hand-off run on the
        # training thread: a failure there is a failed analysis, like one on the worker.
        try:
            if self._plan.sharded or self._worker.busy:
                if self._plan.may_skip(model, root):
                    self.num_skipped += 1
                    return False
                # The previous analysis is taken in first (gathered, while sharded), on every rank.
                self.collect(block=True)
            snapshot = self._plan.snapshot(model, self.config, self.max_snapshot_bytes, root)
            for snap in snapshot:
                if snap.error is not None:  # that layer is skipped; its reason is in the report
                    what = f"reading the weight of layer {snap.name!r} at step {step}"
                    self.guard.failed("layer", what, snap.error)
            self.last_snapshot_bytes = sum(s.nbytes for s in snapshot)
            started = self._worker.submit(
                snapshot, self.config, step if report_step is None else report_step
            )
        except Exception:
            self._analysis_failed(step, traceback.format_exc())
            self._last_submitted = step  # tried, not skipped: the final analysis does not retry
            return False
        if started:
            self._last_submitted = step
        what = "listing the weights no layer kind covers"
        self.guard.run("schedule", what, lambda: self._warn_left_out(model), None)
        return started

    def _analysis_failed(self, step: int, details: str | None) -> None:
        """Count a failed analysis (on the worker or while preparing it); warn once."""
        self.num_failed += 1
        self.guard.failed("analysis", f"the analysis at step {step}", details or "")

    def _warn_left_out(self, model: nn.Module) -> None:
        """Once per run: name the weights no layer kind covers."""
        if not self._warned_left_out:
            self._warned_left_out = True
            left_out = select(model, self.config).left_out
            if left_out:
                rank_zero_warn(f"SpectralMonitor: {left_out_message(left_out)}")

    def maybe_submit(self, model: nn.Module, step: int) -> bool:
        """:meth:`submit` if an analysis is due at ``step``."""
        return self.due(step) and self.submit(model, step)

    def analyse_final(
        self, model: nn.Module, step: int, root: nn.Module | None = None
    ) -> list[SpectralReport]:
        """Analyse the final weights (those of ``step``) if the last scheduled analysis was
        earlier, waiting for any running one first (the final analysis is never skipped), and
        take everything in. A collective while sharded, like :meth:`submit`."""
        reports = self.collect(block=True)
        last = self._last_submitted
        if step in self.history or (last is not None and step <= last):
            return reports
        if self.submit(model, step, root=root):
            reports += self.collect(block=True)
        return reports

    # --- results ---------------------------------------------------------------------------

    def collect(self, block: bool = False) -> list[SpectralReport]:
        """Take in finished analyses (waiting for the running one if ``block``): add them to the
        history, update the stop rule, hand them to the sinks. A failed analysis becomes one
        warning with its traceback (once) and is counted in ``num_failed``."""
        reports: list[SpectralReport] = []
        results = self.guard.run(
            "analysis", "taking in finished analyses", self._results(block), []
        )
        for result in results:
            if result.report is None:
                self._analysis_failed(result.step, result.error)
                continue
            report = result.report
            step = int(report.step if report.step is not None else 0)
            # Each call guarded on its own (functools.partial binds this iteration's values): a
            # failing sink skips that sink's call only.
            what = f"adding the analysis at step {step} to the history"
            if not self.guard.run("analysis", what, partial(self.history.add, report), False):
                continue
            self.num_analyses += 1
            self.latest = report
            what = f"updating the stop rule at step {step}"
            self.guard.run("stop", what, partial(self._update_rules, report))
            for sink in self.sinks:
                what = f"logging the analysis at step {step}"
                self.guard.run("logger", what, partial(sink, report, step))
            what = f"handing over the figures of step {step}"
            self.guard.run("figures", what, partial(self._figures_due, report))
            what = f"checking step {step} for non-finite weights"
            self.guard.run("schedule", what, partial(self._warn_non_finite, report))
            reports.append(report)
        self.guard.run(
            "figures", "handing over figures", lambda: self._deliver_figures(block), None
        )
        return reports

    def _results(self, block: bool) -> Callable[[], list[AnalysisResult]]:
        def take() -> list[AnalysisResult]:
            if self._plan.sharded:
                return self._plan.merge(self._worker.wait()) if block else []
            return self._worker.wait() if block else self._worker.poll()

        return take

    def _update_rules(self, report: SpectralReport) -> None:
        self.drop.update(report)
        if self.stop_rule is not None and self.stop_rule is not self.drop:
            self.stop_rule.update(report)
        self._raise_alarm(report)

    def _figures_due(self, report: SpectralReport) -> None:
        extras = self.extras_due()
        self._ask_figures(report, esd=extras["figures"], heatmap=extras["heatmap"])

    def _warn_non_finite(self, report: SpectralReport) -> None:
        """One warning per layer per run when its weights turn NaN or Inf: the report records the
        layer as skipped, but a user reading curves would not notice the line stopping."""
        for layer in report.layers:
            # The reason's wording is analysis/analyze.py's (_weight_problems).
            if layer.skipped is None or "non-finite" not in layer.skipped:
                continue
            if layer.name not in self._non_finite:
                self._non_finite.add(layer.name)
                rank_zero_warn(
                    f"SpectralMonitor: layer {layer.name!r} has non-finite weights (NaN or Inf) "
                    f"at step {report.step}; it is skipped while they stay non-finite."
                )

    def _raise_alarm(self, report: SpectralReport) -> None:
        """Record and announce the stop rule's alarm of this analysis, if it raised one."""
        rule = self.stop_rule
        if rule is None or rule.alarm is None or report.step is None:
            return
        self.alarms.append(Alarm(int(report.step), rule.alarm))
        rank_zero_warn(f"SpectralMonitor alarm at step {report.step}: {rule.alarm}")

    def alarm_at(self, step: int) -> str | None:
        """The alarm raised by the analysis of ``step``, or None."""
        return next((a.message for a in reversed(self.alarms) if a.step == step), None)

    def _ask_figures(self, report: SpectralReport, esd: bool, heatmap: bool) -> None:
        """Have the worker draw ``report``'s ESD figures and/or the heatmap of the history so far
        (copied now: the history grows while the worker draws)."""
        if not self.image_sinks or not (esd or heatmap) or report.step is None:
            return
        history = None
        if heatmap:
            history = SpectralHistory()
            history.load_state_dict(self.history.state_dict())
            self._drawn["heatmap"] = report.step
        if esd:
            self._drawn["esd"] = report.step
        shown = report if esd else None
        self._worker.render(report.step, lambda: draw_figures(shown, history))

    def _deliver_figures(self, block: bool) -> None:
        for result in self._worker.poll_renders(block):
            if result.error is not None:
                what = f"drawing the figures of step {result.step}"
                self.guard.failed("figures", what, result.error)
                continue
            if result.images:
                for sink in self.image_sinks:
                    what = f"handing over the figures of step {result.step}"
                    self.guard.run("figures", what, partial(sink, result.step, result.images))

    def finish(self) -> None:
        """At the end of training, after the last analysis was taken in: draw the last
        analysis's ESD figures (when figures are on) and the heatmap of the whole run, unless
        already drawn, and hand them to the image sinks before returning."""
        self.guard.run("figures", "drawing the last figures", self._finish, None)

    def _finish(self) -> None:
        latest = self.latest
        if latest is not None and latest.step is not None:
            esd = self.log_figures_every is not None and self._drawn["esd"] != latest.step
            self._ask_figures(latest, esd=esd, heatmap=self._drawn["heatmap"] != latest.step)
        self._deliver_figures(block=True)

    @property
    def restored(self) -> bool:
        """True between :meth:`load_state_dict` and the (re)start of training."""
        return self._restored

    @property
    def should_stop(self) -> bool:
        """True once the stop rule fired (always False without ``stop_below``)."""
        rule = self.stop_rule
        if rule is None:
            return False
        # Read in the user's loop: a failing rule is a warning and no stop, never an exception.
        return bool(
            self.guard.run("stop", "reading the stop rule", lambda: rule.should_stop, False)
        )

    @property
    def stop_reason(self) -> str | None:
        """Why the stop rule fired, or None."""
        rule = self.stop_rule
        return (
            None
            if rule is None
            else self.guard.run("stop", "reading the stop rule", lambda: rule.reason)
        )

    def extras_due(self) -> dict[str, bool]:
        """Which TensorBoard extras the latest analysis gets: histograms and the verdict table
        every ``histogram_every`` analyses, figures every ``log_figures_every``."""
        index = self.num_analyses - 1
        every = index % self.histogram_every == 0
        figures = self.log_figures_every is not None and index % self.log_figures_every == 0
        return {
            "histograms": self.log_histograms and every,
            "figures": figures,
            "text": every,
            "heatmap": every,
        }

    def scalars(self, report: SpectralReport) -> dict[str, float]:
        """The report's scalars (:meth:`SpectralReport.scalars`); ``<prefix>/alpha_mean_drop``
        (alpha_mean's minimum before ``start_step`` minus alpha_mean) from ``start_step`` on;
        ``<prefix>/stop_threshold``, the stop rule's level, when a stop rule is set (for the drop
        rule, once its reference is known); and this tracker's counters under ``<prefix>_meta/``:
        ``analyses_skipped`` (back-pressure), ``analyses_failed``, ``snapshot_mb``."""
        out = report.scalars(self.prefix)
        reference, mean = self.drop.reference, float(report.aggregates["alpha_mean"])
        after = report.step is not None and report.step >= self.drop.start_step
        if after and math.isfinite(reference) and math.isfinite(mean):
            out[f"{self.prefix}/alpha_mean_drop"] = reference - mean
        if self.stop_rule is not None:
            level = self.stop_rule.level
            if math.isfinite(level):
                out[f"{self.prefix}/stop_threshold"] = level
        meta = f"{self.prefix}_meta"
        out[f"{meta}/analyses_skipped"] = float(self.num_skipped)
        out[f"{meta}/analyses_failed"] = float(self.num_failed)
        out[f"{meta}/snapshot_mb"] = self.last_snapshot_bytes / 2**20
        return out

    # --- plain-loop use ------------------------------------------------------------------

    def step(self, model: nn.Module, step: int) -> list[SpectralReport]:
        """For a plain training loop, after ``optimizer.step()``: take in finished analyses and
        start a new one if due. Returns the reports taken in. Never raises: a failure is one
        warning, counted in ``guard.failures`` (see :mod:`~spectral_monitor.live.guard`)."""
        return self.guard.run(
            "schedule", f"tracker.step at step {step}", lambda: self._step_at(model, step), []
        )

    def _step_at(self, model: nn.Module, step: int) -> list[SpectralReport]:
        if self.log_dir is not None and self._writer is None:
            self.guard.run("logger", f"opening a writer in {self.log_dir}", self._open_writer, None)
        self._model, self._step = weakref.ref(model), step
        self._restored = False
        reports = self.collect()
        if self.maybe_submit(model, step):
            reports += self.collect()  # a sync analysis is already done; a thread's may be
        return reports

    def _open_writer(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides the events a killed run wrote after the state it is resumed from.
        self._writer = SummaryWriter(self.log_dir, purge_step=self._purge_step)
        self._purge_step = None
        threshold = None if self.stop_rule is None else self.stop_rule.threshold
        self._tensorboard = TensorBoardSink(self._writer, self.prefix, threshold)
        # Bound methods, not closures: a tracker must pickle (ddp_spawn, deepcopy).
        if self._write_report not in self.sinks:
            self.sinks.append(self._write_report)
        if self._write_images not in self.image_sinks:
            self.image_sinks.append(self._write_images)

    def _write_report(self, report: SpectralReport, step: int) -> None:
        """The ``log_dir`` sink: one report into the plain loop's own event file, flushed so that
        it is on disk before a checkpoint can include this analysis."""
        if self._tensorboard is None:
            return
        extras = self.extras_due()
        self._tensorboard.write_report(
            report, step, self.scalars(report), extras["histograms"], extras["text"]
        )
        rule = self.stop_rule
        if rule is not None and rule.reason is not None and rule.stop_step == report.step:
            self._tensorboard.write_text("stop_reason", rule.reason, step)
        alarm = None if report.step is None else self.alarm_at(int(report.step))
        if alarm is not None:
            self._tensorboard.write_text("alarm", alarm, step)
        self._tensorboard.flush()

    def _write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
        if self._tensorboard is None:
            return
        self._tensorboard.write_images(step, images)
        self._tensorboard.flush()

    def close(self, gather: bool = True) -> list[SpectralReport]:
        """Analyse the final weights if :meth:`step` saw weights after the last analysis, finish
        and take in outstanding work, join the worker thread, close ``log_dir``'s writer. The
        tracker stays usable (a new worker thread starts on demand).

        Args:
            gather: while sharded, take in the pending analysis (a collective); False drops it,
                for a failing run where the other ranks may never arrive.
        """
        model = None if self._model is None else self._model()
        reports: list[SpectralReport] = []
        if gather and model is not None and self._step is not None:
            step = self._step
            what = f"the final analysis at step {step}"
            final = lambda: self.analyse_final(model, step)  # noqa: E731
            reports = self.guard.run("analysis", what, final, [])
            self.finish()
        elif gather or not self._plan.sharded:
            reports = self.collect(block=True)
            self.finish()
        else:
            self._plan.drop()
        self.guard.run("shutdown", "joining the worker threads", self._worker.close, [])
        if self._writer is not None:
            self.guard.run(
                "logger", f"closing the writer of {self.log_dir}", self._writer.close, None
            )
            self._writer = None
            self._tensorboard = None
            if self._write_report in self.sinks:
                self.sinks.remove(self._write_report)
            if self._write_images in self.image_sinks:
                self.image_sinks.remove(self._write_images)
        self._model = None
        return reports

    def reset(self) -> None:
        """Forget the history, schedule, counters and stop state (a new run starts)."""
        self.collect(block=True)
        self.history = SpectralHistory()
        self.latest = None
        self.num_analyses = self.num_skipped = self.num_failed = 0
        self._non_finite = set()
        self._last_attempt = self._last_submitted = None
        self._step = None
        self._drawn = {"esd": None, "heatmap": None}
        self._warned_left_out = False
        self.drop.load_state_dict({})
        if self.stop_rule is not None:
            self.stop_rule.load_state_dict({})
        self.alarms = []

    # --- checkpointing ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """History, schedule, counters and stop-rule state, after taking in the analysis in
        flight (a checkpoint must hold the analyses already started, or a resumed run loses them).
        Never raises: on a failure (one warning) the state is empty, and loading it restores
        nothing."""
        self.collect(block=True)
        return self.guard.run("checkpoint", "saving the monitor's state", self._state, {})

    def _state(self) -> dict[str, Any]:
        return {
            "history": self.history.state_dict(),
            "every_n_steps": self.every_n_steps,
            "last_attempt": self._last_attempt,
            "last_submitted": self._last_submitted,
            "num_analyses": self.num_analyses,
            "num_skipped": self.num_skipped,
            "num_failed": self.num_failed,
            "stop_rule": None if self.stop_rule is None else self.stop_rule.state_dict(),
            "drop": self.drop.state_dict(),
            "alarms": [[a.step, a.message] for a in self.alarms],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; curves continue where they stopped, on this tracker's
        ``every_n_steps`` grid (a different saved value is warned about once). Never raises: a
        state that cannot be restored is one warning, and the history starts afresh."""
        if not state:  # saving it failed (warned then): nothing to restore
            return
        what = "restoring the monitor's state from the checkpoint"
        if not self.guard.run("checkpoint", what, partial(self._load, state), False):
            self.guard.run("checkpoint", "starting a new history", self.reset)

    def _load(self, state: dict[str, Any]) -> bool:
        saved_every = state.get("every_n_steps")
        if saved_every is not None and saved_every != self.every_n_steps:
            rank_zero_warn(
                f"SpectralMonitor: the checkpoint was analysed every {saved_every} steps, this "
                f"run every {self.every_n_steps}: the history is kept and continues at the "
                f"multiples of {self.every_n_steps}."
            )
        self.history.load_state_dict(state["history"])
        self._last_attempt = state.get("last_attempt")
        self._last_submitted = state.get("last_submitted", self._last_attempt)
        self.num_analyses = int(state.get("num_analyses", len(self.history)))
        self.num_skipped = int(state.get("num_skipped", 0))
        self.num_failed = int(state.get("num_failed", 0))
        if state.get("drop") is not None:
            self.drop.load_state_dict(state["drop"])
        if self.stop_rule is not None and state.get("stop_rule") is not None:
            self.stop_rule.load_state_dict(state["stop_rule"])
        self.alarms = [Alarm(int(step), str(text)) for step, text in state.get("alarms", [])]
        self._restored = True
        self._step = None
        steps = self.history.steps
        self._purge_step = steps[-1] + 1 if steps else None
        return True

    # --- pickling --------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The writer (an open file) and the reference to the trained model stay in this process;
        # the worker pickles as an idle worker of the same mode.
        state = self.__dict__.copy()
        state["_writer"] = state["_tensorboard"] = None
        state["_model"] = None
        return state


def _check_log_dir(log_dir: Any) -> None:
    """``log_dir`` must be a path to a directory that can be created and written; it is created
    here (the writer would create it at the first step), so a bad path fails where the tracker is
    built, not inside the training loop."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise ValueError(f"log_dir must be a path or None, got {log_dir!r}")
    try:
        os.makedirs(log_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=os.fspath(log_dir)):
            pass
    except OSError as error:
        raise ValueError(
            f"log_dir={os.fspath(log_dir)!r} cannot be created or written: "
            f"{error.strerror or error}"
        ) from error
