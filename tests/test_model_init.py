"""`fth model init --like ENCODER`: the same architecture at seeded random init, registered with a card saying so."""

from __future__ import annotations

import torch
from fth_cli import run
from serving import tiny_encoder

from encoder.checkpoint import load_encoder
from store.artifacts import Registry


def test_init_like_builds_the_same_architecture_at_seeded_random_init(workspace):
    trained, card = tiny_encoder(workspace, seed=3)
    with torch.no_grad():  # stands in for training: weights no init reproduces
        for p in trained.parameters():
            p.add_(0.5)
    from encoder.checkpoint import save_encoder

    registry = Registry(workspace.artifacts)
    card = save_encoder(trained, registry, name="trained")
    rc, out, err = run("model", "init", "--like", card.id, "--workspace", str(workspace.root))
    assert rc == 0, err
    new_id = out.strip().splitlines()[-1].removeprefix("encoder: ")
    new = registry.card(new_id)
    assert new.config == card.config and new.parents == {"like": card.id, "init": "random", "seed": 0}
    assert "random init" in new.metrics["note"] and new.name == "random-init-of-trained-s0"
    model, _ = load_encoder(new_id, registry)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in trained.parameters())
    assert not torch.equal(model.patch_embed.weight, trained.patch_embed.weight)
    # seeded: the same call registers the same artifact, another seed another one
    assert run("model", "init", "--like", card.id, "--workspace", str(workspace.root))[1] == out
    rc, out2, _ = run("model", "init", "--like", card.id, "--seed", "1", "--workspace", str(workspace.root))
    assert rc == 0 and out2.strip().splitlines()[-1] != out.strip().splitlines()[-1]
    listed = run("model", "list", "--workspace", str(workspace.root))[1]
    assert new_id in listed
    # the default encoder (serve, embed, heads fit) stays the trained one, though the random inits are newer
    assert registry.newest("encoder").parents.get("init") != "random"


def test_init_like_an_unknown_encoder_is_one_line(workspace):
    rc, out, err = run("model", "init", "--like", "encoder-feed", "--workspace", str(workspace.root))
    assert rc == 2 and err.startswith("fth model init: error:") and len(err.strip().splitlines()) == 1
