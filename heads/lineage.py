"""A registered head's lineage, read back: the fit request its card recorded, whether its labels are still the ones it
was fitted on, its held-out labelled frames, and features of any encoder for them.

`fth heads fit` records on a head's card (`parents`) the whole `FitRequest` (`request`), the labels' digest
(`labels`), count and path, and the labelled frame ids in capture order (`label_frames`). From that alone:

    recorded_request   the FitRequest to repeat (catalog labels restricted to the recorded frames: the catalog grows)
    check_labels       unchanged | changed (digest differs: the current labels are used, and that is said) |
                       vanished (the label file is gone) | unreadable | unrecorded (a card from before requests were
                       recorded): the last three cannot be refit
    held_out           the frames the head's metrics are on (the same time split `fit` made) and their targets
    features           features of those frames for an encoder, embedding what the store lacks

Shapes: B frames.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heads.labels import LabelError, LabelSet
from heads.pipeline import Embed, FitRequest, labelled, stored_features
from store.artifacts import Card
from store.recipe import FeatureRecipe

UNCHANGED, CHANGED, VANISHED, UNREADABLE, UNRECORDED = "unchanged", "changed", "vanished", "unreadable", "unrecorded"
REFITTABLE = (UNCHANGED, CHANGED)


def recorded_request(card: Card, workspace: str | None) -> FitRequest | None:
    """The FitRequest a head was fitted with (None for cards from before requests were recorded)."""
    doc = card.parents.get("request")
    if not doc:
        return None
    known = {f.name for f in dataclasses.fields(FitRequest)}
    req = FitRequest(**{k: v for k, v in doc.items() if k in known})
    req.layers, req.overrides, req.workspace = tuple(req.layers), list(req.overrides), workspace
    req.shuffle_labels = False
    if req.labels == "catalog":
        req.frames = tuple(card.parents.get("label_frames", ()))
    return req


@dataclass
class LabelCheck:
    status: str  # one of UNCHANGED, CHANGED, VANISHED, UNREADABLE, UNRECORDED
    reason: str
    req: FitRequest | None = None
    task: Any = None  # the task configured by the current labels (None unless refittable)
    labels: LabelSet | None = None


def check_labels(card: Card, workspace: str | None, index) -> LabelCheck:
    """Are the labels `card` was fitted on still there, and the same?"""
    req = recorded_request(card, workspace)
    if req is None:
        return LabelCheck(UNRECORDED, "its card has no recorded fit request (registered before heads recorded them); "
                          "refit it by hand with fth heads fit --encoder NEW and its labels")  # fmt: skip
    if req.labels != "catalog" and not Path(req.labels).exists():
        was = f"fitted on {card.parents.get('label_count')} labelled frames, digest {card.parents.get('labels')}"
        return LabelCheck(VANISHED, f"its labels {req.labels} are gone ({was}); it cannot be refit", req)
    try:
        task, labels, _, digest = labelled(req, index, report=lambda _: None)
    except (LabelError, ValueError, OSError) as e:
        return LabelCheck(UNREADABLE, f"its labels {req.labels} cannot be read any more: {e}", req)
    was, count = card.parents.get("labels"), card.parents.get("label_count")
    if digest != was:
        return LabelCheck(CHANGED, f"its labels {req.labels} changed since the fit (digest {was} -> {digest}, "
                          f"{count} -> {len(labels)} labelled frames): refit on the current labels", req, task,
                          labels)  # fmt: skip
    return LabelCheck(UNCHANGED, "labels unchanged", req, task, labels)


@dataclass
class HeldOut:
    ids: list[str]  # the held-out frames, capture order
    target: torch.Tensor  # (B, ...) the task's targets for them
    part: str  # "test", or "validation" when the preset holds no test frames


def held_out(task, labels: LabelSet, req: FitRequest, index) -> HeldOut:
    """The frames `fth heads fit` reports a head's metrics on (its time split of `labels` under the request's
    FitConfig), with `task`'s targets for them."""
    from fth.config import build
    from heads.fit import FitConfig, time_split

    ids = index.in_capture_order(labels.ids)
    cfg = build(FitConfig, req.config or task.preset, req.overrides)
    split = time_split([index.by_id[i].captured_at for i in ids], cfg.val_fraction, cfg.test_fraction,
                       cfg.split_gap_s)  # fmt: skip
    part, rows = ("test", split.test) if len(split.test) else ("validation", split.val)
    values = labels.as_dict()
    test_ids = [ids[j] for j in rows]
    return HeldOut(test_ids, task.targets([values[i] for i in test_ids]), part)


def features(
    ws, index, encoder_id: str, ids: list[str], recipe: FeatureRecipe, embed: Embed | None,
    report: Callable[[str], None] = print,
) -> np.ndarray:  # fmt: skip
    """Features of `ids` (in order) for `encoder_id` in the form `recipe` reads (its tables; not its width or grid,
    which are another encoder's), embedding the frames its store lacks."""
    base = FeatureRecipe(recipe.form, recipe.layers, recipe.pool)
    return stored_features(ws, index, encoder_id, ids, base, embed, report)[0]
