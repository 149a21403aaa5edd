"""Whether a command draws progress bars: only on a terminal.

tqdm redraws its bar with carriage returns and escape codes; in a log file (stderr redirected, CI) those
pile up as garbage lines, so bars are shown only when stderr is a TTY, and never with --no-progress.
"""
from __future__ import annotations

import sys


def show_progress(no_progress: bool = False) -> bool:
    return not no_progress and sys.stderr.isatty()
