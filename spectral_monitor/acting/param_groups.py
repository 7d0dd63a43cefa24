"""One optimizer param group per analysed layer, carved out of the user's own groups, with the
user's LR schedulers kept in step.

A per-layer learning rate (or weight decay) needs the layer's parameters in a group of their own.
:func:`split_param_groups` does this once, without replacing anything the user made:

- the user's groups stay where they are, the same dict objects at the same indices, holding the
  parameters that belong to no analysed layer (possibly none);
- each analysed layer's parameters (its weight, its bias, the BatchNorm/LayerNorm that follows
  it in ``named_modules()`` order, as TempBalance does) move to a new group **appended** after
  them, a copy of its parent's options (``lr``, ``momentum``, ``betas``, ``weight_decay``, the
  ``initial_lr``/``max_lr`` entries schedulers put there...), tagged with :data:`LAYERS_KEY` and
  named for Lightning's ``LearningRateMonitor``: ``<layer>`` when the user has one group,
  ``<parent name>/<layer>`` (``pg2/net.0`` for an unnamed second group) when several.

LR schedulers keep per-group lists indexed like ``optimizer.param_groups`` (``base_lrs``,
``_last_lr``, ``LambdaLR.lr_lambdas``, ``CyclicLR.max_lrs``, ``ReduceLROnPlateau.min_lrs``...).
:func:`extend_schedulers` appends the parent's entry for every new group, so each new group
follows exactly the schedule of the group it came from. Appending (rather than inserting) keeps
every existing index valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from spectral_monitor.weights.layers import LayerSpec

__all__ = [
    "LAYERS_KEY",
    "NORM_TYPES",
    "PER_GROUP_SCHEDULER_ATTRIBUTES",
    "extend_schedulers",
    "layer_owners",
    "split_param_groups",
]

#: The param-group key that lists the analysed layers whose parameters the group holds.
LAYERS_KEY = "spectral_layers"

#: Normalisation layers whose parameters follow the analysed layer before them.
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)

#: Scheduler attributes holding one entry per param group (torch.optim.lr_scheduler).
PER_GROUP_SCHEDULER_ATTRIBUTES = (
    "base_lrs",
    "_last_lr",
    "lr_lambdas",
    "max_lrs",
    "min_lrs",
    "base_momentums",
    "max_momentums",
)


def layer_owners(model: nn.Module, specs: Sequence[LayerSpec]) -> dict[int, tuple[str, ...]]:
    """Which analysed layers own each parameter, by parameter id.

    A layer owns the tensors its weight is read from, the direct parameters of its module (the
    bias) and those of the normalisation layers that follow it in ``named_modules()`` order up
    to the next analysed module. A parameter read by several analysed matrices (the q, k and v
    parts of one ``in_proj_weight``) is owned by all of them, in report order.
    """
    owners: dict[int, list[str]] = {}
    names_of_module: dict[int, list[str]] = {}
    for spec in specs:
        for source in spec.sources:
            if isinstance(source, torch.Tensor):
                _claim(owners, source, [spec.name])
        if spec.module is not None:
            names_of_module.setdefault(id(spec.module), []).append(spec.name)
    current: list[str] | None = None
    for module in model.modules():
        if id(module) in names_of_module:
            current = names_of_module[id(module)]
            for parameter in module.parameters(recurse=False):
                _claim(owners, parameter, current)
        elif current is not None and isinstance(module, NORM_TYPES):
            for parameter in module.parameters(recurse=False):
                _claim(owners, parameter, current)
    return {key: tuple(names) for key, names in owners.items()}


def _claim(owners: dict[int, list[str]], tensor: torch.Tensor, names: Iterable[str]) -> None:
    held = owners.setdefault(id(tensor), [])
    held.extend(n for n in names if n not in held)


def split_param_groups(
    optimizer: torch.optim.Optimizer, owners: dict[int, tuple[str, ...]]
) -> list[int]:
    """Move each analysed layer's parameters into a group of its own (see the module docstring).

    Returns:
        For each new group, in order, the index of the group it came from (empty when nothing
        moved, or when the optimizer was already split: then nothing changes).
    """
    groups = optimizer.param_groups
    if any(LAYERS_KEY in group for group in groups):
        return []
    parents: list[int] = []
    several = len(groups) > 1
    for index, group in enumerate(list(groups)):
        moved: dict[tuple[str, ...], list[torch.Tensor]] = {}
        rest: list[torch.Tensor] = []
        for parameter in group["params"]:
            key = owners.get(id(parameter))
            (moved.setdefault(key, []) if key else rest).append(parameter)
        if not moved:
            continue
        group["params"] = rest
        for key, parameters in moved.items():
            # Tensors among the options (a tensor lr) are copied: a shared one would make a
            # factor applied to one group change the others.
            new = {
                k: v.clone() if isinstance(v, torch.Tensor) else v
                for k, v in group.items()
                if k != "params"
            }
            label = ",".join(key)
            new["params"] = parameters
            if "name" in group or several:
                label = f"{group.get('name', f'pg{index + 1}')}/{label}"
            new["name"] = label
            new[LAYERS_KEY] = list(key)
            groups.append(new)
            parents.append(index)
    return parents


def extend_schedulers(schedulers: Iterable[Any], num_groups: int, parents: Sequence[int]) -> None:
    """Give every scheduler one more per-group entry for each new group: its parent's.

    Args:
        schedulers: the LR schedulers of the optimizer (``SequentialLR`` and
            ``ChainedScheduler`` are entered).
        num_groups: the number of param groups before the split.
        parents: :func:`split_param_groups`' result.
    """
    for scheduler in schedulers:
        inner = getattr(scheduler, "_schedulers", None)
        if isinstance(inner, list):
            extend_schedulers(inner, num_groups, parents)
        for attribute in PER_GROUP_SCHEDULER_ATTRIBUTES:
            values = getattr(scheduler, attribute, None)
            if isinstance(values, list) and len(values) == num_groups:
                values.extend(values[p] for p in parents)
