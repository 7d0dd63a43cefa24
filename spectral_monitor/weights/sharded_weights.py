"""Reading whole weights out of sharded models: FSDP2 / tensor-parallel DTensors and FSDP (1).

Gathering a shard is a collective: every rank must ask for the same weights in the same order,
also the ranks that will not analyse them (a rank that skips one leaves the others waiting
forever). :func:`spectral_monitor.analysis.snapshot.take_snapshot` therefore gathers every selected
sharded layer on every rank, one at a time, and only the owner keeps its copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeGuard

import torch
from torch import nn

__all__ = ["full_parameters", "full_weight", "is_sharded", "needs_collectives"]


def is_sharded(weight: Any) -> TypeGuard[torch.Tensor]:
    """True for a DTensor (FSDP2 ``fully_shard``, tensor parallel): its full value needs a
    collective."""
    return isinstance(weight, torch.Tensor) and hasattr(weight, "full_tensor")


def full_weight(weight: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor (a collective: all ranks of its mesh must call it), or
    the tensor itself. Peak extra memory: one full copy of this weight, in its own dtype."""
    return weight.full_tensor() if is_sharded(weight) else weight  # type: ignore[attr-defined]


def _has_fsdp1(root: nn.Module) -> bool:
    """Whether ``root`` holds an FSDP (1) module (torch built without distributed: never)."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return False
    return any(isinstance(m, FullyShardedDataParallel) for m in root.modules())


def needs_collectives(model: nn.Module, root: nn.Module | None = None) -> bool:
    """True when reading ``model``'s weights whole is a collective: some parameter is a DTensor,
    or ``root`` (default ``model``) holds an FSDP (1) module. Then every rank must snapshot at
    the same steps: none may skip one for back-pressure."""
    return _has_fsdp1(model if root is None else root) or any(
        is_sharded(p) for p in model.parameters()
    )


@contextlib.contextmanager
def full_parameters(root: nn.Module) -> Iterator[None]:
    """Within this context the layers under ``root`` hold their full weights.

    For a model wrapped in FSDP (1) — Lightning's ``FSDPStrategy`` — this is
    ``FullyShardedDataParallel.summon_full_params(root, writeback=False)``: a collective that
    every rank must enter, which holds the whole model's unsharded parameters on every rank for
    its duration (the extra memory of one unsharded model). Anything else (plain modules, DDP,
    FSDP2's DTensors, gathered layer by layer by :func:`full_weight`) needs nothing.
    """
    if not _has_fsdp1(root):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(root, writeback=False, recurse=True):
        yield
