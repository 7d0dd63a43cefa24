"""Correlation traps: eigenvalues of the element-wise *shuffled* weight matrix above its
Marchenko–Pastur bulk edge (Martin & Mahoney; WeightWatcher's ``rand_num_spikes``/``num_traps``).

Shuffling W's entries destroys every correlation between them but keeps the entries. What is left
above the bulk then comes from the entries themselves: a mean shift (rank one, BBP threshold
|mean|·(rows·cols)^¼/std = 1) or a few very large entries (heavy-tailed weights). The bulk scale
is W's entry variance (:mod:`.spikes`), so the edge needs no fit.

The shuffle is seeded (numpy's in-place shuffle on a CPU, ``torch.randperm`` on a GPU), so an
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
    "trap_work_bytes",
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


# numpy has no bfloat16: such entries are shuffled as their 16-bit patterns (a shuffle only
# moves entries, so their bits are all it needs).
_BIT_VIEWS = {torch.bfloat16: torch.int16}


def shuffle_entries(
    stack: torch.Tensor, seed: int = 0, permutation: torch.Tensor | None = None
) -> torch.Tensor:
    """A copy of a (count, rows, cols) stack with all its entries permuted uniformly at random
    (one permutation of the count·rows·cols entries); same shape, dtype and device.

    Args:
        stack: the matrices.
        seed: seed of the shuffle. On a CPU: numpy's in-place Fisher–Yates shuffle of the copy
            (``numpy.random.default_rng(seed)``), which needs no index array; on another
            device: ``torch.randperm`` with a generator seeded on that device (an int64 index
            of every entry, 8 bytes each, while the copy is made).
        permutation: an explicit permutation of ``stack.numel()`` indices instead (entry ``i``
            of the output, in row-major order, is entry ``permutation[i]`` of
            ``stack.reshape(-1)``): to reproduce another tool's shuffle.
    """
    stack = stack.detach()
    if permutation is not None:
        flat = stack.reshape(-1)[permutation.to(stack.device)]
        return flat.reshape(stack.shape)
    if stack.device.type == "cpu":
        out = stack.contiguous().clone() if stack.is_contiguous() else stack.contiguous()
        bits = out.view(_BIT_VIEWS.get(out.dtype, out.dtype)).reshape(-1)
        np.random.default_rng(seed).shuffle(bits.numpy())  # in place, through shared memory
        return out
    generator = torch.Generator(device=stack.device).manual_seed(seed)
    perm = torch.randperm(stack.numel(), generator=generator, device=stack.device)
    return stack.reshape(-1)[perm].reshape(stack.shape)


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


def trap_work_bytes(stacks: Sequence[torch.Tensor]) -> int:
    """Bytes of shuffled copies :func:`shuffled_eigenvalues` holds at once for these stacks;
    off the CPU also the largest layer's int64 permutation index."""
    if not stacks:
        return 0
    largest = max(s.numel() * s.element_size() for s in stacks)
    total = sum(s.numel() * s.element_size() for s in stacks)
    index = max((8 * s.numel() for s in stacks if s.device.type != "cpu"), default=0)
    return min(total, max(_SHUFFLE_BYTES, largest)) + index
