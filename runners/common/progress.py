"""A dependency-free progress printer for long commands (``search train``, ``search run``).

Two kinds of output: *status* lines are transient (the epoch a trial is in, a step counter) and are rewritten
in place with ``\\r`` on a terminal but dropped when stderr is a file or a pipe, so logs stay readable;
*lines* are permanent (one per epoch or per trial) and are printed everywhere, clearing any status first.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Optional, TextIO


class Progress:
    """Status and permanent lines on one stream (stderr by default)."""

    def __init__(self, stream: Optional[TextIO] = None, tty: Optional[bool] = None, min_interval: float = 0.1):
        self.stream = stream if stream is not None else sys.stderr
        if tty is None:
            isatty = getattr(self.stream, "isatty", None)
            tty = bool(isatty and isatty())
        self.tty = tty
        self.min_interval = min_interval  # seconds between two status redraws
        self._shown = 0  # characters of the status line now on screen
        self._last = 0.0

    def status(self, text: str, force: bool = False) -> None:
        """Show ``text`` in place of the previous status (terminal only; throttled unless ``force``)."""
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        width = shutil.get_terminal_size((100, 20)).columns - 1
        text = text if len(text) <= width else text[: width - 3] + "..."  # a wrapped line cannot be rewritten
        self.stream.write("\r" + text + " " * max(0, self._shown - len(text)))
        self.stream.flush()
        self._shown = len(text)

    def line(self, text: str) -> None:
        """Print a permanent line (replacing the status on a terminal)."""
        self.clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self.tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self.stream.flush()
        self._shown = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()


def bar(done: float, total: float, width: int = 20) -> str:
    """``[#######-------------]`` for ``done`` out of ``total``."""
    filled = 0 if total <= 0 else min(width, int(width * done / total))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def duration(seconds: float) -> str:
    """Compact human duration: ``4.2s``, ``3m07s``, ``1h02m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def count(n: float) -> str:
    """``1,234`` below ten thousand, then ``12.3k`` / ``4.56M``."""
    if abs(n) < 10_000:
        return f"{n:,.0f}"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:,.0f}"  # pragma: no cover
