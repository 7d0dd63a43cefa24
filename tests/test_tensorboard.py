"""What a TensorBoard user sees: the tag scheme, the merged custom-scalars layout, alpha per module
type, the heatmap, and the same served by a real TensorBoard server over HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import TRUST_TINY, read_events, trainer
from PIL import Image
from tensorboard.plugins.custom_scalar import layout_pb2
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spectral_monitor import SpectralMonitor, SpectralTracker, analyze
from spectral_monitor.cli import main as cli_main
from spectral_monitor.sinks.tensorboard_sink import (
    LayoutEntry,
    custom_scalar_layout,
    draw_figures,
    verdict_table,
)
from spectral_monitor.weights.module_types import alpha_by_type, module_type

BLOCK_LAYERS = ("attn.q_proj", "attn.k_proj", "mlp.fc1")


class TinyTransformerish(L.LightningModule):
    """Two blocks of q_proj/k_proj/fc1 Linear layers (names as in transformer models) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "attn": nn.ModuleDict(
                        {"q_proj": nn.Linear(32, 32), "k_proj": nn.Linear(32, 32)}
                    ),
                    "mlp": nn.ModuleDict({"fc1": nn.Linear(32, 32)}),
                }
            )
            for _ in range(2)
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block["attn"]["q_proj"](x) + block["attn"]["k_proj"](x))
            x = torch.relu(block["mlp"]["fc1"](x))
        return self.head(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(256, 32, generator=g), torch.randint(0, 10, (256,), generator=g)
    )
    return DataLoader(data, batch_size=8)


LAYERS = [f"blocks.{i}.{name}" for i in range(2) for name in BLOCK_LAYERS] + ["head"]


@pytest.fixture(scope="module")
def two_monitor_run(tmp_path_factory) -> tuple[Path, SpectralMonitor, SpectralMonitor]:
    """25 steps with two monitors (prefixes) writing into one TensorBoard run directory."""
    root = tmp_path_factory.mktemp("tb")
    torch.manual_seed(0)
    first = SpectralMonitor(
        every_n_steps=10,
        mode="sync",
        stop_below=1.25,
        stop_on="alpha_mean",  # a fixed threshold no run reaches: a flat line at 1.25
        log_figures_every=100,
        **TRUST_TINY,
    )
    second = SpectralMonitor(
        every_n_steps=10, mode="sync", normalize=False, prefix="raw", **TRUST_TINY
    )
    run = trainer(
        max_steps=25, callbacks=[first, second], logger=TensorBoardLogger(root, name="run")
    )
    run.fit(TinyTransformerish(), loader())
    return root / "run" / "version_0", first, second


# --- pure pieces ----------------------------------------------------------------------------


def test_module_type_names_the_role() -> None:
    assert module_type("model.layers.3.self_attn.q_proj") == "q_proj"
    assert module_type("encoder.layers.0.self_attn.in_proj.q") == "in_proj.q"
    assert module_type("blocks.1.mlp.0") == "mlp.0"
    assert module_type("net.0") == "net.0"
    assert module_type("head") == "head"


def test_alpha_by_type_keeps_shared_types_and_skips_nan() -> None:
    names = ["b.0.q_proj", "b.1.q_proj", "b.0.fc1", "b.1.fc1", "b.2.fc1", "head"]
    alphas = [2.0, 4.0, 3.0, float("nan"), 5.0, 9.0]
    assert alpha_by_type(names, alphas) == {"q_proj": 3.0, "fc1": 4.0}
    # A type shared by two layers, one of them without a trustworthy fit, keeps the other.
    assert alpha_by_type(["x.0.k_proj", "x.1.k_proj"], [float("nan"), 3.5]) == {"k_proj": 3.5}
    with pytest.raises(ValueError, match="differ in length"):
        alpha_by_type(["a"], [])


def test_layout_charts_per_prefix() -> None:
    layout = custom_scalar_layout({"spectral": LayoutEntry(2.0, True), "raw": LayoutEntry()})
    assert list(layout) == ["spectral", "raw"]
    charts = layout["spectral"]
    assert charts["alpha_hat"] == ["Multiline", [r"^spectral/alpha_hat$"]]
    assert r"^spectral/stop_threshold$" in charts["alpha_mean and alpha_min"][1]
    assert all("stop_threshold" not in r for r in layout["raw"]["alpha_mean and alpha_min"][1])
    assert charts["alpha_mean ± std over layers"][0] == "Margin"
    assert "alpha by module type" in charts and "alpha by module type" not in layout["raw"]
    # The tab shows line charts first, then margin charts in reverse: the layout lists the
    # line charts first, so that what is listed is what is shown.
    kinds = [kind for kind, _ in charts.values()]
    assert kinds == sorted(kinds, key=lambda k: k == "Margin")


