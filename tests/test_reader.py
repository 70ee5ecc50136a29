"""The training input, read back from the real SeaweedFS."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from disney_train.config import DataConfig, S3Options
from disney_train.data.pack import PackOptions, pack
from disney_train.data.reader import DataError, TrainingClips, read_ahead
from disney_train.data.sample import SEGMENTS
from disney_train.media import encode_clip

SMALL = {"num_frames": 17, "height": 48, "width": 80}


@pytest.fixture
def packed12(sample_src_x3: Path, s3: S3Options, s3_uri: str) -> str:
    pack(sample_src_x3, s3_uri, PackOptions(min_frames=17, shard_bytes=700_000), s3)
    return s3_uri


def keys_of(clips: TrainingClips, limit: int | None = None) -> list[str]:
    out = []
    for sample in clips:
        out.append(sample["key"])
        if limit is not None and len(out) == limit:
            break
    return out


def test_every_clip_once_per_epoch_with_its_prompt(sample_src_x3: Path, packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=2, **SMALL)
    clips = TrainingClips(cfg, seed=3, s3=s3)
    prompts = (sample_src_x3 / "prompt.txt").read_text().splitlines()
    for epoch in range(2):
        seen = []
        for sample in clips:
            v = sample["video"]
            assert v.shape == (17, 3, 48, 80) and v.dtype == torch.float32
            assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
            assert float(v.max()) - float(v.min()) > 0.5  # real picture, not a constant
            line = int(sample["key"])
            assert sample["prompt"] == prompts[line - 1]
            seen.append(sample["key"])
        assert sorted(seen) == [f"{i:06d}" for i in range(1, 13)], f"epoch {epoch}"
        assert clips.state_dict()["epoch"] == epoch + 1


def test_shuffle_is_deterministic_per_seed_and_epoch(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=0, **SMALL)
    a, b, c = (TrainingClips(cfg, seed=s, s3=s3) for s in (7, 7, 8))
    a0, b0, c0 = a.indices(), b.indices(), c.indices()
    assert a0 == b0 and a0 != c0
    keys_of(a)  # epoch 0 done
    assert a.indices() != a0 and sorted(a.indices()) == sorted(a0)
    unshuffled = TrainingClips(cfg.model_copy(update={"shuffle": False}), seed=7, s3=s3)
    assert unshuffled.indices() == list(range(12))


def test_same_frames_on_every_read(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=1, **SMALL)
    first = {s["key"]: s["video"] for s in TrainingClips(cfg, seed=1, s3=s3)}
    again = {s["key"]: s["video"] for s in TrainingClips(cfg.model_copy(update={"decode_workers": 0}), seed=1, s3=s3)}
    assert first.keys() == again.keys()
    for k in first:
        assert torch.equal(first[k], again[k])


@pytest.mark.parametrize("stop_at", [0, 1, 3, 5, 6])
def test_resume_mid_epoch_two_ranks_union_is_one_epoch(packed12: str, s3: S3Options, stop_at: int) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=1, **SMALL)
    ranks = [TrainingClips(cfg, seed=5, rank=r, world_size=2, s3=s3) for r in range(2)]
    before = [keys_of(r, stop_at) if stop_at else [] for r in ranks]
    states = [r.state_dict() for r in ranks]
    done = stop_at == 6  # every clip taken: the state has moved to the next epoch at the last one
    assert states[0] == states[1]
    assert (states[0]["epoch"], states[0]["consumed"]) == ((1, 0) if done else (0, 2 * stop_at))
    after: list[list[str]] = [[], []]
    for rank in range(2) if not done else ():
        resumed = TrainingClips(cfg, seed=5, rank=rank, world_size=2, s3=s3)
        resumed.load_state_dict(states[rank])
        after[rank] = keys_of(resumed)
        assert resumed.state_dict()["epoch"] == 1
    everything = before[0] + before[1] + after[0] + after[1]
    assert Counter(everything) == Counter(f"{i:06d}" for i in range(1, 13))
    assert set(before[0] + after[0]).isdisjoint(before[1] + after[1])


def test_resume_with_another_world_size(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=0, **SMALL)
    ranks = [TrainingClips(cfg, seed=5, rank=r, world_size=2, s3=s3) for r in range(2)]
    before = keys_of(ranks[0], 2) + keys_of(ranks[1], 2)
    solo = TrainingClips(cfg, seed=5, rank=0, world_size=1, s3=s3)
    solo.load_state_dict(ranks[0].state_dict())
    assert Counter(before + keys_of(solo)) == Counter(f"{i:06d}" for i in range(1, 13))


def test_batches_and_id_token(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=2, id_token="DISNEY", **SMALL)
    clips = TrainingClips(cfg, seed=0, batch_size=5, s3=s3)
    assert len(clips) == 3
    batches = list(clips)
    assert [b["video"].shape[0] for b in batches] == [5, 5, 2]
    assert batches[0]["video"].shape == (5, 17, 3, 48, 80)
    assert all(p.startswith("DISNEY A ") for b in batches for p in b["prompt"])


def test_finding_3_image_to_video_first_frame_and_packed_images(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str
) -> None:
    from PIL import Image

    src = tmp_path / "i2v"
    (src / "videos").mkdir(parents=True)
    (src / "images").mkdir()
    for seg in SEGMENTS:
        (src / "videos" / f"{seg.name}.mp4").write_bytes((sample_src / "videos" / f"{seg.name}.mp4").read_bytes())
        Image.new("RGB", (160, 90), (255, 0, 0)).save(src / "images" / f"{seg.name}.png")
    (src / "videos.txt").write_text("".join(f"videos/{s.name}.mp4\n" for s in SEGMENTS))
    (src / "images.txt").write_text("".join(f"images/{s.name}.png\n" for s in SEGMENTS))
    (src / "prompt.txt").write_text("".join(f"{s.prompt}\n" for s in SEGMENTS))
    m = pack(src, s3_uri, PackOptions(min_frames=17), s3).manifest
    assert m.has_images and all(s.image is not None for s in m.samples)
    # 9 frames of the 33-frame clips at 8 fps span 25 source frames: windows can start at 0..7
    window = {**SMALL, "num_frames": 9}
    cfg = DataConfig(uri=s3_uri, decode_workers=0, **window)
    clips = TrainingClips(cfg, seed=0, with_image=True, s3=s3)
    for _epoch in range(3):
        for sample in clips:
            img = sample["image"]
            assert img.shape == (3, 48, 80)
            assert torch.allclose(img[0], torch.ones(48, 80)) and torch.allclose(img[1], -torch.ones(48, 80))
            # the packed image is the video's first frame: the window starts there (issue 17, finding 3)
            assert sample["frame_indices"][0] == 0, sample["key"]

    plain = pack(sample_src, s3_uri + "-plain", PackOptions(min_frames=17), s3).manifest
    assert not plain.has_images
    cfg = DataConfig(uri=s3_uri + "-plain", decode_workers=0, **window)
    starts = []
    clips = TrainingClips(cfg, seed=0, with_image=True, s3=s3)
    for _epoch in range(3):
        for sample in clips:  # no packed image: the window's own first frame, wherever it starts
            assert torch.equal(sample["image"], sample["video"][0])
            starts.append(sample["frame_indices"][0])
    assert max(starts) > 0  # windows still start anywhere in the clip


def test_aspect_ratio_is_kept(tmp_path: Path, s3: S3Options, s3_uri: str) -> None:
    """A round disc in a wide video stays round at a different training aspect (no stretching)."""
    h, w = 180, 320
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= 60**2).astype(np.uint8) * 255
    frame = np.repeat(disc[:, :, None], 3, axis=2)
    src = tmp_path / "disc"
    (src / "videos").mkdir(parents=True)
    encode_clip([frame] * 17, src / "videos" / "disc.mp4", 8)
    (src / "videos.txt").write_text("videos/disc.mp4\n")
    (src / "prompt.txt").write_text("A white disc on black.\n")
    pack(src, s3_uri, PackOptions(min_frames=17), s3)
    cfg = DataConfig(uri=s3_uri, decode_workers=0, num_frames=17, height=96, width=96)
    (sample,) = list(TrainingClips(cfg, seed=0, s3=s3))
    bright = sample["video"][0, 0] > 0
    rows = bright.any(dim=1).nonzero()
    cols = bright.any(dim=0).nonzero()
    height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
    assert abs(height - width) <= 2, (height, width)  # a stretched disc would be 96/180*120 by 96/320*120
    assert 60 <= height <= 68  # 120 px at scale 96/180


def test_clips_shorter_than_asked_are_refused(packed12: str, s3: S3Options) -> None:
    with pytest.raises(DataError, match=r"fewer than data\.num_frames=49 frames.*--min-frames 49"):
        TrainingClips(DataConfig(uri=packed12, num_frames=49, height=48, width=80), seed=0, s3=s3)


def test_state_from_another_order_refused(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, **SMALL)
    state = TrainingClips(cfg, seed=0, s3=s3).state_dict()
    for change, fragment in (
        ({"seed": 1}, "seed=1"),
        ({"shuffle": False}, "shuffle=False"),
        ({"dataset": "x"}, "dataset=.x."),
    ):
        with pytest.raises(DataError, match=f"reader state is for {fragment}"):
            TrainingClips(cfg, seed=0, s3=s3).load_state_dict({**state, **change})
    resumed = TrainingClips(cfg, seed=0, s3=s3)
    resumed.load_state_dict({**state, "consumed": 5})
    assert len(resumed.indices()) == 7


def test_even_ranks_give_every_rank_the_same_count(packed12: str, s3: S3Options) -> None:
    cfg = DataConfig(uri=packed12, decode_workers=0, **SMALL)
    for world in (5, 7):
        ranks = [TrainingClips(cfg, seed=2, rank=r, world_size=world, even_ranks=True, s3=s3) for r in range(world)]
        counts = {len(r.indices()) for r in ranks}
        assert counts == {12 // world}
        first = [i for r in ranks for i in r.indices()]
        assert len(set(first)) == len(first)  # still disjoint
    uneven = [TrainingClips(cfg, seed=2, rank=r, world_size=5, s3=s3) for r in range(5)]
    assert sorted(len(r.indices()) for r in uneven) == [2, 2, 2, 3, 3]

    # resized mid-epoch: 4 clips taken at world size 4 (or 3 at world size 1), resumed at 3 or 2
    state = ranks[0].state_dict()
    for consumed, world in ((4, 3), (3, 2), (5, 7)):
        resumed = [TrainingClips(cfg, seed=2, rank=r, world_size=world, even_ranks=True, s3=s3) for r in range(world)]
        for r in resumed:
            r.load_state_dict({**state, "consumed": consumed})
        left = (12 - consumed) // world
        assert {len(r.indices()) for r in resumed} == {left}, (consumed, world)
        taken = [i for r in resumed for i in r.indices()]
        assert len(set(taken)) == len(taken) == left * world


def test_no_manifest(s3: S3Options, s3_uri: str) -> None:
    with pytest.raises(DataError, match="no manifest"):
        TrainingClips(DataConfig(uri=s3_uri, **SMALL), seed=0, s3=s3)


class _Entries(torch.utils.data.Dataset[dict[str, object]]):
    """Cache-entry-like items; records which indices were read, and fails at `bad`."""

    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad
        self.read: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, object]:
        self.read.append(i)
        if i == self.bad:
            raise DataError(f"entry {i} is corrupt")
        return {"key": f"clip-{i}", "latents": torch.full((2, 3), float(i))}


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3])
def test_read_ahead_gives_what_a_dataloader_gives(batch_size: int | None) -> None:
    indices = [4, 0, 3, 1, 2, 6, 5]
    ours = list(read_ahead(_Entries(7), indices, batch_size, depth=2))
    theirs = list(torch.utils.data.DataLoader(_Entries(7), sampler=indices, batch_size=batch_size))
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a["key"] == b["key"] and torch.equal(a["latents"], b["latents"])


def test_read_ahead_reads_at_most_depth_ahead_and_raises_where_the_bad_item_comes() -> None:
    entries = _Entries(6, bad=3)
    items = read_ahead(entries, list(range(6)), None, depth=2)
    assert next(items)["key"] == "clip-0"
    assert len(entries.read) <= 3  # the item taken and at most 2 ahead
    assert [next(items)["key"], next(items)["key"]] == ["clip-1", "clip-2"]
    with pytest.raises(DataError, match="entry 3 is corrupt"):
        next(items)
