"""The guide's and README's Python code blocks run as printed.

Every ```python block in README.md and docs/**/*.md runs in a fresh namespace in an empty working
folder. A block that cannot run here (it needs a GPU, a cluster or a download) is preceded by
``<!-- docs-test: skip REASON -->``; the reason is required, so no block is skipped silently.
"""

from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_BLOCK = re.compile(
    r"(<!-- docs-test: skip(?P<reason>[^>]*)-->\s*\n)?```python\n(?P<code>.*?)```", re.S
)


def _blocks() -> list[tuple[str, str, str | None]]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    found = []
    for page in pages:
        for i, match in enumerate(_BLOCK.finditer(page.read_text())):
            reason = match.group("reason")
            found.append((f"{page.relative_to(ROOT)}#{i}", match.group("code"), reason))
    return found


BLOCKS = _blocks()


def test_the_guide_has_code_to_run() -> None:
    assert sum(reason is None for _, _, reason in BLOCKS) >= 5


@pytest.mark.slow
@pytest.mark.parametrize(("where", "code", "skip"), BLOCKS, ids=[b[0] for b in BLOCKS])
def test_code_block_runs(
    where: str, code: str, skip: str | None, tmp_path: Path, monkeypatch
) -> None:
    if skip is not None:
        assert skip.strip(), f"{where}: a skipped block must say why"
        pytest.skip(skip.strip())
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "block.py"
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")
