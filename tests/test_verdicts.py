"""Verdicts from evidence: random layers read random-like, a trained layer does not, and no layer
is called over-trained on alpha < 2 alone."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spectral_monitor import analyze
from spectral_monitor.spectra.metrics import VERDICTS, verdict


def test_verdict_rules() -> None:
    assert verdict(4.0, True, num_spikes=0, num_traps=0) == "random-like"
    assert verdict(math.nan, False, num_spikes=0, num_traps=-1) == "random-like"
    assert verdict(4.0, True, num_spikes=0, enough_evals=False) == "well-trained"
    assert verdict(1.5, True, alpha_hi=1.8, num_spikes=3, num_traps=2) == "over-trained"
    # alpha < 2 alone is not enough: the interval must lie below 2 and a trap must be seen.
    assert verdict(1.5, True, alpha_hi=1.8, num_spikes=3, num_traps=0) == "heavy-tailed"
    assert verdict(1.5, True, alpha_hi=2.3, num_spikes=3, num_traps=2) == "heavy-tailed"
    assert verdict(1.5, True, alpha_hi=1.8, num_spikes=3, num_traps=-1) == "heavy-tailed"
    assert verdict(1.5) == "heavy-tailed"
    assert verdict(7.0, True, num_spikes=1) == "under-trained"
    assert verdict(3.0, True, num_spikes=1) == "well-trained"
    assert verdict(3.0, False, num_spikes=1) == "unreliable"
    assert verdict(math.nan, True, num_spikes=1) == "no fit"
    assert verdict(1.0, True, num_spikes=0, num_traps=1) == "heavy-tailed"


def _random_like_fraction(models: list[nn.Module]) -> tuple[float, set[str]]:
    labels = [la.verdict for m in models for la in analyze(m, traps=True).layers]
    return sum(v == "random-like" for v in labels) / len(labels), set(labels)


def test_random_mlps_read_random_like() -> None:
    models = []
    for seed in range(12):
        torch.manual_seed(seed)
        models.append(
            nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.Linear(128, 64))
        )
    fraction, labels = _random_like_fraction(models)
    assert fraction >= 0.9, labels
    assert labels <= set(VERDICTS)


def test_random_gpt2_reads_random_like() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=2, n_positions=32, vocab_size=128, bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
    models = []
    for seed in range(8):
        torch.manual_seed(seed)
        models.append(transformers.GPT2LMHeadModel(config))
    fraction, labels = _random_like_fraction(models)
    assert fraction >= 0.9, labels


@pytest.mark.slow
def test_trained_digits_layers_are_not_random_like_nor_over_trained_on_alpha_alone() -> None:
    """The digits example's CNN after its full run (8 epochs, 360 steps): the layers with at
    least 50 eigenvalues have left the random bulk; its alpha < 2 layer (net.3, about 1.85: a
    healthy run, held-out accuracy about 0.9) is heavy-tailed, not over-trained."""
    import lightning as L

    from spectral_monitor.demo import DigitsDataModule, ImageClassifier

    L.seed_everything(0)
    model = ImageClassifier(in_channels=1, image_size=8, width=32)
    before = analyze(model, traps=True)
    assert all(la.verdict in ("random-like", "unreliable") for la in before.layers)
    trainer = L.Trainer(
        max_epochs=8,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    report = analyze(model, traps=True)
    large = [la for la in report.layers if la.num_evals >= 50]
    assert [la.name for la in large] == ["net.3", "net.7"]
    for la in large:
        assert la.verdict != "random-like" and la.num_spikes > 0, la
    below_two = [la for la in report.reliable if la.alpha < 2]
    assert below_two, "the healthy example no longer has an alpha < 2 layer to test"
    for la in report.layers:
        assert la.verdict != "over-trained", la
