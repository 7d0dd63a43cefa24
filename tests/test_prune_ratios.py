"""AlphaPruning's per-layer sparsities: from reliable layers only, never >= 1 for a layer, the
global target kept, and the README's command on the Quick start's checkpoint."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from spectral_monitor import analyze, prune_ratios
from spectral_monitor.acting.prune_ratios import InfeasibleTargetError, capped_shares
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport
from spectral_monitor.cli import EXIT_INFEASIBLE, main

ROOT = Path(__file__).resolve().parents[1]


def layer(name: str, shape: tuple[int, ...], alpha: float, reliable: bool) -> LayerSpectrum:
    return LayerSpectrum(
        name, "linear", shape, alpha=alpha, reliable=reliable, verdict="well-trained"
    )


def weighted_mean(rows) -> float:
    return sum(r.num_params * r.sparsity for r in rows) / sum(r.num_params for r in rows)


def test_ratios_come_from_reliable_layers_only() -> None:
    report = SpectralReport(
        [
            layer("a", (64, 64), 2.0, True),
            layer("b", (64, 128), 3.0, True),
            layer("c", (32, 64), 4.0, True),
            layer("head", (10, 64), 9.0, False),  # unreliable: the largest alpha, no say
        ]
    )
    rows = {r.name: r for r in prune_ratios(report, 0.5, epsilon=0.2)}
    assert rows["head"].sparsity == 0.5 and not rows["head"].reliable
    raw = {"a": 0.8, "b": 1.0, "c": 1.2}  # 1 - ε .. 1 + ε over the reliable alphas 2..4
    sizes = {"a": 64 * 64, "b": 64 * 128, "c": 32 * 64}
    scale = 0.5 * sum(sizes.values()) / sum(sizes[k] * raw[k] for k in raw)
    assert {k: rows[k].sparsity for k in raw} == pytest.approx({k: raw[k] * scale for k in raw})
    assert weighted_mean(rows.values()) == pytest.approx(0.5)
    # An excluded layer keeps the uniform ratio too, and the others still meet the target.
    rows = {r.name: r for r in prune_ratios(report, 0.5, epsilon=0.2, exclude=["c"])}
    assert rows["c"].sparsity == 0.5 and not rows["c"].reliable
    assert rows["a"].sparsity < 0.5 < rows["b"].sparsity
    assert weighted_mean(rows.values()) == pytest.approx(0.5)


def test_no_layer_reaches_one_and_the_excess_is_redistributed() -> None:
    report = SpectralReport(
        [layer("small", (8, 64), 6.0, True), layer("big", (256, 256), 2.0, True)]
    )
    # AlphaPruning's own share for "small" would be 15.8 (ratio 1.9, "big" 0.1).
    rows = {r.name: r for r in prune_ratios(report, 0.95, epsilon=0.9)}
    assert rows["small"].sparsity == 0.99 and rows["small"].capped
    assert rows["big"].sparsity < 0.99 and not rows["big"].capped
    assert weighted_mean(rows.values()) == pytest.approx(0.95)
    with pytest.raises(InfeasibleTargetError, match="cannot be met"):
        prune_ratios(report, 0.995)
    with pytest.raises(ValueError, match="epsilon"):
        prune_ratios(report, 0.5, epsilon=1.0)
    with pytest.raises(ValueError, match="sparsity"):
        prune_ratios(report, 1.2)
    with pytest.raises(ValueError, match="max_sparsity"):
        prune_ratios(report, 0.5, max_sparsity=1.0)


def test_capped_shares_hold_the_target_under_the_cap() -> None:
    weights = {"a": 10.0, "b": 100.0, "c": 1000.0}
    ratios = {"a": 1.9, "b": 1.5, "c": 0.1}
    shares, capped = capped_shares(weights, ratios, target=0.9, cap=0.95)
    assert capped == {"a", "b"} and max(shares.values()) <= 0.95
    total = sum(weights[k] * shares[k] for k in weights) / sum(weights.values())
    assert total == pytest.approx(0.9)


def test_prune_ratios_command_prints_the_table_and_writes_json(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 256), nn.Linear(256, 64))
    torch.save(model.state_dict(), tmp_path / "m.pt")
    code = main(
        ["prune-ratios", str(tmp_path / "m.pt"), "--sparsity", "0.5", "--epsilon", "0.2",
         "--json", str(tmp_path / "out" / "r.json")]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "mean sparsity 0.5000" in out
    data = json.loads((tmp_path / "out" / "r.json").read_text())
    expected = prune_ratios(analyze(model), 0.5, 0.2)
    assert [r["sparsity"] for r in data["layers"]] == pytest.approx([r.sparsity for r in expected])
    assert main(["prune-ratios", str(tmp_path / "missing.pt"), "--sparsity", "0.5"]) == 3
    capsys.readouterr()
    # A target no allocation can meet is a property of the request on this model: exit 8, not
    # 2 (usage), one line on stderr.
    code = main(["prune-ratios", str(tmp_path / "m.pt"), "--sparsity", "0.995"])
    err = capsys.readouterr().err
    assert code == EXIT_INFEASIBLE and err.count("\n") == 1 and "cannot be met" in err


@pytest.mark.slow
def test_readme_prune_ratios_runs_on_the_quick_start_checkpoint(tmp_path, capsys) -> None:
    """README: `spectral-monitor prune-ratios CKPT --sparsity 0.7` on the checkpoint that
    `python examples/train_image.py` writes (20 steps here; before, it exited 2: "asks net.9 to
    prune 1.243 of its weights")."""
    spec = importlib.util.spec_from_file_location("train_image", ROOT / "examples/train_image.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--max-steps", "20", "--every-n-steps", "10", "--logdir", str(tmp_path)])
    (checkpoint,) = (tmp_path / "digits").rglob("*.ckpt")
    capsys.readouterr()
    code = main(
        ["prune-ratios", str(checkpoint), "--sparsity", "0.7", "--json", str(tmp_path / "r.json")]
    )
    assert code == 0, capsys.readouterr().err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["step"] == 20
    rows = data["layers"]
    assert [r["name"] for r in rows] == ["net.0", "net.3", "net.7", "net.9"]
    assert all(0.0 <= r["sparsity"] < 1.0 for r in rows)
    mean = sum(r["num_params"] * r["sparsity"] for r in rows) / sum(r["num_params"] for r in rows)
    assert mean == pytest.approx(0.7)
    # Every layer whose alpha is unreliable keeps the uniform sparsity.
    report = analyze_checkpoint(checkpoint)
    for row in rows:
        reliable = report[row["name"]]
        assert row["reliable"] == reliable
        if not reliable:
            assert row["sparsity"] == 0.7
        assert row["alpha"] is None or math.isfinite(row["alpha"])


def analyze_checkpoint(path: Path) -> dict[str, bool]:
    """{layer: reliable} of the checkpoint's weights, through the public API."""
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    from spectral_monitor.analysis.analyze import analyze_snapshot
    from spectral_monitor.analysis.config import AnalysisConfig
    from spectral_monitor.analysis.snapshot import snapshot_state_dict

    config = AnalysisConfig.create()
    report = analyze_snapshot(snapshot_state_dict(state, config), config)
    return {la.name: la.reliable for la in report.layers}
