"""Snapshots: copies of the selected layers' weights at one moment, taken where the model lives.

This is the one impure step of an analysis: it reads live parameters (gathering sharded ones,
which is a collective) and copies them so that training can go on while a worker analyses the
copy. Everything after it (:func:`spectral_monitor.analysis.analyze.analyze_snapshot`) is pure.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.weights.layers import LayerSpec, Selection, select_layers, select_state_dict
from spectral_monitor.weights.sharded_weights import full_parameters, full_weight, is_sharded

__all__ = [
    "LayerSnapshot",
    "select",
    "snapshot_dtype",
    "snapshot_state_dict",
    "subtract_base",
    "take_snapshot",
]


@dataclass
class LayerSnapshot:
    """One layer's weight at one moment, in the (out, in, \\*kernel) layout: a float32 (or
    bf16/fp16, see :func:`snapshot_dtype`) tensor, or None and the reason there is none (with
    the traceback in ``error`` when reading the weight raised)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weight: torch.Tensor | None
    skipped: str | None = None
    error: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight copy."""
        return 0 if self.weight is None else self.weight.numel() * self.weight.element_size()


def snapshot_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a weight is copied in: bf16 and fp16 stay as they are (half the memory of
    float32; the solver upcasts them exactly, a chunk at a time), anything else is float32."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def select(source: nn.Module | Mapping[str, Any], config: AnalysisConfig) -> Selection:
    """The layers ``config`` selects in a module or a state dict, and what no kind covers."""
    args = (config.layers, config.exclude, config.kinds, config.lora)
    if isinstance(source, nn.Module):
        return select_layers(source, *args)
    return select_state_dict(source, *args)


def _snapshot_layer(
    spec: LayerSpec, full: list[Any], config: AnalysisConfig, copy: bool
) -> LayerSnapshot:
    """One layer's copy from its whole source tensors (``full``)."""
    if spec.skipped is not None:
        return LayerSnapshot(spec.name, spec.kind, spec.shape, None, spec.skipped)
    if any(t.is_meta for t in full):
        return LayerSnapshot(spec.name, spec.kind, spec.shape, None, "weight on the meta device")
    if not 2 <= len(spec.shape) <= 5:
        reason = f"unsupported weight shape {spec.shape}"
        return LayerSnapshot(spec.name, spec.kind, spec.shape, None, reason)
    device = config.device if config.device is not None else full[0].device
    with torch.no_grad():
        weight = spec.weight(*(t.detach() for t in full))
    # detach() alone shares storage, and the next optimizer step would change the snapshot.
    w = weight.to(device=device, dtype=snapshot_dtype(weight.dtype), copy=copy)
    return LayerSnapshot(spec.name, spec.kind, spec.shape, w)


def take_snapshot(
    model: nn.Module,
    config: AnalysisConfig,
    copy: bool = True,
    max_bytes: int | None = None,
    only: set[str] | None = None,
    root: nn.Module | None = None,
    selection: Selection | None = None,
    catch: bool = False,
) -> list[LayerSnapshot]:
    """Copies of the selected layers' weights in :func:`snapshot_dtype` (float32, or the
    weight's own bf16/fp16), on ``config.device`` or the weight's own device.

    Sharded weights are read whole: a DTensor (FSDP2, tensor parallel) is gathered layer by
    layer, and a model wrapped in FSDP (1) is read inside ``summon_full_params``. Both are
    collectives, so on a sharded model every rank must call this at the same point with the same
    ``config``; every rank gathers every selected layer and only the owner (``only``) keeps it.

    Args:
        model: the model.
        config: which layers.
        copy: clone the weights (needed while training continues); False lets a float32 weight
            on the right device be used in place, for a one-off analysis.
        max_bytes: budget for the copies; a layer that would exceed it is not copied and is
            reported as skipped with the reason (None: no budget).
        only: take just these layer names (this rank's share of a distributed analysis).
        root: the module that owns the sharded parameters, when it wraps ``model`` (Lightning's
            ``trainer.strategy.model``); default ``model``.
        selection: ``select(model, config)`` when the caller already has it.
        catch: a layer whose weight cannot be read (a LoRA or attention slice that raises, a copy
            that fails) is skipped with the reason, its traceback in ``error``, instead of
            raising (the training thread's snapshot must not end the run).
    """
    snapshot = []
    held = 0
    gathered: dict[int, torch.Tensor] = {}  # the last sharded sources, shared by q/k/v
    with full_parameters(root if root is not None else model):
        if selection is None:
            selection = select(model, config)
        for spec in selection.specs:
            full = []
            for source in spec.sources:
                if is_sharded(source):  # on every rank, owner or not: a collective
                    if id(source) not in gathered:
                        gathered = {id(source): full_weight(source)}
                    source = gathered[id(source)]
                full.append(source)
            if only is not None and spec.name not in only:
                continue
            if max_bytes is not None and spec.skipped is None and not full[0].is_meta:
                need = _numel(spec.shape) * snapshot_dtype(full[0].dtype).itemsize
                if held + need > max_bytes:
                    reason = f"snapshot budget max_snapshot_bytes={max_bytes} exceeded"
                    snapshot.append(LayerSnapshot(spec.name, spec.kind, spec.shape, None, reason))
                    continue
                held += need
            try:
                snapshot.append(_snapshot_layer(spec, full, config, copy))
            except Exception as error:
                if not catch:
                    raise
                reason = f"reading its weight failed ({type(error).__name__}: {error})"
                snap = LayerSnapshot(spec.name, spec.kind, spec.shape, None, reason)
                snap.error = traceback.format_exc()
                snapshot.append(snap)
    return snapshot


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for dim in shape:
        out *= dim
    return out


def snapshot_state_dict(
    state_dict: Mapping[str, Any], config: AnalysisConfig, selection: Selection | None = None
) -> list[LayerSnapshot]:
    """Like :func:`take_snapshot`, for a bare state dict (see
    :func:`spectral_monitor.weights.layers.select_state_dict` for how keys become layers)."""
    if selection is None:
        selection = select(state_dict, config)
    return [
        _snapshot_layer(spec, list(spec.sources), config, copy=False) for spec in selection.specs
    ]


def subtract_base(snapshot: list[LayerSnapshot], base: list[LayerSnapshot]) -> list[LayerSnapshot]:
    """Each layer's change from a base model, W − W_base (float32), matched by name.

    A layer absent from the base, of another shape there, or skipped there is skipped with
    that reason.
    """
    by_name = {snap.name: snap for snap in base}
    out = []
    for snap in snapshot:
        ref = by_name.get(snap.name)
        reason = None
        if snap.weight is None:
            reason = snap.skipped
        elif ref is None:
            reason = f"no layer {snap.name!r} in the base model"
        elif ref.weight is None:
            reason = f"in the base model: {ref.skipped}"
        elif ref.shape != snap.shape:
            reason = f"shape {snap.shape} differs from the base model's {ref.shape}"
        if reason is not None or ref is None or ref.weight is None or snap.weight is None:
            out.append(replace(snap, weight=None, skipped=reason))
            continue
        delta = snap.weight.float() - ref.weight.to(snap.weight.device, torch.float32)
        out.append(replace(snap, weight=delta))
    return out
