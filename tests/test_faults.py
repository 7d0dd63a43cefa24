"""The fault matrix: strange layers, precisions, compiled and changing models, solver failures and
a long run. Each outcome: training finishes, what could not be analysed is reported with a reason,
at most one clear warning, nothing fabricated."""

from __future__ import annotations

import gc
import math
import os
import threading
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, trainer
from torch import nn

import spectral_monitor.spectra.eigen as eigen_module
from spectral_monitor import SpectralMonitor, SpectralTracker, analyze


def no_monitor_threads() -> bool:
    return not [t for t in threading.enumerate() if t.name.startswith("spectral-monitor")]


class StrangeNet(ConvNet):
    """ConvNet plus layers that cannot be analysed: all zeros, rank 1, too small, frozen."""

    def __init__(self, poison_at: int | None = None) -> None:
        super().__init__()
        self.poison_at = poison_at
        self.zero = nn.Linear(10, 20)
        self.rank1 = nn.Linear(10, 20)
        self.tiny = nn.Linear(10, 3)
        self.frozen = nn.Linear(10, 30)
        with torch.no_grad():
            self.zero.weight.zero_()
            self.rank1.weight.copy_(torch.outer(torch.arange(1.0, 21.0), torch.ones(10)))
        for p in [*self.zero.parameters(), *self.rank1.parameters(), *self.tiny.parameters()]:
            p.requires_grad_(False)
        self.frozen.requires_grad_(False)

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.poison_at is not None and self.global_step == self.poison_at:
            with torch.no_grad():
                self.net[5].weight[0, 0] = float("nan")  # NaN appears mid-training

    def training_step(self, batch, batch_idx):
        x, y = batch
        extra = self.zero(torch.ones(1, 10)).sum() + self.frozen(torch.ones(1, 10)).sum() * 0
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss + 0 * extra


def test_strange_layers_are_skipped_with_reasons_during_training() -> None:
    monitor = SpectralMonitor(
        every_n_steps=5, min_evals=5, min_tail=2, max_relative_width=None, mode="sync"
    )
    trainer(max_steps=12, callbacks=[monitor]).fit(StrangeNet(poison_at=7), image_loader())
    first, last = monitor.history.layers, monitor.latest
    assert last is not None
    assert "all-zero" in last.layer("zero").skipped
    assert "no power-law fit" in last.layer("rank1").skipped
    tiny = last.layer("tiny")  # 3 eigenvalues: fitted and reported, but not trusted
    assert tiny.skipped is None and not tiny.reliable and "min_evals" in tiny.unreliable_reason
    assert last.layer("frozen").skipped is None  # frozen is not broken: it is analysed
    # NaN appeared at step 7: analysed fine at 0 and 5, skipped with the reason afterwards.
    alphas = first["net.5"]["alpha"]
    assert monitor.history.steps == [0, 5, 10, 12]  # 12: the final weights
    assert math.isfinite(alphas[0]) and math.isfinite(alphas[1]) and math.isnan(alphas[2])
    assert math.isnan(alphas[3])
    assert "non-finite" in last.layer("net.5").skipped
    assert all(math.isnan(v) for v in monitor.history.layers["zero"]["alpha"])


def test_model_without_layers_warns_once_and_trains() -> None:
    class NoLayers(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def training_step(self, batch, batch_idx):
            return (self.scale * batch[0]).mean() ** 2

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    monitor = SpectralMonitor(every_n_steps=2)
    with pytest.warns(UserWarning, match="no layer to analyse") as record:
        run = trainer(max_steps=4, callbacks=[monitor])
        run.fit(NoLayers(), image_loader())
    assert sum("no layer to analyse" in str(w.message) for w in record) == 1
    assert run.global_step == 4
    assert monitor.latest is not None and monitor.latest.layers == []
    assert math.isnan(monitor.history.aggregates["alpha_mean"][-1])


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_training(precision) -> None:
    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY, mode="sync")
    run = trainer(max_steps=10, precision=precision, callbacks=[monitor])
    run.fit(ConvNet(), image_loader())
    assert monitor.history.steps == [0, 5, 10]
    assert len(monitor.latest.fitted) == 4


def test_half_precision_weights_analyse_like_float32() -> None:
    model = ConvNet().net
    half = analyze(model.half(), **TRUST_TINY)
    ref = analyze(model.float(), **TRUST_TINY)
    for a, b in zip(half.layers, ref.layers, strict=True):
        assert a.alpha == pytest.approx(b.alpha, rel=1e-6)  # same fp16-rounded weights


