"""spectral_monitor: heavy-tailed spectral analysis (HT-SR alpha, λmax, ESDs) of neural-network
weights, offline with :func:`analyze` and during Lightning training with ``SpectralMonitor``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spectral_monitor.acting.prune_ratios import LayerSparsity, prune_ratios
from spectral_monitor.analysis.analyze import AnalysisConfig, analyze
from spectral_monitor.analysis.history import SpectralHistory
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport
from spectral_monitor.spectra.powerlaw_fit import (
    FitOptions,
    PowerLawFit,
    fit_power_law,
    fit_power_law_batched,
)
from spectral_monitor.weights.layers import register_layer

if TYPE_CHECKING:
    from spectral_monitor.acting.balancer import SpectralBalancer
    from spectral_monitor.integrations.hf_callback import SpectralTrainerCallback
    from spectral_monitor.integrations.lightning_callback import SpectralMonitor
    from spectral_monitor.live.tracker import SpectralTracker
    from spectral_monitor.spectral_analysis import SpectralAnalysis

__version__ = "0.1.0"

__all__ = [
    "AnalysisConfig",
    "FitOptions",
    "LayerSparsity",
    "LayerSpectrum",
    "PowerLawFit",
    "SpectralAnalysis",
    "SpectralBalancer",
    "SpectralHistory",
    "SpectralMonitor",
    "SpectralReport",
    "SpectralTracker",
    "SpectralTrainerCallback",
    "__version__",
    "analyze",
    "fit_power_law",
    "fit_power_law_batched",
    "prune_ratios",
    "register_layer",
]

# Lightning takes seconds to import, matplotlib most of one, transformers several; only the
# training-time classes and the seed's plotting class need them, so these load on first use and
# `spectral-monitor --help` or `analyze()` do not pay for them.
_LAZY = {
    "SpectralAnalysis": "spectral_monitor.spectral_analysis",
    "SpectralBalancer": "spectral_monitor.acting.balancer",
    "SpectralMonitor": "spectral_monitor.integrations.lightning_callback",
    "SpectralTracker": "spectral_monitor.live.tracker",
    # Needs the optional `transformers` (pip install "spectral-monitor[hf]").
    "SpectralTrainerCallback": "spectral_monitor.integrations.hf_callback",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'spectral_monitor' has no attribute {name!r}")
