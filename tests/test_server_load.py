"""Overload and shutdown against a real gunicorn process: a flood beyond the queue gets 503 + Retry-After (and the
server lives on), and SIGTERM while requests are in flight answers every one of them before the process exits."""

from __future__ import annotations

import io
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import requests
from PIL import Image
from serving import LiveServer, tiny_encoder

from store.paths import Workspace


def png(seed: int, size=(480, 640)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def gradient(seed: int, size=(4000, 4000)) -> bytes:
    """A large, smooth (so small on the wire) image that takes a while to decode and resize."""
    row = np.linspace(0, 255, size[1], dtype=np.uint8)
    image = np.broadcast_to(row[None, :, None], (*size, 3)).copy()
    image[..., seed % 3] = 255 - image[..., seed % 3]
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def in_flight(url: str) -> int:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return int(re.search(r"^fth_requests_in_flight (\d+)", text, re.M).group(1))


def test_flood_beyond_queue_gets_503_then_sigterm_drains_in_flight(tmp_path):
    ws = Workspace.at(tmp_path)
    _, card = tiny_encoder(ws)
    small_queue = {"encoder": card.id, "queue_images": 16, "max_images": 16, "max_batch": 16, "threads": 32}
    small_queue |= {"max_pixels": 20_000_000, "pixels_in_flight": 64_000_000}  # four 16-megapixel decodes at once
    server = LiveServer(ws.root, small_queue).start()
    try:
        files = [("files", (f"{i}.png", png(i, (64, 96)), "image/png")) for i in range(16)]

        def flood(i: int) -> tuple[int, str | None]:
            resp = requests.post(f"{server.url}/v1/embed", files=files, timeout=60)
            return resp.status_code, resp.headers.get("Retry-After")

        with ThreadPoolExecutor(24) as pool:
            results = list(pool.map(flood, range(96)))
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 503}, codes
        assert codes.count(503) > 0 and codes.count(200) > 0, codes
        assert all(ra == "1" for c, ra in results if c == 503)
        assert requests.get(f"{server.url}/readyz").status_code == 200
        assert "fth_queue_depth 0" in requests.get(f"{server.url}/metrics").text

        # SIGTERM mid-load: 8 slow requests (two 16-megapixel PNGs each to decode) are in flight when it comes;
        # 16 images in all fit the queue, so each must be answered 200.
        big = [("files", (f"{i}.png", gradient(i), "image/png")) for i in range(2)]
        answers: list[requests.Response | Exception] = []

        def slow() -> None:
            try:
                answers.append(requests.post(f"{server.url}/v1/embed", files=big, timeout=60))
            except Exception as e:  # a dropped in-flight request is exactly the failure under test
                answers.append(e)

        threads = [threading.Thread(target=slow) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while in_flight(server.url) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert in_flight(server.url) >= 8
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert server.proc.wait(60) == 0
        shown = [a if isinstance(a, Exception) else (a.status_code, a.text[:100]) for a in answers]
        assert all(isinstance(a, requests.Response) and a.status_code == 200 for a in answers), shown
        assert all(a.json()["count"] == 2 for a in answers)
        assert "batcher stopped (drain=True)" in server.log()
    finally:
        server.stop()
