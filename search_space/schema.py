"""Dataclass-driven validation shared by every spec section.

Each section of a spec is a dataclass whose type hints and field metadata (``doc``, ``min``, ``max``) are the
schema: the loader validates YAML against them, the README's key reference is generated from them, and there is
no second copy of the rules to drift. Any leaf value may be a *choice* in a search space.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union


MAX_GRID_POINTS = 1e12  # a stepped float range: more points than this are no grid (and overflow sampling)
MAX_LINE = 1000  # an error is one line; a message longer than this is cut (values are cut far sooner by short())
MAX_STRING = 4096  # any string value of a spec (paths, URLs, names): PATH_MAX on Linux


# A password in a URL's user part (scheme://user:PASSWORD@host) or in its query (?password=PASSWORD): what
# redact() hides in every error line, whatever echoed the URL (argparse, SQLAlchemy, a driver, our own messages).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<pw>[^\s'\"]*)@")
_QUERY_SECRET = re.compile(r"(?P<head>[?&;]\s*(?:ssl)?(?:password|passwd|pwd|pass|secret|token|api_?key)\s*=)"
                           r"(?P<pw>[^&;\s'\"#]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password of a URL in it replaced by ``***`` (user part and ``?password=``)."""
    if "@" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@" if m["pw"] else m[0], text)
    if "=" in text:
        text = _QUERY_SECRET.sub(lambda m: f"{m['head']}***", text)
    return text


def one_line(text: str, limit: int = MAX_LINE) -> str:
    """``text`` with control characters and line separators escaped (a key from a file must not break the line
    or send terminal escapes), URL passwords hidden (:func:`redact`) and cut to ``limit`` characters, so an error
    stays one readable line that is safe to print and to log."""
    text = redact(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == " " else _escape(c) for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _escape(c: str) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else
                                                               f"\\u{ord(c):04x}" if ord(c) < 0x10000 else
                                                               f"\\U{ord(c):08x}")


class SpecError(ValueError):
    """A bad spec value: one line naming the field path, the bad value and what is allowed."""

    def __init__(self, path: str, message: str):
        self.path = one_line(path, 200)
        self.message = one_line(message)
        super().__init__(f"{self.path}: {self.message}" if self.path else self.message)


# ----------------------------------------------------------------------------------------------------------------
# Choices
# ----------------------------------------------------------------------------------------------------------------

CHOICE_KEYS = ("choice", "int", "float")


@dataclass(frozen=True)
class Categorical:
    options: tuple

    def to_yaml(self):
        return {"choice": list(self.options)}


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    step: int = 1
    log: bool = False

    def to_yaml(self):
        out: dict[str, Any] = {"int": [self.low, self.high]}
        if self.step != 1:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    step: float | None = None
    log: bool = False

    def to_yaml(self):
        out: dict[str, Any] = {"float": [self.low, self.high]}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


Choice = Union[Categorical, IntRange, FloatRange]


def is_choice(value: Any) -> bool:
    return isinstance(value, (Categorical, IntRange, FloatRange))


def largest(value: Any) -> Any:
    """The largest value a choice may draw (a fixed value is itself): the worst case a check must allow for."""
    if isinstance(value, Categorical):
        return max(value.options)
    return value.high if isinstance(value, (IntRange, FloatRange)) else value


def looks_like_choice(raw: Any) -> bool:
    return isinstance(raw, dict) and any(k in raw for k in CHOICE_KEYS)


def short(text: str, limit: int = 60) -> str:
    """Cut ``text`` to ``limit`` characters: an error must never echo a huge value (or key) whole."""
    return one_line(text, limit)


def _fmt(value: Any) -> str:
    """A value as an error message shows it: YAML-ish, one line, at most ~60 characters."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value.bit_length() > 256:  # str() refuses ints of more than 4300 digits
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * 0.30103):,} digits"
    if isinstance(value, (dict, list)) and len(value) > 20:  # do not format a huge container only to cut it
        value = type(value)(list(value.items())[:20]) if isinstance(value, dict) else value[:20]
    return short(repr(value) if isinstance(value, str) else str(value))


def number_kind(tp) -> type | None:
    """``int`` or ``float`` for a (possibly optional) number field, else None: which range a field may take."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        Union, types.UnionType) else [tp]
    return args[0] if len(args) == 1 and args[0] in (int, float) else None


