"""AlphaPruning's layer-wise sparsities (Lu et al., NeurIPS 2024): prune the layers whose
spectra are heavy-tailed (small alpha, well trained) less, and the light-tailed ones more.

Only reliable fits decide (as everywhere else in the package: an unreliable alpha enters no
aggregate, verdict, stop rule or balancer). For the reliable layers' alphas α_i (or their blocks'
mean alphas, ``block=True``)::

    ratio_i = s1 + (s2 − s1)(α_i − α_min)/(α_max − α_min),   s1 = 1 − ε, s2 = 1 + ε
    sparsity_i = ratio_i · S · Σ n_j / Σ n_j ratio_j        (sums over the reliable layers)

so that the reliable layers' parameter-weighted mean sparsity is the target S (n_i: the layer's
number of weights). Every other layer — unreliable, skipped, or excluded by the caller — keeps
the uniform sparsity S, so the whole model's parameter-weighted mean is S too.

No layer is asked to prune ``max_sparsity`` or more of its weights: a layer whose share would
reach it is held at ``max_sparsity`` and the weights it cannot take are spread over the other
reliable layers in proportion to their ratios (water-filling), so the target still holds. Only a
target that no allocation under the cap can meet (S > ``max_sparsity``) is an error.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from spectral_monitor.acting.balance_factors import block_of, linear_factors
from spectral_monitor.analysis.report import SpectralReport

__all__ = [
    "DEFAULT_MAX_SPARSITY",
    "InfeasibleTargetError",
    "LayerSparsity",
    "capped_shares",
    "prune_ratios",
]

#: The largest fraction of one layer's weights :func:`prune_ratios` asks to prune.
DEFAULT_MAX_SPARSITY = 0.99


class InfeasibleTargetError(ValueError):
    """The target sparsity cannot be met with no layer pruning more than ``max_sparsity``."""


@dataclass(frozen=True)
class LayerSparsity:
    """One layer's share of the pruning.

    Attributes:
        name: the layer's name in the report.
        num_params: weights in the layer (the product of its shape).
        alpha: the layer's fitted alpha (its block's mean over reliable layers with
            ``block=True``), NaN when it has none.
        reliable: whether the sparsity came from alpha (a reliable fit, not excluded); False:
            the layer keeps the uniform sparsity (the target).
        sparsity: the fraction of the layer's weights to prune, in [0, ``max_sparsity``].
        capped: the layer's AlphaPruning share reached ``max_sparsity`` and was held there (its
            excess went to the other reliable layers).
    """

    name: str
    num_params: int
    alpha: float
    reliable: bool
    sparsity: float
    capped: bool = False


def capped_shares(
    weights: Mapping[str, float], ratios: Mapping[str, float], target: float, cap: float
) -> tuple[dict[str, float], set[str]]:
    """Fractions ``s_i = k · ratio_i`` with ``Σ w_i s_i = target · Σ w_i``, no ``s_i`` above
    ``cap``: the layers that would pass it are held at ``cap`` and ``k`` is solved again for the
    others (water-filling; at most ``len(weights)`` rounds).

    Args:
        weights: ``{name: n_i}``, positive parameter counts.
        ratios: ``{name: ratio_i}``, positive.
        target: the weighted mean to reach, in (0, ``cap``].
        cap: the largest fraction, < 1.

    Returns:
        ``({name: s_i}, names held at the cap)``.
    """
    total = sum(weights.values())
    capped: set[str] = set()
    while True:
        free = [k for k in weights if k not in capped]
        need = target * total - cap * sum(weights[k] for k in capped)
        mass = sum(weights[k] * ratios[k] for k in free)
        scale = need / mass if mass > 0 else 0.0
        over = {k for k in free if scale * ratios[k] > cap}
        if not over:
            shares = {k: cap if k in capped else scale * ratios[k] for k in weights}
            return shares, capped
        capped |= over


def prune_ratios(
    report: SpectralReport,
    sparsity: float,
    epsilon: float = 0.3,
    block: bool = False,
    exclude: Sequence[str] = (),
    max_sparsity: float = DEFAULT_MAX_SPARSITY,
) -> list[LayerSparsity]:
    """Per-layer sparsities whose parameter-weighted mean is ``sparsity``.

    Args:
        report: an analysis of the model; its reliable layers get AlphaPruning's ratios, every
            other layer the uniform sparsity.
        sparsity: the target fraction of weights pruned overall, in (0, 1).
        epsilon: the spread ε of the ratios, in [0, 1).
        block: use each block's mean alpha (:func:`~.balance_factors.block_of`; the mean over
            the block's reliable layers).
        exclude: glob patterns of layer names that keep the uniform sparsity.
        max_sparsity: no layer prunes more than this fraction, in (0, 1).

    Returns:
        One :class:`LayerSparsity` per layer of the report, in report order.

    Raises:
        ValueError: an argument out of range (naming it).
        InfeasibleTargetError: a target above ``max_sparsity``, which no allocation can meet.
    """
    for argument, value, low, high, closed in (
        ("sparsity", sparsity, 0.0, 1.0, False),
        ("epsilon", epsilon, 0.0, 1.0, True),
        ("max_sparsity", max_sparsity, 0.0, 1.0, False),
    ):
        interval = f"[{low:g}, {high:g})" if closed else f"({low:g}, {high:g})"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{argument} must be a number in {interval}, got {value!r}")
        if not (low <= value < high if closed else low < value < high):
            raise ValueError(f"{argument} must be in {interval}, got {value!r}")
    if sparsity > max_sparsity:
        raise InfeasibleTargetError(
            f"sparsity={sparsity} cannot be met with no layer pruning more than "
            f"max_sparsity={max_sparsity}"
        )
    decided = {
        la.name: float(la.alpha)
        for la in report.reliable
        if not any(fnmatch.fnmatchcase(la.name, p) for p in exclude)
    }
    keys = {name: block_of(name) if block else name for name in decided}
    members: dict[str, list[float]] = {}
    for name, alpha in decided.items():
        members.setdefault(keys[name], []).append(alpha)
    means = {key: sum(v) / len(v) for key, v in members.items()}
    by_key = linear_factors(means, 1.0 - epsilon, 1.0 + epsilon)
    sizes = {la.name: math.prod(la.shape) for la in report.layers}
    shares, capped = capped_shares(
        {name: sizes[name] for name in decided},
        {name: by_key[keys[name]] for name in decided},
        sparsity,
        max_sparsity,
    )
    return [
        LayerSparsity(
            la.name,
            sizes[la.name],
            means[keys[la.name]] if la.name in decided else float(la.alpha),
            la.name in decided,
            shares.get(la.name, sparsity),
            la.name in capped,
        )
        for la in report.layers
    ]
