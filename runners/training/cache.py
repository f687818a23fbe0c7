"""The cache of prepared datasets that ``imagefolder``, ``cifar10`` and ``cifar100`` prepare themselves into.

Pointing a run at raw images prepares them once (:mod:`runners.training.prepare`) into
``$SEARCH_DATA_CACHE`` (default ``$XDG_CACHE_HOME/search-space/data``, i.e. ``~/.cache/search-space/data``),
one directory per source, size and split recipe, named by a key made of the source's fingerprint (every file's
path, size and modification time), the size, the split settings and the format version. A changed source has
another fingerprint, so another key: it is prepared again, and the old entry is left for ``rm`` (its name says
which source it was).

Several processes may start together (the workers of a search, the trials of Ray on one node, an audit's
workers): the first takes an exclusive ``fcntl.flock`` on ``<entry>.lock`` and prepares; the others wait on the
lock, saying so once, and then map what it made. A finished entry appears with one ``rename``, so a reader
that finds ``meta.json`` needs no lock at all: later processes and runs only list the source (for the
fingerprint) and map the array. An entry that fails its checks (truncated, another format version) is prepared
again, with one line saying why.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from search_space.schema import SpecError

from .prepared import FORMAT_VERSION, Prepared, is_prepared, open_prepared

CACHE_ENV = "SEARCH_DATA_CACHE"


def cache_root() -> Path:
    """Where prepared copies of raw datasets live: ``$SEARCH_DATA_CACHE``, else the user's cache directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "search-space" / "data"


def entry_name(kind: str, root: Path, size: int, settings: dict, fingerprint: str) -> str:
    """``<kind>-<folder name>-<size>px-<key>``: readable, and unique per source state, size and recipe."""
    key = hashlib.sha256(json.dumps({"fingerprint": fingerprint, "size": size, "settings": settings,
                                     "version": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.name)[:40] or "root"
    return f"{kind}-{label}-{size}px-{key}"


def ensure(name: str, build: Callable[[Path], None], say: Optional[Callable[[str], None]] = None,
           root: Optional[Path] = None) -> Prepared:
    """The cache entry ``name``, built by ``build(path)`` (which must publish ``path`` atomically) when it is
    missing or damaged; two processes asking together build it once."""
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    root = root or cache_root()
    path = root / name
    if is_prepared(path):  # published entries are complete: no lock needed to read one
        try:
            return open_prepared(path, "cache")
        except SpecError:
            pass  # checked again, and rebuilt, under the lock
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / f"{name}.lock", "a+")
    except OSError as e:
        raise SpecError(CACHE_ENV, f"{root}: cannot use it as the data cache ({e.strerror or e}); set {CACHE_ENV} "
                                   f"to a writable directory") from None
    with lock:
        _acquire(lock, path, say)
        try:
            if is_prepared(path):
                try:
                    return open_prepared(path, "cache")
                except SpecError as e:
                    say(f"the cached copy {path} is unusable ({e.message}); preparing it again")
            t0 = time.perf_counter()
            build(path)
            prepared = open_prepared(path, "cache")
            say(f"prepared {path} in {time.perf_counter() - t0:.1f}s")
            return prepared
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _acquire(lock, path: Path, say: Callable[[str], None]) -> None:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    say(f"waiting for another process preparing {path}")
    fcntl.flock(lock, fcntl.LOCK_EX)
