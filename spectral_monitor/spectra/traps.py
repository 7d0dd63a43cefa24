"""Correlation traps: eigenvalues of the element-wise *shuffled* weight matrix above its
Marchenko–Pastur bulk edge (Martin & Mahoney; WeightWatcher's ``rand_num_spikes``/``num_traps``).

Shuffling W's entries destroys every correlation between them but keeps the entries. What is left
above the bulk then comes from the entries themselves: a mean shift (rank one, BBP threshold
|mean|·(rows·cols)^¼/std = 1) or a few very large entries (heavy-tailed weights). The bulk scale
is W's entry variance (:mod:`.spikes`), so the edge needs no fit.

The shuffle is seeded (one ``torch.Generator`` per layer, seed given by the caller), so an
analysis is reproducible; the shuffled matrices are solved by :func:`.eigen.batched_eigenvalues`
like the layers themselves, a group of layers at a time so that at most ``_SHUFFLE_BYTES`` (or
one layer) of shuffled copies exists at once.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from spectral_monitor.spectra.eigen import EigenError, Precision, batched_eigenvalues
from spectral_monitor.spectra.spikes import mp_bulk_edge, num_above, spike_threshold

__all__ = [
    "Traps",
    "layer_seed",
    "shuffle_entries",
    "shuffled_eigenvalues",
    "trap_signals",
]

# Shuffled copies held at once before their eigenvalues are solved (a larger layer is a group
# of its own): the copies cost as much memory as the weights they shuffle.
_SHUFFLE_BYTES = 1 << 26  # 64 MiB


@dataclass(frozen=True)
class Traps:
    """Correlation traps of one layer.

    Attributes:
        num_traps: eigenvalues of the shuffled W above the MP edge plus the Tracy–Widom margin
            (:func:`.spikes.spike_threshold`).
        trap_excess: λ_top/λ+ − 1 for the largest shuffled eigenvalue λ_top against the
            asymptotic bulk edge λ+ (:func:`.spikes.mp_bulk_edge`): > 0 above the edge. A
            continuous reading: a random layer sits near 0 (slightly below or above, within the
            margin), a layer with a trap well above the margin.
    """

    num_traps: int
    trap_excess: float

    @classmethod
    def none(cls) -> Traps:
        """Not computed (traps off, a skipped layer, a failed solve): -1 and NaN."""
        return cls(-1, math.nan)


def layer_seed(seed: int, name: str) -> int:
    """A layer's shuffle seed from the analysis seed and the layer's name, so that a layer gets
    the same shuffle whichever other layers are analysed with it."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (1 << 63)


def shuffle_entries(stack: torch.Tensor, seed: int) -> torch.Tensor:
    """A copy of a (count, rows, cols) stack with all its entries permuted uniformly at random
    (one permutation of the count·rows·cols entries, from a generator seeded with ``seed`` on
    the stack's device); same shape, dtype and device."""
    generator = torch.Generator(device=stack.device).manual_seed(seed)
    flat = stack.detach().reshape(-1)
    perm = torch.randperm(flat.numel(), generator=generator, device=stack.device)
    return flat[perm].reshape(stack.shape)


def shuffled_eigenvalues(
    stacks: Sequence[torch.Tensor], seeds: Sequence[int], precision: Precision = "float32"
) -> list[torch.Tensor | EigenError]:
    """Eigenvalues of WᵀW for the shuffled copy of each stack (raw convention).

    Args:
        stacks: one (count_i, rows_i, cols_i) stack per layer, rows >= cols.
        seeds: one shuffle seed per layer (see :func:`layer_seed`).
        precision: the eigensolver's precision.

    Returns:
        One (count_i, cols_i) float64 tensor (ascending rows) per layer, or its
        :class:`~.eigen.EigenError`, as :func:`~.eigen.batched_eigenvalues` returns them.
    """
    if len(stacks) != len(seeds):
        raise ValueError(f"seeds must give one seed per stack, got {len(seeds)} for {len(stacks)}")
    out: list[torch.Tensor | EigenError] = []
    group: list[torch.Tensor] = []
    held = 0
    for stack, seed in zip(stacks, seeds, strict=True):
        size = stack.numel() * stack.element_size()
        if group and held + size > _SHUFFLE_BYTES:
            out.extend(batched_eigenvalues(group, precision))
            group, held = [], 0
        group.append(shuffle_entries(stack, seed))
        held += size
    if group:
        out.extend(batched_eigenvalues(group, precision))
    return out


def trap_signals(shuffled: np.ndarray, variance: float, rows: int, cols: int) -> Traps:
    """:class:`Traps` from the shuffled matrices' eigenvalues.

    Args:
        shuffled: eigenvalues of the shuffled stack, any shape, raw convention (WᵀW, not
            divided by rows); NaN rows (a non-finite weight) give :meth:`Traps.none`.
        variance: W's entry variance about its mean (squared weight units).
        rows, cols: shape of one matrix of the stack, rows >= cols.
    """
    x = np.asarray(shuffled, dtype=np.float64).reshape(-1)
    edge = mp_bulk_edge(variance, rows, cols)
    if x.size == 0 or not np.isfinite(x).all() or not (edge > 0 and math.isfinite(edge)):
        return Traps.none()
    count = num_above(x, spike_threshold(variance, rows, cols))
    return Traps(count, float(x.max()) / edge - 1.0)
