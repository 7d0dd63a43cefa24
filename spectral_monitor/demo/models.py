"""LightningModules for the demos: a small CNN image classifier, a character-level transformer
made of Linear layers, and an MLP that over-regularises on random labels."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

__all__ = ["CharTransformer", "ImageClassifier", "RandomLabelMLP"]


class _Classifier(L.LightningModule):
    """Cross-entropy training and validation with accuracy, for the modules below."""

    net: nn.Module  # set by each subclass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _loss(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        acc = (logits.argmax(-1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=True)
        self.log(f"{stage}_acc", acc, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._loss(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._loss(batch, "val")


class ImageClassifier(_Classifier):
    """A small CNN: two 3x3 convolutions (padding 1), max-pooling, two Linear layers.

    Args:
        in_channels: image channels.
        image_size: side of the square input, pixels (divisible by 4).
        num_classes: classes.
        width: channels of the first convolution (the second has twice as many).
        lr: Adam learning rate.
    """

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 8,
        num_classes: int = 10,
        width: int = 32,
        lr: float = 2e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        side = image_size // 4
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class _Block(nn.Module):
    """Pre-norm transformer block; attention written with nn.Linear so every projection is a
    layer the monitor analyses."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        att = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.norm2(x))))


class CharTransformer(_Classifier):
    """A small causal character-level transformer (byte vocabulary).

    Args:
        vocab_size: number of symbols.
        dim: model width.
        depth: blocks.
        heads: attention heads.
        max_len: longest sequence.
        lr: AdamW learning rate.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        max_len: int = 256,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(max_len, dim) / math.sqrt(dim))
        self.blocks = nn.Sequential(*[_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        return self.head(self.norm(self.blocks(h)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"])


class RandomLabelMLP(_Classifier):
    """An MLP that memorises random labels. With SGD (momentum 0.9) at ``lr=0.2`` on batches of
    4, mean alpha falls from ~6 at initialisation to under 2 within about 100 steps: the
    over-regularised regime of Martin & Mahoney.

    Args:
        num_features, num_classes, width: sizes.
        lr: SGD learning rate (large on purpose).
    """

    def __init__(
        self, num_features: int = 64, num_classes: int = 10, width: int = 128, lr: float = 0.2
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(num_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)