def test_interval_charts_are_listed_for_the_tab_to_show_them_in_model_order() -> None:
    layers = ("net.0", "net.2", "net.4")
    layout = custom_scalar_layout({"spectral": LayoutEntry(layers=layers)})
    intervals = layout["spectral — alpha with its interval"]
    assert list(intervals) == [f"alpha — {name}" for name in reversed(layers)]
    assert intervals["alpha — net.2"] == [
        "Margin",
        ["spectral/alpha/net.2", "spectral/alpha_lo/net.2", "spectral/alpha_hi/net.2"],
    ]


def test_interval_chart_titles_say_which_latest_fits_are_unreliable(tmp_path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from spectral_monitor.sinks.tensorboard_sink import TensorBoardSink

    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(32, 32))
    writer = SummaryWriter(str(tmp_path))
    sink = TensorBoardSink(writer)
    titles = []
    # Default thresholds: both layers' fits are unreliable (too few eigenvalues); TRUST_TINY:
    # both reliable. The layout is rewritten when that changes, and only then.
    for step, options in enumerate([{}, {}, TRUST_TINY]):
        report = analyze(model, **options)
        report.step = step
        sink.write_report(report, step, {})
        writer.flush()
        category = next(c for c in _layout(read_events(tmp_path)).category if " — " in c.title)
        titles.append(sorted(c.title for c in category.chart))
    writer.close()
    unreliable = " (latest fit unreliable)"
    assert titles[0] == titles[1] == [f"alpha — 0{unreliable}", f"alpha — 1{unreliable}"]
    assert titles[2] == ["alpha — 0", "alpha — 1"]
    assert len(read_events(tmp_path).Tensors("custom_scalars__config__")) == 2


# --- event files -----------------------------------------------------------------------------


def _layout(events: Any) -> layout_pb2.Layout:
    """The last custom-scalars layout written (the one TensorBoard shows)."""
    event = events.Tensors("custom_scalars__config__")[-1]
    layout = layout_pb2.Layout()
    layout.ParseFromString(event.tensor_proto.string_val[0])
    return layout


def test_event_files_hold_tags_layout_and_pictures(two_monitor_run) -> None:
    log_dir, first, second = two_monitor_run
    events = read_events(log_dir)
    scalars = set(events.Tags()["scalars"])
    steps = first.history.steps
    assert steps == second.history.steps and steps[:3] == [0, 10, 20]
    for prefix in ("spectral", "raw"):
        for layer in LAYERS:
            assert f"{prefix}/alpha/{layer}" in scalars
        for key in ("alpha_mean", "alpha_min", "alpha_hat", "alpha_mean_plus_std"):
            assert [e.step for e in events.Scalars(f"{prefix}/{key}")] == steps
        for key in ("analysis_seconds", "analyses_skipped", "layers_skipped", "snapshot_mb"):
            assert f"{prefix}_meta/{key}" in scalars
            assert f"{prefix}/{key}" not in scalars
        by_type = {t.split("/")[-1] for t in scalars if t.startswith(f"{prefix}/alpha_by_type/")}
        assert by_type == {"q_proj", "k_proj", "fc1"}
    # alpha_by_type is the mean over the blocks' layers of that type.
    report = first.latest
    q = np.mean([report.layer(f"blocks.{i}.attn.q_proj").alpha for i in range(2)])
    last_q = events.Scalars("spectral/alpha_by_type/q_proj")[-1]
    assert last_q.step == steps[-1] and last_q.value == pytest.approx(q, rel=1e-5)
    assert {e.value for e in events.Scalars("spectral/stop_threshold")} == {1.25}
    assert "raw/stop_threshold" not in scalars

    # One merged layout with both prefixes, every regex matching a logged tag.
    layout = _layout(events)
    titles = [c.title for c in layout.category]
    assert titles == [
        p + t for p in ("spectral", "raw") for t in ("", " — alpha with its interval")
    ]
    for category in layout.category:
        for chart in category.chart:
            if chart.HasField("margin"):
                series = chart.margin.series[0]
                assert {series.value, series.lower, series.upper} <= scalars, chart.title
                continue
            for regex in chart.multiline.tag:
                assert any(re.match(regex, tag) for tag in scalars), (chart.title, regex)
        if " — " in category.title:  # one margin chart per layer: alpha, alpha_lo, alpha_hi
            # Listed last layer first: the tab shows margin charts in reverse layout order.
            assert [c.title for c in category.chart] == [f"alpha — {la}" for la in LAYERS][::-1]
            continue
        hat = next(c for c in category.chart if c.title == "alpha_hat")
        assert [t for t in scalars if re.match(hat.multiline.tag[0], t)] == [
            f"{category.title}/alpha_hat"
        ]

    # ESD figures: first analysis (log_figures_every=100) and the last; heatmap per analysis.
    images = events.Tags()["images"]
    assert [e.step for e in events.Images("spectral/esd_fit/head")] == [steps[0], steps[-1]]
    assert "raw/esd_fit/head" not in images
    for prefix in ("spectral", "raw"):
        heatmaps = events.Images(f"{prefix}/alpha_heatmap")
        assert [e.step for e in heatmaps] == steps
        picture = Image.open(io.BytesIO(heatmaps[-1].encoded_image_string))
        assert picture.width > 200 and picture.height > 100
        # The trajectories go with the heatmap, and both decode to the size the event says.
        trajectories = events.Images(f"{prefix}/alpha_trajectories")
        assert [e.step for e in trajectories] == steps
        for entry in (heatmaps[-1], trajectories[-1]):
            decoded = Image.open(io.BytesIO(entry.encoded_image_string))
            assert decoded.size == (entry.width, entry.height) and decoded.mode == "RGB"


