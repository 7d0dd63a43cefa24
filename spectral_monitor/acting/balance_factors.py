"""Per-layer factors from alpha: the maps that TempBalance, Model Balancing, AlphaDecay and LLR
use to turn a layer's power-law exponent into a multiplier of its learning rate or weight decay.

Pure functions on ``{layer name: alpha}``. The callback that applies them is
:class:`spectral_monitor.acting.balancer.SpectralBalancer`.

- ``linear`` (TempBalance, AlphaDecay, LLR):
  ``f_i = low + (high − low)(α_i − α_min)/(α_max − α_min)`` over the balanced alphas; all-equal
  alphas give 1.
- ``sigmoid`` (Model Balancing):
  ``f_i = 10^(scale · (sigmoid(temperature · (α_i − mean α)) − 0.5))``.

Both grow with alpha: a layer whose spectrum is lighter-tailed (larger alpha, "less trained")
gets the larger learning rate, or the larger weight decay.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence

from spectral_monitor.analysis.report import SpectralReport
from spectral_monitor.utilities.validation import check_choice

__all__ = [
    "GROUPS",
    "MAPPINGS",
    "balanced_alphas",
    "block_of",
    "layer_factors",
    "linear_factors",
    "sigmoid_factors",
]

MAPPINGS = ("linear", "sigmoid")
GROUPS = ("layer", "block")


def linear_factors(alphas: Mapping[str, float], low: float, high: float) -> dict[str, float]:
    """TempBalance's linear map of alphas onto [low, high].

    Args:
        alphas: ``{name: alpha}`` of the balanced layers (or blocks), finite values.
        low, high: the factors of the smallest and the largest alpha.

    Returns:
        ``{name: factor}``; every factor is 1 when there are fewer than two alphas or all are
        equal (no spread to map).
    """
    if not alphas:
        return {}
    lo, hi = min(alphas.values()), max(alphas.values())
    if hi == lo:
        return dict.fromkeys(alphas, 1.0)
    return {k: low + (high - low) * (a - lo) / (hi - lo) for k, a in alphas.items()}


def sigmoid_factors(
    alphas: Mapping[str, float], scale: float, temperature: float
) -> dict[str, float]:
    """Model Balancing's map: ``10^(scale · (sigmoid(temperature · (α − mean α)) − 0.5))``, a
    factor in [10^(−scale/2), 10^(scale/2)] centred on 1 at the mean alpha."""
    if not alphas:
        return {}
    mean = sum(alphas.values()) / len(alphas)
    out = {}
    for k, a in alphas.items():
        z = temperature * (a - mean)
        sig = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        out[k] = 10.0 ** (scale * (sig - 0.5))
    return out


def block_of(name: str) -> str:
    """The block a layer belongs to: its name up to the first index of a module list that has
    more components after it (``model.layers.3.self_attn.q_proj`` → ``model.layers.3``,
    ``blocks.0.fc1`` → ``blocks.0``); without one, its parent module (``net.0`` → ``net``,
    ``fc`` → ``""``)."""
    parts = name.split(".")
    for k, part in enumerate(parts[:-1]):
        if part.isdigit() and k > 0:
            return ".".join(parts[: k + 1])
    return ".".join(parts[:-1])


def balanced_alphas(
    report: SpectralReport,
    exclude: Sequence[str] = (),
    skip_first_last: bool = False,
) -> dict[str, float]:
    """The alphas a balancer maps: the report's reliable layers, without the first and last
    analysed layers when ``skip_first_last`` and without names matching an ``exclude`` glob."""
    names = [la.name for la in report.layers]
    ends = {names[0], names[-1]} if skip_first_last and names else set()
    return {
        la.name: float(la.alpha)
        for la in report.reliable
        if la.name not in ends and not any(fnmatch.fnmatchcase(la.name, p) for p in exclude)
    }


def layer_factors(
    report: SpectralReport,
    mapping: str = "linear",
    low: float = 0.5,
    high: float = 1.5,
    scale: float = 0.25,
    temperature: float = 10.0,
    group: str = "layer",
    exclude: Sequence[str] = (),
    skip_first_last: bool = False,
) -> dict[str, float]:
    """The factor of every layer of ``report``.

    Layers left out of :func:`balanced_alphas` (unreliable, skipped, excluded, first/last) get
    1. With ``group="block"`` the map runs over the blocks' mean alphas (:func:`block_of`; the
    mean over the block's balanced layers) and each balanced layer takes its block's factor.

    Returns:
        ``{layer name: factor}`` for every layer in the report, in report order.
    """
    check_choice("mapping", mapping, MAPPINGS)
    check_choice("group", group, GROUPS)
    alphas = balanced_alphas(report, exclude, skip_first_last)
    keys = {name: (block_of(name) if group == "block" else name) for name in alphas}
    members: dict[str, list[float]] = {}
    for name, alpha in alphas.items():
        members.setdefault(keys[name], []).append(alpha)
    means = {key: sum(values) / len(values) for key, values in members.items()}
    if mapping == "linear":
        by_key = linear_factors(means, low, high)
    else:
        by_key = sigmoid_factors(means, scale, temperature)
    return {la.name: by_key[keys[la.name]] if la.name in keys else 1.0 for la in report.layers}
