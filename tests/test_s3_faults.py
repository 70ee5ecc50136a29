"""Reading through S3 faults: 503 bursts and truncated bodies are retried and give the same data;
S3 gone for good raises an error naming the shard instead of ending the epoch short."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from disney_train.config import DataConfig, S3Options
from disney_train.data.pack import PackOptions, pack
from disney_train.data.reader import ShardReadError, TrainingClips
from tests.support.faultproxy import FaultProxy

SMALL = {"num_frames": 17, "height": 48, "width": 80}


@pytest.fixture
def packed(sample_src_x3: Path, s3: S3Options, s3_uri: str) -> str:
    pack(sample_src_x3, s3_uri, PackOptions(min_frames=17, shard_bytes=1), s3)  # 12 shards
    return s3_uri


def read_all(uri: str, s3: S3Options, workers: int) -> dict[str, torch.Tensor]:
    cfg = DataConfig(uri=uri, decode_workers=workers, **SMALL)
    return {s["key"]: s["video"] for s in TrainingClips(cfg, seed=11, s3=s3)}


@pytest.mark.parametrize("workers", [0, 2])
def test_503_bursts_and_truncated_bodies_are_retried(
    packed: str, s3: S3Options, proxy: FaultProxy, workers: int
) -> None:
    clean = read_all(packed, s3, workers=0)
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 6})
    cfg = DataConfig(uri=packed, decode_workers=workers, **SMALL)
    clips = TrainingClips(cfg, seed=11, s3=via_proxy)  # manifest read cleanly
    proxy.fail(3, method="GET", path_contains="/shards/")  # a burst of three 503s
    proxy.truncate(2, method="GET", path_contains="/shards/")  # then two bodies cut in half
    faulty = {s["key"]: s["video"] for s in clips}
    assert faulty.keys() == clean.keys()
    for k in clean:
        assert torch.equal(faulty[k], clean[k]), k
    shard_gets = proxy.requests("GET", "/shards/")
    assert len(shard_gets) == len(clean) + 3 + 2  # every fault cost exactly one more request


@pytest.mark.parametrize("workers", [0, 2])
def test_s3_down_raises_naming_the_shard(packed: str, s3: S3Options, proxy: FaultProxy, workers: int) -> None:
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 3})
    clips = TrainingClips(DataConfig(uri=packed, decode_workers=workers, **SMALL), seed=11, s3=via_proxy)
    got = []
    with pytest.raises(ShardReadError) as err:
        for i, sample in enumerate(clips):
            got.append(sample["key"])
            if i == 0:
                proxy.down = True
    text = str(err.value)
    assert f"{packed}/shards/shard-0000" in text and ".tar" in text
    assert "after retries" in text
    assert len(got) < 12  # never a silently short epoch: the loop ended by the error
    assert clips.state_dict()["consumed"] == len(got)  # the state holds only what was handed out
