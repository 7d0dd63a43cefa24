"""The spectral-monitor command line on real files: a Lightning checkpoint from a training run,
a state dict, a pickled module, safetensors, bad inputs, and a run's TensorBoard events."""

from __future__ import annotations

import csv
import io
import subprocess
import sys

import pytest
import torch
from conftest import small_cnn
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, trainer

from spectral_monitor import SpectralMonitor, analyze
from spectral_monitor.cli import main


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    model = ConvNet()
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    run = trainer(
        max_steps=10,
        callbacks=[monitor, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_checkpointing=True,
        logger=TensorBoardLogger(root, name="tb"),
    )
    run.fit(model, image_loader())
    return root, model, monitor


def test_analyze_lightning_checkpoint_csv_equals_analyze(trained_run, tmp_path) -> None:
    root, model, _ = trained_run
    code, text = run_cli(
        "analyze", str(root / "ckpt" / "last.ckpt"), "--csv", str(tmp_path / "t.csv")
    )
    assert code == 0
    assert "net.5" in text and "alpha_mean=" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    expected = analyze(model)
    assert [r["name"] for r in rows] == [la.name for la in expected.layers]
    for row, layer in zip(rows, expected.layers, strict=True):
        if layer.skipped is None:
            assert float(row["alpha"]) == pytest.approx(layer.alpha, rel=1e-9)
            assert float(row["lambda_max"]) == pytest.approx(layer.lambda_max, rel=1e-9)
        else:
            assert row["skipped"] == layer.skipped


def test_analyze_safetensors_state_dict_and_module(tmp_path) -> None:
    from safetensors.torch import save_file

    model = small_cnn()
    save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "module.pt")
    expected = analyze(model, conv="slices", normalize=False)
    for name in ("w.safetensors", "sd.pt"):
        code, _ = run_cli(
            "analyze", str(tmp_path / name), "--conv", "slices", "--no-normalize",
            "--json", str(tmp_path / f"{name}.json"),
        )  # fmt: skip
        assert code == 0
        import json

        data = json.loads((tmp_path / f"{name}.json").read_text())
        alphas = [row["alpha"] for row in data["layers"] if row["skipped"] is None]
        assert alphas == pytest.approx([la.alpha for la in expected.fitted], rel=1e-9)
    code, _ = run_cli("analyze", str(tmp_path / "module.pt"))
    assert code == 4  # a pickled module needs --trust-pickle
    code, text = run_cli("analyze", str(tmp_path / "module.pt"), "--trust-pickle")
    assert code == 0 and "alpha_mean=" in text


def test_analyze_writes_real_pngs(tmp_path) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    code, _text = run_cli("analyze", str(tmp_path / "sd.pt"), "--plots", str(tmp_path / "plots"))
    assert code == 0
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert len(pngs) == 6  # alpha by layer + one ESD per fitted layer (reliable or not)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_bad_inputs_have_clear_errors_and_exit_codes(tmp_path, capsys) -> None:
    code, _ = run_cli("analyze", str(tmp_path / "missing.ckpt"))
    assert code == 3 and "no such file" in capsys.readouterr().err
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint")
    code, _ = run_cli("analyze", str(tmp_path / "junk.bin"))
    assert code == 4 and "cannot read" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    code, _ = run_cli("analyze", str(tmp_path / "bad.safetensors"))
    assert code == 4 and "safetensors" in capsys.readouterr().err
    torch.save({"step": 3, "note": "no tensors"}, tmp_path / "empty.pt")
    code, _ = run_cli("analyze", str(tmp_path / "empty.pt"))
    assert code == 4 and "no named weight tensors" in capsys.readouterr().err
    torch.save({"norm.weight": torch.ones(8), "norm.bias": torch.zeros(8)}, tmp_path / "ln.pt")
    code, _ = run_cli("analyze", str(tmp_path / "ln.pt"))
    assert code == 5 and "no analysable layer" in capsys.readouterr().err
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    code, _ = run_cli("analyze", str(tmp_path / "sd.pt"), "--min-evals", "1")
    assert code == 2 and "min_evals" in capsys.readouterr().err
    code, _ = run_cli("history", str(tmp_path / "nowhere"))
    assert code == 3
    code, _ = run_cli("history", str(tmp_path))
    assert code == 4 and "no TensorBoard events" in capsys.readouterr().err


def test_history_reads_a_run_back(trained_run, tmp_path) -> None:
    root, _, monitor = trained_run
    code, text = run_cli("history", str(root / "tb"), "--csv", str(tmp_path / "h.csv"))
    assert code == 0
    assert "3 analyses, steps 0..10" in text and "net.7" in text
    rows = list(csv.DictReader((tmp_path / "h.csv").open()))
    assert {int(r["step"]) for r in rows} == {0, 5, 10}
    _steps, alphas = monitor.history.alpha("net.7")
    logged = [float(r["alpha"]) for r in rows if r["layer"] == "net.7"]
    assert logged == pytest.approx(alphas, rel=1e-6)


def test_console_script_and_module_entry_points(tmp_path) -> None:
    torch.save(small_cnn().state_dict(), tmp_path / "sd.pt")
    done = subprocess.run(
        [sys.executable, "-m", "spectral_monitor", "analyze", str(tmp_path / "sd.pt")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "alpha_mean=" in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "spectral_monitor", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "exit codes" in done.stdout