def test_torch_compiled_module_keeps_user_names() -> None:
    class Compiled(ConvNet):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.compile(self.net, backend="eager")

    monitor = SpectralMonitor(every_n_steps=5, **TRUST_TINY)
    trainer(max_steps=5, callbacks=[monitor]).fit(Compiled(), image_loader())
    assert set(monitor.history.layers) == {"net.0", "net.2", "net.5", "net.7"}


def test_wrapper_modules_do_not_appear_in_layer_names() -> None:
    """FSDP (1) and activation checkpointing hold the wrapped module under these attribute names;
    a layer keeps the name the user gave it."""

    class Wrapper(nn.Module):
        def __init__(self, attribute: str, module: nn.Module) -> None:
            super().__init__()
            setattr(self, attribute, module)

    inner = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30))
    inner[2] = Wrapper("_checkpoint_wrapped_module", inner[2])
    model = nn.Sequential(Wrapper("_fsdp_wrapped_module", inner))
    report = analyze(model, **TRUST_TINY)
    assert [layer.name for layer in report.layers] == ["0.0", "0.2"]


def test_layers_added_removed_and_reshaped_between_analyses() -> None:
    model = nn.Sequential(nn.Linear(20, 40), nn.ReLU(), nn.Linear(40, 30))
    tracker = SpectralTracker(every_n_steps=1, mode="sync")
    tracker.step(model, 1)
    model[2] = nn.Linear(40, 50)  # reshaped
    model.append(nn.Linear(50, 12))  # added
    tracker.step(model, 2)
    del model[0]  # removed; Sequential renumbers: "1" is now Linear(40, 50), "2" Linear(50, 12)
    tracker.step(model, 3)
    tracker.close()
    h = tracker.history
    assert h.steps == [1, 2, 3]
    assert h.layers["0"]["step"] == [1, 2]
    assert h.layers["2"]["step"] == [1, 2, 3]  # three different shapes under one name
    assert h.layers["3"]["step"] == [2]
    assert h.layers["1"]["step"] == [3]
    assert [tracker.latest.layer(n).shape for n in ("1", "2")] == [(50, 40), (12, 50)]


def test_eigensolver_failure_falls_back_then_skips(monkeypatch) -> None:
    model = nn.Sequential(nn.Linear(30, 40), nn.Linear(40, 20))

    def no_convergence(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigvalsh: The algorithm failed to converge")

    monkeypatch.setattr(eigen_module.torch.linalg, "eigvalsh", no_convergence)
    fallback = analyze(model, precision="float64")
    reference = analyze(model, precision="float64")  # also via the fallback
    assert fallback.layer("0").skipped is None
    torch_svd = torch.linalg.svdvals(model[0].weight.detach().double()) ** 2 / 40
    assert fallback.layer("0").lambda_max == pytest.approx(float(torch_svd.max()), rel=1e-12)
    assert reference.layer("1").alpha == fallback.layer("1").alpha

    def svd_fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    monkeypatch.setattr(eigen_module.torch.linalg, "svdvals", svd_fails)
    failed = analyze(model)
    for layer in failed.layers:
        assert "eigensolver failed" in layer.skipped and "SVD fallback failed" in layer.skipped
        assert math.isnan(layer.alpha)


def test_max_steps_smaller_than_every_n_steps() -> None:
    monitor = SpectralMonitor(every_n_steps=100, **TRUST_TINY)
    trainer(max_steps=7, callbacks=[monitor]).fit(ConvNet(), image_loader())
    assert monitor.history.steps == [0, 7]  # the start, nothing due after, the final weights
    assert no_monitor_threads()


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sync", "thread"])
def test_two_thousand_analyses_do_not_grow_memory_or_leak_handles(mode) -> None:
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16))
    tracker = SpectralTracker(every_n_steps=1, mode=mode)
    fds_before = len(os.listdir("/proc/self/fd"))

    def run(steps: range) -> None:
        for step in steps:
            tracker.step(model, step)
            if mode == "thread":
                tracker.collect(block=True)  # one analysis per step, none skipped

    run(range(1, 201))  # warm-up: allocator pools, lazy imports
    gc.collect()
    rss_before = _rss_bytes()
    run(range(201, 2001))
    tracker.close()
    gc.collect()
    assert len(tracker.history) == 2000 and tracker.num_skipped == 0
    growth = _rss_bytes() - rss_before
    # The history itself grows by a few floats per layer per analysis (~100 kB for 1800);
    # anything leaking a spectrum or a snapshot per analysis would show as several MB.
    assert growth < 8 * 2**20, growth
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2
    assert no_monitor_threads()
