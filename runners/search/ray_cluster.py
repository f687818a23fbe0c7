"""Where the Ray engine runs, and how it stops: a local Ray that only this machine can reach, or a cluster joined
within a bounded time; per-trial resources checked against the nodes that must hold them; SIGTERM and SIGHUP
ending the run the way Ctrl-C does.

* **A local Ray listens on loopback only.** Without ``--address`` the engine starts its own Ray with every server
  (GCS, raylet, object manager, worker processes) bound to 127.0.0.1 and no dashboard: a laptop on a café's
  network offers nothing to it. Ray picks its node address when it is imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``
  off means "this machine only"), so the setting is made both in the environment (for the processes Ray starts)
  and in Ray's already-imported constants.
* **Joining a cluster gives up in bounded time.** Ray itself waits minutes for an address nothing answers. Here
  the head's port must accept a TCP connection within ``CONNECT_TIMEOUT_S`` and its GCS must answer within
  ``GCS_TIMEOUT_S``; otherwise one line says which, and the command exits 2.
* **Resources are numbers a node can hold**: CPUs per trial finite and above 0, GPUs finite and at least 0 (0:
  trials train on the CPU), a quantity above 1 whole (Ray's rule), and neither more than the largest node offers
  (Ray would wait for such a node forever).
* **Stops**: Ray installs a SIGTERM handler that exits mid-call (an abort with a native stack dump) and none for
  SIGHUP. :class:`RayStops` turns both into Tune's own graceful stop (the one Ctrl-C triggers: trials stop, the
  experiment is saved), and remembers the signal so the command exits 128 + its number.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import threading
from typing import Optional, Union

from search_space.schema import SpecError

LOCAL_HOST = "127.0.0.1"
CONNECT_TIMEOUT_S = 10.0  # the head's port must accept a TCP connection within this
GCS_TIMEOUT_S = 4.0  # ... and its GCS answer within this (Ray's own client logs a warning after 5 s)


# ----------------------------------------------------------------------------------------------------------------
# Per-trial resources
# ----------------------------------------------------------------------------------------------------------------


def check_per_trial(value: Union[float, str, None], flag: str, minimum: float) -> None:
    """A per-trial resource is a finite number of at least ``minimum`` (above it when ``minimum`` is 0 for CPUs),
    whole when above 1. A string (``--gpus-per-trial auto``) is the caller's to check."""
    if value is None or isinstance(value, str):
        return
    what = "CPUs" if "cpu" in flag else "GPUs"
    if not math.isfinite(value):
        raise SpecError(flag, f"{value} is not a number of {what}; give a finite number such as 1 or 0.5")
    if value < minimum or (flag == "--cpus-per-trial" and value <= 0):
        allowed = "above 0 (fractions share a CPU)" if flag == "--cpus-per-trial" else \
            "0 (train on the CPU) or more (fractions share a GPU)"
        raise SpecError(flag, f"{value:g} {what} per trial; allowed: {allowed}")
    if value > 1 and value != int(value):
        raise SpecError(flag, f"{value:g} {what} per trial: Ray takes a fraction of one {what[:-1]} or a whole "
                              f"number; use {math.floor(value)} or {math.ceil(value)}")


def check_fits_nodes(nodes: list[dict], cpus: float, gpus: Union[float, str]) -> None:
    """Refuse a trial no alive node can hold: Ray would leave it pending, and the search would wait forever."""
    for flag, key, want in (("--cpus-per-trial", "CPU", cpus), ("--gpus-per-trial", "GPU", gpus)):
        if isinstance(want, str) or not want:
            continue
        most = max((float(n.get("Resources", {}).get(key, 0)) for n in nodes), default=0.0)
        if want > most:
            where = "this machine" if len(nodes) == 1 else f"the largest of the cluster's {len(nodes)} nodes"
            raise SpecError(flag, f"{want:g} {key}s per trial, but {where} has {most:g}; ask for at most {most:g}")


# ----------------------------------------------------------------------------------------------------------------
# Starting or joining Ray
# ----------------------------------------------------------------------------------------------------------------


