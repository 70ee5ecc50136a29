from __future__ import annotations

import numpy as np
import pytest

from disney_train.data.frames import ClipTooShortError, centre_crop_box, clip_rng, frame_indices


def test_target_fps_keeps_real_speed() -> None:
    idx, fps = frame_indices(160, 25.0, 49, 8.0, clip_rng(0, 0, 1))
    assert len(idx) == 49
    assert fps == pytest.approx(8.0)
    steps = np.diff(idx)
    assert set(steps.tolist()) <= {3, 4}
    assert steps.mean() == pytest.approx(25 / 8, abs=0.05)
    assert idx[0] >= 0 and idx[-1] < 160


def test_short_clip_rule_shrinks_the_step_never_pads() -> None:
    idx, fps = frame_indices(33, 25.0, 17, 8.0, clip_rng(0, 0, 1))
    assert idx == list(range(0, 33, 2))
    assert fps == pytest.approx(12.5)
    idx, _ = frame_indices(17, 25.0, 17, 8.0, clip_rng(0, 0, 1))
    assert idx == list(range(17))
    with pytest.raises(ClipTooShortError):
        frame_indices(16, 25.0, 17, 8.0, clip_rng(0, 0, 1))


def test_start_is_deterministic_per_seed_epoch_clip() -> None:
    def starts(seed: int, epoch: int) -> list[int]:
        return [frame_indices(300, 25.0, 49, 8.0, clip_rng(seed, epoch, line))[0][0] for line in range(1, 9)]

    assert starts(1, 0) == starts(1, 0)
    assert starts(1, 0) != starts(1, 1)
    assert starts(1, 0) != starts(2, 0)


def test_centre_crop_box_keeps_aspect() -> None:
    b = centre_crop_box(1280, 720, 720, 480)  # 16:9 into 3:2: cut the sides
    assert (b.left, b.top, b.width, b.height) == (100, 0, 1080, 720)
    assert b.width / b.height == pytest.approx(720 / 480)
    b = centre_crop_box(720, 1280, 720, 480)  # portrait into landscape: cut top and bottom
    assert (b.left, b.top, b.width, b.height) == (0, 400, 720, 480)
    b = centre_crop_box(96, 64, 720, 480)  # same aspect: the whole frame, upscaled later
    assert (b.left, b.top, b.width, b.height) == (0, 0, 96, 64)
