"""An alpha you can trust: intervals that cover the true exponent, layers whose fit cannot be
trusted marked so (with the reason), degenerate spectra without an alpha, and aggregates and
verdicts from reliable fits only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from spectral_monitor import analyze, fit_power_law
from spectral_monitor.spectra.intervals import (
    XMIN_CHOICE_INFLATION,
    analytic_interval,
    percentile_interval,
)
from spectral_monitor.spectra.reliability import unreliable_reason


def pareto_with_bulk(alpha: float, n_tail: int, rng: np.random.Generator) -> np.ndarray:
    """A Pareto(alpha, xmin=1) tail over a uniform, non-power-law bulk on [0.05, 1)."""
    tail = (1.0 - rng.random(n_tail)) ** (-1.0 / (alpha - 1.0))
    return np.concatenate([rng.uniform(0.05, 1.0, n_tail), tail])


def test_analytic_interval_covers_the_true_exponent() -> None:
    # Measured (benchmarks/interval_coverage.py, 400 seeds a cell): 0.86-0.91 for a 90% interval
    # with xmin chosen by the fit; 0.79-0.86 without the widening for that choice.
    rng = np.random.default_rng(11)
    for alpha in (1.5, 3.0):
        hits = 0
        for _ in range(300):
            fit = fit_power_law(pareto_with_bulk(alpha, 200, rng))
            assert fit.alpha_lo < fit.alpha < fit.alpha_hi
            hits += fit.alpha_lo <= alpha <= fit.alpha_hi
        assert hits / 300 >= 0.85, (alpha, hits / 300)


def test_analytic_interval_given_xmin_is_exact() -> None:
    # With xmin known in advance (inflation 1), the Gamma(n - 1) pivot covers at its nominal
    # level: 2000 Pareto samples of 40 values, each fitted above its own smallest value.
    rng = np.random.default_rng(3)
    alpha, n, trials = 2.2, 40, 2000
    hits = 0
    for _ in range(trials):
        x = 0.7 * (1.0 - rng.random(n)) ** (-1.0 / (alpha - 1.0))
        fitted = 1.0 + n / np.log(x / x.min()).sum()
        lo, hi = analytic_interval(np.array([fitted]), np.array([n]), 0.9, inflation=1.0)
        hits += lo[0] <= alpha <= hi[0]
    assert abs(hits / trials - 0.9) < 0.02, hits / trials


@pytest.mark.slow
def test_bootstrap_interval_covers_the_true_exponent() -> None:
    # Measured (benchmarks/interval_coverage.py): 0.82-0.96 for a 90% interval.
    rng = np.random.default_rng(12)
    seeds, hits = 200, 0
    for k in range(seeds):
        alpha = (1.5, 3.0)[k % 2]
        fit = fit_power_law(pareto_with_bulk(alpha, 100, rng), interval="bootstrap", n_boot=100)
        hits += fit.alpha_lo <= alpha <= fit.alpha_hi
    assert hits / seeds >= 0.85, hits / seeds


def test_analytic_interval_is_the_widened_gamma_pivot() -> None:
    # Given xmin, (alpha - 1) * sum(ln(x / xmin)) ~ Gamma(n_tail - 1, 1) (xmin is a tail point
    # and adds ln 1 = 0); the quantiles are taken at the level widened for the choice of xmin.
    from scipy.stats import gamma, norm

    rng = np.random.default_rng(1)
    x = (1.0 - rng.random(300)) ** (-1.0 / 1.8)
    fit = fit_power_law(x, confidence=0.8)
    total = fit.n_tail / (fit.alpha - 1.0)  # sum of ln(x / xmin) over the tail
    tail = norm.cdf(XMIN_CHOICE_INFLATION * norm.ppf(0.1))
    lo = 1.0 + gamma.ppf(tail, fit.n_tail - 1) / total
    hi = 1.0 + gamma.ppf(1.0 - tail, fit.n_tail - 1) / total
    assert fit.alpha_lo == pytest.approx(lo, rel=1e-10)
    assert fit.alpha_hi == pytest.approx(hi, rel=1e-10)


def test_bootstrap_interval_is_the_percentile_interval_of_the_finite_resamples() -> None:
    alphas = torch.tensor([[2.0, 2.5, 3.0, 3.5, 4.0], [1.5, 1.5, math.inf, 1.6, 1.7]])
    lo, hi = percentile_interval(alphas.double(), 0.5)
    assert (lo[0].item(), hi[0].item()) == pytest.approx((2.5, 3.5))
    q_lo, q_hi = np.quantile([1.5, 1.5, 1.6, 1.7], [0.25, 0.75])  # the inf is left out
    assert (lo[1].item(), hi[1].item()) == pytest.approx((q_lo, q_hi))
    lo, hi = percentile_interval(torch.tensor([[2.0, math.nan, math.inf]]).double(), 0.9)
    assert math.isnan(lo[0]) and math.isnan(hi[0])  # fewer than 2 finite resamples


def test_bootstrap_is_reproducible_and_wider_for_fewer_values() -> None:
    rng = np.random.default_rng(2)
    small, large = pareto_with_bulk(2.5, 60, rng), pareto_with_bulk(2.5, 600, rng)
    a = fit_power_law(small, interval="bootstrap")
    b = fit_power_law(small, interval="bootstrap")
    assert (a.alpha_lo, a.alpha_hi) == (b.alpha_lo, b.alpha_hi)
    c = fit_power_law(large, interval="bootstrap")
    assert a.alpha_hi - a.alpha_lo > c.alpha_hi - c.alpha_lo > 0


def strange_layers() -> nn.ModuleDict:
    torch.manual_seed(0)
    layers = nn.ModuleDict(
        {
            "orthogonal": nn.Linear(256, 256, bias=False),
            "identity": nn.Linear(128, 128, bias=False),
            "rank1": nn.Linear(128, 96, bias=False),
            "rank4_update": nn.Linear(128, 96, bias=False),
            "nine": nn.Linear(9, 64, bias=False),
            "random16": nn.Linear(16, 16, bias=False),
            "healthy": nn.Linear(256, 512, bias=False),
        }
    )
    with torch.no_grad():
        nn.init.orthogonal_(layers["orthogonal"].weight)
        # Identity-like: equal singular values up to a rounding-level perturbation.
        layers["identity"].weight.copy_(torch.eye(128) + 1e-7 * torch.randn(128, 128))
        layers["rank1"].weight.copy_(torch.outer(torch.randn(96), torch.randn(128)))
        # A zero-initialised weight after one low-rank (rank-4) update, as LoRA-B or a
        # zero-init projection looks after its first step.
        layers["rank4_update"].weight.copy_(torch.randn(96, 4) @ torch.randn(4, 128) * 0.01)
        # A trained-looking layer: heavy-tailed entries give a heavy-tailed spectrum with a
        # tail of hundreds of eigenvalues.
        heavy = torch.distributions.StudentT(2.5).sample((512, 256))
        layers["healthy"].weight.copy_(heavy / 16)
    return layers


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_untrustworthy_layers_are_marked_with_a_reason(precision) -> None:
    report = analyze(strange_layers(), precision=precision)
    by_name = {la.name: la for la in report.layers}
    for name in ("orthogonal", "identity"):
        la = by_name[name]
        assert la.skipped is not None and "degenerate tail" in la.skipped, (name, la.skipped)
        assert math.isnan(la.alpha) and not la.reliable and la.unreliable_reason == la.skipped
        assert la.lambda_max > 0  # the spectrum's own numbers stay
    # rank 1: one positive eigenvalue, nothing to fit; rank 4: 4 positive eigenvalues.
    assert "no power-law fit" in by_name["rank1"].skipped
    rank4 = by_name["rank4_update"]
    assert rank4.skipped is not None or "min_evals" in rank4.unreliable_reason
    for name, reason in (("nine", "9 positive eigenvalues"), ("random16", "min_evals=50")):
        la = by_name[name]
        assert la.skipped is None and math.isfinite(la.alpha), name
        assert not la.reliable and reason in la.unreliable_reason, (name, la.unreliable_reason)
        assert la.verdict == "unreliable"
    healthy = by_name["healthy"]
    assert healthy.reliable and healthy.unreliable_reason is None, healthy.unreliable_reason
    assert healthy.verdict in ("well-trained", "over-trained", "under-trained")
    agg = report.aggregates
    assert agg["num_reliable"] == 1
    assert agg["alpha_mean"] == healthy.alpha and agg["alpha_min"] == healthy.alpha
    assert agg["alpha_hat"] == pytest.approx(healthy.alpha * math.log(healthy.lambda_max))
    scalars = report.scalars()
    assert scalars["spectral/num_reliable"] == 1.0
    assert "spectral/alpha/nine" in scalars and "spectral/alpha_lo/nine" in scalars
    assert "spectral/alpha/orthogonal" not in scalars  # no alpha, never a fake one


def test_small_random_layers_are_never_a_confident_verdict() -> None:
    # Random 16x16 layers read alpha < 2 ("over-trained") in about a third of seeds.
    verdicts = set()
    for seed in range(20):
        torch.manual_seed(seed)
        verdicts.add(analyze(nn.Linear(16, 16)).layers[0].verdict)
    assert verdicts == {"unreliable"}


def test_rules_in_order_and_width() -> None:
    assert "min_evals" in unreliable_reason(10, 10, 3.0, 2.0, 4.0, min_evals=50)
    assert "min_tail" in unreliable_reason(100, 12, 3.0, 2.5, 3.5, min_evals=50)
    wide = unreliable_reason(100, 40, 3.0, 1.5, 4.0, min_evals=50, max_relative_width=1.0)
    assert wide is not None and "max_relative_width" in wide
    assert unreliable_reason(100, 40, 3.0, 1.5, 4.0, 50, max_relative_width=None) is None
    assert unreliable_reason(100, 40, 3.0, 2.6, 3.4, min_evals=50) is None


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"min_tail": 0}, "min_tail"), ({"max_relative_width": -1.0}, "max_relative_width")],
)
def test_bad_trust_options_name_the_argument(kwargs, name) -> None:
    with pytest.raises(ValueError, match=name):
        analyze(nn.Linear(4, 4), **kwargs)


def test_table_and_rows_carry_interval_and_reliability(tmp_path) -> None:
    report = analyze(strange_layers())
    table = report.format_table()
    assert "interval" in table and "unreliable" in table and "reliable 1" in table
    row = next(r for r in report.to_rows() if r["name"] == "healthy")
    assert row["reliable"] is True and row["alpha_lo"] < row["alpha"] < row["alpha_hi"]
    text = report.to_csv(tmp_path / "x.csv").read_text().splitlines()[0].split(",")
    for column in ("alpha_lo", "alpha_hi", "reliable", "unreliable_reason", "n_tail", "D"):
        assert column in text
