"""The options of a spectral monitor, defined once.

:class:`~spectral_monitor.SpectralTracker` (plain loops) and
:class:`~spectral_monitor.SpectralMonitor` (Lightning) take the same keyword arguments. They are
written here once, as the signature and docstring of :func:`monitor_options`; :func:`with_options`
gives a class's ``__init__(self, *args, **kwargs)`` that signature, so ``inspect.signature``, help()
and LightningCLI (jsonargparse reads ``__signature__`` and the ``Args:`` of the class docstring)
see plain, typed arguments, and puts the ``Args:`` text into the class docstring.
"""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from typing import Any, TypeVar

from spectral_monitor.analysis.config import (
    DEFAULT_MAX_RELATIVE_WIDTH,
    DEFAULT_MIN_EVALS,
    DEFAULT_MIN_TAIL,
)
from spectral_monitor.weights.layers import LayerFilter

__all__ = ["OPTIONS", "OPTIONS_DOC", "bind_options", "monitor_options", "with_options"]


def monitor_options(
    every_n_steps: int = 100,
    *,
    layers: LayerFilter = None,
    exclude: LayerFilter = None,
    conv2d: str | None = None,
    normalize: bool = True,
    min_evals: int = DEFAULT_MIN_EVALS,
    min_tail: int = DEFAULT_MIN_TAIL,
    max_relative_width: float | None = DEFAULT_MAX_RELATIVE_WIDTH,
    precision: str = "float32",
    device: Any = None,
    estimator: str = "ks",
    interval: str = "analytic",
    confidence: float = 0.9,
    n_boot: int = 100,
    fingers: str | None = None,
    xmin_position: float = 2.0,
    log_histograms: bool = True,
    histogram_every: int = 1,
    log_figures_every: int | None = None,
    stop_on: str | None = None,
    stop_below: float | None = None,
    stop_patience: int | None = None,
    start_step: int = 500,
    stop_bound: str | None = None,
    stop_margin: float | None = None,
    mode: str = "auto",
    max_snapshot_bytes: int | None = None,
    prefix: str = "spectral",
    conv: str = "flatten",
    kinds: str | list[str] | None = None,
    lora: str = "effective",
    traps: bool = False,
    trap_seed: int = 0,
) -> dict[str, Any]:
    """The options as a dict (validation is the tracker's, at construction).

    Args:
        every_n_steps: analyse every this many steps: Lightning's logging step (batches that
            stepped the optimizer, the loss's step axis; ``trainer.global_step`` with one
            optimizer); in a plain loop, the step passed to ``tracker.step``. Resuming with a
            different value keeps the history and continues at the multiples of the new one.
        layers: keep only layers whose name matches one of these glob patterns, or of these types.
        exclude: drop layers matching these patterns or types.
        conv2d: deprecated name of ``conv`` (a FutureWarning).
        normalize: divide eigenvalues by the weight's number of rows (False: WeightWatcher's σ²).
        min_evals: fits on fewer positive eigenvalues (default 50) are unreliable: alpha is
            logged, but the layer gets no verdict and enters no aggregate (README "What reliable
            means").
        min_tail: fits whose tail has fewer values (default 30) are unreliable.
        max_relative_width: fits whose interval is wider than this times (alpha - 1) are
            unreliable (default 1.0; None: no width rule).
        precision: eigensolver precision, ``"float32"`` or ``"float64"``.
        device: where to analyse (default: the weights' device).
        estimator: ``"ks"`` (default, Clauset–Shalizi–Newman), ``"hill_median"`` (TempBalance's)
            or ``"ks_peak"`` (WeightWatcher's ``xmin_peak``); see ``fit_power_law``.
        interval: ``"analytic"`` (default) or ``"bootstrap"``: how ``alpha_lo``/``alpha_hi``
            are computed.
        confidence: level of the interval (default 0.9).
        n_boot: resamples of ``interval="bootstrap"`` (default 100).
        fingers: ``"clip"`` drops top outliers before the fit (WeightWatcher's ``clip_xmax``).
        xmin_position: ``estimator="hill_median"`` puts xmin at index ``int(N / xmin_position)``.
        log_histograms: log per-layer histograms of log10 λ to TensorBoard.
        histogram_every: log histograms, the verdict table and the alpha heatmap every this many
            analyses.
        log_figures_every: log an ESD figure with the fitted power law per layer every this many
            analyses, and for the last one; None (default) never.
        stop_on: the stop rule; None (the default) never stops. ``"overfit"``: the over-fitting
            detector ``benchmarks/stop_study_v2.py`` chose on one set of runs and measured on
            another (docs "Stopping": what it catches and misses); ``"alpha_mean_drop"``:
            alpha_mean below its minimum before ``start_step`` minus ``stop_margin``;
            ``"alpha_mean"``, ``"alpha_min"`` (over reliable layers) or ``"layer"`` (one and the
            same reliable layer) below ``stop_below``. ``"alpha_hat"`` is refused: it depends on
            the eigenvalue scale, not on the spectrum's shape. Rules read reliable layers only.
        stop_below: the threshold of ``"alpha_mean"``, ``"alpha_min"`` and ``"layer"`` (> 1;
            required there). With any other rule, or none, it is a ValueError naming both.
        stop_patience: consecutive analyses the condition must hold before stopping (None: the
            rule's own, 3 for the named alpha rules).
        start_step: analyses before this step do not count for stopping (default 500); for
            ``"alpha_mean_drop"`` they set the reference level, which is also logged as
            ``<prefix>/alpha_mean_drop`` (reference minus alpha_mean) after it, whatever the
            rule. A Lightning run whose ``max_steps`` is <= ``start_step`` gets one warning: the
            rule could never fire.
        stop_bound: with ``stop_on="layer"`` only: compare the layer's ``"alpha"`` (default) or
            ``"alpha_hi"``, the upper end of its interval (the whole interval must be below).
        stop_margin: with ``stop_on="alpha_mean_drop"`` only: how far alpha_mean must fall below
            its reference level (default 1.0).
        mode: ``"auto"``/``"thread"``: analyses on a worker thread (on CUDA on a side stream);
            ``"sync"``: inline, for debugging and for CUDA-graph capture.
        max_snapshot_bytes: budget for one snapshot's weight copies (float32; bf16/fp16 weights
            are copied as they are); layers beyond it are skipped with that reason. None: no
            budget. See README "Large layers and memory".
        prefix: tag prefix: ``"spectral"`` gives ``spectral/alpha/<layer>`` and
            ``spectral_meta/...``; change it to run two monitors on one run.
        conv: every convolution ``"flatten"``ed to one (out, in·prod(k)) matrix or cut in
            ``"slices"`` (WeightWatcher's).
        kinds: layer kinds to analyse (``"linear"``, ``"attention"``, ``"conv1d"``, ``"conv2d"``,
            ``"conv3d"``, ``"rnn"``, ``"embedding"``, registered kinds, or ``"all"``); None: all
            but embeddings. See README "Layer kinds".
        lora: a peft LoRA layer as its ``"effective"`` weight W + scale·B·A, its ``"adapter"``
            scale·B·A, or its frozen ``"base"`` W.
        traps: count correlation traps per layer (eigenvalues of the element-wise shuffled
            weight above its Marchenko–Pastur edge; one more eigensolve per layer). False:
            ``num_traps`` is -1. See docs/guide/signals.md.
        trap_seed: seed of the shuffles (each layer's is derived from it and its name)."""
    return dict(locals())


