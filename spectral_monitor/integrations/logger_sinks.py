"""Which sink serves which Lightning logger: one sink per logger, chosen by the logger's type.

Scalars reach every logger through its ``log_metrics`` (the callback does that); a sink carries
the rest, as far as its destination can hold it:

============================  ===============  =======================================
logger                        sink             takes
============================  ===============  =======================================
``TensorBoardLogger``         TensorBoardSink  histograms, figures, verdict table (text)
``WandbLogger``               WandbSink        histograms, figures, ``wandb.Table``
``MLFlowLogger``              MlflowSink       figures (images), verdict table (CSV artifacts)
``CSVLogger``                 CsvSink          history and verdicts (CSV/JSON files)
any other                     none             scalars only
============================  ===============  =======================================
"""

from __future__ import annotations

from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)

from spectral_monitor.sinks.csv_sink import CsvSink
from spectral_monitor.sinks.mlflow_sink import MlflowSink
from spectral_monitor.sinks.sink import Sink, not_taken
from spectral_monitor.sinks.tensorboard_sink import TensorBoardSink
from spectral_monitor.sinks.wandb_sink import WandbSink

__all__ = ["media_of", "not_sent_message", "open_sink"]

_TAKES: tuple[tuple[type[Logger], frozenset[str]], ...] = (
    (TensorBoardLogger, TensorBoardSink.takes),
    (WandbLogger, WandbSink.takes),
    (MLFlowLogger, MlflowSink.takes),
    (CSVLogger, CsvSink.takes),
)


def media_of(logger: Logger) -> frozenset[str]:
    """What ``logger``'s sink takes beyond the scalars (empty: scalars only)."""
    for logger_type, takes in _TAKES:
        if isinstance(logger, logger_type):
            return takes
    return frozenset()


def open_sink(logger: Logger, prefix: str, stop_threshold: float | None) -> Sink | None:
    """The sink of ``logger``, or None for a logger that takes scalars only. Opens the logger's
    experiment (run, writer, folder) when it is not open yet."""
    if isinstance(logger, TensorBoardLogger):
        # Its scalars come through log_metrics.
        return TensorBoardSink(logger.experiment, prefix, stop_threshold, scalars=False)
    if isinstance(logger, WandbLogger):
        # log_metrics stamps trainer/global_step, the x axis of the logger's scalars.
        return WandbSink(lambda data, step: logger.log_metrics(data, step=step), prefix)
    if isinstance(logger, MLFlowLogger):
        run_id = logger.run_id  # creates the run when needed
        if run_id is None:
            raise RuntimeError("MLFlowLogger has no run")
        return MlflowSink(logger.experiment, run_id, prefix)
    if isinstance(logger, CSVLogger):
        _ = logger.experiment  # creates the version folder
        return CsvSink(logger.log_dir, prefix)
    return None


def not_sent_message(logger: Logger) -> str | None:
    """The warning for what ``logger`` cannot take, or None when it takes everything."""
    missing = not_taken(media_of(logger))
    if not missing:
        return None
    name = type(logger).__name__
    return (
        f"SpectralMonitor: {name} cannot take {', '.join(missing)}; they are not sent to it "
        "(the scalars are)."
    )
