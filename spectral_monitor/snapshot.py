"""Snapshots: copies of the selected layers' weights at one moment, taken where the model lives.

This is the one impure step of an analysis: it reads live parameters (gathering sharded ones,
which is a collective) and copies them so that training can go on while a worker analyses the
copy. Everything after it (:func:`spectral_monitor.analysis.analyze_snapshot`) is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from spectral_monitor.config import AnalysisConfig
from spectral_monitor.layers import layer_kind, select_layers, select_weights
from spectral_monitor.sharded_weights import full_parameters, full_weight, is_sharded

__all__ = ["LayerSnapshot", "snapshot_dtype", "snapshot_state_dict", "take_snapshot"]


@dataclass
class LayerSnapshot:
    """One layer's weight at one moment: a float32 (or bf16/fp16, see :func:`snapshot_dtype`)
    tensor, or None and the reason there is none."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weight: torch.Tensor | None
    skipped: str | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight copy."""
        return 0 if self.weight is None else self.weight.numel() * self.weight.element_size()


def snapshot_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a weight is copied in: bf16 and fp16 stay as they are (half the memory of
    float32; the solver upcasts them exactly, a chunk at a time), anything else is float32."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


def _snapshot_layer(
    name: str, kind: str, weight: Any, config: AnalysisConfig, copy: bool
) -> LayerSnapshot:
    if not isinstance(weight, torch.Tensor) or isinstance(
        weight, nn.parameter.UninitializedParameter
    ):
        return LayerSnapshot(name, kind, (), None, "no initialised weight")
    shape = tuple(weight.shape)
    if weight.is_meta:
        return LayerSnapshot(name, kind, shape, None, "weight on the meta device")
    if weight.dim() not in (2, 4):
        return LayerSnapshot(name, kind, shape, None, f"unsupported weight shape {shape}")
    device = config.device if config.device is not None else weight.device
    # detach() alone shares storage, and the next optimizer step would change the snapshot.
    w = weight.detach().to(device=device, dtype=snapshot_dtype(weight.dtype), copy=copy)
    return LayerSnapshot(name, kind, shape, w)


def take_snapshot(
    model: nn.Module,
    config: AnalysisConfig,
    copy: bool = True,
    max_bytes: int | None = None,
    only: set[str] | None = None,
    root: nn.Module | None = None,
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
    """
    snapshot = []
    held = 0
    with full_parameters(root if root is not None else model):
        for name, module in select_layers(model, config.layers, config.exclude):
            weight = getattr(module, "weight", None)
            if is_sharded(weight):
                weight = full_weight(weight)  # on every rank, owner or not: a collective
            if only is not None and name not in only:
                continue
            kind = layer_kind(module) or type(module).__name__
            if max_bytes is not None and isinstance(weight, torch.Tensor) and not weight.is_meta:
                need = weight.numel() * snapshot_dtype(weight.dtype).itemsize
                if held + need > max_bytes:
                    reason = f"snapshot budget max_snapshot_bytes={max_bytes} exceeded"
                    snapshot.append(LayerSnapshot(name, kind, tuple(weight.shape), None, reason))
                    continue
                held += need
            snapshot.append(_snapshot_layer(name, kind, weight, config, copy))
    return snapshot


def snapshot_state_dict(
    state_dict: Mapping[str, Any], config: AnalysisConfig
) -> list[LayerSnapshot]:
    """Like :func:`take_snapshot`, for a bare state dict (see
    :func:`spectral_monitor.layers.select_weights` for which tensors count as layers)."""
    return [
        _snapshot_layer(name, kind, tensor, config, copy=False)
        for name, kind, tensor in select_weights(state_dict, config.layers, config.exclude)
    ]
