"""Adapters between encoder versions: a linear map from a NEW encoder's features into an OLD encoder's feature space,
so every head fitted on OLD serves on NEW at once (`fth heads adapt --from OLD --to NEW`), until `fth heads refit`
replaces it.

One adapter per feature recipe the old heads read (`pooled`, or a token grid of one or several blocks concatenated on
D): y_old ~ x_new @ W + b with W (D', D). For grids the same W maps every token (a per-token linear map, shared over
the grid), so the grids of both encoders must have the same (gh, gw). It is fitted on unlabelled frames both encoders
embed, oldest 60% to fit, the next 20% to choose the ridge strength, the newest 20% held out for the reported R^2,
from the feature moments (float64 sums of x, y, x^T x, x^T y read in chunks: a grid of a few hundred frames is never
held in float32 at once).

    ridge        W = (Sxx + a I)^-1 Sxy on centred features, a = alpha * tr(Sxx) / D' with alpha picked on the
                 validation frames from ALPHAS (closed form; any widths).
    procrustes   W = s R, R orthogonal from the SVD of Sxy (the orthogonal Procrustes solution, as
                 scipy.linalg.orthogonal_procrustes on the centred rows) and the best global scale s; needs D' = D.

Which one is the default was measured (README, "Encoder updates"). An adapter is a Registry artifact of kind
"adapter": weights `weight` (D', D) and `bias` (D,); card config: the recipe key, both encoders' recipes, method,
alpha; parents: `from` (OLD, the space it maps into) and `to` (NEW, the features it reads); metrics: frame counts and
the held-out R^2 of every method tried. `heads.artifact.load_head` wraps an OLD head behind it when asked for NEW.
Shapes: n frames, (gh, gw) grid, D old width, D' new width, R rows (tokens or frames).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fth.config import from_dict, to_dict
from store.artifacts import Card, Registry
from store.recipe import FeatureError, FeatureRecipe

KIND = "adapter"
METHODS = ("ridge", "procrustes")
DEFAULT_METHOD = "ridge"
ALPHAS = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class NotApplicable(ValueError):
    """A method that cannot map these features (Procrustes between different widths)."""


def recipe_key(recipe: FeatureRecipe) -> str:
    """The tables a recipe reads, e.g. `pooled` or `tokens.-3+tokens`: one adapter per key and encoder pair."""
    return "+".join(recipe.tables())


class Adapted(nn.Module):
    """An old head behind an adapter: new features (B, ..., D') -> (B, ..., D) -> the old head's outputs."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, head: nn.Module):
        super().__init__()
        self.register_buffer("weight", weight.float())  # (D', D)
        self.register_buffer("bias", bias.float())  # (D,)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x @ self.weight + self.bias)


# -- fitting ---------------------------------------------------------------------------------------------------------


@dataclass
class Moments:
    """Float64 sums over R rows of x (D') and y (D): enough for ridge and Procrustes in closed form."""

    n: int = 0
    sx: Any = 0.0
    sy: Any = 0.0
    sxx: Any = 0.0
    sxy: Any = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        x, y = x.astype(np.float64), y.astype(np.float64)  # (R, D'), (R, D)
        self.n += x.shape[0]
        self.sx, self.sy = self.sx + x.sum(0), self.sy + y.sum(0)
        self.sxx, self.sxy = self.sxx + x.T @ x, self.sxy + x.T @ y

    def __add__(self, other: Moments) -> Moments:
        return Moments(self.n + other.n, self.sx + other.sx, self.sy + other.sy, self.sxx + other.sxx,
                       self.sxy + other.sxy)  # fmt: skip

    def centred(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean x, mean y, centred x^T x, centred x^T y)."""
        mx, my = self.sx / self.n, self.sy / self.n
        return mx, my, self.sxx - self.n * np.outer(mx, mx), self.sxy - self.n * np.outer(mx, my)


def _rows(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float32).reshape(-1, a.shape[-1])  # (n, ..., D) -> (R, D)


def moments(x_new: Any, x_old: Any, idx: np.ndarray, chunk: int = 64) -> Moments:
    m = Moments()
    for i in range(0, len(idx), chunk):
        part = idx[i : i + chunk]
        m.add(_rows(x_new[part]), _rows(x_old[part]))
    return m


def solve(m: Moments, method: str, alpha: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """(W (D', D), b (D,)) of `method` from the moments."""
    mx, my, cxx, cxy = m.centred()
    if method == "ridge":
        lam = alpha * np.trace(cxx) / cxx.shape[0]
        w = np.linalg.solve(cxx + lam * np.eye(cxx.shape[0]), cxy)
    elif method == "procrustes":
        if cxy.shape[0] != cxy.shape[1]:
            raise NotApplicable(f"procrustes needs equal widths; the new features have D'={cxy.shape[0]}, the old "
                                f"D={cxy.shape[1]} (use ridge)")  # fmt: skip
        u, sv, vt = np.linalg.svd(cxy)
        r = u @ vt  # (D', D) orthogonal: argmin ||X R - Y|| over rotations
        scale = sv.sum() / max(np.trace(cxx), 1e-12)
        w = scale * r
    else:
        raise ValueError(f"adapter method {method!r}: expected one of {', '.join(METHODS)}")
    return w, my - mx @ w


def r2(x_new: Any, x_old: Any, idx: np.ndarray, w: np.ndarray, b: np.ndarray, chunk: int = 64) -> float:
    """Held-out R^2 over every output coordinate: 1 - SSE / SST (SST around the held-out rows' own mean)."""
    sse, sy, syy, n = 0.0, 0.0, 0.0, 0
    for i in range(0, len(idx), chunk):
        part = idx[i : i + chunk]
        x, y = _rows(x_new[part]).astype(np.float64), _rows(x_old[part]).astype(np.float64)
        sse += float(((x @ w + b - y) ** 2).sum())
        sy, syy, n = sy + y.sum(0), syy + (y * y).sum(0), n + y.shape[0]
    sst = float((syy - sy * sy / max(n, 1)).sum())
    return 1.0 - sse / sst if sst > 0 else float("nan")


@dataclass
class AdapterFit:
    """One recipe's fitted map and how every method did on the held-out frames."""

    method: str
    weight: np.ndarray  # (D', D)
    bias: np.ndarray  # (D,)
    alpha: float | None
    r2: dict[str, float | str] = field(default_factory=dict)  # method -> held-out R^2, or why not applicable
    val_r2: dict[str, float] = field(default_factory=dict)  # ridge alpha -> validation R^2
    n_fit: int = 0
    n_val: int = 0
    n_test: int = 0


def fit_adapter(x_new: Any, x_old: Any, method: str = DEFAULT_METHOD) -> AdapterFit:
    """Features of the same n frames in capture order, (n, D') / (n, D) or (n, gh, gw, D') / (n, gh, gw, D) -> the
    `method` map fitted on the oldest 80% (ridge's alpha chosen on 60% | 20%), R^2 of every method on the newest 20%."""
    if method not in METHODS:
        raise ValueError(f"adapter method {method!r}: expected one of {', '.join(METHODS)}")
    n = x_new.shape[0]
    if x_old.shape[0] != n or x_new.shape[1:-1] != x_old.shape[1:-1]:
        raise FeatureError(f"cannot map features of shape {tuple(x_new.shape)} onto {tuple(x_old.shape)}: the same "
                           "frames and the same token grid are needed (a per-token map)")  # fmt: skip
    if n < 10:
        raise ValueError(f"only {n} frames to fit an adapter on; use at least 10 (--frames)")
    n_test, n_val = max(2, round(0.2 * n)), max(2, round(0.2 * n))
    fit_idx, val_idx = np.arange(n - n_test - n_val), np.arange(n - n_test - n_val, n - n_test)
    test_idx = np.arange(n - n_test, n)
    m_fit, m_val = moments(x_new, x_old, fit_idx), moments(x_new, x_old, val_idx)
    val_r2 = {a: r2(x_new, x_old, val_idx, *solve(m_fit, "ridge", a)) for a in ALPHAS}
    alpha = max(ALPHAS, key=lambda a: -math.inf if math.isnan(val_r2[a]) else val_r2[a])
    both = m_fit + m_val
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scores: dict[str, float | str] = {}
    for name in METHODS:
        try:
            maps[name] = solve(both, name, alpha)
        except NotApplicable as e:
            scores[name] = f"not applicable: {e}"
            continue
        scores[name] = r2(x_new, x_old, test_idx, *maps[name])
    if method not in maps:
        raise NotApplicable(str(scores[method]).removeprefix("not applicable: "))
    return AdapterFit(method, *maps[method], alpha if method == "ridge" else None, scores, val_r2, len(fit_idx),
                      len(val_idx), len(test_idx))  # fmt: skip


# -- the artifact ----------------------------------------------------------------------------------------------------


def save_adapter(
    fit: AdapterFit, registry: Registry, old: str, new: str, old_recipe: FeatureRecipe, new_recipe: FeatureRecipe
) -> Card:
    """Register `fit` as `adapter-<hash>` mapping `new`'s `new_recipe` features into `old`'s `old_recipe` space."""
    config = {"key": recipe_key(old_recipe), "recipe": to_dict(new_recipe), "from_recipe": to_dict(old_recipe),
              "method": fit.method, "alpha": fit.alpha}  # fmt: skip
    metrics = {"fit_frames": fit.n_fit + fit.n_val, "heldout_frames": fit.n_test, "heldout_r2": fit.r2[fit.method],
               "r2_by_method": fit.r2, "ridge_val_r2": {str(a): v for a, v in fit.val_r2.items()}}  # fmt: skip
    tensors = {"weight": torch.from_numpy(fit.weight).float(), "bias": torch.from_numpy(fit.bias).float()}
    name = f"{recipe_key(old_recipe)} {new} -> {old}"
    return registry.register(KIND, tensors, config, {"from": old, "to": new}, metrics, name)


def find_adapter(registry: Registry, old: str, new: str, old_recipe: FeatureRecipe) -> Card | None:
    """The newest adapter mapping `new`'s features into `old`'s for this recipe (same tables and grid), or None."""
    key = recipe_key(old_recipe)
    found = [
        c for c in registry.list(KIND)
        if c.parents.get("from") == old and c.parents.get("to") == new and c.config.get("key") == key
        and tuple(c.config.get("from_recipe", {}).get("grid", ())) == tuple(old_recipe.grid)
    ]  # fmt: skip
    return found[-1] if found else None


def load_adapter(card: Card, registry: Registry) -> tuple[torch.Tensor, torch.Tensor, FeatureRecipe]:
    """(W (D', D), b (D,), the new encoder's recipe the adapter reads)."""
    weights, card = registry.load(card.id)
    recipe = from_dict(FeatureRecipe, card.config["recipe"], f"{card.path}/card.json")
    return weights["weight"], weights["bias"], recipe


# -- the workflow: `fth heads adapt` -----------------------------------------------------------------------------------


def run_adapt(
    workspace: str | None, old: str, new: str, frames: int = 300, method: str = DEFAULT_METHOD,
    source: str | None = None, embed_for: Callable[[str], Any] | None = None, report: Callable[[str], None] = print,
    out: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Fit and register one adapter per feature recipe OLD's heads read, on the `frames` newest catalog frames, then
    measure every OLD head on its held-out labelled frames: on OLD features, through the adapter on NEW features, and
    (when the widths allow) on raw NEW features. Writes and returns `adapt.json` (under `out`, default
    `<workspace>/updates/<OLD>-to-<NEW>`).

    Args:
        embed_for: encoder id -> the embed step for it (frames the store lacks are embedded), None = never embed.
    """
    from heads.artifact import KIND as HEAD
    from heads.artifact import load_head
    from heads.fit import predict_outputs
    from heads.gate import compare, evaluate
    from heads.lineage import REFITTABLE, check_labels, features, held_out
    from store.frame_index import FrameIndex
    from store.fsutil import atomic_write
    from store.paths import Workspace

    ws = Workspace.at(workspace)
    registry = Registry(ws.artifacts)
    old_card, new_card = registry.card(old, "encoder", "--from"), registry.card(new, "encoder", "--to")
    old, new = old_card.id, new_card.id
    if old == new:
        raise ValueError(f"--from and --to are the same encoder {old}")
    if frames < 10:
        raise ValueError(f"--frames {frames}: use at least 10")
    index = FrameIndex(ws.root, ws.catalog, source)
    heads = [c for c in registry.list(HEAD) if c.parents.get("encoder") == old]
    recipes: dict[str, FeatureRecipe] = {}
    for card in heads:
        recipe = from_dict(FeatureRecipe, card.config["recipe"], f"{card.path}/card.json")
        recipes.setdefault(recipe_key(recipe), recipe)
    ids = index.in_capture_order([r.id for r in index.rows])[-frames:]
    embed_old, embed_new = (embed_for(old), embed_for(new)) if embed_for else (None, None)
    doc: dict[str, Any] = {"from": old, "to": new, "method": method, "frames": len(ids), "adapters": [], "heads": []}
    if not heads:
        report(f"no heads are registered on encoder {old}: nothing to adapt")
    for key, recipe in recipes.items():
        x_old = features(ws, index, old, ids, recipe, embed_old, report)
        x_new = features(ws, index, new, ids, recipe, embed_new, report)
        fit = fit_adapter(x_new, x_old, method)
        new_recipe = FeatureRecipe.for_encoder(new_card.config, recipe.form, recipe.layers).completed(x_new)
        card = save_adapter(fit, registry, old, new, recipe, new_recipe)
        scores = ", ".join(f"{m} {v:.4f}" if isinstance(v, float) else f"{m} {v}" for m, v in fit.r2.items())
        report(f"adapter {card.id}: {key} ({new_recipe.describe()} -> D={recipe.dim}), {fit.method}"
               f"{f' alpha {fit.alpha:g}' if fit.alpha is not None else ''}, fitted on {fit.n_fit + fit.n_val} "
               f"frames; held-out R^2 on {fit.n_test} frames: {scores}")  # fmt: skip
        doc["adapters"].append({"id": card.id, "key": key, "method": fit.method, "alpha": fit.alpha,
                                "fit_frames": fit.n_fit + fit.n_val, "heldout_frames": fit.n_test,
                                "heldout_r2": fit.r2[fit.method], "r2_by_method": fit.r2})  # fmt: skip
    for card in heads:
        row: dict[str, Any] = {"head": card.id, "name": card.name or card.id, "task": card.config["task"]["name"]}
        check = check_labels(card, workspace, index)
        row["labels"] = check.status
        if check.status not in REFITTABLE:
            row["note"] = f"not measured: {check.reason}"
            doc["heads"].append(row)
            continue
        old_head, adapted = load_head(card.id, registry, old), load_head(card.id, registry, new)
        ho = held_out(old_head.task, check.labels, check.req, index)
        x_old = features(ws, index, old, ho.ids, old_head.recipe, embed_old, report)
        x_new = features(ws, index, new, ho.ids, old_head.recipe, embed_new, report)
        out_old = predict_outputs(old_head.module, x_old)
        cmp = compare(old_head.task, out_old, predict_outputs(adapted.module, x_new), ho.target)
        raw = None
        if tuple(x_new.shape[1:]) == tuple(x_old.shape[1:]):  # the old head straight on new features, as a control
            raw = evaluate(old_head.task, predict_outputs(old_head.module, x_new), ho.target).get(old_head.task.primary)
        row.update(adapter=adapted.adapter_id, part=ho.part, n=cmp["n"], primary=cmp["primary"],
                   higher_is_better=cmp["higher_is_better"], old=cmp["old_primary"], adapted=cmp["new_primary"],
                   raw_new=raw, retention=cmp["retention"], flips=cmp["flips"], flip_rate=cmp["flip_rate"],
                   flip_tolerance=cmp.get("flip_tolerance"), relative_flip=cmp.get("relative_flip"))  # fmt: skip
        if check.status != "unchanged":
            row["note"] = check.reason
        doc["heads"].append(row)
    folder = Path(out) if out else ws.root / "updates" / f"{old}-to-{new}"
    with atomic_write(folder / "adapt.json", "w") as f:
        f.write(json.dumps(doc, indent=1, default=float) + "\n")
    doc["path"] = str(folder / "adapt.json")
    return doc
