"""analyze(), layer selection, eigenvalue precision, bad input, the report, and the seed's class."""

from __future__ import annotations

import io
import json
import math
import warnings
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
from conftest import small_cnn, small_mlp
from lightning_helpers import TRUST_TINY
from torch import nn

from spectral_monitor import SpectralAnalysis, analyze, fit_power_law
from spectral_monitor.analysis.analyze import AnalysisConfig
from spectral_monitor.spectra.eigen import eigenvalues
from spectral_monitor.weights.layers import weight_matrices

SEED_ALPHA = 2.840775


def diag_model() -> nn.Module:
    """The seed's check: Linear(10, 10) and a 1x1 Conv2d(10, 10), both with weight diag(1..10)."""
    model = nn.Sequential(nn.Linear(10, 10), nn.Conv2d(10, 10, 1))
    with torch.no_grad():
        diag = torch.diag(torch.arange(1.0, 11.0))
        model[0].weight.copy_(diag)
        model[1].weight.copy_(diag.reshape(10, 10, 1, 1))
    return model


# --- the seed's own check -------------------------------------------------------------------


def test_seed_spectral_analysis_alpha_and_universal_metric() -> None:
    sa = SpectralAnalysis(diag_model())
    alphas = sa.fit_power_law()
    assert sorted(alphas) == [1, 2]
    for alpha, eig_max in alphas.values():
        assert alpha == pytest.approx(SEED_ALPHA, rel=1e-4)
        assert eig_max == pytest.approx(10.0, rel=1e-12)
    assert sa.universal_metric() == pytest.approx(SEED_ALPHA * math.log(10), rel=1e-4)


def test_seed_return_shapes_and_phenomenology() -> None:
    sa = SpectralAnalysis(diag_model())
    eig = sa.spectral_analysis()
    evals, q = eig[1]
    assert isinstance(evals, np.ndarray) and evals.shape == (10,)
    np.testing.assert_allclose(evals, np.arange(10, 0, -1) ** 2 / 10, rtol=1e-12)
    assert q == 1.0
    texts = sa.layer_RMT(verbose=False)
    assert len(texts) == 2 and all(t.startswith("Layer ") for t in texts)
    # mu = 2 (alpha - 1) = 3.68 lies in [0, 4]: the "regularized" phenomenology.
    assert "regularized and good performance" in texts[0]
    out = io.StringIO()
    with redirect_stdout(out):
        sa.layer_RMT(verbose=True)
    assert "Phenomenology for layer 1" in out.getvalue()


