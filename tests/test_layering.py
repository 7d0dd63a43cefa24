"""The package's folders are its layers: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

import spectral_monitor

PACKAGE = Path(spectral_monitor.__file__).parent

# Lowest first. A module may import from its own layer or any layer below it.
LAYERS = [
    "utilities",
    "weights",
    "spectra",
    "analysis",
    "sinks",
    "live",
    "integrations",
    "acting",
    "<root>",  # the public API, the CLI, the demo models and the seed's SpectralAnalysis
]


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return "<root>"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every spectral_monitor module ``path`` imports (at any depth of the file), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("spectral_monitor"):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("spectral_monitor")]
            found += [(node.lineno, name) for name in names]
    return found


def test_every_layer_is_a_folder() -> None:
    for layer in LAYERS[:-1]:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer


def test_no_module_imports_from_a_layer_above() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        own = LAYERS.index(_layer(module))
        for line, imported in _imports(path):
            target = "<root>" if imported == "spectral_monitor" else _layer(imported)
            if LAYERS.index(target) > own:
                upward.append(f"{module}:{line} imports {imported} ({_layer(module)} -> {target})")
    assert not upward, "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker itself: an import from a higher layer in a lower module is found."""
    fake = tmp_path / "mod.py"
    fake.write_text("from spectral_monitor.live.tracker import SpectralTracker\n")
    assert _imports(fake) == [(1, "spectral_monitor.live.tracker")]
    assert LAYERS.index(_layer("spectral_monitor.live.tracker")) > LAYERS.index(
        _layer("spectral_monitor.spectra.eigen")
    )
