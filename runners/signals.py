"""Stopping a search cleanly: SIGINT, SIGTERM and SIGHUP all interrupt the running trial the way Ctrl-C does (its
training stops, it is recorded as interrupted with its reason and enqueued again), the command says so and exits
128 + the signal number. A second signal while the first is being handled is ignored, so a double Ctrl-C cannot
cut the recording of the trial short. Worker processes also stop when their parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Optional

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: Optional[int] = None  # the signal that is stopping this process, once one came


class Interrupted(KeyboardInterrupt):
    """A stop asked by a signal; a KeyboardInterrupt, so training and Optuna treat it as Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Installs the handlers for the life of a ``with`` block (main thread only; elsewhere it does nothing)."""

    def __init__(self, note: str = ""):
        self.note = note
        self.signum: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            print(f"{signal.Signals(signum).name}: already stopping (recording the interrupted trial)",
                  file=sys.stderr, flush=True)
            return
        global _received
        self.signum = _received = signum
        raise Interrupted(signum)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def exit_code(self, default: int = 130) -> int:
        return 128 + self.signum if self.signum is not None else default


def stop_error(reason: str = "") -> KeyboardInterrupt:
    """The exception that carries a stop on, after the training it interrupted has returned."""
    return Interrupted(_received) if _received is not None else KeyboardInterrupt(reason)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel for SIGTERM when the parent process dies (Linux), so a worker never trains on alone; if the
    parent is already gone, stop now."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            PR_SET_PDEATHSIG = 1
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        raise Interrupted(signal.SIGTERM)