def parse_choice(raw: dict, path: str, check_value, tp=None) -> Choice:
    """Parse ``{choice: [...]}``, ``{int: [lo, hi], step, log}`` or ``{float: [lo, hi], step, log}``.

    With the field's type ``tp``, an ``int`` range is allowed only on an integer field and a ``float`` range only
    on a number field, so a sample always has the field's type (a float depth would crash the compiler).
    """
    kinds = [k for k in CHOICE_KEYS if k in raw]
    if len(kinds) != 1:
        got = short(str(sorted(map(str, raw))))
        raise SpecError(path, f"a choice needs exactly one of choice/int/float, got {got}")
    kind = kinds[0]
    if kind != "choice" and tp is not None and (number_kind(tp) or str).__name__ != kind:
        wanted = {int: "{int: [low, high]} or {choice: [...]}", float: "{float: [low, high]} or {choice: [...]}"}
        raise SpecError(f"{path}.{kind}", f"{'an' if kind == 'int' else 'a'} {kind} range does not fit a field that "
                                          f"takes {describe_type(tp)}; "
                                          f"write {wanted.get(number_kind(tp), '{choice: [...]}')}")
    allowed_extra = {"choice": set(), "int": {"step", "log"}, "float": {"step", "log"}}[kind]
    for key in raw:
        if key != kind and key not in allowed_extra:
            raise SpecError(f"{path}.{short(str(key))}",
                            f"unknown key in a '{kind}' choice; allowed: {sorted(allowed_extra) or 'none'}")
    body = raw[kind]
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise SpecError(f"{path}.choice", f"{_fmt(body)} is not a non-empty list of options")
        options = tuple(check_value(v, f"{path}.choice.{i}") for i, v in enumerate(body))
        if len(set(map(repr, options))) != len(options):
            raise SpecError(f"{path}.choice", f"{_fmt(list(body))} lists an option twice")
        return Categorical(options)
    if not isinstance(body, list) or len(body) != 2:
        raise SpecError(f"{path}.{kind}", f"{_fmt(body)} must be a [low, high] pair")
    low, high = (check_value(v, f"{path}.{kind}.{i}") for i, v in enumerate(body))
    if kind == "int" and not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise SpecError(f"{path}.int", f"{_fmt(body)} must be two integers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
        raise SpecError(f"{path}.{kind}", f"{_fmt(body)} must be two numbers")
    if low > high:
        raise SpecError(f"{path}.{kind}", f"low {low} is above high {high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{path}.log", f"{_fmt(log)} is not a boolean")
    step = raw.get("step")
    if log and low <= 0:
        raise SpecError(f"{path}.{kind}", f"a log range needs low > 0, got {low}")
    if kind == "int":
        step = 1 if step is None else step
        if not isinstance(step, int) or isinstance(step, bool) or step < 1:
            raise SpecError(f"{path}.step", f"{_fmt(step)} must be a positive integer")
        if log and step != 1:
            raise SpecError(f"{path}.step", "step cannot be combined with log")
        if step > high - low and low < high:  # the range would draw low only: say so rather than search nothing
            raise SpecError(f"{path}.step", f"{step} is larger than the range {low}..{high}, which then offers only "
                                            f"{low}; use a step of at most {high - low}, or the fixed value {low}")
        return IntRange(int(low), int(high), step, log)
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool)
                             or not math.isfinite(step) or step <= 0):
        raise SpecError(f"{path}.step", f"{_fmt(step)} must be a positive finite number")
    if log and step is not None:
        raise SpecError(f"{path}.step", "step cannot be combined with log")
    if step is not None and not (high - low) / step <= MAX_GRID_POINTS:  # also an overflow to inf
        raise SpecError(f"{path}.step", f"{_fmt(step)} makes more than {MAX_GRID_POINTS:.0e} grid points between "
                                        f"{_fmt(low)} and {_fmt(high)}; use a larger step, or none")
    return FloatRange(float(low), float(high), None if step is None else float(step), log)


# ----------------------------------------------------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------------------------------------------------


