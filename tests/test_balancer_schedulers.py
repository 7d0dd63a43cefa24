"""SpectralBalancer under the schedulers that keep per-group state of their own:
ReduceLROnPlateau (stepped by Lightning on a logged metric, per-group ``min_lrs``) and CyclicLR
(per-group ``base_lrs``/``max_lrs`` and, with ``cycle_momentum``, per-group momenta). Each
balanced group must carry its parent's scheduled lr times the layer's factor, and the scheduler
must keep working for the new groups; a reference optimizer without the balancer, stepped the
same way, gives the scheduled values."""

from __future__ import annotations

from typing import Any

import lightning as L
import pytest
import torch
from lightning_helpers import TRUST_TINY, RandomLabelMLP, random_label_loader, trainer

from spectral_monitor import SpectralBalancer, SpectralMonitor

LAYERS = ("net.0", "net.2", "net.4")
STEPS_PER_EPOCH = 5
Schedule = dict[str, Any]  # what configure_optimizers returns under "lr_scheduler"


def _two_groups(params: list[tuple[str, torch.nn.Parameter]]) -> torch.optim.SGD:
    """Weights at lr 0.05 with decay, biases at lr 0.02: two user groups, SGD with momentum."""
    weights = [p for n, p in params if n.endswith("weight")]
    biases = [p for n, p in params if n.endswith("bias")]
    return torch.optim.SGD(
        [{"params": weights, "weight_decay": 1e-3}, {"params": biases, "lr": 0.02}],
        lr=0.05,
        momentum=0.9,
    )


def _plateau(opt: torch.optim.Optimizer) -> Schedule:
    # threshold 0.5: only a halving of val_loss counts as progress, so on random labels every
    # epoch after the first is a plateau (the reference run below counts the reductions). A
    # per-group min_lr list makes the scheduler raise if min_lrs was not extended.
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=0, threshold=0.5, min_lr=[1e-4, 1e-5]
    )
    return {"scheduler": plateau, "monitor": "val_loss"}


def _cyclic(opt: torch.optim.Optimizer) -> Schedule:
    cyclic = torch.optim.lr_scheduler.CyclicLR(
        opt,
        base_lr=[0.01, 0.004],
        max_lr=[0.1, 0.04],
        step_size_up=3,
        step_size_down=4,
        cycle_momentum=True,
        base_momentum=[0.8, 0.7],
        max_momentum=[0.95, 0.9],
    )
    return {"scheduler": cyclic, "interval": "step"}


class Scheduled(RandomLabelMLP):
    """The demo MLP (logs ``val_loss``) with two param groups and the given scheduler."""

    def __init__(self, schedule: Any) -> None:
        super().__init__(lr=0.05)
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = _two_groups(list(self.named_parameters()))
        return {"optimizer": opt, "lr_scheduler": self.schedule(opt)}


