"""Data that is on every machine, for the demos: scikit-learn's bundled digits, Fashion-MNIST IDX
files from a local directory, the Python standard library's own source as a text corpus, and
random labels for the over-regularisation demo. Nothing is downloaded."""

from __future__ import annotations

import gzip
import sysconfig
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "FASHION_MNIST_FILES",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "RandomLabelDataModule",
    "StdlibTextDataModule",
    "read_idx",
]


def _split(x: torch.Tensor, y: torch.Tensor, val_fraction: float, seed: int):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsDataModule(L.LightningDataModule):
    """scikit-learn's ``load_digits``: 1,797 grayscale 8x8 digits (shipped inside scikit-learn).

    Args:
        batch_size: images per batch.
        val_fraction: share held out for validation.
        seed: split seed.
    """

    def __init__(self, batch_size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.val_fraction, self.seed = batch_size, val_fraction, seed
        self.image_size, self.in_channels, self.num_classes = 8, 1, 10

    def setup(self, stage: str | None = None) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as error:
            raise ImportError(
                "the digits demo needs scikit-learn: pip install 'spectral-monitor[examples]'"
            ) from error
        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        self.train_set, self.val_set = _split(x, y, self.val_fraction, self.seed)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


#: The four standard Fashion-MNIST files (gzip-compressed or not).
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed if its name ends in ``.gz``.

    Raises:
        ValueError: the file is not an unsigned-byte IDX file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def _find(data_dir: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return None


class FashionMNISTDataModule(L.LightningDataModule):
    """Fashion-MNIST from the standard IDX files in ``data_dir`` (Debian's
    ``dataset-fashion-mnist`` installs them under /usr/share/datasets/fashion-mnist).

    Args:
        data_dir: directory holding the four ``*-ubyte(.gz)`` files.
        batch_size: images per batch.
        limit: use at most this many training images (None: all 60,000).
    """

    def __init__(
        self,
        data_dir: str = "/usr/share/datasets/fashion-mnist",
        batch_size: int = 64,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        self.data_dir, self.batch_size, self.limit = Path(data_dir), batch_size, limit
        self.image_size, self.in_channels, self.num_classes = 28, 1, 10

    def setup(self, stage: str | None = None) -> None:
        found = {key: _find(self.data_dir, stem) for key, stem in FASHION_MNIST_FILES.items()}
        missing = [FASHION_MNIST_FILES[k] + "[.gz]" for k, v in found.items() if v is None]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST files missing in {self.data_dir}: {', '.join(missing)} "
                "(on Debian: apt-get install dataset-fashion-mnist)"
            )

        files = {key: path for key, path in found.items() if path is not None}

        def load(images: str, labels: str) -> TensorDataset:
            x = torch.tensor(read_idx(files[images]), dtype=torch.float32).unsqueeze(1) / 255.0
            y = torch.tensor(read_idx(files[labels]), dtype=torch.long)
            return TensorDataset(x[: self.limit], y[: self.limit])

        self.train_set = load("train_images", "train_labels")
        self.val_set = load("test_images", "test_labels")

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=512)


class StdlibTextDataModule(L.LightningDataModule):
    """Character-level text from the Python standard library's own source files — a corpus
    present wherever Python is. Characters are bytes (vocabulary 256).

    Args:
        seq_len: characters per training sequence.
        batch_size: sequences per batch.
        max_chars: corpus size in characters.
    """

    vocab_size = 256

    def __init__(self, seq_len: int = 64, batch_size: int = 32, max_chars: int = 400_000) -> None:
        super().__init__()
        self.seq_len, self.batch_size, self.max_chars = seq_len, batch_size, max_chars

    def setup(self, stage: str | None = None) -> None:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        chunks, total = [], 0
        for path in sorted(stdlib.glob("*.py")):
            text = path.read_bytes()
            chunks.append(text)
            total += len(text)
            if total >= self.max_chars:
                break
        data = torch.tensor(list(b"".join(chunks)[: self.max_chars]), dtype=torch.long)
        n = (len(data) - 1) // self.seq_len
        x = data[: n * self.seq_len].view(n, self.seq_len)
        y = data[1 : n * self.seq_len + 1].view(n, self.seq_len)
        self.train_set, self.val_set = _split(x, y, 0.05, 0)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=128)


class RandomLabelDataModule(L.LightningDataModule):
    """Gaussian inputs with random labels: nothing to learn but memorisation, the setting in
    which a large learning rate with small batches drives alpha under 2.

    Args:
        num_samples, num_features, num_classes: data size.
        batch_size: small batches make the spectra heavier-tailed faster.
        seed: data seed.
    """

    def __init__(
        self,
        num_samples: int = 512,
        num_features: int = 64,
        num_classes: int = 10,
        batch_size: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.num_samples, self.num_features, self.num_classes = (
            num_samples,
            num_features,
            num_classes,
        )
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(self.num_samples, self.num_features, generator=g)
        y = torch.randint(0, self.num_classes, (self.num_samples,), generator=g)
        self.train_set = TensorDataset(x, y)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=g)
