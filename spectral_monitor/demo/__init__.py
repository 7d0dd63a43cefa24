"""Ready-made models and data for the examples and LightningCLI configs (no downloads)."""

from spectral_monitor.demo.data import (
    DigitsDataModule,
    FashionMNISTDataModule,
    RandomLabelDataModule,
    StdlibTextDataModule,
    read_idx,
)
from spectral_monitor.demo.models import CharTransformer, ImageClassifier, RandomLabelMLP

__all__ = [
    "CharTransformer",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageClassifier",
    "RandomLabelDataModule",
    "RandomLabelMLP",
    "StdlibTextDataModule",
    "read_idx",
]
