"""Optuna storages for ``search run``: which storage a run uses, opening it, guarding it, and recovering lost trials.

* a SQLite file by default (optuna-dashboard reads it), held by one process at a time through an exclusive lock
  file in the run directory; any RDB URL, or a journal file, for several processes (SQLite's file locking does not
  suit many writers, so ``workers > 1`` on SQLite is refused);
* a run directory whose ``trials/`` exist but whose study file is gone or empty is refused, never started over;
* passwords in storage URLs are never printed or written (:func:`masked`); libpq reads them from ``PGPASSWORD``
  or ``~/.pgpass`` when the URL leaves them out;
* lost trials (their process was killed) are failed with status ``lost`` and enqueued again (at most
  ``MAX_RETRY`` times): at once when their process on this host is gone (a zombie counts as gone), through
  heartbeats for other hosts (Optuna's on RDB storages; on journal files, which have none, a ``beat`` user
  attribute that the worker's thread renews every ``HEARTBEAT_S``, see :func:`heartbeat`), and by age for trials
  created but never claimed by a worker.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import re
import socket
import threading
import time
import warnings
from datetime import datetime
from pathlib import Path
from typing import Optional

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search_space.config import SearchConfig
from search_space.schema import SpecError, redact

HEARTBEAT_S = int(os.environ.get("SEARCH_HEARTBEAT_S", 20))  # RDB storages: seconds between heartbeats
GRACE_S = int(os.environ.get("SEARCH_GRACE_S", 60))  # ... and the silence after which a trial counts as lost
UNCLAIMED_S = 15  # a trial created but not claimed for this long was lost between the two (a claim takes ms)
MAX_RETRY = 2  # a lost (killed, interrupted) trial is run again at most this often
SQLITE_BUSY_S = 60  # a SQLite write waits this long for another connection's lock before it fails


# ----------------------------------------------------------------------------------------------------------------
# URLs
# ----------------------------------------------------------------------------------------------------------------


def storage_url(search: SearchConfig, out: Path) -> str:
    """The storage URL a run uses, with file paths made absolute so ``search show`` works from anywhere, and a
    plain ``postgresql://`` given the psycopg 3 driver when it is installed (SQLAlchemy 2 defaults to psycopg2)."""
    url = search.storage or f"sqlite:///{out / 'study.db'}"
    if url.startswith("journal:") or (url.endswith(".log") and "://" not in url):
        return "journal:" + str(Path(url.removeprefix("journal:")).expanduser().resolve())
    if url == "sqlite:///:memory:" or url == "sqlite://":
        raise SpecError("search.storage", f"{url!r} keeps the study in memory, where a rerun cannot resume it and "
                                          f"`search show` cannot read it; use sqlite:///FILE.db or leave it out")
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    if "://" not in url:
        if url.endswith((".db", ".sqlite", ".sqlite3")):
            return "sqlite:///" + str(Path(url).expanduser().resolve())
        raise SpecError("search.storage", f"{masked(url)!r} is not a storage: use sqlite:///FILE.db, postgresql://..., "
                                          f"mysql://..., journal:FILE or FILE.log")
    if url.startswith(("postgresql://", "postgres://")):
        rest = url.split("://", 1)[1]
        if importlib.util.find_spec("psycopg") is not None or importlib.util.find_spec("psycopg2") is None:
            return "postgresql+psycopg://" + rest
        return "postgresql://" + rest
    return url


def masked(url: str) -> str:
    """The URL with its passwords replaced by ``***`` (the user part's and any ``?password=``/``token=`` query
    value): what headers, errors and ``search show`` print."""
    return redact(url)


def without_password(url: str) -> str:
    """The URL with no password at all (written to ``run.json``; libpq then reads PGPASSWORD or ~/.pgpass): the
    user part's password and every secret query parameter are dropped."""
    m = masked(url)
    m = m.replace(":***@", "@")
    if "?" in m:
        base, query = m.split("?", 1)
        kept = [kv for kv in re.split(r"[&;]", query) if not kv.endswith("=***")]
        m = base + ("?" + "&".join(kept) if kept else "")
    return m