#: The options' signature (``every_n_steps`` positional, the rest keyword-only).
OPTIONS = inspect.signature(monitor_options, eval_str=True)


def _args_section(function: Callable[..., Any]) -> str:
    doc = inspect.getdoc(function) or ""
    return doc[doc.index("Args:") :]


#: The ``Args:`` section documenting :data:`OPTIONS`.
OPTIONS_DOC = _args_section(monitor_options)

T = TypeVar("T", bound=type)


def with_options(*extra: inspect.Parameter, extra_doc: str = "") -> Callable[[T], T]:
    """Class decorator: ``cls.__init__(self, *args, **kwargs)`` gets the signature of
    :data:`OPTIONS` followed by the keyword-only ``extra`` parameters, and ``{options}`` in the
    class docstring becomes the ``Args:`` section (``extra_doc`` lines appended)."""

    def decorate(cls: T) -> T:
        parameters = [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *OPTIONS.parameters.values(),
            *extra,
        ]
        cls.__init__.__signature__ = inspect.Signature(parameters)  # type: ignore[misc]
        more = textwrap.indent(extra_doc.strip("\n"), "    ") if extra_doc else ""
        args = OPTIONS_DOC + ("\n" + more if more else "")
        indented = "\n".join(("    " + line) if line else line for line in args.splitlines())
        if cls.__doc__ is not None:
            cls.__doc__ = cls.__doc__.replace("    {options}", indented)
        return cls

    return decorate


def bind_options(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments of a call to ``cls(*args, **kwargs)`` by name, defaults filled in, checked
    against ``cls.__init__``'s signature (a misspelt option is a TypeError, as for a plain
    signature)."""
    signature = inspect.signature(cls.__init__)  # type: ignore[misc]
    bound = signature.bind(None, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop("self")
    return arguments
