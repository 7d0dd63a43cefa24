"""SpectralMonitor under Lightning's DDP: two CPU processes with the gloo backend."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning_helpers import TRUST_TINY, ConvNet

from spectral_monitor import analyze

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_run.py"


def run_ddp(out: Path, *extra: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "WORLD_SIZE"))}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *extra],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, slow_rank",
    [("ddp", None), ("ddp_spawn", None), ("fsdp2", None), ("fsdp2", 1)],
    ids=["ddp", "ddp-spawn", "fsdp2", "fsdp2-rank1-slow"],
)
def test_ranks_agree_and_rank_zero_writes_one_event_file(
    tmp_path, strategy: str, slow_rank: int | None
) -> None:
    """DDP, DDP with spawned ranks (the monitor is pickled into each) and FSDP2 (weights are
    DTensors: every rank gathers every layer, the owner analyses it), also with one rank slower
    than the other: the same results on both ranks, equal to analyze() of the final weights in one
    process, and one event file."""
    extra = ["--strategy", strategy] + (["--slow-rank", str(slow_rank)] if slow_rank else [])
    ranks = run_ddp(tmp_path, *extra)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["sharded"] == ranks[1]["sharded"] == (strategy == "fsdp2")
    h0, h1 = ranks[0]["history"], ranks[1]["history"]
    assert h0["aggregates"]["step"] == h1["aggregates"]["step"]
    assert h0["aggregates"]["step"][0] == 0 and h0["aggregates"]["step"][-1] <= 30
    # DDP keeps the replicas identical, so both ranks' analyses agree exactly.
    assert h0["layers"] == h1["layers"]
    assert ranks[0]["alpha_mean_metric"] == ranks[1]["alpha_mean_metric"] is not None
    # Each rank copied and analysed only its share of the layers, and none was skipped.
    shares = [r["snapshot_bytes"] for r in ranks]
    assert min(shares) > 0 and sum(shares) == ranks[0]["weight_bytes"]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 0
    assert h0["aggregates"]["step"] == [0, 10, 20, 30]
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert len(events) == 1
    if strategy == "ddp_spawn":  # the main process gets rank 0's metric back
        main_metric = json.loads((tmp_path / "main.json").read_text())["alpha_mean_metric"]
        assert main_metric == pytest.approx(ranks[0]["alpha_mean_metric"])
    # The last analysis equals analyze() of the final weights.
    model = ConvNet()
    model.load_state_dict(torch.load(tmp_path / "final.pt"))
    assert h0["aggregates"]["step"][-1] == ranks[0]["global_step"]
    expected = analyze(model, **TRUST_TINY)
    assert h0["aggregates"]["alpha_mean"][-1] == pytest.approx(expected.alpha_mean, rel=1e-6)
    last = {name: values["alpha"][-1] for name, values in h0["layers"].items()}
    assert last == pytest.approx({la.name: la.alpha for la in expected.layers}, rel=1e-6)


@pytest.mark.slow
def test_ddp_stop_decision_is_the_same_on_every_rank(tmp_path) -> None:
    ranks = run_ddp(tmp_path, "--stop-below", "2.0")
    assert ranks[0]["global_step"] == ranks[1]["global_step"] < 400
    assert ranks[0]["stopped_step"] == ranks[1]["stopped_step"] is not None
    means = ranks[0]["history"]["aggregates"]["alpha_mean"]
    assert any(a < 2.0 and b < 2.0 for a, b in itertools.pairwise(means))
    assert ranks[0]["history"] == ranks[1]["history"]


def test_layers_are_assigned_once_each_and_balanced_by_cost() -> None:
    from torch import nn

    from spectral_monitor.analysis.analyze import AnalysisConfig
    from spectral_monitor.live.distributed import assign_layers, layer_cost, merge_reports

    model = nn.Sequential(*[nn.Linear(64 * (1 + k % 3), 64 * (1 + k % 2)) for k in range(9)])
    config = AnalysisConfig.create()
    owners = assign_layers(model, config, 3)
    names = [n for n, _ in model.named_modules() if n]
    assert sorted(n for share in owners for n in share) == sorted(names)
    assert sum(len(share) for share in owners) == len(names)
    assert owners == assign_layers(model, config, 3)  # the same on every rank
    modules = dict(model.named_modules())
    loads = [sum(layer_cost(tuple(modules[n].weight.shape), "flatten") for n in s) for s in owners]
    biggest = max(layer_cost(tuple(m.weight.shape), "flatten") for m in model)
    assert max(loads) - min(loads) <= biggest  # greedy LPT: within one layer of balance

    full = analyze(model)
    parts = [analyze(model, layers=sorted(share)) for share in owners]
    merged = merge_reports(parts, names)
    assert [la.name for la in merged.layers] == names
    assert [la.alpha for la in merged.layers] == [la.alpha for la in full.layers]
