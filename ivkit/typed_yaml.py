"""Typed recipes: YAML mappings turned into trees of dataclasses, strictly, with dotted overrides.

Every recipe in ivkit (the training stages, VidCap, KMash, InternVid2 selection) is a dataclass tree
read through `build`, so each fails the same way: with the dotted path of the key that is unknown,
missing or of the wrong type, before any work starts. Checks that involve more than one key stay in
the dataclasses (`__post_init__`) or in the recipe's own `validate`.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true/false. PyYAML follows YAML 1.1, where on/off/yes/no are booleans too, so a
    documented string value such as `index_cache: off` would arrive as False and be refused as a non-string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class ConfigError(ValueError):
    """A recipe key is unknown, missing or of the wrong type, or a value breaks a recipe's rule."""


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if value is None:              # `section:` with nothing under it: the section's defaults
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return build(tp, value, where)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for a in (a for a in typing.get_args(tp) if a is not type(None)):
            try:
                return _convert(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors))
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:                # only the homogeneous form, tuple[X, ...]
        args = typing.get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise ConfigError(f"{where}: unsupported type {tp}")
        return tuple(_convert(value, list[args[0]], where))
    if tp is dict or origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return {_convert(k, key_tp, f"{where} key"): _convert(v, value_tp, _join(where, str(k)))
                for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):     # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported type {getattr(tp, '__name__', tp)}")


def build(cls: type, raw: dict, where: str = "") -> Any:
    """Build dataclass `cls` from a plain dict; unknown, missing or ill-typed keys raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, str(unknown[0]))} "
                          f"(valid keys{' of ' + where if where else ''}: {', '.join(sorted(fields))})")
    missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key {_join(where, missing[0])}")
    kwargs = {k: _convert(v, hints[k], _join(where, k)) for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:            # a __post_init__ rule of this section: say where it is
        message = str(e)
        raise ConfigError(message if not where or message.startswith(where) else f"{where}: {message}") from None


def read_mapping(path: str | Path) -> dict:
    """The top-level mapping of a YAML recipe file (empty file: {})."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist")
    try:
        raw = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: top level must be a mapping")
    return raw


def set_dotted(raw: dict, key: str, value: Any) -> None:
    """raw[a][b][c] = value for key 'a.b.c', creating sections on the way."""
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {key!r}: empty key segment")
    node = raw
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {p} is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(override: str) -> tuple[str, Any]:
    """'a.b.c=value' -> ('a.b.c', value parsed as a YAML scalar or flow collection)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    key, text = override.split("=", 1)
    try:
        return key.strip(), (load_yaml(text) if text.strip() else "")
    except yaml.YAMLError as e:
        raise ConfigError(f"override {override!r}: value is not valid YAML: {e}") from None


def apply_override(raw: dict, override: str) -> None:
    """Apply one 'a.b.c=value' override to a nested dict."""
    set_dotted(raw, *parse_override(override))
