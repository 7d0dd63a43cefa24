"""Tied weights a file does not store.

A language model often ties its output layer to its input embedding (GPT-2's ``lm_head`` *is*
``transformer.wte``). ``torch.save(model.state_dict())`` keeps both names (one storage), but
Hugging Face's ``save_pretrained`` and safetensors files leave the tied name out. Read from such a
file, the model would lose a layer that the module and its state dict have. The model's
``config.json`` (written beside the weights by ``save_pretrained``) says whether it ties them
(``tie_word_embeddings``, true unless set false) and which class it is; the class says which
names are tied (``_tied_weights_keys``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["INPUT_EMBEDDING_NAMES", "TiedWeight", "missing_ties"]

#: Module names of token embeddings that an output layer is commonly tied to.
INPUT_EMBEDDING_NAMES = ("wte", "embed_tokens", "word_embeddings", "tok_embeddings", "embed_in")
#: Those of decoder language models, whose ``lm_head`` a file without a config may have left out
#: (an encoder's ``word_embeddings`` has no output layer to suspect).
_DECODER_EMBEDDING_NAMES = ("wte", "embed_tokens", "tok_embeddings", "embed_in")
_OUTPUT_NAME = "lm_head.weight"  # the output layer of ``*ForCausalLM`` / ``*LMHeadModel``


@dataclass(frozen=True)
class TiedWeight:
    """An output weight tied to an input weight, the output not stored in the file.

    Attributes:
        output: the key the module would have (``lm_head.weight``).
        source: the stored key it is tied to (``transformer.wte.weight``).
        confirmed: True when the model's config says the weights are tied (the layer can be
            analysed from ``source``); False when only the file's keys suggest it.
    """

    output: str
    source: str
    confirmed: bool

    def describe(self) -> str:
        """One sentence for the user."""
        out, source = self.output.removesuffix(".weight"), self.source.removesuffix(".weight")
        if self.confirmed:
            return (
                f"{out} is tied to {source} and is not stored in this file; it is analysed "
                f"from {self.source} (config.json: tie_word_embeddings)"
            )
        return (
            f"{out} may be tied to {source} and is not stored in this file, so it is not "
            f"analysed; with the model's config.json beside the file it would be"
        )


def _declared_ties(architectures: list[str]) -> dict[str, str | None]:
    """``{output key: input key or None}`` the model classes declare, when transformers is
    installed (``_tied_weights_keys``: a dict in transformers 5, a list of outputs before)."""
    try:
        import transformers
    except ImportError:
        return {}
    ties: dict[str, str | None] = {}
    for name in architectures:
        declared = getattr(getattr(transformers, name, None), "_tied_weights_keys", None)
        if isinstance(declared, Mapping):
            ties.update({str(k): str(v) for k, v in declared.items()})
        elif isinstance(declared, (list, tuple)):
            ties.update(dict.fromkeys(map(str, declared)))
    return ties


def _input_embedding(keys: list[str], shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    for key in keys:
        parts = key.split(".")
        named = len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in INPUT_EMBEDDING_NAMES
        if named and len(shapes[key]) == 2:
            return key
    return None


def missing_ties(
    shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any] | None
) -> list[TiedWeight]:
    """The tied output weights a file leaves out.

    Args:
        shapes: ``{key: shape}`` of the tensors the file stores.
        config: the model's ``config.json`` (Hugging Face), or None when there is none.

    Returns:
        Confirmed ties when ``config`` ties the weights (the classes in ``architectures`` name
        them when transformers is installed; else a causal-LM class's ``lm_head`` is tied to the
        input embedding); without a config, a suspected tie when the file has a decoder's token
        embedding (``wte``, ``embed_tokens`` ...) and no other 2-D weight of its shape.
    """
    keys = list(shapes)
    embedding = _input_embedding(keys, shapes)
    if config is not None:
        if not config.get("tie_word_embeddings", True):
            return []
        architectures = [str(a) for a in config.get("architectures") or []]
        declared = _declared_ties(architectures)
        if not declared and any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
            declared = {_OUTPUT_NAME: None}
        ties = []
        for output, source in declared.items():
            source = source if source in shapes else embedding
            if output not in shapes and source is not None:
                ties.append(TiedWeight(output, source, confirmed=True))
        return ties
    if embedding is None or embedding.split(".")[-2] not in _DECODER_EMBEDDING_NAMES:
        return []
    same_shape = [k for k in keys if k != embedding and shapes[k] == shapes[embedding]]
    if same_shape:
        return []
    return [TiedWeight(_OUTPUT_NAME, embedding, confirmed=False)]
