"""SpectralBalancer: factors from the monitor's alphas, written into per-layer param groups on
top of the user's schedule; prune-ratios."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning_helpers import TRUST_TINY, RandomLabelMLP, random_label_loader, trainer
from torch import nn

from spectral_monitor import SpectralBalancer, SpectralMonitor
from spectral_monitor.acting.balance_factors import (
    block_of,
    layer_factors,
    linear_factors,
    sigmoid_factors,
)
from spectral_monitor.acting.param_groups import LAYERS_KEY, extend_schedulers, split_param_groups
from spectral_monitor.analysis.report import LayerSpectrum, SpectralReport

SCRIPT = Path(__file__).resolve().parent / "scripts" / "ddp_balance.py"


def _report(alphas: dict[str, float], unreliable: tuple[str, ...] = ()) -> SpectralReport:
    layers = [
        LayerSpectrum(
            name, "linear", (64, 64), alpha=a, reliable=name not in unreliable, verdict="x"
        )
        for name, a in alphas.items()
    ]
    return SpectralReport(layers, step=0)


# --- the maps --------------------------------------------------------------------------------


def test_linear_and_sigmoid_maps_follow_the_papers_formulas() -> None:
    alphas = {"a": 2.0, "b": 3.0, "c": 6.0}
    assert linear_factors(alphas, 0.5, 1.5) == pytest.approx({"a": 0.5, "b": 0.75, "c": 1.5})
    assert linear_factors({"a": 3.0, "b": 3.0}, 0.5, 1.5) == {"a": 1.0, "b": 1.0}
    mean = 11 / 3
    expected = {
        k: 10 ** (0.25 * (1 / (1 + math.exp(-10 * (a - mean))) - 0.5)) for k, a in alphas.items()
    }
    assert sigmoid_factors(alphas, 0.25, 10.0) == pytest.approx(expected)
    assert block_of("model.layers.3.self_attn.q_proj") == "model.layers.3"
    assert block_of("blocks.0.fc1") == "blocks.0"
    assert block_of("net.4") == "net" and block_of("fc") == ""


def test_unreliable_excluded_and_end_layers_keep_one_and_blocks_share_a_factor() -> None:
    report = _report(
        {"embed": 9.0, "b.0.q": 2.0, "b.0.k": 4.0, "b.1.q": 5.0, "b.1.k": 3.0, "x": 7.0,
         "head": 1.0},
        unreliable=("x",),
    )  # fmt: skip
    f = layer_factors(report, skip_first_last=True)
    assert f["embed"] == f["head"] == f["x"] == 1.0  # ends, unreliable
    assert f["b.0.q"] == 0.5 and f["b.1.q"] == 1.5  # the map over the four reliable middles
    assert f["b.0.k"] == pytest.approx(0.5 + 2 / 3) and f["b.1.k"] == pytest.approx(0.5 + 1 / 3)
    f = layer_factors(report, exclude=["b.1.*"], skip_first_last=True)
    assert f["b.1.q"] == f["b.1.k"] == 1.0 and f["b.0.q"] == 0.5 and f["b.0.k"] == 1.5
    blocks = layer_factors(report, group="block", skip_first_last=True)
    assert blocks["b.0.q"] == blocks["b.0.k"] == 0.5  # block means 3.0 and 4.0
    assert blocks["b.1.q"] == blocks["b.1.k"] == 1.5


def test_arguments_are_validated_with_their_names() -> None:
    for kwargs, name in [
        ({"target": "momentum"}, "target"),
        ({"mapping": "cubic"}, "mapping"),
        ({"group": "head"}, "group"),
        ({"low": -1.0}, "low"),
        ({"low": 2.0, "high": 1.0}, "high"),
        ({"ramp_steps": -1}, "ramp_steps"),
        ({"temperature": 0}, "temperature"),
        ({"skip_first_last": "yes"}, "skip_first_last"),
        ({"exclude": [3]}, "exclude"),
    ]:
        with pytest.raises(ValueError, match=name):
            SpectralBalancer(**kwargs)
    assert (SpectralBalancer(target="weight_decay").low, SpectralBalancer().high) == (0.667, 1.5)


# --- param groups and schedulers ---------------------------------------------------------


def test_split_groups_follow_their_parents_schedule() -> None:
    """LambdaLR (a per-group list of functions) and OneCycleLR (per-group entries in the group)
    on two param groups: after the split every new group has its parent's value at every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    reference = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))

    def make(m: nn.Module) -> tuple[torch.optim.Optimizer, list[Any]]:
        opt = torch.optim.SGD(
            [{"params": m[0].parameters(), "lr": 0.1}, {"params": [*m[1:].parameters()]}],
            lr=0.01,
            momentum=0.9,
        )
        lam = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 0.9**s, lambda s: 1 / (1 + s)])
        return opt, [lam]

    opt, schedulers = make(model)
    ref, ref_schedulers = make(reference)
    owners = {id(p): ("0",) for p in [*model[0].parameters(), *model[1].parameters()]}
    owners |= {id(p): ("2",) for p in model[2].parameters()}
    parents = split_param_groups(opt, owners)
    extend_schedulers(schedulers, 2, parents)
    assert parents == [0, 1, 1]  # 0's weight+bias; 1's BatchNorm (follows layer 0) and layer 2
    assert [g["name"] for g in opt.param_groups[2:]] == ["pg1/0", "pg2/0", "pg2/2"]
    assert [len(g["params"]) for g in opt.param_groups] == [0, 0, 2, 2, 2]
    assert split_param_groups(opt, owners) == []  # once only
    for _ in range(5):
        opt.step(), ref.step()
        schedulers[0].step(), ref_schedulers[0].step()
        lrs = [g["lr"] for g in opt.param_groups]
        expected = [g["lr"] for g in ref.param_groups]
        assert lrs == pytest.approx([*expected, *(expected[p] for p in parents)])

    # Linear warm-up then cosine (SequentialLR: the inner schedulers are extended too).
    opt, ref = (torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, reference))
    warm = [
        torch.optim.lr_scheduler.SequentialLR(
            o,
            [
                torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=3),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=5),
            ],
            milestones=[3],
        )
        for o in (opt, ref)
    ]
    parents = split_param_groups(opt, owners)
    extend_schedulers(warm[:1], 1, parents)
    for _ in range(7):
        opt.step(), ref.step(), warm[0].step(), warm[1].step()
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([ref.param_groups[0]["lr"]] * 3)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10)
    parents = split_param_groups(opt, owners)
    extend_schedulers([cycle], 1, parents)
    for _ in range(4):
        opt.step(), cycle.step()
    assert len({g["lr"] for g in opt.param_groups}) == 1
    assert opt.param_groups[1]["betas"] == opt.param_groups[0]["betas"]


