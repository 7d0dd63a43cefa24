"""``AnalysisConfig``: what an analysis looks at and in which convention, validated once.

Shared by the snapshot (which layers to copy, where) and the pure analysis (how to turn the copies
into spectra and fits), and by every entry point: :func:`~spectral_monitor.analyze`, the tracker,
the callback and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from spectral_monitor.eigen import PRECISIONS, Precision
from spectral_monitor.layers import (
    CONV2D_MODES,
    Conv2dMode,
    LayerFilter,
    LayerFilterItem,
    normalize_filter,
)

__all__ = ["DEFAULT_MIN_EVALS", "AnalysisConfig"]

#: Layers with fewer eigenvalues than this are skipped: a tail fit on a handful of points is noise.
DEFAULT_MIN_EVALS = 10


@dataclass(frozen=True)
class AnalysisConfig:
    """What to analyse and in which convention; validated on construction.

    Attributes:
        layers: name globs / module types to keep (None: every Linear and Conv2d).
        exclude: name globs / module types to drop.
        conv2d: ``"flatten"`` (one (out, in·kh·kw) matrix) or ``"slices"`` (WeightWatcher's
            kh·kw slices, eigenvalues pooled and halved).
        normalize: divide eigenvalues by the weight's number of rows (the seed's convention);
            False keeps σ² (WeightWatcher's).
        min_evals: layers with fewer eigenvalues are skipped.
        precision: eigensolver precision, ``"float32"`` or ``"float64"``.
        device: where to compute; None uses each weight's own device.
    """

    layers: tuple[LayerFilterItem, ...] | None = None
    exclude: tuple[LayerFilterItem, ...] | None = None
    conv2d: Conv2dMode = "flatten"
    normalize: bool = True
    min_evals: int = DEFAULT_MIN_EVALS
    precision: Precision = "float32"
    device: torch.device | None = None

    @classmethod
    def create(
        cls,
        layers: LayerFilter = None,
        exclude: LayerFilter = None,
        conv2d: str = "flatten",
        normalize: bool = True,
        min_evals: int = DEFAULT_MIN_EVALS,
        precision: str = "float32",
        device: torch.device | str | None = None,
    ) -> AnalysisConfig:
        """Validate user arguments and build a config.

        Raises:
            ValueError: an argument has the wrong type or value; the message names it.
        """
        if conv2d not in CONV2D_MODES:
            raise ValueError(f"conv2d must be one of {CONV2D_MODES}, got {conv2d!r}")
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 2:
            raise ValueError(f"min_evals must be an int >= 2, got {min_evals!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"device must be a torch device, got {device!r}") from error
        return cls(
            layers=normalize_filter(layers, "layers"),
            exclude=normalize_filter(exclude, "exclude"),
            conv2d=conv2d,  # type: ignore[arg-type]
            normalize=normalize,
            min_evals=min_evals,
            precision=precision,  # type: ignore[arg-type]
            device=device,
        )