def test_seed_plots_are_figures_not_blocking() -> None:
    sa = SpectralAnalysis(diag_model())
    sa.fit_power_law(plot_alpha=True, plot_eig=True)
    assert len(sa.figures) == 4
    buf = io.BytesIO()
    sa.figures[-1].savefig(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def test_analyze_seed_model_both_layers() -> None:
    report = analyze(diag_model())
    assert [la.name for la in report.layers] == ["0", "1"]
    for la in report.layers:
        assert la.alpha == pytest.approx(SEED_ALPHA, rel=1e-4)
        assert la.xmin == pytest.approx(3.6, rel=1e-5)
        assert la.lambda_max == pytest.approx(10.0, rel=1e-5)
        assert la.skipped is None
        # 10 eigenvalues: the alpha is reported, but it is not a verdict and not an aggregate.
        assert not la.reliable and "min_evals=50" in la.unreliable_reason
        assert la.verdict == "unreliable"
        assert la.alpha_lo < la.alpha < la.alpha_hi
    assert math.isnan(report.alpha_hat) and report.aggregates["num_reliable"] == 0
    trusted = analyze(diag_model(), **TRUST_TINY)
    assert trusted.alpha_hat == pytest.approx(SEED_ALPHA * math.log(10), rel=1e-4)


# --- agreement with WeightWatcher 0.7.7 -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("build", [small_cnn, small_mlp], ids=["cnn", "mlp"])
def test_slices_mode_reproduces_weightwatcher(build, weightwatcher) -> None:
    model = build()
    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = weightwatcher.WeightWatcher(model=model).analyze()
    ours = analyze(model, conv="slices", normalize=False, precision="float64")
    compared = 0
    for _, row in details.iterrows():
        if row["num_evals"] < 20:
            continue  # WeightWatcher switches to a different estimator below 20 eigenvalues
        layer = ours.layer(str(row["name"]))
        assert layer.num_evals == row["num_evals"]
        assert layer.alpha == pytest.approx(row["alpha"], rel=1e-6), layer.name
        assert layer.xmin == pytest.approx(row["xmin"], rel=1e-6), layer.name
        assert layer.lambda_max == pytest.approx(row["lambda_max"], rel=1e-6), layer.name
        compared += 1
    assert compared == sum(la.num_evals >= 20 for la in ours.layers) >= 3
    fast = analyze(model, conv="slices", normalize=False)
    for slow, quick in zip(ours.layers, fast.layers, strict=True):
        if slow.num_evals >= 20:
            assert quick.alpha == pytest.approx(slow.alpha, rel=1e-3)


# --- eigenvalue precision -------------------------------------------------------------------


def _svd64_alpha(weight: torch.Tensor, conv2d: str) -> float:
    mats = weight_matrices(weight.detach().double(), conv2d)
    sv = torch.linalg.svdvals(mats).reshape(-1).numpy()
    return fit_power_law(sv * sv).alpha


@pytest.mark.parametrize("conv2d", ["flatten", "slices"])
def test_float32_gram_alpha_within_1e3_of_float64_svd(conv2d: str) -> None:
    for model in (small_cnn(1), small_mlp(2)):
        report = analyze(model, conv=conv2d, normalize=False)
        modules = dict(model.named_modules())
        for layer in report.fitted:
            reference = _svd64_alpha(modules[layer.name].weight, conv2d)
            assert layer.alpha == pytest.approx(reference, rel=1e-3), layer.name


def test_eigenvalues_match_svd_and_are_sorted_nonnegative() -> None:
    torch.manual_seed(0)
    mats = torch.randn(3, 50, 20)
    ref = torch.linalg.svdvals(mats.double()).pow(2).flip(-1)
    for precision, rtol in (("float64", 1e-10), ("float32", 1e-4)):
        ev = eigenvalues(mats, precision)
        assert ev.dtype == torch.float64 and ev.shape == (3, 20)
        assert bool((ev[:, 1:] >= ev[:, :-1]).all()) and bool((ev >= 0).all())
        torch.testing.assert_close(ev, ref, rtol=rtol, atol=0.0)


def test_rank_deficient_matrix_gives_exact_zeros() -> None:
    torch.manual_seed(0)
    low_rank = torch.randn(40, 3) @ torch.randn(3, 30)
    ev = eigenvalues(low_rank.unsqueeze(0), "float32")[0]
    assert int((ev > 0).sum()) == 3
    assert int((ev == 0).sum()) == 27


def test_half_precision_weights_are_upcast() -> None:
    model = small_mlp().to(torch.bfloat16)
    report = analyze(model)
    assert len(report.fitted) == 4
    # The upcast is exact: the same bf16 values given as float32 give the same fit.
    exact = analyze(small_mlp().to(torch.bfloat16).float())
    for a, b in zip(report.layers, exact.layers, strict=True):
        assert a.alpha == pytest.approx(b.alpha, rel=1e-12)
        assert a.lambda_max == pytest.approx(b.lambda_max, rel=1e-6)
    # Rounding the weights to bf16 moves alpha by about 1e-3 (measured: at most 1.0e-3).
    ref = analyze(small_mlp())
    for a, b in zip(report.layers, ref.layers, strict=True):
        assert a.alpha == pytest.approx(b.alpha, rel=5e-3)


# --- conventions ----------------------------------------------------------------------------


def test_normalize_scales_eigenvalues_but_not_alpha(mlp) -> None:
    raw = analyze(mlp, normalize=False, precision="float64")
    norm = analyze(mlp, normalize=True, precision="float64")
    modules = dict(mlp.named_modules())
    for a, b in zip(raw.layers, norm.layers, strict=True):
        rows = modules[a.name].weight.shape[0]
        assert b.lambda_max == pytest.approx(a.lambda_max / rows, rel=1e-12)
        assert b.alpha == pytest.approx(a.alpha, rel=1e-9)


def test_conv2d_modes_counts_and_half_scaling(cnn) -> None:
    flat = analyze(cnn, conv="flatten", normalize=False, precision="float64")
    sliced = analyze(cnn, conv="slices", normalize=False, precision="float64")
    conv = cnn[2]  # Conv2d(24, 32, 3)
    assert flat.layer("2").num_evals == 32 and flat.layer("2").Q == 24 * 9 / 32
    assert sliced.layer("2").num_evals == 9 * 24
    sv = torch.linalg.svdvals(conv.weight.detach().double()[:, :, 0, 0])
    assert sliced.layer("2").evals.max() >= 0.5 * float(sv.max() ** 2) - 1e-12
    slices = conv.weight.detach().double().permute(2, 3, 0, 1)
    expected = 0.5 * torch.linalg.svdvals(slices).pow(2).reshape(-1)
    np.testing.assert_allclose(np.sort(sliced.layer("2").evals), np.sort(expected.numpy()))
    assert flat.layer("6").kind == "linear"


# --- layer selection ------------------------------------------------------------------------


class MyConv(nn.Conv2d):
    pass


def test_include_exclude_by_pattern_and_type() -> None:
    model = nn.Sequential()
    model.add_module("features", nn.Sequential(MyConv(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3)))
    model.add_module("head", nn.Linear(64, 20))
    all_names = [la.name for la in analyze(model).layers]
    assert all_names == ["features.0", "features.2", "head"]
    assert [la.name for la in analyze(model, layers="features.*").layers] == all_names[:2]
    assert [la.name for la in analyze(model, layers=[nn.Linear]).layers] == ["head"]
    assert [la.name for la in analyze(model, layers=MyConv).layers] == ["features.0"]
    assert [la.name for la in analyze(model, exclude=["head", MyConv]).layers] == ["features.2"]
    assert analyze(model).layer("features.0").kind == "conv2d"


def test_root_module_layer_is_named_root() -> None:
    report = analyze(nn.Linear(40, 30))
    assert [la.name for la in report.layers] == ["root"]


# --- bad input ------------------------------------------------------------------------------


def test_model_without_layers_gives_empty_report_and_one_warning() -> None:
    with pytest.warns(UserWarning, match="no layer of the selected kinds") as record:
        report = analyze(nn.Sequential(nn.ReLU(), nn.LayerNorm(4)))
    assert len(record) == 1
    assert report.layers == []
    assert math.isnan(report.alpha_mean)
    assert "layers=0" in report.format_table()


def test_a_non_finite_matrix_gets_nan_eigenvalues_and_its_neighbours_are_unharmed() -> None:
    # The weight check reads the eigenvalues: a NaN/Inf weight (or a float32 Gram that
    # overflows) makes its matrix's row NaN, while the solver sees zeros and cannot fail on it.
    torch.manual_seed(0)
    mats = torch.randn(4, 40, 30)
    mats[1, 3, 4] = float("nan")
    mats[2, 0, 0] = float("inf")
    mats[3] *= 1e20  # finite weights whose squares pass float32's range
    evals = eigenvalues(mats)
    assert torch.isnan(evals[1:]).all()
    assert torch.equal(evals[0], eigenvalues(mats[:1])[0]) and (evals[0] > 0).all()
    assert torch.isfinite(eigenvalues(mats[3:], "float64")).all()


def test_strange_layers_are_skipped_with_reasons() -> None:
    model = nn.Sequential(
        nn.Linear(30, 40),  # fine
        nn.Linear(40, 30),  # NaN
        nn.Linear(30, 30),  # all zeros
        nn.Linear(30, 5),  # 5 eigenvalues < min_evals: fitted, unreliable
        nn.Linear(5, 30),  # Inf
        nn.Linear(30, 30),  # rank 1: one positive eigenvalue, no fit
    )
    with torch.no_grad():
        model[1].weight[3, 4] = float("nan")
        model[2].weight.zero_()
        model[4].weight[0, 0] = float("inf")
        model[5].weight.copy_(torch.outer(torch.arange(1.0, 31.0), torch.ones(30)))
    report = analyze(model, min_evals=10, min_tail=2, max_relative_width=None)
    reasons = {la.name: la.skipped for la in report.layers}
    assert reasons["0"] is None and reasons["3"] is None
    assert "non-finite" in reasons["1"]
    assert "all-zero" in reasons["2"]
    assert "non-finite" in reasons["4"]
    assert "no power-law fit" in reasons["5"]
    small = report.layer("3")
    assert math.isfinite(small.alpha) and not small.reliable and small.verdict == "unreliable"
    assert "5 positive eigenvalues < min_evals=10" in small.unreliable_reason
    for name in ("1", "2", "4", "5"):
        la = report.layer(name)
        assert math.isnan(la.alpha) and la.verdict == "skipped" and not la.reliable
        assert la.unreliable_reason == la.skipped
    assert report.layer("5").lambda_max > 0  # a real number is kept, never a fake one
    agg = report.aggregates
    assert agg["num_fitted"] == 2 and agg["num_reliable"] == 1 and agg["num_skipped"] == 4
    assert report.alpha_mean == report.layer("0").alpha


def test_uninitialised_lazy_and_meta_layers_are_skipped() -> None:
    model = nn.Sequential(nn.LazyLinear(20), nn.Linear(30, 30))
    with torch.device("meta"):
        meta = nn.Linear(30, 30)
    model.add_module("meta", meta)
    report = analyze(model)
    assert "no initialised weight" in report.layer("0").skipped
    assert report.layer("1").skipped is None
    assert "meta" in report.layer("meta").skipped


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"conv2d": "fft"}, "conv2d"),
        ({"normalize": "yes"}, "normalize"),
        ({"min_evals": 1}, "min_evals"),
        ({"min_evals": 2.5}, "min_evals"),
        ({"precision": "float16"}, "precision"),
        ({"device": "not-a-device"}, "device"),
        ({"layers": [3]}, "layers"),
        ({"exclude": [int]}, "exclude"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_them(kwargs, name, mlp) -> None:
    with pytest.raises(ValueError, match=name):
        analyze(mlp, **kwargs)


def test_config_is_reusable_and_frozen() -> None:
    config = AnalysisConfig.create(layers="a.*", conv="slices")
    assert config.layers == ("a.*",)
    with pytest.raises(AttributeError):
        config.conv = "flatten"  # type: ignore[misc]


# --- the report -----------------------------------------------------------------------------


def test_report_rows_csv_json_dataframe(tmp_path, cnn) -> None:
    report = analyze(cnn, min_evals=10, min_tail=2, max_relative_width=None)
    rows = report.to_rows()
    assert len(rows) == 5 and rows[0]["name"] == "0" and rows[0]["shape"] == "24x1x3x3"
    for key in (
        "alpha", "xmin", "D", "sigma", "n_tail", "num_evals", "lambda_max", "Q",
        "alpha_weighted", "log_spectral_norm", "log_norm", "log_alpha_norm", "stable_rank",
        "verdict", "skipped", "kind", "conv2d", "normalize", "alpha_lo", "alpha_hi",
        "reliable", "unreliable_reason", "num_fingers",
    ):  # fmt: skip
        assert key in rows[0]
    layer = report.layers[3]
    assert layer.alpha_weighted == pytest.approx(layer.alpha * math.log10(layer.lambda_max))
    assert layer.log_norm == pytest.approx(math.log10(layer.evals.sum()))
    assert layer.stable_rank == pytest.approx(layer.evals.sum() / layer.lambda_max)
    assert layer.log_alpha_norm == pytest.approx(math.log10(np.sum(layer.evals**layer.alpha)))
    text = report.to_csv(tmp_path / "layers.csv").read_text().splitlines()
    assert text[0].startswith("name,kind,shape") and len(text) == 6
    data = json.loads(report.to_json(tmp_path / "layers.json").read_text())
    assert data["aggregates"]["num_layers"] == 5 and len(data["layers"]) == 5
    frame = report.to_dataframe()
    assert list(frame["name"]) == [la.name for la in report.layers]
    agg = report.aggregates
    first = report.layer("0")  # Conv2d(1, 24, 3): 9 eigenvalues
    assert first.skipped is None and not first.reliable
    assert "min_evals" in first.unreliable_reason
    alphas = np.array([la.alpha for la in report.reliable])
    lmax = np.array([la.lambda_max for la in report.reliable])
    assert len(alphas) == 4 and agg["num_reliable"] == 4 and agg["num_fitted"] == 5
    assert agg["alpha_mean"] == pytest.approx(alphas.mean())
    assert agg["alpha_hat"] == pytest.approx(np.mean(alphas * np.log(lmax)))
    assert agg["frac_alpha_below_2"] == pytest.approx(np.mean(alphas < 2))
    assert all(len(line) <= 100 for line in report.format_table().splitlines())


# --- weights without their model class ------------------------------------------------------


def test_analyze_state_dict_equals_analyze_on_the_model(cnn) -> None:
    by_model = analyze(cnn, conv="slices")
    by_weights = analyze(cnn.state_dict(), conv="slices")
    assert [la.name for la in by_weights.layers] == [la.name for la in by_model.layers]
    for a, b in zip(by_model.layers, by_weights.layers, strict=True):
        assert (a.kind, a.shape, a.skipped) == (b.kind, b.shape, b.skipped)
        if a.skipped is None:
            assert b.alpha == a.alpha and b.lambda_max == a.lambda_max
    convs = analyze(cnn.state_dict(), layers=nn.Conv2d, exclude="4")
    assert [la.name for la in convs.layers] == ["0", "2"]
    with pytest.warns(UserWarning, match="no floating-point weight tensor"):
        empty = analyze({"bias": torch.zeros(3), "step": torch.tensor(4)})
    assert empty.layers == []
    with pytest.raises(ValueError, match="model must be"):
        analyze([torch.zeros(3, 3)])


# --------------------------------------------------------------------------------------------
# Large layers: chunked upcast, bounded solver calls, memory account
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_chunked_upcast_gram_equals_whole_upcast(monkeypatch, precision: str) -> None:
    """A bf16 weight upcast a few rows at a time gives the eigenvalues of its exact upcast."""
    import spectral_monitor.spectra.eigen as eigen

    torch.manual_seed(0)
    weight = torch.randn(3, 300, 40).to(torch.bfloat16)
    dtype = torch.float64 if precision == "float64" else torch.float32
    whole = eigenvalues(weight.to(dtype), precision)  # type: ignore[arg-type]
    monkeypatch.setattr(eigen, "_CHUNK_BYTES", 37 * 40 * 8)  # 37 rows in float64, 74 in float32
    chunked = eigenvalues(weight, precision)  # type: ignore[arg-type]
    tol = 1e-12 if precision == "float64" else 1e-5
    torch.testing.assert_close(chunked, whole, rtol=tol, atol=0.0)


def test_same_shape_groups_are_split_by_the_gram_budget(monkeypatch) -> None:
    import spectral_monitor.spectra.eigen as eigen

    torch.manual_seed(1)
    stacks = [torch.randn(1, 90, 30) for _ in range(7)] + [torch.randn(4, 50, 20)]
    together = eigen.batched_eigenvalues(stacks)
    calls = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(eigen, "_CPU_GROUP_BYTES", 3 * 30 * 30 * 4)  # three 30x30 Grams a call
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda g: calls.append(g.shape[0]) or real(g))
    split = eigen.batched_eigenvalues(stacks)
    assert sorted(calls) == [1, 3, 3, 4]  # 7 layers of one shape in runs of 3; the conv alone
    for a, b in zip(split, together, strict=True):
        torch.testing.assert_close(a, b)
    assert eigen.peak_work_bytes(stacks) == 2 * 3 * 30 * 30 * 4  # largest call: 3 Grams, x2


