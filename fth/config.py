"""Typed configuration: dataclass defaults <- YAML file <- `--set key=value` overrides.

Every component owns a dataclass whose defaults are the documented settings. A YAML file only overrides
fields of it, and `--set a.b=value` (value parsed as YAML) overrides the file. An unknown key or a value of the
wrong type raises `ConfigError` naming the key and where it came from, never a silent default.

A field whose type is itself a dataclass may also be given as a string: the name of a preset in `configs/`
(`model: seed` loads `configs/seed.yaml`) or a path to a YAML file, which is loaded into that field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message names the key and its source."""


def resolve_path(name: str | Path) -> Path:
    """A preset name (`seed`, `collector`) or a path to a YAML file -> the file's path."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    for candidate in (CONFIG_DIR / f"{name}.yaml", CONFIG_DIR / f"{name}.yml", CONFIG_DIR / str(name)):
        if candidate.is_file():
            return candidate
    presets = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config {str(name)!r} is neither a YAML file nor a preset in {CONFIG_DIR}: {', '.join(presets)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = resolve_path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to float, lists to tuples)."""
    origin, args = get_origin(tp), get_args(tp)
    where = f"key {key!r} in {source}"
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} is not a {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str):
            return build(tp, resolve_path(value))
        if isinstance(value, dict):
            return _from_mapping(tp, value, source, prefix=f"{key}.")
        if isinstance(value, tp):
            return value
        raise ConfigError(f"{where}: expected a mapping or a preset name for {tp.__name__}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def _fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _from_mapping(cls: type[T], data: dict[str, Any], source: str, prefix: str = "") -> T:
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix + unknown[0]!r} in {source}; {cls.__name__} has: {', '.join(sorted(fields))}"
        )
    values = {k: _coerce(v, fields[k], prefix + k, source) for k, v in data.items()}
    return cls(**values)


def merge(cfg: T, data: dict[str, Any], source: str, prefix: str = "") -> T:
    """Return a copy of the dataclass `cfg` with the (possibly nested) mapping `data` applied on top."""
    fields = _fields(type(cfg))
    changes = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(
                f"unknown key {prefix + key!r} in {source}; {type(cfg).__name__} has: {', '.join(sorted(fields))}"
            )
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, source, prefix=f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, fields[key], prefix + key, source)
    return dataclasses.replace(cfg, **changes)


def parse_set(item: str) -> dict[str, Any]:
    """`a.b=3` -> {'a': {'b': 3}}; the value is parsed as YAML (so `true`, `1e-3`, `[64, 96]` work)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    if isinstance(value, str) and raw.strip() != raw:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _apply_file(cfg: T, path: str | Path, seen: tuple[Path, ...]) -> T:
    """Merge a YAML file into `cfg`; its optional top-level `base: <preset or file>` is merged first, so a file holds
    only what differs from its base (which holds only what differs from the dataclass defaults)."""
    resolved = resolve_path(path)
    if resolved in seen:
        raise ConfigError(f"{resolved}: `base` chain loops back to itself ({' -> '.join(map(str, seen))})")
    data = read_yaml(resolved)
    base = data.pop("base", None) if isinstance(data, dict) else None
    if base is not None:
        cfg = _apply_file(cfg, base, (*seen, resolved))
    return merge(cfg, data, str(resolved))


def build(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults of `cls`, then the YAML file at `path` (or preset name), then each `key=value` override in order."""
    cfg = cls()
    if path is not None:
        cfg = _apply_file(cfg, path, ())
    for item in overrides:
        cfg = merge(cfg, parse_set(item), f"--set {item}")
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass -> plain, JSON/YAML-ready dict (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def from_dict(cls: type[T], data: dict[str, Any], source: str = "a saved config") -> T:
    """Rebuild a dataclass from `to_dict` output (e.g. a checkpoint card), with the same checks as YAML."""
    return merge(cls(), data, source)
