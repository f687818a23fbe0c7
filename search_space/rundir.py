"""Reading a run directory as untrusted input: the one reader that ``search report``, ``search show`` and
``search export`` (and ``create_model(run=...)``) go through.

A run directory is shared like a spec is (a cluster's NFS, a tarball from a colleague), so it is read the way
the spec loader reads a spec:

* **no link out**: a file is read only when its real path (links resolved) lies inside the run directory's real
  path, so ``run.json -> /etc/passwd`` or ``trials/0 -> /`` is refused, never followed;
* **regular files only, with a size limit**: the type is checked with ``stat`` before opening, the file is opened
  non-blocking and checked again with ``fstat`` (a FIFO or ``/dev/zero`` is refused at once, never read forever),
  and at most ``limit + 1`` bytes are read;
* **strict JSON**: ``NaN``/``Infinity``, numbers beyond a float, integers beyond 64 bits and nesting deeper than
  :data:`MAX_DEPTH` are refused (our writers never produce them: ``json_safe`` writes ``null`` for a non-finite
  float), and the fields a reader uses are checked against their types (:data:`RUN_FIELDS`,
  :data:`METRICS_FIELDS`); a field outside those tables is kept only after the generic checks above;
* **writes never go through a link**: :meth:`RunDir.write_bytes` writes a temporary file beside the target and
  renames it over the target, which replaces a symlink instead of writing where it points.

Every refusal is a :class:`SpecError` (one line naming the file, the field and what is allowed; the CLI exits 2).
The API is small on purpose: :meth:`RunDir.find` (a run directory from a path or the spec that made it),
:meth:`~RunDir.info`, :meth:`~RunDir.trial_numbers`, :meth:`~RunDir.metrics`, :meth:`~RunDir.read_json`,
:meth:`~RunDir.read_text`, :meth:`~RunDir.file` (a path that is safe to hand to another reader, such as
``torch.load`` or ``load_spec``) and :meth:`~RunDir.write_bytes`.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Optional

from .schema import SpecError, one_line

MAX_JSON_BYTES = 4_000_000     # run.json is a few hundred bytes, a trial's metrics.json a few KB (its history)
MAX_TEXT_BYTES = 1_000_000     # arch.yaml, a spec copy: as the spec loader's own limit
MAX_DEPTH = 32                 # our files nest 4 deep; thousands deep would overflow any recursive reader
MAX_INT = 2 ** 63              # an integer beyond 64 bits is no count or size we wrote
MAX_STRING = 20_000            # a reason or a block summary is a line; a megabyte string is not a field
MAX_TRIALS = 100_000           # trials/<n>/ directories listed at most
MAX_TOTAL_BYTES = 1_000_000_000  # read from one run directory in all: per-file limits alone would allow
                                 # MAX_TRIALS x MAX_JSON_BYTES; a real run of 100,000 trials reads ~500 MB


# ----------------------------------------------------------------------------------------------------------------
# Field types: what every reader may rely on after RunDir.info() / RunDir.metrics()
# ----------------------------------------------------------------------------------------------------------------

# A type is a Python type, a tuple of them (any of), or ("list", T) / ("dict", T) for containers of T (with a
# "?": null too). The writers are runners/search/trial.py (Evaluator.evaluate), optuna_engine.write_metrics and
# the engines' run.json; a field added there is added here to be checked.
NUMBER = (int, float)
OPT_STR = (str, type(None))
OPT_NUMBER = (int, float, type(None))

RUN_FIELDS: dict[str, Any] = {
    "name": str, "backend": str, "spec": (str, dict, type(None)), "storage": OPT_STR, "study_name": OPT_STR,
    "objectives": ("list", str), "trials": int, "top": int, "storage_path": OPT_STR, "experiment": OPT_STR,
    "address": OPT_STR,
}
RUN_REQUIRED = ("name",)
BACKENDS = ("optuna", "ray")

METRICS_FIELDS: dict[str, Any] = {
    "trial": int, "state": str, "status": OPT_STR, "reason": OPT_STR, "blocks": OPT_STR, "warm_start": OPT_STR,
    "val_accuracy": OPT_NUMBER, "test_accuracy": OPT_NUMBER, "params": NUMBER, "macs": NUMBER,
    "latency_ms": NUMBER, "seconds": NUMBER, "epochs": int, "counted": bool,
    "in_space": bool, "values": ("dict?", OPT_NUMBER),
    "optuna_params": ("dict?", (str, int, float, bool, type(None))), "distributions": ("dict?", str),
    "history": ("list?", dict), "io": ("list?", int),
}
STATES = ("complete", "pruned", "failed", "running", "waiting")


def _type_name(t) -> str:
    if isinstance(t, tuple) and len(t) == 2 and t[0] in ("list?", "dict?"):
        return _type_name((t[0][:-1], t[1])) + " or null"
    if isinstance(t, tuple) and len(t) == 2 and t[0] in ("list", "dict"):
        return f"{'a list' if t[0] == 'list' else 'a mapping'} of ({_type_name(t[1])})"
    if isinstance(t, tuple):
        return " or ".join(_type_name(x) for x in t if not (x is int and float in t))  # an int is a number
    return {int: "an integer", float: "a number", str: "a string", dict: "a mapping", list: "a list",
            bool: "true/false", type(None): "null"}.get(t, t.__name__)


def _is(value, t) -> bool:
    if isinstance(t, tuple) and len(t) == 2 and t[0] in ("list?", "dict?"):
        return value is None or _is(value, (t[0][:-1], t[1]))
    if isinstance(t, tuple) and len(t) == 2 and t[0] in ("list", "dict"):
        if t[0] == "list":
            return isinstance(value, list) and all(_is(v, t[1]) for v in value)
        return isinstance(value, dict) and all(_is(v, t[1]) for v in value.values())
    options = t if isinstance(t, tuple) else (t,)
    for o in options:
        if o is bool and isinstance(value, bool):
            return True
        if o in (int, float) and isinstance(value, bool):
            continue  # true is not a number here
        if o is float and isinstance(value, int):
            return True
        if isinstance(value, o):
            return True
    return False


def check_fields(data: Any, fields: dict, where: str, required: tuple = ()) -> dict:
    """``data`` as a mapping whose known fields have their types; one line naming the first that does not."""
    if not isinstance(data, dict):
        raise SpecError("", f"{where}: {_type_name(type(data))} where a mapping belongs")
    for key in required:
        if key not in data:
            raise SpecError("", f"{where}: no {key!r} field")
    for key, t in fields.items():
        if key in data and not _is(data[key], t):
            raise SpecError("", f"{where}: field {key!r} is {_shown(data[key])}; expected {_type_name(t)}")
    return data


def _shown(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else _type_name(type(value))
    return one_line(text, 60)


# ----------------------------------------------------------------------------------------------------------------
# Strict JSON
# ----------------------------------------------------------------------------------------------------------------


class _Refused(ValueError):
    pass


def _constant(name: str):
    raise _Refused(f"{name} is not a number a run writes")


def _float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):
        raise _Refused(f"{one_line(text, 40)} is beyond a float")
    return v


def _int(text: str) -> int:
    if len(text) > 20:
        raise _Refused(f"an integer of {len(text)} digits is beyond 64 bits")
    v = int(text)
    if abs(v) >= MAX_INT:
        raise _Refused(f"{text} is beyond 64 bits")
    return v


def _check_tree(value: Any, where: str) -> None:
    """Depth and string length of parsed JSON, walked without recursion."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > MAX_DEPTH:
                raise SpecError("", f"{where}: nested more than {MAX_DEPTH} deep")
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items)
            if isinstance(v, dict):
                stack.extend((k, depth) for k in v)
        elif isinstance(v, str) and len(v) > MAX_STRING:
            raise SpecError("", f"{where}: a string of {len(v):,} characters; at most {MAX_STRING:,}")


