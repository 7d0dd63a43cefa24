"""Peak resident memory that analyze() adds for one large bf16 layer, in a fresh process.

    python tests/scripts/peak_memory.py ROWS COLS PRECISION

Prints a JSON line: the rise of the process's peak RSS during the analysis (bytes) and the
report's own account, ``memory_bytes``.
"""

from __future__ import annotations

import json
import resource
import sys

import torch
from torch import nn

from spectral_monitor import analyze


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    rows, cols, precision = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    torch.set_num_threads(1)
    analyze(nn.Linear(64, 128).bfloat16(), precision=precision)  # load solver code, warm up
    layer = nn.Linear(cols, rows, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.weight.normal_()
    before = peak_rss()
    report = analyze(layer, precision=precision)
    after = peak_rss()
    print(
        json.dumps(
            {
                "rise": after - before,
                "memory_bytes": report.memory_bytes,
                "alpha": report.layers[0].alpha,
                "weight_bytes": 2 * rows * cols,
            }
        )
    )


if __name__ == "__main__":
    main()
