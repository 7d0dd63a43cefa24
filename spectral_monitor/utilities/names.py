"""Dotted layer names: short forms for a table column that still tell every layer apart, and the
order a module tree lists them in.

A short form keeps some of a name's dotted components and writes ``…`` for each run of one or
more components it leaves out: ``bert.encoder.layer.10.attention.self.query`` can print as
``…layer.10…query``. A form *distinguishes* its name when no other name of the table matches
it, even with an ``…`` read as nothing, so two layers never print alike (cutting names from the
left at a fixed width printed BERT's ``layer.0`` and ``layer.1`` queries identically).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

__all__ = ["ELLIPSIS", "model_order", "numeric_aware_key", "short_names"]

ELLIPSIS = "…"
_GAP = None  # a token standing for one or more left-out components
_ANY = r"(?:\.[^.]+)*"


def _render(tokens: Sequence[str | None]) -> str:
    text = ""
    previous_gap = True  # no dot before the first component, nor after an ellipsis
    for token in tokens:
        if token is _GAP:
            text += ELLIPSIS
            previous_gap = True
        else:
            text += token if previous_gap else f".{token}"
            previous_gap = False
    return text


def _pattern(tokens: Sequence[str | None]) -> re.Pattern[str]:
    """What a reader may take a form for, matched against ``"." + name``: each ``…`` stands for
    any number of components, none included (``…layer.0…output.dense`` could be read as
    ``layer.0.output.dense``, so it does not tell the two apart)."""
    return re.compile("".join(_ANY if t is _GAP else r"\." + re.escape(t) for t in tokens))


def _forms(parts: list[str]) -> Iterable[list[str | None]]:
    """Candidate forms of one name: ``[…] window […] tail``, the tail ending at the last
    component, at least one component left out, a kept run never starting with a number."""
    n = len(parts)
    for j in range(n - 1, 0, -1):  # tail parts[j:], never empty
        tail: list[str | None] = list(parts[j:])
        if not parts[j].isdigit():
            yield [_GAP, *tail]
        for a in range(j):
            if a > 0 and parts[a].isdigit():
                continue  # a number shows with the name of its list ("layer.3", not "3")
            for b in range(a + 1, j + 1):
                if (a == 0 and b == j) or (b < j and parts[j].isdigit()):
                    continue  # nothing left out; or a number cut from its list's name
                head: list[str | None] = [_GAP] if a > 0 else []
                head += parts[a:b]
                yield [*head, *([_GAP] if b < j else []), *tail]


def short_names(names: Sequence[str], width: int) -> dict[str, str | None]:
    """The form of each name with the fewest cuts, then the shortest, that fits ``width``
    characters and that no other name in ``names`` matches; a name of at most ``width``
    characters is kept whole.

    Returns:
        ``{name: form}``, or ``{name: None}`` when no distinguishing form fits (print the full
        name then, on a line of its own).
    """
    by_leaf: dict[str, list[str]] = {}
    for name in names:
        by_leaf.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    out: dict[str, str | None] = {}
    for name in names:
        if len(name) <= width:
            out[name] = name
            continue
        parts = name.split(".")
        others = [o for o in by_leaf[parts[-1]] if o != name]
        best: str | None = None
        # Fewest cuts first (one ellipsis reads better than two), then shortest.
        forms = {_render(f): f for f in _forms(parts)}
        candidates = sorted(
            ((t, f) for t, f in forms.items() if len(t) <= width),
            key=lambda c: (c[1].count(_GAP), len(c[0])),
        )
        for text, tokens in candidates:
            pattern = _pattern(tokens)
            if not any(pattern.fullmatch(f".{o}") for o in others):
                best = text
                break
        out[name] = best
    return out


def numeric_aware_key(component: str) -> tuple[int, int | str]:
    """Sort key of one name component: integers by value (``2`` before ``10``), before words."""
    return (0, int(component)) if component.isdigit() else (1, component)


def model_order(names: Sequence[str]) -> list[str]:
    """``names`` in the order a module tree lists them: a parent's children in the order they
    first appear in ``names`` (a ``torch.save``d state dict keeps the order modules were
    defined in), except that numbered children (a ``ModuleList`` or ``Sequential``) sort by
    number among themselves (``layer.2`` before ``layer.10``, which a sorted file such as
    safetensors puts first). Keys that appear twice keep their first place.
    """
    first_seen: dict[tuple[str, ...], int] = {}
    numbered_first: dict[tuple[str, ...], int] = {}  # parent -> first numbered child's index
    for index, name in enumerate(names):
        parts = tuple(name.split("."))
        for depth in range(1, len(parts) + 1):
            first_seen.setdefault(parts[:depth], index)
            if parts[depth - 1].isdigit():
                numbered_first.setdefault(parts[: depth - 1], index)

    def key(name: str) -> list[tuple[int, int]]:
        parts = tuple(name.split("."))
        return [
            # Numbered siblings share the first one's place, then sort by number.
            (numbered_first[parts[: depth - 1]], int(part))
            if part.isdigit()
            else (first_seen[parts[:depth]], 0)
            for depth, part in enumerate(parts, start=1)
        ]

    return sorted(dict.fromkeys(names), key=key)
