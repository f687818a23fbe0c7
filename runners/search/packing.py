"""Several trials on one GPU, admitted by what they really need: the memory model and a ledger the processes share.

A proxy model leaves most of a big GPU idle, so ``search run --trials-per-gpu N|auto`` runs N trial processes on
one device. Fractional GPUs limit nothing (a bigger sampled architecture runs the card out of memory and takes
its neighbours down), so each trial, before it trains, reserves its *predicted* training memory in a
:class:`Ledger`: a JSON file under an exclusive ``flock`` that every process on that device reads and writes. A
trial waits while the card is full; one that cannot fit even alone is ``oom`` before it starts, with the numbers;
one that still runs out of memory on a shared card is retried alone (the ledger then holds the whole card for
it), and only an OOM alone is the architecture's ``oom``.

What a trial reserves (:func:`trial_need`): the memory model's training step (search_space/memory.py: weights,
gradients, optimizer state, what autograd saves, autocast's weight copies), the EMA copy of the weights when
``train.rung_ema_epochs`` keeps one, and the dataset the process holds on the device; times ``1 + MARGIN`` plus
``SLACK_MB`` on a GPU, for what the model leaves out (the caching allocator's rounding and fragmentation, cuDNN
workspaces, the transient tensors of the step). What the ledger hands out (:func:`device_capacity`): the card's
memory less ``CONTEXT_MB`` per process for the CUDA context, which lives outside PyTorch's allocator.

The constants are starting values, not yet calibrated on a GPU (docs/gpus.md; benchmarks/packing.py --device
cuda measures peak memory against the ledger when a GPU is at hand).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from runners.common.signals import pid_alive

MIB = 2**20
MARGIN = 0.25         # reserve the prediction times 1.25 ...
SLACK_MB = 128        # ... plus 128 MiB (allocator rounding, cuDNN workspaces, transients)
CONTEXT_MB = 512      # a CUDA context per process, outside PyTorch's allocator
AUTO_MAX_CUDA = 14    # --trials-per-gpu auto on a GPU: at most this many processes (the H100 figure of issue 25)
POLL_S = 0.25         # how often a waiting trial looks at the ledger again
LEDGER_DIR_ENV = "SEARCH_LEDGER_DIR"


def auto_processes(device_type: str) -> int:
    """Processes for ``--trials-per-gpu auto``: each needs a CPU core to launch its kernels, so never more than
    the cores; on a GPU at most AUTO_MAX_CUDA (past that, launches from more processes queue behind each other)."""
    cores = os.cpu_count() or 1
    return max(1, min(cores, AUTO_MAX_CUDA) if device_type == "cuda" else cores)


def resolve_trials_per_gpu(value, device_type: str) -> int:
    return auto_processes(device_type) if value == "auto" else int(value)


def device_key(device) -> str:
    """A name for the device that every process on the machine agrees on (the GPU's UUID where torch knows it)."""
    if device.type != "cuda":
        return device.type
    import torch

    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"cuda-{uuid}" if uuid is not None else f"cuda{index}"


def ledger_path(device) -> Path:
    """``$SEARCH_LEDGER_DIR`` (default: the system's temp dir, /search-space-ledger) / <device>.json: one file per
    device per machine, shared by every run that packs trials onto it."""
    folder = Path(os.environ.get(LEDGER_DIR_ENV) or Path(tempfile.gettempdir()) / "search-space-ledger")
    return folder / f"{device_key(device)}.json"


def device_capacity(device, memory_mb: Optional[float], processes: int) -> int:
    """Bytes the ledger hands out: ``memory_mb`` (search.device_memory_mb; a made-up card on the CPU) or the GPU's
    total memory, less a CUDA context per process on a GPU."""
    if memory_mb is not None:
        total = int(memory_mb * MIB)
    elif device.type == "cuda":
        import torch

        total = torch.cuda.get_device_properties(device).total_memory
    else:
        from search_space.schema import SpecError

        raise SpecError("search.device_memory_mb", f"is needed to pack trials on the {device.type} (the ledger "
                                                   f"needs a size to hand out); give it in MiB, or use a GPU")
    context = CONTEXT_MB * MIB * processes if device.type == "cuda" else 0
    return max(0, total - context)


@dataclass
class Need:
    """What one trial reserves, and where the figure comes from."""

    reserve: int        # bytes a trial needs in the ledger, all told (the data's share included)
    predicted: int      # the model's prediction (training step + EMA + data)
    step: int           # the training step alone (search_space.memory.TrainMemory.total_bytes)
    data: int           # the dataset resident on the device
    resident: int = 0   # the data's share of ``reserve``: held by the process from its first trial to its end

    def to_json(self) -> dict:
        return {"reserved_bytes": self.reserve, "reserved_mb": round(self.reserve / MIB, 1),
                "predicted_mb": round(self.predicted / MIB, 1), "step_mb": round(self.step / MIB, 1),
                "data_mb": round(self.data / MIB, 1)}


def trial_need(sampled, data, device) -> Need:
    """The memory a trial of ``sampled`` (a fixed spec) reserves on ``device`` with ``data`` (a Dataset, or None
    before it is loaded: the data then counts 0)."""
    from search_space.memory import architecture_memory

    from runners.training.loop import amp_dtype_for

    train = sampled.train
    size = train.image_size or sampled.model.input_size
    rows = len(data.train_y) if data is not None else train.batch_size
    amp = amp_dtype_for(train.amp, device) is not None
    m = architecture_memory(sampled.model, min(train.batch_size, rows), size,
                            in_channels=data.channels if data is not None else None,
                            num_classes=data.num_classes if data is not None else None, amp=amp,
                            optimizer=train.optimizer, momentum=train.momentum,
                            device="cuda" if device.type == "cuda" else "cpu")
    ema = m.param_bytes + m.buffer_bytes if train.rung_ema_epochs is not None and train.epochs >= 2 else 0
    data_bytes = 0
    if data is not None:
        data_bytes = sum(t.numel() * t.element_size() for t in (data.train_x, data.train_y, data.val_x,
                                                                 data.val_y, data.test_x, data.test_y))
    predicted = m.total_bytes + ema + data_bytes
    slack = SLACK_MB * MIB if device.type == "cuda" else 0  # cuDNN and the caching allocator are CUDA's
    return Need(int(predicted * (1 + MARGIN)) + slack, predicted, m.total_bytes, data_bytes,
                int(data_bytes * (1 + MARGIN)))


class Ledger:
    """The reservations on one device: ``{"entries": {key: {pid, host, bytes, trial, alone, since}},
    "admissions": n}`` in a JSON file, read and written only under an exclusive ``flock`` of ``<file>.lock``.
    Entries of processes that died on this host are dropped on every read, so a killed trial frees its share."""

    def __init__(self, path: Path, capacity: int):
        self.path = Path(path)
        self.capacity = capacity
        self.host = socket.gethostname()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict]:
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    state = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    state = {}
                state.setdefault("entries", {})
                state.setdefault("admissions", 0)
                state["entries"] = {k: e for k, e in state["entries"].items()
                                    if e.get("host") != self.host or pid_alive(int(e.get("pid", 0)))}
                before = json.dumps(state, sort_keys=True)
                yield state
                if json.dumps(state, sort_keys=True) != before:
                    tmp = self.path.with_suffix(f".tmp{os.getpid()}")
                    tmp.write_text(json.dumps(state, indent=1))
                    tmp.replace(self.path)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def entries(self) -> dict:
        with self._locked() as state:
            return dict(state["entries"])

    def try_reserve(self, key: str, nbytes: int, trial=None, alone: bool = False, resident_key: str = "",
                    resident: int = 0) -> Optional[dict]:
        """Take ``nbytes`` for a trial if they fit now (``alone``: once no other trial holds any, all the card
        that no process's resident data holds). ``resident`` bytes under ``resident_key`` are the process's data on
        the device: taken with its first trial and kept until the process ends (its dataset stays cached there
        between trials). Returns None when it does not fit, else ``{"admission": n, "others": k}`` (k: trials held
        by others at admission)."""
        with self._locked() as state:
            entries = state["entries"]
            trials = {k: e for k, e in entries.items() if e.get("kind", "trial") == "trial"}
            if any(e.get("alone") for e in trials.values()):
                return None
            add = resident if resident_key and resident_key not in entries else 0
            used = sum(e["bytes"] for e in entries.values()) + add
            if alone:
                if trials:
                    return None
                nbytes = max(nbytes, self.capacity - used)
            elif used + nbytes > self.capacity:
                return None
            state["admissions"] += 1
            now = time.time()
            if add:
                entries[resident_key] = {"pid": os.getpid(), "host": self.host, "bytes": add, "kind": "resident",
                                         "since": now}
            entries[key] = {"pid": os.getpid(), "host": self.host, "bytes": nbytes, "trial": trial,
                            "alone": alone, "kind": "trial", "since": now}
            return {"admission": state["admissions"], "others": len(trials)}

    def release(self, key: str) -> int:
        """Drop ``key``; returns the admission count, so a holder can tell whether anyone joined while it ran."""
        with self._locked() as state:
            state["entries"].pop(key, None)
            return state["admissions"]

    def used(self) -> int:
        return sum(e["bytes"] for e in self.entries().values())


