"""Reading a run's :class:`SpectralHistory` back from what its loggers wrote: the CSV file the CSV
sink keeps in a Lightning ``CSVLogger``'s folder (``<prefix>_history.csv``, every per-layer field),
or TensorBoard event files (the scalars: alpha, its interval, λmax and the aggregates).

One history, any source: :func:`find_histories` walks a directory and returns one history per run
folder, from its CSV file when it has one (it holds every field, the reliability flags included),
else from its event files.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from spectral_monitor.analysis.history import AGGREGATE_KEYS, SpectralHistory, typed_value
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport

__all__ = [
    "FoundHistory",
    "find_histories",
    "history_csv_name",
    "history_from_rows",
    "read_history_csv",
    "read_tensorboard_history",
]

#: Per-layer scalar series TensorBoard holds, as ``<prefix>/<key>/<layer>``.
_TENSORBOARD_LAYER_KEYS = ("alpha", "alpha_lo", "alpha_hi", "lambda_max")
_LAYER_FIELDS = {f.name for f in fields(LayerSpectrum)} - {"evals"}


def history_csv_name(prefix: str = "spectral") -> str:
    """The file name of a run's full history in a CSV logger's folder."""
    return f"{prefix}_history.csv"


def _layer(row: Mapping[str, Any]) -> LayerSpectrum:
    """One row of :meth:`SpectralHistory.to_rows` (typed or CSV text) as a ``LayerSpectrum``;
    columns this version does not know are left out."""
    values = {k: typed_value(k, v) for k, v in row.items() if k in _LAYER_FIELDS and k != "name"}
    # Unknown values (None) take the field's default: no count, not reliable, no reason.
    values = {k: v for k, v in values.items() if v is not None}
    values["shape"] = tuple(int(p) for p in str(values.get("shape", "")).split("x") if p.isdigit())
    values.setdefault("kind", "")
    return LayerSpectrum(name=str(row["layer"]), **values)


def history_from_rows(rows: Iterable[Mapping[str, Any]]) -> SpectralHistory:
    """The history whose :meth:`~SpectralHistory.to_rows` gave ``rows`` (typed values or CSV
    text). The aggregates of each step are recomputed from its layers, as the report computed
    them (over reliable layers)."""
    by_step: dict[int, list[LayerSpectrum]] = {}
    for row in rows:
        by_step.setdefault(int(float(row["step"])), []).append(_layer(row))
    history = SpectralHistory()
    for step in sorted(by_step):
        history.add(SpectralReport(by_step[step], step=step))
    return history


def read_history_csv(path: str | Path) -> SpectralHistory:
    """Read a history written by :meth:`SpectralHistory.to_csv` (or the CSV sink).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not such a file (no ``step`` and ``layer`` columns, or a value that is
            not of its field's type).
    """
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        names = reader.fieldnames or []
        if "step" not in names or "layer" not in names:
            raise ValueError(f"{path}: not a spectral history (no 'step' and 'layer' columns)")
        return history_from_rows(list(reader))


def _latest_per_step(events: Sequence[Any]) -> dict[int, float]:
    """One value per step: a step written twice (a run resumed into the same directory without
    a restart marker) keeps the value written last, as the resumed run's curve shows it."""
    return {int(event.step): float(event.value) for event in events}


def read_tensorboard_history(directory: str | Path, prefix: str = "spectral") -> SpectralHistory:
    """The history in the event files of one TensorBoard run ``directory`` (not searched below).

    Per layer: the steps with an alpha, and alpha, its interval and λmax there; fields that
    TensorBoard has no scalar for (``reliable``, ``n_tail``, the verdict, ...) are unknown (NaN or
    None). Aggregates come from the ``<prefix>/alpha_mean``, ... scalars (NaN where absent). Empty
    when the directory has no ``<prefix>/alpha/`` scalar.
    """
    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        EventAccumulator,
    )

    acc = EventAccumulator(str(directory), size_guidance={SCALARS: 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    alpha_tag = f"{prefix}/alpha/"
    layers = [t[len(alpha_tag) :] for t in sorted(tags) if t.startswith(alpha_tag)]
    history = SpectralHistory()
    if not layers:
        return history

    def series(tag: str) -> dict[int, float]:
        return _latest_per_step(acc.Scalars(tag)) if tag in tags else {}

    aggregates = {key: series(f"{prefix}/{key}") for key in AGGREGATE_KEYS}
    steps: set[int] = set()
    state_layers: dict[str, dict[str, list[Any]]] = {}
    for layer in layers:
        values = {key: series(f"{prefix}/{key}/{layer}") for key in _TENSORBOARD_LAYER_KEYS}
        layer_steps = sorted(values["alpha"])
        steps.update(layer_steps)
        track: dict[str, list[Any]] = {"step": layer_steps}
        for key, by_step in values.items():
            track[key] = [by_step.get(s, math.nan) for s in layer_steps]
        state_layers[layer] = track
    for by_step in aggregates.values():
        steps.update(by_step)
    ordered = sorted(steps)
    state_aggregates: dict[str, list[float]] = {"step": list(ordered)}
    for key, by_step in aggregates.items():
        state_aggregates[key] = [by_step.get(s, math.nan) for s in ordered]
    history.load_state_dict({"layers": state_layers, "aggregates": state_aggregates})
    return history


@dataclass(frozen=True)
class FoundHistory:
    """One run's history and where it came from.

    Attributes:
        source: ``"csv"`` (the CSV sink's file: every field) or ``"tensorboard"`` (the scalars).
        path: the CSV file, or the directory of the event files.
        history: the trajectories.
    """

    source: str
    path: Path
    history: SpectralHistory


def find_histories(root: str | Path, prefix: str = "spectral") -> dict[str, FoundHistory]:
    """Every run under ``root`` (searched recursively) with a history: ``{run: FoundHistory}``,
    ``run`` the folder relative to ``root`` (``"."`` for ``root`` itself), in name order.

    A folder with both (a ``TensorBoardLogger`` and a ``CSVLogger`` sharing a version folder) is
    read from its CSV file, which holds every field. A CSV file that cannot be read as a history
    is passed over for the folder's event files, if any.
    """
    root = Path(root)
    found: dict[Path, FoundHistory] = {}
    for path in sorted(root.rglob(history_csv_name(prefix))):
        try:
            history = read_history_csv(path)
        except (OSError, ValueError, csv.Error):
            continue
        if len(history):
            found[path.parent] = FoundHistory("csv", path, history)
    for directory in sorted({p.parent for p in root.rglob("events.out.tfevents.*")}):
        if directory in found:
            continue
        history = read_tensorboard_history(directory, prefix)
        if history.layers:
            found[directory] = FoundHistory("tensorboard", directory, history)
    return {
        (str(d.relative_to(root)) if d != root else "."): found[d]
        for d in sorted(found, key=lambda d: str(d))
    }