def test_verdict_table_columns(two_monitor_run) -> None:
    _, first, _ = two_monitor_run
    table = verdict_table(first.latest)
    header = table.splitlines()[0]
    for column in ("alpha", "interval", "reliable", "n_tail", "D", "λmax", "verdict"):
        assert f" {column} " in header
    head = first.latest.layer("head")
    row = next(line for line in table.splitlines() if line.startswith("| head |"))
    assert f"| {head.n_tail} |" in row
    assert f"[{head.alpha_lo:.2f}, {head.alpha_hi:.2f}]" in row
    # With the default thresholds a tiny layer's fit is not trusted, and the table says why.
    strict = verdict_table(analyze(nn.Linear(16, 16)))
    assert "| no: 16 positive eigenvalues < min_evals=50 |" in strict
    assert "Over the 0 reliable layers" in strict


def test_heatmap_hatches_unreliable_fits() -> None:
    from spectral_monitor.analysis.history import SpectralHistory

    history = SpectralHistory()
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(300, 200))
    torch.manual_seed(0)
    with torch.no_grad():
        model[1].weight.copy_(torch.distributions.StudentT(2.5).sample((200, 300)) / 20)
    for step in (0, 1):
        report = analyze(model)
        report.step = step
        history.add(report)
    _, _, reliable = history.layer_matrix("reliable")
    assert reliable.tolist() == [[0.0, 0.0], [1.0, 1.0]]
    images = draw_figures(None, history)
    assert images["alpha_heatmap"].ndim == 3


@pytest.mark.parametrize("values", [[5.0, 4.0, 1.45], [15.0, 4.0, 0.3], [3.0, 3.0, 3.0]])
def test_heatmap_colour_bar_numbers_both_halves_without_overlap(values: list[float]) -> None:
    from spectral_monitor.sinks.plots import plot_alpha_heatmap

    figure = plot_alpha_heatmap(["a"], [0, 1, 2], np.array([values]))
    bar = figure.axes[-1]
    low, high = bar.get_ylim()
    ticks = [t for t in bar.get_yticks() if low <= t <= high]
    assert {2.0, 6.0} <= set(ticks)
    assert any(t < 2.0 for t in ticks)  # the lower half, as tall as the upper, has numbers
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert "2" in labels and "6" in labels
    # No two numbers print over each other: 6 % of the bar apart (positions in bar units).
    norm = figure.axes[0].collections[0].norm
    positions = sorted(float(norm(t)) for t in ticks)
    assert min(np.diff(positions)) >= 0.06


