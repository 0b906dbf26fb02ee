"""Render the config reference (docs/configuration.md) from the config models themselves.

    python -m controller.configdoc > docs/configuration.md

A test renders it again and compares, so the reference can never drift from the schema.
"""

from __future__ import annotations

import sys
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from controller.config import Config, RegisterMap

_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"))

HEADER = """\
# Configuration reference

For technicians. Generated from the config schema by `python -m controller.configdoc`; the
commented example is `config/example.yaml`, and `v2g-controller check-config FILE` checks a file.
Every key is optional unless marked **required**; an unknown or misspelt key is an error.
Units are in the names: `_w` watts, `_pct` percent, `_s` seconds, `_c` °C, `_v` volts.
"""


def _section(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (types.UnionType, typing.Union):
        parts = [_type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(parts)
    if origin in (dict, list):
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    if isinstance(annotation, type):
        return {"time": "time (HH:MM)"}.get(annotation.__name__, annotation.__name__)
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined or isinstance(value, BaseModel):
        return ""
    if value is None:
        return "(none)"
    return f"`{value}`"


def _bounds(field: FieldInfo) -> str:
    found: list[str] = []
    for item in field.metadata:
        for name, sign in _BOUNDS:
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{sign} {value}")
        pattern = getattr(item, "pattern", None)
        if pattern is not None:
            found.append(f"pattern `{pattern}`")
    return ", ".join(found)


def _render(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    rows: list[str] = []
    nested: list[tuple[str, type[BaseModel]]] = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}{key}"
        section = _section(field.annotation)
        if section is not None and typing.get_origin(field.annotation) is not dict:
            nested.append((path, section))
            continue
        description = (field.description or "").replace("|", "\\|")
        rows.append(
            f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | "
            f"{_bounds(field)} | {description} |"
        )
    if rows:
        title = prefix.rstrip(".") or "(top level)"
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        out += ["", f"## `{title}`", ""]
        if doc:
            out += [doc, ""]
        out += ["| key | type | default | bounds | meaning |", "|---|---|---|---|---|", *rows]
    for path, section in nested:
        _render(section, f"{path}.", out)


def render() -> str:
    """The whole reference, as markdown."""
    out = [HEADER.rstrip("\n")]
    _render(Config, "", out)
    out += ["", "# Register map files (config/inverters/*.yaml)"]
    _render(RegisterMap, "", out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
