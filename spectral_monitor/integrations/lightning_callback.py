r"""
Spectral Monitor
================

Watches the heavy-tailed weight spectra of every layer (Linear, attention, convolutions, RNNs,
LoRA) while a model trains: alpha and λmax curves per layer, ESD histograms, verdicts, and an
optional stop when the network over-regularises (alpha under ~2, Martin & Mahoney).

One step axis: the step ``self.log`` stamps metrics with (batches that stepped the optimizer,
Lightning's logging step). It equals ``trainer.global_step`` with one optimizer; with manual
optimisation over several optimizers ``global_step`` counts every ``optimizer.step()`` and this
axis counts batches. ``every_n_steps``, the history, ``start_step``, ``stopped_step`` and the
messages all use it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.options import bind_options, with_options
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import select
from spectral_monitor.integrations.logger_sinks import media_of, not_sent_message, open_sink
from spectral_monitor.live.distributed import torch_gather
from spectral_monitor.live.stopping import Alarm
from spectral_monitor.live.tracker import SpectralTracker
from spectral_monitor.sinks.sink import Analysis, Sink

__all__ = ["SpectralMonitor"]

F = TypeVar("F", bound=Callable[..., Any])


def _guarded(hook: F) -> F:
    """A hook that never raises: whatever its own guards did not catch becomes one warning
    (``SpectralMonitor.<hook> failed``), counted under ``"schedule"``; training goes on."""

    @functools.wraps(hook)
    def run(self: SpectralMonitor, *args: Any, **kwargs: Any) -> Any:
        what = f"SpectralMonitor.{hook.__name__}"
        return self.tracker.guard.run("schedule", what, lambda: hook(self, *args, **kwargs), None)

    return run  # type: ignore[return-value]


@with_options()
class SpectralMonitor(Callback):
    r"""Analyse the weight spectra of a model at the start of training, every ``every_n_steps``
    steps and at the end of training, off the training thread, and log the results.

    Logged with the step of the snapshot (the step axis of ``self.log``) to every logger: model
    curves under ``spectral/`` (``alpha/<layer>``, ``lambda_max/<layer>``, ``alpha_mean``,
    ``alpha_min``, ``alpha_hat``, ``frac_alpha_below_2``, ``alpha_by_type/<type>``, …) and
    housekeeping under ``spectral_meta/`` (``analysis_seconds``, ``analyses_skipped``, …); README
    "TensorBoard" lists every tag. TensorBoard also gets a custom-scalars layout (all layers on one
    chart), histograms of log10 λ per layer, a heatmap of alpha over layers and steps, optional ESD
    figures with the fit (figures are drawn on the worker thread), and a table of verdicts. The
    scalars go into ``trainer.callback_metrics`` on every rank, so Lightning's ``EarlyStopping``
    can watch them (README "Stopping": a recipe that does not stop healthy runs, and why
    ``mode="max"`` with patience on ``alpha_mean`` does).

    Steps are Lightning's logging steps (batches that stepped the optimizer), the step axis of
    the loss curves. The final weights are analysed at the end of ``fit`` when the last scheduled
    analysis was earlier. A run resumed from any checkpoint (also one saved mid-epoch, off the
    analysis grid, or by a process that was killed) continues its history with every analysed step
    once, in ``history`` and in TensorBoard (events a killed run wrote after its checkpoint are
    purged). The monitor pickles, so ``strategy="ddp_spawn"`` works.

    {options}

    Raises:
        ValueError: an argument has a wrong type or value (the message names it).

    Example::

        >>> import lightning as L
        >>> from spectral_monitor import SpectralMonitor
        >>> monitor = SpectralMonitor(every_n_steps=100, stop_on="overfit")
        >>> trainer = L.Trainer(callbacks=[monitor])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The signature is OPTIONS (see spectral_monitor.analysis.options), set by with_options; the
        # tracker validates and keeps them.
        self.tracker = SpectralTracker(**bind_options(SpectralMonitor, args, kwargs))
        self.tracker.sinks.append(self._log_report)
        self._trainer: Trainer | None = None
        self._sinks: dict[int, Sink | None] = {}  # per logger (by id); None: scalars only
        self._warned: set[str] = set()
        self._begun = False  # the first step of this fit() was seen
        self._step = 0  # logging step of the latest weights seen
        self.stopped_step: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer stays in this process (``ddp_spawn`` pickles the callbacks into new ones).
        state = self.__dict__.copy()
        state["_trainer"] = None
        state["_sinks"] = {}  # writers of this process's loggers
        return state

    # --- public state ------------------------------------------------------------------------

    @property
    @override
    def state_key(self) -> str:
        # Not every_n_steps: a run resumed with another interval keeps its history.
        return self._generate_state_key(prefix=self.tracker.prefix)

    @property
    def history(self) -> SpectralHistory:
        """Trajectories so far: per layer (step, alpha, λmax) and the aggregates."""
        return self.tracker.history

    @property
    def latest(self) -> SpectralReport | None:
        """The most recent report taken in."""
        return self.tracker.latest

    @property
    def alarms(self) -> list[Alarm]:
        """Evidence weaker than a stop needs, in order (each also warned and logged as
        TensorBoard text ``<prefix>/alarm``)."""
        return self.tracker.alarms

    @property
    def stop_reason(self) -> str | None:
        """Why this monitor stopped the run, or None."""
        return self.tracker.stop_reason if self.stopped_step is not None else None

    # --- hooks -------------------------------------------------------------------------------

    @override
    @_guarded
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._trainer = trainer

    @override
    @_guarded
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._begun = False
        if not trainer.loggers:
            self._warn_once(
                "no-logger",
                "SpectralMonitor: the Trainer has no logger; results are kept in "
                "monitor.history and trainer.callback_metrics only.",
            )
        self.stopped_step = None
        rule = self.tracker.stop_rule
        if rule is not None and 0 < trainer.max_steps <= rule.start_step:
            self._warn_once(
                "start-step",
                f"SpectralMonitor: start_step={rule.start_step} >= the Trainer's max_steps="
                f"{trainer.max_steps}: the stop rule can never fire in this run; lower "
                "start_step to use it.",
            )
        if trainer.is_global_zero:
            for index, logger in enumerate(trainer.loggers):
                message = not_sent_message(logger)
                if message is not None:
                    self._warn_once(f"not-sent-{index}-{type(logger).__name__}", message)
        # Only the process that writes the logs needs figures drawn, and only for a logger
        # that takes them.
        takes_images = any("images" in media_of(logger) for logger in trainer.loggers)
        draws = trainer.is_global_zero and takes_images
        self.tracker.image_sinks = [self._log_images] if draws else []
        distributed = trainer.world_size > 1 and torch.distributed.is_initialized()
        self.tracker.shard(
            trainer.global_rank, trainer.world_size, torch_gather if distributed else None
        )
        config = self.tracker.config
        # The user's register_layer functions run here: a failure is the analyses' failure.
        what = "selecting the layers to analyse"
        selection = self._guard("analysis", lambda: select(pl_module, config), what)
        if selection is not None and not selection.specs:
            self._warn_once(
                "no-layers",
                f"SpectralMonitor: {type(pl_module).__name__} has no layer to analyse"
                + (" after the layers/exclude filters" if config.layers or config.exclude else "")
                + "; the reports will be empty.",
            )

    @override
    @_guarded
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._begun:
            self._begin(trainer, pl_module)

    def _begin(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The first step of a fit: start or continue the history, analyse the weights it
        starts from if they are due.

        Read here, not in ``on_train_start``: Lightning corrects the restored logging step of a
        checkpoint saved mid-batch only when the epoch loop starts, before the first batch.
        """
        self._begun = True
        step = self._step = _logging_step(trainer, after_batch=False)
        if self.tracker.restored and trainer.is_global_zero:
            # A killed run may have logged analyses after its checkpoint; hide them (and the
            # loss it logged there) as TensorBoard's purge_step does, keeping the restored step's
            # own analysis when the checkpoint holds it.
            purge_from = step + 1 if step in self.history else step
            for logger in _tensorboard_loggers(trainer):
                self._guard("logger", lambda lg=logger: _purge_events_from(lg, purge_from))
        # The analysis at the start gives EarlyStopping a metric before its first check; a run
        # resumed at an analysed or off-grid step does not add one.
        if self.tracker.start(step):
            self.tracker.submit(pl_module, step, root=_wrapper(trainer))
        self._collect(trainer, block=False)  # a sync analysis is already done

    @override
    @_guarded
    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._collect(trainer, block=False)
        step = _logging_step(trainer, after_batch=True)
        # A batch that only accumulated gradients did not change the weights.
        scheduled = step > self._step and self.tracker.due(step)
        self._step = step
        if scheduled and self.tracker.submit(pl_module, step, root=_wrapper(trainer)):
            self._collect(trainer, block=False)  # a sync analysis is already done
        if _is_last_batch(trainer):
            # Drain before any EarlyStopping reads at epoch end, whatever the callback order.
            self._drain(trainer)
        elif scheduled or trainer.world_size == 1:
            # Collectives only where every rank is: scheduled steps are the same on all ranks.
            self._decide_stop(trainer)

    @override
    @_guarded
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking and self._trainer is not None:
            self._drain(trainer)

    @override
    @_guarded
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._drain(trainer)

    @override
    @_guarded
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._trainer = trainer
        if not self._begun:  # no batch ran (e.g. resumed at max_steps)
            self._begin(trainer, pl_module)
        # The final weights, when the last scheduled analysis was earlier (max_steps off the grid,
        # an early stop at epoch end); every rank gets here at the same step.
        self.tracker.analyse_final(
            pl_module, _logging_step(trainer, after_batch=False), _wrapper(trainer)
        )
        self._guard("figures", self.tracker.finish)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                self._guard("logger", lambda lg=logger: lg.experiment.flush())

    @override
    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        # Join the worker so no thread outlives the failed run. Results still arriving are kept,
        # except a distributed part: the other ranks may never come to gather it.
        self._guard("shutdown", lambda: self.tracker.close(gather=False))

    @override
    @_guarded
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self._guard("shutdown", self.tracker.close)
            self._trainer = None
            self._sinks = {}
            self.tracker.image_sinks = []

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._trainer is not None:
            # A checkpoint must hold the analyses already started, or a resumed run loses them.
            self._collect(self._trainer, block=True)
        state = self._guard("checkpoint", self.tracker.state_dict, "saving the monitor's state")
        return {} if state is None else state

    @override
    @_guarded
    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        # Checkpoints written before the state key dropped every_n_steps name it; read them too.
        states = checkpoint.get("callbacks")
        if not isinstance(states, dict) or self.state_key in states:
            return
        head = f"{type(self).__qualname__}{{'every_n_steps': "
        tail = f", 'prefix': {self.tracker.prefix!r}}}"
        for key in list(states):
            if isinstance(key, str) and key.startswith(head) and key.endswith(tail):
                states[self.state_key] = states[key]
                return

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        what = "restoring the monitor's state"
        self._guard("checkpoint", lambda: self.tracker.load_state_dict(state_dict), what)

    # --- steps -------------------------------------------------------------------------------

    def _collect(self, trainer: Trainer, block: bool) -> None:
        self._trainer = trainer
        self.tracker.collect(block=block)

    def _drain(self, trainer: Trainer) -> None:
        self._collect(trainer, block=True)
        self._decide_stop(trainer)

    def _decide_stop(self, trainer: Trainer) -> None:
        self._guard("stop", lambda: self._apply_stop_rule(trainer), "applying the stop rule")

    def _apply_stop_rule(self, trainer: Trainer) -> None:
        if self.tracker.stop_rule is None:
            return
        local = self.tracker.should_stop
        decision = trainer.strategy.reduce_boolean_decision(local, all=False)
        if decision and not trainer.should_stop:
            trainer.should_stop = True
            step = self.stopped_step = self._step
            reason = self.tracker.stop_reason or "the stop rule fired on another rank"
            rank_zero_info(f"SpectralMonitor: stopping at step {step}: {reason}")
            if trainer.is_global_zero:
                for sink in self._open_sinks(trainer):
                    self._guard("logger", lambda s=sink: s.write_text("stop_reason", reason, step))

    def _log_report(self, report: SpectralReport, step: int) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        scalars = self.tracker.scalars(report)
        for key, value in scalars.items():
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            self._guard("logger", lambda lg=logger: lg.log_metrics(scalars, step=step))
        if not trainer.is_global_zero:
            return
        extras = self.tracker.extras_due()
        analysis = Analysis(
            report, step, scalars, self.history, extras["histograms"], extras["text"]
        )
        for sink in self._open_sinks(trainer):
            self._guard("logger", lambda s=sink: s.write_analysis(analysis))
            alarm = self.tracker.alarm_at(step)
            if alarm is not None:
                self._guard("logger", lambda s=sink, a=alarm: s.write_text("alarm", a, step))
            # On disk now: a checkpoint that holds this analysis must not outlive its events (a
            # killed process loses what its writer had not flushed).
            self._guard("logger", sink.flush)

    def _log_images(self, step: int, images: dict[str, Any]) -> None:
        if self._trainer is None:
            return
        for sink in self._open_sinks(self._trainer):
            if "images" in sink.takes:
                self._guard("logger", lambda s=sink: s.write_images(step, images))

    def _open_sinks(self, trainer: Trainer) -> list[Sink]:
        """One sink per logger that takes more than scalars, chosen by the logger's type
        (:mod:`spectral_monitor.integrations.logger_sinks`); scalars go through each logger's
        ``log_metrics``."""
        sinks = []
        for logger in trainer.loggers:
            if id(logger) not in self._sinks:
                self._guard("logger", lambda lg=logger: self._open_sink(lg))
            sink = self._sinks.get(id(logger))
            if sink is not None:
                sinks.append(sink)
        return sinks

    def _open_sink(self, logger: Logger) -> None:
        rule = self.tracker.stop_rule
        threshold = None if rule is None else rule.threshold
        self._sinks[id(logger)] = open_sink(logger, self.tracker.prefix, threshold)

    def _guard(self, kind: str, action: Any, what: str | None = None) -> Any:
        """``action()``, or None when it raises: one warning with the traceback per failure,
        counted in ``tracker.guard.failures[kind]`` (see :mod:`spectral_monitor.live.guard`)."""
        return self.tracker.guard.run(kind, what or f"the {kind}", action, None)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)


def _tensorboard_loggers(trainer: Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _purge_events_from(logger: TensorBoardLogger, step: int) -> None:
    """Hide, in TensorBoard, every event of ``logger``'s run at ``step`` or later that earlier
    event files hold: what ``SummaryWriter(purge_step=step)`` writes (a restart marker), for a
    writer Lightning has already opened."""
    from tensorboard.compat.proto.event_pb2 import Event, SessionLog

    writer = logger.experiment._get_file_writer()
    writer.add_event(Event(step=step, session_log=SessionLog(status=SessionLog.START)))
    writer.flush()


def _wrapper(trainer: Trainer) -> nn.Module | None:
    """The strategy's wrapped model (DDP, FSDP), which owns sharded parameters; None if none."""
    model = getattr(trainer.strategy, "model", None)
    return model if isinstance(model, nn.Module) else None


def _logging_step(trainer: Trainer, after_batch: bool) -> int:
    """The step ``self.log`` stamps metrics with: batches that stepped the optimizer, counting the
    current batch once its optimizer step is done."""
    loop = trainer.fit_loop.epoch_loop
    try:
        step = int(loop._batches_that_stepped)
        if after_batch and not loop._should_accumulate():
            step += 1
        return step
    except (AttributeError, TypeError):  # a Lightning without these internals
        return trainer.global_step


def _is_last_batch(trainer: Trainer) -> bool:
    try:
        return bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
    except AttributeError:
        return False
