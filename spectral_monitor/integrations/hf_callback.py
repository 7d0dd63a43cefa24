r"""
Spectral Trainer Callback
=========================

The spectral monitor for the Hugging Face ``transformers.Trainer``: alpha and λmax per layer,
model aggregates, ESD histograms, verdicts and the optional stop rule, computed off the training
thread by :class:`~spectral_monitor.live.tracker.SpectralTracker`, reported through the Trainer.

One step axis: ``state.global_step`` (optimizer updates; with gradient accumulation one step is
``gradient_accumulation_steps`` batches). Step 0 is the initial weights, taken at
``on_train_begin``.

How the results travel, and why:

- Scalars go through ``Trainer.log``, so ``state.log_history`` and every ``report_to``
  integration (TensorBoard, W&B, MLflow, …) receive them. Keys added to ``logs`` in ``on_log``
  would not do: the reporting callbacks run before user callbacks, and ``log_history`` keeps a
  copy made before any callback runs. The Trainer is not handed to callbacks, so the callback finds
  the one whose hook is running by walking up the call stack once per ``train()``.
- Each analysis is logged with the step of its snapshot (the reporters read
  ``state.global_step``, set to that step for the call), so the curves line up with the loss.
- With TensorBoard among ``report_to``, histograms, the verdict table, the custom-scalars layout
  and figures go to the writer of HF's own ``TensorBoardCallback`` (its folder, its event file),
  under the tags that callback gives the scalars: ``train/<prefix>/…``.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from typing import Any

import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.integrations import TensorBoardCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.options import bind_options, with_options
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import select
from spectral_monitor.live.distributed import torch_gather
from spectral_monitor.live.tracker import SpectralTracker
from spectral_monitor.sinks.tensorboard_sink import TensorBoardSink

__all__ = ["STATE_FILE", "SpectralTrainerCallback"]

#: The tracker's state in each checkpoint folder (JSON: history, schedule, stop-rule state).
STATE_FILE = "spectral_monitor_state.json"

#: HF's reporters (TensorBoard, W&B) write a training log key ``k`` as ``train/k``.
_REPORTED_AS = "train/"


@with_options()
class SpectralTrainerCallback(TrainerCallback):
    r"""Analyse the weight spectra of the model a ``transformers.Trainer`` trains: at step 0 (the
    initial weights), every ``every_n_steps`` optimizer steps and at the end, off the training
    thread, and log the results through the Trainer.

    Scalars (``spectral/alpha/<layer>``, ``spectral/alpha_mean``, ``spectral_meta/…``; the same
    keys as the Lightning callback) reach ``trainer.state.log_history`` and every ``report_to``
    integration, stamped with the step of the analysed weights. With TensorBoard among
    ``report_to`` the histograms of log10 λ, the verdict table, the custom-scalars layout and the
    alpha heatmap go to the same folder and event file as HF's own logs. A stop rule
    (``stop_below``) stops training through ``control.should_training_stop``. The history is saved
    in every checkpoint folder (``spectral_monitor_state.json``) and restored by
    ``trainer.train(resume_from_checkpoint=...)``. Under DDP (``torchrun``, ``accelerate
    launch``) every rank analyses a share of the layers and every rank gets the whole report, so
    the stop decision is the same everywhere; only the main process writes.

    {options}

    Raises:
        ValueError: an argument has a wrong type or value (the message names it).

    Example::

        >>> from transformers import Trainer, TrainingArguments
        >>> from spectral_monitor import SpectralTrainerCallback
        >>> callback = SpectralTrainerCallback(every_n_steps=100)
        >>> # trainer = Trainer(model, TrainingArguments("out", report_to="tensorboard"),
        >>> #                   train_dataset=data, callbacks=[callback])
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The signature is OPTIONS (see spectral_monitor.analysis.options), set by with_options; the
        # tracker validates and keeps them.
        self.tracker = SpectralTracker(**bind_options(SpectralTrainerCallback, args, kwargs))
        self.tracker.sinks.append(self._log_report)
        self._trainer: Trainer | None = None
        self._sinks: dict[int, TensorBoardSink] = {}  # per SummaryWriter (id)
        self._writer: Any = None  # HF's TensorBoard writer, kept past HF's on_train_end
        self._warned: set[str] = set()
        self._step = 0  # global_step of the latest weights seen
        self._epochs: dict[int, float] = {}  # state.epoch of each analysed step, for its log
        self._finished = False  # the final analysis of this train() is done
        self.stopped_step: int | None = None

    # --- public state ------------------------------------------------------------------------

    @property
    def history(self) -> SpectralHistory:
        """Trajectories so far: per layer (step, alpha, λmax, …) and the aggregates."""
        return self.tracker.history

    @property
    def latest(self) -> SpectralReport | None:
        """The most recent report taken in."""
        return self.tracker.latest

    @property
    def stop_reason(self) -> str | None:
        """Why this callback stopped the run, or None."""
        return self.tracker.stop_reason if self.stopped_step is not None else None

    # --- hooks -------------------------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self._trainer, resume = _find_trainer(self)
        self._finished = False
        self.stopped_step = None
        if self._trainer is None:
            self._warn_once(
                "no-trainer",
                "SpectralTrainerCallback: no transformers.Trainer found calling this hook; the "
                "results are kept in callback.history only.",
            )
        if state.global_step > 0:  # resumed from a checkpoint
            self._restore(args, state, resume)
        distributed = args.world_size > 1 and torch.distributed.is_initialized()
        self.tracker.shard(
            args.process_index, args.world_size, torch_gather if distributed else None
        )
        self._writer = None
        writer = self._tensorboard_writer()
        # Only the process that writes the logs needs figures drawn.
        draws = state.is_world_process_zero and writer is not None
        self.tracker.image_sinks = [self._log_images] if draws else []
        if self._trainer is not None and not self._has_tensorboard():
            self._warn_once(
                "no-tensorboard",
                "SpectralTrainerCallback: TensorBoard is not among report_to; the scalars are "
                "logged, but the ESD histograms, the verdict table and the figures are not sent.",
            )
        if model is None:
            return
        config = self.tracker.config
        if not select(model, config).specs:
            self._warn_once(
                "no-layers",
                f"SpectralTrainerCallback: {type(model).__name__} has no layer to analyse"
                + (" after the layers/exclude filters" if config.layers or config.exclude else "")
                + "; the reports will be empty.",
            )
        step = self._step = state.global_step
        self._epochs = {step: state.epoch}
        if self.tracker.start(step):
            self.tracker.submit(model, step, root=self._root(model))
        self.tracker.collect(block=False)  # a sync analysis is already done

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            return
        self.tracker.collect(block=False)
        step = state.global_step
        scheduled = step > self._step and self.tracker.due(step)
        self._step = step
        if scheduled:
            self._epochs[step] = state.epoch
        if scheduled and self.tracker.submit(model, step, root=self._root(model)):
            self.tracker.collect(block=False)  # a sync analysis is already done
        if scheduled or args.world_size == 1:
            # Collectives only where every rank is: scheduled steps are the same on all ranks.
            self._decide_stop(args, control)
        if control.should_training_stop:
            self._epochs[step] = state.epoch
            # The last step (max_steps, or a stop): analyse the final weights now, before the
            # Trainer saves its last checkpoint and before load_best_model_at_end replaces them.
            self._finish(model, step)
        elif control.should_save:
            # The checkpoint's trainer_state.json (log_history) is written before on_save: take
            # the running analysis in first, so the history and the log agree on resume.
            self.tracker.collect(block=True)

    def on_epoch_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        # A stop decided in on_evaluate (EarlyStoppingCallback) ends the loop here, with the
        # final weights still in place.
        if control.should_training_stop and model is not None:
            self._epochs[state.global_step] = state.epoch
            self._finish(model, state.global_step)

    def on_save(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        # A checkpoint must hold the analyses already started (a collective under DDP: every
        # rank saves at the same step).
        self.tracker.collect(block=True)
        if not args.should_save:
            return
        folder = self._checkpoint_folder(args, state)
        if not os.path.isdir(folder):
            self._warn_once(
                "no-checkpoint-folder",
                f"SpectralTrainerCallback: no checkpoint folder {folder}; the spectral history is "
                "not saved with this checkpoint.",
            )
            return
        payload = {"global_step": state.global_step, "tracker": self.tracker.state_dict()}
        self._guard("checkpoint", lambda: _write_json(os.path.join(folder, STATE_FILE), payload))

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        # After load_best_model_at_end the model holds a checkpoint's weights, not the last ones.
        final = None if args.load_best_model_at_end else model
        self._epochs.setdefault(state.global_step, state.epoch)
        self._finish(final, state.global_step)
        self._guard("shutdown", self.tracker.close)
        writer, self._writer = self._writer, None
        if writer is not None and writer is not self._hf_writer():
            # HF's TensorBoardCallback closed its writer before this hook; what was written to it
            # since then went to a reopened file, closed here.
            self._guard("logger", writer.close)
        self._trainer = None
        self._sinks = {}
        self.tracker.image_sinks = []

    # --- steps -------------------------------------------------------------------------------

    def _finish(self, model: nn.Module | None, step: int) -> None:
        """Once per ``train()``: analyse the final weights (``model`` at ``step``; None: only take
        in what runs), draw the last figures, flush."""
        if self._finished:
            return
        self._finished = True
        if model is not None:
            self.tracker.analyse_final(model, step, self._root(model))
        else:
            self.tracker.collect(block=True)
        self._guard("figures", self.tracker.finish)
        writer = self._tensorboard_writer()
        if writer is not None:
            self._guard("logger", writer.flush)

    def _decide_stop(self, args: TrainingArguments, control: TrainerControl) -> None:
        if self.tracker.stop_rule is None:
            return
        decision = self.tracker.should_stop
        if args.world_size > 1 and torch.distributed.is_initialized():
            # Any rank's stop stops all (the merged reports make them agree anyway).
            flag = torch.tensor(float(decision), device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            decision = bool(flag.item() > 0)
        if decision and not control.should_training_stop:
            control.should_training_stop = True
            step = self.stopped_step = self._step
            reason = self.tracker.stop_reason or "the stop rule fired on another rank"
            rank_zero_info(f"SpectralTrainerCallback: stopping at step {step}: {reason}")
            sink = self._sink()
            if sink is not None:
                self._guard("logger", lambda: sink.write_text("stop_reason", reason, step))

    def _restore(self, args: TrainingArguments, state: TrainerState, resume: Any) -> None:
        """Load the history saved with the checkpoint training resumes from."""
        folder = resume if isinstance(resume, (str, os.PathLike)) else None
        if folder is None:  # not found on the stack: HF's own naming
            folder = self._checkpoint_folder(args, state)
        path = os.path.join(folder, STATE_FILE)
        if not os.path.isfile(path):
            self._warn_once(
                "no-saved-state",
                f"SpectralTrainerCallback: {path} does not exist; the spectral history starts "
                f"afresh at step {state.global_step}.",
            )
            return
        with open(path, encoding="utf-8") as file:
            payload = json.load(file)
        self.tracker.load_state_dict(payload["tracker"])

    def _log_report(self, report: SpectralReport, step: int) -> None:
        """The tracker's sink: scalars through ``Trainer.log`` on every rank (so that
        ``log_history`` is the same everywhere; HF's reporters write on the main process only),
        histograms and the verdict table to HF's TensorBoard writer."""
        trainer = self._trainer
        if trainer is None:
            return
        scalars = self.tracker.scalars(report)
        epoch = self._epochs.get(step)
        self._epochs = {s: e for s, e in self._epochs.items() if s > step}
        self._guard("logger", lambda: _log_at(trainer, scalars, step, epoch))
        sink = self._sink()
        if sink is None:
            return
        extras = self.tracker.extras_due()
        self._guard(
            "logger",
            lambda: sink.write_report(report, step, scalars, extras["histograms"], extras["text"]),
        )
        self._guard("logger", sink.flush)

    def _log_images(self, step: int, images: dict[str, Any]) -> None:
        sink = self._sink()
        if sink is not None:
            self._guard("logger", lambda: sink.write_images(step, images))

    # --- where things are --------------------------------------------------------------------

    def _root(self, model: nn.Module) -> nn.Module | None:
        """The Trainer's wrapped model (DDP, FSDP), which owns sharded parameters; None if none."""
        wrapped = getattr(self._trainer, "model_wrapped", None)
        return wrapped if isinstance(wrapped, nn.Module) and wrapped is not model else None

    def _checkpoint_folder(self, args: TrainingArguments, state: TrainerState) -> str:
        """Where the Trainer saves the checkpoint of ``state.global_step`` (a hyper-parameter
        search saves in a folder per trial instead; on_save then warns)."""
        return os.path.join(str(args.output_dir), f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")

    def _has_tensorboard(self) -> bool:
        handler = getattr(self._trainer, "callback_handler", None)
        return any(isinstance(cb, TensorBoardCallback) for cb in getattr(handler, "callbacks", ()))

    def _hf_writer(self) -> Any:
        """The ``SummaryWriter`` of HF's TensorBoardCallback now (None on other ranks, before
        its ``on_train_begin`` and after its ``on_train_end``)."""
        handler = getattr(self._trainer, "callback_handler", None)
        for cb in getattr(handler, "callbacks", ()):
            if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                return cb.tb_writer
        return None

    def _tensorboard_writer(self) -> Any:
        """HF's TensorBoard writer, or the last one seen (a closed ``SummaryWriter`` reopens a
        file in its folder on the next write)."""
        writer = self._hf_writer()
        if writer is not None:
            self._writer = writer
        return self._writer

    def _sink(self) -> TensorBoardSink | None:
        """The sink on HF's TensorBoard writer; its scalars come through ``Trainer.log``."""
        state = getattr(self._trainer, "state", None)
        if state is None or not state.is_world_process_zero:
            return None
        writer = self._tensorboard_writer()
        if writer is None:
            return None
        if id(writer) not in self._sinks:
            rule = self.tracker.stop_rule
            self._sinks[id(writer)] = TensorBoardSink(
                writer,
                _REPORTED_AS + self.tracker.prefix,
                None if rule is None else rule.threshold,
                scalars=False,
            )
        return self._sinks[id(writer)]

    def _guard(self, what: str, action: Any) -> None:
        """Run ``action``; an exception becomes one warning per kind, never a failed run."""
        try:
            action()
        except Exception as error:
            self._warn_once(
                what,
                f"SpectralTrainerCallback: {what} failed ({type(error).__name__}: {error}); "
                "training goes on and further such failures are not reported.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            rank_zero_warn(message)

    def __getstate__(self) -> dict[str, Any]:
        # The Trainer and the writer stay in this process.
        state = self.__dict__.copy()
        state["_trainer"] = state["_writer"] = None
        state["_sinks"] = {}
        return state


def _find_trainer(callback: TrainerCallback) -> tuple[Trainer | None, Any]:
    """The Trainer whose hook calls ``callback`` now, and the ``resume_from_checkpoint`` its
    training loop was given (None when not found).

    Hooks get the model, optimizer and dataloaders but not the Trainer; the Trainer method that
    fires the hook is on the call stack, with the checkpoint path as its local variable."""
    frame = inspect.currentframe()
    trainer: Trainer | None = None
    resume: Any = None
    try:
        for _ in range(64):
            if frame is None:
                break
            owner = frame.f_locals.get("self")
            if isinstance(owner, Trainer):
                handler = getattr(owner, "callback_handler", None)
                if trainer is None and any(
                    cb is callback for cb in getattr(handler, "callbacks", ())
                ):
                    trainer = owner
                if owner is trainer and "resume_from_checkpoint" in frame.f_locals:
                    resume = frame.f_locals["resume_from_checkpoint"]
                    break
            frame = frame.f_back
    finally:
        del frame  # a frame held in a local makes a reference cycle
    return trainer, resume


def _log_at(
    trainer: Trainer, scalars: dict[str, float], step: int, epoch: float | None = None
) -> None:
    """``Trainer.log`` of ``scalars`` as if at ``step`` (and ``epoch``): ``log_history`` and the
    reporters read them from ``state``, set for the call. ``control.should_log``, which ``on_log``
    clears, is kept: a loss log due at this step must still happen."""
    state = trainer.state
    current = (state.global_step, state.epoch)
    should_log = trainer.control.should_log
    state.global_step = step
    if epoch is not None:
        state.epoch = epoch
    try:
        # The base class's log, not an override: subclasses such as TRL's trainers fold their
        # own accumulated metrics into every log call and reset them, which would move those
        # metrics to this entry (and this step).
        Trainer.log(trainer, {k: v for k, v in scalars.items() if math.isfinite(v)})
    finally:
        state.global_step, state.epoch = current
        trainer.control.should_log = should_log or trainer.control.should_log


def _write_json(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (a partial file is never read back)."""
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as file:
        json.dump(payload, file)
    os.replace(partial, path)
