"""`fth embed`: embed catalog frames with a registered encoder into the embedding store (store.embeddings).

Resumable: frames already in the store for this encoder version are skipped, so a second run does nothing.
Shardable: under torchrun (`RANK`, `WORLD_SIZE` in the environment) each rank takes the frames whose id hashes to
it and writes its own shard files, so N ranks cover every frame exactly once with no coordination. Frames are
decoded on a small thread pool (Pillow; JPEG draft mode when the frame is much larger than the model input), then
embedded in batches: the pooled float16 vector for every frame, and with `tokens` the (gh, gw, D) grid of each
requested layer for the frames asked (all frames, or the ids listed in `token_frames`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoder.checkpoint import load_encoder
from encoder.preprocess import normalize, to_array
from encoder.vit import ViT
from store.artifacts import Registry
from store.backends import open_frames
from store.embeddings import EmbeddingStore
from store.paths import Workspace
from store.recipe import table_name

log = logging.getLogger(__name__)

Frames = Iterable[tuple[str, Path | str]]  # (frame id, its ref in the workspace's frame store: `FrameStore.ref`)


@dataclass
class EmbedConfig:
    """What `fth embed` embeds and how.

    Args:
        workspace: workspace folder (default `$FTH_WORKSPACE` or `./workspace`).
        encoder: encoder id or artifact folder; empty picks the newest registered encoder.
        source: only frames of this catalog source.
        batch_size: frames per forward pass.
        tokens: also store token grids (of `layers`) for the frames in `token_frames`, or for all frames when empty.
        layers: block indices whose grids are stored (-1 = final output).
        token_frames: file with one frame id per line that need token grids.
        shard_rows: rows per shard file of the store.
        device: torch device.
        decode_threads: threads decoding frames ahead of the model.
    """

    workspace: str | None = None
    encoder: str = ""
    source: str | None = None
    batch_size: int = 64
    tokens: bool = False
    layers: list[int] = field(default_factory=lambda: [-1])
    token_frames: str | None = None
    shard_rows: int = 4096
    device: str = "cpu"
    decode_threads: int = 2


def rank_world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def owner(frame_id: str, world: int) -> int:
    """The rank that embeds `frame_id`: stable across runs and catalog growth (a hash, not a position)."""
    try:
        value = int(frame_id[:16], 16)
    except ValueError:
        value = int(hashlib.sha256(frame_id.encode()).hexdigest()[:16], 16)
    return value % world


def catalog_frames(workspace: Workspace, source: str | None = None) -> Frames:
    """Every visible frame of the workspace's catalog as (id, ref): a local path, or a key of its S3 frame store."""
    from store.backends import open_catalog

    catalog = open_catalog(workspace, create=False)
    try:
        for row in catalog.iter_frames(source):
            yield row.id, catalog.frame_store.ref(row.path)
    finally:
        catalog.close()


def load_frame(frame: Path | bytes, size: tuple[int, int]) -> np.ndarray:
    """An encoded frame (a file, or its bytes) -> (H, W, 3) uint8 at the model's `size`."""
    with Image.open(io.BytesIO(frame) if isinstance(frame, bytes) else frame) as image:
        if image.format == "JPEG":
            image.draft("RGB", (size[1], size[0]))
        return to_array(image, size)


