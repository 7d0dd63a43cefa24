"""Splitting an analysis across ranks: layers are assigned to ranks by cost, each rank analyses
its own, and the partial reports are gathered and merged into the one every rank sees.

Pure functions; the collective itself (``gather``) is injected by the caller, which must call it
at the same point on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.analysis.snapshot import select
from spectral_monitor.weights.layers import matrix_shape

__all__ = ["Gather", "assign_layers", "layer_cost", "merge_reports", "torch_gather"]

#: Collects one picklable object from every rank, in rank order, on every rank.
Gather = Callable[[Any], list[Any]]


def layer_cost(weight_shape: Sequence[int], conv: str) -> float:
    """Floating-point operations of one layer's spectrum: the Gram matrices (count·rows·cols²)
    and their eigensolves (≈ 4/3·count·cols³, a constant factor that only the ratio needs)."""
    if not 2 <= len(weight_shape) <= 5:
        return 0.0
    count, rows, cols = matrix_shape(weight_shape, conv)  # type: ignore[arg-type]
    return float(count) * (rows * cols * cols + 4.0 / 3.0 * cols**3)


def assign_layers(model: nn.Module, config: AnalysisConfig, world_size: int) -> list[set[str]]:
    """The layer names each rank analyses: longest-processing-time first onto the least loaded
    rank (ties to the lower rank), so every rank gets about 1/world_size of the work. The same on
    every rank, since it depends only on the model's layer names and shapes."""
    costs = [
        (layer_cost(spec.shape, config.conv), spec.name) for spec in select(model, config).specs
    ]
    loads = [0.0] * world_size
    owners: list[set[str]] = [set() for _ in range(world_size)]
    for cost, name in sorted(costs, key=lambda item: -item[0]):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        loads[rank] += cost
        owners[rank].add(name)
    return owners


def merge_reports(parts: Sequence[SpectralReport], order: Sequence[str]) -> SpectralReport:
    """One report from the ranks' partial reports, layers in ``order`` (names absent from every
    part are left out); ``seconds`` and ``memory_bytes`` are the largest rank's."""
    by_name = {layer.name: layer for part in parts for layer in part.layers}
    first = parts[0]
    return SpectralReport(
        layers=[by_name[name] for name in order if name in by_name],
        conv2d=first.conv2d,
        normalize=first.normalize,
        precision=first.precision,
        step=first.step,
        seconds=max(part.seconds for part in parts),
        memory_bytes=max(part.memory_bytes for part in parts),
        solver=",".join(sorted({part.solver for part in parts if part.solver})),
    )


def torch_gather(obj: Any) -> list[Any]:
    """``torch.distributed.all_gather_object`` on the default process group."""
    out: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
