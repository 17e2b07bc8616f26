from dataclasses import dataclass, field
from typing import Literal

import pytest

from fth.config import ConfigError, build, from_dict, merge, parse_set, to_dict


@dataclass
class Inner:
    depth: int = 2
    ratio: float = 0.5
    kind: Literal["a", "b"] = "a"


@dataclass
class Outer:
    name: str = "x"
    size: tuple[int, int] = (64, 96)
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    limit: int | None = None
    flag: bool = False


def test_yaml_then_set_override(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  depth: 5\nsize: [32, 48]\n")
    cfg = build(Outer, path, ["inner.ratio=1", "limit=7", "tags=[p, q]"])
    assert cfg.name == "y" and cfg.inner.depth == 5 and cfg.size == (32, 48)
    assert cfg.inner.ratio == 1.0 and isinstance(cfg.inner.ratio, float)
    assert cfg.limit == 7 and cfg.tags == ["p", "q"]
    assert cfg.inner.kind == "a"  # untouched default survives a partial override


def test_a_file_layers_on_its_base(tmp_path):
    """`base:` is merged first, so a preset holds only what differs from the one it extends; loops are refused."""
    (tmp_path / "base.yaml").write_text("name: b\ninner:\n  depth: 5\n  ratio: 0.25\n")
    (tmp_path / "child.yaml").write_text(f"base: {tmp_path / 'base.yaml'}\ninner:\n  depth: 7\n")
    cfg = build(Outer, tmp_path / "child.yaml", ["inner.ratio=0.75"])
    assert cfg.name == "b" and cfg.inner.depth == 7 and cfg.inner.ratio == 0.75
    (tmp_path / "base.yaml").write_text(f"base: {tmp_path / 'child.yaml'}\n")
    with pytest.raises(ConfigError, match="loops back"):
        build(Outer, tmp_path / "child.yaml")


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  dpeth: 5\n")
    with pytest.raises(ConfigError, match=r"unknown key 'inner.dpeth' in .*bad.yaml"):
        build(Outer, path)


def test_wrong_type_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  depth: deep\n")
    with pytest.raises(ConfigError, match=r"'inner.depth' in .*bad.yaml.*integer"):
        build(Outer, path)
    with pytest.raises(ConfigError, match=r"'inner.kind' in --set inner.kind=c"):
        build(Outer, None, ["inner.kind=c"])
    with pytest.raises(ConfigError, match="expected 2 items"):
        build(Outer, None, ["size=[1, 2, 3]"])
    with pytest.raises(ConfigError, match="true or false"):
        merge(Outer(), {"name": "x", "flag": 1}, "t")
    with pytest.raises(ConfigError, match="integer"):
        merge(Outer(), {"inner": {"depth": True}}, "t")


def test_round_trip_through_dict():
    cfg = build(Outer, None, ["inner.depth=9", "size=[3, 4]"])
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_parse_set():
    assert parse_set("a.b.c=3") == {"a": {"b": {"c": 3}}}
    assert build(Outer, None, ["inner.ratio=1e-3"]).inner.ratio == 1e-3
    with pytest.raises(ConfigError, match="key=value"):
        parse_set("novalue")
