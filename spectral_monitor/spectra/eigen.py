"""Eigenvalues λ = σ² of weight matrices, batched by shape, on the matrices' own device.

The method is the Gram matrix's symmetric eigensolver (torch's ``eigvalsh`` or SciPy's LAPACK,
whichever :mod:`.solvers` measured faster for the size, dtype and device): for a tall
(rows, cols) matrix W, the eigenvalues of the small cols×cols matrix WᵀW are the squared
singular values of W. Measured on the 2-core
development machine (one thread, 3072×768) it takes 0.074 s in float32 against 0.143 s for
float32 ``svdvals`` and 0.19 s for SciPy's float64 SVD; float64 Gram + ``eigvalsh`` takes 0.133 s.
Squaring the condition number costs accuracy only in the smallest eigenvalues, far below where a
power-law tail starts: ``precision="float32"`` keeps alpha within 1e-3 relative of a float64 SVD
(tests/test_eigen.py checks every layer of the test models), ``"float64"`` within 1e-9.

Eigenvalues that are numerically zero — below ``cols · eps · λmax`` of the compute precision, the
rank tolerance of the Gram matrix — are returned as exact zeros, so a rank-deficient layer shows
zeros rather than rounding noise (which can even be negative).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

from spectral_monitor.spectra.solvers import choose_solver

__all__ = [
    "PRECISIONS",
    "EigenError",
    "batched_eigenvalues",
    "eigenvalues",
    "peak_work_bytes",
    "solver_summary",
]

PRECISIONS = ("float32", "float64")
Precision = Literal["float32", "float64"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Largest upcast piece of a weight not in the compute dtype (bf16 snapshot, float64 precision).
_CHUNK_BYTES = 1 << 25  # 32 MiB
# Largest Gram buffer of one batched solver call; a same-shape group above it is split. On a
# GPU a large batch keeps the device busy with one launch; on a CPU a batch buys nothing but
# the per-call overhead and one that outgrows the core's L2 cache is slower (VGG-11 in slices
# mode: 370 ms grouped at 256 MiB, 347 ms one layer a call, one thread), so the CPU's budget
# is a cache's worth: small same-shape layers still share a call.
_GROUP_BYTES = 1 << 28  # 256 MiB
_CPU_GROUP_BYTES = 1 << 22  # 4 MiB


class EigenError(RuntimeError):
    """Raised when neither the eigensolver nor the float64 SVD fallback produced eigenvalues."""


def _gram_into(m: torch.Tensor, out: torch.Tensor) -> None:
    """``out = mᵀm`` in ``out``'s dtype, for a (count, rows, cols) stack of any float dtype.

    A stack already in the compute dtype goes through one batched matmul. Another dtype (a bf16
    snapshot, float64 precision) is upcast ``_CHUNK_BYTES`` at a time and accumulated, so the
    upcast copy of a large weight never exists whole.
    """
    count, rows, cols = m.shape
    dtype = out.dtype
    if m.dtype == dtype:
        torch.matmul(m.mT, m, out=out)
        return
    if m.numel() * dtype.itemsize <= _CHUNK_BYTES:
        work = m.to(dtype)
        torch.matmul(work.mT, work, out=out)
        return
    step = max(1, _CHUNK_BYTES // (cols * dtype.itemsize))
    out.zero_()
    for i in range(count):
        for r0 in range(0, rows, step):
            part = m[i, r0 : r0 + step].to(dtype)
            out[i].addmm_(part.mT, part)
            del part  # before the next chunk is made: one chunk alive, not two


def _gram_bytes(stack: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes of a stack's Gram matrices in ``dtype``: count·cols²."""
    count, _rows, cols = stack.shape
    return count * cols * cols * dtype.itemsize


