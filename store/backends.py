"""Where a workspace's frames and catalog live: the one place that turns a workspace's settings into its backends.

    catalog: SQLite file `<workspace>/catalog.sqlite` (default, embedded) or `postgresql://user:pw@host:port/db`
    frames:  the workspace folder (default; files under `<workspace>/frames/`) or `s3://bucket/prefix` on any
             S3-compatible endpoint (AWS, Backblaze B2, MinIO, SeaweedFS, ...)

Settings come from `<workspace>/workspace.yaml` (keys `catalog`, `frames`, `s3_endpoint`), and the environment
variables `FTH_CATALOG`, `FTH_FRAMES`, `FTH_S3_ENDPOINT` override the file. S3 credentials and region come from the
usual AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `~/.aws/credentials`, ...).

Every reader and writer of frames goes through here: `open_catalog(ws)` for rows, and the catalog's `frames`
(a `FrameStore`) for bytes: `read(ref)` of a frame's `ref(path)`. S3 is spoken with boto3: synchronous, thread-safe
clients, and `put_object` returns the ETag (the MD5 of a single-part upload) that the durability check compares;
fsspec/s3fs would add an async layer (aiobotocore, pinned to one botocore) for no gain here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.fsutil import atomic_write, stray_temps
from store.paths import Workspace

SETTINGS_FILE = "workspace.yaml"
ENV = {"catalog": "FTH_CATALOG", "frames": "FTH_FRAMES", "s3_endpoint": "FTH_S3_ENDPOINT"}


class StorageError(ValueError):
    """Workspace storage settings that cannot be used (a bad URL, an unknown key)."""


class CatalogMissing(FileNotFoundError):
    """A read-only command found no catalog to read."""


@dataclass(frozen=True)
class StorageSettings:
    """A workspace's storage: `catalog` and `frames` URLs ('' = the local default) and the S3 endpoint."""

    catalog: str = ""
    frames: str = ""
    s3_endpoint: str = ""

    @property
    def remote_catalog(self) -> bool:
        return self.catalog.startswith(("postgresql://", "postgres://"))


def settings(ws: Workspace) -> StorageSettings:
    """The workspace's storage settings: `<workspace>/workspace.yaml`, overridden by `FTH_CATALOG` & co."""
    values: dict[str, str] = {}
    path = ws.root / SETTINGS_FILE
    if path.is_file():
        import yaml

        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise StorageError(f"{path}: not YAML: {e}") from e
        if not isinstance(loaded, dict) or set(loaded) - set(ENV):
            raise StorageError(f"{path}: expected a mapping with keys {sorted(ENV)}, got {loaded!r}")
        values = {k: str(v or "") for k, v in loaded.items()}
    for key, var in ENV.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    out = StorageSettings(**values)
    if out.catalog and not out.remote_catalog and not out.catalog.startswith("sqlite:"):
        raise StorageError(f"catalog {out.catalog!r}: use postgresql://... or sqlite:PATH (or leave it empty)")
    if out.frames and not out.frames.startswith("s3://") and not out.frames.startswith("file:"):
        raise StorageError(f"frames {out.frames!r}: use s3://bucket/prefix or file:PATH (or leave it empty)")
    return out


# -- frame bytes -------------------------------------------------------------------------------------------------


class FrameStore:
    """Frame bytes by path relative to the store (`frames/<source>/<day>/<file>`), durable once `put` returns."""

    url: str

    def ref(self, rel: str) -> Any:
        """What `read` takes for the frame at `rel` (a local path for a local store, so old callers keep working)."""
        return rel

    def put(self, rel: str, data: bytes) -> None:
        raise NotImplementedError

    def read(self, ref: str | Path) -> bytes:
        raise NotImplementedError

    def sha256(self, rel: str) -> str | None:
        """The hash of the stored bytes, None when there is no such frame."""
        try:
            return hashlib.sha256(self.read(rel)).hexdigest()
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def delete(self, rel: str) -> None:
        """Remove the frame (no error when it is already gone), and what an interrupted `put` of it left."""
        raise NotImplementedError

    def list(self, prefix: str) -> Iterator[str]:
        """Relative paths of the complete frames under `prefix` (leftovers of interrupted puts excluded)."""
        raise NotImplementedError

    def quarantine(self, rel: str) -> None:
        """Move the frame to `quarantine/<rel>` (kept for a look, out of the catalog's way)."""
        raise NotImplementedError


class LocalFrames(FrameStore):
    """Frame files under a folder: written by `store.fsutil.atomic_write` (temp file, fsync, rename, fsync dir)."""

    def __init__(self, root: str | Path):
        # absolute: `ref` hands out root/rel and `read` joins root again, which is only a no-op for absolute refs
        # (a relative workspace such as `workspace/demo` read `workspace/demo/workspace/demo/frames/...`)
        self.root = Path(root).absolute()
        self.url = str(self.root)

    def ref(self, rel: str) -> Path:
        return self.root / rel

    def put(self, rel: str, data: bytes) -> None:
        with atomic_write(self.root / rel) as f:
            f.write(data)

    def read(self, ref: str | Path) -> bytes:
        return (self.root / ref).read_bytes()

    def sha256(self, rel: str) -> str | None:
        h = hashlib.sha256()
        try:
            with open(self.root / rel, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except (FileNotFoundError, IsADirectoryError):
            return None
        return h.hexdigest()

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def delete(self, rel: str) -> None:
        final = self.root / rel
        for tmp in stray_temps(final) if final.parent.is_dir() else []:
            tmp.unlink(missing_ok=True)
        final.unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if base.is_dir():
            for path in base.rglob("*"):
                if path.is_file() and not path.name.endswith(".tmp"):
                    yield path.relative_to(self.root).as_posix()

    def quarantine(self, rel: str) -> None:
        target = self.root / "quarantine" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).replace(target)