def _batches(items: list[tuple[str, Path]], n: int) -> Iterator[list[tuple[str, Path]]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@torch.inference_mode()
def features(model: ViT, images: np.ndarray, tables: list[str], device: str) -> dict[str, np.ndarray]:
    """(B, H, W, 3) uint8 -> {table: (B, D) or (B, gh, gw, D)} float32, one encoder pass (`ViT.tables`)."""
    images = images if images.flags.writeable else images.copy()  # torch warns on read-only numpy (one PIL image)
    x = normalize(torch.from_numpy(images).to(device), model.cfg)  # (B, 3, H, W)
    return {k: v.float().cpu().numpy() for k, v in model.tables(x, tables).items()}


def run_embed(
    cfg: EmbedConfig,
    frames: Frames | None = None,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
    token_ids: set[str] | None = None,
) -> dict[str, int]:
    """Embed this rank's share of `frames` (default: the catalog) that the store lacks; returns counts.

    Args:
        token_ids: frames that need token grids (overrides `cfg.token_frames`; None = as the config says).
    """
    from tqdm import tqdm

    ws = Workspace.at(cfg.workspace)
    registry = Registry(ws.artifacts)
    ref = cfg.encoder or registry.newest("encoder").id
    if Path(ref).exists():
        registry = Registry(Path(ref).resolve().parent.parent)
    model, card = load_encoder(ref, registry, cfg.device)
    size = tuple(model.cfg.img_size)
    rank, world = rank_world()
    store = EmbeddingStore(ws.embeddings, card.id)

    wanted_tokens: set[str] | None = token_ids
    if cfg.tokens and cfg.token_frames and wanted_tokens is None:
        wanted_tokens = {ln.strip() for ln in Path(cfg.token_frames).read_text().splitlines() if ln.strip()}
    layers = sorted(set(cfg.layers)) if cfg.tokens else []
    token_tables = [table_name("grid", i) for i in layers]
    have = {"pooled": set(store.index("pooled")), **{t: set(store.index(t)) for t in token_tables}}

    def needs_tokens(frame_id: str) -> bool:
        return cfg.tokens and (wanted_tokens is None or frame_id in wanted_tokens)

    todo = []
    seen = 0
    for frame_id, path in frames if frames is not None else catalog_frames(ws, cfg.source):
        if owner(frame_id, world) != rank:
            continue
        seen += 1
        missing = frame_id not in have["pooled"] or (
            needs_tokens(frame_id) and any(frame_id not in have[t] for t in token_tables)
        )
        if missing:
            todo.append((frame_id, path))
    log.info("rank %d/%d: %d frames, %d to embed with %s", rank, world, seen, len(todo), card.id)
    stats = {"frames": seen, "embedded": 0, "skipped": seen - len(todo), "failed": 0}
    if not todo:
        return stats

    gh, gw = model.grid(*size)
    writer_name = f"r{rank}"
    pooled_w = store.writer("pooled", (model.cfg.dim,), writer_name, cfg.shard_rows)
    token_w = {t: store.writer(t, (gh, gw, model.cfg.dim), writer_name, cfg.shard_rows) for t in token_tables}
    bar = tqdm(total=len(todo), unit="frame", disable=not progress or rank != 0, desc=f"embed {card.id}")

    frame_store = open_frames(ws)

    def decode(item: tuple[str, Path | str]) -> np.ndarray | None:
        try:
            return load_frame(frame_store.read(item[1]), size)
        except (OSError, SyntaxError, ValueError) as e:
            log.warning("frame %s (%s) cannot be read, skipped: %s", item[0], item[1], e)
            return None

    with ThreadPoolExecutor(max(1, cfg.decode_threads)) as pool:
        batches = list(_batches(todo, cfg.batch_size))
        ahead = [[pool.submit(decode, item) for item in b] for b in batches[:2]]  # decode one batch ahead
        for k, batch in enumerate(batches):
            images = [f.result() for f in ahead.pop(0)]
            if k + 2 < len(batches):
                ahead.append([pool.submit(decode, item) for item in batches[k + 2]])
            ok = [(item, im) for item, im in zip(batch, images, strict=True) if im is not None]
            stats["failed"] += len(batch) - len(ok)
            if ok:
                ids = [item[0] for item, _ in ok]
                out = features(model, np.stack([im for _, im in ok]), ["pooled", *token_tables], cfg.device)
                new = [i for i, fid in enumerate(ids) if fid not in have["pooled"]]
                if new:
                    pooled_w.append([ids[i] for i in new], out["pooled"][new])
                for t, w in token_w.items():
                    sel = [i for i, fid in enumerate(ids) if needs_tokens(fid) and fid not in have[t]]
                    if sel:
                        w.append([ids[i] for i in sel], out[t][sel])
                stats["embedded"] += len(ok)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(len(batch))
    bar.close()
    log.info("rank %d: %s", rank, stats)
    return stats