class TwoGroupCosine(RandomLabelMLP):
    """Two param groups (weights with decay, biases without, different lr) and a per-step cosine
    schedule."""

    def __init__(self, total: int = 40) -> None:
        super().__init__(lr=0.05)
        self.total = total

    def configure_optimizers(self) -> Any:
        weights = [p for n, p in self.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in self.named_parameters() if n.endswith("bias")]
        opt = torch.optim.SGD(
            [{"params": weights, "weight_decay": 1e-3}, {"params": biases, "lr": 0.02}],
            lr=0.05,
            momentum=0.9,
        )
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


class Probe(L.Callback):
    """Records, before every optimizer step, the lr of every balanced group, its factor and the
    step; also ``monitor.latest``'s alphas when they change."""

    def __init__(self, balancer: SpectralBalancer, monitor: SpectralMonitor) -> None:
        self.balancer, self.monitor = balancer, monitor
        self.rows: list[tuple[int, dict[str, float], dict[str, float]]] = []
        self.reports: list[SpectralReport] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        lrs = {g.get("name"): g["lr"] for g in optimizer.param_groups}
        self.rows.append((trainer.global_step, lrs, dict(self.balancer.factors)))
        latest = self.monitor.latest
        if latest is not None and (not self.reports or self.reports[-1].step != latest.step):
            self.reports.append(latest)


def _cosine(base: float, step: int, total: int) -> float:
    return base * (1 + math.cos(math.pi * step / total)) / 2


def _fit(tmp_path: Path, balancer: SpectralBalancer, steps: int = 40, **kw: Any):
    monitor = SpectralMonitor(every_n_steps=10, mode="sync", **{**TRUST_TINY, **kw})
    probe = Probe(balancer, monitor)
    model = TwoGroupCosine()
    t = trainer(
        max_steps=steps,
        callbacks=[monitor, balancer, probe, LearningRateMonitor()],
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
    )
    t.fit(model, random_label_loader())
    return t, monitor, probe


