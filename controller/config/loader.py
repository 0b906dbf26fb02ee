"""Reading YAML with the line of every key, and validating it into frozen pydantic models.

The only YAML reader in the controller (the schemas are in ``schema``, ``bms_profile`` and
``register_map``). ``validate_text`` and ``load_file`` either return a complete, valid model or
raise ``ConfigError`` carrying *every* problem found, each located by file, line and dotted key
path, with what was expected and what was found. Duplicate keys and unknown keys are errors: a
typo must never silently fall back to a default. Values are never clamped.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict

from controller.errors import ConfigError, ConfigProblem

Loc = tuple[str | int, ...]
_M = TypeVar("_M", bound=BaseModel)


class Section(BaseModel):
    """Every config section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class _Located:
    """A YAML document turned into plain data, with the line of every key and item."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.lines: dict[Loc, int] = {}
        self.problems: list[ConfigProblem] = []

    def build(self, node: yaml.Node, loc: Loc, loader: yaml.SafeLoader) -> Any:
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            loader.flatten_mapping(node)  # resolve '<<' merge keys as PyYAML would
            result: dict[Any, Any] = {}
            first_line: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:bool":
                    key: Any = key_node.value  # YAML 1.1 reads the keys on/off/yes/no as bools
                else:
                    key = self.build(key_node, (*loc, "<key>"), loader)
                key_line = key_node.start_mark.line + 1
                if not isinstance(key, str | int | float | bool):
                    self._problem(key_line, loc, f"expected a plain key, found {key!r}")
                    continue
                if key in first_line:
                    self._problem(
                        key_line,
                        (*loc, str(key)),
                        f"duplicate key (first at line {first_line[key]}); expected each key once",
                    )
                    continue
                first_line[key] = key_line
                self.lines[(*loc, str(key))] = key_line
                result[str(key)] = self.build(value_node, (*loc, str(key)), loader)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i), loader) for i, item in enumerate(node.value)]
        # YAML 1.1 reads an unquoted 19:30 as the base-60 integer 1170. Times of day are common
        # here, so a plain scalar with a colon stays the string the technician wrote.
        if node.tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and ":" in node.value:
            return node.value
        return loader.construct_object(node, deep=True)

    def _problem(self, line: int, loc: Loc, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, line, _dotted(loc), message))

    def line_for(self, loc: Loc) -> int | None:
        """The line of the deepest part of ``loc`` present in the file."""
        for end in range(len(loc), -1, -1):
            line = self.lines.get(loc[:end])
            if line is not None:
                return line
        return None


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _parse(text: str, file: str) -> tuple[Any, _Located]:
    located = _Located(file)
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _reader_problem(exc, text, file) from None
    try:
        node = loader.get_single_node()
        data = None if node is None else located.build(node, (), loader)
    except yaml.reader.ReaderError as exc:
        raise _reader_problem(exc, text, file) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([ConfigProblem(file, line, "", f"invalid YAML: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"invalid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    return data, located


def _reader_problem(exc: yaml.reader.ReaderError, text: str, file: str) -> ConfigError:
    line = text.count("\n", 0, exc.position) + 1
    return ConfigError(
        [ConfigProblem(file, line, "", f"invalid YAML: character {exc.character!r} is not allowed")]
    )


def _fields_at(root: type[BaseModel], loc: Loc) -> list[str]:
    """Field names of the section at ``loc``, for 'did you mean' hints."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue  # an item of a list of sections: the section is the list's item type
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        field = fields.get(str(part))
        if field is None:
            return []
        model = _section_type(field.annotation)
        if isinstance(model, type) and issubclass(model, dict):
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [field.alias or name for name, field in model.model_fields.items()]
    return []


def _section_type(annotation: Any) -> Any:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return annotation


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _problems_from(
    root: type[BaseModel], exc: pydantic.ValidationError, located: _Located
) -> Iterator[ConfigProblem]:
    for err in exc.errors(include_url=False):
        loc: Loc = tuple(err["loc"])
        kind = err["type"]
        line = located.line_for(loc)
        if kind == "extra_forbidden":
            known = _fields_at(root, loc[:-1])
            hint = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = "unknown key; expected one of: " + ", ".join(known)
            if hint:
                message = f"unknown key; did you mean '{hint[0]}'?"
        elif kind == "missing":
            message = "required key is missing"
        elif kind == "value_error":
            # Our own cross-field checks already say what was expected and found.
            message = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            expected = re.sub(r"^Input should (be )?", "", err["msg"])
            expected = expected[0].lower() + expected[1:] if expected else expected
            message = f"expected {expected}; found {_describe(err.get('input'))}"
        yield ConfigProblem(located.file, line, _dotted(loc), message)


def validate_text(model: type[_M], text: str, file: str) -> _M:
    """Validate YAML ``text`` (from ``file``) into ``model``, or raise ConfigError with every
    problem found, each located by line and key path (and the model's ``cross_problems``)."""
    data, located = _parse(text, file)
    problems = list(located.problems)
    if data is None:
        problems.append(ConfigProblem(file, 1, "", "the file is empty; expected a mapping"))
        raise ConfigError(problems)
    if not isinstance(data, dict):
        problems.append(
            ConfigProblem(file, 1, "", f"expected a mapping at the top, found {_describe(data)}")
        )
        raise ConfigError(problems)
    try:
        result = model.model_validate(data)
    except pydantic.ValidationError as exc:
        problems.extend(_problems_from(model, exc, located))
        problems.sort(key=lambda p: (p.line or 0, p.path))
        raise ConfigError(problems) from None
    # Checks across sections, each reported at the key it concerns.
    cross = getattr(result, "cross_problems", None)
    if cross is not None:
        for loc, message in cross():
            problems.append(ConfigProblem(file, located.line_for(loc), _dotted(loc), message))
    if problems:
        raise ConfigError(problems)
    return result


def _read_text(path: Path) -> str:
    file = str(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigProblem(file, None, "", "file not found")]) from None
    except IsADirectoryError:
        raise ConfigError([ConfigProblem(file, None, "", "is a directory, not a file")]) from None
    except PermissionError:
        raise ConfigError([ConfigProblem(file, None, "", "permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(file, None, "", f"not UTF-8 text (byte {exc.start})")]
        ) from None
    except OSError as exc:
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read: {exc.strerror}")]) from None


def load_file(model: type[_M], path: str | Path) -> _M:
    """Read and validate a YAML file into ``model``, or raise ConfigError with every problem."""
    return validate_text(model, _read_text(Path(path)), str(path))


def error_at(path: str | Path, found: list[tuple[Loc, str]]) -> ConfigError:
    """A ConfigError for problems found in a valid file by a later check, each located at its
    line in the file (without lines if the file can no longer be read)."""
    file = str(path)
    try:
        _, located = _parse(_read_text(Path(path)), file)
    except ConfigError:
        return ConfigError([ConfigProblem(file, None, _dotted(loc), msg) for loc, msg in found])
    return ConfigError(
        [ConfigProblem(file, located.line_for(loc), _dotted(loc), msg) for loc, msg in found]
    )
