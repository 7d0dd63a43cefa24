"""Correlation traps, spikes above the Marchenko–Pastur edge, the entry predictors and the ERG gap,
against references computed independently with numpy/scipy on constructed matrices, and against
WeightWatcher 0.7.7 on the same shuffled matrices."""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from spectral_monitor import analyze
from spectral_monitor.analysis.history import log_growth, rebound
from spectral_monitor.spectra.eigen import eigenvalues
from spectral_monitor.spectra.spikes import (
    TW_QUANTILE,
    detx_num,
    entry_stats,
    erg_gap,
    spike_threshold,
)
from spectral_monitor.spectra.traps import (
    layer_seed,
    shuffle_entries,
    shuffled_eigenvalues,
    trap_signals,
)

ROWS, COLS = 200, 100


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """numpy's SVD on small matrices: one BLAS thread (a threaded BLAS on a shared machine
    spends its time waiting for cores, not computing)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def reference_threshold(w: np.ndarray) -> float:
    """Johnstone's centring and scale of the largest eigenvalue of WᵀW for iid entries of W's
    variance, plus the 99.9 % Tracy–Widom quantile, written out again in numpy."""
    n, p = max(w.shape), min(w.shape)
    var = w.var()
    mu = (math.sqrt(n - 1) + math.sqrt(p)) ** 2
    sigma = (math.sqrt(n - 1) + math.sqrt(p)) * (1 / math.sqrt(n - 1) + 1 / math.sqrt(p)) ** (1 / 3)
    return var * (mu + 3.2713 * sigma)


def reference_traps(w: np.ndarray, perm: np.ndarray) -> int:
    """Traps of W under one permutation of its entries: numpy SVD, count above the threshold."""
    shuffled = w.reshape(-1)[perm].reshape(w.shape)
    evals = np.linalg.svd(shuffled, compute_uv=False) ** 2
    return int(np.sum(evals > reference_threshold(w)))


def ours(w: np.ndarray, seed: int = 0, perm: np.ndarray | None = None) -> int:
    stack = torch.tensor(w, dtype=torch.float64)[None]
    stats = entry_stats(stack)
    if perm is None:
        shuffled = shuffle_entries(stack, seed)
    else:
        shuffled = shuffle_entries(stack, permutation=torch.from_numpy(perm))
    evals = eigenvalues(shuffled, "float64")
    return trap_signals(evals.numpy(), stats.variance, ROWS, COLS).num_traps


def test_tracy_widom_quantile_from_painleve_ii() -> None:
    """TW₁'s CDF from the Hastings–McLeod solution of Painlevé II (scipy), at TW_QUANTILE."""
    from scipy.integrate import cumulative_trapezoid, solve_ivp
    from scipy.special import airy

    start = 6.0
    ai, aip, _, _ = airy(start)
    sol = solve_ivp(
        lambda s, y: [y[1], s * y[0] + 2 * y[0] ** 3],
        [start, -8.0],
        [ai, aip],
        rtol=1e-12,
        atol=1e-14,
        dense_output=True,
        method="DOP853",
    )
    s = np.linspace(TW_QUANTILE, start, 20001)
    q = sol.sol(s)[0]
    # ∫_s^∞ q and ∫_s^∞ (x − s) q², at s = TW_QUANTILE (the tail beyond 6 is < 1e-9).
    int_q = cumulative_trapezoid(q, s)[-1]
    int_q2 = cumulative_trapezoid((s - s[0]) * q * q, s)[-1]
    cdf = math.exp(-0.5 * int_q) * math.exp(-0.5 * int_q2)
    assert cdf == pytest.approx(0.999, abs=2e-5)


def test_spike_threshold_matches_the_formula() -> None:
    w = np.random.default_rng(0).standard_normal((ROWS, COLS))
    assert spike_threshold(float(w.var()), ROWS, COLS) == pytest.approx(reference_threshold(w))


def test_rank_one_mean_shift_above_bbp_gives_exactly_one_trap() -> None:
    # |mean|·(N·M)^¼/std = 2: twice the BBP threshold.
    for seed in range(8):
        rng = np.random.default_rng(seed)
        w = rng.standard_normal((ROWS, COLS)) + 2.0 * (ROWS * COLS) ** -0.25
        perm = rng.permutation(w.size)
        assert reference_traps(w, perm) == 1
        assert ours(w, perm=perm) == 1
        assert ours(w, seed=seed) == 1
        stats = entry_stats(torch.tensor(w)[None])
        expected = abs(w.mean()) * (ROWS * COLS) ** 0.25 / w.std()
        assert stats.mean_shift_ratio == pytest.approx(expected, rel=1e-9) and expected > 1


