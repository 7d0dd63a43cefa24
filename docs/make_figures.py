"""Regenerate the README figures from a real run of the over-regularisation demo.

    python docs/make_figures.py

Writes docs/over_regularization.png: left, alpha per layer and the mean over training, with the
2 and 6 guides; right, the last ESD of the middle layer on log-log axes with its power-law fit.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import matplotlib.image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spectral_monitor.plots import plot_alpha_trajectories, plot_esd

HERE = Path(__file__).resolve().parent


def main() -> Path:
    spec = importlib.util.spec_from_file_location(
        "over_regularization", HERE.parent / "examples" / "over_regularization.py"
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with tempfile.TemporaryDirectory() as logdir:
        monitor = demo.main(["--logdir", logdir])
    history = monitor.history
    curves = {name: history.alpha(name) for name in history.layers}
    curves["alpha_mean"] = (history.steps, history.aggregates["alpha_mean"])
    left = plot_alpha_trajectories(curves, title="alpha over training (random labels, lr 0.2)")
    layer = monitor.latest.layer("net.2")
    right = plot_esd(layer.evals, layer.fit, title=f"net.2 ESD at step {monitor.latest.step}")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / "left.png", Path(tmp) / "right.png"]
        left.savefig(paths[0], dpi=100)
        right.savefig(paths[1], dpi=100)
        images = [mpimg.imread(p) for p in paths]
    combined = Figure(figsize=(14, 4.6), layout="constrained")
    FigureCanvasAgg(combined)
    for k, image in enumerate(images):
        ax = combined.add_subplot(1, 2, k + 1)
        ax.imshow(image)
        ax.axis("off")
    out = HERE / "over_regularization.png"
    combined.savefig(out, dpi=100)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
