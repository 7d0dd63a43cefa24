"""Regenerate the README figures from a real run of the over-regularisation demo.

    python docs/make_figures.py

Writes docs/over_regularization.png: left, alpha per layer and the mean over training, with the
2 and 6 guides; right, the last ESD of the middle layer on log-log axes with its power-law fit.
Writes docs/alpha_heatmap.png and docs/alpha_trajectories.png, the last pictures the monitor
logs as ``spectral/alpha_heatmap`` and ``spectral/alpha_trajectories`` (the same PNG bytes).
When Debian's ``chromium`` is installed (it is for these docs only; no test needs it), also
docs/tensorboard_custom_scalars.png and docs/tensorboard_images.png: a real ``tensorboard``
server on 127.0.0.1 over the same run, its Custom Scalars tab (every category open, smoothing 0,
outliers not ignored) and its Images tab, captured by headless Chromium driven over the DevTools
protocol (a pipe; no extra package).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from spectral_monitor.sinks.plots import plot_alpha_trajectories, plot_esd
from spectral_monitor.sinks.tensorboard_sink import draw_figures

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
        images_tab = HERE / "tensorboard_images.png"
        screenshot_tensorboard(Path(logdir), images_tab, size=(1500, 1250), page="images")
    history = monitor.history
    # The very pictures the monitor logs (same drawing, unreliable fits hatched or hollow).
    pictures = draw_figures(None, history)
    for name in ("alpha_heatmap", "alpha_trajectories"):
        (HERE / f"{name}.png").write_bytes(pictures[name].png)
        print(f"wrote {HERE / name}.png")
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


# Collects the elements matching a CSS selector across every shadow root (TensorBoard's
# dashboards are Polymer components, each in its own shadow DOM).
_DEEP_QUERY = """(selector) => {
  const found = [];
  const walk = (root) => {
    root.querySelectorAll(selector).forEach((e) => found.push(e));
    root.querySelectorAll("*").forEach((e) => { if (e.shadowRoot) walk(e.shadowRoot); });
  };
  walk(document);
  return found;
}"""
_CARDS = "tf-custom-scalar-multi-line-chart-card, tf-custom-scalar-margin-chart-card"


class HeadlessChromium:
    """Headless Chromium driven through the DevTools protocol over a pipe
    (``--remote-debugging-pipe``: JSON messages ended by a NUL byte, commands on the browser's
    fd 3, replies and events on its fd 4), so no websocket client or driver package is needed.
    """

    def __init__(self, browser: str, width: int, height: int) -> None:
        self._profile = tempfile.TemporaryDirectory()
        to_browser, self._out = os.pipe()
        self._in, from_browser = os.pipe()

        def to_fds_3_and_4() -> None:  # in the child: dup first, the pipes may sit on 3 or 4
            commands, replies = os.dup(to_browser), os.dup(from_browser)
            os.dup2(commands, 3)
            os.dup2(replies, 4)
            for fd in (3, 4):  # dup2 onto itself leaves close-on-exec set
                os.set_inheritable(fd, True)

        self._process = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}",
             f"--window-size={width},{height}", "about:blank"],
            preexec_fn=to_fds_3_and_4,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(to_browser)
        os.close(from_browser)
        self._id = 0
        self._buffer = b""
        self._session: str | None = None
        pages = [t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page"]
        attached = self.call("Target.attachToTarget", targetId=pages[0]["targetId"], flatten=True)
        self._session = attached["sessionId"]

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self._session is not None and not method.startswith("Target."):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._in, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"chromium exited during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # anything else is an event: not needed here
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError):
            self._process.kill()
        self._process.wait(timeout=30)
        os.close(self._in)
        os.close(self._out)
        self._profile.cleanup()


def _wait_for(condition: Any, seconds: float, what: str, poll: float = 0.5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {seconds:.0f} s for {what}")
        time.sleep(poll)


def screenshot_tensorboard(
    logdir: Path,
    out: Path,
    seconds: float = 90.0,
    size: tuple[int, int] = (1500, 1300),
    page: str = "custom_scalars",
) -> Path | None:
    """Serve ``logdir`` with ``tensorboard`` on a free loopback port and capture its Custom
    Scalars tab (``page="custom_scalars"``) or its Images tab (``page="images"``, once every
    image tag's picture has loaded) with headless Chromium; None (nothing written) when
    chromium is not installed.

    Smoothing 0 (in the URL) and "Ignore outliers in chart scaling" off (TensorBoard keeps it in
    the browser's localStorage; on, it clips the first analyses, where alpha is largest). Every
    category is open, so the per-layer interval charts show; the picture is taken once every
    chart card exists and no data request has been made for 2 s. Checks and prints the order in
    which the interval charts are shown (it should be the model's).
    """
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("chromium not found: no TensorBoard screenshot (apt-get install chromium)")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
         "127.0.0.1", "--port", str(port), "--samples_per_plugin", "images=100"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    chrome = None
    try:
        layout: dict[str, Any] = {}

        def layout_served() -> bool:
            try:
                with urllib.request.urlopen(f"{base}/data/plugin/custom_scalars/layout") as r:
                    layout.update(json.load(r))
            except OSError:
                return False
            return "alpha_hat" in json.dumps(layout)

        _wait_for(layout_served, seconds, "tensorboard to serve the layout")
        if page == "images":
            with urllib.request.urlopen(f"{base}/data/plugin/images/tags") as r:
                expected = sum(len(tags) for tags in json.load(r).values())
        else:
            expected = sum(len(c["chart"]) for c in layout["category"])
        chrome = HeadlessChromium(browser, *size)
        url = f"{base}/#{page}&_smoothingWeight=0"
        chrome.call("Page.navigate", url=url)
        _wait_for(lambda: chrome.evaluate("document.readyState") == "complete", seconds, "page")
        chrome.evaluate("localStorage.setItem('_ignoreYOutliers', 'false')")
        chrome.call("Page.reload", ignoreCache=True)
        if page == "images":
            # Tick "Show actual image size": the cards otherwise shrink each picture to ~290 px.
            boxes = f"({_DEEP_QUERY})('paper-checkbox')"
            _wait_for(lambda: chrome.evaluate(f"{boxes}.length") > 0, seconds, "the checkbox")
            chrome.evaluate(
                f"{boxes}.filter((e) => e.textContent.includes('actual image size'))"
                ".forEach((e) => { if (!e.checked) e.click(); })"
            )
            loaded = f"({_DEEP_QUERY})('img').filter((e) => e.complete && e.naturalWidth > 0)"
            _wait_for(lambda: chrome.evaluate(f"{loaded}.length") >= expected, seconds, "images")
        cards = f"({_DEEP_QUERY})({json.dumps(_CARDS)})"
        if page == "custom_scalars":
            _wait_for(
                lambda: chrome.evaluate(f"{cards}.length") == expected, seconds, "chart cards"
            )
        requests = "performance.getEntriesByType('resource').length"
        seen = [-1]

        def settled() -> bool:  # polled every 2 s: no request since the last poll
            count = chrome.evaluate(requests)
            unchanged = count == seen[0]
            seen[0] = count
            return unchanged

        _wait_for(settled, seconds, "the charts' data", poll=2.0)
        shown = chrome.evaluate(f"{cards}.map((e) => e.title)") or []
        for category in layout["category"] if page == "custom_scalars" else []:
            if category["title"].endswith("alpha with its interval"):
                listed = [c["title"] for c in category["chart"]]
                order = [t for t in shown if t in listed]
                note = "model order" if order == listed[::-1] else "NOT the model order"
                print(f"interval charts shown as {order} ({note})")
        png = chrome.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(png))
    finally:
        if chrome is not None:
            chrome.close()
        server.terminate()
        server.wait(timeout=10)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
