"""Which ffmpeg binary to run: the system one when on PATH, else the static build inside the imageio-ffmpeg wheel.

A cheap always-on machine often has no system ffmpeg; `pip install` of this project still brings one, so every
component (collector, sim publisher, tests, benchmark) asks this module instead of assuming `ffmpeg` is on PATH.
"""

from __future__ import annotations

import functools
import os
import shutil


@functools.cache
def ffmpeg_exe() -> str:
    """Absolute path of the ffmpeg binary: `$FTH_FFMPEG`, else `ffmpeg` on PATH, else imageio-ffmpeg's build."""
    override = os.environ.get("FTH_FFMPEG")
    if override:
        return override
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()
