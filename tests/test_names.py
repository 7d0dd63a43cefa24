"""Short layer names that tell layers apart, and the module tree's order of state-dict keys."""

from __future__ import annotations

import re

from spectral_monitor.utilities.names import model_order, short_names

BERT = [
    f"bert.encoder.layer.{i}.{m}"
    for i in range(12)
    for m in (
        "attention.self.query",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    )
] + ["bert.pooler.dense", "classifier"]


def test_short_names_are_distinct_forms_of_their_own_names() -> None:
    short = short_names(BERT, 22)
    shown = [s for s in short.values() if s is not None]
    assert len(shown) == len(set(shown))
    for name, form in short.items():
        if form is None:
            continue  # printed whole
        assert len(form) <= 22
        # A reader may take each … for any run of whole components, none included.
        gap = r"(?:\.[^.]+)*"
        pattern = gap.join(r"\." + re.escape(piece) if piece else "" for piece in form.split("…"))
        matching = [other for other in BERT if re.fullmatch(pattern, f".{other}")]
        assert matching == [name], (form, matching)
    assert short["bert.encoder.layer.10.attention.self.query"] == "…layer.10…query"
    assert short["classifier"] == "classifier"  # short names stay whole


def test_model_order_is_numeric_aware_and_keeps_definition_order() -> None:
    assert model_order(sorted(BERT))[:2] == [
        "bert.encoder.layer.0.attention.output.dense",  # sorted file: definition order unknown
        "bert.encoder.layer.0.attention.self.query",
    ]
    blocks = [int(n.split(".")[3]) for n in model_order(sorted(BERT)) if ".layer." in n]
    assert blocks == sorted(blocks)
    # A file in definition order keeps it: features before classifier, query before output.
    keys = ["features.0.w", "features.2.w", "features.10.w", "classifier.w"]
    assert model_order(keys) == keys
    assert model_order(["f.10.w", "f.2.w", "f.0.w", "c.w"]) == ["f.0.w", "f.2.w", "f.10.w", "c.w"]
