"""The config reference (markdown) and JSON Schema, generated from the pydantic models.

`qkdd config-schema` prints the JSON Schema; `qkdd config-schema --markdown`
prints the reference checked in as `docs/config-reference.md` (a test keeps it
current), so the documentation cannot drift from what the loader accepts.
"""

from __future__ import annotations

import enum
import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from qkdd.config import NodeConfig


def json_schema() -> str:
    return json.dumps(NodeConfig.model_json_schema(by_alias=True), indent=2)


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is typing.Literal:
        return " / ".join(f"`{a!r}`" for a in args)
    if origin in (tuple, list):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"[{inner}]"
    if origin is dict:
        return f"table of {_type_name(args[1])}"
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return " / ".join(f"`{m.value}`" for m in annotation)
        if issubclass(annotation, BaseModel):
            return "table"
        names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
        names |= {"Path": "path", "SecretStr": "string (secret)", "Any": "any"}
        return names.get(annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "(table)"
        return f"`{value!r}`" if value not in ({}, []) else "empty"
    if field.default is PydanticUndefined or field.default is None:
        return "unset"
    value = field.default
    if isinstance(value, enum.Enum):
        value = value.value
    return f"`{json.dumps(value) if not isinstance(value, str) else value}`"


def _nested_models(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """(suffix, model) for table fields: Model, Model | None, dict[str, Model], list[Model]."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    if origin in (typing.Union, types.UnionType):
        return [found for a in args for found in _nested_models(a)]
    if origin is dict and len(args) == 2:
        return [(".NAME", m) for _, m in _nested_models(args[1])]
    if origin is list and args:
        return [("[]", m) for _, m in _nested_models(args[0])]
    return []


def _section(path: str, model: type[BaseModel], out: list[str]) -> None:
    rows: list[str] = []
    children: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        nested = _nested_models(field.annotation)
        if nested:
            for suffix, child in nested:
                full = f"{path}.{key}" if path else key
                if suffix == "[]":
                    children.append((f"[{full}]", child))
                else:
                    children.append((f"{full}{suffix}", child))
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{key}` | {_type_name(field.annotation)} | {_default(field)} | {description} |"
        )
    if rows:
        out.append(f"### `[{path}]`\n")
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            out.append(doc[0] + "\n")
        out.append("| key | type | default | meaning |")
        out.append("| --- | --- | --- | --- |")
        out.extend(rows)
        out.append("")
    for child_path, child in children:
        _section(child_path, child, out)


def markdown_reference() -> str:
    out = [
        "# Node configuration reference",
        "",
        "Generated from the pydantic models by `qkdd config-schema --markdown`; do not edit.",
        "Unknown keys are errors. `NAME` stands for a name you choose.",
        "",
    ]
    _section("", NodeConfig, out)
    return "\n".join(line for line in out).rstrip() + "\n"
