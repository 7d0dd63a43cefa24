"""``Guard``: how the monitor runs what it does on the training thread.

The monitor must never be the reason a training run dies. Its work on the training thread
(selecting layers, calling the user's ``register_layer`` functions, taking snapshots, scheduling,
handing reports to loggers and sinks, handing figures over, checkpoint hooks) runs through a
:class:`Guard`, as the worker's analyses run inside their own ``try``: an exception becomes one
warning with its traceback, and every failure is counted by kind in :attr:`Guard.failures`; the
caller skips what failed (a layer, an analysis, a logger call) and training goes on.

"Once" is per failure, not per call site: the same exception raised from the same line is warned
about once even when several call sites (a hook, the snapshot, the final analysis) run into it.
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch.utilities.rank_zero import rank_zero_warn

__all__ = ["KINDS", "Guard"]

#: The kinds of failure (the keys of :attr:`Guard.failures`) and what the monitor does instead.
KINDS: dict[str, str] = {
    "analysis": "that analysis is skipped",
    "layer": "that layer is skipped with the reason in the report",
    "schedule": "the monitor goes on at the next step",
    "logger": "that logger call is skipped",
    "figures": "training goes on without those figures",
    "checkpoint": "the monitor's state is left out of that checkpoint (or not restored from it)",
    "stop": "the stop rule is not applied at that step",
    "shutdown": "outstanding work is dropped",
}


@dataclass
class Guard:
    """Runs actions so that an exception is warned about once and counted, never raised.

    Attributes:
        failures: how many actions failed, per kind (see :data:`KINDS`).
    """

    failures: dict[str, int] = field(default_factory=dict)
    _warned: set[str] = field(default_factory=set, repr=False)

    def run(self, kind: str, what: str, action: Callable[[], Any], default: Any = None) -> Any:
        """``action()``, or ``default`` when it raises (an ``Exception``; a KeyboardInterrupt
        goes through). ``what`` names the action in the warning (``"the analysis at step 40"``)."""
        try:
            return action()
        except Exception:
            self.failed(kind, what, traceback.format_exc())
            return default

    def failed(self, kind: str, what: str, details: str) -> None:
        """Count one failure of ``kind``; warn, with ``details`` (a formatted traceback), the
        first time this exception comes from this line."""
        self.failures[kind] = self.failures.get(kind, 0) + 1
        origin = _origin(details)
        if origin not in self._warned:
            self._warned.add(origin)
            rank_zero_warn(
                f"SpectralMonitor: {what} failed; {KINDS[kind]} and training goes on (the same "
                f"failure again is only counted).\n{details}"
            )


_FRAME = re.compile(r'^\s*File "(.*)", line (\d+)', re.MULTILINE)


def _origin(details: str) -> str:
    """Where a formatted traceback was raised (its last frame) and its exception type."""
    frames = _FRAME.findall(details)
    lines = details.strip().splitlines()
    error = lines[-1].split(":", 1)[0] if lines else ""
    return f"{frames[-1][0]}:{frames[-1][1]}:{error}" if frames else details
