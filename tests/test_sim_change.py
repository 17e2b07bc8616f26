"""collector.sim_scene's scene change: frames before `change_at_index` are the unchanged scene's, frames from it on
differ the way `change` says, and truth follows the change (labels stay exact)."""

from __future__ import annotations

import numpy as np
import pytest

from collector.config import SimConfig
from collector.sim_scene import CLASSES, NEW_BUILDING, render
from fth.config import ConfigError, build

BASE = {"height": 96, "width": 160}
AT = 400


@pytest.mark.parametrize("change", ["lighting", "camera", "building"])
def test_frames_before_the_change_are_unchanged_and_after_it_differ(change):
    plain, moved = SimConfig(**BASE), SimConfig(**BASE, change_at_index=AT, change=change)
    before, _ = render(moved, AT - 1)
    assert np.array_equal(before, render(plain, AT - 1)[0])
    after, truth = render(moved, AT)
    unchanged, plain_truth = render(plain, AT)
    assert np.abs(after.astype(np.float32) - unchanged).mean() > 5.0  # 0-255 scale; noise alone is ~2.4
    assert truth.people >= 0 and truth.depth.shape == plain_truth.depth.shape


def test_truth_follows_the_change():
    building = SimConfig(**BASE, change_at_index=0, change="building")
    _, truth = render(building, 100)
    wall = (truth.seg == CLASSES.index("building")) & np.isclose(truth.depth, NEW_BUILDING[0])
    assert wall.sum() > 200  # the new wall is in the depth and segmentation labels
    camera = SimConfig(**BASE, change_at_index=0, change="camera")
    sky_moved = (render(camera, 100)[1].seg == 0).mean()
    sky_plain = (render(SimConfig(**BASE), 100)[1].seg == 0).mean()
    assert sky_moved < sky_plain  # the horizon moved up the frame: less sky


def test_unknown_change_is_a_config_error():
    with pytest.raises(ConfigError, match="change"):
        build(SimConfig, None, ["change=flood"])
