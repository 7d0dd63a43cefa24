"""``AnalysisConfig``: what an analysis looks at and in which convention, validated once.

Shared by the snapshot (which layers to copy, where) and the pure analysis (how to turn the copies
into spectra and fits), and by every entry point: :func:`~spectral_monitor.analyze`, the tracker,
the callback and the CLI.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from spectral_monitor.spectra.eigen import PRECISIONS, Precision
from spectral_monitor.spectra.powerlaw_fit import FitOptions
from spectral_monitor.utilities.validation import check_choice, check_int, check_number
from spectral_monitor.weights.layers import (
    CONV_MODES,
    LORA_MODES,
    ConvMode,
    LayerFilter,
    LayerFilterItem,
    LoraMode,
    normalize_filter,
    normalize_kinds,
)

__all__ = [
    "DEFAULT_MAX_RELATIVE_WIDTH",
    "DEFAULT_MIN_EVALS",
    "DEFAULT_MIN_TAIL",
    "AnalysisConfig",
]

#: Fits on fewer positive eigenvalues than this are unreliable (TempBalance's and WeightWatcher's
#: threshold): a tail fit on a handful of points is noise. Such layers are still fitted and their
#: alpha reported, but they get no verdict and enter no aggregate.
DEFAULT_MIN_EVALS = 50
#: Fits with fewer tail values are unreliable (see :mod:`spectral_monitor.spectra.reliability`).
DEFAULT_MIN_TAIL = 30
#: Fits whose interval is wider than this times (alpha - 1) are unreliable.
DEFAULT_MAX_RELATIVE_WIDTH = 1.0


@dataclass(frozen=True)
class AnalysisConfig:
    """What to analyse and in which convention; validated on construction.

    Attributes:
        layers: name globs / module types to keep (None: every layer of ``kinds``).
        exclude: name globs / module types to drop.
        conv: every convolution as ``"flatten"`` (one (out, in·prod(k)) matrix) or ``"slices"``
            (WeightWatcher's prod(k) slices, eigenvalues pooled; halved for Conv2d).
        normalize: divide eigenvalues by the weight's number of rows (the seed's convention);
            False keeps σ² (WeightWatcher's).
        min_evals: fits on fewer positive eigenvalues are marked unreliable (not skipped).
        min_tail: fits with fewer tail values are marked unreliable.
        max_relative_width: fits whose interval is wider than this × (alpha − 1) are marked
            unreliable; None: no width rule.
        precision: eigensolver precision, ``"float32"`` or ``"float64"``.
        device: where to compute; None uses each weight's own device.
        fit: estimator, fingers and confidence interval of the power-law fit.
        kinds: the layer kinds analysed (:data:`spectral_monitor.weights.layers.KINDS`); None: every
            kind but ``"embedding"``.
        lora: a peft LoRA layer as its ``"effective"`` weight W + scale·B·A, its ``"adapter"``
            scale·B·A, or its frozen ``"base"`` W.
        traps: count correlation traps (eigenvalues of the element-wise shuffled weight above
            its Marchenko–Pastur edge): one more eigensolve per layer.
        trap_seed: seed of the shuffles; each layer's is derived from it and the layer's name.
    """

    layers: tuple[LayerFilterItem, ...] | None = None
    exclude: tuple[LayerFilterItem, ...] | None = None
    conv: ConvMode = "flatten"
    normalize: bool = True
    min_evals: int = DEFAULT_MIN_EVALS
    min_tail: int = DEFAULT_MIN_TAIL
    max_relative_width: float | None = DEFAULT_MAX_RELATIVE_WIDTH
    precision: Precision = "float32"
    device: torch.device | None = None
    fit: FitOptions = field(default_factory=FitOptions)
    kinds: tuple[str, ...] | None = None
    lora: LoraMode = "effective"
    traps: bool = False
    trap_seed: int = 0

    @property
    def conv2d(self) -> ConvMode:
        """The convolution mode under its old name (it applies to every convolution)."""
        return self.conv

    @classmethod
    def create(
        cls,
        layers: LayerFilter = None,
        exclude: LayerFilter = None,
        conv2d: str | None = None,
        normalize: bool = True,
        min_evals: int = DEFAULT_MIN_EVALS,
        precision: str = "float32",
        device: torch.device | str | None = None,
        *,
        conv: str = "flatten",
        kinds: str | Sequence[str] | None = None,
        lora: str = "effective",
        min_tail: int = DEFAULT_MIN_TAIL,
        max_relative_width: float | None = DEFAULT_MAX_RELATIVE_WIDTH,
        estimator: str = "ks",
        interval: str = "analytic",
        confidence: float = 0.9,
        n_boot: int = 100,
        fingers: str | None = None,
        xmin_position: float = 2.0,
        traps: bool = False,
        trap_seed: int = 0,
    ) -> AnalysisConfig:
        """Validate user arguments and build a config (the fit's options: see
        :func:`spectral_monitor.spectra.powerlaw_fit.fit_power_law`). ``conv2d`` is ``conv``'s
        deprecated name (a FutureWarning; it wins over ``conv``'s default).

        Raises:
            ValueError: an argument has the wrong type or value; the message names it.
        """
        conv = _conv_mode(conv2d, conv)
        check_choice("lora", lora, LORA_MODES)
        if not isinstance(normalize, bool):
            raise ValueError(f"normalize must be a bool, got {normalize!r}")
        check_int("min_evals", min_evals, 2)
        check_int("min_tail", min_tail, 1)
        if max_relative_width is not None:
            max_relative_width = check_number("max_relative_width", max_relative_width, above=0.0)
        check_choice("precision", precision, PRECISIONS)
        if not isinstance(traps, bool):
            raise ValueError(f"traps must be a bool, got {traps!r}")
        check_int("trap_seed", trap_seed, 0)
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(f"device must be a torch device, got {device!r}") from error
        return cls(
            layers=normalize_filter(layers, "layers"),
            exclude=normalize_filter(exclude, "exclude"),
            conv=conv,  # type: ignore[arg-type]
            normalize=normalize,
            min_evals=min_evals,
            min_tail=min_tail,
            max_relative_width=max_relative_width,
            precision=precision,  # type: ignore[arg-type]
            device=device,
            kinds=normalize_kinds(kinds),
            lora=lora,  # type: ignore[arg-type]
            traps=traps,
            trap_seed=trap_seed,
            fit=FitOptions.create(
                estimator=estimator,
                xmin_position=xmin_position,
                fingers=fingers,
                interval=interval,
                confidence=confidence,
                n_boot=n_boot,
            ),
        )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> AnalysisConfig:
        """:meth:`create` from the entries of ``options`` that name its arguments (the others
        are ignored): one place maps an entry point's arguments (``analyze``, the tracker's
        options) onto the config."""
        names = inspect.signature(cls.create).parameters
        return cls.create(**{key: value for key, value in options.items() if key in names})


def _conv_mode(conv2d: str | None, conv: str) -> str:
    """The convolution mode from ``conv`` and its deprecated name ``conv2d``."""
    if conv not in CONV_MODES:
        raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
    if conv2d is None:
        return conv
    if conv2d not in CONV_MODES:
        raise ValueError(f"conv2d must be one of {CONV_MODES}, got {conv2d!r}")
    if conv != "flatten" and conv2d != conv:
        raise ValueError(f"conv2d={conv2d!r} contradicts conv={conv!r}; give conv only")
    warnings.warn(
        "conv2d= is deprecated: it is now conv= and applies to every convolution",
        FutureWarning,
        stacklevel=4,
    )
    return conv2d
