"""Serving configuration: what `fth serve` loads, how it batches, what it refuses.

Defaults suit the tiny preset on a small CPU box; `configs/serve.yaml` overrides them and `--set key=value` overrides
the file (`fth.config.build`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    """Settings of one serving process (gunicorn runs one per worker, each with its own model).

    Args:
        workspace: workspace folder (default `$FTH_WORKSPACE` or `./workspace`); artifacts are read from it.
        encoder: encoder artifact id or folder; empty serves the workspace's release (`store.release`, written by
            `fth serve promote`), else the newest registered encoder.
        heads: head artifact ids or names to load (with a release: in addition to its heads); each must serve on this
            encoder (`heads.artifact.load_head`) or startup fails.
        auto_heads: also load every registered head fitted on this encoder (others are skipped with a log line); off
            while serving a release, which names its heads exactly.
        device: torch device for the model (`cpu`, `cuda`, `cuda:1`).
        torch_threads: intra-op threads for the forward pass; 0 = cores / (2 x workers), at least 1, leaving half the
            cores to the request threads (torch's default of all cores per process oversubscribes under gunicorn).
        switch_interval_ms: the interpreter's GIL switch interval (`sys.setswitchinterval`); 0 keeps Python's 5 ms.
        max_batch: most images in one forward pass.
        max_wait_ms: longest a queued image waits for companions, counted from the first queued image.
        queue_images: bound on images waiting for the model; beyond it requests get 503 with Retry-After.
        retry_after_s: the Retry-After value sent with 503.
        request_timeout_s: a request whose images are not embedded in this time gets 503.
        max_body_bytes: larger request bodies get 413.
        max_images: more images in one request get 413.
        max_pixels: images with more pixels than this (decompression bombs) get 413 before they are decoded; 0 =
            `max_pixels_factor` x the model input's pixels, at least a 4K frame's (3840 x 2160).
        max_pixels_factor: see `max_pixels`.
        pixels_in_flight: decoded pixels one worker holds at once, all requests together (a decode waits for room,
            503 after `request_timeout_s`); 0 = the effective `max_pixels`, one largest image at a time.
        header_timeout_s: a connection whose request head (request line and headers) has not fully arrived this long
            after its first byte is dropped; until then it waits in the worker's poller, holding no thread.
        body_timeout_s: longest wait for each read of a request body (and each write of the answer).
        insecure_no_auth: allow a non-loopback `bind` with no API key configured (refused otherwise).
        api_keys_env: environment variable holding comma-separated API keys.
        api_keys_file: file with one API key per line (`#` comments allowed).
        warmup: run a forward pass per batch shape before /readyz says ready.
        bind, workers, threads, graceful_timeout_s, timeout_s: gunicorn settings for `fth serve`.
    """

    workspace: str | None = None
    encoder: str = ""
    heads: list[str] = field(default_factory=list)
    auto_heads: bool = True
    device: str = "cpu"
    torch_threads: int = 0
    switch_interval_ms: float = 0.0
    max_batch: int = 32
    max_wait_ms: float = 5.0
    queue_images: int = 256
    retry_after_s: int = 1
    request_timeout_s: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_images: int = 64
    max_pixels: int = 0
    max_pixels_factor: int = 16
    pixels_in_flight: int = 0
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    api_keys_env: str = "FTH_API_KEYS"
    api_keys_file: str | None = None
    warmup: bool = True
    insecure_no_auth: bool = False
    bind: str = "127.0.0.1:8000"
    workers: int = 1
    threads: int = 16
    graceful_timeout_s: float = 30.0
    timeout_s: float = 120.0