class Probe(L.Callback):
    """Before every optimizer step: the step, each group's (lr, momentum) by name, the factors;
    at every epoch end (before Lightning steps the plateau scheduler): ``val_loss``."""

    def __init__(self, balancer: SpectralBalancer) -> None:
        self.balancer = balancer
        self.rows: list[tuple[int, dict[str, tuple[float, float]], dict[str, float]]] = []
        self.val_losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        groups = {
            g.get("name", f"user{i}"): (g["lr"], g["momentum"])
            for i, g in enumerate(optimizer.param_groups)
        }
        self.rows.append((trainer.global_step, groups, dict(self.balancer.factors)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.val_losses.append(float(trainer.callback_metrics["val_loss"]))


def _fit(schedule: Any, epochs: int) -> tuple[L.Trainer, Probe, SpectralBalancer]:
    balancer = SpectralBalancer(target="lr", skip_first_last=False)
    monitor = SpectralMonitor(every_n_steps=STEPS_PER_EPOCH, mode="sync", **TRUST_TINY)
    probe = Probe(balancer)
    t = trainer(
        max_epochs=epochs,
        limit_train_batches=STEPS_PER_EPOCH,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[monitor, balancer, probe],
    )
    t.fit(Scheduled(schedule), random_label_loader(), random_label_loader(n=16, seed=1))
    return t, probe, balancer


def _reference(schedule: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The same groups and scheduler without the balancer (parameters are never stepped:
    the schedules do not depend on them)."""
    opt = _two_groups(list(RandomLabelMLP().named_parameters()))
    return opt, schedule(opt)["scheduler"]


def _check_rows(
    probe: Probe, scheduled: dict[int, list[tuple[float, float]]], momentum_too: bool
) -> None:
    """User group k holds its scheduled lr; every balanced group ``pg<k+1>/<layer>`` holds
    that lr × the layer's factor (and, when the scheduler cycles it, group k's momentum)."""
    assert any(f != 1.0 for _, _, factors in probe.rows for f in factors.values())
    for step, groups, factors in probe.rows:
        for k, (lr, momentum) in enumerate(scheduled[step]):
            assert groups[f"user{k}"][0] == pytest.approx(lr), (step, k)  # the user's own
            for name in LAYERS:
                got_lr, got_momentum = groups[f"pg{k + 1}/{name}"]
                assert got_lr == pytest.approx(lr * factors[name]), (step, k, name)
                if momentum_too:
                    assert got_momentum == pytest.approx(momentum), (step, k, name)


@pytest.mark.slow
def test_reduce_lr_on_plateau_keeps_reducing_the_balanced_groups() -> None:
    t, probe, balancer = _fit(_plateau, epochs=4)
    opt, plateau = _reference(_plateau)
    # Base lrs per epoch: the reference stepped on the val_loss of each finished epoch.
    per_epoch = [[(g["lr"], g["momentum"]) for g in opt.param_groups]]
    for loss in probe.val_losses:
        plateau.step(loss)
        per_epoch.append([(g["lr"], g["momentum"]) for g in opt.param_groups])
    assert len(probe.val_losses) == 4
    assert len({lrs[0][0] for lrs in per_epoch}) >= 3  # reduced at least twice
    scheduled = {step: per_epoch[step // STEPS_PER_EPOCH] for step, _, _ in probe.rows}
    _check_rows(probe, scheduled, momentum_too=False)
    # After the last epoch's reduction too, and the new groups got their parent's min_lr.
    groups = t.optimizers[0].param_groups
    final = per_epoch[-1]
    for g in groups[2:]:
        parent = 0 if g["name"].startswith("pg1/") else 1
        (layer,) = g["spectral_layers"]
        assert g["lr"] == pytest.approx(final[parent][0] * balancer.factors[layer])
    assert [g["lr"] for g in groups[:2]] == pytest.approx([lr for lr, _ in final])
    (config,) = t.lr_scheduler_configs
    assert config.scheduler.min_lrs == [1e-4, 1e-5, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5]


@pytest.mark.slow
def test_cyclic_lr_cycles_lr_times_factor_and_momentum_of_the_balanced_groups() -> None:
    t, probe, _ = _fit(_cyclic, epochs=3)
    opt, cyclic = _reference(_cyclic)
    scheduled = {}
    for step in range(3 * STEPS_PER_EPOCH):
        scheduled[step] = [(g["lr"], g["momentum"]) for g in opt.param_groups]
        opt.step()  # no gradients: changes nothing, keeps torch's step-order check quiet
        cyclic.step()
    _check_rows(probe, scheduled, momentum_too=True)
    # Both went round more than once (up 3 steps, down 4) in the balanced groups.
    seen = [groups["pg2/net.2"] for _, groups, _ in probe.rows]
    assert len({round(m, 9) for _, m in seen}) >= 4
    assert seen[0][1] == pytest.approx(0.9) and seen[3][1] == pytest.approx(0.7)
    assert seen[7][1] == pytest.approx(0.9) and seen[10][1] == pytest.approx(0.7)
    sched = t.lr_scheduler_configs[0].scheduler
    assert len(sched.base_momentums) == len(sched.max_lrs) == len(t.optimizers[0].param_groups)
