"""AlphaPruning's layer-wise sparsities (Lu et al., NeurIPS 2024): prune the layers whose
spectra are heavy-tailed (small alpha, well trained) less, and the light-tailed ones more.

For the layers' alphas α_i (or their blocks' mean alphas, ``block=True``)::

    ratio_i = s1 + (s2 − s1)(α_i − α_min)/(α_max − α_min),   s1 = 1 − ε, s2 = 1 + ε
    sparsity_i = ratio_i · S · Σ n_j / Σ n_j ratio_j

so that the parameter-weighted mean sparsity Σ n_i sparsity_i / Σ n_i equals the target S
(n_i: the layer's number of weights). Layers without an alpha get ratio 1. A layer's sparsity can
exceed 1 for extreme S and ε; :func:`prune_ratios` raises then instead of returning a fraction no
pruner can apply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spectral_monitor.acting.balance_factors import block_of, linear_factors
from spectral_monitor.analysis.report import SpectralReport

__all__ = ["LayerSparsity", "prune_ratios"]


@dataclass(frozen=True)
class LayerSparsity:
    """One layer's share of the pruning.

    Attributes:
        name: the layer's name in the report.
        num_params: weights in the layer (the product of its shape).
        alpha: the alpha the ratio was computed from (the block mean with ``block=True``), NaN
            when the layer has none.
        reliable: whether the layer's own fit is reliable (informative: every fitted alpha is
            used, as AlphaPruning does).
        sparsity: the fraction of the layer's weights to prune.
    """

    name: str
    num_params: int
    alpha: float
    reliable: bool
    sparsity: float


def prune_ratios(
    report: SpectralReport, sparsity: float, epsilon: float = 0.3, block: bool = False
) -> list[LayerSparsity]:
    """Per-layer sparsities whose parameter-weighted mean is ``sparsity``.

    Args:
        report: an analysis of the model (every layer with a fitted alpha takes part).
        sparsity: the target fraction of weights pruned overall, in (0, 1).
        epsilon: the spread ε of the ratios, in [0, 1).
        block: use each block's mean alpha (:func:`~.balance_factors.block_of`).

    Raises:
        ValueError: ``sparsity`` or ``epsilon`` out of range, or a layer's sparsity would be
            >= 1 (lower ``epsilon`` or ``sparsity``).
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise ValueError(f"sparsity must be a number in (0, 1), got {sparsity!r}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon must be a number in [0, 1), got {epsilon!r}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon!r}")
    fitted = {la.name: float(la.alpha) for la in report.fitted}
    keys = {name: block_of(name) if block else name for name in fitted}
    members: dict[str, list[float]] = {}
    for name, alpha in fitted.items():
        members.setdefault(keys[name], []).append(alpha)
    means = {key: sum(v) / len(v) for key, v in members.items()}
    ratios = linear_factors(means, 1.0 - epsilon, 1.0 + epsilon)
    rows = []
    for la in report.layers:
        key = keys.get(la.name)
        rows.append(
            (
                la.name,
                math.prod(la.shape),
                means[key] if key is not None else math.nan,
                la.reliable,
                ratios[key] if key is not None else 1.0,
            )
        )
    total = sum(n for _, n, _, _, _ in rows)
    weighted = sum(n * r for _, n, _, _, r in rows)
    scaler = sparsity * total / weighted if weighted > 0 else 0.0
    out = [LayerSparsity(name, n, a, ok, r * scaler) for name, n, a, ok, r in rows]
    over = [s for s in out if s.sparsity >= 1.0]
    if over:
        raise ValueError(
            f"sparsity={sparsity} with epsilon={epsilon} asks {over[0].name} to prune "
            f"{over[0].sparsity:.3f} of its weights (>= 1); lower epsilon or sparsity"
        )
    return out
