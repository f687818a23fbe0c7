"""``search schema``: a JSON Schema of the spec format, generated from the spec dataclasses.

Editors that speak the YAML language server complete and check spec files with it (first line of a spec:
``# yaml-language-server: $schema=<path or URL of spec.schema.json>``). It is built from the same dataclasses,
type hints and ``doc``/``min``/``max`` metadata as the validator and the README reference, so it cannot drift;
``spaces/spec.schema.json`` is a committed copy that a test keeps equal to this output. The schema is a
helper for editors: the loader stays the authority (it also checks cross-field rules such as keys a block type
does not read).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from typing import Any, Literal, Union

from .config import SearchConfig, TrainConfig
from .schema import default_of, hints
from .spec import BlockSpec, ModelSpec, Spec, StageSpec

SCHEMA_URL = "https://json-schema.org/draft/2020-12/schema"
# YAML 1.1 (PyYAML) reads 1.0e6 as a string; number fields accept it, so the schema does too.
NUMBER_STRING = {"type": "string", "pattern": r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"}


def value_schema(tp, meta: dict) -> dict:
    """Schema of one fixed value of type hint ``tp`` (bounds from the field metadata)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        parts = [value_schema(a, meta) for a in args if a is not type(None)]
        if type(None) in args:
            parts.append({"type": "null"})
        return parts[0] if len(parts) == 1 else {"anyOf": parts}
    if origin is Literal:
        return {"enum": list(typing.get_args(tp))}
    if origin is list:
        (inner,) = typing.get_args(tp)
        return {"type": "array", "items": value_schema(inner, meta)}  # min/max bound each item
    if dataclasses.is_dataclass(tp):
        return {"$ref": f"#/$defs/{tp.__name__}"}
    out: dict[str, Any] = {int: {"type": "integer"}, float: {"type": "number"}, bool: {"type": "boolean"},
                           str: {"type": "string"}}.get(tp, {})
    if tp in (int, float):
        if meta.get("min") is not None:
            out["minimum"] = meta["min"]
        if meta.get("max") is not None:
            out["maximum"] = meta["max"]
    if tp is float:
        return {"anyOf": [out, NUMBER_STRING]}
    return out


def choice_schema(value: dict, tp) -> dict:
    """``{choice: [...]}`` of values, or for numbers ``{int: [lo, hi]}`` / ``{float: [lo, hi]}`` with step, log."""
    alts = [{"type": "object", "required": ["choice"], "additionalProperties": False,
             "properties": {"choice": {"type": "array", "minItems": 1, "items": value}}}]
    base = tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    number = {"anyOf": [{"type": "number"}, NUMBER_STRING]}
    if base is int:
        alts.append({"type": "object", "required": ["int"], "additionalProperties": False, "properties": {
            "int": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            "step": {"type": "integer", "minimum": 1}, "log": {"type": "boolean"}}})
    if base in (int, float):
        alts.append({"type": "object", "required": ["float"], "additionalProperties": False, "properties": {
            "float": {"type": "array", "items": number, "minItems": 2, "maxItems": 2},
            "step": {"type": "number", "exclusiveMinimum": 0}, "log": {"type": "boolean"}}})
    return {"anyOf": alts}


def section_schema(cls, allow_choices: bool, overrides: dict | None = None) -> dict:
    """An object schema for one spec section; with ``allow_choices`` every leaf may also be a choice.
    ``overrides`` replaces the value schema of a field (block ``type``: the registered block types)."""
    overrides = overrides or {}
    props = {}
    for f in dataclasses.fields(cls):
        tp = hints(cls)[f.name]
        meta = dict(f.metadata)
        schema = overrides.get(f.name) or value_schema(tp, meta)
        if allow_choices and not dataclasses.is_dataclass(tp) and typing.get_origin(tp) is not list:
            schema = {"anyOf": [schema, choice_schema(schema, tp)]}
        schema = {"description": meta.get("doc", ""), **schema}
        default = default_of(f)
        if not dataclasses.is_dataclass(default) and default is not None:
            schema["default"] = default
        props[f.name] = schema
    return {"type": "object", "additionalProperties": False, "properties": props}


def spec_json_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a spec file: a search space or an architecture."""
    from .blocks import block_type_names

    defs = {}
    block_type = {"enum": block_type_names()}
    defs["BlockSpec"] = section_schema(BlockSpec, True, {"type": block_type})
    for cls in (ModelSpec, StageSpec):
        defs[cls.__name__] = section_schema(cls, True)
    for f in dataclasses.fields(ModelSpec):  # stem, widths, head, ...
        tp = hints(ModelSpec)[f.name]
        if dataclasses.is_dataclass(tp):
            defs[tp.__name__] = section_schema(tp, True)
    defs["ModelSpec"]["required"] = ["stages"]
    defs["ModelSpec"]["properties"]["stages"]["minItems"] = 1
    defs["TrainConfig"] = section_schema(TrainConfig, True)
    defs["SearchConfig"] = section_schema(SearchConfig, False)
    top = section_schema(Spec, False)
    top.update({"$schema": SCHEMA_URL, "$id": "https://resnet-nas.invalid/spec.schema.json",
                "title": "resnet-nas spec (a search space or an architecture)", "required": ["model"],
                "$defs": defs})
    return top


def render() -> str:
    return json.dumps(spec_json_schema(), indent=1) + "\n"


def cmd_schema(args) -> int:
    sys.stdout.write(render())
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("schema", help="print the JSON Schema of the spec format (for editors)",
                       description="Print a JSON Schema of spec files (choices included) for the YAML language "
                                   "server: put `# yaml-language-server: $schema=PATH` on a spec's first line.")
    p.set_defaults(func=cmd_schema)