def loopback_only() -> None:
    """Make a Ray started from this process listen on 127.0.0.1 only (see the module docstring)."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    except (ImportError, AttributeError):  # a Ray without the switch: the environment variable is all there is
        pass


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SpecError("--address", f"{address!r} is not HOST:PORT (or auto); the head prints its address when "
                                     f"`ray start --head` starts")
    return host.strip("[]"), int(port)


def _resolve(address: str) -> str:
    """HOST:PORT of the cluster ``address`` names (``auto``: RAY_ADDRESS, or the cluster this machine last
    started), without connecting."""
    if address != "auto":
        _host_port(address)
        return address
    from ray._private.services import canonicalize_bootstrap_address

    try:
        found = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError, RuntimeError) as e:
        found = None
        why = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    else:
        why = "no RAY_ADDRESS is set and no cluster was started on this machine"
    if not found:
        raise SpecError("--address", f"auto found no Ray cluster ({why}); start one with `ray start --head`, give "
                                     f"HOST:PORT, or leave --address out for a local Ray")
    return found


def probe(address: str) -> None:
    """Refuse, in at most CONNECT_TIMEOUT_S + GCS_TIMEOUT_S, an address where no Ray answers."""
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.timeout:
        raise SpecError("--address", f"nothing answered at {address} within {CONNECT_TIMEOUT_S:g} s (a host that "
                                     f"is down, or a firewall); check the head's address and that its port is "
                                     f"open to this machine") from None
    except OSError as e:
        raise SpecError("--address", f"cannot connect to {address}: {e.strerror or e}; start the head with "
                                     f"`ray start --head --port={port}`, or leave --address out for a local "
                                     f"Ray") from None
    answer: dict = {}

    def ask() -> None:  # a daemon thread: Ray's client may block far longer than we wait, and then just ends
        try:
            from ray._raylet import GcsClient

            answer["cluster"] = GcsClient(address=f"{host}:{port}").cluster_id
        except Exception as e:  # noqa: BLE001 - any failure means no usable Ray there
            answer["error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__

    thread = threading.Thread(target=ask, name="ray-probe", daemon=True)
    with _quiet_stderr():  # Ray's client logs its own failure (a native warning) besides the line we print
        thread.start()
        thread.join(GCS_TIMEOUT_S)
    if "cluster" not in answer:
        why = answer.get("error") or f"no answer within {GCS_TIMEOUT_S:g} s"
        if "auth" in why.lower():
            raise SpecError("--address", f"the Ray cluster at {address} refused this machine: it uses token "
                                         f"authentication; export RAY_AUTH_MODE=token, with the head's "
                                         f"~/.ray/auth_token here or its contents in RAY_AUTH_TOKEN")
        raise SpecError("--address", f"{address} accepts connections but no Ray cluster answered there ({why}); "
                                     f"give the head's GCS port (6379 unless `ray start --head --port` chose "
                                     f"another)")


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 points to /dev/null for the block (native code writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def connect(address: Optional[str], num_cpus: Optional[int] = None, resources: Optional[dict] = None) -> None:
    """Join a running cluster (``auto`` or HOST:PORT, checked by :func:`probe`) or start a local Ray bound to
    loopback (never a cluster that happens to run on this machine), with custom ``resources`` (the GPU memory
    ``--gpus-per-trial auto`` counts)."""
    import ray

    if ray.is_initialized():
        return
    quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
    try:
        if address:
            target = _resolve(address)
            probe(target)
            ray.init(address=target, **quiet)
        else:
            loopback_only()
            ray.init(address="local", num_cpus=num_cpus, resources=resources, _node_ip_address=LOCAL_HOST, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        if isinstance(e, SpecError):
            raise
        hint = (" (the cluster uses token authentication: export RAY_AUTH_MODE=token, with the head's "
                "~/.ray/auth_token here or in RAY_AUTH_TOKEN)" if "auth" in str(e).lower() else "")
        raise SpecError("--address", f"cannot reach a Ray cluster at {address!r}: {str(e).splitlines()[0][:200]}"
                                     f"{hint}; start one with `ray start --head`, or leave --address out for a local "
                                     f"Ray") from None


# ----------------------------------------------------------------------------------------------------------------
# Stopping
# ----------------------------------------------------------------------------------------------------------------


class RayStops:
    """For the life of a ``with`` block (main thread only): SIGTERM and SIGHUP stop the run as Ctrl-C does.

    Before Tune runs, a signal raises :class:`runners.common.signals.Interrupted` at once (nothing to save yet);
    while it runs, the signal is handed to Tune's own stop (its SIGUSR1 handler, which Ctrl-C also reaches), so
    running trials stop and the experiment is saved, and ``signum`` tells the caller which exit code to use.
    A second signal while stopping is reported and ignored."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signum: Optional[int] = None
        self.tuning = False
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        from runners.common.signals import Interrupted

        if self.signum is not None:
            print(f"{signal.Signals(signum).name}: already stopping (saving the Ray experiment)", flush=True,
                  file=sys.stderr)
            return
        self.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1)
        if not self.tuning or not callable(tune_stop):  # Tune has not installed its stop yet: nothing to save
            raise Interrupted(signum)
        tune_stop(signal.SIGUSR1, frame)  # Tune's graceful stop, as Ctrl-C triggers it

    def __enter__(self) -> "RayStops":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def install_again(self) -> None:
        """Ray's ``init`` replaces the SIGTERM handler with one that exits mid-call: take it back."""
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                signal.signal(s, self._handle)

    def __exit__(self, *exc) -> None:
        if self.signum is not None:
            for s in self.SIGNALS:  # stopping: a late signal while Python exits must not kill the process
                signal.signal(s, signal.SIG_IGN)
            return
        for s, old in self._old.items():
            signal.signal(s, old)


class OneLineTrialErrors(logging.Filter):
    """Tune logs a failed trial task with its whole traceback (20 lines for a killed worker's ActorDiedError); the
    engine prints its own line for each, so the record is cut to its first line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text = str(error).strip().splitlines()
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def quiet_trial_errors() -> None:
    for name in ("ray.tune.execution.tune_controller", "ray.tune"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, OneLineTrialErrors) for f in logger.filters):
            logger.addFilter(OneLineTrialErrors())