def secrets_of(url: str) -> list[str]:
    """The passwords a URL carries, raw and percent-decoded (a driver may echo either), longest first."""
    from urllib.parse import unquote

    found = []
    rest = url.split("://", 1)[1] if "://" in url else ""
    creds = rest.rsplit("@", 1)[0] if "@" in rest.split("?", 1)[0] else ""
    if ":" in creds:
        found.append(creds.split(":", 1)[1])
    redacted = redact(url)
    if "?" in url and redacted != url:
        for kv in re.split(r"[&;]", url.split("?", 1)[1]):
            key, _, value = kv.partition("=")
            if value and redact(f"?{key}=x").endswith("=***"):
                found.append(value)
    found += [unquote(f) for f in found]
    return sorted({f for f in found if f}, key=len, reverse=True)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def sqlite_path(url: str) -> Optional[Path]:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def journal_path(url: str) -> Optional[Path]:
    return Path(url.removeprefix("journal:")) if url.startswith("journal:") else None


# ----------------------------------------------------------------------------------------------------------------
# Opening
# ----------------------------------------------------------------------------------------------------------------


def open_storage(url: str, read_only: bool = False) -> BaseStorage:
    """A journal file, or an RDB storage with heartbeats (lost trials are failed and retried). ``read_only``
    (``search show``): a SQLite file is opened read-only and a missing file is an error, never created."""
    if url.startswith("journal:"):
        path = journal_path(url)
        if read_only and not path.exists():
            raise SpecError("search.storage", f"journal file {path} is missing")
        if not read_only:
            make_parent(path, "journal file")
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except Exception as e:  # noqa: BLE001 - replaying a file of anything else fails somewhere inside Optuna
            raise SpecError("search.storage", f"{path} is not an Optuna journal file ({type(e).__name__}: "
                                              f"{first_line(e)[:120]}); give a new file, or restore the journal "
                                              f"from a copy") from None
    engine_kwargs = {}
    path = sqlite_path(url)
    if path is not None:
        if read_only:
            if not path.exists() or path.stat().st_size == 0:
                raise SpecError("search.storage", f"study file {path} is missing or empty")
            check_sqlite_study(path)
            url = f"sqlite:///file:{path}?mode=ro&uri=true"
        else:
            make_parent(path, "study file")
            check_sqlite_study(path)
            engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_S}}  # our workers and dashboards wait
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats and their retry callback are "experimental"
            return RDBStorage(url, engine_kwargs=engine_kwargs or None, heartbeat_interval=HEARTBEAT_S,
                              grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except ImportError as e:
        raise SpecError("search.storage", driver_hint(url, e)) from None
    except Exception as e:  # noqa: BLE001 - a wrong URL or an unreachable server is bad input
        text = masked(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise SpecError("search.storage", f"cannot open {masked(url)}: {hide_secrets(text, url)}") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def make_parent(path: Path, what: str) -> None:
    """The directory of a storage file, made if missing; a path no directory can be made at is bad input."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocked = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocked} is a file, not a directory" if blocked else f"{e.filename or path.parent}: {e.strerror or e}"
        raise SpecError("search.storage", f"cannot make the directory of the {what} {path} ({why}); give a path "
                                          f"under a directory that exists or can be made") from None


OPTUNA_TABLES = {"studies", "version_info"}


def check_sqlite_study(path: Path) -> None:
    """An existing SQLite file must be a sound Optuna study (or empty): refuse a damaged file with one line instead
    of a traceback from deep inside a read, and never add Optuna's tables to a database of the user's own."""
    import sqlite3

    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=SQLITE_BUSY_S)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            check = db.execute("PRAGMA quick_check(1)").fetchone()[0] if tables else "ok"
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise SpecError("search.storage", f"{path} is damaged or not a SQLite database ({first_line(e)}); restore "
                                          f"it from a copy, or start fresh with another --out") from None
    if check != "ok":
        said = " ".join(check.split())[:160]
        raise SpecError("search.storage", f"{path} is damaged (SQLite's check: {said}); restore it from a copy, or "
                                          f"start fresh with another --out") from None
    if tables and not OPTUNA_TABLES <= tables:
        raise SpecError("search.storage", f"{path} is a SQLite database with {len(tables)} table(s) of its own but "
                                          f"no Optuna study, and Optuna would add its tables to it; give a new file "
                                          f"for the study") from None


def driver_hint(url: str, error: Exception) -> str:
    scheme = url.split(":", 1)[0]
    if scheme.startswith("postgres"):
        return (f"cannot open {masked(url)}: {scheme} needs the psycopg 3 driver, which is not installed "
                f"({error}): pip install 'psycopg[binary]' (then postgresql:// URLs use it)")
    return f"cannot open {masked(url)}: {scheme} needs a database driver that is not installed ({error})"


def hide_secrets(text: str, url: str) -> str:
    """An error message with the URL's passwords removed wherever the driver echoed them (raw or decoded)."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***")
    return redact(text)


def check_workers(url: str, workers: int, out: Path) -> None:
    if workers > 1 and is_sqlite(url):
        raise SpecError("search.workers", f"{workers} workers cannot share a SQLite study (its file lock does not "
                        f"suit several writers); use --storage journal:{out / 'journal.log'} (a journal file) "
                        f"or a postgresql:// or mysql:// URL")


def check_study_present(url: str, out: Path) -> None:
    """Refuse to start a study over when the run directory holds trials of one whose file was deleted or emptied:
    the new trial 0 would overwrite the old ``trials/0/``."""
    old = [p for p in (out / "trials").glob("*") if p.name.isdigit()] if (out / "trials").is_dir() else []
    if not old:
        return
    for path, what in ((sqlite_path(url), "study file"), (journal_path(url), "journal file")):
        if path is not None and (not path.exists() or path.stat().st_size == 0):
            raise SpecError("search.storage", f"{out}/trials holds {len(old)} trial(s) but the {what} {path} is "
                            f"{'missing' if not path.exists() else 'empty'}, so the study cannot resume; restore "
                            f"it, or start fresh with another --out (or after moving {out} away)")


def check_study_known(study_names: list[str], name: str, url: str, out: Path) -> None:
    """The same refusal for a storage that exists but lacks this run's study (another study in one file)."""
    old = [p for p in (out / "trials").glob("*") if p.name.isdigit()] if (out / "trials").is_dir() else []
    if old and name not in study_names:
        raise SpecError("search.study_name", f"{out}/trials holds {len(old)} trial(s) but {masked(url)} has no study "
                        f"{name!r}, so they would be overwritten; give the --study-name they belong to, or start "
                        f"fresh with another --out")


class RunLock:
    """An exclusive ``flock`` on ``<study file>.lock``, held for the life of the run: a second process on the same
    SQLite study is refused at once instead of drawing the same trials (the lock dies with its process)."""

    def __init__(self, db: Path):
        self.path = db.with_name(db.name + ".lock")
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        import fcntl

        make_parent(self.path.with_name(self.path.name.removesuffix(".lock")), "study file")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise
            raise SpecError("search.storage", f"{self.path.parent} is in use by another `search run` ({holder}); a "
                            f"SQLite study serves one process: for several workers use --workers N with "
                            f"--storage journal:{self.path.parent / 'journal.log'} (or a postgresql:// URL) "
                            f"in every process") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


# ----------------------------------------------------------------------------------------------------------------
# Workers: who runs a trial, and whether that process is still alive
# ----------------------------------------------------------------------------------------------------------------


def _proc_stat(pid: int) -> Optional[list[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _process_started(pid: int) -> Optional[int]:
    """Start time of a process in clock ticks since boot (Linux), to tell a reused pid from the original."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def worker_identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "started": _process_started(pid)}


def process_alive(host: str, pid: int, started: Optional[int]) -> Optional[bool]:
    """True/False for a process on this host (a zombie, dead but not yet reaped, is False); None for another host
    (its heartbeat decides)."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return False
    return started is None or _process_started(pid) == started


def claim(trial_id: int, number: int, storage: BaseStorage, identity: dict) -> None:
    """Mark a trial as this process's at once, so recovery can tell a live worker's trial from a lost one."""
    storage.set_trial_user_attr(trial_id, "worker", f"{identity['host']}:{identity['pid']}")
    storage.set_trial_user_attr(trial_id, "worker_info", {**identity, "trial": number})
    storage.set_trial_user_attr(trial_id, "status", "running")
    storage.set_trial_user_attr(trial_id, "reason", "")  # a retry carries its predecessor's until now


class _BeatThread:
    """Renews the trial's ``beat`` user attribute (wall-clock seconds) every ``HEARTBEAT_S``: a journal file has
    no heartbeats of its own, and without one a worker that died on another host would hold its trial forever."""

    def __init__(self, trial_id: int, storage: BaseStorage):
        self.trial_id, self.storage = trial_id, storage
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"beat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.storage.set_trial_user_attr(self.trial_id, "beat", time.time())
            except Exception:  # the trial finished meanwhile, or the storage is briefly unwritable: try again
                pass
            if self.stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> "_BeatThread":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def heartbeat(trial_id: int, storage: BaseStorage):
    """A context that keeps a running trial's heartbeat: Optuna's own on RDB storages, a ``beat`` attribute on
    journal files (shared by processes on several hosts, so a silent worker can be told from a slow one)."""
    if is_heartbeat_enabled(storage) or not isinstance(storage, JournalStorage):
        return get_heartbeat_thread(trial_id, storage)
    return _BeatThread(trial_id, storage)


def _silence(t: FrozenTrial) -> float:
    """Seconds since the trial's last ``beat`` (or its start, before the first)."""
    last = t.user_attrs.get("beat")
    if not isinstance(last, (int, float)):
        last = t.datetime_start.timestamp() if t.datetime_start else time.time()
    return time.time() - last


def _lost_reason(t: FrozenTrial, exclusive: bool, own: dict, current: Optional[int],
                 stale: set[int], beats: bool = False) -> Optional[str]:
    """Why a RUNNING trial is lost, or None while it may still be running somewhere."""
    if t._trial_id == current:
        return None
    if t._trial_id in stale:
        return f"its worker sent no heartbeat for {GRACE_S}s"
    who = t.user_attrs.get("worker_info")
    claimed = bool(who) and who.get("trial") == t.number
    if not claimed:
        # Created (or popped from the queue) and never claimed: its process died in between.
        age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else 0.0
        if exclusive:
            return "its process died before it started the trial"
        return f"no worker claimed it for {age:.0f}s" if age > UNCLAIMED_S else None
    if exclusive or (who["host"] == own["host"] and who["pid"] == own["pid"]
                     and who.get("started") == own.get("started")):
        return f"its process {who['host']}:{who['pid']} stopped while running it"
    alive = process_alive(who["host"], who["pid"], who.get("started"))
    if alive is False:
        return f"its process {who['host']}:{who['pid']} died"
    if alive is None and beats:
        silent = _silence(t)
        if silent > GRACE_S:
            return f"its worker {who['host']}:{who['pid']} sent no heartbeat for {silent:.0f}s"
    return None


def recover_lost_trials(study: optuna.Study, exclusive: bool = False, own: Optional[dict] = None,
                        current: Optional[int] = None) -> list[int]:
    """Fail lost RUNNING trials with status ``lost`` and their reason, and enqueue them again (at most MAX_RETRY
    times). ``exclusive``: this process holds the study's lock, so no RUNNING trial but ``current`` is alive.

    Returns the numbers of the trials recovered. Another process may recover the same trial at the same moment;
    the storage lets only one of them finish it, and only that one re-enqueues it.
    """
    own = own or worker_identity()
    storage = study._storage
    stale: set[int] = set()
    if is_heartbeat_enabled(storage):  # the study's storage wraps the RDBStorage in a cache
        stale = set(storage._get_stale_trial_ids(study._study_id))
    beats = isinstance(storage, JournalStorage)  # journal files: our own beat attribute (see heartbeat())
    recovered = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = _lost_reason(t, exclusive, own, current, stale, beats)
        if reason is None:
            continue
        if t.user_attrs.get("reason") and t.user_attrs.get("status") == "running":
            reason = t.user_attrs["reason"]  # what its process noted before it stopped (a full disk)
        try:
            storage.set_trial_user_attr(t._trial_id, "status", "lost")
            storage.set_trial_user_attr(t._trial_id, "reason", f"{reason}; retried")
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