def field(default=dataclasses.MISSING, *, doc: str, min=None, max=None, default_factory=dataclasses.MISSING,
          required: bool = False, fixed: bool = False, pattern: str | None = None):
    """A spec field: ``doc`` feeds the README reference, ``min``/``max`` bound numbers (every count and width has
    a maximum, so no value that validates can ask for an absurd tensor), ``required`` fields must be written (the
    default only serves code that builds the dataclass directly), ``fixed`` ones may not be a choice, and a
    string must match ``pattern`` in full."""
    meta = {"doc": doc, "min": min, "max": max, "required": required, "fixed": fixed, "pattern": pattern}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_type(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(_fmt(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        parts = [describe_type(a) for a in args]
        if len(args) != len(typing.get_args(tp)):
            parts.append("null")
        return " or ".join(parts)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"a list of {describe_type(inner)}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "a boolean", str: "a string"}.get(tp, str(tp))


def check_value(value: Any, tp, path: str, meta: dict | None = None) -> Any:
    """Validate one fixed (non-choice) value against a type hint and bounds; returns the normalised value."""
    meta = meta or {}
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_value(value, arg, path, meta)
            except SpecError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        raise SpecError(path, f"{_fmt(value)} is not allowed; expected {describe_type(tp)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(type(value) is type(a) and value == a for a in allowed):  # 2.0 is not 2, and true is not 1
            if isinstance(value, float) and value.is_integer() and int(value) in allowed:
                raise SpecError(path, f"{_fmt(value)} is not an integer; write {_fmt(int(value))} (without the "
                                      f"decimal point)")
            hint = ""
            if isinstance(value, str):
                close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
            expected = ", ".join(_fmt(a) for a in allowed)
            raise SpecError(path, f"{_fmt(value)} is not allowed; expected one of {expected}{hint}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise SpecError(path, f"{_fmt(value)} is not a list")
        return [check_value(v, inner, f"{path}.{i}", meta) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(path, f"{_fmt(value)} is not a boolean; use true or false")
        return value
    if tp is int:
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            raise SpecError(path, f"{_fmt(value)} is not an integer; write {_fmt(int(value))} (without the decimal "
                                  f"point)")
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(path, f"{_fmt(value)} is not an integer")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1.0e6 (no sign in the exponent) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(path, f"{_fmt(value)} is not a number")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond any float, 10**400
            value = math.inf
        if not math.isfinite(value):
            raise SpecError(path, f"{_fmt(value)} is not a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise SpecError(path, f"{_fmt(value)} is not a string")
        if len(value) > MAX_STRING:
            raise SpecError(path, f"{_fmt(value)} has {len(value):,} characters; allowed: at most {MAX_STRING:,}")
        if "\x00" in value:  # no path, URL or name holds one, and os functions raise ValueError on it
            raise SpecError(path, f"{_fmt(value)} contains a NUL character")
        if meta.get("pattern") and not re.fullmatch(meta["pattern"], value):
            raise SpecError(path, f"{_fmt(value)} is not allowed; it must match {meta['pattern']}")
        return value
    elif tp is Any:
        return value
    else:  # pragma: no cover - schema programming error
        raise TypeError(f"unsupported schema type {tp} at {path}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise SpecError(path, f"{_fmt(value)} is too small; allowed: >= {lo}"
                        + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        raise SpecError(path, f"{_fmt(value)} is too large; allowed: <= {hi}"
                        + (f" and >= {lo}" if lo is not None else ""))
    return value


def check_field(value: Any, cls, name: str, path: str) -> Any:
    """``value`` checked by the rules of field ``name`` of dataclass ``cls`` (type, min, max, pattern), for values
    that come from elsewhere than the spec, such as a command-line flag; None (not given) passes through."""
    if value is None:
        return None
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return check_value(value, hints(cls)[name], path, dict(f.metadata))


def hints(cls) -> dict:
    return typing.get_type_hints(cls)


def unknown_key_error(key: Any, allowed: list[str], path: str) -> SpecError:
    close = difflib.get_close_matches(str(key)[:100], allowed, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    key = short(str(key))
    return SpecError(f"{path}.{key}" if path else key, f"unknown key; {hint}allowed: {', '.join(allowed)}")


def parse_dataclass(cls, raw: Any, path: str, allow_choices: bool, special: dict | None = None):
    """Build ``cls`` from a YAML mapping, validating every key; ``special`` maps field names to custom parsers."""
    special = special or {}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise SpecError(path, f"{_fmt(raw)} is not a mapping; expected keys: {keys}")
    types_ = hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in fields:
            raise unknown_key_error(key, list(fields), path)
        sub = f"{path}.{key}" if path else key
        if key in special:
            values[key] = special[key](value, sub)
            continue
        tp = types_[key]
        meta = dict(fields[key].metadata)
        if dataclasses.is_dataclass(tp):
            values[key] = parse_dataclass(tp, value, sub, allow_choices)
        elif looks_like_choice(value):
            if not allow_choices or meta.get("fixed"):
                raise SpecError(sub, "a choice is not allowed here (this must be a fixed value)")
            values[key] = parse_choice(value, sub, lambda v, p, tp=tp, meta=meta: check_value(v, tp, p, meta), tp)
        else:
            values[key] = check_value(value, tp, sub, meta)
    for name, f in fields.items():
        if f.metadata.get("required") and name not in raw:
            where = f"{path}.{name}" if path else name
            raise SpecError(where, f"missing; required: {f.metadata['doc']}")
    return cls(**values)


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def to_yaml(value: Any, skip_defaults: bool = False) -> Any:
    """Turn a (possibly choice-holding) dataclass tree back into plain YAML data."""
    if is_choice(value):
        return value.to_yaml()
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if skip_defaults and not is_choice(v) and v == default_of(f):
                continue
            out[f.name] = to_yaml(v, skip_defaults)
        return out
    if isinstance(value, (list, tuple)):
        return [to_yaml(v, skip_defaults) for v in value]
    return value


def choices_in(value: Any, path: str = "") -> list[str]:
    """Paths of the choices left anywhere in a spec tree."""
    if is_choice(value):
        return [path]
    found = []
    if dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            found += choices_in(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += choices_in(v, f"{path}.{i}")
    return found
