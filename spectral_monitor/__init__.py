"""spectral_monitor: heavy-tailed spectral analysis (HT-SR alpha, λmax, ESDs) of neural-network
weights, offline with :func:`analyze` and during Lightning training with ``SpectralMonitor``."""

from spectral_monitor.analysis import AnalysisConfig, analyze
from spectral_monitor.callback import SpectralMonitor
from spectral_monitor.history import SpectralHistory
from spectral_monitor.layers import register_layer
from spectral_monitor.powerlaw_fit import (
    FitOptions,
    PowerLawFit,
    fit_power_law,
    fit_power_law_batched,
)
from spectral_monitor.report import LayerSpectrum, SpectralReport
from spectral_monitor.spectral_analysis import SpectralAnalysis
from spectral_monitor.tracker import SpectralTracker

__version__ = "0.1.0"

__all__ = [
    "AnalysisConfig",
    "FitOptions",
    "LayerSpectrum",
    "PowerLawFit",
    "SpectralAnalysis",
    "SpectralHistory",
    "SpectralMonitor",
    "SpectralReport",
    "SpectralTracker",
    "__version__",
    "analyze",
    "fit_power_law",
    "fit_power_law_batched",
    "register_layer",
]