def parse_json(data: bytes, where: str) -> Any:
    """Strict JSON (see the module's docstring); one line naming ``where`` for anything else."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_constant, parse_float=_float, parse_int=_int)
    except _Refused as e:
        raise SpecError("", f"{where}: {e}") from None
    except UnicodeDecodeError as e:
        raise SpecError("", f"{where}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except RecursionError:
        raise SpecError("", f"{where}: nested more than {MAX_DEPTH} deep") from None
    except ValueError as e:  # json.JSONDecodeError, int() of a digit string beyond Python's limit
        raise SpecError("", f"{where}: not valid JSON ({e})") from None
    _check_tree(value, where)
    return value


# ----------------------------------------------------------------------------------------------------------------
# The reader
# ----------------------------------------------------------------------------------------------------------------


class RunDir:
    """A run directory, read without following links out of it and with a size limit on every file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.bytes_read = 0  # against MAX_TOTAL_BYTES
        try:
            self.root = Path(os.path.realpath(self.path))
            if not self.root.is_dir():
                raise SpecError("", f"{self.path}: not a run directory")
        except OSError as e:
            raise SpecError("", f"{self.path}: cannot read ({e.strerror or e})") from None

    @classmethod
    def find(cls, target: str | Path) -> "RunDir":
        """A run directory from a run directory, its ``run.json``, or the spec that made it (``runs/<name>/``)."""
        path = Path(target)
        if path.is_dir():
            run_dir = path
        elif path.name == "run.json" and (path.is_file() or path.is_symlink()):
            run_dir = path.parent
        elif path.is_file():
            from .spec import load_spec

            run_dir = Path("runs") / load_spec(path).name
        else:
            raise SpecError("", f"{target}: no such run directory or spec file")
        run = cls(run_dir) if run_dir.is_dir() else None
        if run is None or not run.exists("run.json"):
            raise SpecError("", f"{run_dir}: no run.json here; is this a run directory (made by `search run`)?")
        return run

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def _where(self, rel: str) -> str:
        return str(self.path / rel)

    def file(self, rel: str | Path, what: str = "a regular file") -> Path:
        """The path of ``rel`` once checked: inside the run directory with links resolved, and a regular file.
        Refused with one line otherwise. Use it to hand a file to another reader (``load_spec``,
        ``torch.load``); read through :meth:`read_bytes` where the size matters."""
        rel = Path(rel)
        where = self._where(str(rel))
        if rel.is_absolute() or ".." in rel.parts:
            raise SpecError("", f"{where}: not a path inside the run directory")
        real = Path(os.path.realpath(self.root / rel))
        if real != self.root and self.root not in real.parents:
            raise SpecError("", f"{where}: a link out of the run directory (to {one_line(str(real), 200)}); a run "
                                f"directory is read without following links out of it")
        try:
            info = os.stat(real)
        except FileNotFoundError:
            raise SpecError("", f"{where}: no such file") from None
        except OSError as e:
            raise SpecError("", f"{where}: cannot read ({e.strerror or e})") from None
        if not stat.S_ISREG(info.st_mode):
            raise SpecError("", f"{where}: not a regular file (a directory, device, FIFO or socket); expected {what}")
        return real

    def exists(self, rel: str | Path) -> bool:
        """Whether ``rel`` is there at all (a link, even a dangling or escaping one, counts: reading it refuses)."""
        p = self.root / rel
        return p.exists() or p.is_symlink()

    def read_bytes(self, rel: str | Path, limit: int = MAX_JSON_BYTES) -> bytes:
        real = self.file(rel)
        where = self._where(str(rel))
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            with os.fdopen(fd, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced between the check and the open
                    raise SpecError("", f"{where}: not a regular file")
                data = f.read(limit + 1)
        except OSError as e:
            raise SpecError("", f"{where}: cannot read ({e.strerror or e})") from None
        if len(data) > limit:
            raise SpecError("", f"{where}: more than {limit:,} bytes; a run's file may have at most that")
        self.bytes_read += len(data)
        if self.bytes_read > MAX_TOTAL_BYTES:
            raise SpecError("", f"{self.path}: more than {MAX_TOTAL_BYTES:,} bytes of run files read; a run "
                                f"directory may hold at most that")
        return data

    def read_text(self, rel: str | Path, limit: int = MAX_TEXT_BYTES) -> str:
        data = self.read_bytes(rel, limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpecError("", f"{self._where(str(rel))}: not UTF-8 text (byte {e.start}: {e.reason})") from None

    def read_json(self, rel: str | Path, limit: int = MAX_JSON_BYTES) -> Any:
        return parse_json(self.read_bytes(rel, limit), self._where(str(rel)))

    # the files every run has -----------------------------------------------------------------------------------

    def info(self) -> dict:
        """``run.json``, checked: a mapping with a name, its known fields of their types, a known backend."""
        where = self._where("run.json")
        info = check_fields(self.read_json("run.json"), RUN_FIELDS, where, RUN_REQUIRED)
        if info.get("backend", "optuna") not in BACKENDS:
            raise SpecError("", f"{where}: field 'backend' is {_shown(info['backend'])}; expected one of "
                                f"{', '.join(BACKENDS)}")
        if not info.get("objectives", ["val_accuracy"]):
            raise SpecError("", f"{where}: field 'objectives' is empty")
        return info

    def trial_numbers(self) -> list[int]:
        """The numbers of ``trials/<n>/`` directories, ascending (links out of the run are left to the reads)."""
        folder = self.root / "trials"
        if not folder.is_dir() and not folder.is_symlink():
            return []
        self.file_dir("trials")
        numbers = []
        try:
            with os.scandir(self.root / "trials") as it:
                for entry in it:
                    if entry.name.isdigit() and len(entry.name) < 10:
                        numbers.append(int(entry.name))
                        if len(numbers) > MAX_TRIALS:
                            raise SpecError("", f"{self._where('trials')}: more than {MAX_TRIALS:,} trials")
        except OSError as e:
            raise SpecError("", f"{self._where('trials')}: cannot list ({e.strerror or e})") from None
        return sorted(numbers)

    def file_dir(self, rel: str | Path) -> Path:
        """Like :meth:`file`, for a directory."""
        real = Path(os.path.realpath(self.root / rel))
        if real != self.root and self.root not in real.parents:
            raise SpecError("", f"{self._where(str(rel))}: a link out of the run directory (to "
                                f"{one_line(str(real), 200)}); a run directory is read without following links out "
                                f"of it")
        if not real.is_dir():
            raise SpecError("", f"{self._where(str(rel))}: not a directory")
        return real

    def metrics(self, number: int, rel: Optional[str] = None) -> Optional[dict]:
        """``trials/<number>/metrics.json`` checked (None when the trial has none yet); ``rel`` reads another
        metrics file (``final/metrics.json``) by the same rules."""
        rel = rel or f"trials/{number}/metrics.json"
        if not self.exists(rel):
            return None
        where = self._where(rel)
        m = check_fields(self.read_json(rel), METRICS_FIELDS, where)
        if "state" in m and m["state"] not in STATES:
            raise SpecError("", f"{where}: field 'state' is {_shown(m['state'])}; expected one of {', '.join(STATES)}")
        if m.get("io") is not None and len(m["io"]) != 2:
            raise SpecError("", f"{where}: field 'io' has {len(m['io'])} items; expected 2 (channels, classes)")
        return m

    # writing ---------------------------------------------------------------------------------------------------

    def write_bytes(self, rel: str | Path, data: bytes) -> Path:
        """Write ``rel`` by renaming a temporary file over it: a link at ``rel`` is replaced, never written
        through, and a reader never sees half a file. The folder must lie inside the run directory."""
        rel = Path(rel)
        if rel.is_absolute() or ".." in rel.parts:
            raise SpecError("", f"{self._where(str(rel))}: not a path inside the run directory")
        folder = self.file_dir(rel.parent) if str(rel.parent) != "." else self.root
        target = folder / rel.name
        if target.is_dir() and not target.is_symlink():
            raise SpecError("", f"{self._where(str(rel))}: is a directory; move it away to write the file")
        tmp = folder / f".{rel.name}.tmp{os.getpid()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        return self.path / rel

    def write_text(self, rel: str | Path, text: str) -> Path:
        return self.write_bytes(rel, text.encode("utf-8"))


def printable(text: str) -> str:
    """``text`` for a terminal: every line kept, control characters (terminal escapes) shown escaped."""
    return "\n".join(one_line(line, 1 << 30) for line in text.split("\n"))