def test_iid_gaussian_has_no_trap_in_95_percent_of_seeds() -> None:
    clean = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        w = rng.standard_normal((ROWS, COLS))
        perm = rng.permutation(w.size)
        count = ours(w, perm=perm)
        assert count == reference_traps(w, perm)
        clean += count == 0
    assert clean >= 38


def test_heavy_tailed_entries_give_traps() -> None:
    for seed in range(5):
        rng = np.random.default_rng(200 + seed)
        w = rng.standard_t(2.5, (ROWS, COLS))  # infinite fourth moment
        perm = rng.permutation(w.size)
        count = ours(w, perm=perm)
        assert count == reference_traps(w, perm) and count >= 1
        stats = entry_stats(torch.tensor(w)[None])
        # One entry leaves the bulk once |w|/std passes (N·M)^¼ (about 17 here).
        assert stats.max_ratio > (ROWS * COLS) ** 0.25 and stats.excess_kurtosis > 5


def test_entry_stats_against_numpy_and_scipy() -> None:
    from scipy.stats import kurtosis

    w = np.random.default_rng(3).standard_t(6, (300, 120)) + 0.01
    stats = entry_stats(torch.tensor(w, dtype=torch.float32)[None])
    std = w.std()
    assert stats.mean == pytest.approx(w.mean(), rel=1e-5, abs=1e-7)
    assert stats.std == pytest.approx(std, rel=1e-5)
    assert stats.mean_shift_ratio == pytest.approx(abs(w.mean()) * (300 * 120) ** 0.25 / std, 1e-4)
    assert stats.max_ratio == pytest.approx(np.abs(w).max() / std, rel=1e-5)
    assert stats.excess_kurtosis == pytest.approx(kurtosis(w.ravel()), rel=1e-4)


def test_shuffle_is_a_seeded_permutation_of_the_entries() -> None:
    w = torch.randn(3, 50, 20).to(torch.bfloat16)
    a, b = shuffle_entries(w, 5), shuffle_entries(w, 5)
    assert torch.equal(a, b) and not torch.equal(a, shuffle_entries(w, 6))
    assert a.shape == w.shape and a.dtype == w.dtype
    assert torch.equal(a.reshape(-1).float().sort().values, w.reshape(-1).float().sort().values)
    tall = torch.randn(1, 30, 70).mT  # a transposed (non-contiguous) view, as layers give
    shuffled = shuffle_entries(tall, 1)
    assert torch.equal(shuffled.reshape(-1).sort().values, tall.reshape(-1).sort().values)
    assert layer_seed(0, "a") != layer_seed(0, "b") and layer_seed(1, "a") != layer_seed(0, "a")


def test_num_spikes_of_a_planted_low_rank_signal() -> None:
    rng = np.random.default_rng(4)
    noise = rng.standard_normal((ROWS, COLS))
    u, v = rng.standard_normal(ROWS), rng.standard_normal(COLS)
    strong = noise + 4.0 * np.outer(u, v) / math.sqrt(COLS)
    for w, spikes in ((noise, 0), (strong, 1)):
        layer = nn.Linear(COLS, ROWS, bias=False)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(w))
        row = analyze(layer, traps=True).layers[0]
        evals = np.linalg.svd(w, compute_uv=False) ** 2
        assert row.num_spikes == int(np.sum(evals > reference_threshold(w))) == spikes
        assert row.num_traps == 0  # a shuffle destroys the planted direction


def reference_detx(evals: np.ndarray) -> int:
    """WeightWatcher 0.7.7's detX loop, re-implemented with products (O(n²))."""
    x = np.sort(evals) * len(evals) / np.sum(evals)
    for idx in range(len(x) - 1, 0, -1):
        if np.prod(x[idx:]) < 1.0:
            return len(x) - idx
    return len(x)


def test_detx_and_erg_gap() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        evals = rng.pareto(rng.uniform(1.0, 4.0), int(rng.integers(20, 300))) + 1e-3
        assert detx_num(evals) == reference_detx(evals)
    evals = rng.pareto(2.0, 100) + 1e-3
    assert erg_gap(evals, 30) == detx_num(evals) - 30
    assert math.isnan(erg_gap(evals, 0)) and detx_num(np.ones(5)) == 0


def test_detx_agrees_with_weightwatcher() -> None:
    rmt = pytest.importorskip("weightwatcher.RMT_Util")
    rng = np.random.default_rng(6)
    for _ in range(10):
        evals = np.sort(rng.pareto(rng.uniform(1.0, 4.0), 200) + 1e-3)
        assert detx_num(evals) == rmt.detX_constraint(evals)[0]


