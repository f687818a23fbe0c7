"""Stopping a search cleanly: SIGINT, SIGTERM and SIGHUP all interrupt the running trial the way Ctrl-C does (its
training stops, it is recorded as interrupted with its reason and enqueued again), the command says so and exits
128 + the signal number. A second signal while the first is being handled is ignored, so a double Ctrl-C cannot
cut the recording of the trial short. Python drops an exception raised where it cannot propagate (a weakref
callback, a ``__del__``), so the engine also calls :func:`check` between training steps and trials. Worker
processes also stop when their parent dies (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from typing import Optional

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: Optional[int] = None  # the signal that is stopping this process, once one came
_acknowledged = False  # the engine has taken the stop in hand (the exception reached it)


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
        if not _in_callback(frame):
            raise Interrupted(signum)

    def __enter__(self) -> "StopSignals":
        global _received, _acknowledged
        _received, _acknowledged = None, False
        if threading.current_thread() is threading.main_thread():
            for s in HANDLED:
                self._old[s] = signal.signal(s, self._handle)
            self._hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable
        return self

    def _unraisable(self, unraisable) -> None:
        """A stop raised inside a callback Python cannot propagate from (a weakref callback of a library, a
        ``__del__``) is not printed: :func:`check` raises it again between training steps."""
        if isinstance(unraisable.exc_value, Interrupted):
            return
        self._hook(unraisable)

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            self._old.clear()  # stopping: a late second signal (at exit, say) is still only "already stopping"
            return
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()
        if getattr(self, "_hook", None) is not None:
            sys.unraisablehook = self._hook

    def exit_code(self, default: int = 130) -> int:
        return 128 + self.signum if self.signum is not None else default


def _in_callback(frame) -> bool:
    """Inside a weakref callback or ``__del__``, where Python would print and drop the exception."""
    while frame is not None:
        if frame.f_code.co_name == "__del__" or frame.f_code.co_filename.endswith("weakref.py"):
            return True
        frame = frame.f_back
    return False


def release(error: BaseException) -> None:
    """Let go of what code cut short by a stop still holds. A Ctrl-C or SIGTERM that lands inside a SQLite read
    leaves its cursor alive in the traceback's frames, and an open cursor keeps the database's shared lock: every
    later write (recording the interrupted trial, another worker) would wait out the busy timeout and fail.
    Clearing the finished frames of the traceback and collecting the cycles they formed closes the cursor (and
    frees the tensors an interrupted training step held)."""
    import gc
    import traceback

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__context__
    gc.collect()


def stop_error(reason: str = "") -> KeyboardInterrupt:
    """The exception that carries a stop on, after the training it interrupted has returned."""
    return Interrupted(_received) if _received is not None else KeyboardInterrupt(reason)


def check() -> None:
    """Raise the stop again if a signal came but its exception was lost on the way (see the module docstring)."""
    if _received is not None and not _acknowledged:
        raise Interrupted(_received)


def acknowledge() -> None:
    """The engine is handling the stop: :func:`check` stays quiet while it records the trial."""
    global _acknowledged
    _acknowledged = True


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


def stop_processes(children: list) -> None:
    """Stop worker processes (``multiprocessing.Process``): SIGTERM, then SIGKILL after 30 s."""
    for p in children:
        if p.is_alive():
            p.terminate()
    for p in children:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join()


@contextlib.contextmanager
def processes_beside(target, args_of, count: int):
    """Run ``count`` worker processes, ``target(*args_of(i))`` for i = 1 .. count, beside the ``with`` block.

    They are spawned (fresh interpreters: no forked torch or CUDA state). The block's end waits for them; an
    error or Ctrl-C in the block, or while they start, stops them (:func:`stop_processes`). Yields the list of
    processes; :func:`failed_processes` then says which ended with an error."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    children: list = []
    try:
        for i in range(1, count + 1):
            p = ctx.Process(target=target, args=args_of(i), daemon=False)
            p.start()
            children.append(p)
        yield children
        for p in children:
            p.join()
    except BaseException:
        stop_processes(children)
        raise


def failed_processes(children: list) -> list[tuple[int, int]]:
    """(worker index from 1, exit code) of each finished worker process that did not exit cleanly."""
    return [(i, p.exitcode) for i, p in enumerate(children, 1) if p.exitcode]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (one owned by another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
