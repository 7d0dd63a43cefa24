"""Tiny randomly initialised Hugging Face models and in-memory datasets (no downloads), for the
tests of SpectralTrainerCallback."""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainingArguments,
)

VOCAB = 128


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    """GPT-2 with 2 layers of width 64 (c_attn 64x192, c_fc 64x256, …)."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def tiny_bert(seed: int = 0) -> BertForSequenceClassification:
    """A BERT classifier with 2 layers of width 64 and 2 labels."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config)


class TokenData(torch.utils.data.Dataset):
    """``n`` random token sequences of length 16; labels for a causal LM (the inputs) or for a
    classifier (the parity of the first token)."""

    def __init__(self, n: int = 64, causal: bool = True, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, 16), generator=generator)
        self.causal = causal

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.ids[i]
        labels = ids if self.causal else ids[0] % 2
        return {"input_ids": ids, "labels": labels}


def training_args(out: Any, **kwargs: Any) -> TrainingArguments:
    """CPU, batch 8, quiet, no checkpoints unless asked; ``kwargs`` override."""
    defaults: dict[str, Any] = {
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "logging_steps": 5,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "data_seed": 0,
    }
    defaults.update(kwargs)
    return TrainingArguments(str(out), **defaults)