def _weightwatcher():
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.CRITICAL)
    return ww


@pytest.mark.parametrize(
    ("kind", "expected"), [("gaussian", 0), ("uniform", 0), ("mean shift", 1), ("one entry", 1)]
)
def test_traps_agree_with_weightwatcher_on_the_same_shuffle(kind: str, expected: int) -> None:
    """The same shuffled matrix (our seeded shuffle) handed to WeightWatcher's own trap count
    (``mp_fit(randomize=True)``, which fits σ to a kernel density and adds sqrt(TW)), on
    matrices where the answer is unambiguous."""
    ww = _weightwatcher()
    watcher = ww.WeightWatcher()
    for seed in range(3):
        rng = np.random.default_rng(300 + seed)
        w = rng.standard_normal((ROWS, COLS))
        if kind == "uniform":
            w = rng.uniform(-1, 1, (ROWS, COLS))
        elif kind == "mean shift":
            w += 4.0 * (ROWS * COLS) ** -0.25
        elif kind == "one entry":
            w[3, 4] = 4.0 * (ROWS * COLS) ** 0.25
        stack = torch.tensor(w)[None]
        evals = shuffled_eigenvalues([stack], [seed], "float64")[0]
        assert isinstance(evals, torch.Tensor)
        evals = np.sort(evals.numpy().ravel())
        mine = trap_signals(evals, entry_stats(stack).variance, ROWS, COLS).num_traps
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            theirs = watcher.mp_fit(
                evals, ROWS, COLS, 1, "w", 0, 0, False, False, ".", "b", 0.5, True, evals,
                randomize=True,
            )[0]  # fmt: skip
        assert mine == theirs == expected


@pytest.mark.slow
def test_traps_agree_with_weightwatcher_analyze_randomize() -> None:
    """End to end: ``WeightWatcher.analyze(randomize=True)`` (its own unseeded shuffle) and
    ``analyze(traps=True)`` on Linear layers whose answer is unambiguous."""
    ww = _weightwatcher()
    rng = np.random.default_rng(7)
    weights = {
        "gaussian": rng.standard_normal((ROWS, COLS)),
        "shifted": rng.standard_normal((ROWS, COLS)) + 4.0 * (ROWS * COLS) ** -0.25,
    }
    model = nn.Sequential(*[nn.Linear(COLS, ROWS, bias=False) for _ in weights])
    with torch.no_grad():
        for layer, w in zip(model, weights.values(), strict=True):
            layer.weight.copy_(torch.tensor(w))
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        details = ww.WeightWatcher(model=model).analyze(randomize=True)
    report = analyze(model, traps=True)
    assert list(details["rand_num_spikes"]) == [la.num_traps for la in report.layers] == [0, 1]


def test_analyze_carries_the_signals_everywhere(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    on, off = analyze(model, traps=True), analyze(model)
    for la_on, la_off in zip(on.layers, off.layers, strict=True):
        assert la_on.num_traps == 0 and la_off.num_traps == -1 and math.isnan(la_off.trap_excess)
        assert la_on.num_spikes == la_off.num_spikes == 0
        assert -0.2 < la_on.trap_excess < 0.1  # a random layer's top sits at the edge
        assert la_on.excess_kurtosis == pytest.approx(-1.2, abs=0.1)  # uniform init
        assert math.isfinite(la_on.erg_gap)
    assert analyze(model, traps=True).layers[0].trap_excess == on.layers[0].trap_excess
    header = on.to_csv(tmp_path / "x.csv").read_text().splitlines()[0].split(",")
    for column in ("num_spikes", "num_traps", "trap_excess", "mean_shift_ratio", "erg_gap"):
        assert column in header and column in on.to_dict()["layers"][0]
    scalars = on.scalars()
    assert scalars["spectral/num_traps/0"] == 0.0 and "spectral/num_traps/0" not in off.scalars()
    assert "spectral/num_spikes/2" in off.scalars()
    with pytest.raises(ValueError, match="traps"):
        analyze(model, traps="yes")  # type: ignore[arg-type]


def test_history_trajectory_signals() -> None:
    alpha = [3.0, 2.5, np.nan, 2.0, 2.4, 2.2]
    np.testing.assert_allclose(rebound(alpha), [0, 0, np.nan, 0, 0.4, 0.2], atol=1e-12)
    np.testing.assert_allclose(rebound([np.nan, 2.0, 3.0]), [np.nan, 0.0, 1.0])
    np.testing.assert_allclose(
        log_growth([np.nan, 2.0, 4.0, 1.0]), [np.nan, 0.0, math.log(2), -math.log(2)]
    )