def _upcast_bytes(stack: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes :func:`_gram_into` holds for the upcast of a stack not in ``dtype`` (0 if it is):
    the whole stack when it fits ``_CHUNK_BYTES``, else one chunk (at least one row)."""
    if stack.dtype == dtype:
        return 0
    count, rows, cols = stack.shape
    return min(count * rows * cols * dtype.itemsize, max(_CHUNK_BYTES, cols * dtype.itemsize))


def _gram_eigenvalues(
    mats: torch.Tensor | Sequence[torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """eigvalsh of the Gram matrices of one stack, or of several same-shape stacks whose Grams
    are written into one buffer (only the small cols×cols matrices are written, never a copy of
    the weights), so that one batched solver call serves them all.

    A Gram that is not finite (a NaN or Inf weight: the diagonal holds every column's squared
    norm, so any such weight shows in its sum; or squares beyond the dtype's range) gets a row
    of NaN; the solver sees zeros in its place, so it cannot fail or stall on it. This replaces
    a pass over the weights themselves: the Grams are smaller, and no host wait is added."""
    stacks = [mats] if isinstance(mats, torch.Tensor) else list(mats)
    first = stacks[0]
    cols = first.shape[-1]
    total = sum(m.shape[0] for m in stacks)
    gram = torch.empty((total, cols, cols), dtype=dtype, device=first.device)
    start = 0
    for m in stacks:
        _gram_into(m.detach(), gram[start : start + m.shape[0]])
        start += m.shape[0]
    finite = torch.isfinite(gram.diagonal(dim1=-2, dim2=-1).sum(dim=-1))
    # On a CPU asking costs nothing and spares a pass over every Gram (5 ms per VGG-11 analysis
    # in slices mode); on a GPU the answer would be a host wait, the pass is cheaper.
    if gram.device.type != "cpu" or not bool(finite.all()):
        gram.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    # The solver may overwrite ``gram``: it is this call's own buffer.
    evals = choose_solver(gram.device, dtype, cols).solve(gram)
    return torch.where(finite[:, None], evals, torch.full_like(evals, math.nan))


def _svd_eigenvalues(mats: torch.Tensor) -> torch.Tensor:
    sv = torch.linalg.svdvals(mats.detach().to("cpu", torch.float64))
    return torch.flip(sv * sv, [-1]).to(mats.device)


def eigenvalues(
    mats: torch.Tensor | Sequence[torch.Tensor], precision: Precision = "float32"
) -> torch.Tensor:
    """Eigenvalues of WᵀW for a stack of same-shape matrices.

    Args:
        mats: (count, rows, cols) with rows >= cols, any float dtype (bf16/fp16 are upcast, a
            chunk at a time); or a sequence of such stacks of one shape, solved together as if
            concatenated.
        precision: compute dtype, ``"float32"`` (fast) or ``"float64"``.

    Returns:
        (count, cols) float64, ascending in each row, >= 0, on ``mats``' device; values under the
        rank tolerance are exact zeros. Units: squared units of the weights. A matrix with a NaN
        or Inf weight (or whose Gram overflows the compute dtype) gets a row of NaN.

    Raises:
        EigenError: the eigensolver failed (e.g. did not converge) and so did the float64 SVD on
            the CPU that it falls back to.
    """
    dtype = _DTYPES[precision]
    stacks = [mats] if isinstance(mats, torch.Tensor) else list(mats)
    try:
        evals = _gram_eigenvalues(stacks, dtype)
    except RuntimeError as first_error:  # torch.linalg.LinAlgError is a RuntimeError
        try:
            evals = torch.cat([_svd_eigenvalues(m) for m in stacks])
        except RuntimeError as second_error:
            raise EigenError(
                f"eigensolver failed ({first_error}); float64 SVD fallback failed ({second_error})"
            ) from second_error
        dtype = torch.float64
    evals = evals.to(torch.float64)
    top = evals[..., -1:].clamp(min=0.0)
    tolerance = top * (stacks[0].shape[-1] * torch.finfo(dtype).eps)
    # Written so that a NaN row (a non-finite Gram) stays NaN.
    return torch.where(evals <= tolerance, torch.zeros_like(evals), evals)


def _solver_runs(stacks: Sequence[torch.Tensor], dtype: torch.dtype) -> list[list[int]]:
    """The layers each batched solver call takes: same device and matrix shape, cut into
    consecutive runs whose Grams take <= ``_GROUP_BYTES`` (``_CPU_GROUP_BYTES`` on a CPU; a
    bigger layer is a run of its own)."""
    shapes: dict[tuple[torch.device, tuple[int, int]], list[int]] = {}
    for k, stack in enumerate(stacks):
        shapes.setdefault((stack.device, (stack.shape[-2], stack.shape[-1])), []).append(k)
    runs: list[list[int]] = []
    for (device, _shape), members in shapes.items():
        budget = _CPU_GROUP_BYTES if device.type == "cpu" else _GROUP_BYTES
        run: list[int] = []
        held = 0
        for k in members:
            need = _gram_bytes(stacks[k], dtype)
            if run and held + need > budget:
                runs.append(run)
                run, held = [], 0
            run.append(k)
            held += need
        runs.append(run)
    return runs


def peak_work_bytes(stacks: Sequence[torch.Tensor], precision: Precision = "float32") -> int:
    """Bytes :func:`batched_eigenvalues` holds at most beyond its inputs, for these stacks: the
    largest solver call's Grams, as much again for the solver's workspace (LAPACK's and
    cuSOLVER's symmetric eigensolvers need O(cols²) per matrix), and its largest upcast chunk."""
    dtype = _DTYPES[precision]
    peak = 0
    for run in _solver_runs(stacks, dtype):
        grams = sum(_gram_bytes(stacks[k], dtype) for k in run)
        peak = max(peak, 2 * grams + max(_upcast_bytes(stacks[k], dtype) for k in run))
    return peak


def batched_eigenvalues(
    stacks: Sequence[torch.Tensor], precision: Precision = "float32"
) -> list[torch.Tensor | EigenError]:
    """Eigenvalues for many layers, one solver call per distinct matrix shape and device.

    Args:
        stacks: one (count_i, rows_i, cols_i) tensor per layer.
        precision: see :func:`eigenvalues`.

    Same-shape layers share one solver call as long as their Grams fit ``_GROUP_BYTES`` (on a
    CPU ``_CPU_GROUP_BYTES``, a cache's worth); a bigger group (32 blocks of an LLM's 4096x11008
    projections: 2 GiB of float32 Grams) is solved in several calls, so the working memory stays
    bounded whatever the model size.

    Returns:
        One (count_i, cols_i) float64 tensor per layer, in input order. A shape group whose solve
        fails is retried layer by layer, so one bad layer cannot take its neighbours down; a layer
        that still fails gets its :class:`EigenError` in its slot instead of a tensor.
    """
    out: list[torch.Tensor | EigenError] = [EigenError("not computed")] * len(stacks)
    for members in _solver_runs(stacks, _DTYPES[precision]):
        try:
            evals = eigenvalues([stacks[k] for k in members], precision)
        except EigenError:
            for k in members:
                try:
                    out[k] = eigenvalues(stacks[k], precision)
                except EigenError as error:
                    out[k] = error
            continue
        counts = [stacks[k].shape[0] for k in members]
        for k, part in zip(members, torch.split(evals, counts), strict=True):
            out[k] = part
    return out


def solver_summary(stacks: Sequence[torch.Tensor], precision: Precision = "float32") -> str:
    """Which solver :func:`batched_eigenvalues` uses for these stacks, e.g. ``"scipy-lapack"``
    or ``"scipy-lapack:2,torch:3"`` (layers per solver, most used first); ``""`` for none."""
    dtype = _DTYPES[precision]
    counts: dict[str, int] = {}
    for stack in stacks:
        name = choose_solver(stack.device, dtype, stack.shape[-1]).name
        counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ",".join(f"{name}:{count}" for name, count in ranked)
