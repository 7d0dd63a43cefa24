"""The guide's and README's Python code blocks run as printed.

Every ```python block in README.md and docs/**/*.md runs, a page's blocks in order in one
namespace (as a reader pastes them into one session), in an empty working folder. A block that
cannot run here (a fragment, or it needs a GPU or a download) is preceded by
``<!-- docs-test: skip REASON -->``; the reason is required, so no block is skipped silently.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(
    r"(<!-- docs-test: skip(?P<reason>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.S
)


def _pages() -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Each page with a Python block: its (code, skip reason) blocks in order."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        blocks = [(m.group("code"), m.group("reason")) for m in _BLOCK.finditer(page.read_text())]
        if blocks:
            found.append((str(page.relative_to(ROOT)), blocks))
    return found


PAGES = _pages()


def test_the_guide_has_code_to_run() -> None:
    runnable = [code for _, blocks in PAGES for code, reason in blocks if reason is None]
    assert len(runnable) >= 10


@pytest.mark.slow
@pytest.mark.parametrize(("page", "blocks"), PAGES, ids=[p for p, _ in PAGES])
def test_page_code_runs(
    page: str, blocks: list[tuple[str, str | None]], tmp_path: Path, monkeypatch
) -> None:
    """A page's blocks run in order in one namespace, as a reader pastes them one after the
    other into one session."""
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for i, (code, reason) in enumerate(blocks):
        if reason is not None:
            assert reason.strip(), f"{page} block {i}: a skipped block must say why"
            continue
        exec(compile(code, f"{page}#block{i}", "exec"), namespace)
