"""Regenerate the README figures from a real run of the over-regularisation demo.

    python docs/make_figures.py

Writes docs/over_regularization.png: left, alpha per layer and the mean over training, with the
2 and 6 guides; right, the last ESD of the middle layer on log-log axes with its power-law fit.
Writes docs/alpha_heatmap.png, the heatmap the monitor logs as ``spectral/alpha_heatmap``.
When Debian's ``chromium`` is installed (it is for these docs only; no test needs it), also
docs/tensorboard_custom_scalars.png: a real ``tensorboard`` server on 127.0.0.1 over the same run,
its Custom Scalars tab captured by headless Chromium.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import matplotlib.image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spectral_monitor.plots import plot_alpha_heatmap, plot_alpha_trajectories, plot_esd

HERE = Path(__file__).resolve().parent


def main() -> Path:
    spec = importlib.util.spec_from_file_location(
        "over_regularization", HERE.parent / "examples" / "over_regularization.py"
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    with tempfile.TemporaryDirectory() as logdir:
        monitor = demo.main(["--logdir", logdir])
        screenshot_tensorboard(Path(logdir), HERE / "tensorboard_custom_scalars.png")
    history = monitor.history
    layers, steps, alpha = history.alpha_matrix()
    heatmap = plot_alpha_heatmap(
        layers, steps, alpha, title="alpha by layer (over-regularising run)"
    )
    heatmap.savefig(HERE / "alpha_heatmap.png", dpi=100)
    print(f"wrote {HERE / 'alpha_heatmap.png'}")
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


def screenshot_tensorboard(logdir: Path, out: Path, seconds: float = 60.0) -> Path | None:
    """Serve ``logdir`` with ``tensorboard`` on a free loopback port and capture its Custom
    Scalars tab with headless Chromium; None (nothing written) when chromium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no TensorBoard screenshot (apt-get install chromium)")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--samples_per_plugin", "images=100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                url = f"http://127.0.0.1:{port}/data/plugin/custom_scalars/layout"
                with urllib.request.urlopen(url, timeout=5) as response:
                    if b"alpha_hat" in response.read():
                        break
            except OSError:
                pass
            time.sleep(0.5)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--user-data-dir={profile}", "--window-size=1500,780",
                 "--virtual-time-budget=20000", f"--screenshot={out}",
                 f"http://127.0.0.1:{port}/#custom_scalars&_smoothingWeight=0"],
                check=True,
                timeout=120,
                capture_output=True,
            )  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