@pytest.mark.slow
def test_group_values_are_the_scheduled_value_times_the_factor_of_the_monitors_alpha(
    tmp_path,
) -> None:
    balancer = SpectralBalancer(skip_first_last=False)
    t, _, probe = _fit(tmp_path, balancer)
    names = ["net.0", "net.2", "net.4"]
    assert len(probe.reports) >= 3  # factors were updated during the run
    for report in probe.reports:
        alphas = {la.name: la.alpha for la in report.layers}
        expected = linear_factors(alphas, 0.5, 1.5)
        steps = [s for s, _, f in probe.rows if f == pytest.approx(expected)]
        assert steps, f"factors of the report at step {report.step} never applied"
    for step, lrs, factors in probe.rows:
        # The user's groups keep the scheduled value; each layer's groups (weight+bias from the
        # two user groups) carry the parent's scheduled value times the layer's factor.
        for name in names:
            assert lrs[f"pg1/{name}"] == pytest.approx(_cosine(0.05, step, 40) * factors[name])
            assert lrs[f"pg2/{name}"] == pytest.approx(_cosine(0.02, step, 40) * factors[name])
    assert sorted(set(balancer.factors.values())) != [1.0]
    assert min(balancer.factors.values()) == 0.5 and max(balancer.factors.values()) == 1.5
    groups = t.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0, 1e-3, 1e-3, 1e-3, 0.0, 0.0, 0.0]
    # LearningRateMonitor shows the per-layer values; the factors are logged too.
    header = next((tmp_path / "csv").rglob("metrics.csv")).read_text().splitlines()[0]
    assert "lr-SGD/pg1/net.2" in header and "spectral/lr_factor/net.2" in header


@pytest.mark.slow
def test_unreliable_layers_keep_factor_one_and_lr_is_the_users(tmp_path) -> None:
    balancer = SpectralBalancer(skip_first_last=False)
    monitor = SpectralMonitor(every_n_steps=10, mode="sync")  # default trust: tiny layers fail
    t = trainer(max_steps=20, callbacks=[monitor, balancer])
    t.fit(TwoGroupCosine(), random_label_loader())
    assert monitor.latest is not None and not monitor.latest.reliable
    assert balancer.factors == {"net.0": 1.0, "net.2": 1.0, "net.4": 1.0}
    lrs = [g["lr"] for g in t.optimizers[0].param_groups]
    assert lrs[2:5] == [lrs[0]] * 3 and lrs[5:] == [lrs[1]] * 3 and lrs[0] > lrs[1] > 0


class WarmupInOptimizerStep(RandomLabelMLP):
    """A manual warm-up written into the groups in ``optimizer_step`` (a common pattern)."""

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        scale = min(1.0, (self.trainer.global_step + 1) / 10)
        for group in optimizer.param_groups:
            group["lr"] = scale * 0.1
        optimizer.step(closure=optimizer_closure)


