"""The eigensolver choice (spectra/solvers.py): every candidate gives the same spectrum within the
documented float32 tolerance, the choice is probed once and kept, and the report names it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from spectral_monitor import analyze
from spectral_monitor.spectra import solvers
from spectral_monitor.spectra.eigen import eigenvalues

CPU_SOLVERS = [s.name for s in solvers.available_solvers("cpu")]


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no choice made, no forced solver, no disk cache."""
    monkeypatch.delenv("SPECTRAL_MONITOR_SOLVER", raising=False)
    monkeypatch.delenv("SPECTRAL_MONITOR_SOLVER_CACHE", raising=False)
    solvers.set_solver(None)
    solvers.clear_choices()
    yield
    solvers.set_solver(None)
    solvers.clear_choices()


def _model(seed: int = 0) -> torch.nn.Module:
    """Layers with 300 and 512 columns (probed bands), trained-looking heavy tails."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(512, 700), torch.nn.Linear(700, 300))
    with torch.no_grad():
        for layer in model:
            w = layer.weight
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            # A power-law singular value profile, so alpha is a real tail fit, not MP noise.
            ranks = torch.arange(1, s.numel() + 1, dtype=w.dtype)
            w.copy_(u @ torch.diag(ranks**-0.6) @ vh)
    return model


def test_scipy_lapack_is_a_cpu_candidate() -> None:
    # SciPy comes with powerlaw, a dependency: the machine has both CPU candidates.
    assert CPU_SOLVERS == ["torch", "scipy-lapack"]


@pytest.mark.parametrize("precision, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_candidates_agree_on_eigenvalues(precision: str, rtol: float) -> None:
    generator = torch.Generator().manual_seed(1)
    mats = torch.randn(3, 400, 320, generator=generator)  # 3 matrices: a batched call
    spectra = {}
    for name in CPU_SOLVERS:
        solvers.set_solver(name)
        spectra[name] = eigenvalues(mats, precision)  # type: ignore[arg-type]
    reference = spectra["torch"]
    for name, evals in spectra.items():
        scale = reference[:, -1:]
        assert torch.allclose(evals / scale, reference / scale, rtol=0, atol=rtol), name


def test_alpha_within_float32_tolerance_across_solvers() -> None:
    model = _model()
    reports = {}
    for name in CPU_SOLVERS:
        solvers.set_solver(name)
        reports[name] = analyze(model)
        assert reports[name].solver == name
    for a, b in zip(reports["torch"].layers, reports["scipy-lapack"].layers, strict=True):
        assert a.alpha == pytest.approx(b.alpha, rel=3e-4), a.name
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-5), a.name


def test_probe_runs_once_and_the_report_names_the_choice() -> None:
    calls: list[int] = []

    def counting(gram: torch.Tensor) -> torch.Tensor:
        calls.append(gram.shape[-1])
        return torch.linalg.eigvalsh(gram)

    solvers.register_solver(solvers.Solver("counting", "torch, counted", ("cpu",), counting))
    try:
        report = analyze(torch.nn.Sequential(torch.nn.Linear(300, 400)))
        probes = [n for n in calls if n == 384]  # the band 256-511 is probed at n = 384
        assert len(probes) == 3  # best of three
        assert report.solver in [*CPU_SOLVERS, "counting"]
        chosen = solvers.solver_choices()
        assert list(chosen.values()) == [report.solver]
        (key,) = chosen
        assert key.startswith("cpu/float32/n256-512/threads")
        calls.clear()
        assert analyze(torch.nn.Sequential(torch.nn.Linear(300, 400))).solver == report.solver
        assert 384 not in calls  # kept for the process: no second probe
    finally:
        solvers._REGISTRY.pop("counting")
        solvers.clear_choices()


def test_small_matrices_use_torch_without_a_probe() -> None:
    report = analyze(torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 10)))
    assert report.solver == "torch"
    assert solvers.solver_choices() == {}


def test_choices_are_kept_on_disk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "solvers.json"
    monkeypatch.setenv("SPECTRAL_MONITOR_SOLVER_CACHE", str(cache))
    first = solvers.choose_solver("cpu", torch.float64, 300)
    stored = json.loads(cache.read_text())
    (machine,) = stored
    (key,) = stored[machine]
    assert stored[machine][key] == first.name
    # A new process (here: forgotten choices) reads the choice back instead of probing; a
    # stored choice that differs from what a probe would say shows that it was read.
    other = next(name for name in CPU_SOLVERS if name != first.name)
    cache.write_text(json.dumps({machine: {key: other}}))
    solvers.clear_choices()
    assert solvers.choose_solver("cpu", torch.float64, 300).name == other


def test_forced_solver_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="solver must be one of"):
        solvers.set_solver("cusolver-magic")
    monkeypatch.setenv("SPECTRAL_MONITOR_SOLVER", "scipy-lapack")
    solvers.clear_choices()  # the variable is read when choices are made afresh
    assert solvers.choose_solver("cpu", torch.float32, 1000).name == "scipy-lapack"
    assert solvers.choose_solver("cpu", torch.float32, 10).name == "scipy-lapack"
    solvers.set_solver("torch")  # the function overrides the environment
    assert solvers.choose_solver("cpu", torch.float32, 1000).name == "torch"
    assert solvers.solver_choices() == {}  # forcing never probes
