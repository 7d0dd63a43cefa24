"""Module types: which layers of a model play the same role (``q_proj`` in every block), so that
one mean per role can be followed instead of one mean that hides what the roles do.

A layer's type is the last component of its name (``model.layers.3.self_attn.q_proj`` →
``q_proj``), extended to the left while it is too short to name a role on its own: a number
(``mlp.0`` of an ``nn.Sequential``) or a single letter (``in_proj.q``, one slice of a fused
projection). Only types shared by at least two layers are kept: a type held by one layer is that
layer's own curve already.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MIN_LAYERS_PER_TYPE", "alpha_by_type", "module_type"]

#: A type must be shared by this many layers to get its own mean.
MIN_LAYERS_PER_TYPE = 2


def module_type(name: str) -> str:
    """The role of the layer called ``name`` (dot-separated module path), e.g. ``"q_proj"``,
    ``"in_proj.q"``, ``"mlp.0"``; the whole name when no shorter suffix names a role."""
    parts = name.split(".")
    start = len(parts) - 1
    while start > 0 and (parts[start].isdigit() or len(parts[start]) < 2):
        start -= 1
    return ".".join(parts[start:])


def alpha_by_type(names: Sequence[str], alphas: Sequence[float]) -> dict[str, float]:
    """Mean alpha per module type.

    Args:
        names: every analysed layer's name, one per alpha.
        alphas: alpha per layer, NaN for a layer without a trustworthy fit (skipped or
            unreliable): it counts towards its type being shared but not towards the mean.

    Returns:
        ``{type: mean alpha}`` for every type held by at least :data:`MIN_LAYERS_PER_TYPE` of
        ``names`` and with at least one finite alpha, in order of first appearance.
    """
    if len(names) != len(alphas):
        raise ValueError(f"names and alphas differ in length: {len(names)} != {len(alphas)}")
    groups: dict[str, list[float]] = {}
    for name, alpha in zip(names, alphas, strict=True):
        groups.setdefault(module_type(name), []).append(float(alpha))
    means = {}
    for kind, values in groups.items():
        finite = [v for v in values if math.isfinite(v)]
        if len(values) >= MIN_LAYERS_PER_TYPE and finite:
            means[kind] = sum(finite) / len(finite)
    return means
