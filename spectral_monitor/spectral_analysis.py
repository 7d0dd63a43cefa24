"""``SpectralAnalysis``: the seed's class, same methods and return shapes, on the new core.

Layers are keyed 1, 2, … in ``named_modules()`` order of the Linear and Conv2d modules; Conv2d
weights are flattened to (out, in·kh·kw) and eigenvalues divided by the number of rows, as the
seed did. Plots are matplotlib figures kept in ``self.figures`` (never ``plt.show()``).
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from spectral_monitor.analysis.analyze import analyze_snapshot
from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.snapshot import take_snapshot
from spectral_monitor.sinks.plots import plot_esd
from spectral_monitor.spectra.powerlaw_fit import fit_power_law

__all__ = ["SpectralAnalysis"]


class SpectralAnalysis:
    """Spectral analysis of a model's Linear and Conv2d layers (Martin & Mahoney).

    Args:
        model: the model; a module that is not a container is wrapped in ``nn.Sequential``.

    Example::

        >>> import torch
        >>> sa = SpectralAnalysis(torch.nn.Linear(32, 32))
        >>> sorted(sa.fit_power_law())
        [1]
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.figures: list[Figure] = []
        # The seed computed exact SVDs; float64 keeps that exactness. Its selection (Linear and
        # Conv2d modules only, no attention/RNN/GPT-2 Conv1D) keeps the seed's layer keys.
        self._config = AnalysisConfig.create(
            layers=(nn.Linear, nn.Conv2d),
            normalize=True,
            min_evals=2,
            precision="float64",
            conv="flatten",
            kinds=("linear", "conv2d"),
        )

    def __repr__(self) -> str:
        return f"SpectralAnalysis for a {type(self.model).__name__}"

    def spectral_analysis(self, plot: bool = False) -> dict[int, tuple[np.ndarray, float]]:
        """Eigenvalues of WᵀW / rows per layer, largest first, and the aspect ratio Q >= 1.

        Returns:
            ``{layer_index: (eigenvalues, Q)}``, layer indices from 1.
        """
        with torch.no_grad():
            snapshot = take_snapshot(self.model, self._config, copy=False)
        report = analyze_snapshot(snapshot, self._config)
        out: dict[int, tuple[np.ndarray, float]] = {}
        for idx, layer in enumerate(report.layers, 1):
            evals = layer.evals if layer.evals is not None else np.empty(0)
            out[idx] = (evals[::-1].copy(), float(layer.Q))
            if plot:
                self.figures.append(plot_esd(evals, None, title=f"Layer {idx} spectrum"))
        return out

    def fit_power_law(
        self,
        eig_dict: dict[int, tuple[np.ndarray, float]] | None = None,
        plot_alpha: bool = False,
        plot_eig: bool = False,
    ) -> dict[int, tuple[float, float]]:
        """Power-law alpha and the largest eigenvalue per layer.

        Returns:
            ``{layer_index: (alpha, eig_max)}``; alpha is NaN for a layer without a valid fit.
        """
        if not eig_dict:
            eig_dict = self.spectral_analysis(plot=plot_eig)
        alpha_dict: dict[int, tuple[float, float]] = {}
        for idx, (evals, _q) in eig_dict.items():
            fit = fit_power_law(evals)
            eig_max = float(np.max(evals)) if len(evals) else float("nan")
            alpha_dict[idx] = (fit.alpha, eig_max)
            if plot_alpha:
                title = f"Layer {idx} power law fit, alpha = {fit.alpha:.3f}"
                self.figures.append(plot_esd(evals, fit, title=title))
        return alpha_dict

    def layer_RMT(
        self,
        alpha_dict: dict[int, tuple[float, float]] | None = None,
        verbose: bool = False,
        plot_alpha: bool = False,
        plot_eig: bool = False,
    ) -> list[str]:
        """The seed's phenomenology per layer, from mu = 2 (alpha - 1) (Martin & Mahoney 2019):
        0 <= mu <= 4 regularised, 4 < mu < 7 somewhat regularised, else not trained."""
        if not alpha_dict:
            alpha_dict = self.fit_power_law(plot_alpha=plot_alpha, plot_eig=plot_eig)
        texts = []
        for layer, (alpha, _) in alpha_dict.items():
            mu = (alpha - 1) * 2
            if 0 <= mu <= 4:
                text = f"Layer {layer} prediction: regularized and good performance on a test set."
            elif 4 < mu < 7:
                text = (
                    f"Layer {layer} prediction: somewhat well regularized and likely has "
                    "good performance on a test set."
                )
            else:
                text = f"Layer {layer} prediction: very likely not trained and not regularized."
            if verbose:
                print(f"Phenomenology for layer {layer}")
                print(text)
            texts.append(text)
        return texts

    def universal_metric(
        self, alpha_dict: dict[int, tuple[float, float]] | None = None
    ) -> float | None:
        """alpha-hat = mean over layers of alpha · ln λmax (Martin, Peng & Mahoney 2021);
        None for a model without layers, as in the seed."""
        if not alpha_dict:
            alpha_dict = self.fit_power_law()
        if not alpha_dict:
            return None
        return float(np.mean([a * np.log(m) for a, m in alpha_dict.values()]))
