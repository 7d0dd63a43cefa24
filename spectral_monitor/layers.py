"""Which modules are analysed, and how a weight tensor becomes the matrices whose spectra we fit.

Linear and Conv2d modules (subclasses included) are analysed. A Linear weight (out, in) is one
matrix. A Conv2d weight (out, in, kh, kw) is either flattened to one (out, in·kh·kw) matrix
(``conv2d="flatten"``, the seed's convention) or cut into kh·kw slices ``W[:, :, i, j]`` whose
eigenvalues are pooled into one spectrum (``conv2d="slices"``, WeightWatcher's convention).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import nn

__all__ = [
    "CONV2D_MODES",
    "LayerFilter",
    "layer_kind",
    "matrix_shape",
    "normalize_filter",
    "select_layers",
    "select_weights",
    "weight_matrices",
]

CONV2D_MODES = ("flatten", "slices")
Conv2dMode = Literal["flatten", "slices"]

#: A filter entry: a glob pattern on the module name (``"features.*"``), or a module type.
LayerFilterItem = Union[str, type]  # noqa: UP007 - a runtime alias must work on Python 3.10
LayerFilter = Union[LayerFilterItem, Sequence[LayerFilterItem], None]  # noqa: UP007


def normalize_filter(value: LayerFilter, argument: str) -> tuple[LayerFilterItem, ...] | None:
    """Check a ``layers``/``exclude`` argument and return it as a tuple (or None).

    Raises:
        ValueError: an entry is neither a string nor an ``nn.Module`` subclass.
    """
    if value is None:
        return None
    items: Sequence[LayerFilterItem] = (value,) if isinstance(value, (str, type)) else tuple(value)
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, type) and issubclass(item, nn.Module):
            continue
        raise ValueError(
            f"{argument} must hold name patterns (str) or nn.Module types, got {item!r}"
        )
    return tuple(items)


def _matches(name: str, module: nn.Module | str, items: tuple[LayerFilterItem, ...]) -> bool:
    """Whether a layer matches a filter; ``module`` may be a kind (``"linear"``/``"conv2d"``)
    when only weights are known, and then matches the types ``nn.Linear``/``nn.Conv2d``."""
    for item in items:
        if isinstance(item, str):
            if fnmatch.fnmatchcase(name, item):
                return True
        elif isinstance(module, str):
            if any(module == kind and issubclass(base, item) for base, kind in _KINDS):
                return True
        elif isinstance(module, item):
            return True
    return False


_KINDS = ((nn.Linear, "linear"), (nn.Conv2d, "conv2d"))


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"`` or ``"conv2d"`` for an analysable module, else None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Conv2d):
        return "conv2d"
    return None


# Attribute names under which torch.compile, FSDP (1) and activation checkpointing hold the
# module they wrap; they are not part of the user's layer names.
_WRAPPER_NAMES = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def select_layers(
    model: nn.Module,
    layers: tuple[LayerFilterItem, ...] | None = None,
    exclude: tuple[LayerFilterItem, ...] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The analysable layers of ``model`` in ``named_modules()`` order.

    Args:
        model: any module.
        layers: keep only modules whose name matches one of these glob patterns or whose type is
            one of these types; None keeps every Linear/Conv2d.
        exclude: drop modules matching any of these patterns or types (applied after ``layers``).

    Returns:
        ``(name, module)`` pairs; the root module, if it is itself a layer, is named ``"root"``;
        the wrappers of ``torch.compile``, FSDP and activation checkpointing do not appear in
        names (see ``_WRAPPER_NAMES``), so a layer keeps the name the user gave it.
    """
    selected = []
    for name, module in model.named_modules():
        if layer_kind(module) is None:
            continue
        name = ".".join(part for part in name.split(".") if part not in _WRAPPER_NAMES) or "root"
        if layers is not None and not _matches(name, module, layers):
            continue
        if exclude is not None and _matches(name, module, exclude):
            continue
        selected.append((name, module))
    return selected


def select_weights(
    state_dict: Mapping[str, Any],
    layers: tuple[LayerFilterItem, ...] | None = None,
    exclude: tuple[LayerFilterItem, ...] | None = None,
) -> list[tuple[str, str, torch.Tensor]]:
    """The analysable weights of a state dict, when no model class is at hand.

    Every floating-point tensor under a key ``weight`` or ``*.weight`` with 2 dimensions is taken
    as a Linear weight (out, in) — an Embedding's weight looks the same and is analysed as a
    matrix too — and with 4 dimensions as a Conv2d weight (out, in, kh, kw).

    Returns:
        ``(name, kind, tensor)`` with the name being the key without ``.weight``.
    """
    selected = []
    for key, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        if key != "weight" and not key.endswith(".weight"):
            continue
        kind = {2: "linear", 4: "conv2d"}.get(tensor.dim())
        if kind is None:
            continue
        name = key[: -len(".weight")] if key != "weight" else "root"
        if layers is not None and not _matches(name, kind, layers):
            continue
        if exclude is not None and _matches(name, kind, exclude):
            continue
        selected.append((name, kind, tensor))
    return selected


def matrix_shape(weight_shape: Sequence[int], conv2d: Conv2dMode) -> tuple[int, int, int]:
    """``(count, rows, cols)`` of the matrices :func:`weight_matrices` makes, rows >= cols."""
    if len(weight_shape) == 2:
        count, a, b = 1, weight_shape[0], weight_shape[1]
    elif len(weight_shape) == 4:
        out, inp, kh, kw = weight_shape
        if conv2d == "flatten":
            count, a, b = 1, out, inp * kh * kw
        else:
            count, a, b = kh * kw, out, inp
    else:
        raise ValueError(f"expected a 2-D or 4-D weight, got shape {tuple(weight_shape)}")
    return count, max(a, b), min(a, b)


def weight_matrices(weight: torch.Tensor, conv2d: Conv2dMode = "flatten") -> torch.Tensor:
    """The matrices of one layer's weight, stacked and oriented tall.

    Args:
        weight: (out, in) for Linear or (out, in, kh, kw) for Conv2d.
        conv2d: ``"flatten"`` gives one (out, in·kh·kw) matrix; ``"slices"`` gives the kh·kw
            matrices ``W[:, :, i, j]``.

    Returns:
        (count, rows, cols) with rows >= cols (transposed where needed: the nonzero eigenvalues
        of WᵀW and WWᵀ are the same), sharing storage with ``weight`` where possible.
    """
    if weight.dim() == 2:
        mats = weight.unsqueeze(0)
    elif weight.dim() == 4:
        if conv2d == "flatten":
            mats = weight.reshape(weight.shape[0], -1).unsqueeze(0)
        else:
            mats = weight.permute(2, 3, 0, 1).reshape(-1, weight.shape[0], weight.shape[1])
    else:
        raise ValueError(f"expected a 2-D or 4-D weight, got shape {tuple(weight.shape)}")
    if mats.shape[1] < mats.shape[2]:
        mats = mats.transpose(1, 2)
    return mats
