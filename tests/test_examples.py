"""The examples and the LightningCLI configs, run for a few steps as a new user would."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from lightning_helpers import assert_analysed_steps, read_events, scalar_steps

from spectral_monitor.demo import FashionMNISTDataModule, read_idx

ROOT = Path(__file__).resolve().parents[1]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_image_example_on_digits_writes_events(tmp_path, capsys) -> None:
    monitor = load_example("train_image").main(
        ["--max-steps", "20", "--every-n-steps", "10", "--logdir", str(tmp_path)]
    )
    out = capsys.readouterr().out
    assert "alpha_mean=" in out
    assert f"tensorboard --logdir {tmp_path} --samples_per_plugin images=100" in out
    assert_analysed_steps(monitor, [0, 10, 20])
    events = read_events(tmp_path / "digits")
    # In 20 steps no layer of the digits CNN has a trusted fit yet (README "What reliable
    # means"; after the example's full 360 steps net.3 and net.7 do): every layer's alpha is
    # logged, with the number of reliable layers; aggregates come only from reliable layers.
    assert scalar_steps(events, "spectral/num_reliable") == monitor.history.steps
    assert "spectral/alpha/net.7" in events.Tags()["scalars"]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_loader_reads_idx_and_names_missing_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28))
    labels = rng.integers(0, 10, 20)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    data = FashionMNISTDataModule(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.setup()
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images[:5])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:5])
    data.setup()
    x, y = data.train_set[3]
    assert x.shape == (1, 28, 28) and float(x.max()) <= 1.0 and int(y) == labels[3]
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01")
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


@pytest.mark.slow
def test_image_example_on_fashion_mnist_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for stem, shape in (
        ("train-images-idx3-ubyte", (64, 28, 28)),
        ("t10k-images-idx3-ubyte", (16, 28, 28)),
    ):
        _write_idx(tmp_path / f"{stem}.gz", rng.integers(0, 256, shape))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 64))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 16))
    monitor = load_example("train_image").main(
        ["--data", "fashion-mnist", "--data-dir", str(tmp_path), "--max-steps", "2",
         "--every-n-steps", "1", "--logdir", str(tmp_path / "runs")]
    )  # fmt: skip
    assert_analysed_steps(monitor, [0, 1, 2])


@pytest.mark.slow
def test_charlm_example(tmp_path) -> None:
    monitor = load_example("train_charlm").main(
        ["--max-steps", "6", "--every-n-steps", "3", "--dim", "32", "--logdir", str(tmp_path)]
    )
    assert_analysed_steps(monitor, [0, 3, 6])
    names = set(monitor.history.layers)
    assert "blocks.0.qkv" in names and "head" in names and "embed" not in names


@pytest.mark.slow
def test_over_regularization_example_stops_below_two(tmp_path, capsys) -> None:
    monitor = load_example("over_regularization").main(["--logdir", str(tmp_path)])
    assert monitor.stop_reason is not None
    assert monitor.history.aggregates["alpha_mean"][-1] < 2.0
    assert monitor.stopped_step < 1000
    assert "stopped at step" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("config", ["digits", "charlm", "over_regularization"])
def test_configs_run_through_lightning_cli(tmp_path, config, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = load_example("lightning_cli").main(
        ["fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--trainer.max_steps", "4"]
    )
    monitors = [c for c in cli.trainer.callbacks if type(c).__name__ == "SpectralMonitor"]
    assert len(monitors) == 1
    assert monitors[0].history.steps[0] == 0
    run_dir = next((tmp_path / "runs").iterdir())
    events = read_events(run_dir)
    # Every layer's alpha is logged from the first analysis; aggregates only once a layer's fit
    # is reliable (at initialisation, in 4 steps, none is).
    assert "spectral/num_reliable" in events.Tags()["scalars"]
    assert any(tag.startswith("spectral/alpha/") for tag in events.Tags()["scalars"])
