"""The TensorBoard tag table of docs/guide/tensorboard.md is the set of tags a real run writes.

Both directions: every tag a run with every option on writes matches a documented row, and every
documented row is written by that run, except the rows whose "when" column names a condition the
run cannot meet without stopping or alarming (checked by name below, so a new row must be placed).
"""

from __future__ import annotations

import re
from pathlib import Path

from lightning.pytorch.loggers import TensorBoardLogger
from lightning_helpers import TRUST_TINY, ConvNet, image_loader, read_events, trainer

from spectral_monitor import SpectralMonitor

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide" / "tensorboard.md"
#: Rows this run does not reach: types shared by >= 2 reliable layers (ConvNet's four layers
#: have four types), a rule firing, an alarm.
NOT_IN_THIS_RUN = {"spectral/alpha_by_type/<type>", "spectral/stop_reason", "spectral/alarm"}
#: Written by Lightning or TensorBoard, not by the monitor.
NOT_OURS = {"epoch", "train_loss", "custom_scalars__config__"}


def documented_tags() -> dict[str, str]:
    """{documented tag: its kind}, shorthand expanded: in "`a/b`, `c`" the second tag is
    ``a/c`` (the first one's prefix folder)."""
    table = GUIDE.read_text().split("| tag | kind |", 1)[1]
    tags: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`([^`]+)`", cells[0])
        folder = names[0].split("/")[0]
        for name in names:
            tags[name if "/" in name and name.startswith(folder) else f"{folder}/{name}"] = cells[1]
    return tags


def _pattern(tag: str) -> re.Pattern[str]:
    parts = re.split(r"(<[a-z]+>)", tag)
    return re.compile("".join("[^/]+" if p.startswith("<") else re.escape(p) for p in parts))


def test_documented_tags_are_what_a_run_writes(tmp_path: Path) -> None:
    monitor = SpectralMonitor(
        every_n_steps=5,
        mode="sync",
        log_figures_every=1,
        traps=True,
        stop_on="alpha_mean",
        stop_below=1.01,  # a level the tiny run stays above: the threshold line, no stop
        start_step=0,
        **TRUST_TINY,
    )
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer(max_steps=12, logger=logger, callbacks=[monitor]).fit(ConvNet(), image_loader())
    acc = read_events(tmp_path)
    written: dict[str, str] = {}
    for kind, key in (("scalar", "scalars"), ("histogram", "histograms"), ("image", "images")):
        written.update({tag: kind for tag in acc.Tags()[key]})
    for tag in acc.Tags()["tensors"]:
        written[tag.removesuffix("/text_summary")] = "text"
    written = {t: k for t, k in written.items() if t not in NOT_OURS}
    documented = documented_tags()
    patterns = {tag: _pattern(tag) for tag in documented}

    undocumented = [t for t in written if not any(p.fullmatch(t) for p in patterns.values())]
    assert not undocumented, f"tags a run writes that the guide's table lacks: {undocumented}"
    for tag, kind in written.items():
        (doc,) = [d for d, p in patterns.items() if p.fullmatch(tag)]
        assert documented[doc] == kind, f"{tag} is a {kind}, the table says {documented[doc]}"
    unwritten = [
        d for d, p in patterns.items()
        if d not in NOT_IN_THIS_RUN and not any(p.fullmatch(t) for t in written)
    ]  # fmt: skip
    assert not unwritten, f"documented tags this run never wrote: {unwritten}"
    assert set(documented) >= NOT_IN_THIS_RUN, "an exempted row left the table"
