"""Typed dataclasses from YAML: plain scalars typed by the field they set, unknown keys and out-of-range
values refused with one line naming the key path. The machinery under pipeline/config.py.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

import yaml

from data.errors import UserError


class ConfigError(UserError, ValueError):
    """A config value was refused; the message is one line naming the key path."""


class Text(str):
    """A plain (unquoted) YAML scalar, kept as written until the field it sets says what type it is.

    YAML 1.1 would read `run_name: 2024` as an int, `model_name: yes` as True and `lr: 1e-3` as a
    string; `_check_value` instead parses the text against the field's declared type: `1e-3` is a
    float for a float field, `2024` and `yes` are strings for a str field, `null` is None.
    """


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose plain scalars stay `Text` (quoted ones are str); explicit tags still apply."""


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:merge"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_text(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return Text(value) if node.style is None else str(value)


_ConfigLoader.add_constructor("tag:yaml.org,2002:str", _construct_text)


def read_yaml(text: str) -> Any:
    """YAML as the config reads it: plain scalars are `Text`, typed later by the field they set."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


_NULL_WORDS = ("", "~", "null", "Null", "NULL")
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def from_dict(cls: type, raw: Any, path: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys, wrong types and out-of-range values."""
    where = path or "config"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key '{key_path}'; allowed: {', '.join(fields)}")
        kwargs[key] = _check_value(hints[key], value, key_path, fields[key].metadata)
    try:
        return cls(**kwargs)
    except ValueError as e:  # cross-field checks in __post_init__
        raise ConfigError(str(e)) from None


def _check_value(tp: Any, value: Any, key_path: str, meta: typing.Mapping[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(value, Text) and value in _NULL_WORDS:
        value = None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        tp = args[0]
        origin = typing.get_origin(tp)
    if isinstance(value, Text) and tp in (bool, int, float, str):
        value = _parse_text(tp, value, key_path)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key_path)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key_path}: expected a list of {item_tp.__name__}, got {value!r}")
        return [_check_value(item_tp, v, f"{key_path}[{i}]", {}) for i, v in enumerate(value)]
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[tp](value)
    if not ok:
        raise ConfigError(f"{key_path}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    if tp is float:
        value = float(value)
        if not math.isfinite(value):  # nan passes every range check (all comparisons are False)
            raise ConfigError(f"{key_path}: {value!r} is not a finite number")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key_path}: {value!r} is not allowed; allowed: {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ConfigError(f"{key_path}: {value!r} is below the minimum {lo}; allowed: >= {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key_path}: {value!r} is above the maximum {hi}; allowed: <= {hi}")
    return value


def _parse_text(tp: type, text: Text, key_path: str) -> Any:
    """`1e-3` -> 0.001 for a float field, `2024` -> '2024' for a str field, `yes` -> True for a bool field."""
    if tp is str:
        return str(text)
    if tp is bool and text.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[text.lower()]
    if tp is int or tp is float:
        try:
            return tp(text)
        except ValueError:
            pass
        if tp is float and text.lower() in (".inf", "-.inf", "+.inf", ".nan"):
            return float(text.replace(".", "", 1))
    try:  # the value as YAML would read it, so the message shows 1.5, True or 'abc'
        shown = yaml.safe_load(text)
    except yaml.YAMLError:
        shown = str(text)
    raise ConfigError(f"{key_path}: expected {tp.__name__}, got {shown!r} ({type(shown).__name__})")


def describe(obj: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, value, help) for every field of the config `obj`.

    Used by `tpipe config [NAME] --keys`, which shows the values of the named config.
    """
    cls = type(obj)
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows += describe(getattr(obj, f.name), key + ".")
            continue
        default = getattr(obj, f.name)
        help_ = f.metadata.get("help", "")
        if "choices" in f.metadata:
            help_ += f" [{'|'.join(map(str, f.metadata['choices']))}]"
        rows.append((key, repr(default), help_))
    return rows