def test_plain_loop_uses_the_same_sink(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32))
    tracker = SpectralTracker(every_n_steps=5, mode="sync", log_dir=str(tmp_path), **TRUST_TINY)
    tracker_b = SpectralTracker(every_n_steps=5, mode="sync", log_dir=str(tmp_path), prefix="b")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 11):
        loss = model(torch.randn(8, 32)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        tracker.step(model, step)
        tracker_b.step(model, step)
    tracker.close()
    tracker_b.close()
    events = read_events(tmp_path)
    assert [c.title for c in _layout(events).category if " — " not in c.title] == ["spectral", "b"]
    assert "spectral_meta/analyses_skipped" in events.Tags()["scalars"]
    assert [e.step for e in events.Images("spectral/alpha_heatmap")] == [1, 5, 10]
    assert [e.step for e in events.Images("spectral/alpha_trajectories")] == [1, 5, 10]


def test_cli_history_plot_writes_the_heatmap(two_monitor_run, tmp_path) -> None:
    log_dir, _, _ = two_monitor_run
    out = io.StringIO()
    assert cli_main(["history", str(log_dir), "--plot", str(tmp_path / "a.png")], out=out) == 0
    assert f"wrote {tmp_path / 'a.png'}" in out.getvalue()
    picture = Image.open(tmp_path / "a.png")
    assert picture.format == "PNG" and picture.width > 300


# --- a real TensorBoard server ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A ``tensorboard`` process on 127.0.0.1 and JSON/bytes GETs against it."""

    def __init__(self, logdir: Path) -> None:
        self.port = _free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--samples_per_plugin",
                "images=100",
                "--reload_interval",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def get(self, path: str, **params: str) -> bytes:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        url = f"http://127.0.0.1:{self.port}/data/{path}{query}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read()

    def json(self, path: str, **params: str) -> Any:
        return json.loads(self.get(path, **params))

    def wait_for(self, ready: Any, seconds: float = 90.0) -> Any:
        """Poll until ``ready()`` returns a truthy value; fail with the server's log if not."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                value = ready()
                if value:
                    return value
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        log = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
        pytest.fail(f"TensorBoard did not serve the run within {seconds} s:\n{log[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.mark.slow
def test_real_tensorboard_server_shows_the_run(two_monitor_run) -> None:
    log_dir, first, _ = two_monitor_run
    steps = first.history.steps
    server = Server(log_dir.parent.parent)
    try:

        def loaded() -> Any:
            tags = server.json("plugin/scalars/tags")
            run = next(iter(tags), None)
            if run and "spectral/alpha_mean" in tags[run] and "raw/alpha_hat" in tags[run]:
                images = server.json("plugin/images/tags").get(run, {})
                if "spectral/alpha_heatmap" in images and "raw/alpha_heatmap" in images:
                    return run
            return None

        run = server.wait_for(loaded)
        assert server.json("runs") == [run] and run == "run/version_0"
        scalar_tags = set(server.json("plugin/scalars/tags")[run])
        for layer in LAYERS:
            assert f"spectral/alpha/{layer}" in scalar_tags
        assert {"spectral_meta/analyses_skipped", "raw_meta/layers_skipped"} <= scalar_tags
        points = server.json("plugin/scalars/scalars", run=run, tag="spectral/alpha/head")
        assert [p[1] for p in points] == steps  # [wall_time, step, value]
        expected = first.history.alpha("head")[1]
        assert [p[2] for p in points] == pytest.approx(expected, rel=1e-6)

        # The layout as the Custom Scalars tab gets it: both prefixes, every regex matching.
        layout = server.json("plugin/custom_scalars/layout")
        titles = [c["title"] for c in layout["category"]]
        suffixes = ("", " — alpha with its interval")
        assert titles == [p + t for p in ("spectral", "raw") for t in suffixes]
        for category in layout["category"]:
            for chart in category["chart"]:
                if "margin" in chart:
                    series = chart["margin"]["series"][0]
                    assert {series["value"], series["lower"], series["upper"]} <= scalar_tags
                    continue
                regexes = chart["multiline"]["tag"]
                matched = {t for t in scalar_tags for r in regexes if re.match(r, t)}
                assert matched, (chart["title"], regexes)
                if chart["title"] == "alpha_hat":
                    assert matched == {f"{category['title']}/alpha_hat"}
        multi = server.json(
            "plugin/custom_scalars/scalars", run=run, tag=r"^spectral/alpha_by_type/"
        )
        assert set(multi["tag_to_events"]) == {
            f"spectral/alpha_by_type/{t}" for t in ("q_proj", "k_proj", "fc1")
        }

        histograms = server.json(
            "plugin/histograms/histograms", run=run, tag="spectral/esd_log10/head"
        )
        assert [h[1] for h in histograms] == steps

        # Images: every heatmap and the last step's ESD figures decode as PNG.
        for tag, want in (("spectral/alpha_heatmap", steps), ("spectral/esd_fit/head", None)):
            entries = server.json("plugin/images/images", run=run, tag=tag, sample="0")
            got = [e["step"] for e in entries]
            assert got == (want if want is not None else [steps[0], steps[-1]])
            png = server.get(f"plugin/images/individualImage?{entries[-1]['query']}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            assert Image.open(io.BytesIO(png)).size[0] > 200

        # torch's add_text stores the tag with a "/text_summary" suffix.
        text_tags = server.json("plugin/text/tags")[run]
        assert "spectral/verdicts/text_summary" in text_tags
        text = server.json("plugin/text/text", run=run, tag="spectral/verdicts/text_summary")
        assert text[-1]["step"] == steps[-1]
        assert "n_tail" in text[-1]["text"] and "blocks.0.attn.q_proj" in text[-1]["text"]
    finally:
        server.stop()