def test_bf16_snapshot_keeps_its_dtype_and_memory_is_reported() -> None:
    from spectral_monitor.analysis.snapshot import take_snapshot

    model = small_mlp().bfloat16()
    config = AnalysisConfig.create()
    snapshot = take_snapshot(model, config, copy=True, max_bytes=200 * 120 * 2 + 64 * 200 * 2)
    assert [s.weight.dtype for s in snapshot if s.weight is not None] == [torch.bfloat16] * 2
    assert [s.skipped is not None for s in snapshot] == [False, False, True, True]
    report = analyze(model)
    float32 = analyze(model.float())
    assert [la.alpha for la in report.layers] == [la.alpha for la in float32.layers]
    assert report.memory_bytes > sum(2 * m.weight.numel() for m in model if hasattr(m, "weight"))
    assert report.scalars()["spectral_meta/analysis_memory_mb"] == report.memory_bytes / 2**20


@pytest.mark.slow
def test_large_bf16_layer_in_float64_never_holds_a_whole_upcast_copy() -> None:
    """16384x1024 bf16 (32 MiB) in float64: a whole upcast copy would be 128 MiB (and the old
    float32 snapshot 64 MiB more, measured: +211 MiB); chunked it stays under 100 MiB, within
    the report's own account."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "peak_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), "16384", "1024", "float64"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert math.isfinite(result["alpha"])
    assert result["rise"] < 100 * 2**20
    assert result["rise"] <= result["memory_bytes"]
