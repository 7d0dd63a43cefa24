"""Eigenvalues λ = σ² of weight matrices, batched by shape, on the matrices' own device.

The method is the Gram matrix's ``eigvalsh``: for a tall (rows, cols) matrix W, the eigenvalues
of the small cols×cols matrix WᵀW are the squared singular values of W. Measured on the 2-core
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

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["PRECISIONS", "EigenError", "batched_eigenvalues", "eigenvalues"]

PRECISIONS = ("float32", "float64")
Precision = Literal["float32", "float64"]
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class EigenError(RuntimeError):
    """Raised when neither the eigensolver nor the float64 SVD fallback produced eigenvalues."""


def _gram_eigenvalues(mats: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """eigvalsh of the Gram matrices of one stack, or of several same-shape stacks whose Grams
    are written into one buffer (only the small cols×cols matrices are copied, never the
    weights), so that one batched solver call serves them all."""
    if isinstance(mats, torch.Tensor):
        return torch.linalg.eigvalsh(mats.mT @ mats)
    first = mats[0]
    cols = first.shape[-1]
    total = sum(m.shape[0] for m in mats)
    gram = torch.empty((total, cols, cols), dtype=first.dtype, device=first.device)
    start = 0
    for m in mats:
        torch.matmul(m.mT, m, out=gram[start : start + m.shape[0]])
        start += m.shape[0]
    return torch.linalg.eigvalsh(gram)


def _svd_eigenvalues(mats: torch.Tensor) -> torch.Tensor:
    sv = torch.linalg.svdvals(mats.detach().to("cpu", torch.float64))
    return torch.flip(sv * sv, [-1]).to(mats.device)


def eigenvalues(
    mats: torch.Tensor | Sequence[torch.Tensor], precision: Precision = "float32"
) -> torch.Tensor:
    """Eigenvalues of WᵀW for a stack of same-shape matrices.

    Args:
        mats: (count, rows, cols) with rows >= cols, any float dtype (bf16/fp16 are upcast); or
            a sequence of such stacks of one shape, solved together as if concatenated.
        precision: compute dtype, ``"float32"`` (fast) or ``"float64"``.

    Returns:
        (count, cols) float64, ascending in each row, >= 0, on ``mats``' device; values under the
        rank tolerance are exact zeros. Units: squared units of the weights.

    Raises:
        EigenError: the eigensolver failed (e.g. did not converge) and so did the float64 SVD on
            the CPU that it falls back to.
    """
    dtype = _DTYPES[precision]
    stacks = [mats] if isinstance(mats, torch.Tensor) else list(mats)
    work_list = [m.detach().to(dtype) for m in stacks]
    work: torch.Tensor | list[torch.Tensor] = work_list[0] if len(work_list) == 1 else work_list
    try:
        evals = _gram_eigenvalues(work)
    except RuntimeError as first_error:  # torch.linalg.LinAlgError is a RuntimeError
        try:
            evals = torch.cat([_svd_eigenvalues(m) for m in work_list])
        except RuntimeError as second_error:
            raise EigenError(
                f"eigensolver failed ({first_error}); float64 SVD fallback failed ({second_error})"
            ) from second_error
        dtype = torch.float64
    evals = evals.to(torch.float64)
    top = evals[..., -1:].clamp(min=0.0)
    tolerance = top * (stacks[0].shape[-1] * torch.finfo(dtype).eps)
    return torch.where(evals > tolerance, evals, torch.zeros_like(evals))


def batched_eigenvalues(
    stacks: Sequence[torch.Tensor], precision: Precision = "float32"
) -> list[torch.Tensor | EigenError]:
    """Eigenvalues for many layers, one solver call per distinct matrix shape and device.

    Args:
        stacks: one (count_i, rows_i, cols_i) tensor per layer.
        precision: see :func:`eigenvalues`.

    Returns:
        One (count_i, cols_i) float64 tensor per layer, in input order. A shape group whose solve
        fails is retried layer by layer, so one bad layer cannot take its neighbours down; a layer
        that still fails gets its :class:`EigenError` in its slot instead of a tensor.
    """
    groups: dict[tuple[torch.device, tuple[int, int]], list[int]] = {}
    for k, stack in enumerate(stacks):
        groups.setdefault((stack.device, tuple(stack.shape[1:])), []).append(k)
    out: list[torch.Tensor | EigenError] = [EigenError("not computed")] * len(stacks)
    for members in groups.values():
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
