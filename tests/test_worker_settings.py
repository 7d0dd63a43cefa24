"""The worker's settings for a CPU analysis on its thread: the GIL switch interval is short
while the analysis runs (the training thread gets the GIL back sooner) and restored after."""

from __future__ import annotations

import sys

import torch

from spectral_monitor.analysis.config import AnalysisConfig
from spectral_monitor.analysis.snapshot import take_snapshot
from spectral_monitor.live import worker
from spectral_monitor.live.worker import AnalysisWorker
from spectral_monitor.spectra import solvers


def _analyse(mode: str) -> list[float]:
    """Switch intervals seen by the eigensolver during one analysis run by the worker."""
    seen: list[float] = []

    def recording(gram: torch.Tensor) -> torch.Tensor:
        seen.append(sys.getswitchinterval())
        return torch.linalg.eigvalsh(gram)

    solvers.register_solver(solvers.Solver("recording", "torch, recorded", ("cpu",), recording))
    solvers.set_solver("recording")
    try:
        model = torch.nn.Sequential(torch.nn.Linear(40, 60))
        config = AnalysisConfig.from_options({})
        runner = AnalysisWorker(mode)  # type: ignore[arg-type]
        assert runner.submit(take_snapshot(model, config), config, step=0)
        (result,) = runner.close()
        assert result.error is None, result.error
        assert result.report is not None and result.report.solver == "recording"
    finally:
        solvers.set_solver(None)
        solvers._REGISTRY.pop("recording")
        solvers.clear_choices()
    return seen


def test_thread_mode_shortens_the_switch_interval_during_a_cpu_analysis() -> None:
    before = sys.getswitchinterval()
    assert _analyse("thread") == [worker._SWITCH_INTERVAL]
    assert sys.getswitchinterval() == before


def test_sync_mode_leaves_the_switch_interval_alone() -> None:
    before = sys.getswitchinterval()
    assert _analyse("sync") == [before]
    assert sys.getswitchinterval() == before
