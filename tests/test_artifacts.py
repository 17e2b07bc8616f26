"""Artifact registry: content-hash ids, atomic folders, lookup by id, prefix or path, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from store.artifacts import ArtifactError, Registry


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.zeros(3)}


def test_register_and_load_roundtrip(tmp_path):
    reg = Registry(tmp_path)
    card = reg.register("head", tensors(), {"head": {"k": 1}}, parents={"encoder": "encoder-abc"}, metrics={"m": 0.5})
    assert card.id.startswith("head-") and len(card.id) == len("head-") + 16
    assert card.path == tmp_path / "head" / card.id
    weights, loaded = reg.load(card.id)
    assert set(weights) == {"w", "b"} and all(torch.equal(weights[k], tensors()[k]) for k in weights)
    assert (loaded.config, loaded.parents, loaded.metrics) == (
        {"head": {"k": 1}},
        {"encoder": "encoder-abc"},
        {"m": 0.5},
    )
    assert json.loads((card.path / "card.json").read_text())["created"] == card.created
    assert [p.name for p in (tmp_path / "head").iterdir()] == [card.id]  # no temporary folder left behind


def test_id_is_a_content_hash(tmp_path):
    reg = Registry(tmp_path)
    base = reg.register("head", tensors(), {"a": 1}).id
    assert reg.register("head", tensors(), {"a": 1}).id == base
    assert reg.register("head", tensors(), {"a": 1}, metrics={"x": 1}).id == base  # metrics are not identity
    others = {
        reg.register("head", tensors(1), {"a": 1}).id,
        reg.register("head", tensors(), {"a": 2}).id,
        reg.register("head", tensors(), {"a": 1}, parents={"p": 1}).id,
    }
    assert base not in others and len(others) == 3
    assert len(reg.list("head")) == 4 and reg.list("encoder") == []


def test_lookup_by_path_card_and_prefix(tmp_path):
    reg = Registry(tmp_path)
    card = reg.register("head", tensors(), {})
    assert reg.path_of(card.path) == card.path
    assert reg.path_of(card.path / "card.json") == card.path
    assert reg.path_of(card.id[:12]) == card.path
    assert Registry(tmp_path / "elsewhere").card(card.path).id == card.id  # a path needs no registry root


def test_unknown_ids_and_paths_are_clear_errors(tmp_path):
    reg = Registry(tmp_path)
    card = reg.register("head", tensors(), {})
    with pytest.raises(ArtifactError, match=rf"'head-ffffffff': not found in .* \(registered: {card.id}\)"):
        reg.load("head-ffffffff")
    with pytest.raises(ArtifactError, match="not an artifact id"):
        reg.load(tmp_path / "missing" / "folder")
    with pytest.raises(ArtifactError, match="not an artifact id"):
        reg.load("")
    reg.register("head", tensors(1), {})
    with pytest.raises(ArtifactError, match="not found"):
        reg.load("head-ab")  # too short to be a prefix
    with pytest.raises(ArtifactError, match="not an artifact id"):
        reg.load("head-")
    assert reg.card(card.id, "head") == card
    with pytest.raises(
        ArtifactError, match=rf"^--encoder {card.id[:12]}: {card.id} is a 'head' artifact, not an encoder$"
    ):
        reg.card(card.id[:12], "encoder", "--encoder")  # the one kind check every --encoder/--init/--like goes through


def test_newest_of_a_kind_and_a_clear_error_when_none(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(ArtifactError, match=r"no encoder registered in .*: train one"):
        reg.newest("encoder", ": train one")
    first = reg.register("encoder", {"w": torch.zeros(2)}, {"n": 1})
    reg.register("head", {"w": torch.ones(2)}, {"n": 2})
    assert reg.newest("encoder").id == first.id  # another kind never answers
