"""What the CLI's archive check costs next to ``torch.load`` itself.

``spectral-monitor`` checks every member of a ``torch.save`` archive against its CRC-32 after
loading it (``torch.load`` does not: flipped bytes in a tensor load silently). This reads the file
a second time. Protocol (fixed before measuring): one state dict of 8 float32 matrices of
4096x2048 (256 MiB), saved once to a temporary folder; then, alternating, 5 times
``torch.load(weights_only=True)`` and 5 times ``zip_damage``; report the median of each and their
ratio. The file is in the page cache for both after the first read, so this is the CPU cost of
the check, not disk time.

    python benchmarks/checksum_cost.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from spectral_monitor.weights.file_damage import zip_damage


def main() -> None:
    torch.manual_seed(0)
    state = {f"layer.{i}.weight": torch.randn(4096, 2048) for i in range(8)}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pt"
        torch.save(state, path)
        del state
        loads, checks = [], []
        for _ in range(5):
            start = time.perf_counter()
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            loads.append(time.perf_counter() - start)
            del loaded
            start = time.perf_counter()
            assert zip_damage(path) is None
            checks.append(time.perf_counter() - start)
        size = path.stat().st_size / 2**20
    load, check = statistics.median(loads), statistics.median(checks)
    print(
        f"file {size:.0f} MiB: torch.load {load:.3f} s, checksum check {check:.3f} s, "
        f"check/load {check / load:.2f}"
    )


if __name__ == "__main__":
    main()
