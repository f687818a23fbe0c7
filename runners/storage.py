"""Optuna storages for ``search run``: which storage a run uses, opening it, and recovering lost trials.

* a SQLite file by default (optuna-dashboard reads it); any RDB URL, or a journal file for several processes
  (SQLite's file locking does not suit many writers, so ``workers > 1`` on SQLite is refused);
* RDB storages run Optuna's heartbeats (a trial whose process stopped beating is failed and retried); on any
  storage, a RUNNING trial whose process on this host is gone is failed and retried at once, so a rerun after
  ``kill -9`` picks the trial up again without waiting for a grace period.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path
from typing import Optional

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search_space.config import SearchConfig
from search_space.schema import SpecError

HEARTBEAT_S = 20  # RDB storages: seconds between heartbeats of a running trial
GRACE_S = 60  # ... and the silence after which it counts as lost
MAX_RETRY = 2  # a lost (killed, interrupted) trial is run again at most this often


def storage_url(search: SearchConfig, out: Path) -> str:
    """The storage URL a run uses, with file paths made absolute so ``search show`` works from anywhere."""
    url = search.storage or f"sqlite:///{out / 'study.db'}"
    if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
        return "journal:" + str(Path(url.removeprefix("journal:")).expanduser().resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and url != "sqlite:///:memory:":
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return "sqlite:///" + str(Path(url).expanduser().resolve())
        raise SpecError("search.storage", f"{url!r} is not a storage: use sqlite:///FILE.db, postgresql://..., "
                                          f"mysql://..., journal:FILE or FILE.log")
    return url


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def open_storage(url: str) -> BaseStorage:
    """A journal file, or an RDB storage with heartbeats (lost trials are failed and retried)."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if is_sqlite(url) and url.startswith("sqlite:////"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats and their retry callback are "experimental"
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except ImportError as e:
        raise SpecError("search.storage", f"{url.split(':')[0]} needs a driver that is not installed ({e})") from None
    except Exception as e:  # noqa: BLE001 - a wrong URL or an unreachable server is bad input
        raise SpecError("search.storage", f"cannot open {url}: {str(e).splitlines()[0]}") from None


def check_workers(url: str, workers: int, out: Path) -> None:
    if workers > 1 and is_sqlite(url):
        raise SpecError("search.workers", f"{workers} workers cannot share a SQLite study (its file lock does not "
                        f"suit several writers); use --storage journal:{out / 'journal.log'} (a journal file) "
                        f"or a postgresql:// or mysql:// URL")


# Workers: who runs a trial, and whether that process is still alive


def _process_started(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from the original."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_started(pid)}


def process_alive(host: str, pid: int, started: Optional[int]) -> Optional[bool]:
    """True/False for a process on this host; None for another host (its heartbeat decides)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return started is None or _process_started(pid) == started


def recover_lost_trials(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose process on this host is gone, and enqueue them again (at most MAX_RETRY times).

    Returns the numbers of the trials recovered. Another process may recover the same trial at the same moment;
    the storage lets only one of them finish it, and only that one re-enqueues it.
    """
    recovered = []
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        who = t.user_attrs.get("worker_info")
        if not who or who.get("trial") != t.number:
            continue  # not claimed yet (a retried trial carries its predecessor's attrs until its worker writes)
        if process_alive(who["host"], who["pid"], who.get("started")) is not False:
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "status", "lost")
            storage.set_trial_user_attr(t._trial_id, "reason", f"its process {who['host']}:{who['pid']} died; retried")
            if not storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry_trial(study, storage.get_trial(t._trial_id))
        recovered.append(t.number)
    return recovered


def retry_trial(study: optuna.Study, failed: FrozenTrial) -> None:
    """Enqueue a failed trial's params again (Optuna's heartbeat retry, so both paths leave the same record)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the callback is "experimental"
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, failed)