@dataclass
class Held:
    shared: bool = False  # another trial held memory on the device at some time while this one did


class Packing:
    """The gate the trial core passes a trial through (:class:`runners.search.trial.Evaluator`'s ``packing``)."""

    def __init__(self, ledger: Ledger, device):
        self.ledger = ledger
        self.device = device

    @property
    def capacity(self) -> int:
        return self.ledger.capacity

    def need(self, sampled, data) -> Need:
        return trial_need(sampled, data, self.device)

    @contextlib.contextmanager
    def hold(self, number, nbytes: int, status: Callable[[str], None], alone: bool = False,
             resident: int = 0) -> Iterator[Held]:
        """Wait until ``nbytes`` fit (``alone``: until no other trial runs, then hold all the card), hold them for
        the ``with`` block, then free the device's cached memory and the reservation. ``resident``: the process's
        data on the device, reserved with its first trial and kept (see :meth:`Ledger.try_reserve`)."""
        from runners.common import signals

        key = f"{self.ledger.host}:{os.getpid()}:{number}"
        resident_key = f"{self.ledger.host}:{os.getpid()}:data"
        waited = 0.0
        while True:
            got = self.ledger.try_reserve(key, nbytes, trial=number, alone=alone, resident_key=resident_key,
                                          resident=resident)
            if got is not None:
                break
            signals.check()
            used = self.ledger.used()
            status(f"trial {number}: waiting for device memory ({'the whole card' if alone else f'{nbytes / MIB:.0f} MiB'}"
                   f"; {used / MIB:.0f} of {self.capacity / MIB:.0f} MiB reserved, {waited:.0f}s)")
            time.sleep(POLL_S)
            waited += POLL_S
        held = Held(shared=got["others"] > 0)
        try:
            yield held
        finally:
            if self.device.type == "cuda":
                from runners.training.device import free_memory

                free_memory(self.device)  # give the cached blocks back before the ledger says they are free
            admissions = self.ledger.release(key)
            held.shared = held.shared or admissions != got["admission"]  # someone was admitted while this ran
