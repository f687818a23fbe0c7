"""Reading a weights file (a ``state_dict`` saved by ``torch.save``) as untrusted input.

A weights file comes from a run directory someone shared, or from a colleague: it is checked the way a spec file
is, before anything large is read. In order:

1. It is a regular file (``stat`` before ``open``, so a FIFO or ``/dev/zero`` is refused at once, not read forever).
2. Its size on disk is at most what the architecture needs (``budget`` bytes, from the cost model) plus slack.
3. It is a ``torch.save`` zip archive whose entries are all stored uncompressed (torch never compresses them),
   whose declared sizes add up to at most the same budget, and which holds a bounded number of entries: a zip
   bomb (tiny file, enormous declared sizes) is refused from its central directory, before it is inflated.
4. Only then ``torch.load(..., weights_only=True)`` (no code runs), and the result must be a mapping of string
   keys to tensors: a file of a bare tensor, a list, integer keys or nested values is one line saying so.

Memory stays bounded by the budget, which the caller derives from the architecture (see :func:`budget_for`).
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from .schema import SpecError

SLACK_BYTES = 1 << 20          # pickle, alignment and the archive's own records
MAX_ENTRIES = 100_000          # tensors of a state_dict are a few hundred to a few thousand
BYTES_PER_VALUE = 8            # float64 is the widest dtype a state_dict of these networks could hold
DEFAULT_BUDGET = 8 << 30       # no architecture known: the largest a spec may describe is ~1e9 parameters


def budget_for(model_or_spec) -> int:
    """Bytes a state_dict of this network can reasonably take: its parameters and buffers at 8 bytes each, twice
    over (a file saved with optimizer state or a copy is still refused), plus slack. ``model_or_spec``: an
    ``nn.Module`` or a ``ModelSpec`` (counted by the cost model, nothing built)."""
    if hasattr(model_or_spec, "state_dict"):
        values = sum(t.numel() for t in model_or_spec.state_dict().values())
    else:
        from .cost import architecture_cost

        cost = architecture_cost(model_or_spec)
        values = cost.params + 4 * cost.params // 100 + 4096  # BN statistics are a small share of the weights
    return 2 * BYTES_PER_VALUE * values + SLACK_BYTES


def check_file(path: str | Path, field: str = "weights", budget: int = DEFAULT_BUDGET) -> Path:
    """Refuse what is not a plausible weights file for a network of ``budget`` bytes, without reading its data."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise SpecError(field, f"{str(path)!r}: no such file") from None
    except OSError as e:
        raise SpecError(field, f"{str(path)!r}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpecError(field, f"{str(path)!r} is a directory; expected a weights file (a state_dict)")
    if not stat.S_ISREG(info.st_mode):
        raise SpecError(field, f"{str(path)!r} is not a regular file (a device, FIFO or socket); expected a weights "
                               f"file")
    if info.st_size > budget:
        raise SpecError(field, f"{str(path)!r} is {info.st_size:,} bytes, far more than this architecture's weights "
                               f"need (at most {budget:,}); is it the right file?")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced between stat and open
                raise SpecError(field, f"{str(path)!r} is not a regular file; expected a weights file")
            if not zipfile.is_zipfile(f):
                raise SpecError(field, f"{str(path)!r} is not a torch.save file (not a zip archive); save weights "
                                       f"with torch.save(model.state_dict(), path)")
            f.seek(0)
            try:
                entries = zipfile.ZipFile(f).infolist()
            except (zipfile.BadZipFile, ValueError, OSError) as e:
                raise SpecError(field, f"{str(path)!r} is a damaged archive ({e})") from None
    except OSError as e:
        raise SpecError(field, f"{str(path)!r}: cannot read ({e.strerror or e})") from None
    if len(entries) > MAX_ENTRIES:
        raise SpecError(field, f"{str(path)!r} holds {len(entries):,} archive entries; a state_dict has far fewer")
    packed = [e.filename for e in entries if e.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise SpecError(field, f"{str(path)!r} holds compressed entries ({packed[0]}), which torch.save never "
                               f"writes; refusing it unread (a zip bomb looks like this)")
    declared = sum(e.file_size for e in entries)
    if declared > budget:
        raise SpecError(field, f"{str(path)!r} declares {declared:,} bytes of content, far more than this "
                               f"architecture's weights need (at most {budget:,})")
    return path


def load_state_dict(path: str | Path, field: str = "weights", budget: int = DEFAULT_BUDGET) -> dict:
    """The state_dict in ``path`` (on the CPU), checked by :func:`check_file` first; anything else is a
    :class:`SpecError` of one line."""
    import torch

    path = check_file(path, field, budget)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise SpecError(field, f"{str(path)!r} is not a readable state_dict ({type(e).__name__}: {first})") from None
    return check_state(state, str(path), field)


def check_state(state, name: str, field: str = "weights") -> dict:
    """``state`` if it is a mapping of string keys to tensors, else one line saying what it holds instead."""
    import torch

    if isinstance(state, torch.Tensor):
        raise SpecError(field, f"{name!r} holds a single tensor, not a state_dict (a mapping of names to tensors)")
    if not isinstance(state, dict):
        raise SpecError(field, f"{name!r} holds a {type(state).__name__}, not a state_dict (a mapping of names to "
                               f"tensors)")
    if not state:
        raise SpecError(field, f"{name!r} holds an empty mapping, not a state_dict")
    for key, value in state.items():
        if not isinstance(key, str):
            raise SpecError(field, f"{name!r} has a key of type {type(key).__name__} ({str(key)[:40]}); a "
                                   f"state_dict's keys are parameter names")
        if not isinstance(value, torch.Tensor):
            raise SpecError(field, f"{name!r} holds a {type(value).__name__} under {key[:60]!r}, not a tensor; is "
                                   f"it a checkpoint rather than a state_dict? save model.state_dict()")
    return state
