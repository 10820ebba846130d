"""Typed, documented config records, validated from plain dicts (TOML tables, CLI flags).

Every field is a dataclass field whose metadata carries its help text (and, where it
applies, its allowed choices), so `targets/README.md`, `--help` and errors all come
from one declaration.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable


def option(default: Any = dataclasses.MISSING, help: str = "", choices: tuple | Callable[[], list] = (), **kw) -> Any:
    """A documented dataclass field. A dataclass type as default means a section with its own defaults.
    `choices` may be a function, asked when a value is checked (e.g. the backends found at run time)."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        kw["default_factory"] = default
    elif isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
    elif default is not dataclasses.MISSING:
        kw["default"] = default
    return dataclasses.field(metadata={"help": help, "choices": choices if callable(choices) else tuple(choices)}, **kw)


def choices_of(f: dataclasses.Field) -> tuple:
    choices = f.metadata.get("choices", ())
    return tuple(choices()) if callable(choices) else choices


class SchemaError(ValueError):
    """A value that does not fit its declared field; `where` names the field path."""

    def __init__(self, where: str, problem: str):
        self.where, self.problem = where, problem
        super().__init__(f"{where}: {problem}")


def from_dict(cls: type, data: dict, where: str = "") -> Any:
    """Build dataclass `cls` from `data`, checking unknown keys, types and choices."""
    if not isinstance(data, dict):
        raise SchemaError(where or cls.__name__, f"expected a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SchemaError(_join(where, unknown[0]), f"unknown field (known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        path = _join(where, name)
        if name in data:
            values[name] = _coerce(hints[name], data[name], path)
            choices = choices_of(f)
            if choices and not _within(values[name], choices):
                raise SchemaError(path, f"{data[name]!r} is not one of {', '.join(map(str, choices))}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            if dataclasses.is_dataclass(hints[name]):
                values[name] = from_dict(hints[name], {}, path)
            else:
                raise SchemaError(path, "required field is missing")
    return cls(**values)


def _within(value: Any, choices: tuple) -> bool:
    items = value if isinstance(value, (list, tuple)) else [value]
    return all(v in choices for v in items)


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint: Any, value: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise SchemaError(path, f"expected a list, got {value!r}")
        return [_coerce(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and type(value) is not hint:
        raise SchemaError(path, f"expected {hint.__name__}, got {value!r}")
    return value


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(field path, type, default, help) rows for docs, recursing into sections."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = _join(prefix, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(hints[f.name], path)
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
        help_text = f.metadata.get("help", "")
        if choices_of(f):
            help_text += f" One of: {', '.join(map(str, choices_of(f)))}."
        rows.append((path, _type_name(hints[f.name]), repr(default), help_text))
    return rows


def _type_name(hint: Any) -> str:
    if typing.get_args(hint):
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))