@pytest.mark.slow
def test_values_written_by_user_code_become_the_base(tmp_path) -> None:
    balancer = SpectralBalancer(skip_first_last=False, target="lr")
    monitor = SpectralMonitor(every_n_steps=5, mode="sync", **TRUST_TINY)

    seen: list[tuple[int, float, float]] = []

    class Look(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            group = next(g for g in trainer.optimizers[0].param_groups if g.get("name") == "net.4")
            seen.append((trainer.global_step, group["lr"], balancer.factors["net.4"]))

    t = trainer(max_steps=12, callbacks=[monitor, balancer, Look()])
    t.fit(WarmupInOptimizerStep(lr=0.1), random_label_loader())
    # At the end of batch s the group holds what the optimizer used at step s: the warm-up
    # value of that step times the layer's factor (factors change only at batch start).
    for step, lr, factor in seen:
        assert lr == pytest.approx(min(1.0, step / 10) * 0.1 * factor)
    assert {f for _, _, f in seen} != {1.0}


@pytest.mark.slow
def test_ramp_moves_factors_linearly_and_resume_restores_them(tmp_path) -> None:
    balancer = SpectralBalancer(skip_first_last=False, ramp_steps=4)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=20)
    monitor = SpectralMonitor(every_n_steps=10, mode="sync", **TRUST_TINY)
    probe = Probe(balancer, monitor)
    t = trainer(max_steps=20, callbacks=[monitor, balancer, probe, ckpt], enable_checkpointing=True)
    t.fit(TwoGroupCosine(), random_label_loader())
    # The first report (step 0) moves the factors from 1 to their goal over 4 steps.
    f = {step: factors["net.4"] for step, _, factors in probe.rows}
    goal = f[5]
    assert goal != 1.0
    assert [f[s] for s in range(5)] == pytest.approx([1 + (goal - 1) * s / 4 for s in range(5)])
    saved = dict(balancer.factors)
    lrs = {g.get("name"): g["lr"] for g in t.optimizers[0].param_groups}

    balancer2 = SpectralBalancer(skip_first_last=False, ramp_steps=4)
    monitor2 = SpectralMonitor(every_n_steps=10, mode="sync", **TRUST_TINY)
    probe2 = Probe(balancer2, monitor2)
    t2 = trainer(
        max_steps=21, callbacks=[monitor2, balancer2, probe2, LearningRateMonitor()],
        logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"),
    )  # fmt: skip
    t2.fit(TwoGroupCosine(), random_label_loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    step, resumed_lrs, factors = probe2.rows[0]
    assert step == 20 and factors == saved
    # The first resumed step uses the saved factors on the scheduled value of step 20.
    assert resumed_lrs == pytest.approx(lrs) and len(lrs) == 7


@pytest.mark.slow
def test_two_monitors_need_monitor_prefix(tmp_path) -> None:
    a, b = SpectralMonitor(prefix="a"), SpectralMonitor(prefix="b")
    with pytest.raises(ValueError, match="monitor_prefix"):
        trainer(max_steps=1, callbacks=[a, b, SpectralBalancer()]).fit(
            TwoGroupCosine(), random_label_loader()
        )
    balancer = SpectralBalancer(monitor_prefix="b", target="weight_decay")
    trainer(max_steps=1, callbacks=[a, b, balancer]).fit(TwoGroupCosine(), random_label_loader())
    assert set(balancer.factors) == {"net.0", "net.2", "net.4"}


@pytest.mark.slow
def test_ddp_ranks_apply_the_same_factors(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCAL_RANK", "WORLD_SIZE"))}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["trace"] == ranks[1]["trace"]
    assert len({tuple(sorted(f.items())) for _, f in ranks[0]["trace"]}) >= 3  # factors moved
    assert ranks[0]["lrs"] == ranks[1]["lrs"]


def test_groups_tag_layers_for_reuse() -> None:
    model = nn.Linear(3, 3)
    opt = torch.optim.Adam(model.parameters())
    split_param_groups(opt, {id(model.weight): ("w",)})
    assert opt.param_groups[1][LAYERS_KEY] == ["w"]


@pytest.mark.slow
def test_balancing_config_runs_through_lightning_cli(tmp_path, monkeypatch) -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("cli", root / "examples" / "lightning_cli.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)
    cli = module.main(
        ["fit", "--config", str(root / "configs" / "balancing.yaml"), "--trainer.max_steps", "3"]
    )
    balancer = next(c for c in cli.trainer.callbacks if isinstance(c, SpectralBalancer))
    assert balancer.group == "block" and balancer.factors
    groups = cli.trainer.optimizers[0].param_groups
    names = {g["name"] for g in groups if LAYERS_KEY in g}
    assert {"blocks.0.qkv", "blocks.1.fc2", "head"} <= names
    for g in groups[1:]:
        layer = g[LAYERS_KEY][0]
        assert g["lr"] == pytest.approx(1e-3 * balancer.factors[layer])


@pytest.mark.slow
def test_lr_and_weight_decay_balancers_share_the_groups(tmp_path) -> None:
    lr = SpectralBalancer(skip_first_last=False)
    wd = SpectralBalancer(target="weight_decay", mapping="sigmoid", skip_first_last=False)
    monitor = SpectralMonitor(every_n_steps=10, mode="sync", **TRUST_TINY)
    t = trainer(max_steps=12, callbacks=[monitor, lr, wd])
    t.fit(TwoGroupCosine(), random_label_loader())
    groups = t.optimizers[0].param_groups
    assert len(groups) == 8  # split once, not twice
    for g in groups[2:5]:
        (name,) = g[LAYERS_KEY]
        assert g["lr"] == pytest.approx(_cosine(0.05, 12, 40) * lr.factors[name])
        assert g["weight_decay"] == pytest.approx(1e-3 * wd.factors[name])
    assert len(set(wd.factors.values())) == 3
