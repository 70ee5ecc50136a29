"""An interrupted pack resumes without re-uploading what is already there; credentials are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from disney_train.config import DataConfig, S3Options
from disney_train.data.pack import PackError, PackOptions, load_manifest, pack
from disney_train.data.reader import TrainingClips
from disney_train.storage import StorageError
from tests.support.faultproxy import FaultProxy
from tests.support.seaweed import RO, RW, SeaweedS3

ONE_CLIP_PER_SHARD = PackOptions(min_frames=17, shard_bytes=1)


def test_interrupted_pack_resumes_without_reuploading(
    sample_src: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy, s3_server: SeaweedS3, prefix: str
) -> None:
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 2})
    proxy.drop_after(2, method="PUT", path_contains="/shards/")  # S3 starts failing after two shards
    with pytest.raises(StorageError) as err:
        pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    assert "shards/shard-000002-" in str(err.value) and "SlowDown" in str(err.value)
    keys = s3_server.keys(prefix + "/")
    assert [k.rsplit("-", 1)[0] for k in keys] == [f"{prefix}/shards/shard-00000{i}" for i in (0, 1)]  # no manifest
    with pytest.raises(PackError, match="did not finish"):
        load_manifest(s3_uri, s3)

    proxy.reset()
    report = pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    assert report.skipped == [k.removeprefix(f"{prefix}/") for k in keys]  # the two already there
    assert [k.rsplit("-", 1)[0] for k in report.uploaded] == ["shards/shard-000002", "shards/shard-000003"]
    puts = sorted(p.rsplit("/", 1)[-1] for p in proxy.requests("PUT"))
    assert puts == [".disney-train-write-check", "manifest.json", *(k.rsplit("/", 1)[-1] for k in report.uploaded)]

    proxy.reset()  # a third run: everything is there already
    again = pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    assert again.uploaded == [] and len(again.skipped) == 4
    assert proxy.requests("PUT", "/shards/") == []
    assert [s.sha256 for s in again.manifest.shards] == [s.sha256 for s in report.manifest.shards]


def test_upload_retries_through_503_bursts(sample_src: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy) -> None:
    proxy.fail(2, method="PUT", path_contains="/shards/")  # the first shard upload meets two 503s
    proxy.fail(2, method="HEAD", path_contains="/shards/")
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 4})
    report = pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    assert len(report.uploaded) == 4
    assert len(proxy.requests("PUT", "/shards/")) == 4 + 2  # the shards and the two refused
    assert len(proxy.requests("HEAD", "/shards/")) == 4 + 2
    m = load_manifest(s3_uri, s3)
    assert m.totals.clips == 4


def _with_keys(monkeypatch: pytest.MonkeyPatch, creds: tuple[str, str]) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds[1])


def test_wrong_keys_clear_error_nothing_written(
    sample_src: Path,
    s3: S3Options,
    s3_uri: str,
    s3_server: SeaweedS3,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_keys(monkeypatch, (RW[0], "not-the-secret"))
    with pytest.raises(StorageError) as err:
        pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3)
    text = str(err.value)
    assert "S3 refused the request" in text and "AWS_SECRET_ACCESS_KEY" in text
    assert "not-the-secret" not in text
    _with_keys(monkeypatch, ("no-such-key", "x"))
    with pytest.raises(StorageError, match="S3 refused the request"):
        pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3)
    assert s3_server.keys(prefix) == []


def test_read_only_keys_write_nothing_but_can_read(
    sample_src: Path,
    s3: S3Options,
    s3_uri: str,
    s3_server: SeaweedS3,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _with_keys(monkeypatch, RO)
    with pytest.raises(StorageError) as err:
        pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3)
    assert "AccessDenied" in str(err.value) and "allow this write" in str(err.value)
    assert ".disney-train-write-check" in str(err.value)  # refused before any clip was checked
    assert s3_server.keys(prefix) == []
    # a dataset packed with write keys is readable with the read-only ones (as training workers do)
    _with_keys(monkeypatch, RW)
    pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3)
    _with_keys(monkeypatch, RO)
    cfg = DataConfig(uri=s3_uri, num_frames=17, height=32, width=48, decode_workers=0)
    assert len(list(TrainingClips(cfg, seed=0, s3=s3))) == 4


def test_missing_bucket_named(sample_src: Path, s3: S3Options) -> None:
    with pytest.raises(StorageError, match="bucket 'no-such-bucket' does not exist"):
        pack(sample_src, "s3://no-such-bucket/x", ONE_CLIP_PER_SHARD, s3)


def test_no_keys_at_all(sample_src: Path, s3: S3Options, monkeypatch: pytest.MonkeyPatch, s3_uri: str) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no S3 credentials; set AWS_ACCESS_KEY_ID"):
        pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3)


def test_repack_of_changed_input_never_breaks_the_current_dataset(
    sample_src: Path, tmp_path: Path, s3: S3Options, s3_uri: str, proxy: FaultProxy
) -> None:
    import shutil

    first = pack(sample_src, s3_uri, ONE_CLIP_PER_SHARD, s3).manifest
    cfg = DataConfig(uri=s3_uri, num_frames=17, height=32, width=48, decode_workers=0)
    reader = TrainingClips(cfg, seed=0, s3=s3)  # a job reading the first pack

    changed = tmp_path / "changed"
    shutil.copytree(sample_src, changed)
    prompts = (changed / "prompt.txt").read_text().splitlines()
    prompts[2] = "A chubby grey cartoon rabbit yawns hugely."
    (changed / "prompt.txt").write_text("\n".join(prompts) + "\n")
    via_proxy = s3.model_copy(update={"endpoint_url": proxy.endpoint, "max_attempts": 2})
    proxy.drop_after(0, method="PUT", path_contains="/manifest.json")  # the re-pack dies at the very end
    with pytest.raises(StorageError):
        pack(changed, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    # the old manifest still stands and every shard it names is intact: the running job goes on
    assert load_manifest(s3_uri, s3) == first
    assert len(list(reader)) == 4

    proxy.reset()
    report = pack(changed, s3_uri, ONE_CLIP_PER_SHARD, via_proxy)
    m = report.manifest
    assert [s.prompt for s in m.samples][2] == "A chubby grey cartoon rabbit yawns hugely."
    changed_keys = {s.key for s in m.shards} - {s.key for s in first.shards}
    assert len(changed_keys) == 1  # only the shard holding the changed prompt is new
    assert report.uploaded == []  # it went up in the interrupted attempt; the re-run only commits
    assert [p.rsplit("/", 1)[-1] for p in proxy.requests("PUT")] == [".disney-train-write-check", "manifest.json"]
    assert report.stale == sorted({s.key for s in first.shards} - {s.key for s in m.shards})
    assert len(report.stale) == 1