class S3Frames(FrameStore):
    """Frame objects under `s3://bucket/prefix/` on an S3-compatible endpoint (boto3).

    `put` is one PUT (an object appears whole or not at all, so no temporary names), then a check that the ETag the
    server returned is the MD5 of the bytes and that HEAD reports their size: only then may the catalog call it `ok`.
    The client is made lazily per process, so a store pickles into DataLoader workers.
    """

    def __init__(self, url: str, endpoint: str = ""):
        rest = url[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        if not self.bucket:
            raise StorageError(f"frames {url!r}: no bucket (use s3://bucket/prefix)")
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL", "")
        self.url = url
        self._client = None
        self._pid = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None, "_pid": 0}

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            import boto3
            from botocore.config import Config

            cfg = Config(retries={"max_attempts": 5, "mode": "standard"}, max_pool_connections=32)
            self._client = boto3.session.Session().client(
                "s3", endpoint_url=self.endpoint or None, region_name=os.environ.get("AWS_REGION", "us-east-1"),
                config=cfg,
            )  # fmt: skip
            self._pid = os.getpid()
        return self._client

    def key(self, rel: str | Path) -> str:
        rel = str(rel).lstrip("/")
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def ensure_bucket(self) -> None:
        """Create the bucket when it does not exist (for fresh test and sync targets)."""
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, rel: str, data: bytes) -> None:
        md5 = hashlib.md5(data).hexdigest()
        key = self.key(rel)
        resp = self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        etag = resp.get("ETag", "").strip('"')
        if etag != md5:
            raise OSError(f"s3 PUT {self.bucket}/{key}: ETag {etag!r} is not the MD5 {md5} of the bytes sent")
        size = self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        if size != len(data):
            raise OSError(f"s3 PUT {self.bucket}/{key}: stored {size} bytes, sent {len(data)}")

    def read(self, ref: str | Path) -> bytes:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.key(ref))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(f"{self.url}/{ref}") from None
            raise

    def exists(self, rel: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
            return True
        except ClientError:
            return False

    def delete(self, rel: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))

    def list(self, prefix: str) -> Iterator[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.key(prefix))
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def quarantine(self, rel: str) -> None:
        source = {"Bucket": self.bucket, "Key": self.key(rel)}
        self.client.copy_object(Bucket=self.bucket, Key=self.key(f"quarantine/{rel}"), CopySource=source)
        self.delete(rel)


def open_frames(ws: Workspace | str | Path, cfg: StorageSettings | None = None) -> FrameStore:
    """The workspace's frame store (local folder or S3)."""
    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    cfg = cfg or settings(ws)
    if cfg.frames.startswith("s3://"):
        return S3Frames(cfg.frames, cfg.s3_endpoint)
    if cfg.frames.startswith("file:"):
        return LocalFrames(cfg.frames[len("file:") :])
    return LocalFrames(ws.root)


# -- the catalog -------------------------------------------------------------------------------------------------


def catalog_url(ws: Workspace, cfg: StorageSettings | None = None, db_path: str | Path | None = None) -> str:
    """`postgresql://...` or `sqlite:PATH` of the workspace's catalog (`db_path` replaces the default SQLite file)."""
    cfg = cfg or settings(ws)
    if cfg.catalog:
        return cfg.catalog
    return f"sqlite:{db_path or ws.catalog}"


def open_catalog(
    ws: Workspace | str | Path, recover: bool = False, create: bool = True, db_path: str | Path | None = None
):
    """The workspace's `store.catalog.Catalog` on its backends. `recover`: settle interrupted writes (a writer
    that owns every source; collectors recover their own sources after taking their leases). `create=False`: a
    read-only command, `CatalogMissing` when a local catalog does not exist yet."""
    from store.catalog import Catalog

    ws = ws if isinstance(ws, Workspace) else Workspace.at(ws)
    cfg = settings(ws)
    url = catalog_url(ws, cfg, db_path)
    if not create and url.startswith("sqlite:") and not Path(url[len("sqlite:") :]).is_file():
        raise CatalogMissing(f"no frame catalog at {url[len('sqlite:') :]} (collect frames first, or pass --workspace)")
    return Catalog(ws.root, db_url=url, frames=open_frames(ws, cfg), recover=recover)


def describe(ws: Workspace) -> str:
    """One line naming the backends (for logs and `fth frames count`)."""
    cfg = settings(ws)
    catalog = _redact(cfg.catalog) if cfg.catalog else f"sqlite {ws.catalog}"
    return f"catalog {catalog}, frames {open_frames(ws, cfg).url}"


def _redact(url: str) -> str:
    """A database URL without its password."""
    with contextlib.suppress(Exception):
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@")
    return url
