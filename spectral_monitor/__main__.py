"""``python -m spectral_monitor``: the ``spectral-monitor`` command line."""

import sys

from spectral_monitor.cli import main

sys.exit(main())
