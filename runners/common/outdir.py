"""Run directories that never collide and never linger empty.

``search train`` writes a fresh directory per run (``runs/train-<name>/``, then ``-2``, ``-3`` ...) unless
``--out`` names one, which must not already hold a run: an earlier run's weights are never overwritten without a
word. And a command that fails on bad input after it made its directory (the data folder is missing, a flag is
out of range) removes what it made, as long as it is still empty, so a typo leaves no ``runs/<name>/`` behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Optional

from search_space.schema import SpecError

MAX_SUFFIX = 10_000


def holds_anything(path: Path) -> bool:
    """True when ``path`` is a directory with any entry (or is not a directory at all)."""
    if not path.exists():
        return False
    if not path.is_dir():
        return True
    with os.scandir(path) as entries:
        return any(True for _ in entries)


def fresh_dir(base: Path, explicit: bool, flag: str = "--out") -> Path:
    """The directory a new run writes to: ``base`` when it is new or empty; otherwise, for a default place, the
    first free ``base-2``, ``base-3`` ...; for a place the user named (``explicit``), a refusal naming ``flag``."""
    base = Path(base)
    if not holds_anything(base):
        return base
    if explicit:
        raise SpecError(flag, f"{base} already holds a run; choose another {flag} (or delete it first): an earlier "
                              f"run is never overwritten")
    for i in range(2, MAX_SUFFIX):
        candidate = base.with_name(f"{base.name}-{i}")
        if not holds_anything(candidate):
            return candidate
    raise SpecError(flag, f"{base}-2 to -{MAX_SUFFIX - 1} are all taken; give {flag}")


def _first_missing(path: Path) -> Optional[Path]:
    """The outermost directory of ``path`` that does not exist yet (what creating ``path`` would create)."""
    path = Path(path).absolute()
    missing = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing = p
    return missing


def _only_empty_dirs(path: Path) -> bool:
    for root, dirs, files in os.walk(path):
        if files:
            return False
    return True


@contextlib.contextmanager
def removed_if_failed(path: Path) -> Iterator[None]:
    """Run the body; if it raises and ``path`` (with any parents it created) holds nothing but empty directories,
    remove them, so a failed command leaves no empty run directory behind. A directory that existed before, or
    that holds a file, is left as it is."""
    top = _first_missing(path)
    try:
        yield
    except BaseException:
        if top is not None and top.is_dir() and not top.is_symlink() and _only_empty_dirs(top):
            for root, dirs, _ in sorted(os.walk(top), key=lambda t: -len(t[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(root)
        raise
