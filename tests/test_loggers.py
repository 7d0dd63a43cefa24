"""What each Lightning logger receives from SpectralMonitor, read back from the real package: a
CSVLogger's files parsed (and read by ``spectral-monitor history``), a W&B run written offline and
read from its run folder, and an MLflow run read through ``MlflowClient`` — from a local sqlite
store and from a real ``mlflow server`` on 127.0.0.1."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import warnings
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, trainer
from PIL import Image

from spectral_monitor import SpectralMonitor
from spectral_monitor.analysis.history import LAYER_KEYS, typed_value
from spectral_monitor.analysis.history_files import read_history_csv
from spectral_monitor.analysis.report import LayerSpectrum
from spectral_monitor.cli import main as cli_main
from spectral_monitor.sinks.sink import verdict_rows

STEPS = [0, 5, 10]
LAYERS = ["net.0", "net.2", "net.5", "net.7"]


def fit(logger: Any, **options: Any) -> tuple[SpectralMonitor, list[str]]:
    """A 10-step run analysed at 0, 5 and 10 with every extra due each time; the monitor and the
    texts of the warnings it raised."""
    monitor = SpectralMonitor(
        every_n_steps=5, mode="sync", histogram_every=1, **TRUST_TINY, **options
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer(max_steps=10, callbacks=[monitor], logger=logger).fit(ConvNet(), image_loader())
    assert monitor.history.steps == STEPS
    return monitor, [str(w.message) for w in caught if "SpectralMonitor" in str(w.message)]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def not_sent(messages: list[str]) -> list[str]:
    return [m for m in messages if "cannot take" in m]


# --- CSVLogger -------------------------------------------------------------------------------


class ListLogger(Logger):
    """A logger of the user's own: it keeps the metrics it is given, and nothing else."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "list"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def test_csv_logger_gets_the_history_and_verdicts_and_history_reads_either_source(
    tmp_path,
) -> None:
    csv_logger, own = CSVLogger(tmp_path, name="csv"), ListLogger()
    monitor, messages = fit([TensorBoardLogger(tmp_path, name="tb"), csv_logger, own])
    assert not_sent(messages) == [
        "SpectralMonitor: CSVLogger cannot take the histograms of log10 λ per layer, the figures "
        "(alpha heatmap, ESD fits); they are not sent to it (the scalars are).",
        "SpectralMonitor: ListLogger cannot take the histograms of log10 λ per layer, the "
        "figures (alpha heatmap, ESD fits), the verdict table; they are not sent to it (the "
        "scalars are).",
    ]  # once each, and nothing about TensorBoard, which takes everything
    logged = [step for step, metrics in own.metrics if "spectral/alpha_mean" in metrics]
    assert logged == STEPS
    folder = Path(csv_logger.log_dir)
    names = {p.name for p in folder.iterdir()}
    assert {"spectral_history.csv", "spectral_verdicts.csv", "spectral_verdicts.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]  # written whole, then moved in place

    # The full history: every field of LayerSpectrum but the eigenvalues, at every analysis.
    with (folder / "spectral_history.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["step", "layer", *LAYER_KEYS]
    assert set(LAYER_KEYS) == {f.name for f in fields(LayerSpectrum)} - {"name", "evals"}
    expected = monitor.history.to_rows()
    assert [(int(r["step"]), r["layer"]) for r in rows] == [(s, n) for s in STEPS for n in LAYERS]
    for got, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            assert same(typed_value(key, got[key]) if key != "step" else int(got[key]), value)
    assert {r["reliable"] for r in rows} == {"True"}  # TRUST_TINY: every tiny layer counts
    for r in rows:
        assert float(r["alpha_lo"]) < float(r["alpha"]) < float(r["alpha_hi"])
    back = read_history_csv(folder / "spectral_history.csv")
    assert back.aggregates == monitor.history.aggregates
    for x, y in zip(back.to_rows(), expected, strict=True):
        assert x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)

    # The latest verdicts, as CSV and JSON.
    latest = monitor.latest
    assert latest is not None and latest.step == 10
    with (folder / "spectral_verdicts.csv").open(newline="") as handle:
        verdicts = list(csv.DictReader(handle))
    assert [v["layer"] for v in verdicts] == LAYERS and {v["step"] for v in verdicts} == {"10"}
    for v, la in zip(verdicts, latest.layers, strict=True):
        assert v["verdict"] == la.verdict and v["reliable"] == str(la.reliable)
        assert float(v["alpha"]) == la.alpha and float(v["alpha_hi"]) == la.alpha_hi
    document = json.loads((folder / "spectral_verdicts.json").read_text())
    assert document["step"] == 10
    assert document["aggregates"]["alpha_mean"] == pytest.approx(latest.aggregates["alpha_mean"])
    assert [la["name"] for la in document["layers"]] == LAYERS

    # One command reads both runs: the CSV one with its reliability flags.
    out = io.StringIO()
    assert cli_main(["history", str(tmp_path), "--csv", str(tmp_path / "all.csv")], out=out) == 0
    text = out.getvalue()
    assert "run csv/version_0: 3 analyses, steps 0..10 (from csv)" in text
    assert "run tb/version_0: 3 analyses, steps 0..10 (from tensorboard)" in text
    net7 = [line.split() for line in text.splitlines() if line.startswith("net.7 ")]
    assert [line[5] for line in net7] == ["3/3", "?"]  # reliable: known from CSV only
    with (tmp_path / "all.csv").open(newline="") as handle:
        table = list(csv.DictReader(handle))
    from_csv = [r for r in table if r["run"] == "csv/version_0"]
    from_tb = [r for r in table if r["run"] == "tb/version_0"]
    assert len(from_csv) == len(from_tb) == 12
    assert {r["reliable"] for r in from_csv} == {"True"} and {r["reliable"] for r in from_tb} == {
        ""
    }
    for a, b in zip(from_csv, from_tb, strict=True):
        assert (a["step"], a["layer"]) == (b["step"], b["layer"])
        assert float(a["alpha"]) == pytest.approx(float(b["alpha"]), rel=1e-6)  # float32 events
        assert float(a["alpha_lo"]) == pytest.approx(float(b["alpha_lo"]), rel=1e-6)


# --- Weights & Biases ------------------------------------------------------------------------


def wandb_history(run_file: Path) -> tuple[list[dict[str, Any]], bool]:
    """The history rows of an offline W&B run file (LevelDB log records of protobuf ``Record``s:
    a 7-byte header, then 32 KiB blocks of records with a 7-byte header each), and whether the
    file is complete (it ends with the run's ``exit`` record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, position, pending, rows, complete = 32768, 7, b"", [], False
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4 : position + 7])
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            complete = complete or record.WhichOneof("record_type") == "exit"
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                        for item in record.history.item
                    }
                )
    return rows, complete


def finished_wandb_history(run_dir: Path) -> list[dict[str, Any]]:
    """The history of the run in ``run_dir`` once W&B's writer, a separate process that may
    still be writing after ``wandb.finish()`` returns, has closed the run file."""
    deadline = time.monotonic() + 300
    while True:
        (run_file,) = run_dir.glob("run-*.wandb")
        rows, complete = wandb_history(run_file)
        if complete:
            return rows
        assert time.monotonic() < deadline, f"{run_file} has no exit record"
        time.sleep(0.5)


def test_wandb_logger_gets_histograms_figures_and_the_verdict_table(tmp_path, monkeypatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="spectral-test")
    try:
        monitor, messages = fit(logger, log_figures_every=1)
    finally:
        wandb.finish()
    assert messages == []  # nothing refused, nothing failed
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    rows = finished_wandb_history(run_dir)

    def at(key: str) -> dict[int, dict[str, Any]]:
        return {r["trainer/global_step"]: r for r in rows if key in r}

    alpha_mean = {s: r["spectral/alpha_mean"] for s, r in at("spectral/alpha_mean").items()}
    logged = dict(zip(STEPS, monitor.history.aggregates["alpha_mean"], strict=True))
    assert alpha_mean == pytest.approx(logged)

    histograms = at("spectral/esd_log10/net.0/_type")
    assert sorted(histograms) == STEPS
    evals = monitor.latest.layer("net.0").evals  # step 10's
    positive = np.log10(evals[evals > 0])
    latest = histograms[10]
    assert latest["spectral/esd_log10/net.0/_type"] == "histogram"
    assert sum(latest["spectral/esd_log10/net.0/values"]) == positive.size
    bins = latest["spectral/esd_log10/net.0/bins"]
    assert bins[0] == pytest.approx(positive.min()) and bins[-1] == pytest.approx(positive.max())

    tables = at("spectral/verdicts/_type")
    assert sorted(tables) == STEPS and tables[10]["spectral/verdicts/_type"] == "table-file"
    table = json.loads((run_dir / "files" / tables[10]["spectral/verdicts/path"]).read_text())
    columns, expected = verdict_rows(monitor.latest)
    assert table["columns"] == columns and len(table["data"]) == len(LAYERS)
    for got, want in zip(table["data"], expected, strict=True):
        record = dict(zip(columns, got, strict=True))
        wanted = dict(zip(columns, want, strict=True))
        assert record["layer"] == wanted["layer"] and record["verdict"] == wanted["verdict"]
        assert record["reliable"] is True and record["alpha"] == pytest.approx(wanted["alpha"])

    heatmaps = at("spectral/alpha_heatmap/_type")
    assert sorted(heatmaps) == STEPS  # histogram_every=1: a heatmap with every analysis
    esd = at("spectral/esd_fit/net.7/_type")
    assert sorted(esd) == STEPS
    for key, row in (("spectral/alpha_heatmap", heatmaps[10]), ("spectral/esd_fit/net.7", esd[10])):
        assert row[f"{key}/_type"] == "image-file"
        with Image.open(run_dir / "files" / row[f"{key}/path"]) as image:
            assert image.size == (row[f"{key}/width"], row[f"{key}/height"])


# --- MLflow ----------------------------------------------------------------------------------


def check_mlflow_run(uri: str, run_id: str, monitor: SpectralMonitor, tmp_path: Path) -> None:
    """Scalars as metrics, the verdict table of each analysis as a CSV artifact, the figures as
    step-indexed images — read back through ``MlflowClient``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_metric_history(run_id, "spectral/alpha_mean")
    assert [m.step for m in metrics] == STEPS
    assert [m.value for m in metrics] == pytest.approx(monitor.history.aggregates["alpha_mean"])

    files = [f.path for f in client.list_artifacts(run_id, "spectral/verdicts")]
    assert files == [f"spectral/verdicts/step_{s:08d}.csv" for s in STEPS]
    local = client.download_artifacts(run_id, files[-1], str(tmp_path / "download"))
    with open(local, newline="") as handle:
        table = list(csv.DictReader(handle))
    latest = monitor.latest
    assert [r["layer"] for r in table] == LAYERS
    for row, la in zip(table, latest.layers, strict=True):
        assert float(row["alpha"]) == la.alpha and row["reliable"] == str(la.reliable)
        assert row["verdict"] == la.verdict

    images = [f.path for f in client.list_artifacts(run_id, "images")]
    for key in ("spectral~alpha_heatmap", "spectral~esd_fit~net.0"):
        found = [p for p in images if p.startswith(f"images/{key}+step+10+") and p.endswith(".png")]
        assert len(found) == 1, (key, images)
        with Image.open(client.download_artifacts(run_id, found[0], str(tmp_path / "img"))) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    heatmap_steps = {
        int(p.split("+step+")[1].split("+")[0])
        for p in images
        if p.startswith("images/spectral~alpha_heatmap+") and p.endswith(".png")
    }
    assert heatmap_steps == set(STEPS)
    assert not any("esd_log10" in p for p in images)  # no histograms: MLflow has no such type


def mlflow_not_sent(messages: list[str]) -> None:
    assert not_sent(messages) == [
        "SpectralMonitor: MLFlowLogger cannot take the histograms of log10 λ per layer; they are "
        "not sent to it (the scalars are)."
    ]


def test_mlflow_logger_with_a_sqlite_store(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = MLFlowLogger(
        experiment_name="spectral",
        tracking_uri=uri,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )
    monitor, messages = fit(logger, log_figures_every=1)
    mlflow_not_sent(messages)
    check_mlflow_run(uri, logger.run_id, monitor, tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_mlflow_logger_with_a_real_server(tmp_path) -> None:
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
            "--artifacts-destination", str(tmp_path / "served"),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer"
            time.sleep(1)
        logger = MLFlowLogger(experiment_name="spectral", tracking_uri=uri)
        monitor, messages = fit(logger, log_figures_every=1)
        mlflow_not_sent(messages)
        check_mlflow_run(uri, logger.run_id, monitor, tmp_path)
        assert list((tmp_path / "served").rglob("step_00000010.csv"))  # stored by the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: its own group
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
